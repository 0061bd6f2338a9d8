//! `make e2e-cloud`: interop of our Noise relay code with the codex 0.171 binary as peer,
//! through a fake registry and a fake relay. Not part of `make test` (needs the upstream
//! binary: CODEX_BIN, default the cached 0.171 musl build); each test is `#[ignore]`d and
//! the make target runs them with `--ignored`.

#[path = "../src/cloud/noise/channel.rs"]
#[allow(dead_code)]
mod channel;
#[path = "support/fake_cloud.rs"]
mod fake_cloud;
#[path = "../src/cloud/noise/frame.rs"]
#[allow(dead_code)]
mod frame;
#[path = "../src/cloud/noise/framing.rs"]
#[allow(dead_code)]
mod framing;

use std::io::Write;
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tungstenite::{Message, WebSocket};

use fake_cloud::{FakeRegistry, FakeRelay, Seen};

const DEADLINE: Duration = Duration::from_secs(20);
const DEFAULT_CODEX: &str = "/work/cache/codex/0.171.0/package/vendor/x86_64-unknown-linux-musl/bin/codex";

fn codex_bin() -> String {
    std::env::var("CODEX_BIN").unwrap_or_else(|_| DEFAULT_CODEX.to_string())
}

struct Upstream(Child);
impl Drop for Upstream {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_upstream_executor(base: &str, env_id: &str) -> Upstream {
    let home = std::env::temp_dir().join(format!("e2e-cloud-home-{}", std::process::id()));
    std::fs::create_dir_all(&home).expect("home");
    let mut child = Command::new(codex_bin())
        .args(["exec-server", "--remote", base, "--environment-id", env_id, "--registration-bearer-stdin"])
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
    Upstream(child)
}

/// Reads binary frames until one decodes; pings and pongs are skipped.
fn read_frame(ws: &mut WebSocket<TcpStream>) -> frame::Frame {
    let end = Instant::now() + DEADLINE;
    loop {
        assert!(Instant::now() < end, "frame in time");
        match ws.read().expect("relay read") {
            Message::Binary(b) => return frame::decode(&b).expect("valid frame"),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected message {other:?}"),
        }
    }
}

/// The harness side of one relay stream, built from our framing code.
struct Harness {
    stream_id: String,
    channel: channel::Channel,
    send_seq: framing::Sequencer,
    reorder: framing::Reorder,
    reassembler: framing::Reassembler,
}

impl Harness {
    fn send(&mut self, ws: &mut WebSocket<TcpStream>, value: &Value) {
        for record in framing::records(value.to_string().as_bytes()).expect("frame") {
            let ct = self.channel.encrypt(&record).expect("encrypt");
            let seq = self.send_seq.take().expect("seq");
            ws.send(Message::binary(frame::encode_data(&self.stream_id, seq, ct))).expect("send");
        }
    }

    fn recv(&mut self, ws: &mut WebSocket<TcpStream>) -> Value {
        loop {
            match read_frame(ws) {
                frame::Frame::Data { stream_id, seq, payload } if stream_id == self.stream_id => {
                    for ct in self.reorder.push(seq, payload).expect("reorder") {
                        let pt = self.channel.decrypt(&ct).expect("decrypt");
                        if let Some(m) = self.reassembler.push(&pt).expect("reassemble").into_iter().next() {
                            return serde_json::from_slice(&m).expect("json");
                        }
                    }
                }
                other => panic!("unexpected frame {other:?}"),
            }
        }
    }
}

fn registry_for(relay_url: String) -> FakeRegistry {
    FakeRegistry::start(move |seen: &Seen| {
        if seen.path.ends_with("/register") {
            let body = json!({"environment_id": "env-1", "url": relay_url, "security_profile": "noise_hybrid_ik_v1", "executor_registration_id": "reg-1"});
            (200, vec![], body.to_string())
        } else if seen.path.ends_with("/validate") {
            (200, vec![], json!({"valid": true}).to_string())
        } else {
            (404, vec![], "{}".into())
        }
    })
}

#[test]
#[ignore]
fn upstream_executor_completes_handshake_with_our_harness() {
    let relay = FakeRelay::start("/relay/exec");
    let registry = registry_for(relay.url.clone());
    let _up = start_upstream_executor(&registry.base, "env-1");
    let register = registry.next(DEADLINE);
    eprintln!("REGISTER {} {} {:?}", register.method, register.path, register.headers);
    let body: Value = serde_json::from_str(&register.body).expect("json body");
    let executor_key: channel::PublicKey = serde_json::from_value(body["executor_public_key"].clone()).expect("key");
    let (upgrade, mut ws) = relay.next(DEADLINE);
    eprintln!("UPGRADE {} {:?}", upgrade.path, upgrade.headers);
    ws.get_mut().set_read_timeout(Some(DEADLINE)).expect("timeout");

    let me = channel::Identity::generate().expect("identity");
    let stream_id = "stream-1";
    let prologue = channel::prologue("env-1", "reg-1", stream_id);
    let (init, msg1) = channel::Initiator::start(&me, &executor_key, &prologue, b"authz-1").expect("start");
    eprintln!("MSG1 len {}", msg1.len());
    ws.send(Message::binary(frame::encode_handshake(stream_id, msg1))).expect("send hs");
    let validate = registry.next(DEADLINE);
    eprintln!("VALIDATE {} {} {:?} {}", validate.method, validate.path, validate.headers, validate.body);
    let response = match read_frame(&mut ws) {
        frame::Frame::Handshake { stream_id: s, payload } if s == stream_id => payload,
        other => panic!("expected handshake response, got {other:?}"),
    };
    eprintln!("MSG2 len {}", response.len());
    let channel = init.finish(&response).expect("finish");
    let mut h = Harness { stream_id: stream_id.into(), channel, send_seq: Default::default(), reorder: Default::default(), reassembler: Default::default() };
    h.send(&mut ws, &json!({"id": 1, "method": "initialize", "params": {"clientName": "e2e"}}));
    let r = h.recv(&mut ws);
    eprintln!("INIT RESPONSE {r}");
}

fn probe_registry(relay_url: String, valid: Value, status: u16) -> FakeRegistry {
    FakeRegistry::start(move |seen: &Seen| {
        if seen.path.ends_with("/register") {
            let body = json!({"environment_id": "env-1", "url": relay_url, "security_profile": "noise_hybrid_ik_v1", "executor_registration_id": "reg-1"});
            (200, vec![], body.to_string())
        } else {
            (status, vec![], valid.to_string())
        }
    })
}

fn probe_handshake(ws: &mut WebSocket<TcpStream>, key: &channel::PublicKey, stream_id: &str, prologue: Vec<u8>) -> channel::Initiator {
    let me = channel::Identity::generate().expect("identity");
    let (init, msg1) = channel::Initiator::start(&me, key, &prologue, b"authz-1").expect("start");
    ws.send(Message::binary(frame::encode_handshake(stream_id, msg1))).expect("send hs");
    init
}

#[test]
#[ignore]
fn probe_rejections() {
    for (valid, status) in [(json!({"valid": false}), 200u16), (json!({}), 401), (json!({}), 500)] {
        let relay = FakeRelay::start("/r");
        let registry = probe_registry(relay.url.clone(), valid.clone(), status);
        let _up = start_upstream_executor(&registry.base, "env-1");
        let reg = registry.next(DEADLINE);
        let key: channel::PublicKey = serde_json::from_value(serde_json::from_str::<Value>(&reg.body).unwrap()["executor_public_key"].clone()).unwrap();
        let (_, mut ws) = relay.next(DEADLINE);
        ws.get_mut().set_read_timeout(Some(DEADLINE)).unwrap();
        let _i = probe_handshake(&mut ws, &key, "s-1", channel::prologue("env-1", "reg-1", "s-1"));
        let _ = registry.next(DEADLINE);
        eprintln!("VALIDATE {valid} {status} -> {:?}", read_frame(&mut ws));
        // data before handshake on another stream
        ws.send(Message::binary(frame::encode_data("s-2", 0, vec![1; 20]))).unwrap();
        eprintln!("DATA BEFORE HS -> {:?}", read_frame(&mut ws));
        // wrong prologue (u32 lengths)
        let mut p = Vec::new();
        for part in [&b"codex-exec-server-relay-noise/v1"[..], b"env-1", b"reg-1", b"s-3"] {
            p.extend_from_slice(&(part.len() as u32).to_be_bytes());
            p.extend_from_slice(part);
        }
        let _i = probe_handshake(&mut ws, &key, "s-3", p);
        eprintln!("U32 PROLOGUE -> {:?}", read_frame(&mut ws));
        let _ = ws.close(None);
        let again = registry.next(Duration::from_secs(40));
        eprintln!("AFTER CLOSE: {} {}", again.method, again.path);
        if status != 200 { break; }
    }
}

#[test]
#[ignore]
fn probe_stream_faults() {
    let relay = FakeRelay::start("/r");
    let registry = registry_for(relay.url.clone());
    let _up = start_upstream_executor(&registry.base, "env-1");
    let reg = registry.next(DEADLINE);
    let key: channel::PublicKey = serde_json::from_value(serde_json::from_str::<Value>(&reg.body).unwrap()["executor_public_key"].clone()).unwrap();
    let (_, mut ws) = relay.next(DEADLINE);
    ws.get_mut().set_read_timeout(Some(DEADLINE)).unwrap();
    let init = probe_handshake(&mut ws, &key, "s-1", channel::prologue("env-1", "reg-1", "s-1"));
    let _ = registry.next(DEADLINE);
    let resp = match read_frame(&mut ws) { frame::Frame::Handshake { payload, .. } => payload, f => panic!("{f:?}") };
    let mut ch = init.finish(&resp).unwrap();
    // two requests; send second record first (reorder)
    let r1 = framing::records(json!({"id": 1, "method": "initialize", "params": {"clientName": "e2e"}}).to_string().as_bytes()).unwrap();
    let r2 = framing::records(json!({"method": "initialized", "params": {}}).to_string().as_bytes()).unwrap();
    let c1 = ch.encrypt(&r1[0]).unwrap();
    let c2 = ch.encrypt(&r2[0]).unwrap();
    ws.send(Message::binary(frame::encode_data("s-1", 1, c2))).unwrap();
    ws.send(Message::binary(frame::encode_data("s-1", 0, c1.clone()))).unwrap();
    let f = read_frame(&mut ws);
    eprintln!("REORDERED -> {:?}", match &f { frame::Frame::Data { seq, payload, .. } => format!("data seq {seq} len {}", payload.len()), f => format!("{f:?}") });
    // replay seq 0 (duplicate) -> expect silence; then a heartbeat; then tampered seq 2
    ws.send(Message::binary(frame::encode_data("s-1", 0, c1))).unwrap();
    ws.send(Message::binary(frame::encode_heartbeat("s-1"))).unwrap();
    let r3 = framing::records(json!({"id": 2, "method": "environment/status", "params": {}}).to_string().as_bytes()).unwrap();
    let mut c3 = ch.encrypt(&r3[0]).unwrap();
    c3[3] ^= 1;
    ws.send(Message::binary(frame::encode_data("s-1", 2, c3))).unwrap();
    eprintln!("TAMPERED -> {:?}", read_frame(&mut ws));
    // a garbage binary frame, then a text frame, then a new stream works?
    ws.send(Message::binary(vec![0xff, 0xff, 0xff])).unwrap();
    ws.send(Message::text("hello")).unwrap();
    let init = probe_handshake(&mut ws, &key, "s-9", channel::prologue("env-1", "reg-1", "s-9"));
    let _ = registry.next(DEADLINE);
    match read_frame(&mut ws) { frame::Frame::Handshake { payload, stream_id } => { eprintln!("NEW STREAM OK {stream_id}"); init.finish(&payload).unwrap(); }, f => eprintln!("NEW STREAM -> {f:?}") }
    // oversized frame 300 KiB
    let r = ws.send(Message::binary(frame::encode_data("s-9", 0, vec![7; 300 * 1024])));
    eprintln!("OVERSIZED send {r:?}");
    loop {
        match ws.read() {
            Ok(Message::Binary(b)) => eprintln!("AFTER OVERSIZED frame {:?}", frame::decode(&b)),
            Ok(m) => { eprintln!("AFTER OVERSIZED {m:?}"); if let Message::Close(_) = m { break } }
            Err(e) => { eprintln!("AFTER OVERSIZED err {e}"); break }
        }
    }
    let again = registry.next(Duration::from_secs(40));
    eprintln!("AFTER OVERSIZED re-register: {} {}", again.method, again.path);
}

#[test]
#[ignore]
fn probe_reconnect() {
    let relay = FakeRelay::start("/r");
    let registry = registry_for(relay.url.clone());
    let _up = start_upstream_executor(&registry.base, "env-1");
    let t0 = Instant::now();
    let _ = registry.next(DEADLINE);
    let (_, mut ws) = relay.next(DEADLINE);
    ws.close(None).unwrap();
    let _ = ws.flush();
    drop(ws);
    for i in 0..3 {
        let (seen, ws) = relay.next(Duration::from_secs(70));
        eprintln!("RECONNECT {i} at {:?} path {}", t0.elapsed(), seen.path);
        let regs: Vec<_> = registry.seen.try_iter().map(|s| s.path).collect();
        eprintln!("  registrations since: {regs:?}");
        drop(ws);
    }
}
