//! Which of the daemon's children are reaped by their own waiter (`waitpid(pid)`): the spawn
//! lock and the set of tracked pids. Every spawner — process leaders (process/spawn.rs) and
//! the sandboxed filesystem helper (sandbox/fs_child.rs) — holds `spawning()` from before
//! its fork until `track(pid)`, and `untrack`s the pid once it has reaped it; the orphan
//! reaper (process/reaper.rs) holds `exclusive()` while it decides, and reaps or adopts
//! only children that are not tracked. Ground floor: it imports nothing of the crate.

use std::collections::HashSet;
use std::sync::{
    Condvar, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard,
};
use std::time::Instant;

struct Tracked {
    pids: Option<HashSet<libc::pid_t>>,
    /// Bumped by `track`: the reaper, finding no child at all, waits for it to change.
    generation: u64,
}

static SPAWNING: RwLock<()> = RwLock::new(());
static TRACKED: Mutex<Tracked> = Mutex::new(Tracked { pids: None, generation: 0 });
static CHANGED: Condvar = Condvar::new();

fn tracked() -> MutexGuard<'static, Tracked> {
    TRACKED.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Held by a spawner from before its fork until `track`.
pub fn spawning() -> RwLockReadGuard<'static, ()> {
    SPAWNING.read().unwrap_or_else(PoisonError::into_inner)
}

/// Held by the reaper while it decides about a child: no spawn is between fork and `track`.
pub fn exclusive() -> RwLockWriteGuard<'static, ()> {
    SPAWNING.write().unwrap_or_else(PoisonError::into_inner)
}

/// `pid` is reaped by its own waiter. Call while holding `spawning()`.
pub fn track(pid: libc::pid_t) {
    let mut t = tracked();
    t.pids.get_or_insert_with(HashSet::new).insert(pid);
    t.generation += 1;
    drop(t);
    CHANGED.notify_all();
}

/// The waiter reaped `pid` (or gave up on it).
pub fn untrack(pid: libc::pid_t) {
    if let Some(pids) = tracked().pids.as_mut() {
        pids.remove(&pid);
    }
    CHANGED.notify_all();
}

pub fn is_tracked(pid: libc::pid_t) -> bool {
    tracked().pids.as_ref().is_some_and(|p| p.contains(&pid))
}

/// Counts `track` calls, for `wait_for_spawn`.
pub fn generation() -> u64 {
    tracked().generation
}

/// Waits until a child is tracked after `seen` was read from `generation`.
pub fn wait_for_spawn(seen: u64) {
    let guard = tracked();
    drop(
        CHANGED.wait_while(guard, |t| t.generation == seen).unwrap_or_else(PoisonError::into_inner),
    );
}

/// Waits until `pid` is no longer tracked, or `deadline`.
pub fn wait_untracked(pid: libc::pid_t, deadline: Instant) {
    let mut guard = tracked();
    while guard.pids.as_ref().is_some_and(|p| p.contains(&pid)) {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        guard = CHANGED.wait_timeout(guard, left).unwrap_or_else(PoisonError::into_inner).0;
    }
}
