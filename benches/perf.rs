//! The performance bench of issues 6 and 19 (`make bench`, `cargo bench --bench perf`):
//! starts the release server binary and, in the same run, a minimal tungstenite echo server
//! (this program re-executed as a child) as the transport floor, drives both over loopback
//! websockets as a PROTOCOL.md client, and prints one table per server with each figure
//! next to its floor, the ratio and, where the issues set one, the target with PASS/MISS;
//! the same rows go to a JSON report (`BENCH_JSON=path`, default
//! target/bench/perf-<unix time>.json and target/bench/latest.json).
//! `BENCH_BIN=path` measures another build of ours; `BASE_BIN=path` (`BASE_NAME`) adds a
//! second build of ours run scenario by scenario next to the first, with a current/base
//! table (scripts/bench-compare.sh); `REFERENCE_BIN=path` adds a table for another server
//! speaking the protocol (`REFERENCE_ARGS` overrides the arguments placed before
//! `--listen`; a binary named `codex` gets `exec-server`); `BENCH_ONLY=stream,rtt` runs
//! only the named scenarios (see `SCENARIOS`); `BENCH_ROUNDS=n` repeats each scenario,
//! alternating the order of the servers, and reports medians. It sees a server only
//! through its command line (and `--help`, for the flags a scale row needs), stdout line,
//! websocket and `/proc/<pid>`; of the crate it borrows only the allocator and the bulk
//! base64 decoder (src/b64.rs), so that the client's own handling of a large message costs
//! what the server's does. Every loop is
//! bounded in count and time; every read has a deadline.

use std::ffi::OsString;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};
use tungstenite::protocol::frame::coding::{Data, OpCode};
use tungstenite::protocol::frame::Frame;
use tungstenite::protocol::WebSocketConfig;
use tungstenite::{Message, WebSocket};

/// Set in the environment of the re-executed bench binary to make it the echo floor.
const ECHO_ENV: &str = "EXEC_SERVER_PERF_ECHO";
/// Accept queue of the echo floor: room for every client of the connections scenario.
const LISTEN_BACKLOG: i32 = 1024;

const URL_LINE_TIMEOUT: Duration = Duration::from_secs(10);
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);
/// Read and write deadline of every client socket: a server that stops answering fails
/// the scenario instead of hanging the bench.
const IO_TIMEOUT: Duration = Duration::from_secs(30);
/// Upper bound on any one scenario's main loop.
const SCENARIO_DEADLINE: Duration = Duration::from_secs(120);

const STARTUP_RUNS: usize = 10;
const RTT_WARMUP: usize = 500;
const RTT_SAMPLES: usize = 5000;
const ONESHOT_WARMUP: usize = 10;
const ONESHOT_SAMPLES: usize = 300;
const STREAM_BYTES: u64 = 256 << 20;
/// The spool read-back server keeps the whole 256 MiB burst and its record headers (the
/// default spool is 64 MiB per process).
const SPOOL_BENCH_ARGS: [&str; 2] = ["--spool-bytes-per-process", "300000000"];
const FILE_BYTES: usize = 64 << 20;
/// Tried when a server refuses `FILE_BYTES` (the reference's 64 MiB message limit is below
/// the 85 MiB of base64 a 64 MiB file takes), so its table still has a file figure.
const FALLBACK_FILE_BYTES: usize = 32 << 20;
const FILE_RUNS: usize = 5;
const CONNECTIONS: usize = 200;
/// The 200 client threads only hold one socket each.
const CONNECTION_THREAD_STACK_BYTES: usize = 256 << 10;
const SLOW_READ_BYTES_PER_TICK: u64 = 1 << 20;
const SLOW_READ_TICK: Duration = Duration::from_millis(100);
const SLOW_READ_DURATION: Duration = Duration::from_secs(10);
/// A server whose RSS passes this during the slow reader is not bounding its buffers;
/// the scenario stops there rather than exhaust the machine.
const RSS_ABORT_KIB: u64 = 2 << 20;
const RSS_SAMPLE_INTERVAL: Duration = Duration::from_millis(5);

type BenchResult<T> = Result<T, String>;

// Without the daemon's trimmer thread: the client keeps no freed large block warm.
#[path = "../src/alloc.rs"]
#[allow(dead_code)]
mod alloc;

#[global_allocator]
static ALLOCATOR: alloc::Allocator = alloc::Allocator;

// The crate's bulk base64 (AVX2 where present), held to the base64 crate's results and
// errors by its own tests: the client decodes every chunk as fast as a careful client
// would, so that the stream rows measure the server rather than this reader.
#[path = "../src/b64.rs"]
#[allow(dead_code)]
mod b64;
#[path = "perf/scan.rs"]
mod scan;

fn main() {
    if std::env::var_os(ECHO_ENV).is_some() {
        echo_server();
        return;
    }
    // `cargo bench` passes --bench; `cargo test --benches`/`--all-targets` runs this binary
    // without it, and the benchmark must never run as part of the tests.
    if !std::env::args().any(|a| a == "--bench") {
        println!("perf: skipped (run it with `cargo bench --bench perf` or `make bench`)");
        return;
    }
    // BENCH_BIN measures another build of ours, e.g. the static musl binary of `make static`.
    let bin = std::env::var_os("BENCH_BIN")
        .filter(|b| !b.is_empty())
        .map_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_exec-server")), PathBuf::from);
    let ours = Target { name: "exec-server".into(), kind: Kind::Ours, bin, args: Vec::new() };
    let mut targets = vec![ours];
    // BASE_BIN: another build of ours (scripts/bench-compare.sh passes the base revision's),
    // run scenario by scenario next to the first and compared with it row by row.
    if let Some(bin) = std::env::var_os("BASE_BIN").filter(|b| !b.is_empty()) {
        let name = match std::env::var("BASE_NAME") {
            Ok(n) if !n.is_empty() => format!("base {n}"),
            _ => "base".into(),
        };
        targets.push(Target { name, kind: Kind::Ours, bin: PathBuf::from(bin), args: Vec::new() });
    }
    let compare = targets.len() == 2;
    if let Some(bin) = std::env::var_os("REFERENCE_BIN").filter(|b| !b.is_empty()) {
        targets.push(Target::reference(PathBuf::from(bin)));
    }
    let echo = Target {
        name: "echo floor".into(),
        kind: Kind::Echo,
        bin: std::env::current_exe().expect("the running bench has a path"),
        args: Vec::new(),
    };
    if let Ok(only) = std::env::var("BENCH_ONLY") {
        let unknown: Vec<&str> = only
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty() && !SCENARIOS.contains(s))
            .collect();
        if !unknown.is_empty() {
            eprintln!("perf: unknown BENCH_ONLY scenario(s) {unknown:?}; known: {SCENARIOS:?}");
            std::process::exit(2);
        }
    }
    let rounds = match std::env::var("BENCH_ROUNDS") {
        Err(_) => 1,
        Ok(n) => match n.trim().parse::<usize>() {
            Ok(n) if (1..=MAX_ROUNDS).contains(&n) => n,
            _ => {
                eprintln!("perf: BENCH_ROUNDS must be 1..={MAX_ROUNDS}, not {n:?}");
                std::process::exit(2);
            }
        },
    };
    let machine = Machine::read();
    println!("{}", machine.line());
    let tables = run_all(&targets, &echo, rounds);
    for (target, table) in targets.iter().zip(&tables) {
        table.print(target);
    }
    if compare {
        print_compare(&targets[0], &tables[0], &targets[1], &tables[1]);
    }
    let report = json_report(&machine, rounds, &targets, &tables, compare);
    match write_json(&report) {
        Ok(paths) => println!("\nJSON: {paths}"),
        Err(e) => {
            eprintln!("perf: writing the JSON report: {e}");
            std::process::exit(1);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Launching servers
// ---------------------------------------------------------------------------------------

/// A server binary and the arguments that precede `--listen ws://127.0.0.1:0`.
struct Target {
    name: String,
    kind: Kind,
    bin: PathBuf,
    args: Vec<OsString>,
}

impl Target {
    /// The `cwd` for `process/start`: a path for ours (as round 1's clients sent), a `file:`
    /// URI for the reference (codex 0.171 refuses a path; 0.130 refuses the URI with
    /// ENOENT and needs `REFERENCE_CWD=/`).
    fn cwd(&self) -> &'static str {
        static REFERENCE_CWD: std::sync::OnceLock<String> = std::sync::OnceLock::new();
        match self.kind {
            Kind::Reference => REFERENCE_CWD.get_or_init(|| {
                std::env::var("REFERENCE_CWD")
                    .ok()
                    .filter(|c| !c.is_empty())
                    .unwrap_or_else(|| "file:///".into())
            }),
            _ => "/",
        }
    }

    fn reference(bin: PathBuf) -> Target {
        let args = match std::env::var("REFERENCE_ARGS") {
            Ok(args) => args.split_whitespace().map(OsString::from).collect(),
            // The reference ships as a multi-call `codex` binary.
            Err(_) if bin.file_name().is_some_and(|n| n == "codex") => vec!["exec-server".into()],
            Err(_) => Vec::new(),
        };
        Target { name: "reference".into(), kind: Kind::Reference, bin, args }
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Ours,
    Reference,
    /// This program in echo mode: no handshake, answers each message with itself.
    Echo,
}

/// A running server child with its own temporary HOME; SIGTERMed and reaped on drop.
struct Server {
    child: Option<Child>,
    pid: i32,
    addr: SocketAddr,
    /// Held open so a server that writes to stdout never sees EPIPE.
    _stdout: ChildStdout,
    home: TempDir,
    /// The `cwd` of every `process/start` (`Target::cwd`).
    cwd: &'static str,
}

fn launch(target: &Target, cpus: Option<&'static [usize]>) -> BenchResult<(Server, Duration)> {
    let home = TempDir::new("home")?;
    let stderr = std::fs::File::create(home.path.join("stderr.log")).map_err(|e| e.to_string())?;
    let mut cmd = Command::new(&target.bin);
    cmd.args(&target.args)
        .args(["--listen", "ws://127.0.0.1:0"])
        .env("HOME", &home.path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr);
    if target.kind == Kind::Echo {
        cmd.env(ECHO_ENV, "1");
    }
    if let Some(cpus) = cpus {
        // Pinned before exec so every thread the server ever starts inherits the mask.
        // SAFETY: sched_setaffinity is a plain syscall, async-signal-safe after fork.
        unsafe {
            cmd.pre_exec(move || set_affinity(0, cpus));
        }
    }
    let start = Instant::now();
    let mut child = cmd.spawn().map_err(|e| format!("spawn {}: {e}", target.bin.display()))?;
    let mut stdout = child.stdout.take().expect("stdout was configured as a pipe");
    let line = read_line(&mut stdout, start + URL_LINE_TIMEOUT);
    let elapsed = start.elapsed();
    let pid = child.id() as i32;
    let mut server = Server {
        child: Some(child),
        pid,
        addr: ([0, 0, 0, 0], 0).into(),
        _stdout: stdout,
        home,
        cwd: target.cwd(),
    };
    let line = line.map_err(|e| format!("{e}{}", server.stderr_tail()))?;
    let addr = line
        .strip_prefix("ws://")
        .and_then(|a| a.parse::<SocketAddr>().ok())
        .ok_or_else(|| format!("unexpected URL line {line:?}"))?;
    server.addr = addr;
    Ok((server, elapsed))
}

impl Server {
    fn rss_kib(&self) -> BenchResult<u64> {
        proc_status_kib(self.pid, "VmRSS:")
    }

    /// Resets VmHWM so the next reading is the peak of what follows.
    fn reset_peak(&self) -> bool {
        std::fs::write(format!("/proc/{}/clear_refs", self.pid), "5").is_ok()
    }

    fn peak_kib(&self) -> BenchResult<u64> {
        proc_status_kib(self.pid, "VmHWM:")
    }

    fn stderr_tail(&self) -> String {
        let log = std::fs::read_to_string(self.home.path.join("stderr.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(5).collect();
        if tail.is_empty() {
            String::new()
        } else {
            format!(" (stderr: {})", tail.into_iter().rev().collect::<Vec<_>>().join(" | "))
        }
    }

    /// SIGTERM, then reap within the deadline (SIGKILL after it); returns the exit status.
    fn stop(&mut self) -> BenchResult<std::process::ExitStatus> {
        let mut child = self.child.take().ok_or("already stopped")?;
        // SAFETY: signalling our own child, which is not yet reaped, so the pid is valid.
        unsafe { libc::kill(self.pid, libc::SIGTERM) };
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let _ = tx.send(child.wait());
        });
        match rx.recv_timeout(SHUTDOWN_TIMEOUT) {
            Ok(status) => status.map_err(|e| e.to_string()),
            Err(_) => {
                // SAFETY: as above; the waiting thread reaps it after the kill.
                unsafe { libc::kill(self.pid, libc::SIGKILL) };
                let _ = rx.recv_timeout(SHUTDOWN_TIMEOUT);
                Err(format!("no exit within {SHUTDOWN_TIMEOUT:?} of SIGTERM"))
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.child.is_some() {
            let _ = self.stop();
        }
    }
}

/// Reads one `\n`-terminated line from a pipe, waiting with poll(2) against the deadline.
fn read_line(pipe: &mut ChildStdout, deadline: Instant) -> BenchResult<String> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err("no URL line before the deadline".into());
        }
        let mut pfd = libc::pollfd { fd: pipe.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        let ms = left.as_millis().clamp(1, i32::MAX as u128) as i32;
        // SAFETY: one valid pollfd for the duration of the call.
        let ready = unsafe { libc::poll(&mut pfd, 1, ms) };
        if ready < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err.to_string());
        }
        if ready == 0 {
            continue;
        }
        // One byte at a time: nothing after the line may be consumed, and it is ~30 bytes.
        match pipe.read(&mut byte) {
            Ok(0) => return Err("stdout closed before the URL line".into()),
            Ok(_) if byte[0] == b'\n' => return String::from_utf8(line).map_err(|e| e.to_string()),
            Ok(_) => line.push(byte[0]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.to_string()),
        }
    }
}

fn set_affinity(tid: libc::pid_t, cpus: &[usize]) -> io::Result<()> {
    // SAFETY: cpu_set_t is a plain bit array for which all-zero is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &cpu in cpus {
        // SAFETY: cpu is below CPU_SETSIZE on any machine this bench runs on.
        unsafe { libc::CPU_SET(cpu, &mut set) };
    }
    // SAFETY: set is a valid cpu_set_t of the size passed.
    let rc = unsafe { libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn proc_status_kib(pid: i32, field: &str) -> BenchResult<u64> {
    let status =
        std::fs::read_to_string(format!("/proc/{pid}/status")).map_err(|e| e.to_string())?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| format!("no {field} in /proc/{pid}/status"))
}

struct TempDir {
    path: PathBuf,
}

impl TempDir {
    fn new(tag: &str) -> BenchResult<TempDir> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("exec-server-perf-{}-{tag}-{n}", std::process::id()));
        std::fs::create_dir_all(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(TempDir { path })
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

// ---------------------------------------------------------------------------------------
// The client
// ---------------------------------------------------------------------------------------

struct Client {
    ws: WebSocket<TcpStream>,
    next_id: i64,
    cwd: &'static str,
    /// A `sandbox` context sent with every `process/start` (the sandboxed one-shot row).
    sandbox: Option<Value>,
}

/// The parts of any incoming message the scenarios look at, borrowed from the frame (base64
/// and ids never need unescaping).
#[derive(Deserialize)]
struct Incoming<'a> {
    #[serde(default)]
    id: Option<i64>,
    #[serde(default, borrow)]
    method: Option<&'a str>,
    #[serde(default, borrow)]
    params: Option<EventParams<'a>>,
    #[serde(default, borrow)]
    result: Option<&'a RawValue>,
    #[serde(default, borrow)]
    error: Option<&'a RawValue>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct EventParams<'a> {
    #[serde(default, borrow)]
    process_id: Option<&'a str>,
    #[serde(default, borrow)]
    chunk: Option<&'a str>,
    #[serde(default)]
    exit_code: Option<i64>,
}

/// Messages above this go out as fragments of `FRAGMENT_BYTES`: servers built on
/// tungstenite's defaults refuse single frames over 16 MiB, but not fragmented messages.
const FRAGMENT_THRESHOLD_BYTES: usize = 16 << 20;
const FRAGMENT_BYTES: usize = 4 << 20;

impl Client {
    fn connect(addr: SocketAddr) -> BenchResult<Client> {
        let stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT)
            .map_err(|e| format!("connect {addr}: {e}"))?;
        // Latency figures must not include Nagle's delay on our side.
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        stream.set_read_timeout(Some(IO_TIMEOUT)).map_err(|e| e.to_string())?;
        stream.set_write_timeout(Some(IO_TIMEOUT)).map_err(|e| e.to_string())?;
        let config = WebSocketConfig::default().max_message_size(None).max_frame_size(None);
        let (ws, _) =
            tungstenite::client::client_with_config(format!("ws://{addr}/"), stream, Some(config))
                .map_err(|e| format!("websocket handshake: {e}"))?;
        Ok(Client { ws, next_id: 1, cwd: "/", sandbox: None })
    }

    /// A client for `server`'s processes (its `cwd`).
    fn connect_to(server: &Server) -> BenchResult<Client> {
        Ok(Client { cwd: server.cwd, ..Client::connect(server.addr)? })
    }

    fn send(&mut self, text: String) -> BenchResult<()> {
        if text.len() <= FRAGMENT_THRESHOLD_BYTES {
            return self.ws.send(Message::text(text)).map_err(|e| format!("send: {e}"));
        }
        let bytes = tungstenite::Bytes::from(text);
        let mut offset = 0;
        while offset < bytes.len() {
            let end = (offset + FRAGMENT_BYTES).min(bytes.len());
            let opcode = if offset == 0 { Data::Text } else { Data::Continue };
            let frame =
                Frame::message(bytes.slice(offset..end), OpCode::Data(opcode), end == bytes.len());
            self.ws.write(Message::Frame(frame)).map_err(|e| format!("send: {e}"))?;
            offset = end;
        }
        self.ws.flush().map_err(|e| format!("send: {e}"))
    }

    /// Reads the next data message and hands it, parsed, to `f`.
    fn recv<R>(&mut self, f: impl FnOnce(Incoming<'_>) -> BenchResult<R>) -> BenchResult<R> {
        loop {
            let payload = match self.ws.read().map_err(|e| format!("read: {e}"))? {
                Message::Text(t) => tungstenite::Bytes::from(t),
                Message::Binary(b) => b,
                Message::Close(c) => return Err(format!("server closed the connection: {c:?}")),
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
            };
            let msg = serde_json::from_slice(&payload)
                .map_err(|e| format!("bad message from server: {e}"))?;
            return f(msg);
        }
    }

    /// Reads the next data message and hands its text to `f`, unparsed.
    fn recv_text<R>(&mut self, f: impl FnOnce(&str) -> BenchResult<R>) -> BenchResult<R> {
        loop {
            let text = match self.ws.read().map_err(|e| format!("read: {e}"))? {
                Message::Text(t) => t,
                Message::Binary(b) => tungstenite::Utf8Bytes::try_from(b)
                    .map_err(|e| format!("binary message is not UTF-8: {e}"))?,
                Message::Close(c) => return Err(format!("server closed the connection: {c:?}")),
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
            };
            return f(text.as_str());
        }
    }

    /// Reads until the response to `id`, skipping notifications; returns its result.
    fn await_response(&mut self, id: i64, method: &str) -> BenchResult<Value> {
        let deadline = Instant::now() + SCENARIO_DEADLINE;
        while Instant::now() < deadline {
            let result = self.recv(|msg| {
                Ok((msg.method.is_none() && msg.id == Some(id)).then(|| response(msg, method)))
            })?;
            if let Some(result) = result {
                return result;
            }
        }
        Err(format!("{method}: no response before the deadline"))
    }

    fn next_id(&mut self) -> i64 {
        self.next_id += 1;
        self.next_id
    }

    /// Sends a request and waits for its response, skipping notifications.
    fn call(&mut self, method: &str, params: Value) -> BenchResult<Value> {
        let id = self.next_id();
        self.send(json!({"id": id, "method": method, "params": params}).to_string())?;
        self.await_response(id, method)
    }

    fn initialize(&mut self) -> BenchResult<()> {
        self.call("initialize", json!({"clientName": "exec-server-perf"}))?;
        self.send(json!({"method": "initialized", "params": {}}).to_string())
    }

    fn start_process(&mut self, process_id: &str, argv: &[&str]) -> BenchResult<i64> {
        let id = self.next_id();
        let mut params = json!({
            "processId": process_id, "argv": argv, "cwd": self.cwd, "env": {}, "tty": false
        });
        if let Some(sandbox) = &self.sandbox {
            params["sandbox"] = sandbox.clone();
        }
        self.send(json!({"id": id, "method": "process/start", "params": params}).to_string())?;
        Ok(id)
    }

    /// Runs one process to its `process/closed`, feeding decoded output sizes to `on_output`.
    /// Tolerates notifications before the start response (the reference sends them).
    fn run_process(
        &mut self,
        process_id: &str,
        argv: &[&str],
        deadline: Instant,
    ) -> BenchResult<ProcessOutcome> {
        let start_id = self.start_process(process_id, argv)?;
        let mut outcome = ProcessOutcome::default();
        let mut scratch = Vec::new();
        let mut answered = false;
        while !(answered && outcome.closed) {
            if Instant::now() >= deadline {
                return Err(format!("process {process_id}: not closed before the deadline"));
            }
            self.recv(|msg| {
                match msg.method {
                    None if msg.id == Some(start_id) => {
                        response(msg, "process/start")?;
                        answered = true;
                    }
                    None => {}
                    Some(method) => {
                        let Some(params) = msg.params else { return Ok(()) };
                        if params.process_id != Some(process_id) {
                            return Ok(());
                        }
                        match method {
                            "process/output" => {
                                outcome.bytes += decoded_len(params.chunk, &mut scratch)?
                            }
                            "process/exited" => outcome.exit_code = params.exit_code,
                            "process/closed" => outcome.closed = true,
                            _ => {}
                        }
                    }
                }
                Ok(())
            })?;
        }
        Ok(outcome)
    }
}

#[derive(Default)]
struct ProcessOutcome {
    bytes: u64,
    exit_code: Option<i64>,
    closed: bool,
}

/// Decodes an output chunk into `scratch` (reused, so streaming allocates nothing per
/// chunk) and returns the payload size; invalid base64 fails with the base64 crate's error.
fn decoded_len(chunk: Option<&str>, scratch: &mut Vec<u8>) -> BenchResult<u64> {
    scratch.clear();
    b64::decode(chunk.unwrap_or_default().as_bytes(), scratch)
        .map_err(|e| format!("output chunk: {e}"))?;
    Ok(scratch.len() as u64)
}

fn response(msg: Incoming<'_>, method: &str) -> BenchResult<Value> {
    match (msg.result, msg.error) {
        (_, Some(error)) => Err(format!("{method}: {error}")),
        (Some(result), None) => {
            serde_json::from_str(result.get()).map_err(|e| format!("{method}: {e}"))
        }
        (None, None) => Err(format!("{method}: response without result")),
    }
}

// ---------------------------------------------------------------------------------------
// The echo floor
// ---------------------------------------------------------------------------------------

/// A websocket server that answers every data message with itself: the least a server can
/// do per round trip with the same transport stack (std TCP, tungstenite, TCP_NODELAY).
fn echo_server() {
    let listener = match TcpListener::bind("127.0.0.1:0") {
        Ok(l) => l,
        Err(e) => {
            eprintln!("echo: bind: {e}");
            std::process::exit(1);
        }
    };
    // std listens with a backlog of 128, so 200 simultaneous connects would overflow the
    // accept queue and wait out a 1 s SYN retransmit; Linux lets listen(2) raise it.
    // SAFETY: listen on a socket we own.
    unsafe { libc::listen(listener.as_raw_fd(), LISTEN_BACKLOG) };
    let addr = listener.local_addr().expect("a bound listener has an address");
    let mut out = io::stdout().lock();
    if writeln!(out, "ws://{addr}").and_then(|_| out.flush()).is_err() {
        std::process::exit(1);
    }
    drop(out);
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        thread::spawn(move || echo_connection(stream));
    }
}

fn echo_connection(stream: TcpStream) {
    if stream.set_nodelay(true).is_err() {
        return;
    }
    let config = WebSocketConfig::default().max_message_size(None).max_frame_size(None);
    let Ok(mut ws) = tungstenite::accept_with_config(stream, Some(config)) else { return };
    loop {
        match ws.read() {
            Ok(msg @ (Message::Text(_) | Message::Binary(_))) => {
                if ws.send(msg).is_err() {
                    return;
                }
            }
            Ok(Message::Close(_)) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

// ---------------------------------------------------------------------------------------
// Figures, rows and tables
// ---------------------------------------------------------------------------------------

/// The unit a figure is kept in; the JSON report carries the number in this unit.
#[derive(Clone, Copy, PartialEq)]
enum Unit {
    Ms,
    MibPerSec,
    Mib,
    Bytes,
    Count,
}

impl Unit {
    fn name(self) -> &'static str {
        match self {
            Unit::Ms => "ms",
            Unit::MibPerSec => "MiB/s",
            Unit::Mib => "MiB",
            Unit::Bytes => "bytes",
            Unit::Count => "count",
        }
    }
}

/// One measured figure.
#[derive(Clone, Copy)]
struct Fig {
    v: f64,
    unit: Unit,
}

impl Fig {
    fn ms(d: Duration) -> Fig {
        Fig { v: d.as_secs_f64() * 1e3, unit: Unit::Ms }
    }

    fn rate(mib_per_sec: f64) -> Fig {
        Fig { v: mib_per_sec, unit: Unit::MibPerSec }
    }

    fn kib(kib: u64) -> Fig {
        Fig { v: kib as f64 / 1024.0, unit: Unit::Mib }
    }

    fn bytes(n: u64) -> Fig {
        Fig { v: n as f64, unit: Unit::Bytes }
    }

    fn count(n: usize) -> Fig {
        Fig { v: n as f64, unit: Unit::Count }
    }
}

impl std::fmt::Display for Fig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.unit {
            Unit::Ms if self.v < 1.0 => write!(f, "{:.1} us", self.v * 1e3),
            Unit::Ms => write!(f, "{:.2} ms", self.v),
            Unit::MibPerSec => write!(f, "{:.0} MiB/s", self.v),
            Unit::Mib => write!(f, "{:.1} MiB", self.v),
            Unit::Bytes => write!(f, "{:.0} bytes", self.v),
            Unit::Count => write!(f, "{:.0}", self.v),
        }
    }
}

/// The issue's target for a row: the value (or its ratio to the floor) at most or at least
/// `threshold`, in the value's unit.
#[derive(Clone)]
struct Bar {
    text: &'static str,
    at_most: bool,
    threshold: f64,
    of_ratio: bool,
}

impl Bar {
    fn at_most(text: &'static str, threshold: f64) -> Bar {
        Bar { text, at_most: true, threshold, of_ratio: false }
    }

    fn at_least(text: &'static str, threshold: f64) -> Bar {
        Bar { text, at_most: false, threshold, of_ratio: false }
    }

    fn ratio_at_most(text: &'static str, threshold: f64) -> Bar {
        Bar { text, at_most: true, threshold, of_ratio: true }
    }

    fn ratio_at_least(text: &'static str, threshold: f64) -> Bar {
        Bar { text, at_most: false, threshold, of_ratio: true }
    }
}

struct Row {
    metric: String,
    value: BenchResult<Fig>,
    /// None where the row has no floor (printed `-`).
    floor: Option<BenchResult<Fig>>,
    bar: Option<Bar>,
}

impl Row {
    fn ratio(&self) -> Option<f64> {
        let (Ok(v), Some(Ok(f))) = (&self.value, &self.floor) else { return None };
        (f.v > 0.0).then(|| v.v / f.v)
    }

    /// Whether the value meets the bar; None without a bar or without a figure.
    fn pass(&self) -> Option<bool> {
        let bar = self.bar.as_ref()?;
        let x = if bar.of_ratio { self.ratio()? } else { self.value.as_ref().ok()?.v };
        Some(if bar.at_most { x <= bar.threshold } else { x >= bar.threshold })
    }
}

#[derive(Default)]
struct Table {
    rows: Vec<Row>,
    notes: Vec<String>,
}

impl Table {
    fn row(&mut self, metric: &str, value: BenchResult<Fig>, floor: Option<BenchResult<Fig>>) {
        self.rows.push(Row { metric: metric.into(), value, floor, bar: None });
    }

    /// Sets the bar of the last row.
    fn bar(&mut self, bar: Bar) {
        if let Some(row) = self.rows.last_mut() {
            row.bar = Some(bar);
        }
    }

    /// p50 and p99 rows of sorted samples against sorted floor samples; the bar on p50.
    fn percentiles(
        &mut self,
        metric: &str,
        ours: &BenchResult<Vec<Duration>>,
        floor: &BenchResult<Vec<Duration>>,
        bar: Bar,
    ) {
        for (q, name) in [(50, "p50"), (99, "p99")] {
            let pick = |r: &BenchResult<Vec<Duration>>| {
                r.as_ref().map(|v| Fig::ms(percentile(v, q))).map_err(Clone::clone)
            };
            self.row(&format!("{metric}, {name}"), pick(ours), Some(pick(floor)));
            if q == 50 {
                self.bar(bar.clone());
            }
        }
    }

    fn append(&mut self, other: Table) {
        self.rows.extend(other.rows);
        for note in other.notes {
            if !self.notes.contains(&note) {
                self.notes.push(note);
            }
        }
    }

    /// The rounds of one scenario as one table: each figure the median of its rounds.
    fn merge(mut parts: Vec<Table>) -> Table {
        if parts.len() <= 1 {
            return parts.pop().unwrap_or_default();
        }
        let mut merged = Table::default();
        for (j, first) in parts[0].rows.iter().enumerate() {
            let same: Vec<&Row> = parts
                .iter()
                .filter_map(|p| p.rows.get(j))
                .filter(|r| r.metric == first.metric)
                .collect();
            let value = median_fig(same.iter().map(|r| &r.value));
            let floor = first
                .floor
                .as_ref()
                .map(|_| median_fig(same.iter().filter_map(|r| r.floor.as_ref())));
            merged.rows.push(Row {
                metric: first.metric.clone(),
                value,
                floor,
                bar: first.bar.clone(),
            });
        }
        let rounds = parts.len();
        for part in parts {
            merged.append(Table { rows: Vec::new(), notes: part.notes });
        }
        merged.notes.push(format!("rows above: medians of {rounds} rounds"));
        merged
    }

    fn print(&self, target: &Target) {
        println!();
        println!("== {} ({}{}) ==", target.name, target.bin.display(), file_size(&target.bin));
        // Errors become numbered notes after the table's own.
        let mut notes = self.notes.clone();
        let cells: Vec<[String; 5]> = self
            .rows
            .iter()
            .map(|r| {
                let floor = r.floor.as_ref().map_or_else(|| "-".into(), |f| cell(f, &mut notes));
                let verdict = match r.pass() {
                    Some(true) => "PASS",
                    Some(false) => "MISS",
                    None => "?",
                };
                [
                    r.metric.clone(),
                    cell(&r.value, &mut notes),
                    floor,
                    r.ratio().map_or_else(|| "-".into(), |x| format!("{x:.2}x")),
                    r.bar.as_ref().map_or_else(String::new, |b| format!("{} {verdict}", b.text)),
                ]
            })
            .collect();
        let header = ["metric", "value", "floor", "ratio", "target"].map(String::from);
        print_columns(&header, &cells);
        for (n, note) in notes.iter().enumerate() {
            println!("  [{}] {note}", n + 1);
        }
        println!("  floors: {FLOORS}");
    }
}

/// A figure, or `error [n]` with the message once among `notes`.
fn cell(result: &BenchResult<Fig>, notes: &mut Vec<String>) -> String {
    let e = match result {
        Ok(fig) => return fig.to_string(),
        Err(e) => e,
    };
    let note = format!("error: {e}");
    let n = notes.iter().position(|n| *n == note).unwrap_or_else(|| {
        notes.push(note);
        notes.len() - 1
    });
    format!("error [{}]", n + 1)
}

/// Left-aligned first column and last column, right-aligned figures between.
fn print_columns(header: &[String; 5], rows: &[[String; 5]]) {
    let mut width = [0usize; 5];
    for r in std::iter::once(header).chain(rows) {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    for r in std::iter::once(header).chain(rows) {
        println!(
            "{:<w0$}  {:>w1$}  {:>w2$}  {:>w3$}  {}",
            r[0],
            r[1],
            r[2],
            r[3],
            r[4],
            w0 = width[0],
            w1 = width[1],
            w2 = width[2],
            w3 = width[3]
        );
    }
}

fn median_fig<'a>(results: impl Iterator<Item = &'a BenchResult<Fig>>) -> BenchResult<Fig> {
    let mut ok = Vec::new();
    let mut err = None;
    for r in results {
        match r {
            Ok(f) => ok.push(*f),
            Err(e) => {
                err.get_or_insert_with(|| e.clone());
            }
        }
    }
    ok.sort_by(|a, b| a.v.total_cmp(&b.v));
    let n = ok.len();
    match n {
        0 => Err(err.unwrap_or_else(|| "no figure".into())),
        // An even count: the mean of the middle two.
        _ if n % 2 == 0 => Ok(Fig { v: (ok[n / 2 - 1].v + ok[n / 2].v) / 2.0, unit: ok[0].unit }),
        _ => Ok(ok[n / 2]),
    }
}

/// Current against base, row by row (matched by metric): above 1 is slower for times,
/// bigger for sizes and counts, faster for rates.
fn compare_rows(current: &Table, base: &Table) -> Vec<(String, String, String, Option<f64>)> {
    current
        .rows
        .iter()
        .map(|c| {
            let b = base.rows.iter().find(|b| b.metric == c.metric);
            let bv = b.map(|b| &b.value);
            let ratio = match (&c.value, bv) {
                (Ok(c), Some(Ok(b))) if b.v > 0.0 => Some(c.v / b.v),
                _ => None,
            };
            let show = |v: Option<&BenchResult<Fig>>| match v {
                Some(Ok(f)) => f.to_string(),
                Some(Err(_)) => "error".into(),
                None => "-".into(),
            };
            (c.metric.clone(), show(Some(&c.value)), show(bv), ratio)
        })
        .collect()
}

fn print_compare(current: &Target, ct: &Table, base: &Target, bt: &Table) {
    println!();
    println!("== {} / {} (current / base) ==", current.name, base.name);
    let verdict = |metric: &str| {
        let row = ct.rows.iter().find(|r| r.metric == metric)?;
        let bar = row.bar.as_ref()?;
        Some(format!("{} {}", bar.text, if row.pass()? { "PASS" } else { "MISS" }))
    };
    let cells: Vec<[String; 5]> = compare_rows(ct, bt)
        .into_iter()
        .map(|(metric, c, b, ratio)| {
            let target = verdict(&metric).unwrap_or_default();
            [metric, c, b, ratio.map_or_else(|| "-".into(), |x| format!("{x:.3}x")), target]
        })
        .collect();
    let header = ["metric", "current", "base", "cur/base", "current target"].map(String::from);
    print_columns(&header, &cells);
    println!("  cur/base above 1: slower for times, bigger for sizes and counts, faster for rates");
}

fn file_size(path: &Path) -> String {
    std::fs::metadata(path).map_or_else(|_| String::new(), |m| format!(", {} bytes", m.len()))
}

/// The machine the run is on, with its load when the run began.
struct Machine {
    cpus: usize,
    model: String,
    kernel: String,
    load: String,
}

impl Machine {
    fn read() -> Machine {
        let model = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|s| {
                s.lines().find_map(|l| {
                    l.strip_prefix("model name")
                        .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
                })
            })
            .unwrap_or_default();
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        Machine {
            cpus: thread::available_parallelism().map_or(0, |n| n.get()),
            model,
            kernel: kernel.trim().to_owned(),
            load: load_average(),
        }
    }

    fn line(&self) -> String {
        format!(
            "exec-server perf: {} CPUs ({}), Linux {}, load {}",
            self.cpus, self.model, self.kernel, self.load
        )
    }
}

/// The 1, 5 and 15 minute load averages.
fn load_average() -> String {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    text.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

// ---------------------------------------------------------------------------------------
// The JSON report
// ---------------------------------------------------------------------------------------

fn json_report(
    machine: &Machine,
    rounds: usize,
    targets: &[Target],
    tables: &[Table],
    compare: bool,
) -> Value {
    let unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let targets_json: Vec<Value> = targets
        .iter()
        .zip(tables)
        .map(|(t, table)| {
            json!({
                "name": t.name,
                "bin": t.bin.display().to_string(),
                "sizeBytes": std::fs::metadata(&t.bin).ok().map(|m| m.len()),
                "rows": table.rows.iter().map(row_json).collect::<Vec<_>>(),
                "notes": table.notes,
            })
        })
        .collect();
    let mut report = json!({
        "unixTime": unix,
        "machine": {
            "cpus": machine.cpus,
            "model": machine.model,
            "kernel": machine.kernel,
            "loadAtStart": machine.load,
            "loadAtEnd": load_average(),
        },
        "rounds": rounds,
        "benchOnly": std::env::var("BENCH_ONLY").ok(),
        "floors": FLOORS,
        "targets": targets_json,
    });
    if compare {
        let rows: Vec<Value> = compare_rows(&tables[0], &tables[1])
            .into_iter()
            .map(|(metric, _, _, ratio)| {
                let value = |t: &Table| {
                    t.rows
                        .iter()
                        .find(|r| r.metric == metric)
                        .and_then(|r| r.value.as_ref().ok().map(|f| f.v))
                };
                json!({"metric": metric, "current": value(&tables[0]), "base": value(&tables[1]),
                       "ratio": ratio})
            })
            .collect();
        report["compare"] =
            json!({"current": targets[0].name, "base": targets[1].name, "rows": rows});
    }
    report
}

fn row_json(r: &Row) -> Value {
    let fig = |f: &BenchResult<Fig>| f.as_ref().ok().map(|f| f.v);
    let unit = r
        .value
        .as_ref()
        .ok()
        .or_else(|| r.floor.as_ref().and_then(|f| f.as_ref().ok()))
        .map(|f| f.unit.name());
    json!({
        "metric": r.metric,
        "value": fig(&r.value),
        "unit": unit,
        "error": r.value.as_ref().err(),
        "floor": r.floor.as_ref().and_then(fig),
        "ratio": r.ratio(),
        "target": r.bar.as_ref().map(|b| json!({
            "text": b.text,
            "op": if b.at_most { "<=" } else { ">=" },
            "threshold": b.threshold,
            "of": if b.of_ratio { "ratio" } else { "value" },
        })),
        "pass": r.pass(),
    })
}

/// Writes the report to `BENCH_JSON`, or to target/bench/perf-<unix time>.json and
/// target/bench/latest.json; returns the paths written.
fn write_json(report: &Value) -> BenchResult<String> {
    let text = serde_json::to_string_pretty(report).map_err(|e| e.to_string())?;
    let write = |path: &Path| -> BenchResult<()> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        std::fs::write(path, &text).map_err(|e| format!("{}: {e}", path.display()))
    };
    if let Some(path) = std::env::var_os("BENCH_JSON").filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        write(&path)?;
        return Ok(path.display().to_string());
    }
    let dir = std::env::var_os("CARGO_TARGET_DIR")
        .filter(|d| !d.is_empty())
        .map_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"), PathBuf::from)
        .join("bench");
    let unix = report["unixTime"].as_u64().unwrap_or(0);
    let path = dir.join(format!("perf-{unix}.json"));
    let latest = dir.join("latest.json");
    write(&path)?;
    write(&latest)?;
    Ok(format!("{} (and {})", path.display(), latest.display()))
}

// ---------------------------------------------------------------------------------------
// Scenarios
// ---------------------------------------------------------------------------------------

/// What each floor column measured.
const FLOORS: &str = "startup = the echo child; round trip = the tungstenite echo child, \
pinned the same way; one-shot = fork/exec/wait of /bin/true here; streaming = the same command's \
pipe read here; spool = the same server's live stream; files = std::fs here; 200 connections = \
200 echo connections, one round trip each; 1000 processes = the same 1000 commands spawned and \
read here; fds/threads = the daemon's own count before the 10,000 starts; size = the budget";

/// The scenarios, by the names `BENCH_ONLY` (comma-separated) selects from, in run order.
const SCENARIOS: [&str; 13] = [
    "size",
    "startup",
    "rtt",
    "oneshot",
    "oneshot-sandboxed",
    "stream",
    "spool",
    "files",
    "crowd",
    "conns200proc",
    "true10k",
    "procs1000",
    "slow",
];

/// Most `BENCH_ROUNDS`: every round runs every scenario once per server.
const MAX_ROUNDS: usize = 20;

fn wanted(scenario: &str) -> bool {
    match std::env::var("BENCH_ONLY") {
        Ok(only) if !only.trim().is_empty() => only.split(',').any(|s| s.trim() == scenario),
        _ => true,
    }
}

/// One target under test: its long-lived server (shared by the scenarios that need no
/// server of their own) and its table so far.
struct Run<'a> {
    target: &'a Target,
    server: BenchResult<Server>,
    table: Table,
}

/// Every wanted scenario in turn; within a scenario the targets run back to back, and with
/// `rounds` > 1 as A B, B A, A B, … with each figure the median of its rounds, so that a
/// comparison of two builds sees the same machine conditions on both sides.
fn run_all(targets: &[Target], echo: &Target, rounds: usize) -> Vec<Table> {
    let mut runs: Vec<Run> = targets
        .iter()
        .map(|target| {
            // Finished processes are dropped once read to their end (as the soak does): with
            // the default 30 s retention, a run of several rounds would pass the process
            // limit on this one server, and each scenario would inherit the last one's.
            let lean = with_supported(target, &[["--exited-retention-secs", "0"]]);
            let server = launch(&lean, None).map(|(s, _)| s);
            let mut table = Table::default();
            let idle = server.as_ref().map_err(Clone::clone).and_then(Server::rss_kib);
            table.row("RSS idle (after startup)", idle.map(Fig::kib), None);
            table.bar(Bar::at_most("<= 4 MiB", 4.0));
            if let Err(e) = &server {
                table.notes.push(format!("server did not start: {e}"));
            }
            Run { target, server, table }
        })
        .collect();
    for &scenario in SCENARIOS.iter().filter(|s| wanted(s)) {
        let mut parts: Vec<Vec<Table>> = runs.iter().map(|_| Vec::new()).collect();
        for round in 0..rounds {
            let mut order: Vec<usize> = (0..runs.len()).collect();
            if round % 2 == 1 {
                order.reverse();
            }
            for i in order {
                let run = &runs[i];
                let of = if rounds > 1 {
                    format!(" (round {}/{rounds})", round + 1)
                } else {
                    String::new()
                };
                eprintln!("perf: {scenario} on {}{of} ...", run.target.name);
                let mut part = Table::default();
                run_scenario(scenario, run, echo, &mut part);
                parts[i].push(part);
            }
        }
        for (run, parts) in runs.iter_mut().zip(parts) {
            run.table.append(Table::merge(parts));
        }
    }
    runs.into_iter()
        .map(|mut run| {
            if let Ok(server) = &mut run.server {
                match server.stop() {
                    Ok(status) if status.success() => {}
                    Ok(status) => run
                        .table
                        .notes
                        .push(format!("after SIGTERM the server exited with {status}")),
                    Err(e) => run.table.notes.push(format!("stop: {e}")),
                }
            }
            run.table
        })
        .collect()
}

/// The rows of one scenario for one target.
fn run_scenario(scenario: &str, run: &Run, echo: &Target, t: &mut Table) {
    let target = run.target;
    // Scenarios that start servers of their own.
    match scenario {
        "size" => {
            let size = std::fs::metadata(&target.bin)
                .map(|m| Fig::bytes(m.len()))
                .map_err(|e| format!("{}: {e}", target.bin.display()));
            t.row("binary size (floor = budget)", size, Some(Ok(Fig::bytes(SIZE_BUDGET_BYTES))));
            if target.kind == Kind::Ours {
                t.bar(Bar::at_most("<= 3,000,000 bytes", SIZE_BUDGET_BYTES as f64));
            }
            return;
        }
        "startup" => {
            // Against the echo child's spawn → URL line.
            let ours = startup(target).map(Fig::ms);
            let floor = startup(echo).map(Fig::ms);
            t.row("startup: spawn -> URL line (median of 10)", ours, Some(floor));
            t.bar(Bar::at_most("<= 3 ms", 3.0));
            return;
        }
        "rtt" => {
            // Pinned to one CPU and across two, against the echo child pinned the same way.
            for (label, server_cpu) in [("1 CPU", &[0usize][..]), ("2 CPUs", &[1usize][..])] {
                let ours = round_trips(target, server_cpu);
                let floor = round_trips(echo, server_cpu);
                t.percentiles(
                    &format!("fs/getMetadata round trip, {label}, of {RTT_SAMPLES}"),
                    &ours,
                    &floor,
                    Bar::ratio_at_most("<= 1.3x floor", 1.3),
                );
            }
            return;
        }
        "spool" => {
            if target.kind == Kind::Ours {
                spool_rows(run, t);
            }
            return;
        }
        "conns200proc" => {
            // A fresh server: 200 connections, each initialize + one short command with
            // output, read to its end; against the echo crowd.
            let ours = launch(target, None).and_then(|(s, _)| connections(&s, Work::Print));
            let floor = launch(echo, None).and_then(|(s, _)| connections(&s, Work::EchoFloor));
            crowd_rows(t, "200 connections on a fresh server: init + echo, wall", &ours, &floor);
            return;
        }
        "true10k" => {
            true_starts_rows(target, t);
            return;
        }
        "procs1000" => {
            let ours = many_processes(target);
            let floor = many_processes_floor().map(Fig::ms);
            let wall = ours.as_ref().map(|p| Fig::ms(p.wall)).map_err(Clone::clone);
            t.row(&format!("{PROCS} processes x 64 KiB, one connection: wall"), wall, Some(floor));
            let lost = ours.as_ref().map(|p| Fig::bytes(p.lost)).map_err(Clone::clone);
            t.row(&format!("{PROCS} processes: bytes lost"), lost, None);
            t.bar(Bar::at_most("0", 0.0));
            let peak = ours.as_ref().map(|p| Fig::kib(p.peak_kib)).map_err(Clone::clone);
            t.row(&format!("{PROCS} processes: daemon RSS max (VmHWM)"), peak, None);
            if let Ok(p) = &ours {
                t.notes.push(format!(
                    "{PROCS} processes: {} bytes received, {} processes with a wrong count, \
                     {} with a non-zero byte; at most {PROCS_WINDOW} starts in flight{}",
                    p.received,
                    p.wrong,
                    p.nonzero,
                    p.first_wrong.as_ref().map_or_else(String::new, |w| format!("; first: {w}"))
                ));
            }
            return;
        }
        _ => {}
    }
    // Scenarios on the target's long-lived server.
    let Ok(server) = &run.server else { return };
    match scenario {
        "oneshot" => {
            // Against fork/exec/wait of /bin/true in this process.
            let ours = one_shot(server, None);
            let floor = one_shot_floor();
            t.percentiles(
                &format!("process/start /bin/true -> closed, of {ONESHOT_SAMPLES}"),
                &ours,
                &floor,
                Bar::at_most("<= 2 ms", 2.0),
            );
        }
        "oneshot-sandboxed" => {
            // The same under the client's workspace-write sandbox (Landlock, seccomp, a mount
            // namespace for the read-only .git), against the same floor.
            let workspace = std::env::temp_dir().join(format!("perf-ws-{}", std::process::id()));
            let _ = std::fs::create_dir_all(workspace.join(".git"));
            let ours = one_shot(server, Some(workspace_write(&workspace)));
            let floor = one_shot_floor();
            let _ = std::fs::remove_dir_all(&workspace);
            t.percentiles(
                &format!("/bin/true under workspace-write -> closed, of {ONESHOT_SAMPLES}"),
                &ours,
                &floor,
                Bar::at_most("<= 3 ms", 3.0),
            );
        }
        "stream" => {
            // Against reading the same command's pipe directly.
            let streamed = streaming(server);
            let floor = streaming_floor().map(Fig::rate);
            let rate = streamed.as_ref().map(|s| Fig::rate(s.mib_per_sec)).map_err(Clone::clone);
            t.row(STREAM_METRIC, rate, Some(floor));
            t.bar(Bar::at_least(">= 800 MiB/s", 800.0));
            let peak = streamed.as_ref().map(|s| Fig::kib(s.peak_kib)).map_err(Clone::clone);
            t.row("RSS peak during streaming", peak, None);
            if let Ok(s) = &streamed {
                t.notes.push(format!(
                    "streaming: the client used {} CPU in {} wall",
                    Fig::ms(s.client_cpu),
                    Fig::ms(s.elapsed)
                ));
            }
        }
        "files" => {
            // Against std::fs in this process.
            let mut size = FILE_BYTES;
            let mut files = file_io(server, size);
            if let Err(e) = &files {
                t.notes.push(format!(
                    "fs at {} MiB failed ({e}); measured at {} MiB instead",
                    FILE_BYTES >> 20,
                    FALLBACK_FILE_BYTES >> 20
                ));
                size = FALLBACK_FILE_BYTES;
                files = file_io(server, size);
            }
            let floor = file_io_floor(&server.home.path, size);
            for (i, name, bar) in [
                (0, "fs/writeFile", Bar::at_least(">= 600 MiB/s", 600.0)),
                (1, "fs/readFile", Bar::at_least(">= 800 MiB/s", 800.0)),
            ] {
                let pick = |r: &BenchResult<[f64; 2]>| {
                    r.as_ref().map(|f| Fig::rate(f[i])).map_err(Clone::clone)
                };
                t.row(
                    &format!("{name} {} MiB, MiB/s", size >> 20),
                    pick(&files),
                    Some(pick(&floor)),
                );
                t.bar(bar);
            }
        }
        "crowd" => {
            // Against 200 echo connections with one round trip each.
            let ours = connections(server, Work::BinTrue);
            let floor = launch(echo, None).and_then(|(s, _)| connections(&s, Work::EchoFloor));
            crowd_rows(t, "200 connections: init + /bin/true, wall", &ours, &floor);
            let rss =
                |f: fn(&Crowd) -> u64| ours.as_ref().map(|c| Fig::kib(f(c))).map_err(Clone::clone);
            t.row("RSS with 200 connections open", rss(|c| c.rss_open_kib), None);
            t.row("RSS after the 200 connections closed", rss(|c| c.rss_after_kib), None);
        }
        "slow" => {
            let slow = slow_reader(server);
            let max = slow.as_ref().map(|s| Fig::kib(s.max_kib)).map_err(Clone::clone);
            t.row("RSS during slow reader (max over 10 s)", max, None);
            t.bar(Bar::at_most("<= 32 MiB", 32.0));
            if let Ok(s) = &slow {
                t.notes.push(format!(
                    "slow reader: read {:.1} MiB in {:.1} s, RSS at end {}{}",
                    s.bytes as f64 / 1048576.0,
                    s.elapsed.as_secs_f64(),
                    Fig::kib(s.end_kib),
                    if s.aborted { ", stopped early: RSS passed the abort limit" } else { "" }
                ));
            }
        }
        _ => {}
    }
}

/// The live stream row's metric, which the spool row compares with.
const STREAM_METRIC: &str = "stream head -c 256MiB, MiB/s decoded";

/// The budget of the static musl binary (issue 19).
const SIZE_BUDGET_BYTES: u64 = 3_000_000;

/// Against the same server's live stream when that row ran (the issue's bar: 80 %).
fn spool_rows(run: &Run, t: &mut Table) {
    let live = run
        .table
        .rows
        .iter()
        .find(|r| r.metric == STREAM_METRIC)
        .and_then(|r| r.value.as_ref().ok().copied());
    let back = spool_read_back(run.target);
    if let Ok((_, peak_kib)) = &back {
        t.notes.push(format!("spool read-back: server RSS peak {}", Fig::kib(*peak_kib)));
    }
    let back = back.map(|(rate, _)| Fig::rate(rate));
    let floor = live.ok_or_else(|| "no stream row (add stream to BENCH_ONLY)".to_string());
    t.row("spool: 256 MiB burst read back, MiB/s (floor = live)", back, Some(floor));
    t.bar(Bar::ratio_at_least(">= 0.8x live stream", 0.8));
}

/// Wall time (bar 250 ms) and failures (bar 0) of a crowd, with its notes.
fn crowd_rows(t: &mut Table, metric: &str, ours: &BenchResult<Crowd>, floor: &BenchResult<Crowd>) {
    let wall = |r: &BenchResult<Crowd>| r.as_ref().map(|c| Fig::ms(c.wall)).map_err(Clone::clone);
    t.row(metric, wall(ours), Some(wall(floor)));
    t.bar(Bar::at_most("<= 250 ms", 250.0));
    let failures = ours.as_ref().map(|c| Fig::count(c.failures)).map_err(Clone::clone);
    let short = metric.split(':').next().unwrap_or(metric);
    t.row(&format!("{short}: failures"), failures, None);
    t.bar(Bar::at_most("0", 0.0));
    if let Ok(c) = ours {
        t.notes.push(format!(
            "{short}: slowest connect {}, initialize {}, process {}",
            Fig::ms(c.slowest[0]),
            Fig::ms(c.slowest[1]),
            Fig::ms(c.slowest[2])
        ));
        if let Some(e) = &c.first_error {
            t.notes.push(format!("{short}: first failure: {e}"));
        }
    }
}

fn percentile(sorted: &[Duration], q: usize) -> Duration {
    sorted[(sorted.len() * q / 100).min(sorted.len() - 1)]
}

fn startup(target: &Target) -> BenchResult<Duration> {
    let mut times = Vec::with_capacity(STARTUP_RUNS);
    for _ in 0..STARTUP_RUNS {
        let (mut server, elapsed) = launch(target, None)?;
        times.push(elapsed);
        server.stop()?;
    }
    times.sort();
    Ok(times[times.len() / 2])
}

/// Sorted round-trip times of `fs/getMetadata` (an echoed copy of it for the echo floor),
/// client pinned to CPU 0 and the server to `server_cpu`.
fn round_trips(target: &Target, server_cpu: &'static [usize]) -> BenchResult<Vec<Duration>> {
    let (server, _) = launch(target, Some(server_cpu))?;
    let echo = target.kind == Kind::Echo;
    let path = server.home.path.display().to_string();
    let addr = server.addr;
    // A thread of its own, so pinning the client does not pin the rest of the bench.
    let result = thread::spawn(move || -> BenchResult<Vec<Duration>> {
        set_affinity(0, &[0]).map_err(|e| format!("sched_setaffinity: {e}"))?;
        let mut client = Client::connect(addr)?;
        if !echo {
            client.initialize()?;
        }
        let mut times = Vec::with_capacity(RTT_SAMPLES);
        let deadline = Instant::now() + SCENARIO_DEADLINE;
        for i in 0..RTT_WARMUP + RTT_SAMPLES {
            if Instant::now() >= deadline {
                return Err("round trips did not finish before the deadline".into());
            }
            let id = client.next_id();
            let request =
                json!({"id": id, "method": "fs/getMetadata", "params": {"path": path}}).to_string();
            let start = Instant::now();
            client.send(request).map_err(|e| format!("request {i}: {e}"))?;
            // The echo floor returns the request itself, which parses the same way.
            let mut answered = false;
            while !answered {
                answered = client
                    .recv(|msg| match msg.error {
                        Some(error) if msg.id == Some(id) => {
                            Err(format!("fs/getMetadata: {error}"))
                        }
                        _ => Ok(msg.id == Some(id)),
                    })
                    .map_err(|e| format!("request {i} of {}: {e}", RTT_WARMUP + RTT_SAMPLES))?;
            }
            if i >= RTT_WARMUP {
                times.push(start.elapsed());
            }
        }
        times.sort();
        Ok(times)
    })
    .join()
    .map_err(|_| "round-trip thread panicked".to_string())?;
    drop(server);
    result
}

/// The workspace-write profile the codex client sends with every tool command
/// (UPSTREAM-0.171.md §5), for a workspace at `root`.
fn workspace_write(root: &std::path::Path) -> Value {
    let uri = format!("file://{}", root.display());
    let special = |kind: &str| json!({"type": "special", "value": {"kind": kind}});
    json!({"permissions": {"type": "managed", "file_system": {"type": "restricted", "entries": [
            {"path": special("root"), "access": "read"},
            {"path": special("project_roots"), "access": "write"},
            {"path": special("slash_tmp"), "access": "write"},
            {"path": {"type": "special", "value": {"kind": "project_roots", "subpath": ".git"}},
             "access": "read", "missing_path_behavior": "skip"}]},
          "network": "restricted"},
        "cwd": uri, "workspaceRoots": [uri], "windowsSandboxLevel": "disabled"})
}

fn one_shot(server: &Server, sandbox: Option<Value>) -> BenchResult<Vec<Duration>> {
    let mut client = Client::connect_to(server)?;
    client.sandbox = sandbox;
    client.initialize()?;
    let mut times = Vec::with_capacity(ONESHOT_SAMPLES);
    let deadline = Instant::now() + SCENARIO_DEADLINE;
    for i in 0..ONESHOT_WARMUP + ONESHOT_SAMPLES {
        let start = Instant::now();
        let outcome = client.run_process(&format!("true-{i}"), &["/bin/true"], deadline)?;
        if outcome.exit_code != Some(0) {
            return Err(format!("/bin/true exited with {:?}", outcome.exit_code));
        }
        if i >= ONESHOT_WARMUP {
            times.push(start.elapsed());
        }
    }
    times.sort();
    Ok(times)
}

fn one_shot_floor() -> BenchResult<Vec<Duration>> {
    let mut times = Vec::with_capacity(ONESHOT_SAMPLES);
    for i in 0..ONESHOT_WARMUP + ONESHOT_SAMPLES {
        let start = Instant::now();
        let status = Command::new("/bin/true").status().map_err(|e| e.to_string())?;
        if !status.success() {
            return Err(format!("/bin/true: {status}"));
        }
        if i >= ONESHOT_WARMUP {
            times.push(start.elapsed());
        }
    }
    times.sort();
    Ok(times)
}

struct Streamed {
    mib_per_sec: f64,
    peak_kib: u64,
    /// CPU time the bench's client thread spent, to show whether the client was the limit.
    client_cpu: Duration,
    elapsed: Duration,
}

fn thread_cpu_time() -> Duration {
    // SAFETY: getrusage fills the zeroed struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut usage) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

fn find_program(name: &str) -> BenchResult<String> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into());
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .map(|p| p.display().to_string())
        .ok_or_else(|| format!("{name} not found in PATH"))
}

fn streaming(server: &Server) -> BenchResult<Streamed> {
    let head = find_program("head")?;
    let count = STREAM_BYTES.to_string();
    let mut client = Client::connect_to(server)?;
    client.initialize()?;
    let sampler = RssSampler::start(server.pid);
    let exact_peak = server.reset_peak();
    let cpu_before = thread_cpu_time();
    let start = Instant::now();
    let outcome = client.run_process(
        "stream",
        &[&head, "-c", &count, "/dev/zero"],
        start + SCENARIO_DEADLINE,
    );
    let elapsed = start.elapsed();
    let client_cpu = thread_cpu_time().saturating_sub(cpu_before);
    let sampled = sampler.stop();
    let outcome = outcome?;
    if outcome.bytes != STREAM_BYTES {
        return Err(format!("received {} of {STREAM_BYTES} bytes", outcome.bytes));
    }
    let peak_kib = if exact_peak { server.peak_kib()?.max(sampled) } else { sampled };
    Ok(Streamed {
        mib_per_sec: outcome.bytes as f64 / 1048576.0 / elapsed.as_secs_f64(),
        peak_kib,
        client_cpu,
        elapsed,
    })
}

/// A page of `process/read`, borrowing the chunks from the message.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ReadPage<'a> {
    #[serde(borrow)]
    chunks: Vec<ReadChunk<'a>>,
    exited: bool,
    #[serde(default)]
    dropped_before_seq: Option<u64>,
}

#[derive(Deserialize)]
struct ReadChunk<'a> {
    #[serde(borrow)]
    chunk: &'a str,
}

/// A message during the read-back: a `process/read` response, or a notification.
#[derive(Deserialize)]
struct ReadMessage<'a> {
    #[serde(default)]
    id: Option<i64>,
    #[serde(default, borrow)]
    method: Option<&'a str>,
    #[serde(default, borrow)]
    result: Option<ReadPage<'a>>,
}

/// A `process/read` response as `ReadMessage` reads it, found by `scan::walk`, so a
/// page's 5.7 MiB of base64 is not walked by serde_json as well as decoded. None (parse
/// with serde_json instead) for anything `ReadMessage` might read differently: a member
/// of a type it would refuse, a duplicate, a missing required one, or a long string it
/// would not decode (`scan` leaves those unchecked for control characters).
fn scan_read_message<'a>(text: &'a str) -> Option<ReadMessage<'a>> {
    use scan::Token::{Bool, Close, Null, Num, Open, Str};
    const ID: &[&str] = &["id"];
    const METHOD: &[&str] = &["method"];
    const RESULT: &[&str] = &["result"];
    const CHUNKS: &[&str] = &["result", "chunks"];
    const CHUNK: &[&str] = &["result", "chunks", "chunk"];
    const EXITED: &[&str] = &["result", "exited"];
    const DROPPED: &[&str] = &["result", "droppedBeforeSeq"];
    const KNOWN: [&[&str]; 8] = [&[], ID, METHOD, RESULT, CHUNKS, CHUNK, EXITED, DROPPED];
    let (mut id, mut method, mut result) = (None, None, None);
    let (mut chunks, mut exited, mut dropped) = (None::<Vec<ReadChunk>>, None, None);
    // Members seen (a duplicate is serde's error), and the chunk object being read.
    let mut seen = [false; KNOWN.len()];
    let (mut in_chunk, mut chunk) = (false, None);
    let mut visit = |path: &[&'a str], token: scan::Token<'a>| -> bool {
        let Some(known) = KNOWN.iter().position(|k| *k == path) else {
            // A member ReadMessage ignores, or inside one: any value but a long string.
            return !matches!(token, Str(s) if s.len() > 256);
        };
        // Containers see Open and Close at their path; only scalars and Open count once.
        let first = !matches!(token, Close) && !std::mem::replace(&mut seen[known], true);
        match (path, token) {
            ([], Open(true) | Close) => true,
            (ID, Num(n)) if first => n.parse().map(|n| id = Some(n)).is_ok(),
            (ID | METHOD | DROPPED, Null) => first,
            (METHOD, Str(m)) if first => {
                method = Some(m);
                true
            }
            (RESULT, Open(true)) if first => {
                result = Some(());
                true
            }
            (RESULT, Null) => first,
            (RESULT, Close) => true,
            (CHUNKS, Open(false)) if first => {
                chunks = Some(Vec::new());
                true
            }
            // Each element is an object with exactly one `chunk`.
            (CHUNKS, Open(true)) if !in_chunk => {
                seen[KNOWN.iter().position(|k| *k == CHUNK).expect("CHUNK is known")] = false;
                in_chunk = true;
                true
            }
            (CHUNKS, Close) if in_chunk => {
                in_chunk = false;
                match (chunk.take(), chunks.as_mut()) {
                    (Some(c), Some(list)) => {
                        list.push(ReadChunk { chunk: c });
                        true
                    }
                    _ => false,
                }
            }
            (CHUNKS, Close) => true,
            (CHUNK, Str(c)) if first && in_chunk => {
                chunk = Some(c);
                true
            }
            (EXITED, Bool(b)) if first => {
                exited = Some(b);
                true
            }
            (DROPPED, Num(n)) if first => n.parse().map(|n| dropped = Some(n)).is_ok(),
            _ => false,
        }
    };
    scan::walk(text, &mut visit)?;
    let result = match result {
        None => None,
        Some(()) => {
            Some(ReadPage { chunks: chunks?, exited: exited?, dropped_before_seq: dropped })
        }
    };
    Some(ReadMessage { id, method, result })
}

/// Issue 15: `head -c 256MiB /dev/zero` runs while its session is detached (the client
/// drops its connection right after the start response), a new connection resumes the
/// session once the burst is over (no child left) and reads it all back with `process/read` (default
/// `maxBytes`, pages of up to 4 MiB from the spool). MiB/s of decoded output over the
/// read-back alone, on a server of its own started with `SPOOL_BENCH_ARGS`, and the
/// server's peak RSS during the read-back.
fn spool_read_back(target: &Target) -> BenchResult<(f64, u64)> {
    let spooling = Target {
        name: target.name.clone(),
        kind: target.kind,
        bin: target.bin.clone(),
        args: target.args.iter().cloned().chain(SPOOL_BENCH_ARGS.map(OsString::from)).collect(),
    };
    let (server, _) = launch(&spooling, None)?;
    let head = find_program("head")?;
    let count = STREAM_BYTES.to_string();
    let deadline = Instant::now() + SCENARIO_DEADLINE;
    let mut client = Client::connect_to(&server)?;
    let init = client.call("initialize", json!({"clientName": "exec-server-perf"}))?;
    let session = init["sessionId"].as_str().ok_or("initialize: no sessionId")?.to_owned();
    client.send(json!({"method": "initialized", "params": {}}).to_string())?;
    let start_id = client.start_process("burst", &[&head, "-c", &count, "/dev/zero"])?;
    client.await_response(start_id, "process/start")?;
    drop(client);
    // Output a connection takes live is not spooled: resume only once the burst is over
    // (the server has reaped `head`), so all of it went to the spool.
    while has_children(server.pid) {
        if Instant::now() >= deadline {
            return Err("the burst did not end before the deadline".into());
        }
        thread::sleep(Duration::from_millis(10));
    }
    let mut reader = Client::connect_to(&server)?;
    let resume = json!({"clientName": "exec-server-perf", "resumeSessionId": session});
    // The resume succeeds once the server has noticed the first connection is gone.
    while let Err(e) = reader.call("initialize", resume.clone()) {
        if Instant::now() >= deadline {
            return Err(format!("resume: {e}"));
        }
        thread::sleep(Duration::from_millis(10));
    }
    reader.send(json!({"method": "initialized", "params": {}}).to_string())?;
    // With `afterSeq` beyond any output, the long poll answers at the exit; output read
    // after the exit may follow until closed.
    loop {
        let r = reader.call(
            "process/read",
            json!({"processId": "burst", "afterSeq": 1u64 << 60, "waitMs": 5000}),
        )?;
        if r["closed"] == true {
            break;
        }
        if Instant::now() >= deadline {
            return Err("the burst did not end before the deadline".into());
        }
    }
    let sampler = RssSampler::start(server.pid);
    let exact_peak = server.reset_peak();
    // Pipelined like a client that keeps up: as soon as a page arrives, the request for
    // the next one goes out (its `afterSeq` is the page's `nextSeq` - 1, found at the end of
    // the text; no other message has one), and only then is the page parsed and decoded, so
    // the server reads and encodes the next page meanwhile. The end shows once the last,
    // empty page is parsed, so one request too many goes out.
    let start = Instant::now();
    let (mut bytes, mut scratch) = (0u64, Vec::new());
    let request = |reader: &mut Client, after: u64| -> BenchResult<i64> {
        let id = reader.next_id();
        let params = json!({"processId": "burst", "afterSeq": after});
        reader.send(json!({"id": id, "method": "process/read", "params": params}).to_string())?;
        Ok(id)
    };
    let mut id = request(&mut reader, 0)?;
    loop {
        let (text, utf8) = match reader.ws.read().map_err(|e| format!("read: {e}"))? {
            Message::Text(t) => (tungstenite::Bytes::from(t.clone()), Some(t)),
            Message::Binary(b) => (b, None),
            Message::Close(c) => return Err(format!("server closed the connection: {c:?}")),
            _ => continue,
        };
        let asked = id;
        let next = next_seq_of(&text);
        if let Some(next) = next {
            id = request(&mut reader, next.checked_sub(1).ok_or("process/read: nextSeq 0")?)?;
        }
        let scanned = utf8.as_ref().and_then(|t| scan_read_message(t.as_str()));
        let msg = match scanned {
            Some(msg) => msg,
            None => serde_json::from_slice(&text)
                .map_err(|e| format!("bad message from server: {e}"))?,
        };
        // Notifications of the burst's end may still arrive on the resumed session.
        if msg.method.is_some() || msg.id != Some(asked) {
            if next.is_some() {
                return Err(format!("a message with a nextSeq answers {:?}", msg.id));
            }
            continue;
        }
        let page = msg.result.ok_or("process/read: no result")?;
        if page.chunks.is_empty() && page.exited {
            break;
        }
        if next.is_none() {
            return Err("process/read: no nextSeq".into());
        }
        if let Some(seq) = page.dropped_before_seq {
            return Err(format!("the spool dropped output before seq {seq}"));
        }
        for chunk in &page.chunks {
            bytes += decoded_len(Some(chunk.chunk), &mut scratch)?;
        }
        if Instant::now() >= deadline {
            return Err("read-back not finished before the deadline".into());
        }
    }
    let elapsed = start.elapsed();
    let sampled = sampler.stop();
    if bytes != STREAM_BYTES {
        return Err(format!("read back {bytes} of {STREAM_BYTES} bytes"));
    }
    let peak_kib = if exact_peak { server.peak_kib()?.max(sampled) } else { sampled };
    Ok((bytes as f64 / 1048576.0 / elapsed.as_secs_f64(), peak_kib))
}

/// The `nextSeq` of a `process/read` response, read from the end of its text (the chunks
/// come first and hold no such member).
fn next_seq_of(text: &[u8]) -> Option<u64> {
    const KEY: &[u8] = b"\"nextSeq\":";
    let at = text.windows(KEY.len()).rposition(|w| w == KEY)? + KEY.len();
    let digits = text[at..].iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&text[at..at + digits]).ok()?.parse().ok()
}

/// True while some process has `pid` as its parent (from /proc).
fn has_children(pid: i32) -> bool {
    let Ok(dir) = std::fs::read_dir("/proc") else { return false };
    dir.flatten().any(|entry| {
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        // The fields after the parenthesized command name: state, ppid, …
        let ppid = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1));
        ppid == Some(pid.to_string().as_str())
    })
}

fn streaming_floor() -> BenchResult<f64> {
    let head = find_program("head")?;
    let start = Instant::now();
    let mut child = Command::new(head)
        .args(["-c", &STREAM_BYTES.to_string(), "/dev/zero"])
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    let mut out = child.stdout.take().expect("stdout was configured as a pipe");
    let mut buf = vec![0u8; 64 << 10];
    let mut total = 0u64;
    loop {
        match out.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => total += n as u64,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.to_string()),
        }
    }
    child.wait().map_err(|e| e.to_string())?;
    if total != STREAM_BYTES {
        return Err(format!("read {total} of {STREAM_BYTES} bytes"));
    }
    Ok(total as f64 / 1048576.0 / start.elapsed().as_secs_f64())
}

/// Deterministic incompressible-looking bytes (xorshift), so no layer gets a free ride on
/// zeros.
fn test_data(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut data = Vec::with_capacity(len + 8);
    while data.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        data.extend_from_slice(&x.to_le_bytes());
    }
    data.truncate(len);
    data
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct FileData<'a> {
    #[serde(borrow)]
    data_base64: &'a str,
}

/// [writeFile, readFile] MiB/s, medians of `FILE_RUNS`; the clock covers sending the
/// request through receiving and parsing the response (base64 encoding of the upload is
/// prepared beforehand, decoding of the download is verified afterwards). The client
/// borrows the base64 from the frame, as a careful client would, and runs on the server's
/// allocator (`src/alloc.rs`), so its own page faults weigh no more than the server's.
fn file_io(server: &Server, size: usize) -> BenchResult<[f64; 2]> {
    let data = test_data(size);
    let encoded = base64::engine::general_purpose::STANDARD.encode(&data);
    let path = server.home.path.join("perf-file.bin").display().to_string();
    let mut client = Client::connect_to(server)?;
    client.initialize()?;
    let mut writes = Vec::new();
    let mut reads = Vec::new();
    for _ in 0..FILE_RUNS {
        let id = client.next_id();
        let request = json!({"id": id, "method": "fs/writeFile", "params": {"path": path, "dataBase64": encoded}}).to_string();
        let start = Instant::now();
        client.send(request)?;
        client.await_response(id, "fs/writeFile")?;
        writes.push(start.elapsed());

        let id = client.next_id();
        let request =
            json!({"id": id, "method": "fs/readFile", "params": {"path": path}}).to_string();
        let start = Instant::now();
        client.send(request)?;
        let deadline = start + SCENARIO_DEADLINE;
        let mut answered = false;
        while !answered {
            if Instant::now() > deadline {
                return Err("fs/readFile: no response before the deadline".into());
            }
            answered = client.recv_text(|text| {
                // Parsed as a careful client would, borrowing the text: one validating walk
                // (serde_json when the walk does not vouch for the message); the clock
                // stops here.
                let found = scan_file_data(text, id).unwrap_or_else(|| serde_file_data(text, id));
                let Some(data_base64) = found? else {
                    return Ok(false);
                };
                reads.push(start.elapsed());
                let decoded = base64::engine::general_purpose::STANDARD
                    .decode(data_base64)
                    .map_err(|e| e.to_string())?;
                if decoded != data {
                    return Err("fs/readFile returned different bytes".into());
                }
                Ok(true)
            })?;
        }
    }
    Ok([median_rate(&mut writes, size), median_rate(&mut reads, size)])
}

/// The `dataBase64` of a message that answers `fs/readFile` request `id`, None (Ok) for any
/// other message; serde_json's reading, for messages `scan_file_data` does not vouch for.
fn serde_file_data(text: &str, id: i64) -> BenchResult<Option<&str>> {
    let msg: Incoming<'_> =
        serde_json::from_str(text).map_err(|e| format!("bad message from server: {e}"))?;
    if msg.method.is_some() || msg.id != Some(id) {
        return Ok(None);
    }
    if let Some(error) = msg.error {
        return Err(format!("fs/readFile: {error}"));
    }
    let result: FileData<'_> = msg
        .result
        .map(|r| serde_json::from_str(r.get()))
        .ok_or("fs/readFile: response without result")?
        .map_err(|e| format!("fs/readFile: {e}"))?;
    Ok(Some(result.data_base64))
}

/// `serde_file_data`'s answer found by `scan::walk`, so the file's base64 is walked once
/// with a vector search rather than twice by serde_json (its reading took 40 % of the
/// clock at 64 MiB). Some(Ok(None)) for a message with a number `id` other than `id`; None
/// (ask serde_json) for anything else it might read differently: an error, a notification,
/// a duplicate, another type, or a long string it would not decode (`scan` leaves those
/// unchecked for control characters; the caller decodes `dataBase64` as base64, which
/// admits alphabet characters only).
fn scan_file_data<'a>(text: &'a str, id: i64) -> Option<BenchResult<Option<&'a str>>> {
    use scan::Token::{Close, Num, Open, Str};
    let (mut seen_id, mut data, mut in_result) = (None::<i64>, None, false);
    let mut visit = |path: &[&'a str], token: scan::Token<'a>| -> bool {
        match (path, token) {
            ([], Open(true) | Close) => true,
            (["id"], Num(n)) if seen_id.is_none() => n.parse().map(|n| seen_id = Some(n)).is_ok(),
            (["result"], Open(true)) if !in_result && data.is_none() => {
                in_result = true;
                true
            }
            (["result"], Close) => true,
            (["result", "dataBase64"], Str(d)) if data.is_none() => {
                data = Some(d);
                true
            }
            (["id" | "result" | "error" | "method", ..], _) => false,
            // A member FileData and Incoming ignore: any value but a long string.
            (_, token) => !matches!(token, Str(s) if s.len() > 256),
        }
    };
    scan::walk(text, &mut visit)?;
    match (seen_id, data) {
        (Some(n), _) if n != id => Some(Ok(None)),
        (Some(_), Some(d)) => Some(Ok(Some(d))),
        _ => None,
    }
}

fn median_rate(times: &mut [Duration], size: usize) -> f64 {
    times.sort();
    size as f64 / 1048576.0 / times[times.len() / 2].as_secs_f64()
}

fn file_io_floor(dir: &Path, size: usize) -> BenchResult<[f64; 2]> {
    let data = test_data(size);
    let path = dir.join("perf-floor.bin");
    let mut writes = Vec::new();
    let mut reads = Vec::new();
    for _ in 0..FILE_RUNS {
        let start = Instant::now();
        std::fs::write(&path, &data).map_err(|e| e.to_string())?;
        writes.push(start.elapsed());
        let start = Instant::now();
        let back = std::fs::read(&path).map_err(|e| e.to_string())?;
        reads.push(start.elapsed());
        if back.len() != data.len() {
            return Err("short read".into());
        }
    }
    let _ = std::fs::remove_file(&path);
    Ok([median_rate(&mut writes, size), median_rate(&mut reads, size)])
}

struct Crowd {
    wall: Duration,
    failures: usize,
    first_error: Option<String>,
    rss_open_kib: u64,
    rss_after_kib: u64,
    /// The slowest client's connect (TCP + websocket handshake), initialize, and the rest.
    slowest: [Duration; 3],
}

/// What each client of a crowd does once connected.
#[derive(Clone, Copy, PartialEq)]
enum Work {
    /// One echo round trip (the floor).
    EchoFloor,
    /// `initialize`, then `/bin/true` run to closed.
    BinTrue,
    /// `initialize`, then `echo conn-<i>` run to closed, its output counted.
    Print,
}

/// `CONNECTIONS` clients released at once, each doing `work`. Wall time runs from the
/// release until the last client is done; RSS is read while all are still open and after
/// all closed.
fn connections(server: &Server, work: Work) -> BenchResult<Crowd> {
    let echo = if work == Work::Print { find_program("echo")? } else { String::new() };
    let go = Arc::new(Barrier::new(CONNECTIONS + 1));
    let done = Arc::new(Barrier::new(CONNECTIONS + 1));
    let release = Arc::new(Barrier::new(CONNECTIONS + 1));
    let mut handles = Vec::with_capacity(CONNECTIONS);
    for i in 0..CONNECTIONS {
        let (go, done, release, addr) = (go.clone(), done.clone(), release.clone(), server.addr);
        let cwd = server.cwd;
        let echo = echo.clone();
        let handle = thread::Builder::new()
            .stack_size(CONNECTION_THREAD_STACK_BYTES)
            .spawn(move || {
                go.wait();
                let mut client = None;
                // When the websocket was up and when initialize was answered.
                let mut marks: [Option<Instant>; 2] = [None, None];
                let result = (|| -> BenchResult<()> {
                    let c = client.insert(Client { cwd, ..Client::connect(addr)? });
                    marks[0] = Some(Instant::now());
                    if work != Work::EchoFloor {
                        c.initialize()?;
                        marks[1] = Some(Instant::now());
                        let text = format!("conn-{i}");
                        let (argv, expected) = match work {
                            Work::Print => {
                                (vec![echo.as_str(), text.as_str()], text.len() as u64 + 1)
                            }
                            _ => (vec!["/bin/true"], 0),
                        };
                        let id = format!("crowd-{i}");
                        let deadline = Instant::now() + SCENARIO_DEADLINE;
                        let outcome = c.run_process(&id, &argv, deadline)?;
                        if outcome.exit_code != Some(0) {
                            return Err(format!("{id}: exited with {:?}", outcome.exit_code));
                        }
                        if outcome.bytes != expected {
                            return Err(format!(
                                "{id}: {} bytes of output, not {expected}",
                                outcome.bytes
                            ));
                        }
                    } else {
                        c.send("{\"id\":1,\"method\":\"echo\"}".into())?;
                        c.recv(|_| Ok(()))?;
                    }
                    Ok(())
                })();
                let finished = Instant::now();
                done.wait();
                // Connections stay open until the RSS with all of them has been read.
                release.wait();
                drop(client);
                (result, marks, finished)
            })
            .map_err(|e| format!("spawn client thread: {e}"))?;
        handles.push(handle);
    }
    go.wait();
    let start = Instant::now();
    done.wait();
    let rss_open_kib = server.rss_kib()?;
    release.wait();
    let mut failures = 0;
    let mut first_error = None;
    let mut last = start;
    let mut slowest = [Duration::ZERO; 3];
    for handle in handles {
        let (result, marks, finished) =
            handle.join().map_err(|_| "client thread panicked".to_string())?;
        last = last.max(finished);
        // Phase lengths: connect + websocket handshake, initialize, the rest.
        let connected = marks[0].unwrap_or(finished);
        let initialized = marks[1].unwrap_or(connected);
        let phases = [connected - start, initialized - connected, finished - initialized];
        for (slow, phase) in slowest.iter_mut().zip(phases) {
            *slow = (*slow).max(phase);
        }
        if let Err(e) = result {
            failures += 1;
            first_error.get_or_insert(e);
        }
    }
    let rss_after_kib = server.rss_kib()?;
    Ok(Crowd { wall: last - start, failures, first_error, rss_open_kib, rss_after_kib, slowest })
}

struct SlowRead {
    max_kib: u64,
    end_kib: u64,
    bytes: u64,
    elapsed: Duration,
    aborted: bool,
}

/// `cat /dev/zero` while the client reads about 1 MiB per 100 ms for 10 s; the server's
/// RSS is read at every tick. The connection is dropped at the end (the session detaches;
/// the server's shutdown kills the child).
fn slow_reader(server: &Server) -> BenchResult<SlowRead> {
    let cat = find_program("cat")?;
    let mut client = Client::connect_to(server)?;
    client.initialize()?;
    let start_id = client.start_process("slow", &[&cat, "/dev/zero"])?;
    let start = Instant::now();
    let mut result =
        SlowRead { max_kib: 0, end_kib: 0, bytes: 0, elapsed: Duration::ZERO, aborted: false };
    let mut scratch = Vec::new();
    // Output may precede the start response (the reference does that); it counts.
    let mut answered = false;
    while !answered {
        result.bytes += client.recv(|msg| match msg.method {
            Some("process/output") => decoded_len(msg.params.and_then(|p| p.chunk), &mut scratch),
            None if msg.id == Some(start_id) => {
                response(msg, "process/start")?;
                answered = true;
                Ok(0)
            }
            _ => Ok(0),
        })?;
    }
    let mut tick = start;
    while tick.duration_since(start) < SLOW_READ_DURATION {
        let target = result.bytes + SLOW_READ_BYTES_PER_TICK;
        while result.bytes < target {
            result.bytes += client.recv(|msg| match (msg.method, msg.params) {
                (Some("process/output"), Some(params)) => decoded_len(params.chunk, &mut scratch),
                _ => Ok(0),
            })?;
        }
        let rss = server.rss_kib()?;
        result.max_kib = result.max_kib.max(rss);
        result.end_kib = rss;
        if rss > RSS_ABORT_KIB {
            result.aborted = true;
            break;
        }
        // The reader is slow on purpose: it paces itself to the tick.
        tick += SLOW_READ_TICK;
        thread::sleep(tick.saturating_duration_since(Instant::now()));
    }
    result.elapsed = start.elapsed();
    Ok(result)
}

/// Samples a process's VmRSS every few milliseconds on a thread until stopped; the maximum
/// seen is the peak where VmHWM cannot be reset.
struct RssSampler {
    stop: Arc<AtomicBool>,
    handle: thread::JoinHandle<u64>,
}

impl RssSampler {
    fn start(pid: i32) -> RssSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = thread::spawn(move || {
            let mut max = 0;
            let deadline = Instant::now() + SCENARIO_DEADLINE;
            while !flag.load(Ordering::Relaxed) && Instant::now() < deadline {
                if let Ok(kib) = proc_status_kib(pid, "VmRSS:") {
                    max = max.max(kib);
                }
                // Periodic sampling, not waiting for an event.
                thread::sleep(RSS_SAMPLE_INTERVAL);
            }
            max
        });
        RssSampler { stop, handle }
    }

    fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().unwrap_or(0)
    }
}

// ---------------------------------------------------------------------------------------
// Scale rows (issue 19)
// ---------------------------------------------------------------------------------------

/// Processes of the `procs1000` row, each printing `PROC_OUTPUT_BYTES`.
const PROCS: usize = 1000;
const PROC_OUTPUT_BYTES: u64 = 64 << 10;
/// `process/start` requests the `procs1000` client keeps in flight while it reads.
const PROCS_WINDOW: usize = 64;
/// Room for the 1,000 (the entries of exited processes count until they are removed).
const PROCS_MAX_PROCESSES: &str = "1100";
/// Starts of the `true10k` row, after `TRUE_WARMUP` unmeasured ones.
const TRUE_STARTS: usize = 10_000;
/// The reference server takes ~45 ms a start: 10,000 would pass `TRUE_DEADLINE`.
const TRUE_STARTS_REFERENCE: usize = 1_000;
const TRUE_WARMUP: usize = 20;
/// The `true10k` loop's deadline (10,000 starts at ~1 ms each, on a loaded machine).
const TRUE_DEADLINE: Duration = Duration::from_secs(300);
/// How long the daemon gets to come back to its baseline fds and threads.
const SETTLE_DEADLINE: Duration = Duration::from_secs(10);
/// Poll interval of a /proc condition (there is no event to wait for).
const PROC_POLL: Duration = Duration::from_millis(10);

/// A copy of `target` with `extra` arguments before `--listen`.
fn with_args(target: &Target, extra: &[&str]) -> Target {
    Target {
        name: target.name.clone(),
        kind: target.kind,
        bin: target.bin.clone(),
        args: target.args.iter().cloned().chain(extra.iter().map(OsString::from)).collect(),
    }
}

/// Whether `target` is ours and its `--help` lists `flag` (a base revision may predate it).
fn supports_flag(target: &Target, flag: &str) -> bool {
    if target.kind != Kind::Ours {
        return false;
    }
    let Ok(mut child) = Command::new(&target.bin)
        .arg("--help")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
    else {
        return false;
    };
    let Some(mut out) = child.stdout.take() else { return false };
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut text = String::new();
        let _ = out.read_to_string(&mut text);
        let _ = tx.send(text);
    });
    let text = rx.recv_timeout(URL_LINE_TIMEOUT).unwrap_or_default();
    // Already exited after printing; a hung one is killed so the wait returns.
    let _ = child.kill();
    let _ = child.wait();
    text.contains(flag)
}

/// A target with each supported flag pair of `flags` added.
fn with_supported(target: &Target, flags: &[[&str; 2]]) -> Target {
    let extra: Vec<&str> =
        flags.iter().filter(|[flag, _]| supports_flag(target, flag)).flatten().copied().collect();
    with_args(target, &extra)
}

struct ManyProcs {
    wall: Duration,
    peak_kib: u64,
    received: u64,
    /// Expected minus received, summed over the processes that got less.
    lost: u64,
    /// Processes whose byte count is not exactly `PROC_OUTPUT_BYTES`.
    wrong: usize,
    first_wrong: Option<String>,
    /// Processes with a byte that is not the zero `/dev/zero` gives.
    nonzero: usize,
}

/// `procs1000`: `PROCS` processes of `head -c 65536 /dev/zero` started on one connection of
/// a fresh server (at most `PROCS_WINDOW` starts unanswered at once, so many run at the
/// same time), all output taken from the `process/output` notifications until every one is
/// closed. Wall time from the first start to the last close; the daemon's VmHWM over it.
fn many_processes(target: &Target) -> BenchResult<ManyProcs> {
    let head = find_program("head")?;
    let target = with_supported(target, &[["--max-processes", PROCS_MAX_PROCESSES]]);
    let (server, _) = launch(&target, None)?;
    let mut client = Client::connect_to(&server)?;
    client.initialize()?;
    let count = PROC_OUTPUT_BYTES.to_string();
    let argv = [head.as_str(), "-c", &count, "/dev/zero"];
    let mut got = vec![0u64; PROCS];
    let mut nonzero = vec![false; PROCS];
    let (mut started, mut answered, mut closed) = (0usize, 0usize, 0usize);
    let mut scratch = Vec::new();
    let sampler = RssSampler::start(server.pid);
    let exact_peak = server.reset_peak();
    let start = Instant::now();
    let deadline = start + SCENARIO_DEADLINE;
    while closed < PROCS {
        while started < PROCS && started - answered < PROCS_WINDOW {
            client.start_process(&format!("p{started}"), &argv)?;
            started += 1;
        }
        if Instant::now() >= deadline {
            return Err(format!("{closed} of {PROCS} processes closed before the deadline"));
        }
        client.recv(|msg| {
            let Some(method) = msg.method else {
                // Every response on this connection now answers a process/start.
                if msg.id.is_some() {
                    response(msg, "process/start")?;
                    answered += 1;
                }
                return Ok(());
            };
            let Some(params) = msg.params else { return Ok(()) };
            let index = params
                .process_id
                .and_then(|id| id.strip_prefix('p'))
                .and_then(|n| n.parse::<usize>().ok())
                .filter(|&i| i < PROCS);
            let Some(i) = index else { return Ok(()) };
            match method {
                "process/output" => {
                    got[i] += decoded_len(params.chunk, &mut scratch)?;
                    nonzero[i] |= scratch.iter().any(|&b| b != 0);
                }
                "process/closed" => closed += 1,
                _ => {}
            }
            Ok(())
        })?;
    }
    let wall = start.elapsed();
    let sampled = sampler.stop();
    let peak_kib = if exact_peak { server.peak_kib()?.max(sampled) } else { sampled };
    let wrong: Vec<usize> = (0..PROCS).filter(|&i| got[i] != PROC_OUTPUT_BYTES).collect();
    Ok(ManyProcs {
        wall,
        peak_kib,
        received: got.iter().sum(),
        lost: got.iter().map(|&g| PROC_OUTPUT_BYTES.saturating_sub(g)).sum(),
        wrong: wrong.len(),
        first_wrong: wrong.first().map(|&i| format!("p{i} sent {} bytes", got[i])),
        nonzero: nonzero.iter().filter(|&&n| n).count(),
    })
}

/// The floor of `procs1000`: the same `PROCS` commands spawned here with piped stdout, then
/// each pipe read to its end and the child reaped.
fn many_processes_floor() -> BenchResult<Duration> {
    let head = find_program("head")?;
    let count = PROC_OUTPUT_BYTES.to_string();
    let start = Instant::now();
    let mut children = Vec::with_capacity(PROCS);
    for _ in 0..PROCS {
        let child = Command::new(&head)
            .args(["-c", &count, "/dev/zero"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("spawn {head}: {e}"))?;
        children.push(child);
    }
    let mut buf = vec![0u8; 64 << 10];
    let mut total = 0u64;
    for child in &mut children {
        let mut out = child.stdout.take().expect("stdout was configured as a pipe");
        loop {
            match out.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => total += n as u64,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.to_string()),
            }
        }
        child.wait().map_err(|e| e.to_string())?;
    }
    let expected = PROCS as u64 * PROC_OUTPUT_BYTES;
    if total != expected {
        return Err(format!("read {total} of {expected} bytes"));
    }
    Ok(start.elapsed())
}

/// What the daemon holds: open fds, threads (`Threads:`), and of those the pool workers
/// (started on demand and kept; `worker` is their thread name).
#[derive(Clone, Copy, PartialEq, Debug)]
struct Census {
    fds: usize,
    threads: usize,
    workers: usize,
}

/// One count of a census, for its rows.
type CensusField = fn(&Census) -> usize;

fn census(pid: i32) -> BenchResult<Census> {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map_err(|e| format!("/proc/{pid}/fd: {e}"))?
        .count();
    let threads = proc_status_kib(pid, "Threads:")? as usize;
    let workers = thread_names(pid)?.iter().filter(|n| *n == "worker").count();
    Ok(Census { fds, threads, workers })
}

fn thread_names(pid: i32) -> BenchResult<Vec<String>> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
        .map_err(|e| format!("/proc/{pid}/task: {e}"))?;
    Ok(tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
        .map(|n| n.trim_end().to_owned())
        .collect())
}

/// Polls `/proc` until `done` holds or `deadline` passes; returns whether it held.
fn poll_until(deadline: Instant, mut done: impl FnMut() -> bool) -> bool {
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(PROC_POLL);
    }
}

/// `true10k`: `TRUE_STARTS` (`TRUE_STARTS_REFERENCE` for the reference) sequential
/// `/bin/true` runs to closed on one connection of a fresh server that drops a finished
/// process's entry at once (`--exited-retention-secs 0`, as the soak; the default keeps
/// each for 30 s, and 10,000 of them would pass `--max-processes`). The daemon's fds and
/// threads are counted before (after a warm-up, with no child and no per-process thread
/// left) and after (once back at the baseline, or at `SETTLE_DEADLINE`).
fn true_starts_rows(target: &Target, t: &mut Table) {
    let n = if target.kind == Kind::Reference { TRUE_STARTS_REFERENCE } else { TRUE_STARTS };
    let metric = format!("{n} sequential /bin/true -> closed");
    let floor = one_shot_floor();
    let ours = true_starts(target, n);
    let times = ours.as_ref().map(|r| r.times.clone()).map_err(Clone::clone);
    t.percentiles(&metric, &times, &floor, Bar::at_most("<= 2 ms", 2.0));
    let pick = |f: CensusField, after: bool| {
        ours.as_ref()
            .map(|r| Fig::count(f(if after { &r.after } else { &r.before })))
            .map_err(Clone::clone)
    };
    // Pool workers start on demand (up to `--workers`) and are kept, so they are counted
    // but not held to the baseline.
    let rows: [(&str, CensusField, bool); 3] = [
        ("open fds", |c| c.fds, true),
        ("threads", |c| c.threads, false),
        ("threads other than pool workers", |c| c.threads - c.workers, true),
    ];
    for (name, f, bar) in rows {
        t.row(
            &format!("after {n} starts: daemon {name} (floor = before)"),
            pick(f, true),
            Some(pick(f, false)),
        );
        if bar {
            t.bar(Bar::ratio_at_most("= before", 1.0));
        }
    }
    if let Ok(r) = &ours {
        t.notes.push(format!(
            "{n} starts: {} wall; before fds {} threads {} ({} pool workers), after \
             fds {} threads {} ({} pool workers){}",
            Fig::ms(r.wall),
            r.before.fds,
            r.before.threads,
            r.before.workers,
            r.after.fds,
            r.after.threads,
            r.after.workers,
            if r.settled { "" } else { "; not back at the baseline within 10 s" }
        ));
    }
}

struct TrueStarts {
    times: Vec<Duration>,
    wall: Duration,
    before: Census,
    after: Census,
    settled: bool,
}

fn true_starts(target: &Target, n: usize) -> BenchResult<TrueStarts> {
    let target =
        with_supported(target, &[["--exited-retention-secs", "0"], ["--max-processes", "20000"]]);
    let (server, _) = launch(&target, None)?;
    let pid = server.pid;
    let mut client = Client::connect_to(&server)?;
    client.initialize()?;
    let deadline = Instant::now() + TRUE_DEADLINE;
    let mut run = |i: usize| -> BenchResult<Duration> {
        let start = Instant::now();
        let outcome = client.run_process(&format!("t{i}"), &["/bin/true"], deadline)?;
        if outcome.exit_code != Some(0) {
            return Err(format!("/bin/true exited with {:?}", outcome.exit_code));
        }
        Ok(start.elapsed())
    };
    for i in 0..TRUE_WARMUP {
        run(i)?;
    }
    // Idle: no child, and no per-process thread (a drain thread can outlive its child).
    let quiet = || {
        !has_children(pid)
            && thread_names(pid).is_ok_and(|n| !n.iter().any(|n| n.starts_with("process-")))
    };
    if !poll_until(Instant::now() + SETTLE_DEADLINE, quiet) {
        return Err("not idle after the warm-up".into());
    }
    let before = census(pid)?;
    let start = Instant::now();
    let mut times = Vec::with_capacity(n);
    for i in TRUE_WARMUP..TRUE_WARMUP + n {
        times.push(run(i)?);
    }
    let wall = start.elapsed();
    times.sort();
    let mut after = before;
    let settled = poll_until(Instant::now() + SETTLE_DEADLINE, || {
        after = census(pid).unwrap_or(after);
        quiet()
            && after.fds <= before.fds
            && after.threads - after.workers <= before.threads - before.workers
    });
    Ok(TrueStarts { times, wall, before, after, settled })
}
