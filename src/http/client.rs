//! The HTTP exchange behind `http/request`: one HTTP/1.1 request per hop over a connection
//! of net/ (the daemon's trust list and proxies, as the cloud legs use), redirects followed
//! here hop by hop the way upstream follows them (at most `MAX_REDIRECTS`, 301/302/303 turn
//! into a bodiless GET, credentials dropped across origins, a `Referer` added), and one
//! deadline over all hops. It returns the final response with its body unread; it does not
//! know JSON-RPC and never logs header values.

use std::fmt;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use tungstenite::http::{header, HeaderName, HeaderValue, Method, StatusCode};

use super::url::{Scheme, Url, UrlError};
use crate::net::dial::Dialer;
use crate::net::http1::{self, Response};

/// Upstream follows at most this many redirects; the next one is an error.
const MAX_REDIRECTS: usize = 10;
/// Connecting to a host, whatever `timeoutMs` says (absent means no deadline, as upstream):
/// a response may take as long as it takes, but an unreachable host must not hold a worker
/// for the kernel's minutes of SYN retries.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// Headers that must not follow a redirect to another origin.
const SENSITIVE: [HeaderName; 4] =
    [header::AUTHORIZATION, header::COOKIE, header::PROXY_AUTHORIZATION, header::WWW_AUTHENTICATE];

/// One request to send: the first, or the next hop of a redirect.
pub struct Hop {
    pub method: Method,
    pub url: Url,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// None sends no body and no `Content-Length` (as upstream does without `bodyBase64`).
    pub body: Option<Vec<u8>>,
}

/// Why no response came back; `Display` is upstream's text after `http/request failed: `.
#[derive(Debug)]
pub enum SendError {
    /// Connecting, TLS, writing the request or reading the response head failed or timed
    /// out. Carries the URL of the hop, printed normalized and without credentials.
    Send(String),
    /// The deadline had passed before a hop could start.
    Timeout,
    TooManyRedirects,
    RedirectScheme(String),
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SendError::Send(url) => write!(f, "error sending request for url ({url})"),
            SendError::Timeout => f.write_str("route-aware request timed out"),
            SendError::TooManyRedirects => f.write_str("too many redirects"),
            SendError::RedirectScheme(scheme) => {
                write!(f, "redirect target uses unsupported URL scheme: {scheme}")
            }
        }
    }
}

/// How every `http/request` reaches servers: the §8.7 trust list (bundled roots, the system
/// bundle, `SSL_CERT_FILE`, `SSL_CERT_DIR`) and the proxy variables as curl reads them, as
/// cloud mode reads them. When they are unusable (a CA file that cannot be read, a
/// malformed proxy URL) every request fails, with the reason logged once, rather than
/// going out with less trust or directly.
fn dialer() -> &'static Result<Dialer, String> {
    static DIALER: OnceLock<Result<Dialer, String>> = OnceLock::new();
    DIALER.get_or_init(|| {
        Dialer::from_env(None, None, &|name| std::env::var(name).ok()).map_err(|e| {
            log::warn!("http/request: {e}; every request fails until it is fixed");
            e
        })
    })
}

/// Sends `hop`, following redirects when `follow`, all within `timeout` from now.
pub fn send(mut hop: Hop, follow: bool, timeout: Option<Duration>) -> Result<Response, SendError> {
    let deadline = timeout.map(|t| Instant::now() + t);
    let mut redirects = 0;
    loop {
        let left = match deadline {
            Some(deadline) => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(SendError::Timeout);
                }
                Some(left)
            }
            None => None,
        };
        let response = send_one(&hop, left)?;
        let status = StatusCode::from_u16(response.status).unwrap_or(StatusCode::BAD_GATEWAY);
        if !follow || !is_redirect(status) {
            return Ok(response);
        }
        let Some(location) = response.header("location") else {
            return Ok(response);
        };
        let next = match hop.url.join(location) {
            Ok(next) => next,
            Err(UrlError::Scheme(scheme)) => return Err(SendError::RedirectScheme(scheme)),
            // A Location that is not a URL is not followed: the 3xx is the answer.
            Err(UrlError::Invalid(_)) => return Ok(response),
        };
        if redirects >= MAX_REDIRECTS {
            return Err(SendError::TooManyRedirects);
        }
        redirects += 1;
        hop = redirect(hop, status, next);
    }
}

fn is_redirect(status: StatusCode) -> bool {
    matches!(status.as_u16(), 301 | 302 | 303 | 307 | 308)
}

/// The next hop after a redirect from `hop` to `next`.
fn redirect(mut hop: Hop, status: StatusCode, next: Url) -> Hop {
    if matches!(status.as_u16(), 301..=303) {
        // As browsers and upstream do: the body is dropped and the method becomes GET.
        hop.body = None;
        hop.headers.retain(|(name, _)| {
            ![
                header::CONTENT_TYPE,
                header::CONTENT_LENGTH,
                header::CONTENT_ENCODING,
                header::TRANSFER_ENCODING,
            ]
            .contains(name)
        });
        if hop.method != Method::GET && hop.method != Method::HEAD {
            hop.method = Method::GET;
        }
    }
    let same_origin = hop.url.origin() == next.origin();
    if !same_origin {
        hop.headers.retain(|(name, _)| !SENSITIVE.contains(name));
    }
    hop.headers.retain(|(name, _)| name != header::REFERER);
    let downgrade = hop.url.scheme.as_str() == "https" && next.scheme.as_str() == "http";
    if !downgrade {
        let referer = match same_origin {
            true => hop.url.without_fragment(),
            false => format!("{}/", hop.url.origin()),
        };
        if let Ok(value) = HeaderValue::from_str(&referer) {
            hop.headers.push((header::REFERER, value));
        }
    }
    hop.url = next;
    hop
}

/// One HTTP exchange up to the response head; `left` bounds it and the body's reading.
fn send_one(hop: &Hop, left: Option<Duration>) -> Result<Response, SendError> {
    let failed = |why: &dyn fmt::Display| {
        log::debug!("http/request to {}: {why}", hop.url.origin());
        SendError::Send(hop.url.to_string())
    };
    let dialer = dialer().as_ref().map_err(|e| failed(e))?;
    let started = Instant::now();
    let deadline = left.map(|left| started + left);
    let connect_by =
        deadline.map_or(started + CONNECT_TIMEOUT, |d| d.min(started + CONNECT_TIMEOUT));
    let secure = hop.url.scheme == Scheme::Https;
    let host = hop.url.host.trim_start_matches('[').trim_end_matches(']');
    let port = hop.url.port.unwrap_or(if secure { 443 } else { 80 });
    let stream = dialer.connect(secure, host, port, connect_by).map_err(|e| failed(&e))?;
    let authority = match hop.url.port {
        Some(port) => format!("{}:{port}", hop.url.host),
        None => hop.url.host.clone(),
    };
    let target = match &hop.url.query {
        Some(query) => format!("{}?{query}", hop.url.path),
        None => hop.url.path.clone(),
    };
    let headers: Vec<(&str, &[u8])> =
        hop.headers.iter().map(|(name, value)| (name.as_str(), value.as_bytes())).collect();
    // A bodiless POST, PUT or PATCH says so with `Content-Length: 0`, which every server
    // reads as no body at all.
    let needs_body = [Method::POST, Method::PUT, Method::PATCH].contains(&hop.method);
    let body = hop.body.as_deref().or(needs_body.then_some(&[][..]));
    let request = http1::Request {
        method: hop.method.as_str(),
        authority: &authority,
        target: &target,
        headers: &headers,
        body,
    };
    http1::send(stream, &request, deadline).map_err(|e| failed(&e))
}
