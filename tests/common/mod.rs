//! Test helpers: start the real binary, talk websocket or stdio to it, and wait for exact
//! messages with a deadline on every wait; the process-method helpers (start, decode,
//! `/proc` views of the daemon's children) and the temporary directory the test files share.
//! Each test crate uses some of it, hence the allowance for the rest.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{json, Value};
use tungstenite::{Message, WebSocket};

/// How long any single wait in a test may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(15);

pub const BIN: &str = env!("CARGO_BIN_EXE_exec-server");

/// A running daemon, killed when dropped.
pub struct Daemon {
    pub child: Child,
    pub url: String,
    pub addr: String,
    stderr: Arc<Mutex<String>>,
}

impl Daemon {
    /// Starts `exec-server --listen ws://127.0.0.1:0 <args>` and reads its URL line.
    pub fn start(args: &[&str]) -> Daemon {
        let mut all = vec!["--listen", "ws://127.0.0.1:0"];
        all.extend_from_slice(args);
        Self::start_raw(&all, &[])
    }

    /// Starts the binary with exactly `args` and extra environment.
    pub fn start_raw(args: &[&str], env: &[(&str, &str)]) -> Daemon {
        Self::start_with(BIN, args, env)
    }

    /// Starts `program` (the binary, or a wrapper that runs it) with exactly `args`.
    pub fn start_with(program: &str, args: &[&str], env: &[(&str, &str)]) -> Daemon {
        let mut command = Command::new(program);
        command.args(args);
        for (k, v) in env {
            command.env(k, v);
        }
        Self::spawn(command).expect("spawn exec-server")
    }

    /// `exec-server --listen ws://127.0.0.1:0` running as `nobody` (uid and gid 65534, no
    /// supplementary groups), for permission-denied paths: the tests run as root, which no
    /// mode bits stop. `None`, with the reason printed, where privileges cannot be dropped.
    pub fn start_as_nobody() -> Option<Daemon> {
        // SAFETY: getuid has no preconditions.
        if unsafe { libc::getuid() } != 0 {
            println!("skipped: starting the daemon as nobody needs root");
            return None;
        }
        let mut command = Command::new(BIN);
        command.args(["--listen", "ws://127.0.0.1:0"]).uid(NOBODY).gid(NOBODY);
        match Self::spawn(command) {
            Ok(daemon) => Some(daemon),
            Err(e) => {
                println!("skipped: cannot start the daemon as nobody: {e}");
                None
            }
        }
    }

    /// Spawns `command` with piped output and reads its URL line within the deadline.
    fn spawn(mut command: Command) -> std::io::Result<Daemon> {
        command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        command.env_remove("EXEC_SERVER_CONNECTION_TOKEN");
        let mut child = command.spawn()?;
        let stderr = collect(child.stderr.take().expect("stderr piped"));
        let stdout = child.stdout.take().expect("stdout piped");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            let _ = reader.read_line(&mut line);
            let _ = tx.send(line);
            // Anything more on stdout is a contract violation; keep it for assertions.
            let mut rest = String::new();
            let _ = reader.read_to_string(&mut rest);
            assert!(rest.is_empty(), "stdout carried more than the URL line: {rest:?}");
        });
        let line = rx.recv_timeout(DEADLINE).expect("URL line in time");
        let url = line.trim_end().to_string();
        assert!(line.ends_with('\n'), "URL line must end with a newline: {line:?}");
        let addr = url.strip_prefix("ws://").expect("ws:// URL").to_string();
        Ok(Daemon { child, url, addr, stderr })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn connect(&self) -> Client {
        Client::connect(&self.url)
    }

    /// Connects and completes initialize + initialized.
    pub fn session(&self) -> (Client, String) {
        let mut client = self.connect();
        let session = client.initialize();
        (client, session)
    }

    /// A new connection that resumes `session` once its old connection has been noticed
    /// gone (initialize is retried until it is no error), then sends initialized; the client
    /// and the initialize response.
    pub fn resume(&self, session: &str) -> (Client, Value) {
        let mut client = self.connect();
        let mut response = Value::Null;
        eventually("the session to be detached", || {
            response =
                client.call("initialize", json!({"clientName": "t", "resumeSessionId": session}));
            response.get("error").is_none()
        });
        client.send(&json!({"method": "initialized", "params": {}}));
        (client, response)
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().expect("stderr lock").clone()
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        signal(self.child.id(), libc::SIGTERM);
        wait_exit(&mut self.child)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The uid and gid of `nobody`.
pub const NOBODY: u32 = 65534;

pub fn signal(pid: u32, sig: i32) {
    // SAFETY: sending a signal to a child we started.
    unsafe { libc::kill(pid as i32, sig) };
}

/// Waits for a child to exit within the deadline (a pidfd becomes readable on exit).
pub fn wait_exit(child: &mut Child) -> std::process::ExitStatus {
    // SAFETY: pidfd_open on our own child's pid.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, child.id() as libc::pid_t, 0) } as i32;
    if fd >= 0 {
        let mut pfd = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd; the fd is closed right after.
        let ready = unsafe { libc::poll(&mut pfd, 1, DEADLINE.as_millis() as i32) };
        unsafe { libc::close(fd) };
        assert!(ready > 0, "process did not exit in time");
    }
    child.wait().expect("wait")
}

fn collect(mut pipe: impl Read + Send + 'static) -> Arc<Mutex<String>> {
    let out = Arc::new(Mutex::new(String::new()));
    let sink = Arc::clone(&out);
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = pipe.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock().expect("lock").push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    out
}

/// A websocket client with a buffer of messages not yet looked at.
pub struct Client {
    pub ws: WebSocket<TcpStream>,
    pending: VecDeque<Value>,
    next_id: i64,
}

impl Client {
    pub fn connect(url: &str) -> Client {
        let addr = url.strip_prefix("ws://").expect("ws url");
        let addr = addr.split('/').next().expect("host");
        let stream = TcpStream::connect(addr).expect("tcp connect");
        stream.set_nodelay(true).expect("nodelay");
        stream.set_read_timeout(Some(DEADLINE)).expect("timeout");
        let (ws, _) = tungstenite::client(url, stream).expect("websocket upgrade");
        Client { ws, pending: VecDeque::new(), next_id: 1 }
    }

    pub fn send_text(&mut self, text: &str) {
        self.ws.send(Message::text(text)).expect("send");
    }

    pub fn send(&mut self, value: &Value) {
        self.send_text(&value.to_string());
    }

    /// Receives the next message (text frames only), within the deadline.
    pub fn recv_raw(&mut self) -> Message {
        loop {
            match self.ws.read() {
                Ok(Message::Ping(_)) | Ok(Message::Pong(_)) => continue,
                Ok(message) => return message,
                // A signal to the test process (a fork bomb's children dying) is no failure.
                Err(tungstenite::Error::Io(e)) if e.kind() == std::io::ErrorKind::Interrupted => {
                    continue
                }
                Err(e) => panic!("read failed: {e}"),
            }
        }
    }

    /// The next JSON message, buffered ones first.
    pub fn recv(&mut self) -> Value {
        if let Some(v) = self.pending.pop_front() {
            return v;
        }
        self.recv_wire()
    }

    fn recv_wire(&mut self) -> Value {
        match self.recv_raw() {
            Message::Text(text) => {
                let value: Value = serde_json::from_str(&text).expect("server sent JSON");
                assert!(value.get("jsonrpc").is_none(), "server sent jsonrpc: {value}");
                if let Some(error) = value.get("error") {
                    assert!(error.get("data").is_none(), "server sent error.data: {value}");
                }
                value
            }
            other => panic!("expected a text frame, got {other:?}"),
        }
    }

    /// Waits for the response with `id`, keeping everything else for later.
    pub fn response(&mut self, id: &Value) -> Value {
        if let Some(i) =
            self.pending.iter().position(|m| m.get("id") == Some(id) && m.get("method").is_none())
        {
            return self.pending.remove(i).expect("index valid");
        }
        loop {
            let message = self.recv_wire();
            if message.get("id") == Some(id) && message.get("method").is_none() {
                return message;
            }
            self.pending.push_back(message);
        }
    }

    /// Waits for the next notification matching `method`, keeping everything else.
    pub fn notification(&mut self, method: &str) -> Value {
        if let Some(i) = self.pending.iter().position(|m| m["method"] == method) {
            return self.pending.remove(i).expect("index valid");
        }
        loop {
            let message = self.recv_wire();
            if message["method"] == method {
                return message;
            }
            self.pending.push_back(message);
        }
    }

    /// Sends a request with a fresh integer id and returns that id.
    pub fn request(&mut self, method: &str, params: Value) -> Value {
        let id = json!(self.next_id);
        self.next_id += 1;
        self.send(&json!({"id": id, "method": method, "params": params}));
        id
    }

    /// Sends a request and waits for its response.
    pub fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.request(method, params);
        self.response(&id)
    }

    /// initialize + initialized; returns the session id.
    pub fn initialize(&mut self) -> String {
        let response = self.call("initialize", json!({"clientName": "test"}));
        let session = response["result"]["sessionId"].as_str().expect("sessionId").to_string();
        self.send(&json!({"method": "initialized", "params": {}}));
        session
    }

    /// Waits for the server to close the connection; returns the close code if one came.
    pub fn closed(&mut self) -> Option<u16> {
        loop {
            match self.ws.read() {
                Ok(Message::Close(frame)) => return frame.map(|f| u16::from(f.code)),
                Ok(_) => continue,
                Err(tungstenite::Error::ConnectionClosed)
                | Err(tungstenite::Error::AlreadyClosed) => return None,
                Err(tungstenite::Error::Io(e))
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut =>
                {
                    panic!("connection not closed in time")
                }
                Err(_) => return None,
            }
        }
    }
}

/// The daemon over stdio.
pub struct StdioDaemon {
    pub child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
}

impl StdioDaemon {
    pub fn start(args: &[&str]) -> StdioDaemon {
        let mut child = Command::new(BIN)
            .args(["--listen", "stdio"])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stdin = child.stdin.take();
        StdioDaemon { child, stdin, lines }
    }

    pub fn send_line(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        stdin.write_all(line.as_bytes()).expect("write");
        stdin.write_all(b"\n").expect("write");
        stdin.flush().expect("flush");
    }

    pub fn recv(&mut self) -> Value {
        let line = self.lines.recv_timeout(DEADLINE).expect("a line in time");
        serde_json::from_str(&line).expect("JSON line")
    }

    pub fn close_stdin(&mut self) {
        self.stdin.take();
    }
}

impl Drop for StdioDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends a raw HTTP request and returns the status line and the whole response.
pub fn http(addr: &str, request: &str) -> (String, String) {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(DEADLINE)).expect("timeout");
    stream.write_all(request.as_bytes()).expect("write");
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    let status = response.lines().next().unwrap_or("").to_string();
    (status, response)
}

/// The exit report's extension members (issue 18, tests/limits.rs), in `process/exited`
/// params and `process/read` results.
pub const REPORT_KEYS: [&str; 8] = [
    "reason",
    "wallTimeMs",
    "userCpuMs",
    "systemCpuMs",
    "maxRssKb",
    "stdoutBytes",
    "stderrBytes",
    "ptyBytes",
];

/// `message` (a notification, or a read result) without the exit report's extension members,
/// for exact comparisons of the v1 members; asserts that a report with a reason was there.
pub fn v1_exit(mut message: Value) -> Value {
    let object = match message.get_mut("params") {
        Some(params) => params,
        None => &mut message,
    };
    let object = object.as_object_mut().expect("an object");
    assert!(object.get("reason").is_some_and(Value::is_string), "no exit reason: {object:?}");
    for key in REPORT_KEYS {
        object.remove(key);
    }
    message
}

// ---------------------------------------------------------------------------------------
// Processes: the params, the start call, the output, and `/proc` views of what runs.

/// The `PATH` the tests give their processes.
pub const PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// `process/start` params for `argv`, without a TTY.
pub fn start_params(id: &str, argv: &[&str]) -> Value {
    json!({"processId": id, "argv": argv, "cwd": "/", "env": {"PATH": PATH}, "tty": false})
}

/// `process/start` params for `sh -c script`.
pub fn sh(id: &str, script: &str) -> Value {
    start_params(id, &["sh", "-c", script])
}

/// `base` with the members of `extra` set over it.
pub fn merge(mut base: Value, extra: Value) -> Value {
    for (k, v) in extra.as_object().expect("extra is an object") {
        base[k] = v.clone();
    }
    base
}

/// Starts a process and asserts the exact success response.
pub fn start(client: &mut Client, params: Value) {
    let id = params["processId"].clone();
    let response = client.call("process/start", params);
    // v2 (issue 12): `sandboxType` is "none" for an unsandboxed process.
    assert_eq!(response["result"], json!({"processId": id, "sandboxType": "none"}), "{response}");
}

/// Every notification of `id` up to and including its closed event, in arrival order;
/// responses and the notifications of other processes are dropped.
pub fn until_closed(client: &mut Client, id: &str) -> Vec<Value> {
    let mut events = Vec::new();
    loop {
        let message = client.recv();
        if message.get("method").is_none() || message["params"]["processId"] != id {
            continue;
        }
        let closed = message["method"] == "process/closed";
        events.push(message);
        if closed {
            return events;
        }
    }
}

/// The output bytes of a list of notifications, concatenated.
pub fn output(messages: &[Value]) -> Vec<u8> {
    messages
        .iter()
        .filter(|m| m["method"] == "process/output")
        .flat_map(|m| decode(&m["params"]["chunk"]))
        .collect()
}

/// `process/read` with `params`; its result.
pub fn read(client: &mut Client, params: Value) -> Value {
    let response = client.call("process/read", params);
    response.get("result").cloned().unwrap_or_else(|| panic!("read failed: {response}"))
}

/// The error of a response as code and message.
pub fn error(response: &Value) -> (i64, String) {
    let error = &response["error"];
    assert!(error.is_object(), "expected an error: {response}");
    (
        error["code"].as_i64().expect("error code"),
        error["message"].as_str().expect("message").into(),
    )
}

pub fn b64(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}

/// The bytes of a base64 `chunk` the server sent.
pub fn decode(chunk: &Value) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(chunk.as_str().expect("chunk is a string"))
        .expect("chunk is base64")
}

/// `/proc/<pid>/stat` fields after the command: state, ppid, pgrp, session, …
pub fn stat(pid: u32) -> Option<Vec<String>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = text.rsplit_once(')')?;
    Some(rest.split_whitespace().map(String::from).collect())
}

pub fn all_pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .expect("/proc")
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect()
}

/// Children of `parent`, with their state letter.
pub fn children(parent: u32) -> Vec<(u32, String)> {
    all_pids()
        .into_iter()
        .filter_map(|pid| {
            let f = stat(pid)?;
            (f[1] == parent.to_string()).then(|| (pid, f[0].clone()))
        })
        .collect()
}

/// The number of open descriptors of `pid`.
pub fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).expect("fd dir").count()
}

/// A memory figure of `pid` from `/proc/<pid>/status`, in KiB: `"VmRSS:"` the resident
/// size now, `"VmHWM:"` its peak.
pub fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let line = status.lines().find_map(|l| l.strip_prefix(field)).expect("field in status");
    line.trim().trim_end_matches(" kB").trim().parse().expect("a number of kB")
}

/// Polls `check` until it holds, within the deadline. Only for facts no event announces (a
/// process disappearing from /proc, a thread ending).
pub fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------------------
// Files.

/// A fresh directory under the system temp dir, canonical and mode 0755 (so `nobody` may
/// read but not write it), removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new() -> TempDir {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "exec-server-it-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir(&path).expect("create temp dir");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        TempDir(std::fs::canonicalize(path).expect("canonical temp dir"))
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// The wire form of `name` inside this directory.
    pub fn s(&self, name: &str) -> String {
        self.join(name).to_str().expect("temp paths are UTF-8").to_owned()
    }

    /// Writes `contents` to `name` (creating its parents) and returns its path.
    pub fn file(&self, name: &str, contents: &str) -> String {
        let path = self.join(name);
        std::fs::create_dir_all(path.parent().expect("a parent")).expect("create parents");
        std::fs::write(&path, contents).expect("write temp file");
        self.s(name)
    }

    /// The names in the directory, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(&self.0)
            .expect("read temp dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
