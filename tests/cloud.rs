//! Cloud mode end to end (PROTOCOL.md §8): the real binary against a fake executor registry
//! and a fake rendezvous on 127.0.0.1:0 that plays the orchestrator — registration request,
//! outcomes and exit codes, re-registration and session resume after a dropped rendezvous,
//! TLS with a CA generated here, and secrets kept out of stderr.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use base64::Engine as _;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::{ServerConfig, ServerConnection, StreamOwned};
use serde_json::{json, Value};
use tungstenite::{Message, WebSocket};

/// Anything a single step may take: a registration round with backoff, a dial, a reply.
const STEP: Duration = Duration::from_secs(15);
const TOKEN: &str = "TOKEN-do-not-log-4711";
const SIGNATURE: &str = "SIG-do-not-log-0815";

// ---------------------------------------------------------------------------------------
// Fixtures: temp files, a test CA, the daemon.

struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        let path =
            std::env::temp_dir().join(format!("exec-server-cloud-it-{}", uuid::Uuid::new_v4()));
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

struct Pki {
    ca_pem: String,
    server: Arc<ServerConfig>,
}

fn pki() -> Pki {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(DnType::CommonName, "exec-server integration CA");
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&leaf_key, &ca)
        .unwrap();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
    let server =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![leaf.der().clone()], key)
            .unwrap();
    Pki { ca_pem: ca.pem(), server: Arc::new(server) }
}

/// The daemon under test; killed when dropped. Its stderr is collected line by line.
struct Daemon {
    pid: i32,
    exited: Receiver<ExitStatus>,
    lines: Receiver<String>,
    stderr: Arc<Mutex<String>>,
}

impl Daemon {
    fn spawn(args: &[&str], env: &[(&str, &str)]) -> Daemon {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_exec-server"));
        cmd.args(args).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
        for var in [
            "CODEX_CLOUD_ENVIRONMENTS_BASE_URL",
            "CODEX_CLOUD_ENVIRONMENT_ID",
            "CODEX_EXEC_SERVER_REMOTE_BEARER_TOKEN",
            "SSL_CERT_FILE",
        ] {
            cmd.env_remove(var);
        }
        cmd.env("RUST_LOG", "info");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child: Child = cmd.spawn().unwrap();
        let pid = child.id() as i32;
        let stderr_pipe = child.stderr.take().unwrap();
        let stderr = Arc::new(Mutex::new(String::new()));
        let (line_tx, lines) = mpsc::channel();
        let sink = stderr.clone();
        thread::spawn(move || {
            for line in BufReader::new(stderr_pipe).lines().map_while(Result::ok) {
                let mut all = sink.lock().unwrap_or_else(PoisonError::into_inner);
                all.push_str(&line);
                all.push('\n');
                drop(all);
                let _ = line_tx.send(line);
            }
        });
        let (exit_tx, exited) = mpsc::channel();
        thread::spawn(move || {
            if let Ok(status) = child.wait() {
                let _ = exit_tx.send(status);
            }
        });
        Daemon { pid, exited, lines, stderr }
    }

    fn wait_exit(&self) -> i32 {
        let status = self.exited.recv_timeout(STEP).expect("daemon did not exit in time");
        // Let the stderr reader reach EOF so the whole log is in `stderr()`.
        let deadline = Instant::now() + STEP;
        while self.lines.recv_timeout(deadline.saturating_duration_since(Instant::now())).is_ok() {}
        status.code().expect("exited with a code, not a signal")
    }

    fn is_running(&self) -> bool {
        matches!(self.exited.try_recv(), Err(mpsc::TryRecvError::Empty))
    }

    /// Waits for a stderr line containing `needle`.
    fn wait_line(&self, needle: &str) -> String {
        let deadline = Instant::now() + STEP;
        loop {
            match self.lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(_) => panic!(
                    "no stderr line containing {needle:?}; stderr so far:\n{}",
                    self.stderr()
                ),
            }
        }
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // SAFETY: plain kill(2) on the pid of a child we spawned and have not seen exit
        // (the waiter thread reaps it, so the pid cannot be reused before that).
        if self.is_running() {
            unsafe { libc::kill(self.pid, libc::SIGKILL) };
            let _ = self.exited.recv_timeout(STEP);
        }
    }
}

fn cloud_args<'a>(base: &'a str, token_file: &'a str) -> Vec<&'a str> {
    vec![
        "--cloud",
        "--cloud-base-url",
        base,
        "--cloud-environment-id",
        "exec-it",
        "--token-file",
        token_file,
    ]
}

// ---------------------------------------------------------------------------------------
// The fake registry: a tiny HTTP(S) server answering from a script.

/// One registration request as the fake registry saw it.
#[derive(Debug)]
struct Seen {
    method: String,
    path: String,
    headers: HashMap<String, String>,
    body: String,
}

enum RegistryEvent {
    Request(Seen),
    TlsRefused,
}

struct FakeRegistry {
    base: String,
    events: Receiver<RegistryEvent>,
}

impl FakeRegistry {
    /// `answer(n)` gives status and body for the n-th request (0-based).
    fn start(
        tls: Option<Arc<ServerConfig>>,
        answer: impl Fn(usize) -> (u16, String) + Send + 'static,
    ) -> FakeRegistry {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let scheme = if tls.is_some() { "https" } else { "http" };
        let base = format!("{scheme}://{}", listener.local_addr().unwrap());
        let (tx, events) = mpsc::channel();
        thread::spawn(move || {
            let mut served = 0;
            for sock in listener.incoming() {
                let Ok(sock) = sock else { return };
                sock.set_read_timeout(Some(STEP)).unwrap();
                let ok = match &tls {
                    Some(config) => {
                        let conn = ServerConnection::new(config.clone()).unwrap();
                        let mut stream = StreamOwned::new(conn, sock);
                        let ok = serve_http(&mut stream, served, &answer, &tx);
                        if !ok
                            && stream.conn.is_handshaking()
                            && tx.send(RegistryEvent::TlsRefused).is_err()
                        {
                            return;
                        }
                        ok
                    }
                    None => serve_http(&mut &sock, served, &answer, &tx),
                };
                if ok {
                    served += 1;
                }
            }
        });
        FakeRegistry { base, events }
    }

    fn next(&self) -> RegistryEvent {
        self.events.recv_timeout(STEP).expect("no registry request in time")
    }

    fn next_request(&self) -> Seen {
        match self.next() {
            RegistryEvent::Request(seen) => seen,
            RegistryEvent::TlsRefused => panic!("expected a request, got a refused TLS handshake"),
        }
    }
}

/// Reads one request, answers it and closes; false if the request never arrived whole.
fn serve_http<S: Read + Write>(
    stream: &mut S,
    index: usize,
    answer: &dyn Fn(usize) -> (u16, String),
    tx: &Sender<RegistryEvent>,
) -> bool {
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    let (seen, head_len) = loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return false,
            Ok(n) => data.extend_from_slice(&buf[..n]),
        }
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        if let Ok(httparse::Status::Complete(len)) = req.parse(&data) {
            let headers = req
                .headers
                .iter()
                .map(|h| {
                    (h.name.to_ascii_lowercase(), String::from_utf8_lossy(h.value).into_owned())
                })
                .collect::<HashMap<_, _>>();
            let seen = Seen {
                method: req.method.unwrap().to_owned(),
                path: req.path.unwrap().to_owned(),
                headers,
                body: String::new(),
            };
            break (seen, len);
        }
    };
    let length: usize =
        seen.headers.get("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
    while data.len() < head_len + length {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return false,
            Ok(n) => data.extend_from_slice(&buf[..n]),
        }
    }
    let seen = Seen {
        body: String::from_utf8_lossy(&data[head_len..head_len + length]).into_owned(),
        ..seen
    };
    let (status, body) = answer(index);
    let _ = tx.send(RegistryEvent::Request(seen));
    let reply = format!(
        "HTTP/1.1 {status} Whatever\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(reply.as_bytes()).and_then(|()| stream.flush());
    true
}

// ---------------------------------------------------------------------------------------
// The fake rendezvous: accepts websockets and hands them to the test, which plays the
// orchestrator.

trait Duplex: Read + Write + Send {}
impl<T: Read + Write + Send> Duplex for T {}

struct Orchestrator {
    ws: WebSocket<Box<dyn Duplex>>,
    next_id: i64,
    /// Notifications that arrived while waiting for a response.
    notes: Vec<Value>,
}

struct FakeRendezvous {
    /// `ws://` or `wss://` URL with a signed query string.
    url: String,
    accepted: Receiver<Orchestrator>,
}

impl FakeRendezvous {
    fn start(tls: Option<Arc<ServerConfig>>) -> FakeRendezvous {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let url = match tls {
            Some(_) => format!("wss://localhost:{port}/rendezvous/exec-it?sig={SIGNATURE}"),
            None => format!("ws://127.0.0.1:{port}/rendezvous/exec-it?sig={SIGNATURE}"),
        };
        let (tx, accepted) = mpsc::channel();
        thread::spawn(move || {
            for sock in listener.incoming() {
                let Ok(sock) = sock else { return };
                sock.set_read_timeout(Some(STEP)).unwrap();
                let stream: Box<dyn Duplex> = match &tls {
                    Some(config) => Box::new(StreamOwned::new(
                        ServerConnection::new(config.clone()).unwrap(),
                        sock,
                    )),
                    None => Box::new(sock),
                };
                // A refused TLS handshake or a bad upgrade just ends this connection.
                if let Ok(ws) = tungstenite::accept(stream) {
                    if tx.send(Orchestrator { ws, next_id: 1, notes: Vec::new() }).is_err() {
                        return;
                    }
                }
            }
        });
        FakeRendezvous { url, accepted }
    }

    fn accept(&self) -> Orchestrator {
        self.accepted.recv_timeout(STEP).expect("the daemon did not dial the rendezvous in time")
    }
}

impl Orchestrator {
    fn next_message(&mut self) -> Value {
        loop {
            match self.ws.read().expect("rendezvous socket read") {
                Message::Text(text) => return serde_json::from_str(&text).unwrap(),
                Message::Binary(_) => panic!("server frames must be text"),
                _ => {}
            }
        }
    }

    fn notify(&mut self, method: &str, params: Value) {
        let msg = json!({"method": method, "params": params});
        self.ws.send(Message::text(msg.to_string())).unwrap();
    }

    /// Sends a request and returns its response (`result` or `error` object).
    fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let msg = json!({"id": id, "method": method, "params": params});
        self.ws.send(Message::text(msg.to_string())).unwrap();
        loop {
            let msg = self.next_message();
            if msg.get("id") == Some(&json!(id)) {
                return msg;
            }
            self.notes.push(msg);
        }
    }

    /// Notifications (kept or new) until `process/closed` for `process_id`.
    fn notifications_until_closed(&mut self, process_id: &str) -> Vec<Value> {
        let mut out: Vec<Value> = std::mem::take(&mut self.notes);
        let is_closed =
            |v: &Value| v["method"] == "process/closed" && v["params"]["processId"] == process_id;
        while !out.iter().any(is_closed) {
            out.push(self.next_message());
        }
        out.retain(|v| v["params"]["processId"] == process_id);
        out
    }

    fn handshake(&mut self, resume: Option<&str>) -> String {
        let mut params = json!({"clientName": "cloud-it"});
        if let Some(id) = resume {
            params["resumeSessionId"] = json!(id);
        }
        let reply = self.call("initialize", params);
        let session =
            reply["result"]["sessionId"].as_str().unwrap_or_else(|| panic!("{reply}")).to_owned();
        self.notify("initialized", json!({}));
        session
    }
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn registered(url: &str) -> String {
    json!({"id": "reg-1", "url": url}).to_string()
}

// ---------------------------------------------------------------------------------------
// The tests.

/// The registration request of §8.3, byte for byte where it matters, for executor
/// `exec-it` under the base path `/prefix/`.
fn assert_registration_request(seen: &Seen) {
    assert_eq!(seen.method, "POST");
    assert_eq!(seen.path, "/prefix/cloud/executor/exec-it/register");
    assert_eq!(seen.headers["authorization"], format!("Bearer {TOKEN}"));
    assert_eq!(seen.headers["content-type"], "application/json");
    let body: Value = serde_json::from_str(&seen.body).unwrap();
    let idempotency_id = body["idempotency_id"].as_str().unwrap().to_owned();
    let hex = idempotency_id.strip_prefix("codex-exec-server-").unwrap();
    assert!(
        hex.len() == 64 && hex.chars().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
    );
    assert_eq!(
        seen.body,
        format!(
            r#"{{"idempotency_id":"{idempotency_id}","executor_id":"exec-it","name":"codex-exec-server","labels":{{}},"metadata":{{}}}}"#
        )
    );
}

#[test]
fn a_dropped_rendezvous_re_registers_and_the_session_resumes() {
    let dir = TempDir::new();
    let token_file = dir.file("token", &format!("  {TOKEN}\n"));
    let rendezvous = FakeRendezvous::start(None);
    let url = rendezvous.url.clone();
    let registry = FakeRegistry::start(None, move |_| (200, registered(&url)));
    let daemon =
        Daemon::spawn(&cloud_args(&format!("{}/prefix/", registry.base), &token_file), &[]);

    let first = registry.next_request();
    assert_registration_request(&first);

    let mut orch = rendezvous.accept();
    let session = orch.handshake(None);
    drop(orch);

    // The daemon notices, registers again with the same idempotency id, dials again, and
    // the orchestrator resumes its session through the new socket.
    let second = registry.next_request();
    assert_eq!(second.body, first.body, "one registration id per run");
    let mut orch = rendezvous.accept();
    assert_eq!(orch.handshake(Some(&session)), session, "the session is resumed");

    let log = daemon.stderr();
    assert!(
        log.contains("codex exec-server remote executor reg-1 registered with executor_id exec-it"),
        "{log}"
    );
    assert!(log.contains("/rendezvous/exec-it"), "the rendezvous is logged:\n{log}");
    assert!(!log.contains(TOKEN), "the token leaked to stderr:\n{log}");
    assert!(!log.contains(SIGNATURE), "the URL signature leaked to stderr:\n{log}");
}

#[test]
fn runs_a_process_through_the_rendezvous_and_reads_it_after_a_drop() {
    let dir = TempDir::new();
    let token_file = dir.file("token", &format!("  {TOKEN}\n"));
    let rendezvous = FakeRendezvous::start(None);
    let url = rendezvous.url.clone();
    let registry = FakeRegistry::start(None, move |_| (200, registered(&url)));
    let daemon =
        Daemon::spawn(&cloud_args(&format!("{}/prefix/", registry.base), &token_file), &[]);

    let first = registry.next_request();
    assert_registration_request(&first);

    // The orchestrator side: handshake, run `printf hi`, get output, exited, closed.
    let mut orch = rendezvous.accept();
    let session = orch.handshake(None);
    let start = orch.call(
        "process/start",
        json!({"processId": "p1", "argv": ["printf", "hi"], "cwd": "/", "env": {}, "tty": false}),
    );
    assert_eq!(start["result"], json!({"processId": "p1", "sandboxType": "none"}), "{start}");
    let notes = orch.notifications_until_closed("p1");
    // Output and exit race (a short-lived child may be reaped before its pipe is read,
    // §4.2), so only the numbering, the payloads and `closed` being last are fixed.
    let seqs: Vec<u64> = notes.iter().map(|n| n["params"]["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, vec![1, 2, 3], "{notes:?}");
    let (closed, events) = notes.split_last().unwrap();
    assert_eq!(
        closed,
        &json!({"method": "process/closed", "params": {"processId": "p1", "seq": 3}})
    );
    for event in events {
        let seq = event["params"]["seq"].clone();
        match event["method"].as_str() {
            Some("process/output") => assert_eq!(
                event,
                &json!({"method": "process/output", "params": {"processId": "p1", "seq": seq, "stream": "stdout", "chunk": b64(b"hi")}})
            ),
            Some("process/exited") => assert_eq!(
                &without_report(event.clone()),
                &json!({"method": "process/exited", "params": {"processId": "p1", "seq": seq, "exitCode": 0, "sandboxDenied": false}})
            ),
            _ => panic!("unexpected notification {event}"),
        }
    }
    assert_ne!(events[0]["method"], events[1]["method"], "{notes:?}");

    // A process whose output comes while no socket is attached.
    let start = orch.call(
        "process/start",
        json!({"processId": "p2", "argv": ["sh", "-c", "sleep 0.3; printf late"], "cwd": "/", "env": {}, "tty": false}),
    );
    assert_eq!(start["result"], json!({"processId": "p2", "sandboxType": "none"}), "{start}");
    drop(orch);

    // The daemon notices, registers again with the same idempotency id, dials again.
    let second = registry.next_request();
    assert_eq!(second.body, first.body, "one registration id per run");
    let mut orch = rendezvous.accept();
    assert_eq!(orch.handshake(Some(&session)), session, "the session is resumed");
    let deadline = Instant::now() + STEP;
    let mut output = Vec::new();
    let mut after = 0;
    loop {
        assert!(Instant::now() < deadline, "p2 did not close in time");
        let read = orch
            .call("process/read", json!({"processId": "p2", "afterSeq": after, "waitMs": 2000}));
        let result = &read["result"];
        for chunk in result["chunks"].as_array().unwrap_or_else(|| panic!("{read}")) {
            output.extend(
                base64::engine::general_purpose::STANDARD
                    .decode(chunk["chunk"].as_str().unwrap())
                    .unwrap(),
            );
        }
        after = result["nextSeq"].as_u64().unwrap() - 1;
        if result["closed"] == json!(true) {
            assert_eq!(result["exitCode"], json!(0));
            break;
        }
    }
    assert_eq!(output, b"late");

    let log = daemon.stderr();
    assert!(
        log.contains("codex exec-server remote executor reg-1 registered with executor_id exec-it"),
        "{log}"
    );
    assert!(!log.contains(TOKEN), "the token leaked to stderr:\n{log}");
    assert!(!log.contains(SIGNATURE), "the URL signature leaked to stderr:\n{log}");
}

#[test]
fn two_unauthorized_answers_exit_3() {
    let dir = TempDir::new();
    let token_file = dir.file("token", TOKEN);
    let registry =
        FakeRegistry::start(None, |_| (401, r#"{"error":{"message":"token revoked"}}"#.to_owned()));
    let daemon = Daemon::spawn(&cloud_args(&registry.base, &token_file), &[]);
    assert_eq!(daemon.wait_exit(), 3);
    registry.next_request();
    registry.next_request();
    let log = daemon.stderr();
    assert!(
        log.contains(
            "executor registry authentication error: executor registry authentication failed (401 Unauthorized): token revoked"
        ),
        "{log}"
    );
    assert!(!log.contains(TOKEN), "{log}");
}

#[test]
fn one_unauthorized_answer_is_retried_with_a_fresh_token() {
    let dir = TempDir::new();
    let token_file = dir.file("token", TOKEN);
    let rendezvous = FakeRendezvous::start(None);
    let url = rendezvous.url.clone();
    let registry = FakeRegistry::start(None, move |n| {
        if n == 0 {
            (401, String::new())
        } else {
            (200, registered(&url))
        }
    });
    let daemon = Daemon::spawn(&cloud_args(&registry.base, &token_file), &[]);
    registry.next_request();
    registry.next_request();
    let mut orch = rendezvous.accept();
    orch.handshake(None);
    assert!(daemon.is_running());
}

#[test]
fn not_found_exits_2_with_the_exact_message() {
    let dir = TempDir::new();
    let token_file = dir.file("token", TOKEN);
    let registry = FakeRegistry::start(None, |_| (404, "no such environment\n".to_owned()));
    let daemon = Daemon::spawn(&cloud_args(&registry.base, &token_file), &[]);
    assert_eq!(daemon.wait_exit(), 2);
    registry.next_request();
    let log = daemon.stderr();
    assert!(
        log.contains("executor registry request failed (404 Not Found): no such environment"),
        "{log}"
    );
}

#[test]
fn an_invalid_environment_id_exits_2_before_any_request() {
    let dir = TempDir::new();
    let token_file = dir.file("token", TOKEN);
    let registry = FakeRegistry::start(None, |_| (500, String::new()));
    let daemon = Daemon::spawn(
        &["--remote", &registry.base, "--executor-id", "no/slashes", "--token-file", &token_file],
        &[],
    );
    assert_eq!(daemon.wait_exit(), 2);
    let log = daemon.stderr();
    assert!(
        log.contains("executor registry configuration error: executor id must be 1-256 characters of [A-Za-z0-9._-]"),
        "{log}"
    );
    assert!(registry.events.try_recv().is_err(), "no request may be sent");
}

#[test]
fn a_missing_token_exits_2() {
    let registry = FakeRegistry::start(None, |_| (500, String::new()));
    let daemon = Daemon::spawn(
        &["--cloud", "--cloud-base-url", &registry.base, "--cloud-environment-id", "e"],
        &[],
    );
    assert_eq!(daemon.wait_exit(), 2);
    let log = daemon.stderr();
    assert!(
        log.contains("executor registry authentication error: executor registry bearer token environment variable `CODEX_EXEC_SERVER_REMOTE_BEARER_TOKEN` is not set"),
        "{log}"
    );
}

#[test]
fn cloud_mode_with_listen_is_a_usage_error() {
    let dir = TempDir::new();
    let token_file = dir.file("token", TOKEN);
    let mut args = cloud_args("http://127.0.0.1:9", &token_file);
    args.extend(["--listen", "ws://127.0.0.1:0"]);
    assert_eq!(Daemon::spawn(&args, &[]).wait_exit(), 2);
    let daemon = Daemon::spawn(
        &[
            "--remote",
            "http://127.0.0.1:9",
            "--cloud-base-url",
            "http://127.0.0.1:9",
            "--executor-id",
            "e",
        ],
        &[("CODEX_EXEC_SERVER_REMOTE_BEARER_TOKEN", TOKEN)],
    );
    assert_eq!(daemon.wait_exit(), 2);
}

#[test]
fn https_registry_and_wss_rendezvous_are_trusted_with_the_ca_file() {
    let pki = pki();
    let dir = TempDir::new();
    let token_file = dir.file("token", TOKEN);
    let ca_file = dir.file("ca.pem", &pki.ca_pem);
    let rendezvous = FakeRendezvous::start(Some(pki.server.clone()));
    let url = rendezvous.url.clone();
    let registry = FakeRegistry::start(Some(pki.server.clone()), move |_| (200, registered(&url)));
    let base = registry.base.replace("127.0.0.1", "localhost");
    let mut args = cloud_args(&base, &token_file);
    args.extend(["--ca-file", &ca_file]);
    let daemon = Daemon::spawn(&args, &[]);
    registry.next_request();
    let mut orch = rendezvous.accept();
    orch.handshake(None);
    let log = daemon.stderr();
    assert!(!log.contains(SIGNATURE) && !log.contains(TOKEN), "{log}");
}

#[test]
fn ssl_cert_file_is_part_of_the_trust_list() {
    let pki = pki();
    let dir = TempDir::new();
    let token_file = dir.file("token", TOKEN);
    let ca_file = dir.file("ca.pem", &pki.ca_pem);
    let rendezvous = FakeRendezvous::start(Some(pki.server.clone()));
    let url = rendezvous.url.clone();
    let registry = FakeRegistry::start(None, move |_| (200, registered(&url)));
    let _daemon =
        Daemon::spawn(&cloud_args(&registry.base, &token_file), &[("SSL_CERT_FILE", &ca_file)]);
    registry.next_request();
    rendezvous.accept().handshake(None);
}

#[test]
fn an_untrusted_registry_is_refused_and_retried() {
    let pki = pki();
    let dir = TempDir::new();
    let token_file = dir.file("token", TOKEN);
    let registry = FakeRegistry::start(Some(pki.server.clone()), |_| (500, String::new()));
    let daemon = Daemon::spawn(&cloud_args(&registry.base, &token_file), &[]);
    for _ in 0..2 {
        assert!(matches!(registry.next(), RegistryEvent::TlsRefused), "the handshake must fail");
    }
    assert!(daemon.is_running(), "a TLS failure is retried, not fatal:\n{}", daemon.stderr());
    daemon.wait_line("registering again in");
}

#[test]
fn an_untrusted_rendezvous_is_refused_and_registration_retried() {
    let pki = pki();
    let dir = TempDir::new();
    let token_file = dir.file("token", TOKEN);
    let rendezvous = FakeRendezvous::start(Some(pki.server.clone()));
    let url = rendezvous.url.clone();
    let registry = FakeRegistry::start(None, move |_| (200, registered(&url)));
    let daemon = Daemon::spawn(&cloud_args(&registry.base, &token_file), &[]);
    registry.next_request();
    registry.next_request();
    assert!(rendezvous.accepted.try_recv().is_err(), "no websocket may be established");
    assert!(daemon.is_running(), "{}", daemon.stderr());
    let log = daemon.stderr();
    assert!(!log.contains(SIGNATURE), "{log}");
}

#[test]
fn ca_file_that_is_not_pem_exits_2() {
    let dir = TempDir::new();
    let token_file = dir.file("token", TOKEN);
    let junk = dir.file("junk.pem", "not a certificate");
    let mut args = cloud_args("http://127.0.0.1:9", &token_file);
    args.extend(["--ca-file", &junk]);
    let daemon = Daemon::spawn(&args, &[]);
    assert_eq!(daemon.wait_exit(), 2);
    assert!(
        daemon.stderr().contains("is not a valid PEM certificate bundle"),
        "{}",
        daemon.stderr()
    );
}

#[test]
fn sigterm_during_backoff_exits_0() {
    let dir = TempDir::new();
    let token_file = dir.file("token", TOKEN);
    let registry = FakeRegistry::start(None, |_| (503, String::new()));
    let daemon = Daemon::spawn(&cloud_args(&registry.base, &token_file), &[]);
    registry.next_request();
    daemon.wait_line("registering again in");
    // SAFETY: kill(2) on our running child.
    unsafe { libc::kill(daemon.pid, libc::SIGTERM) };
    assert_eq!(daemon.wait_exit(), 0);
}

#[test]
fn sigterm_while_serving_closes_the_rendezvous_with_1001_and_exits_0() {
    let dir = TempDir::new();
    let token_file = dir.file("token", TOKEN);
    let rendezvous = FakeRendezvous::start(None);
    let url = rendezvous.url.clone();
    let registry = FakeRegistry::start(None, move |_| (200, registered(&url)));
    let daemon = Daemon::spawn(&cloud_args(&registry.base, &token_file), &[]);
    let mut orch = rendezvous.accept();
    orch.handshake(None);
    // SAFETY: kill(2) on our running child.
    unsafe { libc::kill(daemon.pid, libc::SIGTERM) };
    let close = loop {
        match orch.ws.read() {
            Ok(Message::Close(frame)) => break frame,
            Ok(_) => {}
            Err(err) => panic!("expected a Close frame, got {err}"),
        }
    };
    assert_eq!(close.map(|f| u16::from(f.code)), Some(1001));
    assert_eq!(daemon.wait_exit(), 0);
}

#[test]
fn retry_after_sets_the_delay_before_the_next_registration() {
    let dir = TempDir::new();
    let token_file = dir.file("token", TOKEN);
    // The scripted fake registry sends no headers, so this one adds Retry-After.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for sock in listener.incoming() {
            let Ok(mut sock) = sock else { return };
            sock.set_read_timeout(Some(STEP)).unwrap();
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n")
                && sock.read(&mut byte).map(|n| n == 1).unwrap_or(false)
            {
                head.push(byte[0]);
            }
            let _ = tx.send(Instant::now());
            let _ = sock.write_all(
                b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 2\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
        }
    });
    let daemon = Daemon::spawn(&cloud_args(&base, &token_file), &[]);
    let first = rx.recv_timeout(STEP).unwrap();
    let line = daemon.wait_line("registering again in");
    assert!(line.ends_with("registering again in 2.0 s"), "{line}");
    let second = rx.recv_timeout(STEP).unwrap();
    let gap = second - first;
    assert!(gap >= Duration::from_millis(1900) && gap < Duration::from_secs(4), "{gap:?}");
}

#[test]
fn a_refused_registry_is_retried_after_about_1_then_2_then_4_s() {
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let dir = TempDir::new();
    let token_file = dir.file("token", TOKEN);
    let daemon = Daemon::spawn(&cloud_args(&format!("http://127.0.0.1:{port}"), &token_file), &[]);
    for base in [1.0, 2.0, 4.0] {
        let line = daemon.wait_line("registering again in");
        let secs: f64 = line
            .rsplit("registering again in ")
            .next()
            .and_then(|rest| rest.strip_suffix(" s"))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{line}"));
        assert!(secs >= base * 0.8 - 0.05 && secs <= base * 1.2 + 0.05, "{secs} vs {base}: {line}");
    }
    assert!(daemon.is_running());
}

#[test]
fn sigterm_during_a_hanging_registry_request_exits_0_within_seconds() {
    // Accepts the TCP connection and never answers: the request would take its full 10 s.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut held = Vec::new();
        for sock in listener.incoming() {
            let Ok(sock) = sock else { return };
            held.push(sock);
            let _ = tx.send(());
        }
    });
    let dir = TempDir::new();
    let token_file = dir.file("token", TOKEN);
    let daemon = Daemon::spawn(&cloud_args(&base, &token_file), &[]);
    rx.recv_timeout(STEP).expect("the daemon did not connect to the registry");
    let asked = Instant::now();
    // SAFETY: kill(2) on our running child.
    unsafe { libc::kill(daemon.pid, libc::SIGTERM) };
    assert_eq!(daemon.wait_exit(), 0);
    assert!(asked.elapsed() < Duration::from_secs(5), "took {:?}", asked.elapsed());
}

/// `event` without the exit report's extension members (issue 18; see tests/limits.rs).
fn without_report(mut event: Value) -> Value {
    let params = event["params"].as_object_mut().expect("params");
    assert!(params.get("reason").is_some_and(Value::is_string), "no exit reason: {params:?}");
    for key in [
        "reason",
        "wallTimeMs",
        "userCpuMs",
        "systemCpuMs",
        "maxRssKb",
        "stdoutBytes",
        "stderrBytes",
    ] {
        params.remove(key);
    }
    event
}
