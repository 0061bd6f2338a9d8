//! Dialing the rendezvous websocket (PROTOCOL.md §8.6): the connection (net/dial.rs: TCP or
//! a proxy tunnel, TLS for `wss://`) and the websocket upgrade, all within one deadline. It returns the socket and
//! keeps nothing; it never logs a URL's query string.

use std::time::{Duration, Instant};

use tungstenite::handshake::HandshakeError;
use tungstenite::WebSocket;

use crate::net::dial::{set_deadline, Dialer};
use crate::net::http1::Target;
use crate::net::tls::Stream;

/// TCP connect, TLS and the websocket upgrade together (§8.6).
pub const RENDEZVOUS_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Opens the rendezvous websocket at `url` exactly as given (no extra headers, no
/// compression offered): TCP with `TCP_NODELAY`, TLS for `wss://`, then the upgrade, all
/// before one deadline. The socket is returned blocking with no timeouts; the caller sets
/// it up for serving. Errors are for logs and never include the query string.
pub fn dial(url: &str, dialer: &Dialer, timeout: Duration) -> Result<WebSocket<Stream>, String> {
    let deadline = Instant::now() + timeout;
    let target = Target::parse_websocket(url).map_err(|e| format!("rendezvous URL: {e}"))?;
    let stream = dialer.connect(target.secure, &target.host, target.port, deadline)?;

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
