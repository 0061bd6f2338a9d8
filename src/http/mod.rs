//! `http/request` and its `http/request/bodyDelta` notifications (upstream codex 0.171): the
//! wire types, the checks in upstream's order with upstream's messages, and the split of a
//! streamed response into header result + ordered body deltas. The HTTP exchange itself
//! (connections, redirects, timeouts) is in `client.rs`, URL parsing in `url.rs`.
//!
//! It sends notifications only through the callback it is handed (it does not know sessions
//! or sockets) and imports nothing from the RPC layer but `RpcError`. Header values may be
//! secrets (`valueEnvVar` resolves credentials from the daemon's environment): they are never
//! logged, and only header *names* appear in error messages.

mod client;
mod url;

use std::fmt;
use std::io::Read;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize};
use tungstenite::http::{HeaderName, HeaderValue, Method};

use crate::error::RpcError;
use crate::net::http1::{Body, BodyError};

use client::Hop;
use url::{Url, UrlError};

/// Largest response body a buffered request returns; base64 makes the message 4/3 of this.
/// Larger bodies fail the request (use `streamResponse` for them).
pub const MAX_BUFFERED_BODY_BYTES: u64 = 64 << 20;
/// Streamed responses in flight over the whole daemon; each holds a thread and a socket.
pub const MAX_STREAMED_RESPONSES: usize = 64;
/// Requests waiting for a response head or reading a buffered body, over the whole daemon.
/// Each holds a worker of the request pool (default 64) for as long as the server takes,
/// without a deadline when `timeoutMs` is absent; this leaves the rest of the pool to others.
pub const MAX_REQUESTS_IN_FLIGHT: usize = 32;
/// Most bytes one `http/request/bodyDelta` carries.
const DELTA_BYTES: usize = 64 << 10;
/// Stack of a body-streaming thread: it only copies bytes and encodes base64.
const STREAM_THREAD_STACK_BYTES: usize = 128 << 10;
/// The method of the streamed-body notification.
const BODY_DELTA_METHOD: &str = "http/request/bodyDelta";
/// Upstream's (reqwest's) text for any failure while reading a response body.
const BODY_ERROR: &str = "error decoding response body";

/// Requests holding a pool worker now; at most `MAX_REQUESTS_IN_FLIGHT`.
static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);
/// Streamed responses in flight, as (scope, requestId); at most `MAX_STREAMED_RESPONSES`.
static STREAMS: Mutex<Vec<(String, String)>> = Mutex::new(Vec::new());

/// `http/request` params. Members are declared in upstream's order, which decides which
/// missing member a decode error names.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RequestParams {
    method: String,
    url: String,
    #[serde(default)]
    headers: Vec<Header>,
    #[serde(default, rename = "bodyBase64", deserialize_with = "optional_base64")]
    body: Option<Vec<u8>>,
    #[serde(default)]
    timeout_ms: Timeout,
    request_id: String,
    #[serde(default)]
    stream_response: bool,
    #[serde(default)]
    redirect_policy: RedirectPolicy,
}

/// One request header. The value sent is `value` followed by the value of the daemon's
/// environment variable `valueEnvVar` when that is given (so `value` can be `"Bearer "`).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Header {
    name: String,
    value: String,
    #[serde(default)]
    value_env_var: Option<String>,
}

impl fmt::Debug for Header {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Header").field("name", &self.name).field("value", &"<redacted>").finish()
    }
}

/// A response header as it goes on the wire.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct ResponseHeader {
    pub name: String,
    pub value: String,
}

/// `timeoutMs`: absent and `null` both mean no deadline (measured on 0.171: a response
/// after 40 s still arrived), a number is a deadline over the whole exchange, body included.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Timeout {
    #[default]
    Disabled,
    Millis(u64),
}

impl<'de> Deserialize<'de> for Timeout {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct TimeoutVisitor;
        impl<'de> Visitor<'de> for TimeoutVisitor {
            type Value = Timeout;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("u64")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Timeout, E> {
                Ok(Timeout::Millis(v))
            }
            // Upstream answers "invalid number" for negative and fractional values.
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Timeout, E> {
                u64::try_from(v).map(Timeout::Millis).map_err(|_| E::custom("invalid number"))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Timeout, E> {
                Err(E::custom("invalid number"))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Timeout, E> {
                Ok(Timeout::Disabled)
            }
            fn visit_none<E: de::Error>(self) -> Result<Timeout, E> {
                Ok(Timeout::Disabled)
            }
        }
        d.deserialize_any(TimeoutVisitor)
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum RedirectPolicy {
    #[default]
    Follow,
    Stop,
}

impl<'de> Deserialize<'de> for RedirectPolicy {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match crate::wire::unit_variant(d, &["follow", "stop"])? {
            0 => Ok(RedirectPolicy::Follow),
            _ => Ok(RedirectPolicy::Stop),
        }
    }
}

/// `http/request` result. For a streamed response `bodyBase64` is empty and the body
/// follows as notifications.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RequestResponse {
    pub status: u16,
    pub headers: Vec<ResponseHeader>,
    pub body_base64: String,
}

/// `http/request/bodyDelta` params. `error` is written even when null, as upstream does.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct BodyDelta<'a> {
    request_id: &'a str,
    seq: u64,
    delta_base64: String,
    done: bool,
    error: Option<&'a str>,
}

#[derive(Serialize)]
struct Notification<P> {
    method: &'static str,
    params: P,
}

/// A streamed response whose body has not been read yet. It holds one of the
/// `MAX_STREAMED_RESPONSES` slots until its stream ends.
pub struct PendingBody {
    request_id: String,
    body: Body,
    _slot: StreamSlot,
}

/// A streamed request in flight, from its start until its last delta: its `requestId`
/// cannot be used for another stream in the same scope meanwhile (as upstream, where the
/// scope is the connection; here it is the session, which a resume carries along).
struct StreamSlot {
    key: (String, String),
}

impl StreamSlot {
    fn take(scope: &str, request_id: &str) -> Result<StreamSlot, RpcError> {
        let key = (scope.to_owned(), request_id.to_owned());
        let mut active = STREAMS.lock().unwrap_or_else(PoisonError::into_inner);
        if active.contains(&key) {
            return Err(RpcError::invalid_params(format!(
                "http/request streamResponse requestId `{request_id}` is already active"
            )));
        }
        if active.len() >= MAX_STREAMED_RESPONSES {
            return Err(failed(format!(
                "too many streamed responses in progress (limit {MAX_STREAMED_RESPONSES})"
            )));
        }
        active.push(key.clone());
        Ok(StreamSlot { key })
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut active = STREAMS.lock().unwrap_or_else(PoisonError::into_inner);
        active.retain(|key| *key != self.key);
    }
}

/// One of the `MAX_REQUESTS_IN_FLIGHT` places, held until the handler returns.
struct InFlight;

impl InFlight {
    fn take() -> Result<InFlight, RpcError> {
        IN_FLIGHT
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < MAX_REQUESTS_IN_FLIGHT).then_some(n + 1)
            })
            .map(|_| InFlight)
            .map_err(|_| {
                failed(format!("too many requests in progress (limit {MAX_REQUESTS_IN_FLIGHT})"))
            })
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        IN_FLIGHT.fetch_sub(1, Ordering::AcqRel);
    }
}

fn optional_base64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
    match Option::<String>::deserialize(d)? {
        None => Ok(None),
        // Upstream's message is the base64 decoder's own text, without a prefix.
        Some(text) => BASE64.decode(text.as_bytes()).map(Some).map_err(de::Error::custom),
    }
}

fn failed(detail: impl fmt::Display) -> RpcError {
    RpcError::internal(format!("http/request failed: {detail}"))
}

/// Runs one `http/request`. A buffered request returns its whole body; a streamed one
/// returns status and headers plus the body still to be sent with `PendingBody::stream`,
/// which the caller starts once this result has been written (deltas follow the result).
/// `scope` names the session: a streamed `requestId` is unique within it while active.
pub fn request(
    p: RequestParams,
    scope: &str,
) -> Result<(RequestResponse, Option<PendingBody>), RpcError> {
    // Upstream checks an active stream's id first, before anything else in the params.
    let slot = match p.stream_response {
        true => Some(StreamSlot::take(scope, &p.request_id)?),
        false => None,
    };
    let method = Method::from_bytes(p.method.as_bytes())
        .map_err(|e| RpcError::invalid_params(format!("http/request method is invalid: {e}")))?;
    let url = Url::parse(&p.url).map_err(|e| match e {
        UrlError::Scheme(scheme) => RpcError::invalid_params(format!(
            "http/request only supports http and https URLs, got {scheme}"
        )),
        UrlError::Invalid(message) => {
            RpcError::invalid_params(format!("http/request url is invalid: {message}"))
        }
    })?;
    let headers = build_headers(p.headers)?;
    let timeout = match p.timeout_ms {
        Timeout::Disabled => None,
        Timeout::Millis(ms) => Some(Duration::from_millis(ms)),
    };
    log::debug!(
        "http/request {}: {} {} ({} headers, {} body bytes, stream {})",
        p.request_id,
        method,
        url.origin(),
        headers.len(),
        p.body.as_ref().map_or(0, Vec::len),
        p.stream_response
    );
    let _in_flight = InFlight::take()?;
    // As upstream, an empty `bodyBase64` sends no body at all (no `Content-Length: 0`).
    let body = p.body.filter(|b| !b.is_empty());
    let hop = Hop { method, url, headers, body };
    let follow = p.redirect_policy == RedirectPolicy::Follow;
    let response = client::send(hop, follow, timeout).map_err(failed)?;
    let status = response.status;
    let headers = response
        .headers
        .into_iter()
        // As upstream: values that are not visible ASCII are left out.
        .filter(|(_, value)| value.iter().all(|&b| b == b'\t' || (b' '..=b'~').contains(&b)))
        .map(|(name, value)| ResponseHeader {
            name,
            value: String::from_utf8(value).expect("visible ASCII is UTF-8"),
        })
        .collect();
    let body = response.body;
    match slot {
        Some(slot) => Ok((
            RequestResponse { status, headers, body_base64: String::new() },
            Some(PendingBody { request_id: p.request_id, body, _slot: slot }),
        )),
        None => {
            let bytes = read_all(body)?;
            Ok((RequestResponse { status, headers, body_base64: BASE64.encode(bytes) }, None))
        }
    }
}

/// Upstream's header checks, header by header: the name, then `valueEnvVar`, then the value.
fn build_headers(headers: Vec<Header>) -> Result<Vec<(HeaderName, HeaderValue)>, RpcError> {
    let mut out = Vec::with_capacity(headers.len());
    for header in headers {
        let name = HeaderName::from_bytes(header.name.as_bytes()).map_err(|e| {
            RpcError::invalid_params(format!("http/request header name is invalid: {e}"))
        })?;
        let mut value = header.value;
        if let Some(var) = &header.value_env_var {
            match std::env::var_os(var) {
                Some(v) if v.is_empty() => {
                    return Err(RpcError::invalid_params(format!(
                        "http/request header {} requires a non-empty executor environment variable {var}",
                        header.name
                    )))
                }
                Some(v) => match v.to_str() {
                    Some(v) => value.push_str(v),
                    // A value that is not UTF-8 cannot be a header value either.
                    None => {
                        return Err(RpcError::invalid_params(format!(
                            "http/request header value is invalid for {}: failed to parse header value",
                            header.name
                        )))
                    }
                },
                None => {
                    return Err(RpcError::invalid_params(format!(
                        "http/request header {} requires executor environment variable {var}",
                        header.name
                    )))
                }
            }
        }
        let value = HeaderValue::from_str(&value).map_err(|e| {
            RpcError::invalid_params(format!(
                "http/request header value is invalid for {}: {e}",
                header.name
            ))
        })?;
        out.push((name, value));
    }
    Ok(out)
}

/// A buffered response's body, at most `MAX_BUFFERED_BODY_BYTES`.
fn read_all(mut body: Body) -> Result<Vec<u8>, RpcError> {
    body.read_to_vec(MAX_BUFFERED_BODY_BYTES).map_err(|e| {
        let detail = match e {
            BodyError::TooLarge(_) => {
                format!("response body exceeds {MAX_BUFFERED_BODY_BYTES} bytes; use streamResponse")
            }
            BodyError::Io(_) => BODY_ERROR.to_owned(),
        };
        RpcError::internal(format!("failed to read http/request response body: {detail}"))
    })
}

impl PendingBody {
    /// Sends the body as `http/request/bodyDelta` notifications on a thread of its own:
    /// `seq` counts from 1, each delta carries the bytes of one read, and a last delta with
    /// `done: true` and empty data ends the stream (with `error` when reading failed).
    /// `notify` returns false once nobody can receive them; the stream then stops.
    pub fn stream(self, notify: impl Fn(String) -> bool + Send + 'static) {
        let id = self.request_id.clone();
        let spawned = std::thread::Builder::new()
            .name("http-body".into())
            .stack_size(STREAM_THREAD_STACK_BYTES)
            .spawn(move || self.run(&notify));
        if let Err(e) = spawned {
            log::error!("http/request {id}: cannot start the body stream: {e}");
        }
    }

    fn run(self, notify: &dyn Fn(String) -> bool) {
        let PendingBody { request_id, body: mut reader, _slot: slot } = self;
        let mut buf = vec![0u8; DELTA_BYTES];
        let mut seq = 1u64;
        let delta = |seq: u64, bytes: &[u8], done: bool, error: Option<&str>| {
            let params = BodyDelta {
                request_id: &request_id,
                seq,
                delta_base64: BASE64.encode(bytes),
                done,
                error,
            };
            serde_json::to_string(&Notification { method: BODY_DELTA_METHOD, params })
                .expect("a delta is strings, integers and booleans")
        };
        // The id is released before the last delta goes out, so a client may reuse it as
        // soon as it sees `done`.
        loop {
            match reader.read(&mut buf) {
                Ok(0) => {
                    drop(slot);
                    notify(delta(seq, &[], true, None));
                    break;
                }
                Ok(n) => {
                    if !notify(delta(seq, &buf[..n], false, None)) {
                        log::debug!("http/request {request_id}: receiver gone; stream stopped");
                        return;
                    }
                    seq += 1;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    log::debug!("http/request {request_id}: body read failed: {e}");
                    drop(slot);
                    notify(delta(seq, &[], true, Some(BODY_ERROR)));
                    break;
                }
            }
        }
        log::debug!("http/request {request_id}: body streamed in {seq} deltas");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(json: &str) -> Result<RequestParams, String> {
        serde_json::from_str(json).map_err(|e| {
            let text = e.to_string();
            let position = format!(" at line {} column {}", e.line(), e.column());
            text.strip_suffix(&position).unwrap_or(&text).to_owned()
        })
    }

    #[test]
    fn decoding_matches_upstream() {
        assert_eq!(params(r#"{}"#).err().unwrap(), "missing field `method`");
        assert_eq!(
            params(r#"{"method":"GET","url":"http://h/"}"#).err().unwrap(),
            "missing field `requestId`"
        );
        let p = params(r#"{"method":"GET","url":"http://h/","requestId":""}"#).unwrap();
        assert_eq!(p.timeout_ms, Timeout::Disabled);
        assert_eq!(p.redirect_policy, RedirectPolicy::Follow);
        assert!(!p.stream_response);
        let with = |member: &str| {
            params(&format!(r#"{{"method":"GET","url":"http://h/","requestId":"r",{member}}}"#))
        };
        assert_eq!(with(r#""timeoutMs":null"#).unwrap().timeout_ms, Timeout::Disabled);
        assert_eq!(with(r#""timeoutMs":7"#).unwrap().timeout_ms, Timeout::Millis(7));
        assert_eq!(with(r#""timeoutMs":-1"#).err().unwrap(), "invalid number");
        assert_eq!(with(r#""timeoutMs":1.5"#).err().unwrap(), "invalid number");
        assert_eq!(
            with(r#""timeoutMs":"default""#).err().unwrap(),
            "invalid type: string \"default\", expected u64"
        );
        assert_eq!(
            with(r#""redirectPolicy":"bogus""#).err().unwrap(),
            "unknown variant `bogus`, expected `follow` or `stop`"
        );
        assert_eq!(with(r#""bodyBase64":"!!!""#).err().unwrap(), "Invalid symbol 33, offset 0.");
        assert_eq!(with(r#""bodyBase64":null"#).unwrap().body, None);
        assert_eq!(
            with(r#""headers":[{"name":"a","valueEnvVar":"X"}]"#).err().unwrap(),
            "missing field `value`"
        );
        assert_eq!(
            with(r#""redirectPolicy":null"#).err().unwrap(),
            "invalid type: null, expected string or map"
        );
        assert_eq!(
            with(r#""streamResponse":null"#).err().unwrap(),
            "invalid type: null, expected a boolean"
        );
    }

    #[test]
    fn header_values_are_redacted_in_debug() {
        let h =
            Header { name: "Authorization".into(), value: "Bearer x".into(), value_env_var: None };
        assert!(!format!("{h:?}").contains("Bearer"));
    }

    #[test]
    fn header_checks_run_in_upstream_order() {
        let header = |name: &str, value: &str, var: Option<&str>| Header {
            name: name.into(),
            value: value.into(),
            value_env_var: var.map(Into::into),
        };
        let err = |headers| build_headers(headers).err().unwrap().message;
        assert_eq!(
            err(vec![header("bad name", "v", Some("EXEC_SERVER_TEST_UNSET_VAR"))]),
            "http/request header name is invalid: invalid HTTP header name"
        );
        assert_eq!(
            err(vec![header("X", "v", Some("EXEC_SERVER_TEST_UNSET_VAR"))]),
            "http/request header X requires executor environment variable EXEC_SERVER_TEST_UNSET_VAR"
        );
        assert_eq!(
            err(vec![header("X", "a\nb", None)]),
            "http/request header value is invalid for X: failed to parse header value"
        );
    }
}
