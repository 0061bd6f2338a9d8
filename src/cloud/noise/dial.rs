//! Opening the Noise relay's rendezvous websocket: the connection (net/dial.rs: TCP or a
//! proxy tunnel, TLS for `wss://`),
//! the upgrade to the registry's URL exactly, with the one header 0.171 adds
//! (`x-request-id: req_<32 hex>`), all before one deadline. It tells an upgrade the relay
//! refused (HTTP status, which decides whether to register again) from every other
//! failure. It reads no frames.

use std::time::{Duration, Instant};

use tungstenite::client::IntoClientRequest;
use tungstenite::handshake::HandshakeError;
use tungstenite::http::HeaderValue;
use tungstenite::WebSocket;

use crate::net::dial::{set_deadline, Dialer};
use crate::net::http1::Target;
use crate::net::tls::Stream;

/// Why a dial failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DialError {
    /// The relay answered the upgrade with this HTTP status.
    Rejected(u16),
    /// Anything else (resolution, TCP, TLS, timeout), for logs.
    Failed(String),
}

impl std::fmt::Display for DialError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DialError::Rejected(status) => {
                write!(f, "relay refused the upgrade with HTTP {status}")
            }
            DialError::Failed(reason) => f.write_str(reason),
        }
    }
}

pub fn dial(url: &str, dialer: &Dialer, timeout: Duration) -> Result<WebSocket<Stream>, DialError> {
    let failed = |s: String| DialError::Failed(s);
    let deadline = Instant::now() + timeout;
    let target =
        Target::parse_websocket(url).map_err(|e| failed(format!("rendezvous URL: {e}")))?;
    let mut request =
        url.into_client_request().map_err(|_| failed("invalid rendezvous URL".into()))?;
    let request_id = format!("req_{}", uuid::Uuid::new_v4().simple());
    let value = HeaderValue::from_str(&request_id).map_err(|e| failed(e.to_string()))?;
    request.headers_mut().insert("x-request-id", value);

    let stream =
        dialer.connect(target.secure, &target.host, target.port, deadline).map_err(failed)?;
    set_deadline(stream.tcp(), deadline).map_err(failed)?;
    let mut attempt = tungstenite::client::client(request, stream);
    let ws = loop {
        match attempt {
            Ok((ws, _response)) => break ws,
            Err(HandshakeError::Interrupted(mid)) => {
                set_deadline(mid.get_ref().get_ref().tcp(), deadline).map_err(failed)?;
                attempt = mid.handshake();
            }
            Err(HandshakeError::Failure(tungstenite::Error::Http(response))) => {
                return Err(DialError::Rejected(response.status().as_u16()))
            }
            Err(HandshakeError::Failure(e)) => {
                return Err(failed(format!("websocket upgrade: {e}")))
            }
        }
    };
    let tcp = ws.get_ref().tcp();
    tcp.set_read_timeout(None)
        .and_then(|()| tcp.set_write_timeout(None))
        .map_err(|e| failed(e.to_string()))?;
    log::debug!("rendezvous upgrade done ({request_id})");
    Ok(ws)
}
