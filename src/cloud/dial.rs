//! Dialing the rendezvous websocket (PROTOCOL.md §8.6): name resolution, TCP connect (or a
//! proxy tunnel, proxy.rs), TLS
//! for `wss://` and the websocket upgrade, all within one deadline. It returns the socket and
//! keeps nothing; it never logs a URL's query string.

use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use rustls::ClientConfig;
use tungstenite::handshake::HandshakeError;
use tungstenite::WebSocket;

use super::proxy::Proxies;
use crate::transport::tls::{Stream, TlsStream};

/// TCP connect, TLS and the websocket upgrade together (§8.6).
pub const RENDEZVOUS_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Opens the rendezvous websocket at `url` exactly as given (no extra headers, no
/// compression offered): TCP with `TCP_NODELAY`, TLS for `wss://`, then the upgrade, all
/// before one deadline. The socket is returned blocking with no timeouts; the caller sets
/// it up for serving. Errors are for logs and never include the query string.
pub fn dial(
    url: &str,
    tls_config: &Arc<ClientConfig>,
    proxies: &Proxies,
    timeout: Duration,
) -> Result<WebSocket<Stream>, String> {
    let deadline = Instant::now() + timeout;
    let uri: tungstenite::http::Uri =
        url.parse().map_err(|_| "invalid rendezvous URL".to_owned())?;
    let secure = match uri.scheme_str() {
        Some("wss") => true,
        Some("ws") => false,
        _ => return Err("rendezvous URL must be ws:// or wss://".to_owned()),
    };
    let host = uri.host().ok_or("rendezvous URL has no host")?;
    let host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
    let port = uri.port_u16().unwrap_or(if secure { 443 } else { 80 });

    let tcp = open(proxies, secure, &host, port, deadline)?;
    tcp.set_nodelay(true).map_err(|err| format!("TCP_NODELAY: {err}"))?;
    let stream = if secure {
        let tls = TlsStream::connect(tcp, &host, tls_config.clone(), deadline)
            .map_err(|err| format!("TLS: {err}"))?;
        Stream::Tls(Box::new(tls))
    } else {
        Stream::Plain(tcp)
    };

    let mut attempt = {
        set_deadline(stream.tcp(), deadline)?;
        tungstenite::client::client(url, stream)
    };
    let ws = loop {
        match attempt {
            Ok((ws, _response)) => break ws,
            Err(HandshakeError::Interrupted(mid)) => {
                // A socket timeout surfaces as an interrupted handshake; go on until the
                // deadline, which `set_deadline` enforces.
                set_deadline(mid.get_ref().get_ref().tcp(), deadline)?;
                attempt = mid.handshake();
            }
            Err(HandshakeError::Failure(err)) => return Err(format!("websocket upgrade: {err}")),
        }
    };
    let tcp = ws.get_ref().tcp();
    tcp.set_read_timeout(None)
        .and_then(|()| tcp.set_write_timeout(None))
        .map_err(|err| err.to_string())?;
    Ok(ws)
}

/// A TCP connection to `host:port`: direct, or a CONNECT tunnel through the proxy
/// `proxies` selects for it. TLS to the target, if any, is the caller's, inside it.
pub(super) fn open(
    proxies: &Proxies,
    secure: bool,
    host: &str,
    port: u16,
    deadline: Instant,
) -> Result<TcpStream, String> {
    match proxies.select(secure, host, port) {
        Some(proxy) => {
            let addrs = resolve(&proxy.host, proxy.port, deadline)
                .map_err(|e| format!("proxy {proxy}: {e}"))?;
            let tcp = connect_any(&addrs, deadline).map_err(|e| format!("proxy {proxy}: {e}"))?;
            super::proxy::connect_over(tcp, proxy, host, port, deadline)
        }
        None => connect_any(&resolve(host, port, deadline)?, deadline),
    }
}

pub(super) fn set_deadline(tcp: &TcpStream, deadline: Instant) -> Result<(), String> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err("timed out".to_owned());
    }
    tcp.set_read_timeout(Some(left))
        .and_then(|()| tcp.set_write_timeout(Some(left)))
        .map_err(|err| err.to_string())
}

/// Name resolution has no timeout of its own, so it runs on a helper thread that the
/// deadline abandons; the resolver's own timeouts end that thread.
pub(super) fn resolve(host: &str, port: u16, deadline: Instant) -> Result<Vec<SocketAddr>, String> {
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    let (tx, rx) = mpsc::channel();
    let target = (host.to_owned(), port);
    thread::Builder::new()
        .name("resolve".to_owned())
        .spawn(move || {
            let result = target.to_socket_addrs().map(Iterator::collect::<Vec<_>>);
            // The receiver may have given up; nothing to do then.
            let _ = tx.send(result);
        })
        .map_err(|err| format!("resolving {host}: {err}"))?;
    match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        Ok(Ok(addrs)) if !addrs.is_empty() => Ok(addrs),
        Ok(Ok(_)) => Err(format!("resolving {host}: no addresses")),
        Ok(Err(err)) => Err(format!("resolving {host}: {err}")),
        Err(_) => Err(format!("resolving {host}: timed out")),
    }
}

pub(super) fn connect_any(addrs: &[SocketAddr], deadline: Instant) -> Result<TcpStream, String> {
    let mut last = String::from("no address");
    for addr in addrs {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err("connect timed out".to_owned());
        }
        match TcpStream::connect_timeout(addr, left) {
            Ok(tcp) => return Ok(tcp),
            Err(err) => last = format!("connect {addr}: {err}"),
        }
    }
    Err(last)
}
