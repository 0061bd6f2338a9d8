//! The session's process table and the removal of finished entries (PROTOCOL.md §4.6): slots
//! by process id, and one daemon-wide timer thread that removes an entry when its retention
//! ends, freeing the live count. It neither spawns nor signals.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex, OnceLock, PoisonError, Weak};
use std::thread;
use std::time::Instant;

use super::child::Proc;
use super::lock;

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

pub(super) struct Removal {
    pub(super) at: Instant,
    pub(super) proc: Weak<Proc>,
}

pub(super) struct Removals {
    pub(super) queue: Mutex<Vec<Removal>>,
    pub(super) changed: Condvar,
}

/// One daemon-wide timer thread removes finished entries when their retention ends.
pub(super) fn removals() -> &'static Removals {
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
pub(super) fn remove_entry(proc: &Arc<Proc>) {
    let Some(table) = proc.table.upgrade() else {
        return;
    };
    let mut table = lock(&table);
    if matches!(table.slots.get(&proc.id), Some(Slot::Running(p)) if Arc::ptr_eq(p, proc)) {
        table.slots.remove(&proc.id);
        proc.live.fetch_sub(1, Ordering::SeqCst);
    }
}
