//! The two ways the process files wait on shared state: `lock`, the one mutex-poisoning
//! idiom (a poisoned lock is taken over, since a panicking handler must not wedge a session),
//! and `wait_while`, a `Condvar` wait bounded by a deadline. No state of its own.

use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

pub(super) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Waits on `cond` while `keep_waiting` holds, until `deadline`; true if it stopped holding.
pub(super) fn wait_while<'a, T>(
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
