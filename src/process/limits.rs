//! Operator limits applied to one child (issue 18): the rlimits prepared in the parent for
//! the child to set between clone and exec, and the daemon-wide timer that kills trees over
//! their wall-clock timeout. The exit report is report.rs. It spawns and reaps nothing.

use std::sync::{Arc, Condvar, Mutex, OnceLock, PoisonError, Weak};
use std::thread;
use std::time::{Duration, Instant};

use super::report::EndCause;
use super::table::Proc;
use super::wait::lock;
use crate::limits::Limits;

/// One rlimit the child sets before exec: the resource and its soft and hard values.
pub(super) type Rlimit = (libc::c_int, libc::rlimit);

/// The rlimits for a child, prepared in the parent (the child must not allocate). A daemon
/// without CAP_SYS_RESOURCE cannot raise a hard limit, so values are capped at its own.
pub(super) fn rlimits(limits: &Limits) -> Vec<Rlimit> {
    let cpu = limits.cpu_secs.map(|s| (s, s.saturating_add(1)));
    let same = |v: Option<u64>| v.map(|v| (v, v));
    let wanted = [
        (libc::RLIMIT_CPU as libc::c_int, cpu),
        (libc::RLIMIT_AS as libc::c_int, same(limits.memory_bytes)),
        (libc::RLIMIT_NPROC as libc::c_int, same(limits.max_child_processes)),
        (libc::RLIMIT_FSIZE as libc::c_int, same(limits.max_file_size_bytes)),
        (libc::RLIMIT_NOFILE as libc::c_int, same(limits.max_open_files)),
    ];
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    wanted
        .into_iter()
        .filter_map(|(resource, values)| {
            let (soft, hard) = values?;
            let mut limit = libc::rlimit { rlim_cur: soft as _, rlim_max: hard as _ };
            let mut own: libc::rlimit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
            // SAFETY: getrlimit fills the struct we pass.
            if !root && unsafe { libc::getrlimit(resource as _, &mut own) } == 0 {
                limit.rlim_max = limit.rlim_max.min(own.rlim_max);
                limit.rlim_cur = limit.rlim_cur.min(limit.rlim_max);
            }
            Some((resource, limit))
        })
        .collect()
}

struct Timeout {
    at: Instant,
    proc: Weak<Proc>,
}

struct Timeouts {
    queue: Mutex<Vec<Timeout>>,
    changed: Condvar,
}

/// One daemon-wide timer thread kills the trees whose wall-clock timeout has come.
fn timeouts() -> &'static Timeouts {
    static TIMEOUTS: OnceLock<Timeouts> = OnceLock::new();
    TIMEOUTS.get_or_init(|| {
        let started = thread::Builder::new().name("timeouts".into()).spawn(|| {
            let timeouts = timeouts();
            let mut queue = lock(&timeouts.queue);
            loop {
                let now = Instant::now();
                let (due, keep): (Vec<_>, Vec<_>) =
                    std::mem::take(&mut *queue).into_iter().partition(|t| t.at <= now);
                // Entries of processes already gone are dropped here too.
                *queue = keep.into_iter().filter(|t| t.proc.strong_count() > 0).collect();
                if !due.is_empty() {
                    drop(queue);
                    for timeout in due {
                        if let Some(proc) = timeout.proc.upgrade() {
                            proc.end_with(EndCause::Timeout);
                        }
                    }
                    queue = lock(&timeouts.queue);
                    continue;
                }
                let wait = queue.iter().map(|t| t.at.saturating_duration_since(now)).min();
                queue = match wait {
                    Some(wait) => {
                        timeouts
                            .changed
                            .wait_timeout(queue, wait)
                            .unwrap_or_else(PoisonError::into_inner)
                            .0
                    }
                    None => timeouts.changed.wait(queue).unwrap_or_else(PoisonError::into_inner),
                };
            }
        });
        if let Err(e) = started {
            log::error!("cannot start the process timeout thread: {e}");
        }
        Timeouts { queue: Mutex::new(Vec::new()), changed: Condvar::new() }
    })
}

/// Kills `proc`'s tree (cause `timeout`) once `after` has passed, unless it ended before.
pub(super) fn arm_timeout(proc: &Arc<Proc>, after: Duration) {
    let timeouts = timeouts();
    lock(&timeouts.queue).push(Timeout { at: Instant::now() + after, proc: Arc::downgrade(proc) });
    timeouts.changed.notify_all();
}
