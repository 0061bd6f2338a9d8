//! Serving one websocket, accepted or rendezvous: the mutex-guarded writer (`Outbound`) on a
//! non-blocking socket (sink.rs on accepted sockets, tungstenite on rendezvous links), and
//! the `poll(2)` read loop that hands each text message to `rpc::Connection` (read by
//! frames.rs on accepted sockets, by tungstenite on rendezvous links), answering Pings and
//! the peer's Close, with keepalive pings for rendezvous links.
//! It parses no JSON-RPC and accepts no connections (listener.rs).

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tungstenite::error::ProtocolError;
use tungstenite::protocol::frame::coding::{CloseCode, Control, Data, OpCode};
use tungstenite::protocol::frame::{CloseFrame, Frame};
use tungstenite::protocol::WebSocketConfig;
use tungstenite::{Bytes, Error as WsError, Message, Utf8Bytes, WebSocket};

use crate::config::Config;
use crate::outbound::{CloseReason, Closed, Outbound};
use crate::recycle;
use crate::rpc::{Flow, Server, Text, Transport};
use crate::transport::frames::{Event, Failure, Fd, Frames, Next};
use crate::transport::guarded::{wait_for, GuardedSocket};
use crate::transport::sink::{self, Sink};

/// Outbound messages larger than this go out as several frames, so the socket's write
/// buffer never holds (or shifts) more than one fragment.
const FRAGMENT_BYTES: usize = 1 << 20;
/// Each connection's read buffer, allocated up front: tungstenite's 128 KiB default made
/// 200 idle connections hold 25 MiB that the allocator kept after they closed. Large frames
/// are still read straight into a buffer of their own size, this many bytes per read.
const READ_BUFFER_BYTES: usize = 32 << 10;
/// How long a closing connection may take to flush its Close frame.
const CLOSE_FLUSH: Duration = Duration::from_secs(1);

/// Keepalive for rendezvous links (§8.6): ping this often, give up after this silence.
#[derive(Clone, Copy, Debug)]
pub struct Keepalive {
    pub ping_every: Duration,
    pub dead_after: Duration,
}

/// Who reads a websocket's inbound frames.
pub enum Reading {
    /// frames.rs, straight from the socket: accepted connections, whose handshake was ours;
    /// it holds the bytes the handshake read past the HTTP head.
    Frames(Vec<u8>),
    /// Tungstenite: rendezvous links, whose client handshake (and any bytes read past it)
    /// tungstenite owns, and which may run over TLS.
    Tungstenite,
}

/// Websocket settings for every connection: the message limit also bounds a single
/// frame, since a client may send a whole message unfragmented (§10).
pub fn ws_config(config: &Config) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER_BYTES)
        .max_message_size(Some(config.max_message_bytes))
        .max_frame_size(Some(config.max_message_bytes))
        .write_buffer_size(0)
        .max_write_buffer_size(usize::MAX)
}

/// A websocket's writing half on a non-blocking socket: frames of our own (sink.rs) on
/// accepted sockets, tungstenite's writer (guarded.rs) on rendezvous links. The
/// `GuardedSocket` holds the `WebSocket` either way: it reads rendezvous links, and on an
/// accepted socket it only keeps the stream open.
struct Writer<S> {
    socket: GuardedSocket<S>,
    /// Writes instead of tungstenite, when frames.rs reads the socket.
    own: Option<Sink>,
    /// Held for a whole outbound message, so fragments of two messages never interleave
    /// while the socket lock is released to wait for room.
    turn: Mutex<()>,
}

impl<S: Read + Write + Send> Writer<S> {
    fn lock(&self) -> MutexGuard<'_, WebSocket<S>> {
        self.socket.lock()
    }

    /// Writes one frame; a peer that accepts nothing for the write-stall limit gets the
    /// connection closed.
    fn write(&self, opcode: OpCode, fin: bool, payload: Bytes) -> Result<(), Closed> {
        let stalled = |stall| {
            log::warn!("peer accepted nothing for {stall:?}; closing");
            self.close(CloseReason::Stalled);
        };
        match &self.own {
            Some(sink) => sink.write(&self.socket.room, opcode.into(), fin, payload, stalled),
            None => {
                self.socket.write(Message::Frame(Frame::message(payload, opcode, fin)), stalled)
            }
        }
    }

    /// Queues a Close frame (no payload for `None`) behind what is queued, once: false if
    /// one was already queued.
    fn queue_close(&self, frame: Option<CloseFrame>) -> bool {
        if self.socket.room.closing.swap(true, Ordering::SeqCst) {
            return false;
        }
        match (&self.own, frame) {
            (Some(sink), Some(frame)) => sink.queue_close(frame.code.into(), &frame.reason),
            (Some(sink), None) => sink.queue(sink::CLOSE, Bytes::new()),
            (None, frame) => {
                let _ = self.lock().close(frame);
            }
        }
        true
    }

    /// Answers the peer's Close (RFC 6455 §5.5.1) with its own code and reason, or with
    /// 1002 for a code no endpoint may send, as tungstenite answers it on rendezvous links.
    /// `finish` flushes it.
    fn answer_close(&self, frame: Option<CloseFrame>) {
        self.queue_close(frame.map(|f| match f.code.is_allowed() {
            true => f,
            false => CloseFrame { code: CloseCode::Protocol, reason: "Protocol violation".into() },
        }));
    }

    /// Queues a keepalive Ping and writes what the socket takes now, without waiting.
    fn ping(&self) {
        if self.socket.room.is_closing() {
            return;
        }
        match &self.own {
            Some(sink) => sink.queue(sink::PING, Bytes::new()),
            None => {
                let mut ws = self.lock();
                let _ = ws.write(Message::Ping(Bytes::new()));
                let _ = ws.flush();
            }
        }
    }

    /// Writes what is queued; true once all of it is out or nothing more can go out.
    fn flush_done(&self) -> bool {
        match &self.own {
            Some(sink) => !matches!(sink.flush(), Ok(false)),
            None => match self.lock().flush() {
                Err(WsError::Io(e)) => e.kind() != io::ErrorKind::WouldBlock,
                _ => true,
            },
        }
    }

    /// Flushes what is queued (a Close frame) for at most `CLOSE_FLUSH`, then shuts the
    /// socket down.
    fn finish(&self) {
        self.socket.room.closing.store(true, Ordering::SeqCst);
        let deadline = Instant::now() + CLOSE_FLUSH;
        while !self.flush_done() {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero()
                || !wait_for(&[self.socket.room.fd], libc::POLLOUT, Some(remaining))
            {
                break;
            }
        }
        // SAFETY: shutting down a socket we own; the descriptor stays open until drop.
        unsafe { libc::shutdown(self.socket.room.fd, libc::SHUT_RDWR) };
        if let Some(sink) = &self.own {
            sink.discard();
        }
    }
}

impl<S: Read + Write + Send> Outbound for Writer<S> {
    fn send(&self, text: String) -> Result<(), Closed> {
        let _turn = self.turn.lock().unwrap_or_else(PoisonError::into_inner);
        // Written as frames we build, so the text needs no second UTF-8 check and its
        // buffer can return to the pool; a message over FRAGMENT_BYTES goes in pieces.
        let bytes = recycle::bytes(text);
        let mut offset = 0;
        loop {
            let end = (offset + FRAGMENT_BYTES).min(bytes.len());
            let opcode = if offset == 0 { Data::Text } else { Data::Continue };
            let last = end == bytes.len();
            self.write(OpCode::Data(opcode), last, bytes.slice(offset..end))?;
            if last {
                return Ok(());
            }
            offset = end;
        }
    }

    fn close(&self, reason: CloseReason) {
        let code = match reason {
            CloseReason::Protocol => CloseCode::Protocol,
            CloseReason::GoingAway => CloseCode::Away,
            CloseReason::Stalled => CloseCode::Policy,
            CloseReason::TooBig => CloseCode::Size,
            CloseReason::InvalidData => CloseCode::Invalid,
        };
        if !self.queue_close(Some(CloseFrame { code, reason: "".into() })) {
            return;
        }
        // Wake the reader, which flushes the Close frame and tears the socket down.
        // SAFETY: shutting down the read side of a socket we own.
        unsafe { libc::shutdown(self.socket.room.fd, libc::SHUT_RD) };
    }
}

/// Serves one websocket until it ends: the read loop of STYLE.md. The socket is switched
/// to non-blocking; the loop waits in `poll(2)` without the lock, then reads everything
/// there is, and hands each message to the connection.
pub fn serve<S>(
    ws: WebSocket<S>,
    reading: Reading,
    server: &Arc<Server>,
    transport: Transport,
    keepalive: Option<Keepalive>,
) where
    S: Read + Write + AsRawFd + Send + 'static,
{
    let fd = ws.get_ref().as_raw_fd();
    if let Err(e) = set_nonblocking(fd) {
        log::warn!("cannot make the socket non-blocking: {e}");
        return;
    }
    let mut frames = match reading {
        Reading::Frames(already) => Some(Frames::new(&already, server.config.max_message_bytes)),
        Reading::Tungstenite => None,
    };
    let writer = Arc::new(Writer {
        socket: GuardedSocket::new(ws, fd, server.config.write_stall),
        own: frames.as_ref().map(|_| Sink::new(fd)),
        turn: Mutex::new(()),
    });
    let conn = server.connect(Arc::clone(&writer) as Arc<dyn Outbound>, transport);
    let mut last_heard = Instant::now();
    let mut next_ping = keepalive.map(|k| last_heard + k.ping_every);
    let mut drained = false;
    loop {
        if drained {
            let timeout = match (keepalive, next_ping) {
                (Some(k), Some(ping)) => Some(ping.min(last_heard + k.dead_after)),
                _ => None,
            }
            .map(|at| at.saturating_duration_since(Instant::now()));
            if !wait_for(&[fd], libc::POLLIN, timeout) {
                let Some(k) = keepalive else { continue };
                if last_heard.elapsed() >= k.dead_after {
                    log::warn!("rendezvous link silent for {:?}; closing", k.dead_after);
                    writer.close(CloseReason::GoingAway);
                    break;
                }
                writer.ping();
                next_ping = Some(Instant::now() + k.ping_every);
                continue;
            }
            drained = false;
        }
        // One message per read: it is handled (and, when quick, answered) before the next
        // read, so a lone request's response never waits behind the read that finds the
        // socket empty.
        let event = match &mut frames {
            Some(frames) => read_frames(frames, &writer),
            None => read_one(&mut writer.lock()),
        };
        if !matches!(event, Inbound::Drained) {
            last_heard = Instant::now();
        }
        let flow = match event {
            Inbound::Text(text) => conn.handle(text),
            Inbound::Malformed(detail) => conn.malformed(&detail),
            Inbound::Drained => {
                drained = true;
                Flow::Continue
            }
            Inbound::Nothing => Flow::Continue,
            Inbound::End(reason) => {
                if let Some(reason) = reason {
                    writer.close(reason);
                }
                Flow::Close
            }
        };
        if flow == Flow::Close {
            break;
        }
    }
    writer.finish();
    conn.closed();
}

/// What one read from a websocket produced.
enum Inbound {
    Text(Text),
    /// A binary message that is not UTF-8 (§1.4).
    Malformed(String),
    /// A control frame or a partial message: read again.
    Nothing,
    /// The socket has nothing more for now: wait in poll.
    Drained,
    /// The connection is over, with the close reason to send if it is ours to send.
    End(Option<CloseReason>),
}

/// One step of frames.rs on the socket; Pings and the peer's Close are answered here.
fn read_frames<S: Read + Write + Send>(frames: &mut Frames, writer: &Writer<S>) -> Inbound {
    match frames.next(&mut Fd(writer.socket.room.fd)) {
        Next::Event(Event::Text(text)) => Inbound::Text(Box::new(text)),
        Next::Event(Event::Binary(bytes)) => match String::from_utf8(bytes) {
            Ok(text) => Inbound::Text(Box::new(text)),
            Err(e) => Inbound::Malformed(format!("binary frame is not UTF-8: {}", e.utf8_error())),
        },
        Next::Event(Event::Ping(payload)) => {
            // No Pong once closing: the write fails and the loop ends on its own.
            let _ = writer.write(OpCode::Control(Control::Pong), true, Bytes::from(payload));
            Inbound::Nothing
        }
        Next::Event(Event::Pong) => Inbound::Nothing,
        Next::Event(Event::Close(frame)) => {
            writer.answer_close(frame);
            Inbound::End(None)
        }
        Next::WouldBlock => Inbound::Drained,
        Next::Failed(Failure::TooBig { size, max }) => {
            log::warn!("closing: message too long: {size} > {max}");
            Inbound::End(Some(CloseReason::TooBig))
        }
        Next::Failed(Failure::Utf8) => Inbound::End(Some(CloseReason::InvalidData)),
        Next::Failed(Failure::Protocol(why)) => {
            log::warn!("closing: websocket protocol error: {why}");
            Inbound::End(Some(CloseReason::Protocol))
        }
        // The peer went away without a Close frame: nothing to answer.
        Next::Eof => Inbound::End(None),
        Next::Io(e) => {
            log::debug!("closing: websocket read failed: {e}");
            Inbound::End(None)
        }
    }
}

fn read_one<S: Read + Write>(ws: &mut WebSocket<S>) -> Inbound {
    match ws.read() {
        Ok(Message::Text(text)) => Inbound::Text(Box::new(text)),
        Ok(Message::Binary(bytes)) => match Utf8Bytes::try_from(bytes) {
            Ok(text) => Inbound::Text(Box::new(text)),
            Err(e) => Inbound::Malformed(format!("binary frame is not UTF-8: {e}")),
        },
        // Our reply to the peer's Close is queued; `Writer::finish` flushes it.
        Ok(Message::Close(_)) => Inbound::End(None),
        Ok(_) => Inbound::Nothing,
        Err(WsError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => Inbound::Drained,
        Err(WsError::Io(e)) if e.kind() == io::ErrorKind::Interrupted => Inbound::Nothing,
        Err(WsError::Capacity(e)) => {
            log::warn!("closing: {e}");
            Inbound::End(Some(CloseReason::TooBig))
        }
        Err(WsError::Utf8(_)) => Inbound::End(Some(CloseReason::InvalidData)),
        // The peer went away without a Close frame: nothing to answer.
        Err(WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake)) => Inbound::End(None),
        Err(WsError::Protocol(e)) => {
            log::warn!("closing: websocket protocol error: {e}");
            Inbound::End(Some(CloseReason::Protocol))
        }
        Err(_) => Inbound::End(None),
    }
}

fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor we own.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
