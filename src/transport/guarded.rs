//! The guarded writing half of a websocket on a non-blocking socket (STYLE.md): one mutex
//! around the `WebSocket`, and the `Room` every writer on such a socket waits in: writes that
//! wait for room in `poll(2)` without holding the lock, the write-stall limit, and the
//! `closing` flag that ends every wait (sink.rs waits in it too). The local and rendezvous
//! websockets (websocket.rs) and the Noise relay link (cloud/noise/relay.rs) write through
//! it; what a stall or a close means to the connection stays theirs.

use std::io::{self, Read, Write};
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tungstenite::{Error as WsError, Message, WebSocket};

use crate::outbound::Closed;

/// How a writer on a non-blocking socket waits for room: the socket, how long the peer may
/// take no byte, and the flag that ends every wait once the socket is being closed.
pub struct Room {
    pub fd: RawFd,
    pub write_stall: Duration,
    pub closing: AtomicBool,
}

impl Room {
    /// `fd` is the socket, already non-blocking.
    pub fn new(fd: RawFd, write_stall: Duration) -> Room {
        Room { fd, write_stall, closing: AtomicBool::new(false) }
    }

    pub fn is_closing(&self) -> bool {
        self.closing.load(Ordering::SeqCst)
    }

    /// Runs `attempt` on the writer `guard` holds until it reports everything written
    /// (`Ok(true)`), waiting for room in `poll(2)` without holding `lock`. A failed attempt
    /// or the closing flag ends it; when the peer accepts no byte for the write-stall limit,
    /// `stalled` runs (it closes the connection its own way) and the write fails.
    pub fn until_written<'a, T>(
        &self,
        lock: &'a Mutex<T>,
        mut guard: MutexGuard<'a, T>,
        mut attempt: impl FnMut(&mut T) -> Result<bool, Closed>,
        stalled: impl FnOnce(Duration),
    ) -> Result<(), Closed> {
        while !attempt(&mut guard)? {
            drop(guard);
            if !wait_for(&[self.fd], libc::POLLOUT, Some(self.write_stall)) {
                stalled(self.write_stall);
                return Err(Closed);
            }
            guard = lock.lock().unwrap_or_else(PoisonError::into_inner);
            if self.is_closing() {
                return Err(Closed);
            }
        }
        Ok(())
    }
}

pub struct GuardedSocket<S> {
    ws: Mutex<WebSocket<S>>,
    pub room: Room,
}

impl<S: Read + Write> GuardedSocket<S> {
    /// `fd` is the socket under `ws`, already non-blocking.
    pub fn new(ws: WebSocket<S>, fd: RawFd, write_stall: Duration) -> GuardedSocket<S> {
        GuardedSocket { ws: Mutex::new(ws), room: Room::new(fd, write_stall) }
    }

    pub fn lock(&self) -> MutexGuard<'_, WebSocket<S>> {
        self.ws.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues one message and flushes it, waiting for room without holding the lock (see
    /// `Room::until_written`).
    pub fn write(&self, message: Message, stalled: impl FnOnce(Duration)) -> Result<(), Closed> {
        let mut ws = self.lock();
        if self.room.is_closing() {
            return Err(Closed);
        }
        match ws.write(message) {
            Ok(()) => {}
            Err(WsError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => return Err(Closed),
        }
        let flush = |ws: &mut WebSocket<S>| match ws.flush() {
            Ok(()) => Ok(true),
            Err(WsError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
            Err(_) => Err(Closed),
        };
        self.room.until_written(&self.ws, ws, flush, stalled)
    }
}

/// Waits until one of `fds` is ready for `events` (or hung up); false on timeout.
pub fn wait_for(fds: &[RawFd], events: libc::c_short, timeout: Option<Duration>) -> bool {
    let deadline = timeout.map(|t| Instant::now() + t);
    let mut pfds: Vec<libc::pollfd> =
        fds.iter().map(|&fd| libc::pollfd { fd, events, revents: 0 }).collect();
    loop {
        let ms = match deadline {
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return false;
                }
                left.as_millis().clamp(1, i32::MAX as u128) as i32
            }
            None => -1,
        };
        // SAFETY: `pfds` is a valid array of pollfd of the given length.
        let n = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, ms) };
        if n > 0 {
            return true;
        }
        if n < 0 && io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            return true;
        }
    }
}
