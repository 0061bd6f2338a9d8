//! The environment registry of cloud mode v2 (codex 0.171; notes/noise-spec.md §2, §5): the
//! executor registration `POST <base>/cloud/environment/<ID>/register` with this process's
//! Noise public key, and the harness key validation `POST …/validate` asked before each
//! relay handshake completes. It owns the HTTP requests, the bearer token's sources, the
//! response checks and the error texts (0.171's, exit 1); it dials nothing and knows
//! nothing of frames. The token is only ever written into the `Authorization` header.

use std::fmt;
use std::path::PathBuf;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tungstenite::http::StatusCode;

use super::noise::channel::PublicKey;
use super::registry::REQUEST_TIMEOUT;
use crate::net::dial::Dialer;
use crate::net::http1::{self, Response, Target};

/// The security profile of the Noise relay, sent and expected back.
pub const SECURITY_PROFILE: &str = "noise_hybrid_ik_v1";
/// Largest registry answer read, in bytes.
const BODY_LIMIT_BYTES: u64 = 1 << 20;
/// Longest executor registration id accepted, in bytes.
const REGISTRATION_ID_MAX_BYTES: usize = 256;
/// The v2 token variable, then v1's, when neither stdin nor a file gives the token.
pub const NOISE_TOKEN_ENV: &str = "CODEX_EXEC_SERVER_NOISE_AUTH_TOKEN";
pub const V1_TOKEN_ENV: &str = "CODEX_EXEC_SERVER_REMOTE_BEARER_TOKEN";

/// Where the bearer comes from. Stdin is read once at start; a file is re-read for every
/// request, so a rotated token is picked up; the environment is read at start.
#[derive(Clone)]
pub enum Bearer {
    Fixed(String),
    File(PathBuf),
}

impl fmt::Debug for Bearer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Bearer::Fixed(_) => f.write_str("Fixed(<redacted>)"),
            Bearer::File(p) => write!(f, "File({})", p.display()),
        }
    }
}

/// A bearer is one token: non-empty, no whitespace inside (0.171 refuses both).
pub fn checked_bearer(text: &str) -> Result<String, String> {
    let token = text.trim_end_matches(['\r', '\n']).trim();
    if token.is_empty() || token.chars().any(char::is_whitespace) {
        return Err("invalid registration bearer".to_string());
    }
    Ok(token.to_string())
}

impl Bearer {
    pub(crate) fn read(&self) -> Result<String, String> {
        match self {
            Bearer::Fixed(token) => Ok(token.clone()),
            Bearer::File(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    format!("environment registry authentication error: registration bearer file `{}` could not be read: {e}", path.display())
                })?;
                checked_bearer(&text)
            }
        }
    }
}

/// What the registry granted: where the relay is and the id that binds every prologue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Registration {
    pub url: String,
    pub executor_registration_id: String,
}

/// How a registration failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegisterError {
    /// 503 `registration_conflict` / 502 `authentication_service_unavailable`: try again.
    Retry(String),
    /// Anything else ends the process with exit 1 and this text.
    Fatal(String),
}

/// The registration request body for `key` (also `doctor`'s).
pub fn register_body(key: &PublicKey) -> String {
    serde_json::to_string(&RegisterBody {
        security_profile: SECURITY_PROFILE,
        executor_public_key: key,
    })
    .expect("a struct of a string and a key serializes")
}

#[derive(Serialize)]
struct RegisterBody<'a> {
    security_profile: &'static str,
    executor_public_key: &'a PublicKey,
}

#[derive(Deserialize)]
struct RegisterAnswer {
    environment_id: String,
    url: String,
    security_profile: String,
    executor_registration_id: String,
}

#[derive(Serialize)]
struct ValidateBody<'a> {
    executor_registration_id: &'a str,
    harness_public_key: &'a PublicKey,
    harness_key_authorization: &'a str,
}

#[derive(Deserialize)]
struct ValidateAnswer {
    valid: bool,
}

#[derive(Deserialize)]
struct ErrorAnswer {
    error: ErrorDetail,
}

#[derive(Deserialize)]
struct ErrorDetail {
    code: Option<String>,
}

/// The registry client for one environment. Cheap to clone.
#[derive(Clone)]
pub struct RegistryV2 {
    dialer: Dialer,
    base: String,
    environment_id: String,
    bearer: Bearer,
}

impl fmt::Debug for RegistryV2 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistryV2")
            .field("base", &self.base)
            .field("environment_id", &self.environment_id)
            .finish_non_exhaustive()
    }
}

impl RegistryV2 {
    /// `base` is validated (scheme, trailing `/` removed); `dialer` has the trust list and
    /// the proxies.
    pub fn new(base: &str, environment_id: &str, bearer: Bearer, dialer: Dialer) -> RegistryV2 {
        RegistryV2 {
            dialer,
            base: base.to_string(),
            environment_id: environment_id.to_string(),
            bearer,
        }
    }

    fn post(&self, path: &str, body: &str) -> Result<Response, String> {
        let token = self.bearer.read()?;
        let url = format!("{}/cloud/environment/{}/{path}", self.base, self.environment_id);
        let failed = |e: String| {
            format!(
                "environment registry request failed: error sending request for url ({url}): {e}"
            )
        };
        let target = Target::parse(&url).map_err(failed)?;
        let authorization = format!("Bearer {token}");
        let headers: [(&str, &[u8]); 2] =
            [("authorization", authorization.as_bytes()), ("content-type", b"application/json")];
        let deadline = Instant::now() + REQUEST_TIMEOUT;
        http1::request(&self.dialer, &target, "POST", &headers, Some(body.as_bytes()), deadline)
            .map_err(failed)
    }

    /// One registration (0.171 texts; notes/noise-spec.md §2).
    pub fn register(&self, key: &PublicKey) -> Result<Registration, RegisterError> {
        let body = register_body(key);
        let mut response = self.post("register", &body).map_err(RegisterError::Fatal)?;
        let status = status_of(&response);
        let text = read_text(&mut response).unwrap_or_default();
        if !status.is_success() {
            if matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) {
                return Err(RegisterError::Fatal(format!(
                    "environment registry authentication error: environment registry authentication failed ({}): response body omitted",
                    status_text(status)
                )));
            }
            let code = serde_json::from_str::<ErrorAnswer>(&text).ok().and_then(|e| e.error.code);
            let message = format!(
                "environment registry request failed ({}): environment registry executor registration failed",
                status_text(status)
            );
            let retry = matches!(
                (status, code.as_deref()),
                (StatusCode::SERVICE_UNAVAILABLE, Some("registration_conflict"))
                    | (StatusCode::BAD_GATEWAY, Some("authentication_service_unavailable"))
            );
            return Err(if retry {
                RegisterError::Retry(message)
            } else {
                RegisterError::Fatal(message)
            });
        }
        let answer: RegisterAnswer = serde_json::from_str(&text).map_err(|_| {
            RegisterError::Fatal(
                "invalid environment registry executor registration response".to_string(),
            )
        })?;
        check_answer(answer, &self.environment_id).map_err(RegisterError::Fatal)
    }

    /// Asks whether `harness` may use this executor, with the authorization the harness
    /// sent inside its first handshake message. Errors are for logs: they never carry the
    /// authorization or a response body.
    pub fn validate(
        &self,
        executor_registration_id: &str,
        harness: &PublicKey,
        authorization: &str,
    ) -> Result<(), String> {
        let body = serde_json::to_string(&ValidateBody {
            executor_registration_id,
            harness_public_key: harness,
            harness_key_authorization: authorization,
        })
        .map_err(|e| e.to_string())?;
        let mut response = self
            .post("validate", &body)
            .map_err(|_| "environment registry harness key validation failed".to_string())?;
        let status = status_of(&response);
        if matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) {
            return Err(format!(
                "environment registry harness key validation authentication failed ({})",
                status_text(status)
            ));
        }
        if !status.is_success() {
            return Err(format!(
                "environment registry harness key validation failed ({})",
                status_text(status)
            ));
        }
        let text = read_text(&mut response)
            .ok_or_else(|| "environment registry harness key validation failed".to_string())?;
        match serde_json::from_str::<ValidateAnswer>(&text) {
            Ok(ValidateAnswer { valid: true }) => Ok(()),
            _ => Err("environment registry rejected Noise relay harness key".to_string()),
        }
    }
}

fn check_answer(answer: RegisterAnswer, environment_id: &str) -> Result<Registration, String> {
    if answer.environment_id != environment_id {
        return Err(
            "exec-server protocol error: environment registry returned a different environment id"
                .to_string(),
        );
    }
    if answer.security_profile != SECURITY_PROFILE {
        return Err(format!(
            "exec-server protocol error: environment registry returned unsupported security profile `{}`",
            answer.security_profile
        ));
    }
    let id = &answer.executor_registration_id;
    if id.is_empty() || id.trim() != id || id.len() > REGISTRATION_ID_MAX_BYTES {
        return Err(
            "exec-server protocol error: environment registry returned an invalid executor registration id"
                .to_string(),
        );
    }
    Ok(Registration { url: answer.url, executor_registration_id: answer.executor_registration_id })
}

/// "404 Not Found", as reqwest prints a status.
fn status_of(response: &Response) -> StatusCode {
    StatusCode::from_u16(response.status).unwrap_or(StatusCode::BAD_GATEWAY)
}

/// The body as text, at most `BODY_LIMIT_BYTES`; `None` when it cannot be read whole.
fn read_text(response: &mut Response) -> Option<String> {
    let bytes = response.body.read_to_vec(BODY_LIMIT_BYTES).ok()?;
    String::from_utf8(bytes).ok()
}

fn status_text(status: StatusCode) -> String {
    match status.canonical_reason() {
        Some(reason) => format!("{} {reason}", status.as_u16()),
        None => status.as_u16().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(env: &str, profile: &str, id: &str) -> RegisterAnswer {
        RegisterAnswer {
            environment_id: env.into(),
            url: "ws://x/r".into(),
            security_profile: profile.into(),
            executor_registration_id: id.into(),
        }
    }

    #[test]
    fn registration_answers_are_checked() {
        let ok = check_answer(answer("e", SECURITY_PROFILE, "r-1"), "e").expect("valid");
        assert_eq!(ok.executor_registration_id, "r-1");
        assert!(check_answer(answer("f", SECURITY_PROFILE, "r"), "e")
            .unwrap_err()
            .ends_with("returned a different environment id"));
        assert!(check_answer(answer("e", "plain", "r"), "e").is_err());
        assert!(check_answer(answer("e", SECURITY_PROFILE, " r"), "e").is_err());
        assert!(check_answer(answer("e", SECURITY_PROFILE, ""), "e").is_err());
        assert!(check_answer(answer("e", SECURITY_PROFILE, &"r".repeat(257)), "e").is_err());
    }

    #[test]
    fn bearer_must_be_one_token() {
        assert_eq!(checked_bearer("tok\n").as_deref(), Ok("tok"));
        assert!(checked_bearer("\n").is_err());
        assert!(checked_bearer("a b\n").is_err());
    }

    #[test]
    fn status_text_is_reqwest_style() {
        assert_eq!(status_text(StatusCode::NOT_FOUND), "404 Not Found");
    }
}
