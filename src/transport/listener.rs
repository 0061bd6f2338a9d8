//! The local websocket listener (PROTOCOL.md §9): accepting TCP connections, the HTTP
//! request head under a deadline, health routes, the upgrade checks (Origin, token), and
//! handing each accepted websocket to `websocket::serve`. It parses no JSON-RPC and writes
//! nothing to an upgraded socket itself.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tungstenite::protocol::Role;
use tungstenite::WebSocket;

use super::websocket::{serve, ws_config, Reading};
use crate::rpc::{Server, Transport};
use crate::shutdown;

/// Largest HTTP request head accepted before an upgrade (§10).
const MAX_HEAD_BYTES: usize = 16 << 10;
/// Connections the kernel may queue before we accept them (capped by somaxconn).
const LISTEN_BACKLOG: libc::c_int = 1024;
/// TCP connections still in their HTTP handshake at once; more are dropped at accept.
const MAX_PENDING_HANDSHAKES: usize = 1024;
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
    let mut out = [0u8; 32];
    out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, text.as_bytes()).as_ref());
    out
}

/// Constant-time comparison of a candidate token with the configured one (by digest, so
/// the length leaks nothing either).
fn token_matches(expected: &[u8; 32], candidate: &str) -> bool {
    let candidate = digest(candidate);
    expected.iter().zip(candidate.iter()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
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
                if let Some((ws, already)) = upgrade {
                    serve(ws, Reading::Frames(already), &server, Transport::Local(peer), None);
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

/// Reads the HTTP request head, routes it (§9.1) and, for an accepted upgrade, answers
/// 101 and returns the websocket with the bytes read past the head. Everything else is
/// answered and dropped here.
fn handshake(
    mut stream: TcpStream,
    peer: SocketAddr,
    server: &Server,
    security: &Security,
    upgraded: &AtomicUsize,
) -> Option<(WebSocket<TcpStream>, Vec<u8>)> {
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
    // frames.rs reads this socket; tungstenite only writes, so it needs no read buffer.
    let config = ws_config(&server.config).read_buffer_size(0);
    let ws = WebSocket::from_raw_socket(stream, Role::Server, Some(config));
    Some((ws, buf[head_len..].to_vec()))
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
