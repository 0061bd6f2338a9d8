//! What one child does over its life (PROTOCOL.md §4.2, §5): numbering its events, handing
//! output to retention, sending notifications in `seq` order once the start response is out,
//! killing its tree, and the threads that drain its output and reap it. Its data (`Proc`,
//! `State`) is declared with the table (table.rs). It does not spawn (spawn.rs) or decide what
//! a request answers (mod.rs).

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::exit::{exit_from_status, Exit};
use super::kill::kill_session;
use super::reaper;
use super::report::{self, EndCause, ExitReport, Usage};
use super::table::{schedule_removal, Proc, State};
use super::wait::{lock, wait_while};
use super::wire::{encode, output_message, ClosedParams, ExitedParams, Stream};
use crate::sandbox;

/// Largest single read from a child's output (§4.1.2): one event per read.
const READ_CHUNK_BYTES: usize = 64 << 10;
/// Reads at least this large give their buffer to retention instead of a copy (smaller
/// ones are copied, so a retained chunk never holds much more memory than its length).
const HANDOFF_MIN_BYTES: usize = READ_CHUNK_BYTES / 2;
/// Capacity given to the pipe of a child that keeps it full (see `grow_pipe`).
const BUSY_PIPE_BYTES: libc::c_int = 1 << 20;
/// How long output may pile up unsent while the start response is still being written,
/// before the reader stops reading (and so slows the child) until it is announced.
const ANNOUNCE_WAIT: Duration = Duration::from_secs(10);
/// How long the exit event waits for the output streams to reach EOF after the child was
/// reaped (output read later still gets later numbers, §4.2).
const EXIT_DRAIN_GRACE: Duration = Duration::from_millis(50);

enum Event {
    Output(Stream, Vec<u8>),
    StreamEnd,
    /// The exit, what the child used, and when it was reaped.
    Exit(Exit, Usage, Instant),
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
                    // Counted as numbered, so the exit report counts exactly the output
                    // events before it.
                    self.output_bytes[stream_index(stream)]
                        .fetch_add(bytes.len() as u64, Ordering::Relaxed);
                    let State { retention, spool, .. } = &mut *state;
                    spare = retention.push(seq, stream, bytes, |old| {
                        spool.spill(old.seq, old.stream, &old.bytes, old.delivered)
                    });
                    queue(&mut state, message);
                }
                Event::StreamEnd => state.open_streams -= 1,
                Event::Exit(exit, usage, reaped_at) => {
                    let seq = take_seq(&mut state);
                    let report = self.report(&exit, state.cause, &usage, reaped_at);
                    let params = ExitedParams {
                        process_id: &self.id,
                        seq,
                        exit_code: exit.code,
                        sandbox_denied: self.sandbox_denied(&exit),
                        signal: exit.signal.as_deref(),
                        report: &report,
                    };
                    let message = encode("process/exited", params);
                    state.exit = Some(exit);
                    state.report = Some(report);
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
                take_pending(&mut state)
            } else {
                (VecDeque::new(), 0)
            }
        };
        self.send(to_send);
        spare
    }

    /// Sends numbered notifications in order and records in retention whether they reached
    /// an attached connection.
    fn send(&self, (messages, through): (VecDeque<String>, u64)) {
        if messages.is_empty() {
            return;
        }
        // Every numbered event has exactly one message, so these are the last `len` seqs.
        let seqs = through + 1 - messages.len() as u64..=through;
        let mut delivered = true;
        for message in messages {
            // Every message is offered, even after a failure: a resumed session's new
            // connection must not see a gap.
            delivered &= self.sink.notify(message);
        }
        lock(&self.state).retention.set_delivered(seqs, delivered);
    }

    pub(super) fn announce(self: &Arc<Self>) {
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
        let to_send = take_pending(&mut lock(&self.state));
        self.send(to_send);
    }

    /// `sandboxDenied` for an exit of this process: false unless it was confined.
    pub(super) fn sandbox_denied(&self, exit: &Exit) -> bool {
        let mentioned = self.denial_mentioned.load(Ordering::Relaxed);
        let sigsys = exit.signal.as_deref() == Some("SIGSYS");
        self.confined && sandbox::is_likely_denied(exit.code, sigsys, mentioned)
    }

    /// The exit report of `exit` (issue 18).
    fn report(
        &self,
        exit: &Exit,
        cause: Option<EndCause>,
        usage: &Usage,
        reaped_at: Instant,
    ) -> ExitReport {
        let count = |s: Stream| self.output_bytes[stream_index(s)].load(Ordering::Relaxed);
        let tty = self.tty;
        ExitReport {
            reason: report::reason(exit, cause, usage, &self.limits),
            wall_time_ms: reaped_at.saturating_duration_since(self.started).as_millis() as u64,
            user_cpu_ms: usage.user_cpu_ms,
            system_cpu_ms: usage.system_cpu_ms,
            max_rss_kb: usage.max_rss_kb,
            stdout_bytes: (!tty).then(|| count(Stream::Stdout)),
            stderr_bytes: (!tty).then(|| count(Stream::Stderr)),
            pty_bytes: tty.then(|| count(Stream::Pty)),
        }
    }

    /// How many of `n` bytes just read from `stream` may be delivered under the output
    /// limit. Reaching it kills the tree (cause `outputLimit`); later reads deliver nothing
    /// and are only drained until EOF.
    fn admit(&self, n: usize) -> usize {
        let Some(max) = self.limits.max_output_bytes else {
            return n;
        };
        let n = n as u64;
        // Both output threads take from one allowance.
        let before = self
            .output_total
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| {
                Some(t.saturating_add(n).min(max))
            })
            .unwrap_or(max);
        let granted = n.min(max.saturating_sub(before));
        if granted < n {
            self.end_with(EndCause::OutputLimit);
        }
        granted as usize
    }

    /// Records `cause` (unless the child was already reaped or another cause came first)
    /// and SIGKILLs the tree, as `kill_tree`. Returns whether the child was still running.
    pub(super) fn end_with(&self, cause: EndCause) -> bool {
        let mut state = lock(&self.state);
        let running = !state.reaped;
        if running && state.cause.is_none() {
            state.cause = Some(cause);
        }
        if state.closed_at.is_none() {
            kill_session(self.pid);
        }
        running
    }

    /// SIGKILLs the child's tree unless it is over. Under the state lock, so the waiter
    /// cannot reap the leader (freeing its pid for reuse) in between.
    pub(super) fn kill_tree(&self) -> bool {
        let state = lock(&self.state);
        let running = !state.reaped;
        // Descendants by parent id first (orphans stay below the leader, a subreaper), while
        // the leader lives to be their parent, and escapees the daemon adopted.
        reaper::kill_tree(running.then_some(self.pid), self.owner.tree);
        if state.closed_at.is_none() {
            kill_session(self.pid);
        }
        running
    }

    pub(super) fn close_stdin(&self) {
        if let Some(stdin) = &self.stdin {
            stdin.close();
        }
    }
}

/// The numbered notifications not yet sent, and the seq of the last of them.
fn take_pending(state: &mut State) -> (VecDeque<String>, u64) {
    state.pending_bytes = 0;
    (std::mem::take(&mut state.pending), state.next_seq - 1)
}

/// A stream's slot in `Proc::output_bytes`.
fn stream_index(stream: Stream) -> usize {
    match stream {
        Stream::Stdout => 0,
        Stream::Stderr => 1,
        Stream::Pty => 2,
    }
}

fn take_seq(state: &mut State) -> u64 {
    let seq = state.next_seq;
    state.next_seq += 1;
    seq
}

pub(super) fn queue(state: &mut State, message: String) {
    state.pending_bytes += message.len();
    state.pending.push_back(message);
}

/// The waiter thread: learns of the exit without reaping (so the pid stays reserved while
/// terminate may signal the tree), then reaps under the state lock and emits the exit event.
pub(super) fn wait_loop(proc: Arc<Proc>) {
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
    // The leader's orphans were reparented to the daemon as it died: they stay its tree's.
    reaper::claim_orphans(proc.owner);
    let (exit, usage, reaped_at) = {
        let mut state = lock(&proc.state);
        let mut status: libc::c_int = 0;
        // SAFETY: a zeroed rusage is a valid value for wait4 to fill in.
        let mut rusage: libc::rusage = unsafe { std::mem::zeroed() };
        let reaped = loop {
            // wait4 on this pid (not any child), for the resources it used (issue 18).
            // SAFETY: reaping our own child, which has exited.
            let ret = unsafe { libc::wait4(proc.pid, &mut status, 0, &mut rusage) };
            if ret >= 0 || io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
                break ret == proc.pid;
            }
        };
        state.reaped = true;
        crate::children::untrack(proc.pid);
        if reaped {
            (exit_from_status(status), Usage::from_rusage(&rusage), Instant::now())
        } else {
            // Only if someone else reaped our child (SIGCHLD ignored): the status is lost.
            log::error!("child {} was reaped elsewhere; exit status unknown", proc.pid);
            (Exit { code: -1, signal: None }, Usage::default(), Instant::now())
        }
    };
    proc.changed.notify_all();
    proc.close_stdin();
    // What the child wrote before it died is usually still in the pipe: let the readers
    // number it first, so a short command's output precedes its exit. Output still open
    // (a background process holding the pipe) only delays the exit event by the grace.
    let deadline = Instant::now() + EXIT_DRAIN_GRACE;
    drop(wait_while(&proc.changed, lock(&proc.state), deadline, |s| s.open_streams > 0));
    proc.emit(Event::Exit(exit, usage, reaped_at));
    if crate::audit::enabled() {
        let state = lock(&proc.state);
        let mut fields = serde_json::json!({
            "sessionId": &*proc.session, "processId": proc.id, "pid": proc.pid,
            "exitCode": state.exit.as_ref().map(|e| e.code),
            "signal": state.exit.as_ref().and_then(|e| e.signal.clone()),
        });
        if let (Some(report), Some(map)) = (
            state.report.as_ref().and_then(|r| serde_json::to_value(r).ok()),
            fields.as_object_mut(),
        ) {
            map.extend(report.as_object().cloned().unwrap_or_default());
        }
        drop(state);
        crate::audit::record("processEnded", fields);
    }
}

/// An output thread: one event per read of at most 64 KiB, until EOF (EIO on a PTY master).
pub(super) fn read_loop(proc: Arc<Proc>, stream: Stream, file: File) {
    let mut buf = Vec::with_capacity(READ_CHUNK_BYTES);
    let mut pipe_grown = stream == Stream::Pty;
    loop {
        match read_chunk(&file, &mut buf) {
            Ok(0) => break,
            Ok(n) => {
                // A confined process's output is watched for denial messages.
                if proc.confined
                    && !proc.denial_mentioned.load(Ordering::Relaxed)
                    && sandbox::mentions_denial(&buf[..n])
                {
                    proc.denial_mentioned.store(true, Ordering::Relaxed);
                }
                if n == READ_CHUNK_BYTES && !pipe_grown {
                    grow_pipe(&file);
                    pipe_grown = true;
                }
                // Over the output limit nothing more is delivered (the tree is being killed).
                let n = proc.admit(n);
                if n == 0 {
                    continue;
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
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if stream == Stream::Pty && e.raw_os_error() == Some(libc::EIO) => break,
            Err(e) => {
                log::warn!(
                    processId = proc.id.as_str(), pid = proc.pid;
                    "reading output of process {}: {e}", proc.pid
                );
                break;
            }
        }
    }
    drop(file);
    proc.emit(Event::StreamEnd);
}

/// One `read(2)` of at most `READ_CHUNK_BYTES` into `buf`, replacing what it held, straight
/// into its spare capacity: a buffer is never zeroed first (that fill was the costliest
/// step of streaming on the static build).
fn read_chunk(file: &File, buf: &mut Vec<u8>) -> io::Result<usize> {
    buf.clear();
    buf.reserve(READ_CHUNK_BYTES);
    // SAFETY: the kernel writes at most READ_CHUNK_BYTES bytes into the reserved capacity,
    // and exactly the `n` it reports are marked initialized.
    let n = unsafe { libc::read(file.as_raw_fd(), buf.as_mut_ptr().cast(), READ_CHUNK_BYTES) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let n = n as usize;
    // SAFETY: see above; n <= READ_CHUNK_BYTES <= capacity.
    unsafe { buf.set_len(n) };
    Ok(n)
}

/// Enlarges the pipe of a child seen filling a whole read: with the default 64 KiB the child
/// and this reader wake each other for every chunk, which dominates streaming. Only busy
/// pipes grow, since pipe pages count against the user's pipe quota. Events still carry at
/// most `READ_CHUNK_BYTES`. Failure (quota reached) just keeps the default size.
fn grow_pipe(file: &File) {
    // SAFETY: fcntl on a pipe descriptor we own; no memory is involved.
    unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETPIPE_SZ, BUSY_PIPE_BYTES) };
}
