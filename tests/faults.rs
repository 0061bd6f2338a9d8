//! Fault injection (issue 17) against the real binary in cloud mode: a registry that
//! answers 503, resets the connection and hangs past the request timeout before it is
//! healthy again (the daemon recovers unattended and serves), and a rendezvous socket
//! killed with a TCP reset while a process streams output (the session resumes on the next
//! connection and every byte is delivered: notifications before the kill, `process/read`
//! after it, §3.6). The disk-full fault of `fs/writeFile` is in tests/fs_atomic.rs.

mod common;
mod netfakes;

use std::time::Instant;

use common::decode;
use netfakes::*;
use serde_json::json;
use sha2::{Digest, Sha256};

/// The registry's answer while it is unavailable.
fn unavailable() -> Answer {
    Answer::Reply(503, r#"{"error":"unavailable"}"#.to_owned())
}

/// A registry where request n gets `script[n]`, the last entry repeating.
fn registry(script: Vec<Answer>) -> FakeRegistry {
    FakeRegistry::scripted(None, move |n| script[n.min(script.len() - 1)].clone())
}

/// The daemon in cloud mode against `registry`, with `extra` flags.
fn daemon(registry: &FakeRegistry, token_file: &str, extra: &[&str]) -> Daemon {
    Daemon::spawn(&[cloud_args(&registry.base, token_file), extra.to_vec()].concat(), &[])
}

#[test]
fn a_failing_registry_is_survived_and_the_daemon_serves_once_it_is_healthy() {
    let (_dir, token) = token_file();
    let rendezvous = FakeRendezvous::start(None);
    let registered = Answer::Reply(200, registered(&rendezvous.url));
    let script = vec![unavailable(), Answer::Reset, Answer::Hang, unavailable(), registered];
    let registry = registry(script.clone());
    let daemon = daemon(&registry, &token, &[]);
    for (n, expected) in script.iter().enumerate() {
        let RegistryEvent::Request(seen) =
            registry.events.recv_timeout(HANG_STEP).unwrap_or_else(|_| {
                panic!("registry request {n} ({expected:?}) not made in time:\n{}", daemon.stderr())
            })
        else {
            panic!("a refused TLS handshake on plain HTTP");
        };
        assert_eq!(seen.index, n);
        assert!(daemon.is_running(), "the daemon exited on {expected:?}:\n{}", daemon.stderr());
    }
    let mut orch = rendezvous.accept();
    orch.handshake("faults", None);
    let start = orch.call(
        "process/start",
        json!({"processId": "p", "argv": ["printf", "ok"], "cwd": "/", "env": {}, "tty": false}),
    );
    assert_eq!(start["result"], json!({"processId": "p", "sandboxType": "none"}), "{start}");
    let read = orch.call("process/read", json!({"processId": "p", "waitMs": 5000}));
    let chunks: Vec<u8> = read["result"]["chunks"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|c| decode(&c["chunk"]))
        .collect();
    assert_eq!(chunks, b"ok", "{read}");
    let log = daemon.stderr();
    assert!(!log.contains(TOKEN), "the token leaked:\n{log}");
    assert!(!log.contains("panicked"), "{log}");
}

#[test]
fn a_rendezvous_reset_mid_stream_loses_no_byte() {
    let (_dir, token) = token_file();
    let rendezvous = FakeRendezvous::start(None);
    let registry = registry(vec![Answer::Reply(200, registered(&rendezvous.url))]);
    let _daemon = daemon(&registry, &token, &["--retained-output-bytes", "16777216"]);
    let mut orch = rendezvous.accept();
    let session = orch.handshake("faults", None);
    // About 4 MB over a second or more, so the reset comes while it streams.
    let script = "for i in $(seq 1 200); do yes \"line $i\" | head -c 20000; sleep 0.005; done";
    let mut expected = Vec::new();
    for i in 1..=200 {
        let line = format!("line {i}\n");
        expected.extend(line.bytes().cycle().take(20_000));
    }
    let start = orch.call(
        "process/start",
        json!({"processId": "s", "argv": ["sh", "-c", script], "cwd": "/", "env": {"PATH": "/usr/bin:/bin"}, "tty": false}),
    );
    assert_eq!(start["result"], json!({"processId": "s", "sandboxType": "none"}), "{start}");

    // Take output from notifications until some has come, then reset the socket.
    let mut got = Vec::new();
    let mut last_seq = 0;
    let mut notes = std::mem::take(&mut orch.notes).into_iter();
    while got.len() < 200_000 {
        let m = notes.next().unwrap_or_else(|| orch.next_message());
        if m["method"] == "process/output" {
            let seq = m["params"]["seq"].as_u64().unwrap();
            assert_eq!(seq, last_seq + 1, "notifications in seq order");
            last_seq = seq;
            got.extend(decode(&m["params"]["chunk"]));
        }
        assert_ne!(m["method"], "process/closed", "the process ended before the reset");
    }
    reset(orch.ws.get_ref().tcp());
    drop(orch);

    // The daemon notices, registers again and dials; the session resumes and the rest is
    // read from retention after the last seq seen.
    let mut orch = rendezvous.accept();
    assert_eq!(orch.handshake("faults", Some(&session)), session);
    let deadline = Instant::now() + STEP;
    let mut after = last_seq;
    loop {
        assert!(Instant::now() < deadline, "the stream did not close in time");
        let read =
            orch.call("process/read", json!({"processId": "s", "afterSeq": after, "waitMs": 2000}));
        let result = &read["result"];
        for chunk in result["chunks"].as_array().unwrap_or_else(|| panic!("{read}")) {
            let seq = chunk["seq"].as_u64().unwrap();
            assert!(seq > after, "read pages are in seq order");
            after = seq;
            got.extend(decode(&chunk["chunk"]));
        }
        after = after.max(result["nextSeq"].as_u64().unwrap() - 1);
        if result["closed"] == json!(true) {
            assert_eq!(result["exitCode"], json!(0));
            break;
        }
    }
    assert_eq!(got.len(), expected.len());
    assert_eq!(Sha256::digest(&got), Sha256::digest(&expected), "every byte, in order");
}
