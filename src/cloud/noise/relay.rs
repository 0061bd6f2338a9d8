//! Serving one Noise relay link (notes/noise-spec.md §4–§6): the rendezvous websocket carries
//! protobuf frames for many virtual streams, each its own hybrid-IK handshake and its own
//! JSON-RPC connection. It owns the link (guarded writer on a non-blocking socket, the
//! `poll(2)` read loop, keepalive), the stream table, the harness key validation threads
//! and each stream's record state. JSON-RPC itself stays in `rpc`: a stream is an
//! `rpc::Outbound` plus a thread feeding `Connection::handle` — the same seam stdio uses.
//!
//! Faults are per stream: a bad frame is dropped, a bad record or an unauthorized key
//! resets that stream (`noise_relay_protocol_error`); only socket errors, an oversized
//! message or silence end the link. Nothing here logs key material or authorizations.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use tungstenite::protocol::WebSocketConfig;
use tungstenite::{Bytes, Error as WsError, Message, WebSocket};

use super::channel::{prologue, Channel, Identity, PendingResponder};
use super::frame::{self, Frame, RESET_REASON};
use super::framing::{self, Reassembler, Reorder, Sequencer};
use crate::cloud::registry_v2::RegistryV2;
use crate::outbound::{CloseReason, Closed, Outbound};
use crate::rpc::{Flow, Server, Transport};
use crate::shutdown;
use crate::transport::guarded::{wait_for, GuardedSocket};

/// Largest websocket message on the link (0.171: 256 KiB); a bigger one ends the link.
pub const LINK_MESSAGE_MAX_BYTES: usize = 256 << 10;
/// Streams served at once on one link.
pub const STREAMS_MAX: usize = 128;
/// Handshakes waiting for the registry at once.
pub const PENDING_VALIDATIONS_MAX: usize = 32;
/// Longest harness key authorization accepted, in bytes.
pub const AUTHORIZATION_MAX_BYTES: usize = 4096;
/// Complete JSON-RPC messages queued for one stream before it is reset as overloaded.
const INBOUND_QUEUE_MESSAGES: usize = 256;
/// Handshake failures on one link before new handshakes are refused for a while.
const HANDSHAKE_FAILURES_MAX: u32 = 8;
/// How long handshakes are refused after too many failures.
const HANDSHAKE_PAUSE: Duration = Duration::from_secs(10);

/// What one link needs besides its socket.
#[derive(Clone)]
pub struct LinkContext {
    pub environment_id: String,
    pub executor_registration_id: String,
    pub identity: Identity,
    pub registry: RegistryV2,
    pub ping_every: Duration,
    pub dead_after: Duration,
}

/// The link's writing half: the guarded websocket on a non-blocking socket.
struct Link<S> {
    socket: GuardedSocket<S>,
}

impl<S: Read + Write> Link<S> {
    fn lock(&self) -> MutexGuard<'_, WebSocket<S>> {
        self.socket.lock()
    }

    /// Writes one message and flushes it; a relay that accepts nothing for the write-stall
    /// limit loses the link.
    fn write(&self, message: Message) -> Result<(), Closed> {
        self.socket.write(message, |stall| {
            log::warn!("relay accepted nothing for {stall:?}; dropping the link");
            self.close();
        })
    }

    fn send(&self, frame: Vec<u8>) -> Result<(), Closed> {
        self.write(Message::Binary(Bytes::from(frame)))
    }

    fn reset(&self, stream_id: &str) {
        let _ = self.send(frame::encode_reset(stream_id, RESET_REASON));
    }

    /// Ends the link: wakes the reader, which tears everything down.
    fn close(&self) {
        if !self.socket.room.closing.swap(true, Ordering::SeqCst) {
            // SAFETY: shutting down a socket we own; the descriptor stays open until drop.
            unsafe { libc::shutdown(self.socket.room.fd, libc::SHUT_RDWR) };
        }
    }
}

/// One authenticated virtual stream: its Noise channel, send turn, receive state and the
/// queue into its JSON-RPC connection.
struct VStream<S> {
    id: String,
    instance: u64,
    link: Arc<Link<S>>,
    channel: Mutex<Channel>,
    /// Held across encrypt + write so records leave in sequence order.
    send_turn: Mutex<Sequencer>,
    receive: Mutex<(Reorder, Reassembler)>,
    inbound: Mutex<Option<SyncSender<String>>>,
    closed: AtomicBool,
}

impl<S: Read + Write> VStream<S> {
    /// Decrypts one data frame's record in order and queues every completed message.
    fn receive(&self, seq: u32, payload: Vec<u8>) -> Result<(), String> {
        let mut state = self.receive.lock().unwrap_or_else(PoisonError::into_inner);
        let (reorder, reassembler) = &mut *state;
        for record in reorder.push(seq, payload).map_err(|e| e.to_string())? {
            let plaintext = self
                .channel
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .decrypt(&record)
                .map_err(|e| format!("noise relay decryption failed: {e}"))?;
            for message in reassembler.push(&plaintext).map_err(|e| e.to_string())? {
                let text = String::from_utf8(message)
                    .map_err(|_| "noise relay JSON-RPC message is not UTF-8".to_string())?;
                let inbound = self.inbound.lock().unwrap_or_else(PoisonError::into_inner);
                let Some(tx) = inbound.as_ref() else { return Err("stream closed".into()) };
                match tx.try_send(text) {
                    Ok(()) => {}
                    Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                        return Err("noise virtual stream inbound queue is full or closed".into())
                    }
                }
            }
        }
        Ok(())
    }

    /// Stops feeding the connection; its thread then ends it. True the first time.
    fn shut(&self) -> bool {
        self.inbound.lock().unwrap_or_else(PoisonError::into_inner).take();
        !self.closed.swap(true, Ordering::SeqCst)
    }
}

/// The stream's side of `rpc`: JSON-RPC text in, encrypted data frames out.
struct StreamOut<S>(Arc<VStream<S>>);

impl<S: Read + Write + Send> Outbound for StreamOut<S> {
    fn send(&self, text: String) -> Result<(), Closed> {
        let stream = &self.0;
        if stream.closed.load(Ordering::SeqCst) {
            return Err(Closed);
        }
        let records = framing::records(text.as_bytes()).map_err(|e| {
            log::warn!("stream {}: {e}", stream.id);
            Closed
        })?;
        let mut sequencer = stream.send_turn.lock().unwrap_or_else(PoisonError::into_inner);
        for record in records {
            let seq = sequencer.take().map_err(|_| Closed)?;
            let ciphertext = stream
                .channel
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .encrypt(&record)
                .map_err(|_| Closed)?;
            stream.link.send(frame::encode_data(&stream.id, seq, ciphertext))?;
        }
        Ok(())
    }

    fn close(&self, _: CloseReason) {
        if self.0.shut() {
            self.0.link.reset(&self.0.id);
        }
    }
}

/// The stream table and handshake bookkeeping of one link.
struct Table<S> {
    streams: HashMap<String, Arc<VStream<S>>>,
    /// Stream id → validation number of the handshake waiting for the registry.
    pending: HashMap<String, u64>,
    next_validation: u64,
    failures: u32,
    paused_until: Option<Instant>,
}

struct Shared<S> {
    link: Arc<Link<S>>,
    table: Mutex<Table<S>>,
    ctx: LinkContext,
    server: Arc<Server>,
    next_instance: AtomicU64,
}

impl<S> Shared<S> {
    fn table(&self) -> MutexGuard<'_, Table<S>> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Serves one link until it ends (socket closed or failed, silence, shutdown). Every
/// stream's connection is closed before this returns.
pub fn serve<S>(mut ws: WebSocket<S>, server: &Arc<Server>, ctx: LinkContext)
where
    S: Read + Write + AsRawFd + Send + 'static,
{
    ws.set_config(|c| {
        *c = WebSocketConfig::default()
            .max_message_size(Some(LINK_MESSAGE_MAX_BYTES))
            .max_frame_size(Some(LINK_MESSAGE_MAX_BYTES))
            .write_buffer_size(0)
            .max_write_buffer_size(usize::MAX)
    });
    let fd = ws.get_ref().as_raw_fd();
    if let Err(e) = set_nonblocking(fd) {
        log::warn!("cannot make the relay socket non-blocking: {e}");
        return;
    }
    let link = Arc::new(Link { socket: GuardedSocket::new(ws, fd, server.config.write_stall) });
    let shared = Arc::new(Shared {
        link: Arc::clone(&link),
        table: Mutex::new(Table {
            streams: HashMap::new(),
            pending: HashMap::new(),
            next_validation: 0,
            failures: 0,
            paused_until: None,
        }),
        ctx,
        server: Arc::clone(server),
        next_instance: AtomicU64::new(1),
    });
    read_loop(&shared);
    link.close();
    let streams: Vec<_> = {
        let mut table = shared.table();
        table.pending.clear();
        table.streams.drain().map(|(_, s)| s).collect()
    };
    for stream in streams {
        stream.shut();
    }
}

fn read_loop<S>(shared: &Arc<Shared<S>>)
where
    S: Read + Write + AsRawFd + Send + 'static,
{
    let link = &shared.link;
    let (ping_every, dead_after) = (shared.ctx.ping_every, shared.ctx.dead_after);
    let mut last_heard = Instant::now();
    let mut next_ping = last_heard + ping_every;
    loop {
        if shutdown::requested() || link.socket.room.is_closing() {
            return;
        }
        let message = {
            let mut ws = link.lock();
            match ws.read() {
                Ok(m) => Some(m),
                Err(WsError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => None,
                Err(WsError::Io(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(WsError::Capacity(e)) => {
                    log::warn!("relay link: {e}; dropping the link");
                    return;
                }
                Err(WsError::ConnectionClosed | WsError::AlreadyClosed) => return,
                Err(e) => {
                    log::warn!("relay link read failed: {e}");
                    return;
                }
            }
        };
        let Some(message) = message else {
            let now = Instant::now();
            if now.duration_since(last_heard) >= dead_after {
                log::warn!("relay link silent for {dead_after:?}; dropping it");
                return;
            }
            if now >= next_ping {
                if link.write(Message::Ping(Bytes::new())).is_err() {
                    return;
                }
                next_ping = now + ping_every;
            }
            let wake = next_ping.min(last_heard + dead_after);
            wait_for(
                &[link.socket.room.fd, shutdown::fd()],
                libc::POLLIN,
                Some(wake.saturating_duration_since(now)),
            );
            continue;
        };
        last_heard = Instant::now();
        match message {
            Message::Binary(bytes) => match frame::decode(&bytes) {
                Ok(f) => on_frame(shared, f),
                Err(e) => log::warn!("dropping invalid relay frame: {e}"),
            },
            Message::Text(_) => log::warn!("dropping non-binary relay frame"),
            Message::Close(_) => {
                // Our reply is queued by tungstenite; flush it best effort.
                let _ = link.lock().flush();
                return;
            }
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {
                let _ = link.lock().flush();
            }
        }
    }
}

fn on_frame<S>(shared: &Arc<Shared<S>>, f: Frame)
where
    S: Read + Write + AsRawFd + Send + 'static,
{
    match f {
        Frame::Handshake { stream_id, payload } => on_handshake(shared, stream_id, &payload),
        Frame::Data { stream_id, seq, payload } => {
            let stream = {
                let mut table = shared.table();
                match table.streams.get(&stream_id) {
                    Some(s) => Arc::clone(s),
                    None => {
                        // Data before the handshake completed is always a fault.
                        if table.pending.remove(&stream_id).is_some() {
                            table.failures += 1;
                        }
                        drop(table);
                        log::warn!(
                            "relay data for stream {stream_id} before its handshake; resetting"
                        );
                        shared.link.reset(&stream_id);
                        return;
                    }
                }
            };
            if let Err(e) = stream.receive(seq, payload) {
                log::warn!("stream {stream_id}: {e}; resetting");
                end_stream(shared, &stream);
            }
        }
        Frame::Reset { stream_id, reason } => {
            let stream = {
                let mut table = shared.table();
                table.pending.remove(&stream_id);
                table.streams.remove(&stream_id)
            };
            if let Some(stream) = stream {
                log::info!("stream {stream_id} reset by the harness ({reason})");
                stream.shut();
            }
        }
        Frame::Other { .. } => {}
    }
}

/// Removes `stream` (if it is still the table's) and resets it once.
fn end_stream<S: Read + Write>(shared: &Shared<S>, stream: &Arc<VStream<S>>) {
    {
        let mut table = shared.table();
        if table.streams.get(&stream.id).is_some_and(|s| s.instance == stream.instance) {
            table.streams.remove(&stream.id);
        }
    }
    if stream.shut() {
        shared.link.reset(&stream.id);
    }
}

fn on_handshake<S>(shared: &Arc<Shared<S>>, stream_id: String, request: &[u8])
where
    S: Read + Write + AsRawFd + Send + 'static,
{
    let refuse = |why: &str, failure: bool| {
        log::warn!("relay handshake on stream {stream_id} refused: {why}");
        if failure {
            let mut table = shared.table();
            table.failures += 1;
            if table.failures >= HANDSHAKE_FAILURES_MAX {
                log::warn!("pausing relay handshakes after repeated failures");
                table.paused_until = Some(Instant::now() + HANDSHAKE_PAUSE);
                table.failures = 0;
            }
        }
        shared.link.reset(&stream_id);
    };
    {
        let mut table = shared.table();
        if let Some(until) = table.paused_until {
            if Instant::now() < until {
                drop(table);
                return refuse("handshakes are paused", false);
            }
            table.paused_until = None;
        }
        if table.pending.remove(&stream_id).is_some() {
            drop(table);
            return refuse("a handshake for this stream is already pending", true);
        }
        if let Some(stream) = table.streams.remove(&stream_id) {
            drop(table);
            stream.shut();
            return refuse("the stream is already established", true);
        }
        if table.streams.len() >= STREAMS_MAX {
            drop(table);
            return refuse("too many active streams", false);
        }
        if table.pending.len() >= PENDING_VALIDATIONS_MAX {
            drop(table);
            return refuse("too many pending harness key validations", false);
        }
    }
    let ctx = &shared.ctx;
    let prologue = prologue(&ctx.environment_id, &ctx.executor_registration_id, &stream_id);
    let mut pending = match PendingResponder::read_request(&ctx.identity, &prologue, request) {
        Ok(p) => p,
        Err(e) => return refuse(&e.to_string(), true),
    };
    let authorization = match String::from_utf8(pending.take_payload()) {
        Ok(a) if a.len() <= AUTHORIZATION_MAX_BYTES => a,
        Ok(_) => return refuse("authorization is too long", true),
        Err(_) => return refuse("authorization is not UTF-8", true),
    };
    let validation = {
        let mut table = shared.table();
        let n = table.next_validation;
        table.next_validation += 1;
        table.pending.insert(stream_id.clone(), n);
        n
    };
    let worker = Arc::clone(shared);
    let spawned = thread::Builder::new().name("noise-validate".into()).spawn(move || {
        let harness = pending.initiator().clone();
        let verdict = worker.ctx.registry.validate(
            &worker.ctx.executor_registration_id,
            &harness,
            &authorization,
        );
        finish_handshake(&worker, stream_id, validation, pending, verdict);
    });
    if let Err(e) = spawned {
        log::warn!("cannot start a validation thread: {e}");
    }
}

/// Runs on the validation thread: completes the handshake if the registry said yes and
/// the stream was not reset meanwhile, then starts the stream's connection.
fn finish_handshake<S>(
    shared: &Arc<Shared<S>>,
    stream_id: String,
    validation: u64,
    pending: PendingResponder,
    verdict: Result<(), String>,
) where
    S: Read + Write + AsRawFd + Send + 'static,
{
    let mut table = shared.table();
    if table.pending.get(&stream_id) != Some(&validation) {
        return; // reset, replaced or the link ended while the registry answered
    }
    table.pending.remove(&stream_id);
    if let Err(e) = verdict {
        table.failures += 1;
        drop(table);
        log::warn!("relay harness key validation failed on stream {stream_id}: {e}");
        shared.link.reset(&stream_id);
        return;
    }
    if table.streams.len() >= STREAMS_MAX {
        drop(table);
        shared.link.reset(&stream_id);
        return;
    }
    let (channel, response) = match pending.complete() {
        Ok(done) => done,
        Err(e) => {
            drop(table);
            log::warn!("relay handshake on stream {stream_id} failed to complete: {e}");
            shared.link.reset(&stream_id);
            return;
        }
    };
    let (tx, rx) = mpsc::sync_channel(INBOUND_QUEUE_MESSAGES);
    let stream = Arc::new(VStream {
        id: stream_id.clone(),
        instance: shared.next_instance.fetch_add(1, Ordering::Relaxed),
        link: Arc::clone(&shared.link),
        channel: Mutex::new(channel),
        send_turn: Mutex::new(Sequencer::default()),
        receive: Mutex::new((Reorder::default(), Reassembler::default())),
        inbound: Mutex::new(Some(tx)),
        closed: AtomicBool::new(false),
    });
    // In the table before message 2 leaves, so the harness's first record finds it.
    table.streams.insert(stream_id.clone(), Arc::clone(&stream));
    table.failures = 0;
    drop(table);
    if shared.link.send(frame::encode_handshake(&stream_id, response)).is_err() {
        stream.shut();
        return;
    }
    log::info!("relay stream {stream_id} established");
    let worker = Arc::clone(shared);
    let spawned = thread::Builder::new()
        .name("noise-stream".into())
        .spawn(move || run_stream(&worker, &stream, &rx));
    if let Err(e) = spawned {
        log::warn!("cannot start a stream thread: {e}");
    }
}

/// Feeds one stream's messages to its JSON-RPC connection until either side ends it.
fn run_stream<S>(shared: &Arc<Shared<S>>, stream: &Arc<VStream<S>>, rx: &Receiver<String>)
where
    S: Read + Write + AsRawFd + Send + 'static,
{
    let out = Arc::new(StreamOut(Arc::clone(stream)));
    let conn = shared.server.connect(out as Arc<dyn Outbound>, Transport::Rendezvous);
    while let Ok(text) = rx.recv() {
        if conn.handle(Box::new(text)) == Flow::Close {
            break;
        }
    }
    end_stream(shared, stream);
    conn.closed();
    log::info!("relay stream {} ended", stream.id);
}

fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor we own.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
