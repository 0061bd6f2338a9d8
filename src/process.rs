//! The processes of one session (PROTOCOL.md §4 and §5): spawning children (pipes or PTY),
//! draining their output on dedicated threads into per-process retention, numbering events,
//! pushing notifications through the session's `Notify` in `seq` order, `process/read` long
//! polls, the stdin queue, terminating and reaping whole process trees, and removing finished
//! entries after their retention time. It never touches sockets or sessions: notifications
//! leave through `Notify`, and the caller decides when a start response has been written.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::ffi::{CString, OsString};
use std::fmt::Write as _;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError, Weak};
use std::thread;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use serde::{Deserialize, Deserializer, Serialize};

use crate::b64;
use crate::config::Config;
use crate::envpolicy::{self, EnvPolicy};
use crate::pty;
use crate::recycle;
use crate::rpc::RpcError;
use crate::sandbox;

/// Largest single read from a child's output (§4.1.2): one event per read.
const READ_CHUNK_BYTES: usize = 64 << 10;
/// Reads at least this large give their buffer to retention instead of a copy (smaller
/// ones are copied, so a retained chunk never holds much more memory than its length).
const HANDOFF_MIN_BYTES: usize = READ_CHUNK_BYTES / 2;
/// Capacity given to the pipe of a child that keeps it full (see `grow_pipe`).
const BUSY_PIPE_BYTES: libc::c_int = 1 << 20;
/// Bytes accepted for stdin but not yet written to the child (§10).
const STDIN_QUEUE_BYTES: usize = 8 << 20;
/// How long `process/terminate` waits for the killed child to be reaped.
const TERMINATE_REAP_WAIT: Duration = Duration::from_secs(5);
/// How long `kill_all` waits for killed children to be reaped.
const KILL_ALL_WAIT: Duration = Duration::from_secs(3);
/// How long output may pile up unsent while the start response is still being written,
/// before the reader stops reading (and so slows the child) until it is announced.
const ANNOUNCE_WAIT: Duration = Duration::from_secs(10);
/// How long the exit event waits for the output streams to reach EOF after the child was
/// reaped (output read later still gets later numbers, §4.2).
const EXIT_DRAIN_GRACE: Duration = Duration::from_millis(50);
/// Long-lived threads that fork children (see `spawn_on_spawner`).
const SPAWNER_THREADS: usize = 8;
/// Stack the cloned child runs on until exec (a few libc calls).
const CHILD_STACK_BYTES: usize = 64 << 10;
/// Stack of the per-process I/O threads: they hold their buffers on the heap.
const IO_THREAD_STACK_BYTES: usize = 128 << 10;
/// Sweeps over `/proc` when killing a session: a member may fork while it is being killed.
const KILL_PASSES: usize = 4;
/// PATH used for lookup when neither the child environment nor the server has one
/// (the same fallback as glibc's `execvp`).
const DEFAULT_PATH: &str = "/bin:/usr/bin";

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Waits on `cond` while `keep_waiting` holds, until `deadline`; true if it stopped holding.
fn wait_while<'a, T>(
    cond: &Condvar,
    guard: MutexGuard<'a, T>,
    deadline: Instant,
    mut keep_waiting: impl FnMut(&mut T) -> bool,
) -> (MutexGuard<'a, T>, bool) {
    let timeout = deadline.saturating_duration_since(Instant::now());
    let (mut guard, _) = cond
        .wait_timeout_while(guard, timeout, &mut keep_waiting)
        .unwrap_or_else(PoisonError::into_inner);
    let done = !keep_waiting(&mut guard);
    (guard, done)
}

// ---------------------------------------------------------------------------------------------
// Wire types (§4)
// ---------------------------------------------------------------------------------------------

/// Where a session's notifications go. Implemented by the session code.
pub trait Notify: Send + Sync {
    /// Sends one server notification — a complete JSON text such as
    /// `{"method":"process/output","params":{…}}` (never a "jsonrpc" member) — to the
    /// connection the session is attached to. It blocks while that connection's socket is full
    /// (the §5 backpressure that slows the child); it returns at once, dropping the message,
    /// while the session is detached.
    fn notify(&self, message: String);
}

fn null_as_false<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    Ok(Option::<bool>::deserialize(d)?.unwrap_or(false))
}

fn base64_bytes<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    let text = String::deserialize(d)?;
    BASE64
        .decode(text.as_bytes())
        .map_err(|e| serde::de::Error::custom(format!("invalid base64: {e}")))
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StartParams {
    pub process_id: String,
    pub argv: Vec<String>,
    pub cwd: String,
    pub env: HashMap<String, String>,
    pub tty: bool,
    #[serde(default, deserialize_with = "null_as_false")]
    pub pipe_stdin: bool,
    #[serde(default)]
    pub arg0: Option<String>,
    #[serde(default)]
    pub env_policy: Option<EnvPolicy>,
    /// Issue 13: the filesystem sandbox context (UPSTREAM-0.171.md §5).
    #[serde(default)]
    pub sandbox: Option<serde_json::Value>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StartResponse {
    pub process_id: String,
    /// Issue 13: `"linuxSeccomp"` when confined; absent (for now) when not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sandbox_type: Option<&'static str>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReadParams {
    pub process_id: String,
    pub after_seq: Option<u64>,
    pub max_bytes: Option<u64>,
    pub wait_ms: Option<u64>,
}

#[derive(Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ChunkOut {
    pub seq: u64,
    pub stream: Stream,
    pub chunk: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReadResponse {
    pub chunks: Vec<ChunkOut>,
    pub next_seq: u64,
    pub exited: bool,
    pub exit_code: Option<i32>,
    /// Extension (§4.2): the name of the signal that killed the child; absent otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signal: Option<String>,
    pub closed: bool,
    /// Always null in v1.
    pub failure: Option<String>,
    /// Issue 13: for a confined process, whether it likely hit a sandbox denial.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sandbox_denied: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WriteParams {
    pub process_id: String,
    #[serde(deserialize_with = "base64_bytes")]
    pub chunk: Vec<u8>,
}

#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum WriteStatus {
    Accepted,
    UnknownProcess,
    Starting,
    StdinClosed,
}

#[derive(Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct WriteResponse {
    pub status: WriteStatus,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TerminateParams {
    pub process_id: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TerminateResponse {
    pub running: bool,
}

#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    Stdout,
    Stderr,
    Pty,
}

#[derive(Serialize)]
struct Notification<P> {
    method: &'static str,
    params: P,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ExitedParams<'a> {
    process_id: &'a str,
    seq: u64,
    exit_code: i32,
    #[serde(skip_serializing_if = "Option::is_none")]
    signal: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sandbox_denied: Option<bool>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ClosedParams<'a> {
    process_id: &'a str,
    seq: u64,
}

fn encode<P: Serialize>(method: &'static str, params: P) -> String {
    serde_json::to_string(&Notification { method, params })
        .expect("notification params are plain strings and integers")
}

/// A `process/output` notification, written by hand rather than through serde: the chunk is
/// base64, which needs no JSON escaping, and serde_json would scan and copy its ~87 KiB once
/// more per chunk (the hottest loop of streaming). `id_json` is the process id as a JSON
/// string literal. Same member order as the derived encoding of the other notifications.
fn output_message(id_json: &str, seq: u64, stream: Stream, bytes: &[u8]) -> String {
    let stream = match stream {
        Stream::Stdout => "stdout",
        Stream::Stderr => "stderr",
        Stream::Pty => "pty",
    };
    const PREFIX: &str = r#"{"method":"process/output","params":{"processId":"#;
    // Room for the fixed text, a u64 and the padded base64 of `bytes`.
    let capacity = PREFIX.len() + id_json.len() + 64 + bytes.len().div_ceil(3) * 4;
    let mut message = recycle::string(capacity);
    message.push_str(PREFIX);
    message.push_str(id_json);
    // Writing into a String cannot fail.
    let _ = write!(message, r#","seq":{seq},"stream":"{stream}","chunk":""#);
    b64::encode_into(bytes, &mut message);
    message.push_str("\"}}");
    message
}

// ---------------------------------------------------------------------------------------------
// Exit status and signal names (§4.2)
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug, PartialEq, Eq)]
struct Exit {
    code: i32,
    signal: Option<String>,
}

/// Conventional Linux names of signals 1..=31; others are `SIG<n>`.
pub fn signal_name(signal: i32) -> String {
    const NAMES: [&str; 31] = [
        "SIGHUP",
        "SIGINT",
        "SIGQUIT",
        "SIGILL",
        "SIGTRAP",
        "SIGABRT",
        "SIGBUS",
        "SIGFPE",
        "SIGKILL",
        "SIGUSR1",
        "SIGSEGV",
        "SIGUSR2",
        "SIGPIPE",
        "SIGALRM",
        "SIGTERM",
        "SIGSTKFLT",
        "SIGCHLD",
        "SIGCONT",
        "SIGSTOP",
        "SIGTSTP",
        "SIGTTIN",
        "SIGTTOU",
        "SIGURG",
        "SIGXCPU",
        "SIGXFSZ",
        "SIGVTALRM",
        "SIGPROF",
        "SIGWINCH",
        "SIGIO",
        "SIGPWR",
        "SIGSYS",
    ];
    usize::try_from(signal)
        .ok()
        .and_then(|n| n.checked_sub(1))
        .and_then(|i| NAMES.get(i))
        .map_or_else(|| format!("SIG{signal}"), |name| (*name).to_string())
}

fn exit_from_status(status: libc::c_int) -> Exit {
    if libc::WIFEXITED(status) {
        Exit { code: libc::WEXITSTATUS(status), signal: None }
    } else if libc::WIFSIGNALED(status) {
        let signal = libc::WTERMSIG(status);
        Exit { code: 128 + signal, signal: Some(signal_name(signal)) }
    } else {
        Exit { code: -1, signal: None }
    }
}

// ---------------------------------------------------------------------------------------------
// Retention (§4.3, §4.4)
// ---------------------------------------------------------------------------------------------

struct Retained {
    seq: u64,
    stream: Stream,
    bytes: Vec<u8>,
}

/// The retained output chunks of one process, oldest first, at most `limit` payload bytes
/// (a single chunk larger than the limit is kept alone, so the newest output stays readable).
struct Retention {
    chunks: VecDeque<Retained>,
    bytes: usize,
    limit: usize,
}

impl Retention {
    fn new(limit: usize) -> Self {
        Retention { chunks: VecDeque::new(), bytes: 0, limit }
    }

    /// Retains `bytes`, evicting the oldest chunks as needed; returns one evicted buffer for
    /// the caller to read into again, so steady streaming allocates nothing per chunk.
    fn push(&mut self, seq: u64, stream: Stream, bytes: Vec<u8>) -> Option<Vec<u8>> {
        let mut spare: Option<Vec<u8>> = None;
        while !self.chunks.is_empty() && self.bytes + bytes.len() > self.limit {
            if let Some(old) = self.chunks.pop_front() {
                self.bytes -= old.bytes.len();
                if spare.as_ref().is_none_or(|s| s.capacity() < old.bytes.capacity()) {
                    spare = Some(old.bytes);
                }
            }
        }
        self.bytes += bytes.len();
        self.chunks.push_back(Retained { seq, stream, bytes });
        spare
    }

    fn has_after(&self, after_seq: u64) -> bool {
        self.chunks.back().is_some_and(|c| c.seq > after_seq)
    }

    /// Chunks with `seq > after_seq` under the §4.3 `maxBytes` rule: the first is always
    /// included; stop before a chunk that would take the total over `max_bytes`, and once the
    /// total reaches it.
    fn page(&self, after_seq: u64, max_bytes: Option<u64>) -> Vec<&Retained> {
        let first = self.chunks.partition_point(|c| c.seq <= after_seq);
        let mut total: u64 = 0;
        let mut page = Vec::new();
        for chunk in self.chunks.range(first..) {
            let len = chunk.bytes.len() as u64;
            if let (Some(max), false) = (max_bytes, page.is_empty()) {
                if total >= max || total + len > max {
                    break;
                }
            }
            total += len;
            page.push(chunk);
        }
        page
    }
}

// ---------------------------------------------------------------------------------------------
// One process
// ---------------------------------------------------------------------------------------------

enum Event {
    Output(Stream, Vec<u8>),
    StreamEnd,
    Exit(Exit),
}

struct State {
    next_seq: u64,
    retention: Retention,
    /// Output streams not yet at EOF.
    open_streams: usize,
    /// The child has been reaped (its pid is free from then on).
    reaped: bool,
    /// The exit event, once numbered.
    exit: Option<Exit>,
    closed_at: Option<Instant>,
    /// The start response has been written: notifications may go out.
    announced: bool,
    /// Numbered notifications not yet handed to the sink, in `seq` order.
    pending: VecDeque<String>,
    pending_bytes: usize,
}

struct Proc {
    id: String,
    /// `id` as a JSON string literal, for the hand-built output notifications.
    id_json: String,
    /// Also the process group id and session id of the child (it is a session leader).
    pid: libc::pid_t,
    sink: Arc<dyn Notify>,
    stdin: Option<Arc<StdinQueue>>,
    state: Mutex<State>,
    /// Signalled on every event, on reaping and on announcement.
    changed: Condvar,
    /// Held while numbering and sending, so that the stdout and stderr threads and the waiter
    /// send in `seq` order; `process/read` takes only `state`, so it never waits behind a send
    /// that is stalled on backpressure.
    emitting: Mutex<()>,
    table: Weak<Mutex<Table>>,
    live: Arc<AtomicUsize>,
    exited_retention: Duration,
    /// Issue 13: run under a sandbox confinement; its output is watched for denials.
    confined: bool,
    denial_mentioned: AtomicBool,
}

impl Proc {
    /// Numbers `event` (and the closed event it may complete), retains output, and sends the
    /// notifications once the start response is out.
    /// Returns a buffer that retention no longer needs, if any.
    fn emit(self: &Arc<Self>, event: Event) -> Option<Vec<u8>> {
        let _emitting = lock(&self.emitting);
        // Encoded before taking the state lock, which `process/read` waits on. Only `emit`
        // numbers events, under the emitting lock we hold, so the next number is stable.
        let output = match &event {
            Event::Output(stream, bytes) => {
                let seq = lock(&self.state).next_seq;
                Some((seq, output_message(&self.id_json, seq, *stream, bytes)))
            }
            _ => None,
        };
        let mut spare = None;
        let to_send = {
            let mut state = lock(&self.state);
            match event {
                Event::Output(stream, bytes) => {
                    let seq = take_seq(&mut state);
                    let (numbered, message) = output.expect("output events are encoded above");
                    debug_assert_eq!(seq, numbered, "only emit numbers events");
                    spare = state.retention.push(seq, stream, bytes);
                    queue(&mut state, message);
                }
                Event::StreamEnd => state.open_streams -= 1,
                Event::Exit(exit) => {
                    let seq = take_seq(&mut state);
                    let params = ExitedParams {
                        process_id: &self.id,
                        seq,
                        exit_code: exit.code,
                        signal: exit.signal.as_deref(),
                        sandbox_denied: self.sandbox_denied(&exit),
                    };
                    let message = encode("process/exited", params);
                    state.exit = Some(exit);
                    queue(&mut state, message);
                }
            }
            if state.exit.is_some() && state.open_streams == 0 && state.closed_at.is_none() {
                let seq = take_seq(&mut state);
                let message = encode("process/closed", ClosedParams { process_id: &self.id, seq });
                queue(&mut state, message);
                state.closed_at = Some(Instant::now());
                // An entry removed before its start response went out could not be
                // announced; `announce` schedules the removal in that case.
                if state.announced {
                    schedule_removal(self, Instant::now() + self.exited_retention);
                }
            }
            self.changed.notify_all();
            // Until the start response is written nothing may be sent; bound what piles up
            // meanwhile by not reading further (which slows the child like backpressure).
            let limit = state.retention.limit.max(READ_CHUNK_BYTES);
            let deadline = Instant::now() + ANNOUNCE_WAIT;
            (state, _) = wait_while(&self.changed, state, deadline, |s| {
                !s.announced && s.pending_bytes > limit
            });
            if state.announced {
                state.pending_bytes = 0;
                std::mem::take(&mut state.pending)
            } else {
                VecDeque::new()
            }
        };
        for message in to_send {
            self.sink.notify(message);
        }
        spare
    }

    fn announce(self: &Arc<Self>) {
        let closed_at = {
            let mut state = lock(&self.state);
            state.announced = true;
            state.closed_at
        };
        self.changed.notify_all();
        if let Some(closed_at) = closed_at {
            schedule_removal(self, closed_at + self.exited_retention);
        }
        // A reader may be sending right now; taking the emit lock keeps our flush in order.
        let _emitting = lock(&self.emitting);
        let to_send = {
            let mut state = lock(&self.state);
            state.pending_bytes = 0;
            std::mem::take(&mut state.pending)
        };
        for message in to_send {
            self.sink.notify(message);
        }
    }

    /// SIGKILLs the child's tree unless it is over. Under the state lock, so the waiter
    /// cannot reap the leader (freeing its pid for reuse) in between.
    /// Issue 13: `sandboxDenied` for an exit of this process (None when not confined).
    fn sandbox_denied(&self, exit: &Exit) -> Option<bool> {
        let mentioned = self.denial_mentioned.load(Ordering::Relaxed);
        let sigsys = exit.signal.as_deref() == Some("SIGSYS");
        self.confined.then(|| sandbox::is_likely_denied(exit.code, sigsys, mentioned))
    }

    fn kill_tree(&self) -> bool {
        let state = lock(&self.state);
        let running = !state.reaped;
        if state.closed_at.is_none() {
            kill_session(self.pid);
        }
        running
    }

    fn close_stdin(&self) {
        if let Some(stdin) = &self.stdin {
            stdin.close();
        }
    }
}

fn take_seq(state: &mut State) -> u64 {
    let seq = state.next_seq;
    state.next_seq += 1;
    seq
}

fn queue(state: &mut State, message: String) {
    state.pending_bytes += message.len();
    state.pending.push_back(message);
}

/// SIGKILL to the process group `sid`, then to every process whose session is `sid`
/// (job-control shells move background jobs into groups of their own, §4.7).
fn kill_session(sid: libc::pid_t) {
    // SAFETY: kill(2) with a negative pid signals a process group; no memory is involved.
    unsafe { libc::kill(-sid, libc::SIGKILL) };
    for _ in 0..KILL_PASSES {
        let members = session_members(sid);
        if members.is_empty() {
            break;
        }
        for pid in members {
            // SAFETY: as above, for one process.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

/// Live (non-zombie) processes whose session id is `sid`, from `/proc/<pid>/stat`.
fn session_members(sid: libc::pid_t) -> Vec<libc::pid_t> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<libc::pid_t>().ok())
        .filter(|&pid| {
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                return false;
            };
            // Fields after the parenthesised command (which may itself hold ')' or spaces):
            // state, ppid, pgrp, session.
            let Some((_, rest)) = stat.rsplit_once(')') else {
                return false;
            };
            let fields: Vec<&str> = rest.split_whitespace().collect();
            fields.len() > 3 && fields[0] != "Z" && fields[3].parse() == Ok(sid)
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Stdin queue (§4.5)
// ---------------------------------------------------------------------------------------------

struct StdinState {
    chunks: VecDeque<Vec<u8>>,
    /// Accepted bytes not yet written, including a chunk being written.
    bytes: usize,
    closed: bool,
}

struct StdinQueue {
    state: Mutex<StdinState>,
    changed: Condvar,
}

impl StdinQueue {
    fn new() -> Self {
        let state = StdinState { chunks: VecDeque::new(), bytes: 0, closed: false };
        StdinQueue { state: Mutex::new(state), changed: Condvar::new() }
    }

    /// Queues `bytes` for the child; `false` once stdin is known closed or the queue is full.
    fn push(&self, bytes: Vec<u8>) -> bool {
        let mut state = lock(&self.state);
        if state.closed || state.bytes + bytes.len() > STDIN_QUEUE_BYTES {
            return false;
        }
        state.bytes += bytes.len();
        state.chunks.push_back(bytes);
        self.changed.notify_all();
        true
    }

    /// Stdin is known closed: later writes fail and queued bytes are dropped.
    fn close(&self) {
        let mut state = lock(&self.state);
        state.closed = true;
        state.chunks.clear();
        self.changed.notify_all();
    }

    /// The writer thread: delivers queued chunks in order until stdin is closed or fails.
    fn run(&self, mut stdin: File) {
        loop {
            let chunk = {
                let mut state = lock(&self.state);
                loop {
                    if state.closed {
                        return;
                    }
                    if let Some(chunk) = state.chunks.pop_front() {
                        break chunk;
                    }
                    state = self.changed.wait(state).unwrap_or_else(PoisonError::into_inner);
                }
            };
            let result = stdin.write_all(&chunk);
            lock(&self.state).bytes -= chunk.len();
            if result.is_err() {
                // EPIPE (or EIO on a hung-up PTY): the child will never read again.
                self.close();
                return;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Spawning
// ---------------------------------------------------------------------------------------------

/// Everything the child needs between clone and exec, prepared by the parent: the child
/// shares the parent's memory and must not allocate or take locks.
struct SpawnPlan {
    program: CString,
    argv: Vec<CString>,
    envp: Vec<CString>,
    cwd: CString,
    /// Descriptors (all >= 3, close-on-exec) to install as the child's 0, 1 and 2; the
    /// caller keeps them open until the spawn returns.
    stdio: [RawFd; 3],
    /// Make stdin (a PTY slave) the controlling terminal.
    tty: bool,
    /// Issue 13: applied in the child right before chdir and exec.
    confinement: Option<sandbox::Confinement>,
}

type SpawnJob = (SpawnPlan, mpsc::SyncSender<io::Result<libc::pid_t>>);

/// Children are created by long-lived spawner threads because Linux delivers
/// PR_SET_PDEATHSIG when the *thread* that created the child exits, not the process: a pool
/// worker that ends would otherwise kill the children it started. The spawners never exit.
/// There are several because a spawn occupies its thread until the child has exec'd, and
/// under load that is mostly waiting for the child to be scheduled.
fn spawn_on_spawner(plan: SpawnPlan) -> io::Result<libc::pid_t> {
    static SPAWNER: OnceLock<Option<Mutex<mpsc::Sender<SpawnJob>>>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (jobs, receiver) = mpsc::channel::<SpawnJob>();
        let receiver = Arc::new(Mutex::new(receiver));
        let mut started = 0;
        for _ in 0..SPAWNER_THREADS {
            let receiver = Arc::clone(&receiver);
            let body = move || loop {
                // The lock is held only to take a job, never while spawning.
                let job = lock(&receiver).recv();
                let Ok((plan, reply)) = job else { return };
                let _ = reply.send(clone_and_exec(&plan));
            };
            match thread::Builder::new()
                .name("spawner".into())
                .stack_size(IO_THREAD_STACK_BYTES)
                .spawn(body)
            {
                Ok(_) => started += 1,
                Err(e) => log::error!("cannot start a spawner thread: {e}"),
            }
        }
        (started > 0).then(|| Mutex::new(jobs))
    });
    let Some(jobs) = spawner else {
        return Err(io::Error::other("spawner thread unavailable"));
    };
    let (reply, result) = mpsc::sync_channel(1);
    lock(jobs).send((plan, reply)).map_err(|_| io::Error::other("spawner thread stopped"))?;
    result.recv().map_err(|_| io::Error::other("spawner thread stopped"))?
}

/// What the child reads (and writes its failure into) while it shares our memory.
struct ChildArgs<'a> {
    plan: &'a SpawnPlan,
    argv: &'a [*const libc::c_char],
    envp: &'a [*const libc::c_char],
    parent: libc::pid_t,
    /// The errno of the step that failed, or 0 once exec succeeded.
    error: libc::c_int,
}

/// Starts the child with `clone(CLONE_VM | CLONE_VFORK)`, the way posix_spawn does: unlike
/// fork, nothing of our address space is copied, which with hundreds of threads (each a
/// stack mapping) made every fork cost milliseconds. We are suspended until the child has
/// exec'd or given up, so its failure is known when this returns, and a failed child is
/// reaped here.
fn clone_and_exec(plan: &SpawnPlan) -> io::Result<libc::pid_t> {
    let pointers = |strings: &[CString]| -> Vec<*const libc::c_char> {
        strings.iter().map(|s| s.as_ptr()).chain(std::iter::once(std::ptr::null())).collect()
    };
    let (argv, envp) = (pointers(&plan.argv), pointers(&plan.envp));
    let mut args = ChildArgs {
        plan,
        argv: &argv,
        envp: &envp,
        parent: std::process::id() as libc::pid_t,
        error: 0,
    };
    let mut stack = vec![0u8; CHILD_STACK_BYTES];
    // SAFETY: the stack grows down from its (16-byte aligned) top; `stack` and `args` outlive
    // the child's use of them, since CLONE_VFORK suspends us until it execs or exits. All
    // signals are blocked around clone so that no handler of ours runs in the child before it
    // has reset the dispositions; the previous mask is restored right after.
    let pid = unsafe {
        let top = stack.as_mut_ptr().add(CHILD_STACK_BYTES);
        let top = top.sub(top as usize % 16);
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut previous: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut previous);
        let pid = libc::clone(
            child_main,
            top.cast(),
            libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
            (&mut args as *mut ChildArgs).cast(),
        );
        libc::pthread_sigmask(libc::SIG_SETMASK, &previous, std::ptr::null_mut());
        pid
    };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the child wrote `error` before exec or exit, and no longer runs on our memory.
    let error = unsafe { std::ptr::read_volatile(&args.error) };
    if error != 0 {
        let mut status = 0;
        // SAFETY: reaping our own child, which has exited.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        return Err(io::Error::from_raw_os_error(error));
    }
    Ok(pid)
}

/// The child between clone and exec: only async-signal-safe calls, no allocation, no locks
/// (it shares the parent's memory). It becomes a session leader (with the PTY as controlling
/// terminal), dies with the server (PR_SET_PDEATHSIG), gets default signal dispositions and
/// an empty mask, and keeps no descriptor beyond its stdio.
extern "C" fn child_main(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the parent's `ChildArgs`, alive while the parent is suspended.
    let args = unsafe { &mut *arg.cast::<ChildArgs>() };
    let plan = args.plan;
    // SAFETY: each call is async-signal-safe and acts only on this (child) process.
    unsafe {
        let fail = |args: &mut ChildArgs| -> libc::c_int {
            let errno = *libc::__errno_location();
            std::ptr::write_volatile(
                &mut args.error,
                if errno == 0 { libc::EINVAL } else { errno },
            );
            libc::_exit(127)
        };
        for signal in 1..=64 {
            if signal != libc::SIGKILL && signal != libc::SIGSTOP {
                // Fails harmlessly for numbers the C library reserves.
                libc::signal(signal, libc::SIG_DFL);
            }
        }
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        if libc::pthread_sigmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut()) != 0 {
            return fail(args);
        }
        if libc::setsid() < 0 {
            return fail(args);
        }
        for (target, &fd) in plan.stdio.iter().enumerate() {
            // The sources are >= 3, so dup2 always makes a fresh (inheritable) descriptor.
            if libc::dup2(fd, target as libc::c_int) < 0 {
                return fail(args);
            }
        }
        if plan.tty && libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
            return fail(args);
        }
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) < 0 {
            return fail(args);
        }
        if libc::getppid() != args.parent {
            // The server died before the death signal was armed.
            libc::_exit(137);
        }
        // Issue 13: mounts, no-new-privs, Landlock, seccomp; raw syscalls on prepared data.
        if let Some(confinement) = &plan.confinement {
            let errno = confinement.apply();
            if errno != 0 {
                *libc::__errno_location() = errno;
                return fail(args);
            }
        }
        if libc::chdir(plan.cwd.as_ptr()) < 0 {
            return fail(args);
        }
        // Everything we open is close-on-exec, but make sure no descriptor beyond stdio
        // leaks into the child, whoever opened it.
        let marked =
            libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, libc::CLOSE_RANGE_CLOEXEC);
        if marked != 0 {
            let mut limit: libc::rlimit = std::mem::zeroed();
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
            let top = limit.rlim_cur.min(1 << 16) as libc::c_int;
            for fd in 3..top {
                libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
            }
        }
        libc::execve(plan.program.as_ptr(), args.argv.as_ptr(), args.envp.as_ptr());
        fail(args)
    }
}

/// The program to execute for `argv0`: itself if it holds a `/`, else the first executable
/// file named so in the child environment's PATH, or the server's when the child has none.
fn resolve_program(
    argv0: &str,
    env: &BTreeMap<OsString, OsString>,
    cwd: &Path,
) -> io::Result<PathBuf> {
    if argv0.contains('/') {
        return Ok(PathBuf::from(argv0));
    }
    let path = env
        .get(&OsString::from("PATH"))
        .cloned()
        .or_else(|| std::env::var_os("PATH"))
        .unwrap_or_else(|| DEFAULT_PATH.into());
    let mut denied = false;
    for dir in std::env::split_paths(&path) {
        // An empty PATH element means the current directory, which for the child is `cwd`.
        let candidate = cwd.join(dir).join(argv0);
        let Ok(meta) = std::fs::metadata(&candidate) else {
            continue;
        };
        if meta.is_file() && meta.permissions().mode() & 0o111 != 0 {
            return Ok(candidate);
        }
        denied = true;
    }
    Err(io::Error::from_raw_os_error(if denied { libc::EACCES } else { libc::ENOENT }))
}

/// What std reports for an argument, variable or path holding a NUL byte.
fn nul_error() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, "nul byte found in provided data")
}

/// A close-on-exec pipe: (read end, write end).
fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: pipe2 fills two descriptors that we then own.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors are fresh and owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// `fd` moved to a number >= 3 (close-on-exec), so that installing the child's stdio with
/// dup2 never finds a source already in place (which would keep it close-on-exec) nor
/// overwrites a source not yet installed. Only a server started with stdio closed needs it.
fn above_stdio(fd: OwnedFd) -> io::Result<OwnedFd> {
    if fd.as_raw_fd() > 2 {
        return Ok(fd);
    }
    // SAFETY: duplicating a descriptor we own into a fresh one we then own.
    let moved = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 3) };
    if moved < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    Ok(unsafe { OwnedFd::from_raw_fd(moved) })
}

fn spawn_thread(name: &str, body: impl FnOnce() + Send + 'static) -> io::Result<()> {
    thread::Builder::new().name(name.into()).stack_size(IO_THREAD_STACK_BYTES).spawn(body).map(drop)
}

// ---------------------------------------------------------------------------------------------
// Finished-process removal (§4.6)
// ---------------------------------------------------------------------------------------------

struct Removal {
    at: Instant,
    proc: Weak<Proc>,
}

struct Removals {
    queue: Mutex<Vec<Removal>>,
    changed: Condvar,
}

/// One daemon-wide timer thread removes finished entries when their retention ends.
fn removals() -> &'static Removals {
    static REMOVALS: OnceLock<Removals> = OnceLock::new();
    REMOVALS.get_or_init(|| {
        let started = thread::Builder::new().name("expiry".into()).spawn(|| {
            let removals = removals();
            loop {
                let due = {
                    let mut queue = lock(&removals.queue);
                    let now = Instant::now();
                    let (due, keep): (Vec<_>, Vec<_>) =
                        std::mem::take(&mut *queue).into_iter().partition(|r| r.at <= now);
                    *queue = keep;
                    if due.is_empty() {
                        match queue.iter().map(|r| r.at).min() {
                            Some(at) => drop(
                                removals
                                    .changed
                                    .wait_timeout(queue, at.saturating_duration_since(now))
                                    .unwrap_or_else(PoisonError::into_inner),
                            ),
                            None => drop(
                                removals
                                    .changed
                                    .wait(queue)
                                    .unwrap_or_else(PoisonError::into_inner),
                            ),
                        }
                        continue;
                    }
                    due
                };
                for removal in due {
                    if let Some(proc) = removal.proc.upgrade() {
                        remove_entry(&proc);
                    }
                }
            }
        });
        if let Err(e) = started {
            log::error!("cannot start the process expiry thread: {e}");
        }
        Removals { queue: Mutex::new(Vec::new()), changed: Condvar::new() }
    })
}

fn schedule_removal(proc: &Arc<Proc>, at: Instant) {
    let removals = removals();
    lock(&removals.queue).push(Removal { at, proc: Arc::downgrade(proc) });
    removals.changed.notify_all();
}

/// Removes `proc`'s table entry if it is still that process's, freeing the live count.
fn remove_entry(proc: &Arc<Proc>) {
    let Some(table) = proc.table.upgrade() else {
        return;
    };
    let mut table = lock(&table);
    if matches!(table.slots.get(&proc.id), Some(Slot::Running(p)) if Arc::ptr_eq(p, proc)) {
        table.slots.remove(&proc.id);
        proc.live.fetch_sub(1, Ordering::SeqCst);
    }
}

// ---------------------------------------------------------------------------------------------
// The session's table
// ---------------------------------------------------------------------------------------------

enum Slot {
    /// Registered, still spawning; the token tells one start from a later one with the same id.
    Starting(u64),
    Running(Arc<Proc>),
}

#[derive(Default)]
struct Table {
    slots: HashMap<String, Slot>,
    next_token: u64,
    /// `kill_all` ran: a start still spawning must kill what it started.
    killed: bool,
}

enum Lookup {
    Unknown,
    Starting,
    Running(Arc<Proc>),
}

/// All processes of one session (process ids are scoped to a session).
pub struct Processes {
    config: Arc<Config>,
    live: Arc<AtomicUsize>,
    sink: Arc<dyn Notify>,
    table: Arc<Mutex<Table>>,
}

impl Processes {
    /// `live` is the daemon-wide count of registered processes (all sessions), checked against
    /// `config.max_processes` at start and decremented when an entry is removed.
    pub fn new(config: Arc<Config>, live: Arc<AtomicUsize>, sink: Arc<dyn Notify>) -> Processes {
        Processes { config, live, sink, table: Arc::default() }
    }

    fn lookup(&self, id: &str) -> Lookup {
        match lock(&self.table).slots.get(id) {
            None => Lookup::Unknown,
            Some(Slot::Starting(_)) => Lookup::Starting,
            Some(Slot::Running(proc)) => Lookup::Running(proc.clone()),
        }
    }

    /// `process/start` (§4.1): the checks in contract order, then spawn and start draining.
    pub fn start(&self, p: StartParams) -> Result<StartResponse, RpcError> {
        if p.argv.is_empty() {
            return Err(RpcError::invalid_params("argv must not be empty"));
        }
        if !Path::new(&p.cwd).is_absolute() {
            return Err(RpcError::invalid_params("cwd must be an absolute path"));
        }
        // Issue 13: the sandbox is decoded and prepared before anything is reserved.
        let policy = sandbox::parse(p.sandbox.as_ref())?;
        let confinement = if policy.is_unrestricted() {
            None
        } else {
            Some(sandbox::Confinement::prepare(&policy)?)
        };
        let sandbox_type = confinement.as_ref().map(|_| sandbox::SANDBOX_TYPE);
        let id = p.process_id.clone();
        let token = {
            let mut table = lock(&self.table);
            if table.slots.contains_key(&id) {
                return Err(RpcError::invalid_request(format!("process {id} already exists")));
            }
            let max = self.config.max_processes;
            let counted = self
                .live
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| (n < max).then_some(n + 1));
            if counted.is_err() {
                return Err(RpcError::internal(format!("process limit reached ({max})")));
            }
            table.next_token += 1;
            let token = table.next_token;
            table.slots.insert(id.clone(), Slot::Starting(token));
            token
        };
        let spawned = self.spawn(&p, confinement);
        let mut table = lock(&self.table);
        let ours = matches!(table.slots.get(&id), Some(Slot::Starting(t)) if *t == token);
        match spawned {
            Ok(proc) if ours => {
                table.slots.insert(id.clone(), Slot::Running(proc.clone()));
                Ok(StartResponse { process_id: id, sandbox_type })
            }
            Ok(proc) => {
                // kill_all removed the slot (and its count) while we were spawning.
                drop(table);
                proc.close_stdin();
                proc.kill_tree();
                Err(RpcError::internal("session is shutting down"))
            }
            Err(e) => {
                if ours {
                    table.slots.remove(&id);
                    self.live.fetch_sub(1, Ordering::SeqCst);
                }
                Err(RpcError::internal(e.to_string()))
            }
        }
    }

    fn spawn(
        &self,
        p: &StartParams,
        confinement: Option<sandbox::Confinement>,
    ) -> io::Result<Arc<Proc>> {
        let confined = confinement.is_some();
        let env = envpolicy::build(p.env_policy.as_ref(), &p.env, std::env::vars_os());
        let program = resolve_program(&p.argv[0], &env, Path::new(&p.cwd))?;
        let text = |s: &str| CString::new(s).map_err(|_| nul_error());
        let argv0 = p.arg0.as_deref().unwrap_or(&p.argv[0]);
        let argv = std::iter::once(argv0)
            .chain(p.argv[1..].iter().map(String::as_str))
            .map(text)
            .collect::<io::Result<Vec<_>>>()?;
        let envp = env
            .iter()
            .map(|(name, value)| {
                let mut entry = name.as_bytes().to_vec();
                entry.push(b'=');
                entry.extend_from_slice(value.as_bytes());
                CString::new(entry).map_err(|_| nul_error())
            })
            .collect::<io::Result<Vec<_>>>()?;
        let program = CString::new(program.into_os_string().into_vec()).map_err(|_| nul_error())?;
        let cwd = text(&p.cwd)?;

        // The child's ends (kept until the spawn returns) and ours.
        let mut outputs: Vec<(Stream, File)> = Vec::new();
        let mut stdin_file: Option<File> = None;
        let child_ends: [OwnedFd; 3] = if p.tty {
            let pty = pty::open()?;
            stdin_file = Some(File::from(pty.master.try_clone()?));
            outputs.push((Stream::Pty, File::from(pty.master)));
            let slave = above_stdio(pty.slave)?;
            [slave.try_clone()?, slave.try_clone()?, slave]
        } else {
            let stdin = if p.pipe_stdin {
                let (read, write) = pipe()?;
                stdin_file = Some(File::from(write));
                read
            } else {
                OwnedFd::from(File::open("/dev/null")?)
            };
            let (stdout_read, stdout_write) = pipe()?;
            let (stderr_read, stderr_write) = pipe()?;
            outputs.push((Stream::Stdout, File::from(stdout_read)));
            outputs.push((Stream::Stderr, File::from(stderr_read)));
            [above_stdio(stdin)?, above_stdio(stdout_write)?, above_stdio(stderr_write)?]
        };
        let plan = SpawnPlan {
            program,
            argv,
            envp,
            cwd,
            stdio: child_ends.each_ref().map(|fd| fd.as_raw_fd()),
            tty: p.tty,
            confinement,
        };
        let pid = spawn_on_spawner(plan)?;
        // Close our copies of the child's ends: readers see EOF (EIO on a PTY) only once
        // every copy is closed.
        drop(child_ends);

        let state = State {
            next_seq: 1,
            retention: Retention::new(self.config.retained_output_bytes),
            open_streams: outputs.len(),
            reaped: false,
            exit: None,
            closed_at: None,
            announced: false,
            pending: VecDeque::new(),
            pending_bytes: 0,
        };
        let proc = Arc::new(Proc {
            id: p.process_id.clone(),
            id_json: serde_json::to_string(&p.process_id).expect("a string always encodes as JSON"),
            pid,
            sink: self.sink.clone(),
            stdin: stdin_file.as_ref().map(|_| Arc::new(StdinQueue::new())),
            state: Mutex::new(state),
            changed: Condvar::new(),
            emitting: Mutex::new(()),
            table: Arc::downgrade(&self.table),
            live: self.live.clone(),
            exited_retention: self.config.exited_retention,
            confined,
            denial_mentioned: AtomicBool::new(false),
        });
        // The child exists from here on: whatever fails, it must still be reaped.
        let waiter = proc.clone();
        if let Err(e) = spawn_thread("process-wait", move || wait_loop(waiter)) {
            kill_session(pid);
            let mut status = 0;
            // SAFETY: reaping our own child, which was just killed.
            unsafe { libc::waitpid(pid, &mut status, 0) };
            return Err(e);
        }
        let started = (|| -> io::Result<()> {
            for (stream, file) in outputs {
                let reader = proc.clone();
                spawn_thread("process-output", move || read_loop(reader, stream, file))?;
            }
            if let (Some(queue), Some(file)) = (proc.stdin.clone(), stdin_file) {
                spawn_thread("process-stdin", move || queue.run(file))?;
            }
            Ok(())
        })();
        if let Err(e) = started {
            // Threads already running end at EOF once the tree is dead; the waiter reaps.
            proc.close_stdin();
            proc.kill_tree();
            return Err(e);
        }
        Ok(proc)
    }

    /// Called right after the start response was written (or failed to be): from now on the
    /// process's notifications may be sent, beginning with those held back so far.
    pub fn announce(&self, process_id: &str) {
        if let Lookup::Running(proc) = self.lookup(process_id) {
            proc.announce();
        }
    }

    /// `process/read` (§4.3), long-polling up to the capped `waitMs`.
    pub fn read(&self, p: ReadParams) -> Result<ReadResponse, RpcError> {
        let proc = match self.lookup(&p.process_id) {
            Lookup::Unknown => {
                return Err(RpcError::invalid_request(format!(
                    "unknown process id {}",
                    p.process_id
                )))
            }
            Lookup::Starting => {
                return Err(RpcError::invalid_request(format!(
                    "process id {} is starting",
                    p.process_id
                )))
            }
            Lookup::Running(proc) => proc,
        };
        let after_seq = p.after_seq.unwrap_or(0);
        let wait = Duration::from_millis(p.wait_ms.unwrap_or(0)).min(self.config.max_wait);
        let deadline = Instant::now() + wait;
        let (state, _) = wait_while(&proc.changed, lock(&proc.state), deadline, |s| {
            !s.retention.has_after(after_seq) && s.exit.is_none()
        });
        let page = state.retention.page(after_seq, p.max_bytes);
        let next_seq = page.last().map_or(state.next_seq, |c| c.seq + 1);
        let chunks = page
            .into_iter()
            .map(|c| ChunkOut { seq: c.seq, stream: c.stream, chunk: BASE64.encode(&c.bytes) })
            .collect();
        Ok(ReadResponse {
            chunks,
            next_seq,
            exited: state.exit.is_some(),
            exit_code: state.exit.as_ref().map(|e| e.code),
            signal: state.exit.as_ref().and_then(|e| e.signal.clone()),
            closed: state.closed_at.is_some(),
            failure: None,
            sandbox_denied: state.exit.as_ref().and_then(|e| proc.sandbox_denied(e)),
        })
    }

    /// `process/write` (§4.5).
    pub fn write(&self, p: WriteParams) -> Result<WriteResponse, RpcError> {
        let status = match self.lookup(&p.process_id) {
            Lookup::Unknown => WriteStatus::UnknownProcess,
            Lookup::Starting => WriteStatus::Starting,
            Lookup::Running(proc) => match &proc.stdin {
                None => WriteStatus::StdinClosed,
                Some(stdin) if stdin.push(p.chunk) => WriteStatus::Accepted,
                Some(_) => return Err(RpcError::internal("failed to write to process stdin")),
            },
        };
        Ok(WriteResponse { status })
    }

    /// `process/terminate` (§4.7): kill the whole tree and reap the child.
    pub fn terminate(&self, p: TerminateParams) -> Result<TerminateResponse, RpcError> {
        let Lookup::Running(proc) = self.lookup(&p.process_id) else {
            return Ok(TerminateResponse { running: false });
        };
        proc.close_stdin();
        let running = proc.kill_tree();
        if running {
            let deadline = Instant::now() + TERMINATE_REAP_WAIT;
            let (state, reaped) =
                wait_while(&proc.changed, lock(&proc.state), deadline, |s| !s.reaped);
            drop(state);
            if !reaped {
                log::warn!("process {} not reaped {TERMINATE_REAP_WAIT:?} after SIGKILL", proc.pid);
            }
        }
        Ok(TerminateResponse { running })
    }

    /// TTL expiry and shutdown: SIGKILL every process tree of the session (including trees
    /// whose leader exited but whose output is still open), reap, and remove all entries.
    /// Returns within a bounded time.
    pub fn kill_all(&self) {
        let slots: Vec<Slot> = {
            let mut table = lock(&self.table);
            table.killed = true;
            table.slots.drain().map(|(_, slot)| slot).collect()
        };
        self.live.fetch_sub(slots.len(), Ordering::SeqCst);
        let procs: Vec<Arc<Proc>> = slots
            .into_iter()
            .filter_map(|slot| match slot {
                Slot::Running(proc) => Some(proc),
                Slot::Starting(_) => None,
            })
            .collect();
        for proc in &procs {
            proc.close_stdin();
            proc.kill_tree();
        }
        let deadline = Instant::now() + KILL_ALL_WAIT;
        for proc in &procs {
            // Only the reaping is waited for: the output threads may be blocked sending to a
            // peer that does not read, and end on their own once that send returns.
            let (state, reaped) =
                wait_while(&proc.changed, lock(&proc.state), deadline, |s| !s.reaped);
            drop(state);
            if !reaped {
                log::warn!("process {} not reaped {KILL_ALL_WAIT:?} after SIGKILL", proc.pid);
            }
        }
    }
}

impl Drop for Processes {
    fn drop(&mut self) {
        // A session dropped without kill_all must not leak its children.
        if !lock(&self.table).slots.is_empty() {
            self.kill_all();
        }
    }
}

/// The waiter thread: learns of the exit without reaping (so the pid stays reserved while
/// terminate may signal the tree), then reaps under the state lock and emits the exit event.
fn wait_loop(proc: Arc<Proc>) {
    loop {
        // SAFETY: waitid on our own child with a zeroed siginfo it fills in.
        let ret = unsafe {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            libc::waitid(
                libc::P_PID,
                proc.pid as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOWAIT,
            )
        };
        if ret == 0 || io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            break;
        }
    }
    let exit = {
        let mut state = lock(&proc.state);
        let mut status: libc::c_int = 0;
        let reaped = loop {
            // SAFETY: reaping our own child, which has exited.
            let ret = unsafe { libc::waitpid(proc.pid, &mut status, 0) };
            if ret >= 0 || io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
                break ret == proc.pid;
            }
        };
        state.reaped = true;
        if reaped {
            exit_from_status(status)
        } else {
            // Only if someone else reaped our child (SIGCHLD ignored): the status is lost.
            log::error!("child {} was reaped elsewhere; exit status unknown", proc.pid);
            Exit { code: -1, signal: None }
        }
    };
    proc.changed.notify_all();
    proc.close_stdin();
    // What the child wrote before it died is usually still in the pipe: let the readers
    // number it first, so a short command's output precedes its exit. Output still open
    // (a background process holding the pipe) only delays the exit event by the grace.
    let deadline = Instant::now() + EXIT_DRAIN_GRACE;
    drop(wait_while(&proc.changed, lock(&proc.state), deadline, |s| s.open_streams > 0));
    proc.emit(Event::Exit(exit));
}

/// An output thread: one event per read of at most 64 KiB, until EOF (EIO on a PTY master).
fn read_loop(proc: Arc<Proc>, stream: Stream, mut file: File) {
    let mut buf = vec![0u8; READ_CHUNK_BYTES];
    let mut pipe_grown = stream == Stream::Pty;
    loop {
        match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                // Issue 13: a confined process's output is watched for denial messages.
                if proc.confined
                    && !proc.denial_mentioned.load(Ordering::Relaxed)
                    && sandbox::mentions_denial(&buf[..n])
                {
                    proc.denial_mentioned.store(true, Ordering::Relaxed);
                }
                if n == buf.len() && !pipe_grown {
                    grow_pipe(&file);
                    pipe_grown = true;
                }
                if n < HANDOFF_MIN_BYTES {
                    // Copied, so that what retention holds stays close to what it counts.
                    proc.emit(Event::Output(stream, buf[..n].to_vec()));
                    continue;
                }
                // Large reads hand the buffer itself to retention and read into one it
                // evicted: no allocation or copy per chunk while streaming.
                buf.truncate(n);
                let spare = proc.emit(Event::Output(stream, buf));
                buf = spare.filter(|b| b.capacity() >= READ_CHUNK_BYTES).unwrap_or_default();
                buf.resize(READ_CHUNK_BYTES, 0);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if stream == Stream::Pty && e.raw_os_error() == Some(libc::EIO) => break,
            Err(e) => {
                log::warn!("reading output of process {}: {e}", proc.pid);
                break;
            }
        }
    }
    drop(file);
    proc.emit(Event::StreamEnd);
}

/// Enlarges the pipe of a child seen filling a whole read: with the default 64 KiB the child
/// and this reader wake each other for every chunk, which dominates streaming. Only busy
/// pipes grow, since pipe pages count against the user's pipe quota. Events still carry at
/// most `READ_CHUNK_BYTES`. Failure (quota reached) just keeps the default size.
fn grow_pipe(file: &File) {
    // SAFETY: fcntl on a pipe descriptor we own; no memory is involved.
    unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETPIPE_SZ, BUSY_PIPE_BYTES) };
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    /// Every wait in these tests ends by this deadline.
    const DEADLINE: Duration = Duration::from_secs(20);

    #[derive(Default)]
    struct Collect {
        messages: Mutex<Vec<Value>>,
        changed: Condvar,
    }

    impl Notify for Collect {
        fn notify(&self, message: String) {
            assert!(!message.contains("jsonrpc"));
            let value = serde_json::from_str(&message).expect("a notification is JSON");
            lock(&self.messages).push(value);
            self.changed.notify_all();
        }
    }

    impl Collect {
        /// The notifications of `id`, once its closed event has arrived.
        fn until_closed(&self, id: &str) -> Vec<Value> {
            let is_mine = |m: &Value| m["params"]["processId"] == id;
            let deadline = Instant::now() + DEADLINE;
            let (messages, closed) =
                wait_while(&self.changed, lock(&self.messages), deadline, |ms| {
                    !ms.iter().any(|m| is_mine(m) && m["method"] == "process/closed")
                });
            let mine: Vec<Value> = messages.iter().filter(|m| is_mine(m)).cloned().collect();
            assert!(closed, "no closed event for {id}: {mine:?}");
            mine
        }

        fn output_of(&self, id: &str) -> String {
            let bytes: Vec<u8> = self
                .until_closed(id)
                .iter()
                .filter(|m| m["method"] == "process/output")
                .flat_map(|m| {
                    BASE64
                        .decode(m["params"]["chunk"].as_str().expect("chunk is a string"))
                        .expect("base64")
                })
                .collect();
            String::from_utf8_lossy(&bytes).into_owned()
        }
    }

    fn setup(config: Config) -> (Processes, Arc<Collect>, Arc<AtomicUsize>) {
        let sink = Arc::new(Collect::default());
        let live = Arc::new(AtomicUsize::new(0));
        (Processes::new(Arc::new(config), live.clone(), sink.clone()), sink, live)
    }

    fn params(id: &str, argv: &[&str]) -> StartParams {
        StartParams {
            process_id: id.into(),
            argv: argv.iter().map(|s| s.to_string()).collect(),
            cwd: "/".into(),
            env: HashMap::from([("PATH".to_string(), "/usr/bin:/bin".to_string())]),
            tty: false,
            pipe_stdin: false,
            arg0: None,
            env_policy: None,
            sandbox: None,
        }
    }

    fn run(processes: &Processes, p: StartParams) {
        let id = p.process_id.clone();
        processes.start(p).expect("process starts");
        processes.announce(&id);
    }

    fn read(
        processes: &Processes,
        id: &str,
        after: u64,
        max: Option<u64>,
        wait: u64,
    ) -> ReadResponse {
        let p = ReadParams {
            process_id: id.into(),
            after_seq: Some(after),
            max_bytes: max,
            wait_ms: Some(wait),
        };
        processes.read(p).expect("read succeeds")
    }

    fn pid_of(processes: &Processes, id: &str) -> libc::pid_t {
        match processes.lookup(id) {
            Lookup::Running(proc) => proc.pid,
            _ => panic!("{id} is not running"),
        }
    }

    #[test]
    fn base64_matches_the_crate() {
        let bytes: Vec<u8> = (0..300u32).map(|i| (i * 37 + i / 7) as u8).collect();
        for len in (0..20).chain([255, 256, 257, 299, 300]) {
            let mut out = b"x".to_vec();
            b64::encode(&bytes[..len], &mut out);
            assert_eq!(out[1..], *BASE64.encode(&bytes[..len]).as_bytes(), "length {len}");
        }
    }

    #[test]
    fn output_message_matches_serde() {
        let id = "p\"1\u{e9}";
        let id_json = serde_json::to_string(id).expect("encodes");
        let message = output_message(&id_json, 7, Stream::Stderr, b"hi\n");
        let value: Value = serde_json::from_str(&message).expect("valid JSON");
        assert_eq!(
            value,
            json!({"method":"process/output","params":{"processId":id,"seq":7,"stream":"stderr","chunk":"aGkK"}})
        );
    }

    #[test]
    fn signal_names_and_exit_codes() {
        assert_eq!(signal_name(9), "SIGKILL");
        assert_eq!(signal_name(15), "SIGTERM");
        assert_eq!(signal_name(1), "SIGHUP");
        assert_eq!(signal_name(31), "SIGSYS");
        assert_eq!(signal_name(34), "SIG34");
        assert_eq!(signal_name(0), "SIG0");
        assert_eq!(exit_from_status(7 << 8), Exit { code: 7, signal: None });
        assert_eq!(exit_from_status(9), Exit { code: 137, signal: Some("SIGKILL".into()) });
    }

    #[test]
    fn retention_evicts_oldest_until_the_new_chunk_fits() {
        let mut r = Retention::new(10);
        r.push(1, Stream::Stdout, vec![1; 4]);
        r.push(2, Stream::Stderr, vec![2; 4]);
        r.push(3, Stream::Stdout, vec![3; 4]);
        assert_eq!(r.chunks.iter().map(|c| c.seq).collect::<Vec<_>>(), [2, 3]);
        assert_eq!(r.bytes, 8);
        r.push(5, Stream::Stdout, vec![5; 20]);
        assert_eq!(r.chunks.iter().map(|c| c.seq).collect::<Vec<_>>(), [5]);
        assert_eq!(r.bytes, 20);
    }

    #[test]
    fn read_paging_follows_max_bytes() {
        let mut r = Retention::new(1 << 20);
        r.push(1, Stream::Stdout, vec![0; 3]);
        r.push(2, Stream::Stdout, vec![0; 3]);
        // seq 3 was an exit event, not output.
        r.push(4, Stream::Stdout, vec![0; 3]);
        let seqs = |page: Vec<&Retained>| page.iter().map(|c| c.seq).collect::<Vec<_>>();
        assert_eq!(seqs(r.page(0, None)), [1, 2, 4]);
        assert_eq!(seqs(r.page(0, Some(1))), [1]);
        assert_eq!(seqs(r.page(0, Some(0))), [1]);
        assert_eq!(seqs(r.page(0, Some(5))), [1]);
        assert_eq!(seqs(r.page(0, Some(6))), [1, 2]);
        assert_eq!(seqs(r.page(2, None)), [4]);
        assert_eq!(seqs(r.page(3, Some(1))), [4]);
        assert!(r.page(4, None).is_empty());
        assert!(r.has_after(3) && !r.has_after(4));
    }

    #[test]
    fn params_decode_like_the_wire() {
        let start: StartParams = serde_json::from_str(
            r#"{"processId":"p","argv":["true"],"cwd":"/","env":{},"tty":false,"arg0":null,"pipeStdin":null,"extra":1}"#,
        )
        .expect("upstream start params decode");
        assert!(!start.pipe_stdin && start.arg0.is_none());
        let err =
            serde_json::from_str::<StartParams>(r#"{"argv":[],"cwd":"/","env":{},"tty":false}"#)
                .expect_err("processId is required");
        assert!(err.to_string().contains("missing field `processId`"), "{err}");
        let write: WriteParams =
            serde_json::from_str(r#"{"processId":"p","chunk":"aGkK","writeId":"w"}"#)
                .expect("write decodes");
        assert_eq!(write.chunk, b"hi\n");
        assert!(serde_json::from_str::<WriteParams>(r#"{"processId":"p","chunk":"!!"}"#).is_err());
        let read: ReadParams =
            serde_json::from_str(r#"{"processId":"p","afterSeq":null,"maxBytes":null}"#)
                .expect("nulls decode");
        assert_eq!((read.after_seq, read.max_bytes, read.wait_ms), (None, None, None));
        assert!(serde_json::from_str::<ReadParams>(r#"{"processId":"p","afterSeq":-1}"#).is_err());
    }

    #[test]
    fn true_exits_then_closes() {
        let (processes, sink, _) = setup(Config::default());
        run(&processes, params("t", &["true"]));
        assert_eq!(
            sink.until_closed("t"),
            [
                json!({"method":"process/exited","params":{"processId":"t","seq":1,"exitCode":0}}),
                json!({"method":"process/closed","params":{"processId":"t","seq":2}}),
            ]
        );
        let r = read(&processes, "t", 0, None, 0);
        assert!(r.chunks.is_empty() && r.exited && r.closed);
        assert_eq!((r.next_seq, r.exit_code, r.failure), (3, Some(0), None));
    }

    #[test]
    fn section_5_example_yields_exactly_four_events() {
        let (processes, sink, _) = setup(Config::default());
        let script =
            r#"printf "event output\n"; sleep 0.1; printf "event err\n" >&2; sleep 0.1; exit 7"#;
        run(&processes, params("p1", &["sh", "-c", script]));
        assert_eq!(
            sink.until_closed("p1"),
            [
                json!({"method":"process/output","params":{"processId":"p1","seq":1,"stream":"stdout","chunk":"ZXZlbnQgb3V0cHV0Cg=="}}),
                json!({"method":"process/output","params":{"processId":"p1","seq":2,"stream":"stderr","chunk":"ZXZlbnQgZXJyCg=="}}),
                json!({"method":"process/exited","params":{"processId":"p1","seq":3,"exitCode":7}}),
                json!({"method":"process/closed","params":{"processId":"p1","seq":4}}),
            ]
        );
    }

    #[test]
    fn nothing_is_sent_before_announce_and_nothing_is_lost() {
        let (processes, sink, _) = setup(Config::default());
        processes.start(params("a", &["sh", "-c", "echo one; echo two >&2"])).expect("starts");
        // Wait (through read's long poll) until the process has closed.
        let deadline = Instant::now() + DEADLINE;
        while !read(&processes, "a", 0, None, 1000).closed {
            assert!(Instant::now() < deadline, "process never closed");
        }
        assert!(lock(&sink.messages).is_empty());
        processes.announce("a");
        let seqs: Vec<u64> = sink
            .until_closed("a")
            .iter()
            .map(|m| m["params"]["seq"].as_u64().expect("seq"))
            .collect();
        assert_eq!(seqs, [1, 2, 3, 4]);
    }

    #[test]
    fn long_poll_wakes_on_output_and_returns_at_once_after_exit() {
        let (processes, _, _) = setup(Config::default());
        run(&processes, params("w", &["sh", "-c", "sleep 0.3; echo x"]));
        let started = Instant::now();
        let r = read(&processes, "w", 0, None, 10_000);
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(r.chunks.len(), 1);
        assert_eq!((r.chunks[0].seq, r.chunks[0].chunk.as_str(), r.next_seq), (1, "eAo=", 2));
        let r = read(&processes, "w", 1, None, 10_000);
        assert!(r.exited && r.chunks.is_empty());
        // Idle deadline, capped by max_wait.
        let (processes, _, _) =
            setup(Config { max_wait: Duration::from_millis(200), ..Config::default() });
        run(&processes, params("idle", &["sleep", "100"]));
        let started = Instant::now();
        let r = read(&processes, "idle", 0, None, 60_000);
        assert!(!r.exited && r.chunks.is_empty() && r.next_seq == 1);
        assert!(
            started.elapsed() >= Duration::from_millis(200)
                && started.elapsed() < Duration::from_secs(5)
        );
        processes.kill_all();
    }

    #[test]
    fn start_checks_and_spawn_errors() {
        let (processes, _, live) = setup(Config { max_processes: 1, ..Config::default() });
        let err = |p| processes.start(p).expect_err("start fails");
        assert_eq!(err(params("x", &[])), RpcError::invalid_params("argv must not be empty"));
        let mut p = params("x", &["true"]);
        p.cwd = "tmp".into();
        assert_eq!(err(p), RpcError::invalid_params("cwd must be an absolute path"));
        assert_eq!(
            err(params("x", &["no-such-program-here"])),
            RpcError::internal("No such file or directory (os error 2)")
        );
        let mut p = params("x", &["true"]);
        p.cwd = "/etc/passwd".into();
        assert_eq!(err(p), RpcError::internal("Not a directory (os error 20)"));
        let mut p = params("x", &["true"]);
        p.cwd = "/no/such/dir".into();
        assert_eq!(err(p), RpcError::internal("No such file or directory (os error 2)"));
        assert_eq!(err(params("x", &["tr\0ue"])).code, -32603);
        assert_eq!(live.load(Ordering::SeqCst), 0);
        run(&processes, params("x", &["sleep", "100"]));
        assert_eq!(
            err(params("x", &["true"])),
            RpcError::invalid_request("process x already exists")
        );
        assert_eq!(err(params("y", &["true"])), RpcError::internal("process limit reached (1)"));
        processes.kill_all();
        assert_eq!(live.load(Ordering::SeqCst), 0);
        assert_eq!(
            processes
                .read(ReadParams {
                    process_id: "x".into(),
                    after_seq: None,
                    max_bytes: None,
                    wait_ms: None
                })
                .expect_err("gone"),
            RpcError::invalid_request("unknown process id x")
        );
    }

    #[test]
    fn env_cwd_arg0_and_path_lookup() {
        let (processes, sink, _) = setup(Config::default());
        let mut p = params("env", &["env"]);
        p.env.insert("A".into(), "1".into());
        p.cwd = "/tmp".into();
        run(&processes, p);
        let mut lines: Vec<String> = sink.output_of("env").lines().map(String::from).collect();
        lines.sort();
        assert_eq!(lines, ["A=1", "PATH=/usr/bin:/bin"]);

        let mut p = params("arg0", &["sh", "-c", r#"pwd; tr '\0' ' ' < /proc/$$/cmdline"#]);
        p.arg0 = Some("renamed".into());
        p.cwd = "/tmp".into();
        run(&processes, p);
        assert_eq!(
            sink.output_of("arg0"),
            "/tmp\nrenamed -c pwd; tr '\\0' ' ' < /proc/$$/cmdline "
        );

        let mut p = params("nopath", &["sh", "-c", "true"]);
        p.env.insert("PATH".into(), "/nonexistent".into());
        assert_eq!(processes.start(p).expect_err("not found in child PATH").code, -32603);
    }

    #[test]
    fn writes_reach_stdin_in_order() {
        let (processes, sink, _) = setup(Config::default());
        let mut p = params("cat", &["cat"]);
        p.pipe_stdin = true;
        run(&processes, p);
        let write = |id: &str, bytes: &[u8]| {
            processes.write(WriteParams { process_id: id.into(), chunk: bytes.to_vec() })
        };
        for part in ["a", "b", "c\n"] {
            assert_eq!(write("cat", part.as_bytes()).expect("write").status, WriteStatus::Accepted);
        }
        let deadline = Instant::now() + DEADLINE;
        let echoed = loop {
            let chunks = read(&processes, "cat", 0, None, 1000).chunks;
            let text: Vec<u8> = chunks
                .iter()
                .flat_map(|c| {
                    base64::engine::general_purpose::STANDARD.decode(&c.chunk).expect("b64")
                })
                .collect();
            if text.len() >= 4 {
                break text;
            }
            assert!(Instant::now() < deadline, "cat never echoed");
        };
        assert!(echoed.starts_with(b"abc\n"));
        assert!(
            processes
                .terminate(TerminateParams { process_id: "cat".into() })
                .expect("terminate")
                .running
        );
        assert_eq!(write("cat", b"x"), Err(RpcError::internal("failed to write to process stdin")));
        assert_eq!(write("nope", b"x").expect("write").status, WriteStatus::UnknownProcess);

        run(&processes, params("closed", &["sh", "-c", "cat; echo eof"]));
        assert_eq!(write("closed", b"x").expect("write").status, WriteStatus::StdinClosed);
        assert_eq!(sink.output_of("closed"), "eof\n");
    }

    #[test]
    fn pty_has_size_echo_and_a_controlling_terminal() {
        let (processes, sink, _) = setup(Config::default());
        let mut p = params("tty", &["sh", "-c", "stty size; tty; read line; echo got:$line"]);
        p.tty = true;
        run(&processes, p);
        let deadline = Instant::now() + DEADLINE;
        let mut seen = String::new();
        let mut after = 0;
        while !seen.contains("/dev/pts/") {
            assert!(Instant::now() < deadline, "no tty output: {seen:?}");
            let r = read(&processes, "tty", after, None, 1000);
            for c in r.chunks {
                assert_eq!(c.stream, Stream::Pty);
                seen += &String::from_utf8_lossy(&BASE64.decode(&c.chunk).expect("base64"));
                after = c.seq;
            }
        }
        let status =
            processes.write(WriteParams { process_id: "tty".into(), chunk: b"hello\n".to_vec() });
        assert_eq!(status.expect("write").status, WriteStatus::Accepted);
        let out = sink.output_of("tty");
        assert!(out.starts_with("24 80\r\n/dev/pts/"), "{out:?}");
        assert!(out.contains("hello\r\ngot:hello\r\n"), "{out:?}");
    }

    #[test]
    fn terminate_kills_the_whole_tree() {
        let (processes, sink, live) = setup(Config::default());
        run(&processes, params("tree", &["sh", "-c", "sleep 100 & sleep 100"]));
        let pid = pid_of(&processes, "tree");
        // No event tells when the shell has forked; poll /proc within the deadline.
        let deadline = Instant::now() + DEADLINE;
        while session_members(pid).len() < 3 {
            assert!(Instant::now() < deadline, "tree never formed");
            thread::sleep(Duration::from_millis(10));
        }
        let r =
            processes.terminate(TerminateParams { process_id: "tree".into() }).expect("terminate");
        assert!(r.running);
        let events = sink.until_closed("tree");
        assert_eq!(
            events[0],
            json!({"method":"process/exited","params":{"processId":"tree","seq":1,"exitCode":137,"signal":"SIGKILL"}})
        );
        assert_eq!(events.len(), 2);
        assert!(session_members(pid).is_empty());
        let r =
            processes.terminate(TerminateParams { process_id: "tree".into() }).expect("terminate");
        assert!(!r.running);
        let read = read(&processes, "tree", 0, None, 0);
        assert_eq!((read.exit_code, read.signal.as_deref()), (Some(137), Some("SIGKILL")));
        processes.kill_all();
        assert_eq!(live.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn kill_all_kills_trees_whose_leader_exited() {
        let (processes, sink, live) = setup(Config::default());
        // The leader exits at once; the background sleep keeps stdout open.
        run(&processes, params("orphan", &["sh", "-c", "sleep 100 & echo started"]));
        let pid = pid_of(&processes, "orphan");
        let deadline = Instant::now() + DEADLINE;
        while !read(&processes, "orphan", 0, None, 1000).exited {
            assert!(Instant::now() < deadline, "leader never exited");
        }
        assert!(!read(&processes, "orphan", 0, None, 0).closed);
        processes.kill_all();
        assert_eq!(live.load(Ordering::SeqCst), 0);
        // The output ends once the background sleep is dead.
        assert_eq!(sink.output_of("orphan"), "started\n");
        assert!(session_members(pid).is_empty());
    }

    #[test]
    fn finished_entries_are_removed_after_retention() {
        let config = Config { exited_retention: Duration::from_millis(50), ..Config::default() };
        let (processes, sink, live) = setup(config);
        run(&processes, params("gone", &["true"]));
        sink.until_closed("gone");
        // No event marks the removal, so poll for it within the deadline.
        let deadline = Instant::now() + DEADLINE;
        while live.load(Ordering::SeqCst) != 0 {
            assert!(Instant::now() < deadline, "entry never removed");
            thread::sleep(Duration::from_millis(10));
        }
        let p = ReadParams {
            process_id: "gone".into(),
            after_seq: None,
            max_bytes: None,
            wait_ms: None,
        };
        assert_eq!(
            processes.read(p).expect_err("removed"),
            RpcError::invalid_request("unknown process id gone")
        );
        let w = processes
            .write(WriteParams { process_id: "gone".into(), chunk: vec![] })
            .expect("write");
        assert_eq!(w.status, WriteStatus::UnknownProcess);
        run(&processes, params("gone", &["true"]));
    }
}
