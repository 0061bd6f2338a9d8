//! The audit log (issue 18) over the real binary: a scripted session leaves the expected
//! lines in order, with env names but no values; `audit verify` passes on it, and fails on
//! exactly the line where one byte was edited or after a line was removed.

mod common;

use std::process::Command;

use common::{Daemon, BIN};
use serde_json::{json, Value};

fn verify(path: &std::path::Path) -> (i32, String) {
    let out = Command::new(BIN)
        .args(["audit", "verify"])
        .arg(path)
        .output()
        .expect("run exec-server audit verify");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).trim().to_string())
}

#[test]
fn a_scripted_session_is_logged_in_order_and_verifies() {
    let dir = tempfile_dir();
    let log = dir.join("audit.log");
    let file = dir.join("written.txt");
    let mut daemon = Daemon::start(&[
        "--audit-log",
        log.to_str().expect("utf-8"),
        "--process-timeout-secs",
        "30",
    ]);
    let (mut client, session) = daemon.session();
    let start = json!({"processId": "p", "argv": ["sh", "-c", "printf hi"], "cwd": "/",
        "env": {"PATH": "/usr/bin:/bin", "SECRET_TOKEN": "hunter2"}, "tty": false});
    let r = client.call("process/start", start);
    assert!(r.get("result").is_some(), "{r}");
    let exited = client.notification("process/exited");
    client.notification("process/closed");
    let r = client.call(
        "fs/writeFile",
        json!({"path": file.to_str().expect("utf-8"), "dataBase64": "aGVsbG8="}),
    );
    assert!(r.get("result").is_some(), "{r}");
    let r = client.call("fs/remove", json!({"path": "/nonexistent/dir/x", "force": false}));
    assert!(r.get("error").is_some(), "{r}");
    drop(client);
    assert!(daemon.terminate().success());

    let text = std::fs::read_to_string(&log).expect("audit log");
    assert!(!text.contains("hunter2"), "an env value leaked into the audit log");
    let lines: Vec<Value> =
        text.lines().map(|l| serde_json::from_str(l).expect("a JSON line")).collect();
    let events: Vec<&str> = lines.iter().map(|l| l["event"].as_str().expect("event")).collect();
    assert_eq!(
        events,
        [
            "daemonStarted",
            "connectionOpened",
            "sessionOpened",
            "processStarted",
            "processEnded",
            "fsChange",
            "fsChange",
            "sessionClosed",
            "daemonStopped"
        ],
        "{text}"
    );
    for (i, line) in lines.iter().enumerate() {
        assert_eq!(line["seq"], i as u64 + 1, "{line}");
        assert!(line["ts"].as_str().is_some_and(|ts| ts.ends_with('Z')), "{line}");
    }
    assert_eq!(lines[1]["transport"], "websocket");
    assert!(lines[1]["peer"].as_str().is_some_and(|p| p.starts_with("127.0.0.1:")));
    assert_eq!(lines[2]["sessionId"], session.as_str());
    let started = &lines[3];
    assert_eq!(started["sessionId"], session.as_str());
    assert_eq!(started["processId"], "p");
    assert_eq!(started["argv"], json!(["sh", "-c", "printf hi"]));
    assert_eq!(started["envNames"], json!(["PATH", "SECRET_TOKEN"]));
    assert_eq!(started["tty"], false);
    assert_eq!(started["limits"], json!({"processTimeoutSecs": 30}));
    let ended = &lines[4];
    assert_eq!(ended["processId"], "p");
    assert_eq!(ended["reason"], "exited");
    assert_eq!(ended["exitCode"], 0);
    assert_eq!(ended["stdoutBytes"], 2);
    assert_eq!(ended["wallTimeMs"], exited["params"]["wallTimeMs"]);
    assert_eq!(lines[5]["method"], "fs/writeFile");
    assert_eq!(lines[5]["path"], file.to_str().expect("utf-8"));
    assert_eq!(lines[5]["bytes"], 5);
    assert_eq!(lines[5]["result"], "ok");
    assert_eq!(lines[6]["method"], "fs/remove");
    assert_ne!(lines[6]["result"], "ok");
    assert_eq!(lines[7]["cause"], "daemonShutdown");

    assert_eq!(verify(&log), (0, format!("ok: {} lines", lines.len())));

    // One byte of a middle line edited: verify names that line.
    let mut bytes = text.clone().into_bytes();
    let fourth = text.match_indices('\n').nth(2).expect("4 lines").0 + 1;
    let at = fourth + text[fourth..].find("\"processId\":\"p\"").expect("in line 4") + 14;
    bytes[at] = b'q';
    let edited = dir.join("edited.log");
    std::fs::write(&edited, &bytes).expect("write");
    let (code, out) = verify(&edited);
    assert_eq!(code, 1, "{out}");
    assert!(out.starts_with("broken at line 4:"), "{out}");

    // A line removed: the next one no longer chains.
    let mut kept: Vec<&str> = text.lines().collect();
    kept.remove(5);
    let removed = dir.join("removed.log");
    std::fs::write(&removed, kept.join("\n") + "\n").expect("write");
    let (code, out) = verify(&removed);
    assert_eq!(code, 1, "{out}");
    assert!(out.starts_with("broken at line 6:"), "{out}");

    // A restarted daemon continues the chain of the same file.
    let mut daemon = Daemon::start(&["--audit-log", log.to_str().expect("utf-8")]);
    assert!(daemon.terminate().success());
    let (code, out) = verify(&log);
    assert_eq!((code, out), (0, format!("ok: {} lines", lines.len() + 2)));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn audit_usage_errors() {
    let out = Command::new(BIN).args(["audit", "check"]).output().expect("run");
    assert_eq!(out.status.code(), Some(2));
    let out =
        Command::new(BIN).args(["audit", "verify", "/nonexistent/log"]).output().expect("run");
    assert_eq!(out.status.code(), Some(1));
}

fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("exec-server-audit-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}
