//! The session's process table (PROTOCOL.md §4.6): what an entry holds (`Proc` and its
//! `State`), the slots by process id, and one daemon-wide timer thread that removes an entry
//! when its retention ends, freeing the live count. Data and bookkeeping only: what a child
//! does lives in child.rs; it neither spawns nor signals.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock, PoisonError, Weak};
use std::thread;
use std::time::{Duration, Instant};

use super::exit::Exit;
use super::reaper::Owner;
use super::report::{EndCause, ExitReport};
use super::retention::Retention;
use super::spool::Spool;
use super::stdin::StdinQueue;
use super::v2::WriteIds;
use super::wait::lock;
use super::wire::Notify;
use crate::limits::Limits;

pub(super) struct State {
    pub(super) next_seq: u64,
    pub(super) retention: Retention,
    /// Output evicted from `retention`, on disk, and the account of what was lost.
    pub(super) spool: Spool,
    /// Output streams not yet at EOF.
    pub(super) open_streams: usize,
    /// The child has been reaped (its pid is free from then on).
    pub(super) reaped: bool,
    /// The exit event, once numbered.
    pub(super) exit: Option<Exit>,
    pub(super) closed_at: Option<Instant>,
    /// The start response has been written: notifications may go out.
    pub(super) announced: bool,
    /// Numbered notifications not yet handed to the sink, in `seq` order.
    pub(super) pending: VecDeque<String>,
    pub(super) pending_bytes: usize,
    /// Why the daemon or a client killed the tree, if it did (the first cause wins).
    pub(super) cause: Option<EndCause>,
    /// The exit report, set with `exit`.
    pub(super) report: Option<ExitReport>,
}

pub(super) struct Proc {
    pub(super) id: String,
    /// `id` as a JSON string literal, for the hand-built output notifications.
    pub(super) id_json: String,
    /// Also the process group id and session id of the child (it is a session leader).
    pub(super) pid: libc::pid_t,
    pub(super) sink: Arc<dyn Notify>,
    pub(super) stdin: Option<Arc<StdinQueue>>,
    /// v2: `writeId`s already accepted; held while a write is queued.
    pub(super) write_ids: Mutex<WriteIds>,
    pub(super) state: Mutex<State>,
    /// Signalled on every event, on reaping and on announcement.
    pub(super) changed: Condvar,
    /// Held while numbering and sending, so that the stdout and stderr threads and the waiter
    /// send in `seq` order; `process/read` takes only `state`, so it never waits behind a send
    /// that is stalled on backpressure.
    pub(super) emitting: Mutex<()>,
    pub(super) table: Weak<Mutex<Table>>,
    pub(super) live: Arc<AtomicUsize>,
    pub(super) exited_retention: Duration,
    /// Runs under a sandbox confinement; its output is watched for denial messages.
    pub(super) confined: bool,
    pub(super) denial_mentioned: AtomicBool,
    /// The tree and session its escapees are attributed to (reaper.rs).
    pub(super) owner: Owner,
    /// Its output is one PTY stream (the report counts `ptyBytes`).
    pub(super) tty: bool,
    /// When the child was spawned, for the report's wall time.
    pub(super) started: Instant,
    /// The owning session's id, for the audit log.
    pub(super) session: Arc<str>,
    /// The operator limits it runs under.
    pub(super) limits: Limits,
    /// Output bytes admitted under `--max-output-bytes`, all streams together.
    pub(super) output_total: AtomicU64,
    /// Output bytes numbered as events, per stream (stdout, stderr, pty).
    pub(super) output_bytes: [AtomicU64; 3],
}

pub(super) enum Slot {
    /// Registered, still spawning; the token tells one start from a later one with the same id.
    Starting(u64),
    Running(Arc<Proc>),
}

#[derive(Default)]
pub(super) struct Table {
    pub(super) slots: HashMap<String, Slot>,
    pub(super) next_token: u64,
    /// `kill_all` ran: a start still spawning must kill what it started.
    pub(super) killed: bool,
}

pub(super) enum Lookup {
    Unknown,
    Starting,
    Running(Arc<Proc>),
}

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

pub(super) fn schedule_removal(proc: &Arc<Proc>, at: Instant) {
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
