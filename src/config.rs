//! The daemon's tunables: every bound of PROTOCOL.md §10 that a flag can change, in one
//! `Config` that the command line builds and every module reads. It owns no behaviour.

use std::path::PathBuf;
use std::time::Duration;

use crate::limits::Limits;

/// Limits and timings shared by all connections and sessions (PROTOCOL.md §10).
#[derive(Clone, Debug)]
pub struct Config {
    /// Largest inbound message; a bigger one closes the connection with 1009.
    pub max_message_bytes: usize,
    /// Websocket connections at once; the next upgrade gets 503.
    pub max_connections: usize,
    /// Requests executing at once over all connections.
    pub workers: usize,
    /// Requests executing at once on one connection.
    pub concurrent_requests: usize,
    /// Time a TCP connection has to complete its HTTP upgrade.
    pub handshake_timeout: Duration,
    /// How long a detached session survives before its processes are killed.
    pub detach_ttl: Duration,
    /// How long a peer may accept no byte before it is treated as dead.
    pub write_stall: Duration,
    /// Live processes over all sessions, until their entries are removed.
    pub max_processes: usize,
    /// Retained output payload per process.
    pub retained_output_bytes: usize,
    /// How long a finished process stays registered after its closed event.
    pub exited_retention: Duration,
    /// Cap on `process/read`'s `waitMs`.
    pub max_wait: Duration,
    /// Where output beyond the retained window spills (one unlinked file per process).
    pub spool_dir: PathBuf,
    /// Spool capacity of one process; 0 turns spilling off (memory-only retention).
    pub spool_bytes_per_process: u64,
    /// Spool bytes over all processes of the daemon.
    pub spool_bytes_total: u64,
    /// Whether `fs/writeFile` fsyncs the new file (and its directory) before the rename.
    pub fsync_writes: bool,
    /// Operator limits applied to every child (issue 18).
    pub limits: Limits,
    /// Where the audit log is appended (issue 18; src/audit.rs), if anywhere.
    pub audit_log: Option<std::path::PathBuf>,
}

/// `$TMPDIR` when it is an absolute path; an empty or relative one counts as unset
/// (`std::env::temp_dir` would return it as it is, and files would land in the cwd).
pub fn tmpdir() -> Option<PathBuf> {
    std::env::var_os("TMPDIR").map(PathBuf::from).filter(|p| p.is_absolute())
}

/// The default spool directory: `tmpdir()` (or `/tmp`) / `exec-server-spool-<euid>`, so
/// users on one host never share one.
pub fn default_spool_dir() -> PathBuf {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let uid = unsafe { libc::geteuid() };
    tmpdir().unwrap_or_else(|| PathBuf::from("/tmp")).join(format!("exec-server-spool-{uid}"))
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_message_bytes: 256 << 20,
            max_connections: 256,
            workers: 64,
            concurrent_requests: 16,
            handshake_timeout: Duration::from_secs(10),
            detach_ttl: Duration::from_secs(600),
            write_stall: Duration::from_secs(60),
            max_processes: 1024,
            retained_output_bytes: 1 << 20,
            exited_retention: Duration::from_secs(30),
            max_wait: Duration::from_millis(30_000),
            spool_dir: default_spool_dir(),
            spool_bytes_per_process: 64 << 20,
            spool_bytes_total: 1 << 30,
            fsync_writes: true,
            limits: Limits::default(),
            audit_log: None,
        }
    }
}
