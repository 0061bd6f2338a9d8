//! The writing half of an accepted websocket: frames we build (server frames are never
//! masked), queued as a header plus the payload's own bytes, and written with one
//! `sendmsg(2)` per batch on the non-blocking socket, so a payload is never copied into a
//! write buffer first. One mutex guards the queue; a frame cut short by a full socket stays
//! at its front, so whatever is queued after it (a Pong, a Close) follows it whole. The
//! rendezvous links, whose writes may be TLS, keep tungstenite's writer (guarded.rs).

use std::collections::VecDeque;
use std::io;
use std::os::fd::RawFd;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tungstenite::Bytes;

use crate::outbound::Closed;
use crate::transport::guarded::Room;

/// The control frames queued without waiting (RFC 6455 §5.2 opcodes); data frames and
/// Pongs take their opcode from the caller.
pub const CLOSE: u8 = 0x8;
pub const PING: u8 = 0x9;

/// How many queued pieces (headers and payloads) one `sendmsg` takes.
const BATCH: usize = 16;

/// One frame waiting to go out: its header, its payload, and how much of both is written.
struct Queued {
    head: [u8; 10],
    head_len: u8,
    payload: Bytes,
    sent: usize,
}

impl Queued {
    fn new(opcode: u8, fin: bool, payload: Bytes) -> Queued {
        let mut head = [0u8; 10];
        head[0] = opcode | if fin { 0x80 } else { 0 };
        let len = payload.len();
        let head_len = if len < 126 {
            head[1] = len as u8;
            2
        } else if len <= usize::from(u16::MAX) {
            head[1] = 126;
            head[2..4].copy_from_slice(&(len as u16).to_be_bytes());
            4
        } else {
            head[1] = 127;
            head[2..10].copy_from_slice(&(len as u64).to_be_bytes());
            10
        };
        Queued { head, head_len, payload, sent: 0 }
    }

    fn len(&self) -> usize {
        usize::from(self.head_len) + self.payload.len()
    }

    /// The unwritten parts, header first.
    fn unwritten(&self) -> [&[u8]; 2] {
        let head = usize::from(self.head_len);
        let head_part = &self.head[self.sent.min(head)..head];
        let payload_part = &self.payload[self.sent.saturating_sub(head)..];
        [head_part, payload_part]
    }
}

pub struct Sink {
    queue: Mutex<VecDeque<Queued>>,
    fd: RawFd,
}

impl Sink {
    /// `fd` is the socket, already non-blocking.
    pub fn new(fd: RawFd) -> Sink {
        Sink { queue: Mutex::default(), fd }
    }

    fn lock(&self) -> MutexGuard<'_, VecDeque<Queued>> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues one frame and writes until the queue is empty, waiting in `room` (the
    /// socket's) for room without holding the lock; refused once the socket is closing.
    pub fn write(
        &self,
        room: &Room,
        opcode: u8,
        fin: bool,
        payload: Bytes,
        stalled: impl FnOnce(Duration),
    ) -> Result<(), Closed> {
        let mut queue = self.lock();
        if room.is_closing() {
            return Err(Closed);
        }
        queue.push_back(Queued::new(opcode, fin, payload));
        room.until_written(
            &self.queue,
            queue,
            |queue| self.send(queue).map_err(|_| Closed),
            stalled,
        )
    }

    /// Queues a control frame behind whatever is queued, and writes what the socket takes
    /// now without waiting; `flush` writes the rest. It is not refused once closing (the
    /// caller decides): the Close frame itself goes this way.
    pub fn queue(&self, opcode: u8, payload: Bytes) {
        let mut queue = self.lock();
        queue.push_back(Queued::new(opcode, true, payload));
        let _ = self.send(&mut queue);
    }

    /// Queues a Close frame with its code and reason (§5.5.1), as `queue` does.
    pub fn queue_close(&self, code: u16, reason: &str) {
        let mut payload = Vec::with_capacity(2 + reason.len());
        payload.extend_from_slice(&code.to_be_bytes());
        payload.extend_from_slice(reason.as_bytes());
        self.queue(CLOSE, Bytes::from(payload));
    }

    /// Writes what the socket takes now: `Ok(true)` once nothing is queued, `Ok(false)` when
    /// the socket is full, and an error when it failed (nothing more will go out).
    pub fn flush(&self) -> io::Result<bool> {
        self.send(&mut self.lock())
    }

    /// Drops whatever is still queued (the socket is shut down), so a message cut short does
    /// not stay resident while something still holds the connection.
    pub fn discard(&self) {
        self.lock().clear();
    }

    fn send(&self, queue: &mut VecDeque<Queued>) -> io::Result<bool> {
        while !queue.is_empty() {
            // SAFETY: an all-zero iovec array is valid; the entries used are filled below.
            let mut iov: [libc::iovec; BATCH] = unsafe { std::mem::zeroed() };
            let mut n = 0;
            'frames: for frame in queue.iter() {
                for part in frame.unwritten() {
                    if part.is_empty() {
                        continue;
                    }
                    if n == BATCH {
                        break 'frames;
                    }
                    iov[n] = libc::iovec { iov_base: part.as_ptr() as *mut _, iov_len: part.len() };
                    n += 1;
                }
            }
            // SAFETY: a zeroed msghdr is valid; it points at `n` filled iovecs.
            let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
            msg.msg_iov = iov.as_mut_ptr();
            msg.msg_iovlen = n as _;
            // SAFETY: sending from buffers the queue owns and keeps alive during the call;
            // MSG_NOSIGNAL turns a gone peer into EPIPE instead of SIGPIPE.
            let written = unsafe { libc::sendmsg(self.fd, &msg, libc::MSG_NOSIGNAL) };
            if written < 0 {
                let e = io::Error::last_os_error();
                match e.kind() {
                    io::ErrorKind::Interrupted => continue,
                    io::ErrorKind::WouldBlock => return Ok(false),
                    _ => return Err(e),
                }
            }
            let mut written = written as usize;
            while let Some(front) = queue.front_mut() {
                let left = front.len() - front.sent;
                if written < left {
                    front.sent += written;
                    break;
                }
                written -= left;
                queue.pop_front();
            }
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_take_the_shortest_length_form() {
        let head = |len: usize| {
            let q = Queued::new(0x1, true, Bytes::from(vec![b'x'; len]));
            q.head[..usize::from(q.head_len)].to_vec()
        };
        assert_eq!(head(0), [0x81, 0]);
        assert_eq!(head(125), [0x81, 125]);
        assert_eq!(head(126), [0x81, 126, 0, 126]);
        assert_eq!(head(65535), [0x81, 126, 0xff, 0xff]);
        assert_eq!(head(65536), [0x81, 127, 0, 0, 0, 0, 0, 1, 0, 0]);
        let q = Queued::new(0x0, false, Bytes::from_static(b"ab"));
        assert_eq!(q.head[..2], [0x00, 2]);
    }

    #[test]
    fn unwritten_parts_follow_what_was_sent() {
        let mut q = Queued::new(0xA, true, Bytes::from_static(b"hello"));
        assert_eq!(q.unwritten(), [&[0x8a, 5][..], b"hello"]);
        q.sent = 1;
        assert_eq!(q.unwritten(), [&[5][..], b"hello"]);
        q.sent = 4;
        assert_eq!(q.unwritten(), [&[][..], b"llo"]);
        q.sent = q.len();
        assert_eq!(q.unwritten(), [&[][..], b""]);
    }
}
