//! `make e2e-cloud`: interop of our Noise relay code with the codex 0.171 binary as peer,
//! through a fake registry and a fake relay. Not part of `make test` (needs the upstream
//! binary: CODEX_BIN, default the cached 0.171 musl build); each test is `#[ignore]`d and
//! the make target runs them with `--ignored`.

#[path = "support/fake_cloud.rs"]
mod fake_cloud;
#[path = "support/noise.rs"]
mod noise;

use noise::{channel, frame, noise_harness};

use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

use fake_cloud::{registration, FakeRegistry, FakeRelay, Seen};
use noise_harness::{begin, finish};

const DEADLINE: Duration = Duration::from_secs(20);
const DEFAULT_CODEX: &str =
    "/work/cache/codex/0.171.0/package/vendor/x86_64-unknown-linux-musl/bin/codex";

fn codex_bin() -> String {
    std::env::var("CODEX_BIN").unwrap_or_else(|_| DEFAULT_CODEX.to_string())
}

/// A child process, killed when dropped, with the scratch HOME it used (removed then).
struct Upstream(Child, Option<std::path::PathBuf>);
impl Drop for Upstream {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        if let Some(home) = self.1.take() {
            let _ = std::fs::remove_dir_all(home);
        }
    }
}

fn start_upstream_executor(base: &str, env_id: &str) -> Upstream {
    let home =
        std::path::Path::new("/var/tmp").join(format!("e2e-cloud-home-{}", std::process::id()));
    std::fs::create_dir_all(&home).expect("home");
    let mut child = Command::new(codex_bin())
        .args([
            "exec-server",
            "--remote",
            base,
            "--environment-id",
            env_id,
            "--registration-bearer-stdin",
        ])
        .env("HOME", &home)
        .env("RUST_LOG", std::env::var("UPSTREAM_LOG").unwrap_or_else(|_| "warn".into()))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn codex");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(b"tok-123\n").expect("token");
    std::mem::forget(stdin); // keep the pipe open for the process lifetime
    Upstream(child, Some(home))
}

fn registry_for(relay_url: String) -> FakeRegistry {
    FakeRegistry::start(move |seen: &Seen| {
        if seen.path.ends_with("/register") {
            let body = registration(&relay_url);
            (200, vec![], body.to_string())
        } else if seen.path.ends_with("/validate") {
            (200, vec![], json!({"valid": true}).to_string())
        } else {
            (404, vec![], "{}".into())
        }
    })
}

/// Our harness side (channel, frame and framing modules of the daemon) against the 0.171
/// executor: registration, validation, handshake, then initialize, a process with output
/// and a file read in the 0.171 dialect (file: URIs), all through encrypted records.
#[test]
#[ignore]
fn upstream_executor_serves_our_harness() {
    let relay = FakeRelay::start("/relay/exec");
    let registry = registry_for(relay.url.clone());
    let _up = start_upstream_executor(&registry.base, "env-1");
    let register = registry.next(DEADLINE);
    assert_eq!(register.path, "/cloud/environment/env-1/register");
    let body: Value = serde_json::from_str(&register.body).expect("json body");
    let executor_key: channel::PublicKey =
        serde_json::from_value(body["executor_public_key"].clone()).expect("key");
    let (upgrade, mut ws) = relay.next(DEADLINE);
    assert!(upgrade.headers.contains_key("x-request-id"));
    ws.get_mut().set_read_timeout(Some(DEADLINE)).expect("timeout");

    let me = channel::Identity::generate().expect("identity");
    let init = begin(&mut ws, &me, &executor_key, ("env-1", "reg-1"), "stream-1", b"authz-1");
    let validate = registry.next(DEADLINE);
    let v: Value = serde_json::from_str(&validate.body).expect("json");
    assert_eq!(v["harness_key_authorization"], "authz-1");
    assert_eq!(v["harness_public_key"], serde_json::to_value(me.public_key()).expect("key"));
    let mut h = finish(&mut ws, init, "stream-1");
    let r = h.call(&mut ws, "initialize", json!({"clientName": "e2e"}));
    assert!(r["result"]["sessionId"].is_string(), "{r}");
    h.send(&mut ws, &json!({"method": "initialized", "params": {}}));

    let dir = std::env::temp_dir().join(format!("e2e-cloud-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    std::fs::write(dir.join("f.txt"), b"hello world").expect("write");
    let uri = format!("file://{}", dir.display());
    let r =
        h.call(&mut ws, "fs/readFile", json!({"path": format!("{uri}/f.txt"), "sandbox": null}));
    assert_eq!(r["result"]["dataBase64"], "aGVsbG8gd29ybGQ=", "{r}");
    let start = json!({"processId": "p", "argv": ["sh", "-c", "echo hi"], "cwd": uri, "env": {"PATH": "/usr/bin:/bin"}, "tty": false, "pipeStdin": false, "arg0": null});
    let r = h.call(&mut ws, "process/start", start);
    assert_eq!(r["result"]["processId"], "p", "{r}");
    let read = h.call(&mut ws, "process/read", json!({"processId": "p", "waitMs": 5000}));
    let chunks = read["result"]["chunks"].as_array().cloned().unwrap_or_default();
    assert!(chunks.iter().any(|c| c["chunk"] == "aGkK"), "{read}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Copies binary frames both ways between the executor's link and the harness's socket
/// until `stop` says so; returns the frames seen per direction. Test relay only: both
/// sockets poll with a short read timeout.
fn forward(
    exec: &mut tungstenite::WebSocket<std::net::TcpStream>,
    harness: &mut tungstenite::WebSocket<std::net::TcpStream>,
    until: std::time::Instant,
    mut stop: impl FnMut(&[frame::Frame], &[frame::Frame]) -> bool,
) -> (Vec<frame::Frame>, Vec<frame::Frame>) {
    use tungstenite::Message;
    let tick = Some(Duration::from_millis(10));
    exec.get_mut().set_read_timeout(tick).expect("timeout");
    harness.get_mut().set_read_timeout(tick).expect("timeout");
    let (mut to_exec, mut to_harness) = (Vec::new(), Vec::new());
    while std::time::Instant::now() < until && !stop(&to_exec, &to_harness) {
        match harness.read() {
            Ok(Message::Binary(b)) => {
                if let Ok(f) = frame::decode(&b) {
                    to_exec.push(f);
                }
                exec.send(Message::Binary(b)).expect("to executor");
            }
            Ok(_) => {}
            Err(tungstenite::Error::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("harness socket: {e}"),
        }
        match exec.read() {
            Ok(Message::Binary(b)) => {
                if let Ok(f) = frame::decode(&b) {
                    to_harness.push(f);
                }
                harness.send(Message::Binary(b)).expect("to harness");
            }
            Ok(_) => {}
            Err(tungstenite::Error::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("executor socket: {e}"),
        }
    }
    (to_exec, to_harness)
}

/// Our exec-server as the executor, the 0.171 client (`codex app-server` with the
/// CODEX_EXEC_SERVER_NOISE_* variables) as the harness, through a fake registry and a
/// forwarding relay: the client connects with its own key, we validate it with the
/// registry, the handshake completes and encrypted JSON-RPC flows both ways.
#[test]
#[ignore]
fn upstream_harness_talks_to_our_executor() {
    use std::sync::{Arc, Mutex};
    let exec_relay = FakeRelay::start("/exec");
    let harness_relay = FakeRelay::start("/harness");
    let executor_key: Arc<Mutex<Option<Value>>> = Arc::new(Mutex::new(None));
    let (exec_url, harness_url, key) =
        (exec_relay.url.clone(), harness_relay.url.clone(), Arc::clone(&executor_key));
    let registry = FakeRegistry::start(move |seen: &Seen| {
        let body: Value = serde_json::from_str(&seen.body).unwrap_or(Value::Null);
        if seen.path.ends_with("/register") {
            *key.lock().expect("lock") = Some(body["executor_public_key"].clone());
            let r = registration(&exec_url);
            (200, vec![], r.to_string())
        } else if seen.path.ends_with("/connect") {
            let mut r = registration(&harness_url);
            r["executor_public_key"] = json!(key.lock().expect("lock").clone());
            r["harness_key_authorization"] = json!("authz-e2e");
            (200, vec![], r.to_string())
        } else if seen.path.ends_with("/validate") {
            let ok = body["harness_key_authorization"] == "authz-e2e";
            (200, vec![], json!({"valid": ok}).to_string())
        } else {
            (404, vec![], "{}".into())
        }
    });
    let mut ours = Command::new(env!("CARGO_BIN_EXE_exec-server"))
        .args([
            "--remote",
            &registry.base,
            "--environment-id",
            "env-1",
            "--registration-bearer-stdin",
        ])
        .env("RUST_LOG", "exec_server=debug")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn exec-server");
    ours.stdin.as_mut().expect("stdin").write_all(b"exec-tok\n").expect("token");
    let ours = Upstream(ours, None);
    assert_eq!(registry.next(DEADLINE).path, "/cloud/environment/env-1/register");
    let (_, mut exec_ws) = exec_relay.next(DEADLINE);

    let home =
        std::path::Path::new("/var/tmp").join(format!("e2e-cloud-harness-{}", std::process::id()));
    std::fs::create_dir_all(&home).expect("home");
    let mut client = Command::new(codex_bin())
        .arg("app-server")
        .env("HOME", &home)
        .env("CODEX_API_KEY", "unused")
        .env("CODEX_EXEC_SERVER_NOISE_REGISTRY_URL", &registry.base)
        .env("CODEX_EXEC_SERVER_NOISE_ENVIRONMENT_ID", "env-1")
        .env("CODEX_EXEC_SERVER_NOISE_AUTH_TOKEN", "harness-tok")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn codex app-server");
    let mut stdin = client.stdin.take().expect("stdin");
    stdin
        .write_all(b"{\"id\":1,\"method\":\"initialize\",\"params\":{\"clientInfo\":{\"name\":\"e2e\",\"version\":\"1\"},\"capabilities\":{\"experimentalApi\":true}}}\n{\"method\":\"initialized\"}\n")
        .expect("app-server stdin");
    let client = Upstream(client, Some(home));
    let connect = registry.next(DEADLINE);
    assert_eq!(connect.path, "/cloud/environment/env-1/connect");
    assert_eq!(
        connect.headers.get("authorization").map(String::as_str),
        Some("Bearer harness-tok")
    );
    let harness_key: Value =
        serde_json::from_str::<Value>(&connect.body).expect("json")["harness_public_key"].clone();
    let (upgrade, mut harness_ws) = harness_relay.next(DEADLINE);
    eprintln!("harness upgrade: {} {:?}", upgrade.path, upgrade.headers);

    let until = std::time::Instant::now() + DEADLINE;
    let mut validated = None;
    let (to_exec, to_harness) =
        forward(&mut exec_ws, &mut harness_ws, until, |to_exec, to_harness| {
            if validated.is_none() {
                validated = registry.seen.try_recv().ok();
            }
            // Done once the client has sent at least two requests' worth of records after
            // our handshake answer and we answered each.
            let data_in = to_exec.iter().filter(|f| matches!(f, frame::Frame::Data { .. })).count();
            let data_out =
                to_harness.iter().filter(|f| matches!(f, frame::Frame::Data { .. })).count();
            data_in >= 2 && data_out >= 1
        });
    let show = |frames: &[frame::Frame]| {
        frames
            .iter()
            .map(|f| match f {
                frame::Frame::Data { seq, payload, .. } => {
                    format!("data {seq} ({} B)", payload.len())
                }
                frame::Frame::Handshake { payload, .. } => {
                    format!("handshake ({} B)", payload.len())
                }
                other => format!("{other:?}"),
            })
            .collect::<Vec<_>>()
    };
    eprintln!("harness -> executor: {:?}", show(&to_exec));
    eprintln!("executor -> harness: {:?}", show(&to_harness));
    let validated = validated.expect("validation request");
    assert_eq!(validated.path, "/cloud/environment/env-1/validate");
    let v: Value = serde_json::from_str(&validated.body).expect("json");
    assert_eq!(v["harness_public_key"], harness_key);
    assert_eq!(v["harness_key_authorization"], "authz-e2e");
    // 0.171's harness opens with a resume frame, then message 1.
    assert!(matches!(to_exec.get(1), Some(frame::Frame::Handshake { .. })), "{:?}", show(&to_exec));
    assert!(matches!(to_harness.first(), Some(frame::Frame::Handshake { .. })), "{to_harness:?}");
    assert!(!to_harness.iter().any(|f| matches!(f, frame::Frame::Reset { .. })), "{to_harness:?}");
    drop((client, ours));
}
