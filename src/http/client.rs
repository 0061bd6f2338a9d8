//! The HTTP exchange behind `http/request`: one shared ureq agent (rustls with the ring
//! provider and the daemon's trust list, as the registry client uses), redirects followed
//! here hop by hop the way upstream follows them (at most `MAX_REDIRECTS`, 301/302/303 turn
//! into a bodiless GET, credentials dropped across origins, a `Referer` added), and one
//! deadline over all hops. It returns the final response with its body unread; it does not
//! know JSON-RPC and never logs header values.

use std::fmt;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use ureq::config::AutoHeaderValue;
use ureq::http::{header, HeaderName, HeaderValue, Method, Request, Response, StatusCode};

use super::url::{Url, UrlError};

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

/// The agent every `http/request` shares (it pools connections). Redirects and status codes
/// are handled here, not by ureq; no `User-Agent` is added, as upstream adds none.
fn agent() -> &'static ureq::Agent {
    static AGENT: OnceLock<ureq::Agent> = OnceLock::new();
    AGENT.get_or_init(|| {
        // The §8.7 trust list: bundled roots, the system bundle, and `SSL_CERT_FILE`.
        let ca_file = std::env::var_os("SSL_CERT_FILE").map(std::path::PathBuf::from);
        let roots = crate::transport::tls::trust_roots(ca_file.as_deref()).unwrap_or_else(|e| {
            log::warn!("http/request: {e}; using the bundled and system roots");
            crate::transport::tls::trust_roots(None).unwrap_or_default()
        });
        let tls = crate::transport::tls::ureq_config(&roots);
        ureq::Agent::config_builder()
            .max_redirects(0)
            .max_redirects_will_error(false)
            .http_status_as_error(false)
            .allow_non_standard_methods(true)
            .user_agent(AutoHeaderValue::None)
            .timeout_connect(Some(CONNECT_TIMEOUT))
            .tls_config(tls)
            .build()
            .new_agent()
    })
}

/// Sends `hop`, following redirects when `follow`, all within `timeout` from now.
pub fn send(
    mut hop: Hop,
    follow: bool,
    timeout: Option<Duration>,
) -> Result<Response<ureq::Body>, SendError> {
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
        let status = response.status();
        if !follow || !is_redirect(status) {
            return Ok(response);
        }
        let Some(location) = response.headers().get(header::LOCATION).and_then(|v| v.to_str().ok())
        else {
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

/// One HTTP exchange up to the response head.
fn send_one(hop: &Hop, left: Option<Duration>) -> Result<Response<ureq::Body>, SendError> {
    let failed = || SendError::Send(hop.url.to_string());
    let mut builder = Request::builder().method(hop.method.clone()).uri(hop.url.without_fragment());
    for (name, value) in &hop.headers {
        builder = builder.header(name, value);
    }
    // ureq sends a bodiless POST, PUT or PATCH chunked; an explicit empty body is the same
    // message with `Content-Length: 0`, which every server reads as no body at all.
    let needs_body = [Method::POST, Method::PUT, Method::PATCH].contains(&hop.method);
    let result = match &hop.body {
        Some(body) => builder.body(body.as_slice()).map(|r| run(r, left)),
        None if needs_body => builder.body(&[][..]).map(|r| run(r, left)),
        None => builder.body(()).map(|r| run(r, left)),
    };
    let outcome = result.unwrap_or_else(|e| Err(ureq::Error::Http(e)));
    outcome.map_err(|e| {
        log::debug!("http/request to {}: {e}", hop.url.origin());
        failed()
    })
}

fn run<B: ureq::AsSendBody>(
    request: Request<B>,
    left: Option<Duration>,
) -> Result<Response<ureq::Body>, ureq::Error> {
    let agent = agent();
    agent.run(agent.configure_request(request).timeout_global(left).build())
}
