//! Talking to the executor registry (PROTOCOL.md §8.2–§8.5): the bearer token source, the
//! registration POST, the classification of its outcome into retry / give up (exit 2) /
//! authentication failure (exit 3), and the backoff schedule between rounds. It imports
//! nothing of ours but the HTTP client (net/http1.rs) and never touches the rendezvous
//! socket; it never logs or formats the token.

use std::fmt;
use std::fs;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::Serialize;
use tungstenite::http::StatusCode;
use uuid::Uuid;

use crate::net::dial::Dialer;
use crate::net::http1::{self, Response, Target};

/// Where the bearer token comes from when `--token-file` is not given.
pub const TOKEN_ENV: &str = "CODEX_EXEC_SERVER_REMOTE_BEARER_TOKEN";
/// The whole registration request, connect to last body byte (§8.3).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// First backoff delay, and the delay after a connection that lasted (§8.5).
pub const BACKOFF_INITIAL: Duration = Duration::from_secs(1);
/// The backoff delay stops doubling here.
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A registry's `Retry-After` is honoured up to this long.
pub const RETRY_AFTER_MAX: Duration = Duration::from_secs(300);
/// A rendezvous connection that stayed open this long resets the backoff.
pub const STABLE_CONNECTION: Duration = Duration::from_secs(10);
/// How much of an error body goes into an error message, in characters.
const BODY_PREVIEW_CHARS: usize = 4096;
/// Error bodies beyond this are not read; the preview needs far less.
const ERROR_BODY_LIMIT_BYTES: u64 = 1 << 20;
/// Successful registration responses are small JSON objects.
const SUCCESS_BODY_LIMIT_BYTES: u64 = 1 << 20;
/// Mixed into the idempotency id so that other registration schemes never collide.
const IDEMPOTENCY_NAMESPACE: &str = "codex-exec-server-v1";

/// A bearer token. It is only ever written into the `Authorization` header.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    pub(super) fn header_value(&self) -> String {
        format!("Bearer {}", self.0)
    }

    /// The token's length in bytes (doctor shows it; never the token).
    pub(super) fn byte_len(&self) -> usize {
        self.0.len()
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Where to read the bearer token from (§8.2): `--token-file` wins over the environment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenSource {
    File(PathBuf),
    Env,
}

impl TokenSource {
    /// Reads and trims the token. The error is the exact §8.2 message; at startup it is a
    /// configuration error (exit 2), later a retryable failure.
    pub fn read(&self) -> Result<Token, String> {
        match self {
            TokenSource::File(path) => {
                let text = fs::read_to_string(path).map_err(|err| {
                    format!(
                        "executor registry authentication error: executor registry bearer token file `{}` could not be read: {err}",
                        path.display()
                    )
                })?;
                non_empty(&text).ok_or_else(|| {
                    format!(
                        "executor registry authentication error: executor registry bearer token file `{}` is empty",
                        path.display()
                    )
                })
            }
            TokenSource::Env => token_from_env(
                std::env::var_os(TOKEN_ENV).map(|v| v.to_string_lossy().into_owned()),
            ),
        }
    }
}

/// The environment half of [`TokenSource::read`], apart so tests need not mutate the
/// process environment.
pub fn token_from_env(value: Option<String>) -> Result<Token, String> {
    let value = value.ok_or_else(|| {
        format!("executor registry authentication error: executor registry bearer token environment variable `{TOKEN_ENV}` is not set")
    })?;
    non_empty(&value).ok_or_else(|| {
        format!("executor registry authentication error: executor registry bearer token environment variable `{TOKEN_ENV}` is empty")
    })
}

fn non_empty(text: &str) -> Option<Token> {
    let trimmed = text.trim();
    (!trimmed.is_empty()).then(|| Token(trimmed.to_owned()))
}

/// `codex-exec-server-` + hex SHA-256 over executor id, name, namespace and the run's
/// registration UUID, NUL-separated (§8.3): stable within a run, distinct across runs.
pub fn idempotency_id(executor_id: &str, name: &str, registration_id: Uuid) -> String {
    let mut hasher = ring::digest::Context::new(&ring::digest::SHA256);
    hasher.update(executor_id.as_bytes());
    hasher.update(&[0u8]);
    hasher.update(name.as_bytes());
    hasher.update(&[0u8]);
    hasher.update(IDEMPOTENCY_NAMESPACE.as_bytes());
    hasher.update(&[0u8]);
    hasher.update(registration_id.as_bytes());
    let hex: String = hasher.finish().as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("codex-exec-server-{hex}")
}

/// The request body; field order is the wire order of §8.3.
#[derive(Serialize)]
struct RegisterBody<'a> {
    idempotency_id: &'a str,
    executor_id: &'a str,
    name: &'a str,
    labels: Empty,
    metadata: Empty,
}

/// Serializes as `{}`.
#[derive(Serialize)]
struct Empty {}

/// A successful registration: where to dial, and who the registry says we are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Registration {
    /// The rendezvous websocket URL, `ws://` or `wss://`. It may carry a signature in its
    /// query string: log it with [`without_query`].
    pub url: String,
    /// The registry's id for this registration, when it sent one.
    pub id: Option<String>,
    /// The registry's `executor_id`, or the configured one when the response has none.
    pub executor_id: String,
}

/// Why a registration did not produce a rendezvous URL, decided by status and error kind.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RegisterError {
    /// Transient (timeout, transport, 408/429/5xx, unusable 2xx, token re-read failure):
    /// log `reason`, back off and register again. `after` is the registry's `Retry-After`,
    /// already capped at [`RETRY_AFTER_MAX`].
    Retry { after: Option<Duration>, reason: String },
    /// Two consecutive 401/403: exit 3 with this message.
    Auth(String),
    /// Any other 3xx/4xx, or a request that can never be sent: exit 2 with this message.
    Fatal(String),
}

impl RegisterError {
    /// The process exit code for the errors that end the run (§8.8); `None` for retries.
    pub fn exit_code(&self) -> Option<i32> {
        match self {
            RegisterError::Retry { .. } => None,
            RegisterError::Auth(_) => Some(3),
            RegisterError::Fatal(_) => Some(2),
        }
    }
}

impl fmt::Display for RegisterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RegisterError::Retry { reason, .. } => f.write_str(reason),
            RegisterError::Auth(message) | RegisterError::Fatal(message) => f.write_str(message),
        }
    }
}

/// The registration client: one per run, holding the run's registration UUID.
#[derive(Debug)]
pub struct Registry {
    dialer: Dialer,
    endpoint: String,
    executor_id: String,
    body: String,
    token: TokenSource,
}

impl Registry {
    /// `base_url` is already validated (scheme, trailing `/` removed); `dialer` carries the
    /// §8.7 trust list and the run's proxies. A fresh registration UUID is drawn for this run.
    pub fn new(
        base_url: &str,
        executor_id: &str,
        name: &str,
        token: TokenSource,
        dialer: Dialer,
    ) -> Registry {
        Registry::with_registration_id(base_url, executor_id, name, token, dialer, Uuid::new_v4())
    }

    /// [`Registry::new`] with a chosen registration UUID, so tests can check the recipe.
    pub fn with_registration_id(
        base_url: &str,
        executor_id: &str,
        name: &str,
        token: TokenSource,
        dialer: Dialer,
        registration_id: Uuid,
    ) -> Registry {
        let idempotency_id = idempotency_id(executor_id, name, registration_id);
        let body = serde_json::to_string(&RegisterBody {
            idempotency_id: &idempotency_id,
            executor_id,
            name,
            labels: Empty {},
            metadata: Empty {},
        })
        .expect("a struct of strings serializes");
        Registry {
            dialer,
            endpoint: format!("{base_url}/cloud/executor/{executor_id}/register"),
            executor_id: executor_id.to_owned(),
            body,
            token,
        }
    }

    /// The registration URL and JSON body, for `doctor`'s own request.
    pub(super) fn request(&self) -> (&str, &str) {
        (&self.endpoint, &self.body)
    }

    /// One registration round (§8.4): read the token, POST, and on 401/403 re-read the
    /// token and try once more at once. Logs the §8.3 success line.
    pub fn register(&self) -> Result<Registration, RegisterError> {
        let first = self.attempt();
        let result = match first {
            Err(Attempt::Unauthorized { status, .. }) => {
                log::warn!(
                    "executor registry answered {status}; re-reading the token and retrying once"
                );
                match self.attempt() {
                    Err(Attempt::Unauthorized { status, message }) => Err(RegisterError::Auth(format!(
                        "executor registry authentication error: executor registry authentication failed ({status}): {message}"
                    ))),
                    other => other.map_err(Attempt::into_error),
                }
            }
            other => other.map_err(Attempt::into_error),
        };
        if let Ok(reg) = &result {
            match &reg.id {
                Some(id) => log::info!(
                    "codex exec-server remote executor {id} registered with executor_id {}",
                    reg.executor_id
                ),
                None => log::info!(
                    "codex exec-server remote executor registered with executor_id {}",
                    reg.executor_id
                ),
            }
        }
        result
    }

    fn attempt(&self) -> Result<Registration, Attempt> {
        let token = self
            .token
            .read()
            .map_err(|reason| Attempt::Done(RegisterError::Retry { after: None, reason }))?;
        let target = Target::parse(&self.endpoint).map_err(|e| {
            Attempt::Done(RegisterError::Fatal(format!("executor registry URL: {e}")))
        })?;
        let authorization = token.header_value();
        let headers: [(&str, &[u8]); 2] =
            [("authorization", authorization.as_bytes()), ("content-type", b"application/json")];
        let deadline = Instant::now() + REQUEST_TIMEOUT;
        match http1::request(
            &self.dialer,
            &target,
            "POST",
            &headers,
            Some(self.body.as_bytes()),
            deadline,
        ) {
            Ok(response) => classify(response, &self.executor_id),
            Err(err) => Err(Attempt::Done(RegisterError::Retry {
                after: None,
                reason: format!("executor registry request failed: {err}"),
            })),
        }
    }
}

/// One POST's outcome before the 401/403 retry rule is applied.
enum Attempt {
    Unauthorized { status: String, message: String },
    Done(RegisterError),
}

impl Attempt {
    fn into_error(self) -> RegisterError {
        match self {
            Attempt::Done(err) => err,
            // `register` retries the first one and turns the second into `Auth`; a lone
            // one cannot reach here.
            Attempt::Unauthorized { status, message } => RegisterError::Auth(format!(
                "executor registry authentication error: executor registry authentication failed ({status}): {message}"
            )),
        }
    }
}

fn classify(mut response: Response, executor_id: &str) -> Result<Registration, Attempt> {
    let status = StatusCode::from_u16(response.status).unwrap_or(StatusCode::BAD_GATEWAY);
    if status.is_success() {
        let body = response.body.read_to_vec(SUCCESS_BODY_LIMIT_BYTES).map_err(|err| {
            retry(None, format!("executor registry response could not be read: {err}"))
        })?;
        return parse_success(&body, executor_id).ok_or_else(|| {
            retry(None, "executor registry response has no usable `url`".to_owned())
        });
    }
    let retry_after = response
        .header("retry-after")
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|secs| Duration::from_secs(secs).min(RETRY_AFTER_MAX));
    // An unreadable error body leaves only the status to report.
    let body = response.body.read_to_vec(ERROR_BODY_LIMIT_BYTES).unwrap_or_default();
    let body = String::from_utf8_lossy(&body);
    let status_text = status_text(status);
    let error = ErrorBody::parse(&body);
    match status.as_u16() {
        401 | 403 => Err(Attempt::Unauthorized {
            status: status_text,
            message: error.message.unwrap_or_else(|| "empty error body".to_owned()),
        }),
        408 | 429 | 500..=599 => Err(retry(
            retry_after,
            format!(
                "executor registry request failed ({status_text}): {}",
                error.message.unwrap_or_else(|| "empty or malformed error body".to_owned())
            ),
        )),
        _ => {
            let code = error.code.map(|c| format!(", {c}")).unwrap_or_default();
            let message =
                error.message.unwrap_or_else(|| "empty or malformed error body".to_owned());
            Err(Attempt::Done(RegisterError::Fatal(format!(
                "executor registry request failed ({status_text}{code}): {message}"
            ))))
        }
    }
}

fn retry(after: Option<Duration>, reason: String) -> Attempt {
    Attempt::Done(RegisterError::Retry { after, reason })
}

/// `401 Unauthorized`: the code and its canonical reason phrase.
fn status_text(status: StatusCode) -> String {
    match status.canonical_reason() {
        Some(reason) => format!("{} {reason}", status.as_u16()),
        None => status.as_u16().to_string(),
    }
}

/// What an error body contributes to a message (§8.4).
struct ErrorBody {
    code: Option<String>,
    /// `error.message`; else the trimmed body's first 4096 characters (also for a JSON
    /// error body without a message, e.g. `{"error":{"code":"bad_request"}}`); `None` for
    /// an empty body.
    message: Option<String>,
}

impl ErrorBody {
    fn parse(body: &str) -> ErrorBody {
        let trimmed = body.trim();
        let json: Option<serde_json::Value> = serde_json::from_str(trimmed).ok();
        if let Some(error) = json.as_ref().and_then(|v| v.get("error")).filter(|e| e.is_object()) {
            let text = |key: &str| match error.get(key) {
                Some(serde_json::Value::String(s)) => Some(s.clone()),
                Some(serde_json::Value::Number(n)) => Some(n.to_string()),
                _ => None,
            };
            return ErrorBody {
                code: text("code"),
                message: Some(text("message").unwrap_or_else(|| preview(trimmed))),
            };
        }
        ErrorBody { code: None, message: (!trimmed.is_empty()).then(|| preview(trimmed)) }
    }
}

/// The part of a trimmed error body that goes into a message.
fn preview(trimmed: &str) -> String {
    trimmed.chars().take(BODY_PREVIEW_CHARS).collect()
}

/// Lenient 2xx parsing: `url` (ws/wss) is required, `id` and `executor_id` optional, other
/// members ignored.
fn parse_success(body: &[u8], configured_executor_id: &str) -> Option<Registration> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    let field = |key: &str| value.get(key).and_then(|v| v.as_str()).map(str::to_owned);
    let url = field("url").filter(|u| u.starts_with("ws://") || u.starts_with("wss://"))?;
    Some(Registration {
        url,
        id: field("id"),
        executor_id: field("executor_id").unwrap_or_else(|| configured_executor_id.to_owned()),
    })
}

/// A URL fit for logs: the query string (and fragment) carry signatures, so they go.
pub fn without_query(url: &str) -> &str {
    url.split(['?', '#']).next().unwrap_or(url)
}

/// The backoff delay of §8.5 for a round, as a pure function: 1 s doubled `round` times,
/// capped at 30 s, then scaled by `0.8 + 0.4 × unit` for `unit` in `[0, 1)`.
pub fn backoff_delay(round: u32, unit: f64) -> Duration {
    let base = BACKOFF_INITIAL
        .saturating_mul(1u32.checked_shl(round.min(16)).unwrap_or(u32::MAX))
        .min(BACKOFF_MAX);
    base.mul_f64(0.8 + 0.4 * unit.clamp(0.0, 1.0))
}

/// The backoff state of the registration loop, with a seedable jitter source.
#[derive(Debug)]
pub struct Backoff {
    round: u32,
    jitter: Jitter,
}

impl Backoff {
    pub fn new(seed: u64) -> Backoff {
        Backoff { round: 0, jitter: Jitter(seed) }
    }

    /// The sleep before the next registration: the registry's `Retry-After` when it sent
    /// one, else the jittered delay of this round. Either way the next round doubles.
    pub fn next_sleep(&mut self, retry_after: Option<Duration>) -> Duration {
        let sleep = match retry_after {
            Some(after) => after.min(RETRY_AFTER_MAX),
            None => backoff_delay(self.round, self.jitter.next_unit()),
        };
        self.round = self.round.saturating_add(1);
        sleep
    }

    /// A rendezvous connection ended after `lasted`: a long one means the link works, so
    /// the next wait starts again at about 1 s.
    pub fn connection_ended(&mut self, lasted: Duration) {
        if lasted >= STABLE_CONNECTION {
            self.round = 0;
        }
    }
}

/// splitmix64: a tiny deterministic generator; jitter needs spread, not secrecy.
#[derive(Debug)]
struct Jitter(u64);

impl Jitter {
    /// A value in `[0, 1)`.
    fn next_unit(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use httpmock::prelude::*;
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::TcpListener;
    use std::sync::mpsc;

    const REG_ID: &str = "8d3c1f0e-2b4a-4c6d-9e8f-0a1b2c3d4e5f";

    fn token_file(dir: &tempdir::Dir, text: &str) -> PathBuf {
        let path = dir.0.join("token");
        fs::write(&path, text).unwrap();
        path
    }

    /// A directory removed when the test ends.
    mod tempdir {
        pub struct Dir(pub std::path::PathBuf);
        impl Dir {
            pub fn new(tag: &str) -> Dir {
                let path = std::env::temp_dir()
                    .join(format!("exec-server-registry-{tag}-{}", uuid::Uuid::new_v4()));
                std::fs::create_dir_all(&path).unwrap();
                Dir(path)
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    fn registry(base: &str, token: TokenSource) -> Registry {
        Registry::with_registration_id(
            base,
            "exec-123",
            "codex-exec-server",
            token,
            Dialer {
                proxies: crate::net::proxy::Proxies::default(),
                tls: crate::net::tls::client_config(&[]),
            },
            Uuid::parse_str(REG_ID).unwrap(),
        )
    }

    /// The recipe of §8.3, computed byte by byte independently of `idempotency_id`.
    fn expected_idempotency_id(executor_id: &str, name: &str) -> String {
        let mut input = Vec::new();
        input.extend_from_slice(executor_id.as_bytes());
        input.push(0);
        input.extend_from_slice(name.as_bytes());
        input.push(0);
        input.extend_from_slice(b"codex-exec-server-v1");
        input.push(0);
        input.extend_from_slice(&Uuid::parse_str(REG_ID).unwrap().into_bytes());
        use sha2::{Digest, Sha256};
        let digest = Sha256::digest(&input);
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        format!("codex-exec-server-{hex}")
    }

    #[test]
    fn idempotency_id_follows_the_recipe() {
        let id = idempotency_id("exec-123", "codex-exec-server", Uuid::parse_str(REG_ID).unwrap());
        assert_eq!(id, expected_idempotency_id("exec-123", "codex-exec-server"));
        assert_eq!(id.len(), "codex-exec-server-".len() + 64);
        let other = idempotency_id("exec-123", "codex-exec-server", Uuid::new_v4());
        assert_ne!(id, other, "a new run gets a new idempotency id");
    }

    #[test]
    fn posts_the_exact_request_and_parses_the_response() {
        let dir = tempdir::Dir::new("exact");
        let server = MockServer::start();
        let body = format!(
            r#"{{"idempotency_id":"{}","executor_id":"exec-123","name":"codex-exec-server","labels":{{}},"metadata":{{}}}}"#,
            expected_idempotency_id("exec-123", "codex-exec-server")
        );
        let mock = server.mock(|when, then| {
            when.method(POST)
                .path("/prefix/cloud/executor/exec-123/register")
                .header("authorization", "Bearer s3cret")
                .header("content-type", "application/json")
                .body(body.clone());
            then.status(200).body(r#"{"id":"reg-9","executor_id":"exec-xyz","url":"wss://rv.example/ws?sig=abc","extra":1}"#);
        });
        let reg =
            registry(&server.url("/prefix"), TokenSource::File(token_file(&dir, "  s3cret\n")));
        let got = reg.register().unwrap();
        assert_eq!(
            got,
            Registration {
                url: "wss://rv.example/ws?sig=abc".to_owned(),
                id: Some("reg-9".to_owned()),
                executor_id: "exec-xyz".to_owned(),
            }
        );
        // Every round of a run sends the same idempotency id.
        reg.register().unwrap();
        mock.assert_calls(2);
    }

    #[test]
    fn a_response_with_only_url_works() {
        let dir = tempdir::Dir::new("onlyurl");
        let server = MockServer::start();
        server.mock(|when, then| {
            when.method(POST);
            then.status(201).body(r#"{"url":"ws://127.0.0.1:9/x"}"#);
        });
        let got = registry(&server.base_url(), TokenSource::File(token_file(&dir, "t")))
            .register()
            .unwrap();
        assert_eq!(got.url, "ws://127.0.0.1:9/x");
        assert_eq!(got.id, None);
        assert_eq!(got.executor_id, "exec-123");
    }

    fn outcome(status: u16, headers: &[(&str, &str)], body: &str) -> (RegisterError, usize) {
        let dir = tempdir::Dir::new("outcome");
        let server = MockServer::start();
        let mock = server.mock(|when, then| {
            when.method(POST);
            let mut then = then.status(status).body(body);
            for (k, v) in headers {
                then = then.header(*k, *v);
            }
        });
        let err = registry(&server.base_url(), TokenSource::File(token_file(&dir, "tok")))
            .register()
            .unwrap_err();
        (err, mock.calls())
    }

    #[test]
    fn two_unauthorized_answers_are_an_authentication_failure() {
        let (err, calls) =
            outcome(401, &[], r#"{"error":{"code":"bad_token","message":"token expired"}}"#);
        assert_eq!(calls, 2, "one immediate retry after a re-read");
        assert_eq!(
            err,
            RegisterError::Auth(
                "executor registry authentication error: executor registry authentication failed (401 Unauthorized): token expired".to_owned()
            )
        );
        assert_eq!(err.exit_code(), Some(3));
        let (err, _) = outcome(403, &[], "");
        assert_eq!(
            err.to_string(),
            "executor registry authentication error: executor registry authentication failed (403 Forbidden): empty error body"
        );
    }

    #[test]
    fn other_client_errors_are_fatal_with_code_and_message() {
        let (err, calls) = outcome(
            409,
            &[],
            r#"{"error":{"code":"conflict","message":"executor already registered"}}"#,
        );
        assert_eq!(calls, 1);
        assert_eq!(
            err,
            RegisterError::Fatal("executor registry request failed (409 Conflict, conflict): executor already registered".to_owned())
        );
        assert_eq!(err.exit_code(), Some(2));
        let (err, _) = outcome(404, &[], "  no such executor \n");
        assert_eq!(
            err.to_string(),
            "executor registry request failed (404 Not Found): no such executor"
        );
        let (err, _) = outcome(400, &[], "");
        assert_eq!(
            err.to_string(),
            "executor registry request failed (400 Bad Request): empty or malformed error body"
        );
        // §8.4 (corrected): a JSON error without `message` reports the trimmed body text.
        let (err, _) = outcome(422, &[], r#" {"error":{"code":"invalid"}} "#);
        assert_eq!(
            err.to_string(),
            r#"executor registry request failed (422 Unprocessable Entity, invalid): {"error":{"code":"invalid"}}"#
        );
        let (err, _) = outcome(403, &[], r#"{"error":{"code":"bad_request"}}"#);
        assert_eq!(
            err.to_string(),
            r#"executor registry authentication error: executor registry authentication failed (403 Forbidden): {"error":{"code":"bad_request"}}"#
        );
        let long = "x".repeat(5000);
        let (err, _) = outcome(400, &[], &long);
        assert_eq!(
            err.to_string(),
            format!("executor registry request failed (400 Bad Request): {}", "x".repeat(4096))
        );
        // Redirects are not followed: a 3xx is the answer.
        let (err, calls) = outcome(302, &[("location", "http://127.0.0.1:1/elsewhere")], "");
        assert_eq!(calls, 1);
        assert_eq!(
            err.to_string(),
            "executor registry request failed (302 Found): empty or malformed error body"
        );
    }

    #[test]
    fn transient_statuses_retry_and_honour_retry_after() {
        for status in [408, 429, 500, 502, 503] {
            let (err, calls) = outcome(status, &[], "");
            assert_eq!(calls, 1);
            assert!(matches!(err, RegisterError::Retry { after: None, .. }), "{status}: {err:?}");
            assert_eq!(err.exit_code(), None);
        }
        let (err, _) = outcome(503, &[("retry-after", "2")], "");
        assert!(
            matches!(err, RegisterError::Retry { after: Some(d), .. } if d == Duration::from_secs(2)),
            "{err:?}"
        );
        let (err, _) = outcome(429, &[("retry-after", "86400")], "");
        assert!(
            matches!(err, RegisterError::Retry { after: Some(d), .. } if d == RETRY_AFTER_MAX),
            "{err:?}"
        );
        // Only delta-seconds count; an HTTP date falls back to the backoff delay.
        let (err, _) = outcome(503, &[("retry-after", "Wed, 21 Oct 2015 07:28:00 GMT")], "");
        assert!(matches!(err, RegisterError::Retry { after: None, .. }), "{err:?}");
    }

    #[test]
    fn a_2xx_without_a_usable_url_is_retried() {
        for body in ["", "not json", r#"{"url":"http://x/"}"#, r#"{"url":5}"#, r#"{"id":"a"}"#] {
            let (err, _) = outcome(200, &[], body);
            assert!(matches!(err, RegisterError::Retry { .. }), "{body}: {err:?}");
        }
    }

    #[test]
    fn transport_errors_are_retried() {
        let port = {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let dir = tempdir::Dir::new("refused");
        let err =
            registry(&format!("http://127.0.0.1:{port}"), TokenSource::File(token_file(&dir, "t")))
                .register()
                .unwrap_err();
        assert!(matches!(err, RegisterError::Retry { after: None, .. }), "{err:?}");
    }

    #[test]
    fn a_token_file_that_disappears_later_is_retryable() {
        let dir = tempdir::Dir::new("gone");
        let path = dir.0.join("missing");
        let err =
            registry("http://127.0.0.1:1", TokenSource::File(path.clone())).register().unwrap_err();
        match err {
            RegisterError::Retry { after: None, reason } => assert!(
                reason.starts_with(&format!(
                    "executor registry authentication error: executor registry bearer token file `{}` could not be read: ",
                    path.display()
                )),
                "{reason}"
            ),
            other => panic!("{other:?}"),
        }
    }

    /// One request as a tiny HTTP server saw it.
    struct Seen {
        authorization: String,
    }

    /// Serves `answers.len()` requests on 127.0.0.1:0, one per connection; before each
    /// answer `before(i)` runs, so a test can act between two requests.
    fn scripted_server(
        answers: Vec<(u16, &'static str)>,
        mut before: impl FnMut(usize) + Send + 'static,
    ) -> (String, mpsc::Receiver<Seen>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for (i, (status, body)) in answers.into_iter().enumerate() {
                let (sock, _) = listener.accept().unwrap();
                sock.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                let mut reader = BufReader::new(sock.try_clone().unwrap());
                let mut authorization = String::new();
                let mut length = 0usize;
                loop {
                    let mut line = String::new();
                    reader.read_line(&mut line).unwrap();
                    let line = line.trim_end();
                    if line.is_empty() {
                        break;
                    }
                    if let Some((k, v)) = line.split_once(':') {
                        match k.to_ascii_lowercase().as_str() {
                            "authorization" => authorization = v.trim().to_owned(),
                            "content-length" => length = v.trim().parse().unwrap(),
                            _ => {}
                        }
                    }
                }
                let mut body_in = vec![0; length];
                reader.read_exact(&mut body_in).unwrap();
                before(i);
                tx.send(Seen { authorization }).unwrap();
                let mut sock = sock;
                write!(
                    sock,
                    "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                )
                .unwrap();
            }
        });
        (base, rx)
    }

    #[test]
    fn the_token_file_is_re_read_between_a_401_and_its_retry() {
        let dir = tempdir::Dir::new("reread");
        let path = token_file(&dir, "old-token\n");
        let rotate = path.clone();
        let (base, seen) =
            scripted_server(vec![(401, ""), (200, r#"{"url":"ws://127.0.0.1:9/"}"#)], move |i| {
                if i == 0 {
                    fs::write(&rotate, "new-token\n").unwrap();
                }
            });
        let got = registry(&base, TokenSource::File(path)).register().unwrap();
        assert_eq!(got.url, "ws://127.0.0.1:9/");
        let wait = Duration::from_secs(10);
        assert_eq!(seen.recv_timeout(wait).unwrap().authorization, "Bearer old-token");
        assert_eq!(seen.recv_timeout(wait).unwrap().authorization, "Bearer new-token");
    }

    #[test]
    fn a_401_then_a_transient_error_is_retryable_not_fatal() {
        let dir = tempdir::Dir::new("mixed");
        let (base, _seen) = scripted_server(vec![(401, ""), (503, "")], |_| {});
        let err = registry(&base, TokenSource::File(token_file(&dir, "t"))).register().unwrap_err();
        assert!(matches!(err, RegisterError::Retry { .. }), "{err:?}");
    }

    #[test]
    fn token_sources_report_the_exact_startup_messages() {
        assert_eq!(
            token_from_env(None).unwrap_err(),
            "executor registry authentication error: executor registry bearer token environment variable `CODEX_EXEC_SERVER_REMOTE_BEARER_TOKEN` is not set"
        );
        assert_eq!(
            token_from_env(Some(" \n".to_owned())).unwrap_err(),
            "executor registry authentication error: executor registry bearer token environment variable `CODEX_EXEC_SERVER_REMOTE_BEARER_TOKEN` is empty"
        );
        assert_eq!(token_from_env(Some(" abc\n".to_owned())).unwrap(), Token("abc".to_owned()));
        let dir = tempdir::Dir::new("sources");
        let empty = token_file(&dir, "  \n");
        assert_eq!(
            TokenSource::File(empty.clone()).read().unwrap_err(),
            format!("executor registry authentication error: executor registry bearer token file `{}` is empty", empty.display())
        );
        let missing = dir.0.join("nope");
        assert_eq!(
            TokenSource::File(missing.clone()).read().unwrap_err(),
            format!(
                "executor registry authentication error: executor registry bearer token file `{}` could not be read: No such file or directory (os error 2)",
                missing.display()
            )
        );
    }

    #[test]
    fn debug_never_shows_the_token() {
        let token = Token("hunter2".to_owned());
        assert_eq!(format!("{token:?}"), "<redacted>");
        let dir = tempdir::Dir::new("debug");
        let reg = registry("http://127.0.0.1:1", TokenSource::File(token_file(&dir, "hunter2")));
        assert!(!format!("{reg:?}").contains("hunter2"));
    }

    #[test]
    fn logged_urls_lose_their_query_string() {
        assert_eq!(
            without_query("wss://rv.example/ws/abc?sig=SECRET&exp=1"),
            "wss://rv.example/ws/abc"
        );
        assert_eq!(without_query("ws://h:1/p#frag"), "ws://h:1/p");
        assert_eq!(without_query("ws://h:1/p"), "ws://h:1/p");
    }

    #[test]
    fn backoff_delay_doubles_to_the_cap_within_the_jitter_band() {
        let secs = |round, unit| backoff_delay(round, unit).as_secs_f64();
        let expected = [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0];
        for (round, base) in expected.iter().enumerate() {
            let round = round as u32;
            assert!((secs(round, 0.5) - base).abs() < 1e-9, "round {round}");
            assert!((secs(round, 0.0) - base * 0.8).abs() < 1e-9, "round {round}");
            assert!(secs(round, 0.999_999) < base * 1.2);
        }
        assert!((secs(1000, 0.5) - 30.0).abs() < 1e-9, "no overflow far out");
    }

    #[test]
    fn backoff_state_resets_after_a_long_connection_and_obeys_retry_after() {
        let mut backoff = Backoff::new(42);
        let bands = [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0];
        for base in bands {
            let d = backoff.next_sleep(None).as_secs_f64();
            assert!(d >= base * 0.8 && d < base * 1.2, "{d} vs {base}");
        }
        backoff.connection_ended(Duration::from_secs(9));
        let d = backoff.next_sleep(None).as_secs_f64();
        assert!(d >= 24.0, "a short connection does not reset: {d}");
        backoff.connection_ended(STABLE_CONNECTION);
        let d = backoff.next_sleep(None).as_secs_f64();
        assert!((0.8..1.2).contains(&d), "reset after a stable connection: {d}");
        assert_eq!(backoff.next_sleep(Some(Duration::from_secs(7))), Duration::from_secs(7));
        assert_eq!(backoff.next_sleep(Some(Duration::from_secs(1000))), RETRY_AFTER_MAX);
        // The Retry-After round still advanced the schedule: next is about 8 s.
        let d = backoff.next_sleep(None).as_secs_f64();
        assert!((6.4..9.6).contains(&d), "{d}");
        // The same seed gives the same jitter.
        let a: Vec<_> = (0..5)
            .map({
                let mut b = Backoff::new(7);
                move |_| b.next_sleep(None)
            })
            .collect();
        let b: Vec<_> = (0..5)
            .map({
                let mut b = Backoff::new(7);
                move |_| b.next_sleep(None)
            })
            .collect();
        assert_eq!(a, b);
    }
}
