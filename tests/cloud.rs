//! Cloud mode end to end (PROTOCOL.md §8): the real binary against a fake executor registry
//! and a fake rendezvous on 127.0.0.1:0 that plays the orchestrator — registration request,
//! outcomes and exit codes, re-registration and session resume after a dropped rendezvous,
//! TLS with a CA generated here, and secrets kept out of stderr.

mod common;
mod netfakes;

use std::net::TcpListener;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use common::{b64, decode, v1_exit};
use netfakes::*;
use serde_json::{json, Value};
use tungstenite::Message;

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

/// A daemon in cloud mode under the base path `/prefix/` (its token file has blanks around
/// the token), with its first registration request checked.
struct Cloud {
    _dir: TempDir,
    rendezvous: FakeRendezvous,
    registry: FakeRegistry,
    daemon: Daemon,
    first: Seen,
}

impl Cloud {
    fn start() -> Cloud {
        let dir = TempDir::new();
        let token_file = dir.file("token", &format!("  {TOKEN}\n"));
        let rendezvous = FakeRendezvous::start(None);
        let registry = FakeRegistry::start(None, 200, registered(&rendezvous.url));
        let daemon =
            Daemon::spawn(&cloud_args(&format!("{}/prefix/", registry.base), &token_file), &[]);
        let first = registry.next_request();
        assert_registration_request(&first);
        Cloud { _dir: dir, rendezvous, registry, daemon, first }
    }

    /// Drops `orch`: the daemon notices, registers again with the same idempotency id,
    /// dials again, and the orchestrator resumes `session` through the new socket.
    fn resume(&self, orch: Orchestrator, session: &str) -> Orchestrator {
        drop(orch);
        let second = self.registry.next_request();
        assert_eq!(second.body, self.first.body, "one registration id per run");
        let mut orch = self.rendezvous.accept();
        assert_eq!(orch.handshake("cloud-it", Some(session)), session, "the session is resumed");
        orch
    }

    /// The log says it registered, and shows neither the token nor the URL signature.
    fn assert_log(&self) -> String {
        let log = self.daemon.stderr();
        assert!(
            log.contains(
                "codex exec-server remote executor reg-1 registered with executor_id exec-it"
            ),
            "{log}"
        );
        assert!(!log.contains(TOKEN), "the token leaked to stderr:\n{log}");
        assert!(!log.contains(SIGNATURE), "the URL signature leaked to stderr:\n{log}");
        log
    }
}

#[test]
fn a_dropped_rendezvous_re_registers_and_the_session_resumes() {
    let cloud = Cloud::start();

    let mut orch = cloud.rendezvous.accept();
    let session = orch.handshake("cloud-it", None);
    let _orch = cloud.resume(orch, &session);

    let log = cloud.assert_log();
    assert!(log.contains("/rendezvous/exec-it"), "the rendezvous is logged:\n{log}");
}

#[test]
fn runs_a_process_through_the_rendezvous_and_reads_it_after_a_drop() {
    let cloud = Cloud::start();

    // The orchestrator side: handshake, run `printf hi`, get output, exited, closed.
    let mut orch = cloud.rendezvous.accept();
    let session = orch.handshake("cloud-it", None);
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
    let mut orch = cloud.resume(orch, &session);
    let deadline = Instant::now() + STEP;
    let mut output = Vec::new();
    let mut after = 0;
    loop {
        assert!(Instant::now() < deadline, "p2 did not close in time");
        let read = orch
            .call("process/read", json!({"processId": "p2", "afterSeq": after, "waitMs": 2000}));
        let result = &read["result"];
        for chunk in result["chunks"].as_array().unwrap_or_else(|| panic!("{read}")) {
            output.extend(decode(&chunk["chunk"]));
        }
        after = result["nextSeq"].as_u64().unwrap() - 1;
        if result["closed"] == json!(true) {
            assert_eq!(result["exitCode"], json!(0));
            break;
        }
    }
    assert_eq!(output, b"late");

    cloud.assert_log();
}

#[test]
fn two_unauthorized_answers_exit_3() {
    let (_dir, token_file) = token_file();
    let registry =
        FakeRegistry::start(None, 401, r#"{"error":{"message":"token revoked"}}"#.to_owned());
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
    let (_dir, token_file) = token_file();
    let rendezvous = FakeRendezvous::start(None);
    let url = rendezvous.url.clone();
    let registry = FakeRegistry::scripted(None, move |n| {
        if n == 0 {
            Answer::Reply(401, String::new())
        } else {
            Answer::Reply(200, registered(&url))
        }
    });
    let daemon = Daemon::spawn(&cloud_args(&registry.base, &token_file), &[]);
    registry.next_request();
    registry.next_request();
    let mut orch = rendezvous.accept();
    orch.handshake("cloud-it", None);
    assert!(daemon.is_running());
}

#[test]
fn not_found_exits_2_with_the_exact_message() {
    let (_dir, token_file) = token_file();
    let registry = FakeRegistry::start(None, 404, "no such environment\n".to_owned());
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
    let (_dir, token_file) = token_file();
    let registry = FakeRegistry::start(None, 500, String::new());
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
    let registry = FakeRegistry::start(None, 500, String::new());
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
    let (_dir, token_file) = token_file();
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
    let (_dir, token_file, ca_file) = token_and_ca_file(&pki);
    let rendezvous = FakeRendezvous::start(Some(pki.server.clone()));
    let url = rendezvous.url.clone();
    let registry = FakeRegistry::start(Some(pki.server.clone()), 200, registered(&url));
    let mut args = cloud_args(&registry.base, &token_file);
    args.extend(["--ca-file", &ca_file]);
    let daemon = Daemon::spawn(&args, &[]);
    registry.next_request();
    let mut orch = rendezvous.accept();
    orch.handshake("cloud-it", None);
    let log = daemon.stderr();
    assert!(!log.contains(SIGNATURE) && !log.contains(TOKEN), "{log}");
}

#[test]
fn ssl_cert_file_is_part_of_the_trust_list() {
    let pki = pki();
    let (_dir, token_file, ca_file) = token_and_ca_file(&pki);
    let rendezvous = FakeRendezvous::start(Some(pki.server.clone()));
    let url = rendezvous.url.clone();
    let registry = FakeRegistry::start(None, 200, registered(&url));
    let _daemon =
        Daemon::spawn(&cloud_args(&registry.base, &token_file), &[("SSL_CERT_FILE", &ca_file)]);
    registry.next_request();
    rendezvous.accept().handshake("cloud-it", None);
}

#[test]
fn an_untrusted_registry_is_refused_and_retried() {
    let pki = pki();
    let (_dir, token_file) = token_file();
    let registry = FakeRegistry::start(Some(pki.server.clone()), 500, String::new());
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
    let (_dir, token_file) = token_file();
    let rendezvous = FakeRendezvous::start(Some(pki.server.clone()));
    let url = rendezvous.url.clone();
    let registry = FakeRegistry::start(None, 200, registered(&url));
    let daemon = Daemon::spawn(&cloud_args(&registry.base, &token_file), &[]);
    registry.next_request();
    registry.next_request();
    assert!(!rendezvous.accepted_any(), "no websocket may be established");
    assert!(daemon.is_running(), "{}", daemon.stderr());
    let log = daemon.stderr();
    assert!(!log.contains(SIGNATURE), "{log}");
}

#[test]
fn ca_file_that_is_not_pem_exits_2() {
    let (dir, token_file) = token_file();
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
    let (_dir, token_file) = token_file();
    let registry = FakeRegistry::start(None, 503, String::new());
    let daemon = Daemon::spawn(&cloud_args(&registry.base, &token_file), &[]);
    registry.next_request();
    daemon.wait_line("registering again in");
    daemon.sigterm();
    assert_eq!(daemon.wait_exit(), 0);
}

#[test]
fn sigterm_while_serving_closes_the_rendezvous_with_1001_and_exits_0() {
    let (_dir, token_file) = token_file();
    let rendezvous = FakeRendezvous::start(None);
    let url = rendezvous.url.clone();
    let registry = FakeRegistry::start(None, 200, registered(&url));
    let daemon = Daemon::spawn(&cloud_args(&registry.base, &token_file), &[]);
    let mut orch = rendezvous.accept();
    orch.handshake("cloud-it", None);
    daemon.sigterm();
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
    let (_dir, token_file) = token_file();
    let registry = FakeRegistry::scripted(None, |_| {
        Answer::Raw("HTTP/1.1 503 Service Unavailable\r\nRetry-After: 2\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_owned())
    });
    let daemon = Daemon::spawn(&cloud_args(&registry.base, &token_file), &[]);
    let first = registry.next_request().at;
    let line = daemon.wait_line("registering again in");
    assert!(line.ends_with("registering again in 2.0 s"), "{line}");
    let second = registry.next_request().at;
    let gap = second - first;
    assert!(gap >= Duration::from_millis(1900) && gap < Duration::from_secs(4), "{gap:?}");
}

#[test]
fn a_refused_registry_is_retried_after_about_1_then_2_then_4_s() {
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let (_dir, token_file) = token_file();
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
    let (_dir, token_file) = token_file();
    let daemon = Daemon::spawn(&cloud_args(&base, &token_file), &[]);
    rx.recv_timeout(STEP).expect("the daemon did not connect to the registry");
    let asked = Instant::now();
    daemon.sigterm();
    assert_eq!(daemon.wait_exit(), 0);
    assert!(asked.elapsed() < Duration::from_secs(5), "took {:?}", asked.elapsed());
}

/// `event` without the exit report's extension members (issue 18; see tests/limits.rs),
/// which has no `ptyBytes` (the process has no PTY).
fn without_report(event: Value) -> Value {
    assert!(event["params"].get("ptyBytes").is_none(), "{event}");
    v1_exit(event)
}
