//! Fault injection (issue 17) against the real binary in cloud mode: a registry that
//! answers 503, resets the connection and hangs past the request timeout before it is
//! healthy again (the daemon recovers unattended and serves), and a rendezvous socket
//! killed with a TCP reset while a process streams output (the session resumes on the next
//! connection and every byte is delivered: notifications before the kill, `process/read`
//! after it, §3.6). The disk-full fault of `fs/writeFile` is in tests/fs_atomic.rs.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tungstenite::{Message, WebSocket};

/// A registration round or a dial, backoff included.
const STEP: Duration = Duration::from_secs(15);
/// The daemon's registry request timeout (10 s, registry.rs) plus the backoff after it.
const HANG_STEP: Duration = Duration::from_secs(40);
const TOKEN: &str = "TOKEN-faults-1234";

struct Daemon {
    child: Child,
    stderr: Arc<Mutex<String>>,
}

impl Daemon {
    fn spawn(base: &str, token_file: &str, extra: &[&str]) -> Daemon {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_exec-server"));
        cmd.args(["--cloud", "--cloud-base-url", base, "--cloud-environment-id", "exec-it"])
            .args(["--token-file", token_file])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .env("RUST_LOG", "info");
        for var in [
            "CODEX_CLOUD_ENVIRONMENTS_BASE_URL",
            "CODEX_CLOUD_ENVIRONMENT_ID",
            "CODEX_EXEC_SERVER_REMOTE_BEARER_TOKEN",
            "SSL_CERT_FILE",
        ] {
            cmd.env_remove(var);
        }
        let mut child = cmd.spawn().unwrap();
        let pipe = child.stderr.take().unwrap();
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = stderr.clone();
        thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                let mut all = sink.lock().unwrap_or_else(PoisonError::into_inner);
                all.push_str(&line);
                all.push('\n');
            }
        });
        Daemon { child, stderr }
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the fake registry does with one request.
#[derive(Clone, Copy, Debug)]
enum Answer {
    /// 503 with a JSON body.
    Unavailable,
    /// Reads the request, then resets the connection (SO_LINGER 0).
    Reset,
    /// Reads the request and answers nothing until the daemon gives up.
    Hang,
    /// 200 with the rendezvous URL.
    Registered,
}

/// Serves the registry: request n gets `script[n]` (the last entry repeats); each request
/// is reported with its index on the returned channel once answered.
fn registry(script: Vec<Answer>, rendezvous_url: String) -> (String, Receiver<(usize, Answer)>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for (n, sock) in listener.incoming().enumerate() {
            let Ok(mut sock) = sock else { return };
            let answer = script[n.min(script.len() - 1)];
            sock.set_read_timeout(Some(HANG_STEP)).unwrap();
            if !read_request(&mut sock) {
                continue;
            }
            match answer {
                Answer::Unavailable => reply(&mut sock, 503, r#"{"error":"unavailable"}"#),
                Answer::Registered => {
                    let body = json!({"id": "reg-1", "url": rendezvous_url}).to_string();
                    reply(&mut sock, 200, &body);
                }
                Answer::Reset => reset(sock),
                // Until the daemon's own timeout closes the connection.
                Answer::Hang => while matches!(sock.read(&mut [0u8; 512]), Ok(n) if n > 0) {},
            }
            if tx.send((n, answer)).is_err() {
                return;
            }
        }
    });
    (base, rx)
}

/// Reads one HTTP request with its body; false if the connection ended first.
fn read_request(sock: &mut TcpStream) -> bool {
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        if let Ok(httparse::Status::Complete(head)) = req.parse(&data) {
            let length = req
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .and_then(|h| std::str::from_utf8(h.value).ok()?.parse::<usize>().ok())
                .unwrap_or(0);
            if data.len() >= head + length {
                return true;
            }
        }
        match sock.read(&mut buf) {
            Ok(0) | Err(_) => return false,
            Ok(n) => data.extend_from_slice(&buf[..n]),
        }
    }
}

fn reply(sock: &mut TcpStream, status: u16, body: &str) {
    let text = format!(
        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = sock.write_all(text.as_bytes());
}

/// Closes with a TCP reset instead of a FIN.
fn reset(sock: TcpStream) {
    let linger = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: setsockopt on a socket we own, with a properly sized linger value.
    unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
    drop(sock);
}

/// The rendezvous: accepted websockets, played by the test as the orchestrator.
fn rendezvous() -> (String, Receiver<WebSocket<TcpStream>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("ws://{}/rendezvous/exec-it?sig=s", listener.local_addr().unwrap());
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for sock in listener.incoming() {
            let Ok(sock) = sock else { return };
            sock.set_read_timeout(Some(STEP)).unwrap();
            if let Ok(ws) = tungstenite::accept(sock) {
                if tx.send(ws).is_err() {
                    return;
                }
            }
        }
    });
    (url, rx)
}

struct Orchestrator {
    ws: WebSocket<TcpStream>,
    next_id: i64,
    notes: Vec<Value>,
}

impl Orchestrator {
    fn next_message(&mut self) -> Value {
        loop {
            match self.ws.read().expect("rendezvous read") {
                Message::Text(text) => return serde_json::from_str(&text).unwrap(),
                Message::Binary(_) => panic!("server frames must be text"),
                _ => {}
            }
        }
    }

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

    fn handshake(&mut self, resume: Option<&str>) -> String {
        let mut params = json!({"clientName": "faults"});
        if let Some(id) = resume {
            params["resumeSessionId"] = json!(id);
        }
        let reply = self.call("initialize", params);
        let session = reply["result"]["sessionId"].as_str().unwrap_or_else(|| panic!("{reply}"));
        let msg = json!({"method": "initialized", "params": {}});
        self.ws.send(Message::text(msg.to_string())).unwrap();
        session.to_owned()
    }
}

fn token_file() -> (tempdir::Dir, String) {
    let dir = tempdir::Dir::new();
    let path = dir.0.join("token");
    std::fs::write(&path, TOKEN).unwrap();
    let path = path.to_str().unwrap().to_owned();
    (dir, path)
}

mod tempdir {
    pub struct Dir(pub std::path::PathBuf);
    impl Dir {
        pub fn new() -> Dir {
            let path =
                std::env::temp_dir().join(format!("exec-server-faults-{}", uuid::Uuid::new_v4()));
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

fn decode(chunk: &Value) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD.decode(chunk.as_str().unwrap()).unwrap()
}

#[test]
fn a_failing_registry_is_survived_and_the_daemon_serves_once_it_is_healthy() {
    let (_dir, token) = token_file();
    let (url, accepted) = rendezvous();
    let script = vec![
        Answer::Unavailable,
        Answer::Reset,
        Answer::Hang,
        Answer::Unavailable,
        Answer::Registered,
    ];
    let (base, answered) = registry(script.clone(), url);
    let mut daemon = Daemon::spawn(&base, &token, &[]);
    for (n, expected) in script.iter().enumerate() {
        let (index, answer) = answered.recv_timeout(HANG_STEP).unwrap_or_else(|_| {
            panic!("registry request {n} ({expected:?}) not made in time:\n{}", daemon.stderr())
        });
        assert_eq!(index, n);
        assert!(daemon.running(), "the daemon exited on {answer:?}:\n{}", daemon.stderr());
    }
    let ws = accepted.recv_timeout(STEP).expect("the daemon dials once registered");
    let mut orch = Orchestrator { ws, next_id: 1, notes: Vec::new() };
    orch.handshake(None);
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
    let (url, accepted) = rendezvous();
    let (base, _answered) = registry(vec![Answer::Registered], url);
    let _daemon = Daemon::spawn(&base, &token, &["--retained-output-bytes", "16777216"]);
    let ws = accepted.recv_timeout(STEP).expect("the daemon dials");
    let mut orch = Orchestrator { ws, next_id: 1, notes: Vec::new() };
    let session = orch.handshake(None);
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
    let sock = orch.ws.get_ref().try_clone().unwrap();
    reset(sock);
    drop(orch);

    // The daemon notices, registers again and dials; the session resumes and the rest is
    // read from retention after the last seq seen.
    let ws = accepted.recv_timeout(STEP).expect("the daemon dials again");
    let mut orch = Orchestrator { ws, next_id: 1, notes: Vec::new() };
    assert_eq!(orch.handshake(Some(&session)), session);
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
