//! One client connection's JSON-RPC state (PROTOCOL.md §1.5, §3.5): the queue of requests in
//! arrival order, the ordering rule that decides which may start, handing them to the pool
//! (or running a quick one on the reader's thread), writing each response and closing.
//! What a method does is dispatch.rs's business; it never touches sockets.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::ops::Range;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use super::envelope::{check_id, decode, error_text, keys, Key, Message, Text};
use super::outline::{outline, Field, Outline};
use super::session::Session;
use super::{lock, Server};
use crate::error::RpcError;
use crate::outbound::{CloseReason, Outbound};

/// Requests of one connection waiting for their turn; past this the reader stops reading,
/// so a client that pipelines without end is slowed by TCP instead of growing our memory.
const MAX_QUEUED_REQUESTS: usize = 1024;

/// One client connection's JSON-RPC state: its session, handshake progress and the
/// requests waiting for or holding their turn (§1.5).
pub struct Connection {
    pub(super) id: u64,
    pub(super) server: Arc<Server>,
    pub(super) out: Arc<dyn Outbound>,
    pub(super) prefix: String,
    pub(super) state: Mutex<ConnState>,
    /// Signalled when the waiting queue shrinks.
    pub(super) room: Condvar,
}

#[derive(Default)]
pub(super) struct ConnState {
    pub(super) session: Option<Arc<Session>>,
    pub(super) initialized: bool,
    pub(super) closed: bool,
    /// Items in arrival order that have not started.
    queue: VecDeque<Item>,
    /// Requests executing now.
    running: usize,
    /// Threads waiting on `room` (for a full queue to shrink, or in `drain`): without any,
    /// a notification would be a wasted system call per request.
    waiting: usize,
    /// Ordering keys held by executing requests, with how many hold each. A list: it holds
    /// at most one entry per running request (the concurrency limit), where hashing a path
    /// twice per request cost more than comparing a few.
    busy: Vec<(Key, usize)>,
}

enum Item {
    Request(Request),
    Initialized,
}

impl Item {
    /// What the scheduler needs to know: is it a barrier, and which keys does it name.
    pub(super) fn shape(&self) -> (bool, &[Key]) {
        match self {
            Item::Initialized => (true, &[]),
            Item::Request(request) => (
                request.is_barrier(),
                request.keys.as_deref().expect("keys read before scheduling"),
            ),
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
    busy: &[(Key, usize)],
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
        let clash = keys.iter().any(|k| busy.iter().any(|(b, _)| b == k) || held.contains(&k));
        held.extend(keys);
        if !clash {
            picks.push(index);
            running += 1;
        }
    }
    picks
}

/// A decoded request, carrying the frame its id, method and params point into.
pub(super) struct Request {
    /// The id's JSON text, echoed unchanged.
    id: Range<usize>,
    method: Piece,
    frame: Text,
    params: Option<Range<usize>>,
    /// The params' members and whether they carry a sandbox, when the outline found them.
    members: Option<Vec<Field>>,
    sandbox: Option<bool>,
    /// Read when first needed (`read_keys`): a lone request is started without them.
    keys: Option<Vec<Key>>,
    /// May run on the reader's own thread (see `Connection::handle`).
    quick: bool,
}

/// Where a request's text is: a slice of the frame, or its own when decoding changed it (a
/// method name written with escapes). Slices spare two allocations per request.
enum Piece {
    At(Range<usize>),
    Own(String),
}

/// The position of `part`, a slice of `whole`, within it.
fn span(whole: &str, part: &str) -> Range<usize> {
    let start = part.as_ptr() as usize - whole.as_ptr() as usize;
    start..start + part.len()
}

impl Request {
    pub(super) fn id(&self) -> &str {
        &self.frame.as_str()[self.id.clone()]
    }

    pub(super) fn method(&self) -> &str {
        match &self.method {
            Piece::At(range) => &self.frame.as_str()[range.clone()],
            Piece::Own(method) => method,
        }
    }

    pub(super) fn params(&self) -> &str {
        match &self.params {
            Some(range) => &self.frame.as_str()[range.clone()],
            None => "{}",
        }
    }
    /// The params' members (positions in `params()`), when the outline found them.
    pub(super) fn members(&self) -> Option<&[Field]> {
        self.members.as_deref()
    }

    /// Whether the params may carry a sandbox object (`fs::confined::carries_sandbox`).
    pub(super) fn carries_sandbox(&self) -> bool {
        self.sandbox.unwrap_or_else(|| crate::fs::confined::carries_sandbox(self.params()))
    }

    fn is_barrier(&self) -> bool {
        self.method() == "initialize"
    }

    /// A request of `frame`, with its ordering keys and whether it may run on the
    /// reader's thread.
    fn new(
        frame: Text,
        (id, method, params): (Range<usize>, Piece, Option<Range<usize>>),
        members: Option<Vec<Field>>,
        sandbox: Option<bool>,
    ) -> Request {
        let mut request =
            Request { id, method, frame, params, members, sandbox, keys: None, quick: false };
        // Only a read's quickness depends on its params (`waitMs`).
        let waits = if request.method() == "process/read" {
            let (keys, waits) = keys(request.params(), request.members());
            request.keys = Some(keys);
            waits
        } else {
            false
        };
        request.quick = is_quick(request.method(), waits);
        request
    }

    /// Reads the ordering keys if they are not read yet.
    fn read_keys(&mut self) {
        if self.keys.is_none() {
            self.keys = Some(keys(self.params(), self.members()).0);
        }
    }

    /// A request as the outline found it: nothing decoded twice.
    fn outlined(frame: Text, o: Outline) -> Result<Request, super::envelope::Malformed> {
        check_id(&frame.as_str()[o.id.clone()])?;
        let parts = (o.id, Piece::At(o.method), o.params);
        Ok(Request::new(frame, parts, o.members, Some(o.sandbox)))
    }
}

/// Whether the reader should keep reading this connection.
#[derive(Debug, PartialEq, Eq)]
pub enum Flow {
    Continue,
    Close,
}

impl Connection {
    /// Handles one inbound message (a websocket message or a stdio line).
    pub fn handle(self: &Arc<Self>, text: Text) -> Flow {
        // Most requests are outlined in one pass; the rest take the decoder's path.
        let item = match outline(text.as_str()) {
            Some(o) => match Request::outlined(text, o) {
                Ok(request) => Item::Request(request),
                Err(e) => return self.malformed(&e.0),
            },
            None => match self.decoded(text) {
                Ok(item) => item,
                Err(flow) => return flow,
            },
        };
        let mut state = self.lock();
        while state.queue.len() >= MAX_QUEUED_REQUESTS && !state.closed {
            state.waiting += 1;
            state = self.room.wait(state).unwrap_or_else(PoisonError::into_inner);
            state.waiting -= 1;
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

    /// What a message the outline does not vouch for is, by the envelope decoder; Err
    /// with the flow once it has been answered or the connection closed.
    fn decoded(self: &Arc<Self>, text: Text) -> Result<Item, Flow> {
        let parts = match decode(text.as_str()) {
            Ok(Message::Request { method, id, params }) => {
                let method = match method {
                    Cow::Borrowed(m) => Piece::At(span(text.as_str(), m)),
                    Cow::Owned(m) => Piece::Own(m),
                };
                (span(text.as_str(), id), method, params.map(|p| span(text.as_str(), p.get())))
            }
            Ok(Message::Notification { method }) if method == "initialized" => {
                return Ok(Item::Initialized)
            }
            Ok(Message::Notification { method }) => {
                log::warn!("connection {}: unknown notification `{method}`; closing", self.id);
                return Err(self.close_for(CloseReason::Protocol));
            }
            Ok(Message::Response) => {
                log::warn!("connection {}: client sent a response; closing", self.id);
                return Err(self.close_for(CloseReason::Protocol));
            }
            Err(e) => return Err(self.malformed(&e.0)),
        };
        Ok(Item::Request(Request::new(text, parts, None, None)))
    }

    /// Answers a message the transport could not even turn into text (§1.4).
    pub fn malformed(&self, detail: &str) -> Flow {
        let error = RpcError::invalid_request(format!("{}{detail}", self.prefix));
        let _ = self.out.send(error_text("-1", &error));
        Flow::Continue
    }

    /// Waits, for at most `grace`, until every request received so far has been answered.
    pub fn drain(&self, grace: std::time::Duration) {
        let mut state = self.lock();
        state.waiting += 1;
        let (mut state, _) = self
            .room
            .wait_timeout_while(state, grace, |s| {
                !s.closed && (s.running > 0 || !s.queue.is_empty())
            })
            .unwrap_or_else(PoisonError::into_inner);
        state.waiting -= 1;
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

    pub(super) fn lock(&self) -> MutexGuard<'_, ConnState> {
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
            // Alone with nothing running, a quick request has nothing to be ordered
            // against, and nothing can queue behind it while the reader runs it: it needs
            // neither its keys read nor marked busy.
            let quick = matches!(state.queue.front(), Some(Item::Request(r)) if r.quick);
            if inline && quick && state.running == 0 && state.queue.len() == 1 {
                if let Some(Item::Request(request)) = state.queue.pop_front() {
                    state.running += 1;
                    self.wake(state);
                    return (Flow::Continue, Some(request));
                }
            }
            for item in state.queue.iter_mut() {
                if let Item::Request(request) = item {
                    request.read_keys();
                }
            }
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
                    self.wake(state);
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
            for request in started.into_iter().rev() {
                for key in request.keys.iter().flatten() {
                    match state.busy.iter_mut().find(|(b, _)| b == key) {
                        Some((_, count)) => *count += 1,
                        None => state.busy.push((key.clone(), 1)),
                    }
                }
                state.running += 1;
                let conn = Arc::clone(self);
                self.server.pool.submit(Box::new(move || conn.execute(request)));
            }
            break;
        }
        self.wake(state);
        (Flow::Continue, None)
    }

    /// Tells the threads waiting on `room`, if any, that the queue or the running set
    /// changed.
    fn wake(&self, state: &ConnState) {
        if state.waiting > 0 {
            self.room.notify_all();
        }
    }

    /// Runs one request on a pool worker and writes its response.
    fn execute(self: Arc<Self>, request: Request) {
        // The clock is read only for the debug line that reports it.
        let started = log::log_enabled!(log::Level::Debug).then(Instant::now);
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
        let text = result.unwrap_or_else(|e| error_text(request.id(), &e));
        let _ = self.out.send(text);
        if let Some(after) = after {
            after();
        }
        let mut state = self.lock();
        if let Some(started) = started {
            let elapsed = started.elapsed();
            let session = state.session.as_ref().map(|s| s.id.clone()).unwrap_or_default();
            log::debug!(
                requestId = request.id(), method = request.method(),
                session = session.as_str(), connection = self.id,
                elapsedUs = elapsed.as_micros() as u64, error = failed;
                "request {} {} answered in {elapsed:?}{}",
                request.id(),
                request.method(),
                if failed { " (error)" } else { "" }
            );
        }
        state.running -= 1;
        // A request started alone never had its keys marked (`pump`).
        for key in request.keys.iter().flatten() {
            if let Some(at) = state.busy.iter().position(|(b, _)| b == key) {
                state.busy[at].1 -= 1;
                if state.busy[at].1 == 0 {
                    state.busy.swap_remove(at);
                }
            }
        }
        if !state.closed {
            self.pump(&mut state, false);
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> Key {
        Key::Process(name.into())
    }

    #[test]
    fn barriers_run_alone_and_block_what_follows() {
        let none: [(Key, usize); 0] = [];
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
        let none: [(Key, usize); 0] = [];
        let q = [(false, &a[..]), (false, &a[..]), (false, &b[..])];
        assert_eq!(startable(q.into_iter(), 0, &none, 16), vec![0, 2]);
        let busy = [(key("a"), 1)];
        let q = [(false, &a[..]), (false, &b[..])];
        assert_eq!(startable(q.into_iter(), 1, &busy, 16), vec![1]);
        let path = [Key::Path("/x".into()), key("b")];
        let q = [(false, &path[..]), (false, &b[..])];
        assert_eq!(startable(q.into_iter(), 0, &none, 16), vec![0]);
    }

    #[test]
    fn the_concurrency_limit_holds_everything_behind_in_order() {
        let none: [(Key, usize); 0] = [];
        let q = [(false, &[][..]), (false, &[][..]), (false, &[][..])];
        assert_eq!(startable(q.into_iter(), 14, &none, 16), vec![0, 1]);
        assert_eq!(startable(q.into_iter(), 16, &none, 16), Vec::<usize>::new());
    }
}
