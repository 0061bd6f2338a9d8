//! Websockets: the local listener (health routes, upgrade checks, handshake deadline),
//! the mutex-guarded writer and the `poll(2)` read loop that every websocket — accepted
//! or rendezvous — is served by. It parses no JSON-RPC: frames go to `rpc::Connection`.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tungstenite::error::ProtocolError;
use tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tungstenite::protocol::frame::{CloseFrame, Frame};
use tungstenite::protocol::{Role, WebSocketConfig};
use tungstenite::{Bytes, Error as WsError, Message, Utf8Bytes, WebSocket};

use crate::config::Config;
use crate::outbound::{CloseReason, Closed, Outbound};
use crate::recycle;
use crate::rpc::{Flow, Server, Text, Transport};
use crate::shutdown;

/// Largest HTTP request head accepted before an upgrade (§10).
const MAX_HEAD_BYTES: usize = 16 << 10;
/// Connections the kernel may queue before we accept them (capped by somaxconn).
const LISTEN_BACKLOG: libc::c_int = 1024;
/// TCP connections still in their HTTP handshake at once; more are dropped at accept.
const MAX_PENDING_HANDSHAKES: usize = 1024;
/// Outbound messages larger than this go out as several frames, so the socket's write
/// buffer never holds (or shifts) more than one fragment.
const FRAGMENT_BYTES: usize = 1 << 20;
/// Each connection's read buffer, allocated up front: tungstenite's 128 KiB default made
/// 200 idle connections hold 25 MiB that the allocator kept after they closed. Large frames
/// are still read straight into a buffer of their own size, this many bytes per read.
const READ_BUFFER_BYTES: usize = 32 << 10;
/// How long a closing connection may take to flush its Close frame.
const CLOSE_FLUSH: Duration = Duration::from_secs(1);
/// TCP keepalive on accepted sockets, so a vanished peer's connection is eventually noticed.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(60);

/// Who may open a websocket on the local listener (§9.2–§9.3).
pub struct Security {
    /// SHA-256 of the connection token, if one is configured.
    token: Option<[u8; 32]>,
}

impl Security {
    pub fn new(token: Option<&str>) -> Security {
        Security { token: token.map(digest) }
    }
}

impl std::fmt::Debug for Security {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Security { token: <redacted> }")
    }
}

fn digest(text: &str) -> [u8; 32] {
    Sha256::digest(text.as_bytes()).into()
}

/// Constant-time comparison of a candidate token with the configured one (by digest, so
/// the length leaks nothing either).
fn token_matches(expected: &[u8; 32], candidate: &str) -> bool {
    let candidate = digest(candidate);
    expected.iter().zip(candidate.iter()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

/// Keepalive for rendezvous links (§8.6): ping this often, give up after this silence.
#[derive(Clone, Copy, Debug)]
pub struct Keepalive {
    pub ping_every: Duration,
    pub dead_after: Duration,
}

/// Accepts connections until shutdown is requested. Each connection gets a thread that
/// performs its handshake under a deadline and then serves it.
pub fn accept(listener: TcpListener, server: &Arc<Server>, security: Security) -> io::Result<()> {
    // std listens with a backlog of 128: a burst of connections beyond it loses SYNs, and
    // each lost one costs its client a one-second retransmit. Listening again resizes it.
    // SAFETY: listen(2) on a socket we own that is already listening.
    if unsafe { libc::listen(listener.as_raw_fd(), LISTEN_BACKLOG) } != 0 {
        log::warn!("cannot enlarge the listen backlog: {}", io::Error::last_os_error());
    }
    listener.set_nonblocking(true)?;
    let security = Arc::new(security);
    let pending = Arc::new(AtomicUsize::new(0));
    let upgraded = Arc::new(AtomicUsize::new(0));
    let mut fds = [
        libc::pollfd { fd: listener.as_raw_fd(), events: libc::POLLIN, revents: 0 },
        libc::pollfd { fd: shutdown::fd(), events: libc::POLLIN, revents: 0 },
    ];
    while !shutdown::requested() {
        // SAFETY: two valid pollfds.
        unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        loop {
            let (stream, peer) = match listener.accept() {
                Ok(accepted) => accepted,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // EMFILE and friends: log and keep serving the connections we have.
                    log::warn!("accept failed: {e}");
                    break;
                }
            };
            if pending.fetch_add(1, Ordering::SeqCst) >= MAX_PENDING_HANDSHAKES {
                pending.fetch_sub(1, Ordering::SeqCst);
                log::warn!("too many pending handshakes; dropping {peer}");
                continue;
            }
            let server = Arc::clone(server);
            let security = Arc::clone(&security);
            let pending = Arc::clone(&pending);
            let upgraded = Arc::clone(&upgraded);
            let spawned = std::thread::Builder::new().name("conn".into()).spawn(move || {
                let upgrade = handshake(stream, peer, &server, &security, &upgraded);
                pending.fetch_sub(1, Ordering::SeqCst);
                if let Some(ws) = upgrade {
                    serve(ws, &server, Transport::Local(peer), None);
                    upgraded.fetch_sub(1, Ordering::SeqCst);
                }
            });
            if let Err(e) = spawned {
                log::warn!("cannot start a connection thread: {e}");
            }
        }
    }
    Ok(())
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

/// Reads the HTTP request head, routes it (§9.1) and, for an accepted upgrade, answers
/// 101 and returns the websocket. Everything else is answered and dropped here.
fn handshake(
    mut stream: TcpStream,
    peer: SocketAddr,
    server: &Server,
    security: &Security,
    upgraded: &AtomicUsize,
) -> Option<WebSocket<TcpStream>> {
    let deadline = Instant::now() + server.config.handshake_timeout;
    let _ = stream.set_nodelay(true);
    let (buf, head_len) = match read_head(&mut stream, deadline) {
        Ok(Some(read)) => read,
        Ok(None) => return None,
        Err(e) => {
            log::debug!("handshake with {peer} failed: {e}");
            return None;
        }
    };
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut request = httparse::Request::new(&mut headers);
    if !matches!(request.parse(&buf[..head_len]), Ok(httparse::Status::Complete(_))) {
        respond(&mut stream, "400 Bad Request");
        return None;
    }
    let method = request.method.unwrap_or("");
    let target = request.path.unwrap_or("/");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let header = |name: &str| {
        request
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .and_then(|h| std::str::from_utf8(h.value).ok())
            .map(str::trim)
    };
    if path == "/readyz" || path == "/healthz" {
        match method {
            "GET" | "HEAD" => respond(&mut stream, "200 OK"),
            _ => respond(&mut stream, "405 Method Not Allowed"),
        }
        return None;
    }
    if !header("upgrade").is_some_and(|u| u.eq_ignore_ascii_case("websocket")) {
        respond(&mut stream, "404 Not Found");
        return None;
    }
    if header("origin").is_some() {
        respond(&mut stream, "403 Forbidden");
        return None;
    }
    if let Some(token) = &security.token {
        let from_query = query
            .split('&')
            .filter_map(|pair| pair.split_once('='))
            .find(|(name, _)| *name == "token")
            .map(|(_, value)| percent_decode(value));
        let from_header = header("authorization").and_then(|v| v.strip_prefix("Bearer "));
        let allowed = from_query.is_some_and(|t| token_matches(token, &t))
            || from_header.is_some_and(|t| token_matches(token, t.trim()));
        if !allowed {
            respond(&mut stream, "401 Unauthorized");
            return None;
        }
    }
    let limit = server.config.max_connections;
    let admitted = upgraded
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| (n < limit).then_some(n + 1))
        .is_ok();
    if !admitted {
        respond(&mut stream, "503 Service Unavailable");
        return None;
    }
    let key = header("sec-websocket-key");
    let valid = method == "GET"
        && header("sec-websocket-version") == Some("13")
        && header("connection")
            .is_some_and(|c| c.split(',').any(|t| t.trim().eq_ignore_ascii_case("upgrade")));
    let Some(key) = key.filter(|_| valid) else {
        upgraded.fetch_sub(1, Ordering::SeqCst);
        respond(&mut stream, "400 Bad Request");
        return None;
    };
    // Extensions (permessage-deflate) are declined by not echoing them.
    let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
    let response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
    );
    if stream.write_all(response.as_bytes()).is_err() {
        upgraded.fetch_sub(1, Ordering::SeqCst);
        return None;
    }
    let _ = stream.set_read_timeout(None);
    let _ = stream.set_write_timeout(None);
    set_keepalive(&stream);
    let rest = buf[head_len..].to_vec();
    Some(WebSocket::from_partially_read(
        stream,
        rest,
        Role::Server,
        Some(ws_config(&server.config)),
    ))
}

/// Reads until the end of the HTTP head; `None` when the peer gave up or sent too much.
fn read_head(stream: &mut TcpStream, deadline: Instant) -> io::Result<Option<(Vec<u8>, usize)>> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "handshake deadline passed"));
        }
        stream.set_read_timeout(Some(remaining))?;
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Ok(None);
        }
        let from = buf.len().saturating_sub(3);
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf[from..].windows(4).position(|w| w == b"\r\n\r\n") {
            return Ok(Some((buf, from + end + 4)));
        }
        if buf.len() > MAX_HEAD_BYTES {
            return Ok(None);
        }
    }
}

fn respond(stream: &mut TcpStream, status: &str) {
    let allow = if status.starts_with("405") { "Allow: GET, HEAD\r\n" } else { "" };
    let response =
        format!("HTTP/1.1 {status}\r\n{allow}Content-Length: 0\r\nConnection: close\r\n\r\n");
    let _ = stream.write_all(response.as_bytes());
    let _ = stream.shutdown(std::net::Shutdown::Write);
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn set_keepalive(stream: &TcpStream) {
    let fd = stream.as_raw_fd();
    let idle = KEEPALIVE_IDLE.as_secs() as libc::c_int;
    let on: libc::c_int = 1;
    let interval: libc::c_int = 10;
    let count: libc::c_int = 6;
    for (level, name, value) in [
        (libc::SOL_SOCKET, libc::SO_KEEPALIVE, on),
        (libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, idle),
        (libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, interval),
        (libc::IPPROTO_TCP, libc::TCP_KEEPCNT, count),
    ] {
        // SAFETY: setting an int socket option on a socket we own.
        unsafe {
            libc::setsockopt(
                fd,
                level,
                name,
                (&value as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
    }
}

/// A websocket's writing half: the guarded `WebSocket` on a non-blocking socket.
struct Writer<S> {
    ws: Mutex<WebSocket<S>>,
    /// Held for a whole outbound message, so fragments of two messages never interleave
    /// while the socket lock is released to wait for room.
    turn: Mutex<()>,
    fd: RawFd,
    write_stall: Duration,
    closing: AtomicBool,
}

impl<S: Read + Write + Send> Writer<S> {
    fn lock(&self) -> MutexGuard<'_, WebSocket<S>> {
        self.ws.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues one frame and flushes it, waiting for room without holding the lock.
    fn write(&self, message: Message) -> Result<(), Closed> {
        let mut ws = self.lock();
        if self.closing.load(Ordering::SeqCst) {
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
            if !wait_for(self.fd, libc::POLLOUT, Some(self.write_stall)) {
                log::warn!("peer accepted nothing for {:?}; closing", self.write_stall);
                self.close(CloseReason::Stalled);
                return Err(Closed);
            }
            ws = self.lock();
            if self.closing.load(Ordering::SeqCst) {
                return Err(Closed);
            }
        }
    }

    /// Flushes what is queued (a Close frame) for at most `CLOSE_FLUSH`, then shuts the
    /// socket down.
    fn finish(&self) {
        self.closing.store(true, Ordering::SeqCst);
        let deadline = Instant::now() + CLOSE_FLUSH;
        loop {
            let mut ws = self.lock();
            match ws.flush() {
                Err(WsError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {}
                _ => break,
            }
            drop(ws);
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() || !wait_for(self.fd, libc::POLLOUT, Some(remaining)) {
                break;
            }
        }
        // SAFETY: shutting down a socket we own; the descriptor stays open until drop.
        unsafe { libc::shutdown(self.fd, libc::SHUT_RDWR) };
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
            let frame = Frame::message(bytes.slice(offset..end), OpCode::Data(opcode), last);
            self.write(Message::Frame(frame))?;
            if last {
                return Ok(());
            }
            offset = end;
        }
    }

    fn close(&self, reason: CloseReason) {
        if self.closing.swap(true, Ordering::SeqCst) {
            return;
        }
        let code = match reason {
            CloseReason::Protocol => CloseCode::Protocol,
            CloseReason::GoingAway => CloseCode::Away,
            CloseReason::Stalled => CloseCode::Policy,
            CloseReason::TooBig => CloseCode::Size,
            CloseReason::InvalidData => CloseCode::Invalid,
        };
        let _ = self.lock().close(Some(CloseFrame { code, reason: "".into() }));
        // Wake the reader, which flushes the Close frame and tears the socket down.
        // SAFETY: shutting down the read side of a socket we own.
        unsafe { libc::shutdown(self.fd, libc::SHUT_RD) };
    }
}

/// Serves one websocket until it ends: the read loop of STYLE.md. The socket is switched
/// to non-blocking; the loop waits in `poll(2)` without the lock, then reads everything
/// there is, and hands each message to the connection.
pub fn serve<S>(
    ws: WebSocket<S>,
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
    let writer = Arc::new(Writer {
        ws: Mutex::new(ws),
        turn: Mutex::new(()),
        fd,
        write_stall: server.config.write_stall,
        closing: AtomicBool::new(false),
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
            if !wait_for(fd, libc::POLLIN, timeout) {
                let Some(k) = keepalive else { continue };
                if last_heard.elapsed() >= k.dead_after {
                    log::warn!("rendezvous link silent for {:?}; closing", k.dead_after);
                    writer.close(CloseReason::GoingAway);
                    break;
                }
                let _ = writer.lock().write(Message::Ping(Bytes::new()));
                let _ = writer.lock().flush();
                next_ping = Some(Instant::now() + k.ping_every);
                continue;
            }
            drained = false;
        }
        // One message per lock: it is handled (and, when quick, answered) before the next
        // read, so a lone request's response never waits behind the read that finds the
        // socket empty.
        let event = read_one(&mut writer.lock());
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

/// Waits until `fd` is ready for `events` (or hung up); false on timeout.
fn wait_for(fd: RawFd, events: libc::c_short, timeout: Option<Duration>) -> bool {
    let deadline = timeout.map(|t| Instant::now() + t);
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
        let mut pfd = libc::pollfd { fd, events, revents: 0 };
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut pfd, 1, ms) };
        if n > 0 {
            return true;
        }
        if n < 0 && io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            return true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%20b%2Fc"), "a b/c");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz"), "%zz");
    }

    #[test]
    fn token_comparison() {
        let token = digest("secret");
        assert!(token_matches(&token, "secret"));
        assert!(!token_matches(&token, "secreT"));
        assert!(!token_matches(&token, ""));
    }
}
