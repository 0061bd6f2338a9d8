//! Cloud mode v2 (codex 0.171; notes/noise-spec.md): `--remote URL --environment-id ID`.
//! This file owns the options of that mode, their validation, and the loop: generate the
//! static identity, register (`registry_v2`), dial the relay (`dial`), serve the link
//! (`relay`), and on its end redial the same URL — or register again when the relay
//! refused the upgrade with a 4xx — with jittered backoff. The Noise suite, the frames and
//! the record framing live in `channel`, `frame` and `framing`, which import nothing of ours.

pub mod channel;
pub mod dial;
pub mod frame;
pub mod framing;
pub mod relay;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::registry_v2::{self, Bearer, RegisterError, RegistryV2};
use crate::cloud::registry::Backoff;
use crate::net::dial::Dialer;
use crate::rpc::Server;

pub const REGISTRY_URL_ENV: &str = "CODEX_EXEC_SERVER_NOISE_REGISTRY_URL";
pub const ENVIRONMENT_ID_ENV: &str = "CODEX_EXEC_SERVER_NOISE_ENVIRONMENT_ID";
pub const EXIT_ON_STDIN_CLOSE_ENV: &str = "CODEX_EXEC_SERVER_EXIT_ON_STDIN_CLOSE";
/// Longest environment id accepted, in characters.
const ENVIRONMENT_ID_MAX_CHARS: usize = 256;
/// TCP connect, TLS and the upgrade together.
pub const RELAY_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The v2 options as given.
#[derive(Clone, Debug, Default)]
pub struct V2Args {
    pub remote: Option<String>,
    pub environment_id: Option<String>,
    pub name: Option<String>,
    pub registration_bearer_stdin: bool,
    pub remote_transport: Option<String>,
    pub token_file: Option<String>,
    pub ca_file: Option<String>,
    pub proxy: Option<String>,
    pub exit_on_stdin_close: bool,
}

impl V2Args {
    /// v2 is chosen by `--environment-id` or `--remote-transport`. The
    /// `CODEX_EXEC_SERVER_NOISE_*` variables alone never choose it: 0.171 reads them in the
    /// harness (`codex app-server`), and its executor ignores them; here they only fill in
    /// `--remote`, `--environment-id` and the bearer once v2 is chosen.
    pub fn enabled(&self) -> bool {
        self.environment_id.is_some() || self.remote_transport.is_some()
    }
}

/// Validated v2 settings.
pub struct V2Config {
    pub base_url: String,
    pub environment_id: String,
    pub bearer: Bearer,
    /// The trust list and proxies, for both legs.
    pub dialer: Dialer,
    pub exit_on_stdin_close: bool,
}

/// A failure before or instead of serving: message and exit code (0.171: 1, usage 2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct V2Exit {
    pub code: i32,
    pub message: String,
}

fn exit1(message: impl Into<String>) -> V2Exit {
    V2Exit { code: 1, message: format!("Error: {}", message.into()) }
}

fn usage(message: impl Into<String>) -> V2Exit {
    V2Exit { code: 2, message: message.into() }
}

/// Whether `host` (from a URL) is loopback: `localhost` or a loopback address.
fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// The first line of stdin (`--registration-bearer-stdin`), if it can be read.
pub fn stdin_line() -> Option<String> {
    use std::io::BufRead;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line).ok().map(|_| line)
}

/// `--exit-on-stdin-close`: a thread that reads stdin to its end, then starts the daemon's
/// shutdown.
pub fn watch_stdin() -> std::io::Result<()> {
    std::thread::Builder::new().name("stdin-watch".into()).spawn(|| {
        let _ = std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink());
        log::info!("stdin closed; shutting down");
        crate::shutdown::trigger();
    })?;
    Ok(())
}

/// Validates everything before any request. `stdin_line` reads the bearer line when
/// `--registration-bearer-stdin` is given.
pub fn validate(
    args: &V2Args,
    env: &dyn Fn(&str) -> Option<String>,
    stdin_line: &mut dyn FnMut() -> Option<String>,
) -> Result<V2Config, V2Exit> {
    match args.remote_transport.as_deref() {
        None | Some("noise") => {}
        Some("direct") => return Err(usage(
            "--remote-transport direct (AWS SigV4) is not supported by this executor; use noise",
        )),
        Some(other) => {
            return Err(usage(format!(
                "invalid value `{other}` for --remote-transport; expected noise or direct"
            )))
        }
    }
    let base = args.remote.clone().or_else(|| env(REGISTRY_URL_ENV)).unwrap_or_default();
    let base = base.trim().trim_end_matches('/').to_string();
    if base.is_empty() {
        return Err(usage("--remote URL is required with --environment-id"));
    }
    let parsed: Option<tungstenite::http::Uri> = base.parse().ok();
    let scheme = parsed.as_ref().and_then(|u| u.scheme_str()).unwrap_or("");
    let host = parsed.as_ref().and_then(|u| u.host()).unwrap_or("");
    if !(scheme == "https" || (scheme == "http" && is_loopback(host))) {
        return Err(exit1(
            "environment registry configuration error: remote transport requires https for non-loopback endpoints",
        ));
    }
    let environment_id =
        args.environment_id.clone().or_else(|| env(ENVIRONMENT_ID_ENV)).unwrap_or_default();
    let environment_id = environment_id.trim().to_string();
    if environment_id.is_empty() {
        return Err(usage("--environment-id ID is required with --remote"));
    }
    let allowed = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
    if environment_id.chars().count() > ENVIRONMENT_ID_MAX_CHARS
        || !environment_id.chars().all(allowed)
    {
        return Err(usage(
            "environment registry configuration error: environment id must be 1-256 characters of [A-Za-z0-9_-]",
        ));
    }
    if let Some(name) = &args.name {
        if name.trim().is_empty() {
            return Err(usage("--name must not be empty"));
        }
    }
    let bearer = if args.registration_bearer_stdin {
        let line = stdin_line().unwrap_or_default();
        Bearer::Fixed(registry_v2::checked_bearer(&line).map_err(exit1)?)
    } else if let Some(path) = &args.token_file {
        let path = PathBuf::from(path);
        check_token_file(&path).map_err(exit1)?;
        Bearer::File(path)
    } else if let Some(token) =
        env(registry_v2::NOISE_TOKEN_ENV).or_else(|| env(registry_v2::V1_TOKEN_ENV))
    {
        Bearer::Fixed(registry_v2::checked_bearer(&token).map_err(exit1)?)
    } else {
        return Err(exit1(format!(
            "remote exec-server registration requires a registration bearer: pass --registration-bearer-stdin or --token-file, or set {}",
            registry_v2::NOISE_TOKEN_ENV
        )));
    };
    let dialer =
        Dialer::from_env(args.ca_file.as_deref(), args.proxy.as_deref(), env).map_err(usage)?;
    let exit_on_stdin_close = args.exit_on_stdin_close
        || env(EXIT_ON_STDIN_CLOSE_ENV).is_some_and(|v| matches!(v.trim(), "1" | "true"));
    Ok(V2Config { base_url: base, environment_id, bearer, dialer, exit_on_stdin_close })
}

/// Reads a token file once at startup, so a missing or empty file fails before any
/// request (it is read again for every request after that).
fn check_token_file(path: &Path) -> Result<(), String> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        format!(
            "environment registry authentication error: registration bearer file `{}` could not be read: {e}",
            path.display()
        )
    })?;
    registry_v2::checked_bearer(&text).map(|_| ())
}

/// The v2 loop. `sleep(d)` waits `d` and returns true when shutdown was requested.
pub fn run(
    cfg: V2Config,
    server: &Arc<Server>,
    keepalive: (Duration, Duration),
    sleep: &dyn Fn(Duration) -> bool,
) -> Result<(), V2Exit> {
    let identity = channel::Identity::generate()
        .map_err(|e| exit1(format!("failed to generate Noise relay identity: {e}")))?;
    let registry =
        RegistryV2::new(&cfg.base_url, &cfg.environment_id, cfg.bearer.clone(), cfg.dialer.clone());
    if let Some(proxy) = cfg.dialer.proxies.for_url(&cfg.base_url) {
        log::info!("registry requests go through proxy {proxy}");
    }
    let mut backoff = Backoff::new(uuid::Uuid::new_v4().as_u64_pair().0);
    let mut registration = None;
    log::info!("registering environment {} with {}", cfg.environment_id, cfg.base_url);
    loop {
        if registration.is_none() {
            match registry.register(&identity.public_key()) {
                Ok(r) => {
                    log::info!(
                        "Noise executor registration completed for environment {} (registration {})",
                        cfg.environment_id,
                        r.executor_registration_id
                    );
                    crate::audit::record(
                        "cloudRegistered",
                        serde_json::json!({"environmentId": cfg.environment_id,
                            "registrationId": r.executor_registration_id}),
                    );
                    registration = Some(r);
                }
                Err(RegisterError::Retry(reason)) => {
                    log::warn!("{reason}; retrying registration");
                    if sleep(backoff.next_sleep(None)) {
                        return Ok(());
                    }
                    continue;
                }
                Err(RegisterError::Fatal(message)) => return Err(exit1(message)),
            }
        }
        let Some(reg) = registration.as_ref() else { continue };
        let shown = crate::cloud::registry::without_query(&reg.url).to_string();
        match dial::dial(&reg.url, &cfg.dialer, RELAY_CONNECT_TIMEOUT) {
            Ok(ws) => {
                log::info!("connected to relay {shown}");
                let audited =
                    serde_json::json!({"environmentId": cfg.environment_id, "url": shown});
                crate::audit::record("cloudConnected", audited.clone());
                let started = Instant::now();
                let ctx = relay::LinkContext {
                    environment_id: cfg.environment_id.clone(),
                    executor_registration_id: reg.executor_registration_id.clone(),
                    identity: identity.clone(),
                    registry: registry.clone(),
                    ping_every: keepalive.0,
                    dead_after: keepalive.1,
                };
                relay::serve(ws, server, ctx);
                log::info!("relay link {shown} ended");
                crate::audit::record("cloudDisconnected", audited);
                backoff.connection_ended(started.elapsed());
            }
            Err(dial::DialError::Rejected(status)) if (400..500).contains(&status) => {
                log::warn!(
                    "relay {shown} refused the upgrade with HTTP {status}; registering again"
                );
                registration = None;
            }
            Err(e) => log::warn!("relay connection to {shown} failed: {e}"),
        }
        if sleep(backoff.next_sleep(None)) {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(args: V2Args, env: &[(&str, &str)]) -> Result<V2Config, V2Exit> {
        let env: Vec<(String, String)> =
            env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let lookup = move |k: &str| env.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone());
        validate(&args, &lookup, &mut || Some("tok\n".to_string()))
    }

    fn args(remote: &str, id: &str) -> V2Args {
        V2Args {
            remote: Some(remote.into()),
            environment_id: Some(id.into()),
            registration_bearer_stdin: true,
            ..V2Args::default()
        }
    }

    #[test]
    fn options_are_validated_like_0_171() {
        let ok = check(args("http://127.0.0.1:9/base/", "env-1"), &[]).expect("valid");
        assert_eq!(ok.base_url, "http://127.0.0.1:9/base");
        let e = check(args("http://example.com", "env-1"), &[]).err().expect("refused");
        assert_eq!(e.code, 1);
        assert!(e.message.ends_with("remote transport requires https for non-loopback endpoints"));
        assert!(check(args("https://example.com", "env-1"), &[]).is_ok());
        assert_eq!(check(args("https://x", "a/b"), &[]).err().map(|e| e.code), Some(2));
        let mut direct = args("https://x", "e");
        direct.remote_transport = Some("direct".into());
        assert_eq!(check(direct, &[]).err().map(|e| e.code), Some(2));
        let mut no_token = args("https://x", "e");
        no_token.registration_bearer_stdin = false;
        assert_eq!(check(no_token.clone(), &[]).err().map(|e| e.code), Some(1));
        assert!(check(no_token.clone(), &[(registry_v2::NOISE_TOKEN_ENV, "t")]).is_ok());
        let mut missing_file = no_token;
        missing_file.token_file = Some("/no/such/token".into());
        let e = check(missing_file, &[]).err().expect("refused");
        assert_eq!(e.code, 1);
        assert!(e.message.contains("/no/such/token"), "{}", e.message);
    }
}
