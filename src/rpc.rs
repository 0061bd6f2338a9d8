//! The JSON-RPC layer: envelope decoding, the handshake gate, per-connection ordering and
//! the one dispatch `match`. It never touches sockets: it is handed something to send
//! messages through.

use std::fmt;

/// A JSON-RPC error as it goes on the wire: `{"code", "message"}`, never `data`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RpcError {
    pub code: i64,
    pub message: String,
}

impl RpcError {
    pub fn new(code: i64, message: impl Into<String>) -> Self {
        RpcError { code, message: message.into() }
    }
    /// -32600: invalid request or input (also fs invalid-input and permission denied).
    pub fn invalid_request(message: impl Into<String>) -> Self {
        Self::new(-32600, message)
    }
    /// -32601: no such method.
    pub fn method_not_found(method: &str) -> Self {
        Self::new(-32601, format!("exec-server stub does not implement `{method}` yet"))
    }
    /// -32602: params that do not decode or fail a parameter check.
    pub fn invalid_params(message: impl Into<String>) -> Self {
        Self::new(-32602, message)
    }
    /// -32603: internal error (spawn failure, other I/O errors, handler panic).
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(-32603, message)
    }
    /// -32004: a filesystem path that does not exist.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(-32004, message)
    }
}

impl fmt::Display for RpcError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.message, self.code)
    }
}

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::ops::Range;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::config::Config;
use crate::fs;
use crate::pool::Pool;
use crate::process::StartParams;
use crate::session::{Session, Sessions};

/// Deepest JSON nesting a message may have (§10); deeper is malformed (§1.4).
pub const MAX_NESTING: usize = 128;
/// Requests of one connection waiting for their turn; past this the reader stops reading,
/// so a client that pipelines without end is slowed by TCP instead of growing our memory.
const MAX_QUEUED_REQUESTS: usize = 1024;

/// The connection is gone; the message was not sent.
#[derive(Debug)]
pub struct Closed;

/// Why the server closes a connection; each maps to a websocket close code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// 1002: the client broke the protocol (§2.3).
    Protocol,
    /// 1001: the server is shutting down (§9.4).
    GoingAway,
    /// 1008: the peer accepted no byte for the write-stall limit (§10).
    Stalled,
    /// 1009: an inbound message over the size limit (§1.4).
    TooBig,
    /// 1007: a text frame that is not UTF-8 (§1.4).
    InvalidData,
}

/// Something a connection's messages are written through (a websocket, stdout).
pub trait Outbound: Send + Sync {
    /// Writes one complete message. Blocks while the peer's socket is full; fails once the
    /// connection is closed or the peer stalls past the write-stall limit.
    fn send(&self, text: String) -> Result<(), Closed>;
    /// Starts closing the connection; returns without waiting for the peer.
    fn close(&self, reason: CloseReason);
}

/// What a connection runs over; it decides the malformed-message prefix (§1.4).
pub enum Transport {
    Local(SocketAddr),
    Rendezvous,
    Stdio,
}

/// The daemon's shared state: configuration, sessions, the worker pool, live connections.
pub struct Server {
    pub config: Arc<Config>,
    pub sessions: Arc<Sessions>,
    pool: Pool,
    conns: Mutex<HashMap<u64, Arc<dyn Outbound>>>,
    /// Signalled whenever a connection is deregistered.
    conn_gone: Condvar,
    next_conn: AtomicU64,
}

impl Server {
    pub fn new(config: Config) -> Arc<Server> {
        let config = Arc::new(config);
        Arc::new(Server {
            sessions: Sessions::new(Arc::clone(&config)),
            pool: Pool::new(config.workers),
            config,
            conns: Mutex::new(HashMap::new()),
            conn_gone: Condvar::new(),
            next_conn: AtomicU64::new(1),
        })
    }

    /// Registers a new client connection that writes through `out`.
    pub fn connect(
        self: &Arc<Self>,
        out: Arc<dyn Outbound>,
        transport: Transport,
    ) -> Arc<Connection> {
        let id = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let prefix = match transport {
            Transport::Local(peer) => format!(
                "failed to parse websocket JSON-RPC message from exec-server websocket {peer}: "
            ),
            Transport::Rendezvous => {
                "failed to parse websocket JSON-RPC message from remote exec-server websocket: "
                    .to_string()
            }
            Transport::Stdio => {
                "failed to parse JSON-RPC message from exec-server stdio: ".to_string()
            }
        };
        lock(&self.conns).insert(id, Arc::clone(&out));
        Arc::new(Connection {
            id,
            server: Arc::clone(self),
            out,
            prefix,
            state: Mutex::new(ConnState::default()),
            room: Condvar::new(),
        })
    }

    /// Graceful shutdown (§9.4): ends every session (killing its processes) and starts
    /// closing every connection with 1001.
    pub fn shutdown(&self) {
        self.sessions.end_all();
        let conns: Vec<Arc<dyn Outbound>> = lock(&self.conns).values().cloned().collect();
        for out in conns {
            out.close(CloseReason::GoingAway);
        }
    }

    /// Waits until every connection has ended, for at most `grace`.
    pub fn wait_closed(&self, grace: std::time::Duration) {
        let conns = lock(&self.conns);
        let _ = self
            .conn_gone
            .wait_timeout_while(conns, grace, |c| !c.is_empty())
            .unwrap_or_else(PoisonError::into_inner);
    }
}

/// One client connection's JSON-RPC state: its session, handshake progress and the
/// requests waiting for or holding their turn (§1.5).
pub struct Connection {
    id: u64,
    server: Arc<Server>,
    out: Arc<dyn Outbound>,
    prefix: String,
    state: Mutex<ConnState>,
    /// Signalled when the waiting queue shrinks.
    room: Condvar,
}

#[derive(Default)]
struct ConnState {
    session: Option<Arc<Session>>,
    initialized: bool,
    closed: bool,
    /// Items in arrival order that have not started.
    queue: VecDeque<Item>,
    /// Requests executing now.
    running: usize,
    /// Ordering keys held by executing requests.
    busy: HashMap<Key, usize>,
}

enum Item {
    Request(Request),
    Initialized,
}

impl Item {
    /// What the scheduler needs to know: is it a barrier, and which keys does it name.
    fn shape(&self) -> (bool, &[Key]) {
        match self {
            Item::Initialized => (true, &[]),
            Item::Request(request) => (request.is_barrier(), &request.keys),
        }
    }
}

/// The ordering rule of §1.5 as a pure function. Given the waiting items in arrival order
/// (barrier or not, and their keys), how many requests execute now and the keys they hold,
/// returns the indices of the items that may start now, in order:
/// - a barrier starts only at the head of the queue with nothing executing, and alone;
///   nothing behind a waiting barrier starts;
/// - a request waits while an executing or earlier waiting request shares one of its keys;
/// - at the concurrency limit, everything behind waits in arrival order.
fn startable<'k>(
    waiting: impl Iterator<Item = (bool, &'k [Key])>,
    running: usize,
    busy: &HashMap<Key, usize>,
    limit: usize,
) -> Vec<usize> {
    let mut picks = Vec::new();
    let mut running = running;
    let mut held: Vec<&Key> = Vec::new();
    for (index, (barrier, keys)) in waiting.enumerate() {
        if barrier {
            if index == 0 && running == 0 {
                picks.push(0);
            }
            break;
        }
        if running >= limit {
            break;
        }
        let clash = keys.iter().any(|k| busy.contains_key(k) || held.contains(&k));
        held.extend(keys);
        if !clash {
            picks.push(index);
            running += 1;
        }
    }
    picks
}

/// A decoded request, carrying the frame its params point into.
struct Request {
    /// The id's JSON text, echoed unchanged.
    id: String,
    method: String,
    frame: Text,
    params: Option<Range<usize>>,
    keys: Vec<Key>,
    /// May run on the reader's own thread (see `Connection::handle`).
    quick: bool,
}

impl Request {
    fn params(&self) -> &str {
        match &self.params {
            Some(range) => &self.frame.as_str()[range.clone()],
            None => "{}",
        }
    }
    fn is_barrier(&self) -> bool {
        self.method == "initialize"
    }
}

/// An inbound message's text, owned without copying whatever the transport produced.
pub type Text = Box<dyn AsStr>;

/// Text a transport hands over: a `String`, or a websocket's shared bytes.
pub trait AsStr: Send + 'static {
    fn as_str(&self) -> &str;
}

impl<T: AsRef<str> + Send + 'static> AsStr for T {
    fn as_str(&self) -> &str {
        self.as_ref()
    }
}

/// What two requests must not do at once (§1.5): name the same process or the same path.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Key {
    Process(String),
    Path(PathBuf),
}

/// Whether the reader should keep reading this connection.
#[derive(Debug, PartialEq, Eq)]
pub enum Flow {
    Continue,
    Close,
}

/// The method families behind the handshake gate (§3.4).
#[derive(Clone, Copy)]
enum Family {
    Exec,
    Filesystem,
}

impl Family {
    fn name(self) -> &'static str {
        match self {
            Family::Exec => "exec",
            Family::Filesystem => "filesystem",
        }
    }
}

impl Connection {
    /// Handles one inbound message (a websocket message or a stdio line).
    pub fn handle(self: &Arc<Self>, text: Text) -> Flow {
        let (method, id, params) = match decode(text.as_str()) {
            Ok(Message::Request { method, id, params }) => {
                (method.into_owned(), Some(id.to_string()), params)
            }
            Ok(Message::Notification { method, .. }) => (method.into_owned(), None, None),
            Ok(Message::Response) => {
                log::warn!("connection {}: client sent a response; closing", self.id);
                return self.close_for(CloseReason::Protocol);
            }
            Err(e) => return self.malformed(&e.0),
        };
        let item = match id {
            Some(id) => {
                let base = text.as_str().as_ptr() as usize;
                let params = params.map(|p| {
                    let start = p.get().as_ptr() as usize - base;
                    start..start + p.get().len()
                });
                let mut request =
                    Request { id, method, frame: text, params, keys: Vec::new(), quick: false };
                let (keys, waits) = keys(request.params());
                request.keys = keys;
                request.quick = is_quick(&request.method, waits);
                Item::Request(request)
            }
            None if method == "initialized" => Item::Initialized,
            None => {
                log::warn!("connection {}: unknown notification `{method}`; closing", self.id);
                return self.close_for(CloseReason::Protocol);
            }
        };
        let mut state = self.lock();
        while state.queue.len() >= MAX_QUEUED_REQUESTS && !state.closed {
            state = self.room.wait(state).unwrap_or_else(PoisonError::into_inner);
        }
        if state.closed {
            return Flow::Close;
        }
        state.queue.push_back(item);
        let (flow, inline) = self.pump(&mut state, true);
        drop(state);
        if let Some(request) = inline {
            Arc::clone(self).execute(request);
        }
        flow
    }

    /// Answers a message the transport could not even turn into text (§1.4).
    pub fn malformed(&self, detail: &str) -> Flow {
        let error = RpcError::invalid_request(format!("{}{detail}", self.prefix));
        let _ = self.out.send(error_text("-1", &error));
        Flow::Continue
    }

    /// Waits, for at most `grace`, until every request received so far has been answered.
    pub fn drain(&self, grace: std::time::Duration) {
        let state = self.lock();
        let _ = self
            .room
            .wait_timeout_while(state, grace, |s| {
                !s.closed && (s.running > 0 || !s.queue.is_empty())
            })
            .unwrap_or_else(PoisonError::into_inner);
    }

    /// The transport ended: detach the session and forget what was waiting.
    pub fn closed(&self) {
        let mut state = self.lock();
        state.closed = true;
        state.queue.clear();
        if let Some(session) = &state.session {
            self.server.sessions.detach(session, self.id);
        }
        drop(state);
        self.room.notify_all();
        lock(&self.server.conns).remove(&self.id);
        self.server.conn_gone.notify_all();
    }

    fn close_for(&self, reason: CloseReason) -> Flow {
        self.out.close(reason);
        Flow::Close
    }

    fn lock(&self) -> MutexGuard<'_, ConnState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts every waiting item whose turn has come (§1.5, see `startable`); an
    /// `initialized` barrier takes effect here, in its turn.
    ///
    /// With `inline`, a lone quick request (one that cannot block: memory-only work, a
    /// signal, a single stat) is returned to the caller — the reader — to execute on its own
    /// thread instead of being handed to a worker. That handoff (a wake-up and a context
    /// switch) would otherwise double the round trip of exactly the requests that are
    /// cheapest to answer.
    fn pump(self: &Arc<Self>, state: &mut ConnState, inline: bool) -> (Flow, Option<Request>) {
        let limit = self.server.config.concurrent_requests;
        loop {
            let shapes = state.queue.iter().map(Item::shape);
            let picks = startable(shapes, state.running, &state.busy, limit);
            if picks.is_empty() {
                break;
            }
            if let Some(Item::Initialized) = state.queue.front() {
                state.queue.pop_front();
                let resumed_elsewhere =
                    state.session.as_ref().is_some_and(|s| s.attached_elsewhere(self.id));
                if state.session.is_none() || resumed_elsewhere {
                    log::warn!("connection {}: `initialized` out of turn; closing", self.id);
                    state.closed = true;
                    state.queue.clear();
                    self.out.close(CloseReason::Protocol);
                    self.room.notify_all();
                    return (Flow::Close, None);
                }
                state.initialized = true;
                continue;
            }
            let mut started = Vec::with_capacity(picks.len());
            for &index in picks.iter().rev() {
                if let Some(Item::Request(request)) = state.queue.remove(index) {
                    started.push(request);
                }
            }
            let lone = started.len() == 1 && state.queue.is_empty() && state.running == 0;
            for request in started.into_iter().rev() {
                for key in &request.keys {
                    *state.busy.entry(key.clone()).or_insert(0) += 1;
                }
                state.running += 1;
                if inline && lone && request.quick {
                    self.room.notify_all();
                    return (Flow::Continue, Some(request));
                }
                let conn = Arc::clone(self);
                self.server.pool.submit(Box::new(move || conn.execute(request)));
            }
            break;
        }
        self.room.notify_all();
        (Flow::Continue, None)
    }

    /// Runs one request on a pool worker and writes its response.
    fn execute(self: Arc<Self>, request: Request) {
        let started = Instant::now();
        let outcome = catch_unwind(AssertUnwindSafe(|| self.dispatch(&request)));
        let (result, after) = outcome.unwrap_or_else(|_| {
            (Err(RpcError::internal("internal error: the request handler panicked")), None)
        });
        let result = result.and_then(|text| {
            // §3.5: a request that outlived its session's move to another connection.
            let state = self.lock();
            match &state.session {
                Some(s) if s.attached_elsewhere(self.id) => {
                    Err(RpcError::invalid_request("session has been resumed by another connection"))
                }
                _ => Ok(text),
            }
        });
        let failed = result.is_err();
        let text = result.unwrap_or_else(|e| error_text(&request.id, &e));
        let _ = self.out.send(text);
        if let Some(after) = after {
            after();
        }
        log::debug!(
            "request {} {} answered in {:?}{}",
            request.id,
            request.method,
            started.elapsed(),
            if failed { " (error)" } else { "" }
        );
        let mut state = self.lock();
        state.running -= 1;
        for key in &request.keys {
            if let Some(count) = state.busy.get_mut(key) {
                *count -= 1;
                if *count == 0 {
                    state.busy.remove(key);
                }
            }
        }
        if !state.closed {
            self.pump(&mut state, false);
        }
    }

    /// The one dispatch table (§2.2 order: method, params, gate, handler). Returns the
    /// serialized result and, for some methods, work to do once the response is written.
    fn dispatch(&self, request: &Request) -> (Result<String, RpcError>, Option<After>) {
        let params = request.params();
        let id = request.id.as_str();
        let mut after: Option<After> = None;
        let result = match request.method.as_str() {
            "initialize" => decode_params(params).and_then(|p| encode(id, self.initialize(p))),
            "process/start" => self.gated(Family::Exec, id, params, |p: StartParams, session| {
                let id = p.process_id.clone();
                let started = session.processes.start(p)?;
                // §5: the process's notifications wait until this response is written.
                let session = Arc::clone(session);
                after = Some(Box::new(move || session.processes.announce(&id)));
                Ok(started)
            }),
            "process/read" => self.gated(Family::Exec, id, params, |p, s| s.processes.read(p)),
            "process/write" => self.gated(Family::Exec, id, params, |p, s| s.processes.write(p)),
            "process/terminate" => {
                self.gated(Family::Exec, id, params, |p, s| s.processes.terminate(p))
            }
            // Gated methods go through `self.gated(Family::…, params, |p, session| …)`.
            // Issue 13: fs calls carrying a sandbox object may need confinement.
            method @ ("fs/readFile" | "fs/writeFile" | "fs/createDirectory" | "fs/getMetadata"
            | "fs/readDirectory" | "fs/remove" | "fs/copy")
                if fs::carries_sandbox(params) =>
            {
                self.gated(Family::Filesystem, id, params, |p, _| {
                    fs::run_sandboxed(method, params, p)
                })
            }
            "fs/readFile" => self
                .gated_into(Family::Filesystem, id, params, |p, _, out| fs::read_file_into(p, out)),
            "fs/writeFile" => self.gated(Family::Filesystem, id, params, |p, _| fs::write_file(p)),
            "fs/createDirectory" => {
                self.gated(Family::Filesystem, id, params, |p, _| fs::create_directory(p))
            }
            "fs/getMetadata" => {
                self.gated(Family::Filesystem, id, params, |p, _| fs::get_metadata(p))
            }
            "fs/readDirectory" => {
                self.gated(Family::Filesystem, id, params, |p, _| fs::read_directory(p))
            }
            "fs/remove" => self.gated(Family::Filesystem, id, params, |p, _| fs::remove(p)),
            "fs/copy" => self.gated(Family::Filesystem, id, params, |p, _| fs::copy(p)),
            other => Err(RpcError::method_not_found(other)),
        };
        (result, after)
    }

    /// A gated method in the §2.2 order: decode params, pass the handshake gate (§3.4),
    /// run the handler, serialize its result.
    fn gated<'a, P, R>(
        &self,
        family: Family,
        id: &str,
        params: &'a str,
        handler: impl FnOnce(P, &Arc<Session>) -> Result<R, RpcError>,
    ) -> Result<String, RpcError>
    where
        P: Deserialize<'a>,
        R: Serialize,
    {
        let params = decode_params(params)?;
        let session = self.gate(family)?;
        encode(id, handler(params, &session))
    }

    /// `gated` for a handler that writes its result's JSON itself, straight into the
    /// response message, so a large result (a file's base64) is never copied.
    fn gated_into<'a, P>(
        &self,
        family: Family,
        id: &str,
        params: &'a str,
        handler: impl FnOnce(P, &Arc<Session>, &mut String) -> Result<(), RpcError>,
    ) -> Result<String, RpcError>
    where
        P: Deserialize<'a>,
    {
        let params = decode_params(params)?;
        let session = self.gate(family)?;
        let mut text = format!("{{\"id\":{id},\"result\":");
        handler(params, &session, &mut text)?;
        text.push('}');
        Ok(text)
    }

    /// §3.4: the session, if this connection may use `family` methods now.
    fn gate(&self, family: Family) -> Result<Arc<Session>, RpcError> {
        let state = self.lock();
        let family = family.name();
        let session = state.session.as_ref().ok_or_else(|| {
            RpcError::invalid_request(format!(
                "client must call initialize before using {family} methods"
            ))
        })?;
        if !state.initialized {
            return Err(RpcError::invalid_request(format!(
                "client must send initialized before using {family} methods"
            )));
        }
        if session.attached_elsewhere(self.id) {
            return Err(RpcError::invalid_request(
                "session has been resumed by another connection",
            ));
        }
        Ok(Arc::clone(session))
    }

    fn initialize(&self, p: InitializeParams) -> Result<InitializeResponse, RpcError> {
        let mut state = self.lock();
        if state.session.is_some() {
            return Err(RpcError::invalid_request(
                "initialize may only be sent once per connection",
            ));
        }
        if state.closed {
            return Err(RpcError::invalid_request("connection closed"));
        }
        let sessions = &self.server.sessions;
        let out = Arc::clone(&self.out);
        let session = match p.resume_session_id {
            Some(id) => sessions.resume(&id, self.id, out)?,
            None => sessions.create(self.id, out),
        };
        log::info!("connection {}: client `{}` on session {}", self.id, p.client_name, session.id);
        let session_id = session.id.clone();
        state.session = Some(session);
        Ok(InitializeResponse { session_id })
    }
}

/// Work to run after a response is written (e.g. releasing a process's notifications).
type After = Box<dyn FnOnce() + Send>;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct InitializeParams {
    client_name: String,
    #[serde(default)]
    resume_session_id: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct InitializeResponse {
    session_id: String,
}

/// The message shapes of §2.1, borrowing from the frame.
#[derive(Debug)]
enum Message<'a> {
    Request { method: Cow<'a, str>, id: &'a str, params: Option<&'a RawValue> },
    Notification { method: Cow<'a, str> },
    Response,
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(default, borrow, deserialize_with = "present")]
    id: Option<&'a RawValue>,
    #[serde(default, borrow)]
    method: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    params: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    result: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    error: Option<&'a RawValue>,
}

/// Keeps a member that is present but `null` distinct from an absent one.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

/// Why a message is malformed (§1.4); the text follows the connection's prefix.
#[derive(Debug)]
struct Malformed(String);

impl std::fmt::Display for Malformed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Decodes one message's envelope (§2.1).
fn decode(text: &str) -> Result<Message<'_>, Malformed> {
    let trimmed = text.trim_start();
    if trimmed.starts_with('[') {
        return Err(Malformed("batch requests are not supported".into()));
    }
    if nesting_exceeds(text, MAX_NESTING) {
        return Err(Malformed(format!("nesting deeper than {MAX_NESTING} levels")));
    }
    if !trimmed.starts_with('{') {
        // Let the decoder describe what it found instead of an object.
        let e = serde_json::from_str::<serde::de::IgnoredAny>(text).err();
        return Err(Malformed(
            e.map_or_else(|| "expected a JSON object".into(), |e| e.to_string()),
        ));
    }
    let envelope: Envelope = serde_json::from_str(text).map_err(|e| Malformed(e.to_string()))?;
    let params = envelope.params.filter(|p| p.get() != "null");
    match (envelope.method, envelope.id) {
        (Some(method), Some(id)) => {
            let raw = id.get();
            let valid = raw.starts_with('"') || raw.parse::<i64>().is_ok();
            if !valid {
                return Err(Malformed(format!(
                    "request id must be a string or a 64-bit integer, got {raw}"
                )));
            }
            Ok(Message::Request { method, id: raw, params })
        }
        (Some(method), None) => Ok(Message::Notification { method }),
        (None, Some(_)) if envelope.result.is_some() || envelope.error.is_some() => {
            Ok(Message::Response)
        }
        (None, _) => Err(Malformed("message has no `method` and is not a response".into())),
    }
}

/// True when `json` nests arrays/objects deeper than `max` (strings are skipped).
///
/// A string body is skipped with a `memchr` search for its closing quote (a quote is
/// escaped exactly when an odd run of backslashes precedes it): the scan covers the whole
/// message, and a file's base64 makes up nearly all of a large one.
fn nesting_exceeds(json: &str, max: usize) -> bool {
    let bytes = json.as_bytes();
    let mut depth = 0usize;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => match closing_quote(json, i + 1) {
                Some(end) => i = end,
                None => return false,
            },
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    false
}

/// The index of the unescaped quote that ends a string whose body starts at `from`.
fn closing_quote(json: &str, from: usize) -> Option<usize> {
    let bytes = json.as_bytes();
    let mut at = from;
    loop {
        // `str::find` with a char searches with `memchr`, a word at a time.
        let quote = at + json.get(at..)?.find('"')?;
        let backslashes = bytes[from..quote].iter().rev().take_while(|&&b| b == b'\\').count();
        if backslashes % 2 == 0 {
            return Some(quote);
        }
        at = quote + 1;
    }
}

/// Params at least this long have their ordering keys picked out by `only_members`
/// before decoding; below it, one direct decode is cheaper than the extra pass.
const KEYS_SCAN_MIN_BYTES: usize = 4096;
/// The params members `keys` reads (the fields of its `Named`).
const KEY_MEMBERS: [&str; 5] = ["processId", "path", "sourcePath", "destinationPath", "waitMs"];

/// The ordering keys of a request (§1.5), read from its raw params, and whether it asks
/// to long-poll (`waitMs` above zero).
fn keys(params: &str) -> (Vec<Key>, bool) {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Named {
        process_id: Option<String>,
        path: Option<String>,
        source_path: Option<String>,
        destination_path: Option<String>,
        wait_ms: Option<u64>,
    }
    // In large params only the named members are decoded: a file's base64 is skipped with
    // a `memchr` search, not walked by the decoder. Params of any other shape have no keys.
    let wanted =
        (params.len() >= KEYS_SCAN_MIN_BYTES).then(|| only_members(params, &KEY_MEMBERS)).flatten();
    let Ok(named) = serde_json::from_str::<Named>(wanted.as_deref().unwrap_or(params)) else {
        return (Vec::new(), false);
    };
    let waits = named.wait_ms.is_some_and(|ms| ms > 0);
    let mut keys = Vec::new();
    if let Some(id) = named.process_id {
        keys.push(Key::Process(id));
    }
    for path in [named.path, named.source_path, named.destination_path].into_iter().flatten() {
        if let Some(path) = fs::normalize(&path) {
            keys.push(Key::Path(path));
        }
    }
    (keys, waits)
}

/// The members of the JSON object `json` named in `names`, as an object of their own that
/// a decoder ignoring other members reads the same way (duplicates stay duplicates). The
/// text must be valid JSON, as every message's is once its envelope has decoded. None when
/// it is not an object, or when a member's name has an escape (and so may be any name).
fn only_members(json: &str, names: &[&str]) -> Option<String> {
    let bytes = json.as_bytes();
    let mut out = String::from("{");
    let mut at = skip_whitespace(bytes, 0);
    if bytes.get(at) != Some(&b'{') {
        return None;
    }
    at += 1;
    loop {
        at = skip_whitespace(bytes, at);
        match bytes.get(at)? {
            b'}' => break,
            b',' => at = skip_whitespace(bytes, at + 1),
            _ => {}
        }
        let member = at;
        if bytes.get(at) != Some(&b'"') {
            return None;
        }
        let name_end = closing_quote(json, at + 1)?;
        let name = &json[at + 1..name_end];
        if name.contains('\\') {
            return None;
        }
        at = skip_whitespace(bytes, name_end + 1);
        if bytes.get(at) != Some(&b':') {
            return None;
        }
        at = value_end(json, skip_whitespace(bytes, at + 1))?;
        if names.contains(&name) {
            if out.len() > 1 {
                out.push(',');
            }
            out.push_str(&json[member..at]);
        }
    }
    out.push('}');
    Some(out)
}

fn skip_whitespace(bytes: &[u8], mut at: usize) -> usize {
    while matches!(bytes.get(at), Some(b' ' | b'\t' | b'\n' | b'\r')) {
        at += 1;
    }
    at
}

/// The end of the valid JSON value starting at `start`.
fn value_end(json: &str, start: usize) -> Option<usize> {
    let bytes = json.as_bytes();
    match bytes.get(start)? {
        b'"' => closing_quote(json, start + 1).map(|quote| quote + 1),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut at = start;
            loop {
                match bytes.get(at)? {
                    b'"' => at = closing_quote(json, at + 1)?,
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(at + 1);
                        }
                    }
                    _ => {}
                }
                at += 1;
            }
        }
        // A number or a literal: it runs to the next delimiter.
        _ => Some(
            bytes[start..]
                .iter()
                .position(|b| matches!(b, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r'))
                .map_or(bytes.len(), |n| start + n),
        ),
    }
}

/// Requests that finish without blocking on anything but a local syscall, and so may run
/// on the reader's thread.
fn is_quick(method: &str, waits: bool) -> bool {
    match method {
        "initialize" | "process/write" | "process/terminate" | "fs/getMetadata" => true,
        "process/read" => !waits,
        _ => false,
    }
}

/// Decodes typed params; the error is the decoder's text without its position (§2.2).
fn decode_params<'a, P: Deserialize<'a>>(params: &'a str) -> Result<P, RpcError> {
    serde_json::from_str(params).map_err(|e| {
        let text = e.to_string();
        let position = format!(" at line {} column {}", e.line(), e.column());
        RpcError::invalid_params(text.strip_suffix(&position).unwrap_or(&text))
    })
}

/// Serializes a handler's result straight into its response message.
fn encode<R: Serialize>(id: &str, result: Result<R, RpcError>) -> Result<String, RpcError> {
    let value = result?;
    let mut text = Vec::with_capacity(64);
    text.extend_from_slice(b"{\"id\":");
    text.extend_from_slice(id.as_bytes());
    text.extend_from_slice(b",\"result\":");
    serde_json::to_writer(&mut text, &value).map_err(|e| RpcError::internal(e.to_string()))?;
    text.push(b'}');
    // serde_json writes UTF-8 and the id is a slice of a `str`.
    String::from_utf8(text).map_err(|e| RpcError::internal(e.to_string()))
}

fn error_text(id: &str, error: &RpcError) -> String {
    let message = serde_json::to_string(&error.message).unwrap_or_else(|_| "\"\"".into());
    format!("{{\"id\":{id},\"error\":{{\"code\":{},\"message\":{message}}}}}", error.code)
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(text: &str) -> (String, String, Option<String>) {
        match decode(text).expect("well-formed") {
            Message::Request { method, id, params } => {
                (method.into_owned(), id.to_string(), params.map(|p| p.get().to_string()))
            }
            other => panic!("not a request: {other:?}"),
        }
    }

    #[test]
    fn ids_keep_their_json_type() {
        assert_eq!(request(r#"{"id":0,"method":"m"}"#).1, "0");
        assert_eq!(request(r#"{"id":-7,"method":"m"}"#).1, "-7");
        assert_eq!(request(r#"{"id":9223372036854775807,"method":"m"}"#).1, "9223372036854775807");
        assert_eq!(request(r#"{"id":"x","method":"m"}"#).1, "\"x\"");
    }

    #[test]
    fn other_ids_are_malformed() {
        for text in [
            r#"{"id":1.5,"method":"m"}"#,
            r#"{"id":null,"method":"m"}"#,
            r#"{"id":9223372036854775808,"method":"m"}"#,
            r#"{"id":[1],"method":"m"}"#,
            r#"{"id":{},"method":"m"}"#,
        ] {
            assert!(decode(text).is_err(), "{text}");
        }
    }

    #[test]
    fn shapes() {
        assert!(matches!(decode(r#"{"method":"initialized"}"#), Ok(Message::Notification { .. })));
        assert!(matches!(decode(r#"{"id":1,"result":{}}"#), Ok(Message::Response)));
        assert!(matches!(decode(r#"{"id":1,"error":{"code":1}}"#), Ok(Message::Response)));
        assert!(decode(r#"{"id":1}"#).is_err());
        assert!(decode("[1]").is_err());
        assert!(decode("5").is_err());
        assert!(decode("not-json").is_err());
        assert!(decode(r#"{"id":1,"method":5}"#).is_err());
        let (method, _, params) = request(r#"{"jsonrpc":"2.0","id":1,"method":"m","params":null}"#);
        assert_eq!((method.as_str(), params), ("m", None));
        let (_, _, params) = request(r#"{"id":1,"method":"m","params":{"a":[1]},"trace":{}}"#);
        assert_eq!(params.as_deref(), Some(r#"{"a":[1]}"#));
    }

    #[test]
    fn nesting_limit() {
        let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        assert!(!nesting_exceeds(&deep(128), 128));
        assert!(nesting_exceeds(&deep(129), 128));
        assert!(!nesting_exceeds(r#"{"a":"[[[[\"[[["}"#, 2));
        assert!(!nesting_exceeds(r#"{"a":"\\\\"}"#, 1));
        assert!(nesting_exceeds(r#"{"a":"\\\\",["#, 1));
        assert!(!nesting_exceeds(r#"{"a":"\\\"[[["#, 1));
        assert!(nesting_exceeds(r#"{"a":"x\\"}[[]]"#, 1));
        let text = format!(r#"{{"id":1,"method":"m","params":{}}}"#, deep(100_000));
        assert!(decode(&text).is_err());
    }

    #[test]
    fn decode_errors_carry_no_position() {
        let e = decode_params::<InitializeParams>("{}").err().expect("fails");
        assert_eq!(e, RpcError::invalid_params("missing field `clientName`"));
    }

    #[test]
    fn keys_name_processes_and_normalized_paths() {
        assert_eq!(keys(r#"{"processId":"p1","chunk":""}"#).0, vec![Key::Process("p1".into())]);
        assert_eq!(
            keys(r#"{"sourcePath":"/a/./b/../c","destinationPath":"/d"}"#).0,
            vec![Key::Path("/a/c".into()), Key::Path("/d".into())]
        );
        assert_eq!(keys(r#"{"path":"relative"}"#).0, vec![]);
        assert_eq!(keys("[1,2]").0, vec![]);
        assert!(keys(r#"{"processId":"p","waitMs":5000}"#).1);
        assert!(!keys(r#"{"processId":"p","waitMs":0}"#).1);
        assert!(!keys(r#"{"processId":"p","waitMs":null}"#).1);
    }

    #[test]
    fn keys_read_only_the_named_members_as_a_full_decode_would() {
        let full = |params: &str| -> Option<Vec<(String, serde_json::Value)>> {
            let value: serde_json::Map<String, serde_json::Value> =
                serde_json::from_str(params).ok()?;
            Some(value.into_iter().filter(|(k, _)| KEY_MEMBERS.contains(&k.as_str())).collect())
        };
        for params in [
            r#"{}"#,
            r#" { "path" : "/a" , "dataBase64" : "QUJD" } "#,
            r#"{"dataBase64":"x\"}{[\\","path":"/b","n":{"path":"/no","a":[1,"]"]}}"#,
            r#"{"processId":"p","waitMs":12,"x":-1.5e3,"y":true,"z":null,"w":[[],{}]}"#,
            "{\n\t\"sourcePath\":\"/s\",\r\"destinationPath\":\"/d\"}",
            r#"{"path":"/a","path":"/b"}"#,
        ] {
            let wanted = only_members(params, &KEY_MEMBERS).expect("an object with plain names");
            assert_eq!(
                serde_json::from_str::<serde_json::Value>(&wanted).ok(),
                full(params).map(|m| serde_json::Value::Object(m.into_iter().collect())),
                "{params}"
            );
        }
        assert_eq!(only_members("[1]", &["path"]), None);
        assert_eq!(only_members(r#"{"p\u0061th":"/x"}"#, &["path"]), None);
        // Escaped names fall back to the full decode, which reads them.
        assert_eq!(keys(r#"{"p\u0061th":"/x"}"#).0, vec![Key::Path("/x".into())]);
        // A duplicate is still a decode error, so no keys.
        assert_eq!(keys(r#"{"path":"/a","path":"/b"}"#).0, vec![]);
        let large = format!(r#"{{"data":"{}\"","path":"/a/../b","waitMs":1}}"#, "x".repeat(5000));
        assert_eq!(keys(&large), (vec![Key::Path("/b".into())], true));
    }

    fn key(name: &str) -> Key {
        Key::Process(name.into())
    }

    #[test]
    fn barriers_run_alone_and_block_what_follows() {
        let none = HashMap::new();
        let a = [key("a")];
        // initialize at the head with nothing running starts alone.
        let q = [(true, &[][..]), (false, &a[..])];
        assert_eq!(startable(q.into_iter(), 0, &none, 16), vec![0]);
        // ... but waits for what runs before it, and nothing passes it.
        assert_eq!(startable(q.into_iter(), 1, &none, 16), Vec::<usize>::new());
        let q = [(false, &[][..]), (true, &[][..]), (false, &[][..])];
        assert_eq!(startable(q.into_iter(), 0, &none, 16), vec![0]);
    }

    #[test]
    fn same_key_waits_in_arrival_order_other_keys_pass() {
        let a = [key("a")];
        let b = [key("b")];
        let none = HashMap::new();
        let q = [(false, &a[..]), (false, &a[..]), (false, &b[..])];
        assert_eq!(startable(q.into_iter(), 0, &none, 16), vec![0, 2]);
        let busy: HashMap<Key, usize> = [(key("a"), 1)].into_iter().collect();
        let q = [(false, &a[..]), (false, &b[..])];
        assert_eq!(startable(q.into_iter(), 1, &busy, 16), vec![1]);
        let path = [Key::Path("/x".into()), key("b")];
        let q = [(false, &path[..]), (false, &b[..])];
        assert_eq!(startable(q.into_iter(), 0, &none, 16), vec![0]);
    }

    #[test]
    fn the_concurrency_limit_holds_everything_behind_in_order() {
        let none = HashMap::new();
        let q = [(false, &[][..]), (false, &[][..]), (false, &[][..])];
        assert_eq!(startable(q.into_iter(), 14, &none, 16), vec![0, 1]);
        assert_eq!(startable(q.into_iter(), 16, &none, 16), Vec::<usize>::new());
    }

    #[test]
    fn error_text_escapes_the_message() {
        let e = RpcError::invalid_request("a \"quoted\" word");
        assert_eq!(
            error_text("\"x\"", &e),
            r#"{"id":"x","error":{"code":-32600,"message":"a \"quoted\" word"}}"#
        );
    }
}
