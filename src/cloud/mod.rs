//! Cloud mode (PROTOCOL.md §8): validating the cloud options at startup, and the loop that
//! registers, dials the rendezvous websocket, hands it to the caller's serve function, and
//! backs off before registering again. It owns the order of those steps; the rendezvous dial
//! is dial.rs's, the registry's HTTP registry.rs's. It does not serve the protocol, read
//! frames or handle signals — the caller passes those in as `serve` and `sleep`.

mod dial;
pub mod doctor;
mod registry;

use std::fmt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use tungstenite::WebSocket;

use crate::net::dial::Dialer;
use crate::net::tls::Stream;
use dial::{dial, RENDEZVOUS_CONNECT_TIMEOUT};
use registry::{without_query, Backoff, RegisterError, Registry, TokenSource};

// Cloud mode v2 (codex 0.171: environment registry + Noise relay), beside v1.
pub mod noise;
pub mod registry_v2;

/// Keepalive on the rendezvous link (§8.6): ping this often...
pub const PING_EVERY: Duration = Duration::from_secs(30);
/// ...and close it after this long without hearing anything, Pong included.
pub const DEAD_AFTER: Duration = Duration::from_secs(90);
/// The executor name when none is given.
pub const DEFAULT_NAME: &str = "codex-exec-server";
/// Longest accepted executor id, in characters.
const EXECUTOR_ID_MAX_CHARS: usize = 256;

pub const BASE_URL_ENV: &str = "CODEX_CLOUD_ENVIRONMENTS_BASE_URL";
pub const ENVIRONMENT_ID_ENV: &str = "CODEX_CLOUD_ENVIRONMENT_ID";

/// The cloud options exactly as given on the command line, before any validation. Each
/// pair holds the two spellings of one option (§8.1).
#[derive(Clone, Debug, Default)]
pub struct CloudArgs {
    pub cloud: bool,
    pub cloud_base_url: Option<String>,
    pub remote: Option<String>,
    pub cloud_environment_id: Option<String>,
    pub executor_id: Option<String>,
    pub cloud_name: Option<String>,
    pub name: Option<String>,
    pub token_file: Option<String>,
    pub ca_file: Option<String>,
    pub proxy: Option<String>,
}

impl CloudArgs {
    /// Cloud mode is `--cloud`, or implied by giving the registry base URL.
    pub fn enabled(&self) -> bool {
        self.cloud || self.remote.is_some() || self.cloud_base_url.is_some()
    }

    /// The usage errors of §8.1 (exit 2): both spellings of one option, or cloud mode
    /// combined with `--listen`.
    pub fn usage_error(&self, listen: Option<&str>) -> Option<String> {
        let pairs = [
            ("--cloud-base-url", self.cloud_base_url.is_some(), "--remote", self.remote.is_some()),
            (
                "--cloud-environment-id",
                self.cloud_environment_id.is_some(),
                "--executor-id",
                self.executor_id.is_some(),
            ),
            ("--cloud-name", self.cloud_name.is_some(), "--name", self.name.is_some()),
        ];
        for (long, long_given, short, short_given) in pairs {
            if long_given && short_given {
                return Some(format!("`{long}` and `{short}` are the same option; give only one"));
            }
        }
        match listen {
            Some(listen) if self.enabled() => {
                Some(format!("--listen `{listen}` cannot be combined with cloud mode"))
            }
            _ => None,
        }
    }

    /// Validates every §8.1/§8.2/§8.7 rule before any request; the error is the exact
    /// message to print before exiting 2. `env` looks up environment variables
    /// (`|k| std::env::var(k).ok()` in the binary).
    pub fn validate(&self, env: &dyn Fn(&str) -> Option<String>) -> Result<CloudConfig, String> {
        let base_url = self
            .cloud_base_url
            .clone()
            .or_else(|| self.remote.clone())
            .or_else(|| env(BASE_URL_ENV));
        let base_url = base_url.unwrap_or_default().trim().trim_end_matches('/').to_owned();
        if base_url.is_empty() {
            return Err(
                "executor registry configuration error: executor registry base URL is required"
                    .to_owned(),
            );
        }
        if !(base_url.starts_with("http://") || base_url.starts_with("https://")) {
            return Err(
                "executor registry configuration error: executor registry base URL must start with http:// or https://"
                    .to_owned(),
            );
        }

        let executor_id = self
            .cloud_environment_id
            .clone()
            .or_else(|| self.executor_id.clone())
            .or_else(|| env(ENVIRONMENT_ID_ENV))
            .unwrap_or_default()
            .trim()
            .to_owned();
        if executor_id.is_empty() {
            return Err("executor registry configuration error: executor id is required for remote exec-server registration".to_owned());
        }
        let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
        if executor_id.chars().count() > EXECUTOR_ID_MAX_CHARS || !executor_id.chars().all(allowed)
        {
            return Err("executor registry configuration error: executor id must be 1-256 characters of [A-Za-z0-9._-]".to_owned());
        }

        let name = self.cloud_name.clone().or_else(|| self.name.clone());
        let name = name.as_deref().unwrap_or(DEFAULT_NAME).trim().to_owned();
        if name.is_empty() {
            return Err(
                "executor registry configuration error: executor name must not be empty".to_owned()
            );
        }

        let token = match &self.token_file {
            Some(path) => {
                let source = TokenSource::File(PathBuf::from(path));
                source.read()?;
                source
            }
            None => {
                registry::token_from_env(env(registry::TOKEN_ENV))?;
                TokenSource::Env
            }
        };

        let dialer = Dialer::from_env(self.ca_file.as_deref(), self.proxy.as_deref(), env)?;
        Ok(CloudConfig { base_url, executor_id, name, token, dialer })
    }
}

/// Validated cloud settings: everything the loop needs, the token only as its source.
pub struct CloudConfig {
    /// Registry base, scheme checked, trailing `/` removed, path prefix kept.
    pub base_url: String,
    pub executor_id: String,
    pub name: String,
    pub token: TokenSource,
    /// The trust list and proxies, for both legs.
    pub dialer: Dialer,
}

impl fmt::Debug for CloudConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CloudConfig")
            .field("base_url", &self.base_url)
            .field("executor_id", &self.executor_id)
            .field("name", &self.name)
            .field("token", &self.token)
            .finish_non_exhaustive()
    }
}

/// How cloud mode ends when it does not end by shutdown: the message to print and the
/// exit code (2 configuration, 3 authentication; §8.8).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exit {
    pub code: i32,
    pub message: String,
}

/// The loop of §8.5: register, dial, `serve` until the socket ends, sleep with backoff,
/// again. `serve` owns the websocket (non-blocking mode, pings, the 90 s rule) and returns
/// when it has ended. `sleep(d)` waits `d` and returns `true` if shutdown was requested,
/// which ends the loop with `Ok`.
pub fn run(
    cfg: CloudConfig,
    serve: &mut dyn FnMut(WebSocket<Stream>),
    sleep: &dyn Fn(Duration) -> bool,
) -> Result<(), Exit> {
    let registry = Registry::new(
        &cfg.base_url,
        &cfg.executor_id,
        &cfg.name,
        cfg.token.clone(),
        cfg.dialer.clone(),
    );
    if let Some(proxy) = cfg.dialer.proxies.for_url(&cfg.base_url) {
        log::info!("registry requests go through proxy {proxy}");
    }
    let mut backoff = Backoff::new(uuid::Uuid::new_v4().as_u64_pair().0);
    log::info!("registering executor {} with {}", cfg.executor_id, cfg.base_url);
    loop {
        let mut retry_after = None;
        match registry.register() {
            Ok(registration) => {
                let shown = without_query(&registration.url);
                match dial(&registration.url, &cfg.dialer, RENDEZVOUS_CONNECT_TIMEOUT) {
                    Ok(ws) => {
                        log::info!("connected to rendezvous {shown}");
                        let audited =
                            serde_json::json!({"executorId": cfg.executor_id, "url": shown});
                        crate::audit::record("cloudConnected", audited.clone());
                        let started = Instant::now();
                        serve(ws);
                        let lasted = started.elapsed();
                        log::info!(
                            "rendezvous connection {shown} ended after {} s",
                            Tenths(lasted)
                        );
                        crate::audit::record("cloudDisconnected", audited);
                        backoff.connection_ended(lasted);
                    }
                    Err(err) => log::warn!("rendezvous connection to {shown} failed: {err}"),
                }
            }
            Err(RegisterError::Retry { after, reason }) => {
                log::warn!("{reason}");
                retry_after = after;
            }
            Err(err) => {
                let code = err.exit_code().expect("only retries have no exit code");
                return Err(Exit { code, message: err.to_string() });
            }
        }
        let delay = backoff.next_sleep(retry_after);
        log::info!("registering again in {} s", Tenths(delay));
        if sleep(delay) {
            return Ok(());
        }
    }
}

/// A duration in seconds with one decimal, for log lines ("2.0"). Integer arithmetic on
/// purpose: formatting an `f64` with a precision links ~10 KB of float printing into a
/// binary that has a 2.5 MB limit and no other use for it.
struct Tenths(Duration);

impl fmt::Display for Tenths {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tenths = (self.0.as_millis() + 50) / 100;
        write!(f, "{}.{}", tenths / 10, tenths % 10)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::proxy::Proxies;
    use crate::net::tls::{self, test_pki, CA_FILE_ENV};
    use httpmock::prelude::*;
    use std::cell::RefCell;
    use std::io::{Read, Write};
    use std::net::TcpListener;
    use std::path::Path;
    use std::sync::Arc;
    use std::thread;
    use tungstenite::Message;

    const WAIT: Duration = Duration::from_secs(10);

    /// A dialer without proxies.
    fn direct(tls: Arc<rustls::ClientConfig>) -> Dialer {
        Dialer { proxies: Proxies::default(), tls }
    }

    struct TempDir(PathBuf);
    impl TempDir {
        fn new() -> TempDir {
            let path =
                std::env::temp_dir().join(format!("exec-server-cloud-{}", uuid::Uuid::new_v4()));
            std::fs::create_dir_all(&path).unwrap();
            TempDir(path)
        }
        fn file(&self, name: &str, contents: &str) -> String {
            let path = self.0.join(name);
            std::fs::write(&path, contents).unwrap();
            path.to_str().unwrap().to_owned()
        }
    }
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn args(base: &str, id: &str, token_file: &str) -> CloudArgs {
        CloudArgs {
            cloud: true,
            cloud_base_url: Some(base.to_owned()),
            cloud_environment_id: Some(id.to_owned()),
            token_file: Some(token_file.to_owned()),
            ..CloudArgs::default()
        }
    }

    #[test]
    fn validation_normalizes_and_reports_each_rule_exactly() {
        let dir = TempDir::new();
        let token = dir.file("token", "tok\n");
        let cfg =
            args("  https://reg.example/api//  ", " exec-1 ", &token).validate(&no_env).unwrap();
        assert_eq!(cfg.base_url, "https://reg.example/api");
        assert_eq!(cfg.executor_id, "exec-1");
        assert_eq!(cfg.name, "codex-exec-server");
        assert_eq!(cfg.token, TokenSource::File(PathBuf::from(&token)));

        let err = |a: CloudArgs| a.validate(&no_env).unwrap_err();
        assert_eq!(
            err(args(" / ", "e", &token)),
            "executor registry configuration error: executor registry base URL is required"
        );
        assert_eq!(
            err(CloudArgs { cloud: true, ..CloudArgs::default() }),
            "executor registry configuration error: executor registry base URL is required"
        );
        assert_eq!(
            err(args("ftp://x", "e", &token)),
            "executor registry configuration error: executor registry base URL must start with http:// or https://"
        );
        assert_eq!(
            err(args("http://x", "  ", &token)),
            "executor registry configuration error: executor id is required for remote exec-server registration"
        );
        for bad in ["a/b", "a b", "é", &"a".repeat(257)] {
            assert_eq!(
                err(args("http://x", bad, &token)),
                "executor registry configuration error: executor id must be 1-256 characters of [A-Za-z0-9._-]",
                "{bad}"
            );
        }
        assert!(args("http://x", &"a".repeat(256), &token).validate(&no_env).is_ok());
        assert_eq!(
            err(CloudArgs { name: Some("  ".to_owned()), ..args("http://x", "e", &token) }),
            "executor registry configuration error: executor name must not be empty"
        );
        let empty = dir.file("empty", " \n");
        assert_eq!(
            err(args("http://x", "e", &empty)),
            format!("executor registry authentication error: executor registry bearer token file `{empty}` is empty")
        );
        assert_eq!(
            err(CloudArgs { token_file: None, ..args("http://x", "e", &token) }),
            "executor registry authentication error: executor registry bearer token environment variable `CODEX_EXEC_SERVER_REMOTE_BEARER_TOKEN` is not set"
        );
        let junk = dir.file("junk.pem", "junk");
        assert_eq!(
            err(CloudArgs { ca_file: Some(junk.clone()), ..args("http://x", "e", &token) }),
            format!("executor registry configuration error: CA file `{junk}` is not a valid PEM certificate bundle: no CERTIFICATE block")
        );
    }

    #[test]
    fn environment_fallbacks_apply_when_flags_are_absent() {
        let dir = TempDir::new();
        let junk = dir.file("junk.pem", "junk");
        let env = move |key: &str| match key {
            BASE_URL_ENV => Some("http://from-env/".to_owned()),
            ENVIRONMENT_ID_ENV => Some("env-id".to_owned()),
            registry::TOKEN_ENV => Some(" env-token ".to_owned()),
            CA_FILE_ENV => Some(junk.clone()),
            _ => None,
        };
        let a = CloudArgs { cloud: true, ..CloudArgs::default() };
        // SSL_CERT_FILE is read too, and checked like --ca-file.
        assert!(a.validate(&env).unwrap_err().contains("is not a valid PEM certificate bundle"));
        let env2 = |key: &str| if key == CA_FILE_ENV { None } else { env(key) };
        let cfg = a.validate(&env2).unwrap();
        assert_eq!(
            (cfg.base_url.as_str(), cfg.executor_id.as_str()),
            ("http://from-env", "env-id")
        );
        assert_eq!(cfg.token, TokenSource::Env);
        // Flags win over the environment; the alias spellings work.
        let token = dir.file("token", "t");
        let b = CloudArgs {
            remote: Some("https://flag".to_owned()),
            executor_id: Some("flag-id".to_owned()),
            name: Some(" box ".to_owned()),
            token_file: Some(token),
            ..CloudArgs::default()
        };
        assert!(b.enabled());
        let cfg = b.validate(&env2).unwrap();
        assert_eq!(
            (cfg.base_url.as_str(), cfg.executor_id.as_str(), cfg.name.as_str()),
            ("https://flag", "flag-id", "box")
        );
        assert!(matches!(cfg.token, TokenSource::File(_)));
    }

    #[test]
    fn usage_errors_cover_both_spellings_and_listen() {
        let both = CloudArgs {
            cloud_name: Some("a".into()),
            name: Some("b".into()),
            ..CloudArgs::default()
        };
        assert_eq!(
            both.usage_error(None).unwrap(),
            "`--cloud-name` and `--name` are the same option; give only one"
        );
        let both = CloudArgs {
            cloud_base_url: Some("a".into()),
            remote: Some("b".into()),
            ..CloudArgs::default()
        };
        assert_eq!(
            both.usage_error(None).unwrap(),
            "`--cloud-base-url` and `--remote` are the same option; give only one"
        );
        let both = CloudArgs {
            cloud_environment_id: Some("a".into()),
            executor_id: Some("b".into()),
            ..CloudArgs::default()
        };
        assert!(both.usage_error(None).is_some());
        let cloud = CloudArgs { cloud: true, ..CloudArgs::default() };
        assert_eq!(
            cloud.usage_error(Some("stdio")).unwrap(),
            "--listen `stdio` cannot be combined with cloud mode"
        );
        assert_eq!(cloud.usage_error(None), None);
        assert!(!CloudArgs::default().enabled());
        assert_eq!(CloudArgs::default().usage_error(Some("stdio")), None);
    }

    /// A rendezvous on 127.0.0.1:0 that accepts one websocket (TLS when `tls` is given),
    /// records the request path and query, answers one text message with "pong:<text>",
    /// then closes.
    fn rendezvous(tls: Option<Arc<rustls::ServerConfig>>) -> (u16, thread::JoinHandle<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let handle = thread::spawn(move || {
            let (sock, _) = listener.accept().unwrap();
            sock.set_read_timeout(Some(WAIT)).unwrap();
            match tls {
                Some(config) => {
                    let conn = rustls::ServerConnection::new(config).unwrap();
                    serve_one(rustls::StreamOwned::new(conn, sock))
                }
                None => serve_one(sock),
            }
        });
        (port, handle)
    }

    // tungstenite's callback signature fixes the error type.
    #[allow(clippy::result_large_err)]
    fn serve_one<S: Read + Write>(stream: S) -> String {
        let mut uri = String::new();
        let callback = |req: &tungstenite::handshake::server::Request, resp| {
            uri = req.uri().to_string();
            assert!(
                req.headers().get("sec-websocket-extensions").is_none(),
                "no compression offered"
            );
            Ok(resp)
        };
        let mut ws = tungstenite::accept_hdr(stream, callback).unwrap();
        if let Message::Text(text) = ws.read().unwrap() {
            ws.send(Message::text(format!("pong:{text}"))).unwrap();
        }
        let _ = ws.close(None);
        let _ = ws.flush();
        uri
    }

    fn round_trip(ws: &mut WebSocket<Stream>) -> String {
        ws.send(Message::text("hi")).unwrap();
        match ws.read().unwrap() {
            Message::Text(text) => text.to_string(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn dial_connects_plain_and_tls_rendezvous_within_the_deadline() {
        let (port, server) = rendezvous(None);
        let config = tls::client_config(&[]);
        let mut ws =
            dial(&format!("ws://127.0.0.1:{port}/rv/1?sig=abc"), &direct(config), WAIT).unwrap();
        assert_eq!(round_trip(&mut ws), "pong:hi");
        assert_eq!(server.join().unwrap(), "/rv/1?sig=abc");

        let pki = test_pki::generate();
        let dir = TempDir::new();
        let ca = dir.file("ca.pem", &pki.ca_pem);
        let roots = tls::trust_roots(Some(Path::new(&ca))).unwrap();
        let (port, server) = rendezvous(Some(pki.server.clone()));
        let mut ws = dial(
            &format!("wss://localhost:{port}/secure"),
            &direct(tls::client_config(&roots)),
            WAIT,
        )
        .unwrap();
        assert!(matches!(ws.get_ref(), Stream::Tls(_)));
        assert_eq!(round_trip(&mut ws), "pong:hi");
        assert_eq!(server.join().unwrap(), "/secure");

        // Without the CA the TLS leg is refused.
        let (port, server) = rendezvous(Some(pki.server.clone()));
        let handle = thread::spawn(move || {
            let _ = server.join();
        });
        let err = dial(&format!("wss://127.0.0.1:{port}/"), &direct(tls::client_config(&[])), WAIT)
            .err()
            .unwrap();
        assert!(err.starts_with("TLS: "), "{err}");
        drop(handle);
    }

    #[test]
    fn dial_gives_up_at_the_deadline_on_a_silent_peer() {
        // Accepts TCP but never answers the upgrade.
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let started = Instant::now();
        let err = dial(
            &format!("ws://127.0.0.1:{port}/"),
            &direct(tls::client_config(&[])),
            Duration::from_millis(300),
        )
        .err()
        .unwrap();
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(300) && took < WAIT, "{took:?}: {err}");
        drop(listener);
    }

    fn cloud_config(base: String, token: &str) -> CloudConfig {
        CloudConfig {
            base_url: base,
            executor_id: "exec-1".to_owned(),
            name: "codex-exec-server".to_owned(),
            token: TokenSource::File(PathBuf::from(token)),
            dialer: direct(tls::client_config(&[])),
        }
    }

    #[test]
    fn run_exits_2_on_a_client_error_and_3_on_repeated_401() {
        let dir = TempDir::new();
        let token = dir.file("token", "tok");
        let server = MockServer::start();
        server.mock(|when, then| {
            when.path("/a/cloud/executor/exec-1/register");
            then.status(404).body(r#"{"error":{"message":"unknown executor"}}"#);
        });
        server.mock(|when, then| {
            when.path("/b/cloud/executor/exec-1/register");
            then.status(401);
        });
        let never = |_: Duration| -> bool { panic!("no sleep expected") };
        let mut serve = |_: WebSocket<Stream>| panic!("no rendezvous expected");
        assert_eq!(
            run(cloud_config(server.url("/a"), &token), &mut serve, &never),
            Err(Exit {
                code: 2,
                message: "executor registry request failed (404 Not Found): unknown executor"
                    .to_owned()
            })
        );
        assert_eq!(
            run(cloud_config(server.url("/b"), &token), &mut serve, &never),
            Err(Exit {
                code: 3,
                message: "executor registry authentication error: executor registry authentication failed (401 Unauthorized): empty error body".to_owned()
            })
        );
    }

    #[test]
    fn run_backs_off_honours_retry_after_and_stops_on_shutdown() {
        let dir = TempDir::new();
        let token = dir.file("token", "tok");
        let server = MockServer::start();
        let mock = server.mock(|when, then| {
            when.method(POST);
            then.status(503).header("retry-after", "2");
        });
        let sleeps = RefCell::new(Vec::new());
        let sleep = |d: Duration| {
            sleeps.borrow_mut().push(d);
            sleeps.borrow().len() == 3
        };
        let mut serve = |_: WebSocket<Stream>| panic!("no rendezvous expected");
        assert_eq!(run(cloud_config(server.base_url(), &token), &mut serve, &sleep), Ok(()));
        assert_eq!(*sleeps.borrow(), vec![Duration::from_secs(2); 3]);
        mock.assert_calls(3);
    }

    #[test]
    fn run_registers_dials_serves_and_registers_again() {
        let dir = TempDir::new();
        let token = dir.file("token", "tok");
        let (port, rv) = rendezvous(None);
        let server = MockServer::start();
        let mock = server.mock(|when, then| {
            when.method(POST);
            then.status(200)
                .body(format!(r#"{{"id":"r1","url":"ws://127.0.0.1:{port}/rv?sig=s"}}"#));
        });
        let mut answers = Vec::new();
        let mut serve = |mut ws: WebSocket<Stream>| answers.push(round_trip(&mut ws));
        let sleeps = RefCell::new(Vec::new());
        let sleep = |d: Duration| {
            sleeps.borrow_mut().push(d);
            // Second round: the rendezvous is gone, so the dial fails; then shut down.
            sleeps.borrow().len() == 2
        };
        assert_eq!(run(cloud_config(server.base_url(), &token), &mut serve, &sleep), Ok(()));
        assert_eq!(answers, vec!["pong:hi".to_owned()]);
        assert_eq!(rv.join().unwrap(), "/rv?sig=s");
        mock.assert_calls(2);
        let sleeps = sleeps.borrow();
        assert!(
            sleeps[0] >= Duration::from_millis(800) && sleeps[0] < Duration::from_millis(1200),
            "{sleeps:?}"
        );
        assert!(
            sleeps[1] >= Duration::from_millis(1600) && sleeps[1] < Duration::from_millis(2400),
            "{sleeps:?}"
        );
    }
}
