//! The exit report (issue 18): the causes a kill records, and the classification of an
//! exit into a `reason` with the resources it used (from `wait4`). Pure data and one pure
//! function: it knows no process entries, spawns and reaps nothing.

use serde::Serialize;

use super::exit::Exit;
use crate::limits::Limits;

/// Why the daemon (or a client) killed a process tree; the first cause recorded wins.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndCause {
    /// `process/terminate`.
    Terminated,
    Timeout,
    OutputLimit,
    DaemonShutdown,
    SessionExpired,
}

/// The extension field `reason` of `process/exited` and `process/read`.
#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum Reason {
    Exited,
    Signal,
    Terminated,
    Timeout,
    OutputLimit,
    CpuLimit,
    /// Part of the contract, not reported yet: under RLIMIT_AS an allocation failure is
    /// indistinguishable from any other exit (a delegated cgroup's `memory.events` would be).
    #[allow(dead_code)]
    MemoryLimit,
    DaemonShutdown,
    SessionExpired,
}

/// The exit report: extension fields flattened into `process/exited` and (once exited)
/// `process/read`. Output counts are of the bytes delivered as events before the exit event.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ExitReport {
    pub reason: Reason,
    pub wall_time_ms: u64,
    pub user_cpu_ms: u64,
    pub system_cpu_ms: u64,
    pub max_rss_kb: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stdout_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stderr_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pty_bytes: Option<u64>,
}

/// What `wait4` told about the reaped child.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Usage {
    pub(super) user_cpu_ms: u64,
    pub(super) system_cpu_ms: u64,
    pub(super) max_rss_kb: u64,
}

impl Usage {
    pub(super) fn from_rusage(r: &libc::rusage) -> Usage {
        let ms =
            |t: libc::timeval| (t.tv_sec.max(0) as u64) * 1000 + (t.tv_usec.max(0) as u64) / 1000;
        Usage {
            user_cpu_ms: ms(r.ru_utime),
            system_cpu_ms: ms(r.ru_stime),
            // Linux reports ru_maxrss in kilobytes.
            max_rss_kb: r.ru_maxrss.max(0) as u64,
        }
    }
}

/// The reason for an exit: a recorded cause first, then what the status and usage show.
/// RLIMIT_CPU sends SIGXCPU at the soft limit and SIGKILL at the hard one (a second later).
/// An RLIMIT_AS failure is an allocation error inside the child, which exits however it
/// likes: `memoryLimit` is not inferred from it.
pub(super) fn reason(
    exit: &Exit,
    cause: Option<EndCause>,
    usage: &Usage,
    limits: &Limits,
) -> Reason {
    if let Some(cause) = cause {
        return match cause {
            EndCause::Terminated => Reason::Terminated,
            EndCause::Timeout => Reason::Timeout,
            EndCause::OutputLimit => Reason::OutputLimit,
            EndCause::DaemonShutdown => Reason::DaemonShutdown,
            EndCause::SessionExpired => Reason::SessionExpired,
        };
    }
    let cpu_ms = usage.user_cpu_ms + usage.system_cpu_ms;
    match (exit.signal.as_deref(), limits.cpu_secs) {
        (Some("SIGXCPU"), Some(_)) => Reason::CpuLimit,
        (Some("SIGKILL"), Some(secs)) if cpu_ms >= secs * 1000 => Reason::CpuLimit,
        (Some(_), _) => Reason::Signal,
        (None, _) => Reason::Exited,
    }
}
