//! The guarded writing half of a websocket on a non-blocking socket (STYLE.md): one mutex
//! around the `WebSocket`, writes that wait for room in `poll(2)` without holding it, the
//! write-stall limit, and the `closing` flag that ends every wait. The local and rendezvous
//! websockets (websocket.rs) and the Noise relay link (cloud/noise/relay.rs) write through
//! it; what a stall or a close means to the connection stays theirs.

use std::io::{self, Read, Write};
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tungstenite::{Error as WsError, Message, WebSocket};

use crate::outbound::Closed;

pub struct GuardedSocket<S> {
    ws: Mutex<WebSocket<S>>,
    pub fd: RawFd,
    pub write_stall: Duration,
    /// Set once the socket is being closed; every write and wait ends on it.
    pub closing: AtomicBool,
}

impl<S: Read + Write> GuardedSocket<S> {
    /// `fd` is the socket under `ws`, already non-blocking.
    pub fn new(ws: WebSocket<S>, fd: RawFd, write_stall: Duration) -> GuardedSocket<S> {
        GuardedSocket { ws: Mutex::new(ws), fd, write_stall, closing: AtomicBool::new(false) }
    }

    pub fn lock(&self) -> MutexGuard<'_, WebSocket<S>> {
        self.ws.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn is_closing(&self) -> bool {
        self.closing.load(Ordering::SeqCst)
    }

    /// Queues one message and flushes it, waiting for room without holding the lock. When
    /// the peer accepts no byte for the write-stall limit, `stalled` runs (it closes the
    /// connection its own way) and the write fails.
    pub fn write(&self, message: Message, stalled: impl FnOnce(Duration)) -> Result<(), Closed> {
        let mut ws = self.lock();
        if self.is_closing() {
            return Err(Closed);
        }
        match ws.write(message) {
            Ok(()) => {}
            Err(WsError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => return Err(Closed),
        }
        loop {
            match ws.flush() {
                Ok(()) => return Ok(()),
                Err(WsError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => return Err(Closed),
            }
            drop(ws);
            if !wait_for(&[self.fd], libc::POLLOUT, Some(self.write_stall)) {
                stalled(self.write_stall);
                return Err(Closed);
            }
            ws = self.lock();
            if self.is_closing() {
                return Err(Closed);
            }
        }
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
