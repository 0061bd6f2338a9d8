//! The processes of one session (PROTOCOL.md §4 and §5). This file is the facade the request
//! layer calls — `Processes` with `start`, `announce`, `read`, `write`, `terminate` and
//! `kill_all` — and assembles a child from the parts beside it: wire.rs (params, results,
//! notification encoding), spawn.rs (clone/exec, pipes), pty.rs, envpolicy.rs (the child's
//! environment), child.rs (events, notifications, the drain and wait threads), retention.rs,
//! spool.rs (output beyond the window on disk), page.rs (one `process/read` page),
//! stdin.rs, table.rs (entries and their removal), v2.rs (codex 0.171's additions: sandbox
//! context, metadata, `writeId`s, `process/signal`), kill.rs (tree kill), reaper.rs
//! (escapees: subreaper, attribution, reaping), exit.rs (status and signal names), wait.rs
//! (lock and deadline waits). It never touches sockets or sessions and
//! imports nothing of `rpc`: notifications leave through `Notify`, and the caller decides when
//! a start response has been written.

mod child;
mod envpolicy;
mod exit;
mod kill;
mod limits;
mod page;
mod pty;
mod reaper;
mod report;
mod retention;
mod spawn;
mod spool;
mod stdin;
mod table;
mod v2;
mod wait;
mod wire;

use std::collections::VecDeque;
use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::error::RpcError;
use crate::sandbox;
use child::{read_loop, wait_loop};
use kill::kill_session;
pub use report::EndCause;
use retention::Retention;
use spawn::{
    above_stdio, nul_error, pipe, resolve_program, spawn_on_spawner, spawn_thread, SpawnPlan,
};
pub use spool::prepare as prepare_spool;
use spool::Spool;
use stdin::StdinQueue;
use table::{Lookup, Proc, Slot, State, Table};
use v2::{SandboxType, Signal, SignalParams, SignalResponse};
use wait::{lock, wait_while};
pub use wire::{
    Notify, ReadParams, ReadResponse, StartParams, StartResponse, Stream, TerminateParams,
    TerminateResponse, WriteParams, WriteResponse, WriteStatus,
};

/// How long `process/terminate` waits for the killed child to be reaped.
const TERMINATE_REAP_WAIT: Duration = Duration::from_secs(5);
/// How long `kill_all` waits for killed children to be reaped.
const KILL_ALL_WAIT: Duration = Duration::from_secs(3);

/// All processes of one session (process ids are scoped to a session).
pub struct Processes {
    /// The owning session's id, for the audit log.
    session: Arc<str>,
    config: Arc<Config>,
    live: Arc<AtomicUsize>,
    sink: Arc<dyn Notify>,
    table: Arc<Mutex<Table>>,
    /// The session's id for the escapees of its trees (reaper.rs).
    group: u64,
}

impl Processes {
    /// `live` is the daemon-wide count of registered processes (all sessions), checked against
    /// `config.max_processes` at start and decremented when an entry is removed.
    pub fn new(config: Arc<Config>, live: Arc<AtomicUsize>, sink: Arc<dyn Notify>) -> Processes {
        Processes {
            session: Arc::from(""),
            config,
            live,
            sink,
            table: Arc::default(),
            group: reaper::next_id(),
        }
    }

    /// Names the owning session in the audit log's process events.
    pub fn with_session(mut self, session: &str) -> Processes {
        self.session = Arc::from(session);
        self
    }

    fn lookup(&self, id: &str) -> Lookup {
        match lock(&self.table).slots.get(id) {
            None => Lookup::Unknown,
            Some(Slot::Starting(_)) => Lookup::Starting,
            Some(Slot::Running(proc)) => Lookup::Running(proc.clone()),
        }
    }

    /// `process/start` (§4.1): the checks in contract order, then spawn and start draining.
    pub fn start(&self, p: StartParams) -> Result<StartResponse, RpcError> {
        if p.argv.is_empty() {
            return Err(RpcError::invalid_params("argv must not be empty"));
        }
        let cwd = p.cwd.to_local().map_err(|e| {
            let uri = p.cwd.foreign().unwrap_or_default();
            RpcError::invalid_params(format!(
                "cwd URI `{uri}` is not valid on this exec-server host: {e}"
            ))
        })?;
        // v2: refuse what cannot be honoured, before anything is reserved.
        v2::check_start(&p.process_id, p.network_proxy.as_ref())?;
        // The sandbox is decoded and prepared (everything that allocates) before anything is
        // reserved; the child only applies it. A host that cannot enforce it is an error.
        let policy = sandbox::parse(p.sandbox.as_ref())?;
        let confinement = if policy.is_unrestricted() {
            None
        } else {
            Some(sandbox::Confinement::prepare(&policy)?)
        };
        let sandbox_type =
            if confinement.is_some() { SandboxType::LinuxSeccomp } else { SandboxType::None };
        let id = p.process_id.clone();
        let token = {
            let mut table = lock(&self.table);
            if table.slots.contains_key(&id) {
                return Err(RpcError::invalid_request(format!("process {id} already exists")));
            }
            let max = self.config.max_processes;
            let counted = self
                .live
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| (n < max).then_some(n + 1));
            if counted.is_err() {
                return Err(RpcError::internal(format!("process limit reached ({max})")));
            }
            table.next_token += 1;
            let token = table.next_token;
            table.slots.insert(id.clone(), Slot::Starting(token));
            token
        };
        let spawned = self.spawn(&p, cwd, confinement);
        let mut table = lock(&self.table);
        let ours = matches!(table.slots.get(&id), Some(Slot::Starting(t)) if *t == token);
        match spawned {
            Ok(proc) if ours => {
                table.slots.insert(id.clone(), Slot::Running(proc.clone()));
                if let Some(m) = &p.metadata {
                    log::debug!(
                        processId = id.as_str(), pid = proc.pid, session = &*self.session;
                        "process {id} (pid {}): thread {}, tool call {}",
                        proc.pid,
                        m.thread_id.as_deref().unwrap_or("-"),
                        m.tool_call_id.as_deref().unwrap_or("-")
                    );
                }
                if p.enforce_managed_network || p.managed_network.is_some() {
                    // As upstream: a managed network proxy is not launched (not advertised);
                    // a restricted network is enforced by the sandbox's seccomp filter.
                    log::debug!("process {id}: managed network not launched");
                }
                if p.shell_snapshot.is_some() {
                    log::debug!("process {id}: shellSnapshot ignored (not advertised)");
                }
                Ok(StartResponse { process_id: id, sandbox_type })
            }
            Ok(proc) => {
                // kill_all removed the slot (and its count) while we were spawning.
                drop(table);
                proc.close_stdin();
                proc.kill_tree();
                Err(RpcError::internal("session is shutting down"))
            }
            Err(e) => {
                if ours {
                    table.slots.remove(&id);
                    self.live.fetch_sub(1, Ordering::SeqCst);
                }
                Err(RpcError::internal(e.to_string()))
            }
        }
    }

    /// The audit log's `processStarted` line. Environment names only: values may hold secrets.
    fn audit_started(&self, p: &StartParams, cwd: &Path, pid: libc::pid_t, confined: bool) {
        let mut env_names: Vec<&String> = p.env.keys().collect();
        env_names.sort();
        let sandbox_type = if confined { SandboxType::LinuxSeccomp } else { SandboxType::None };
        crate::audit::record(
            "processStarted",
            serde_json::json!({
                "sessionId": &*self.session, "processId": p.process_id, "pid": pid,
                "argv": p.argv, "arg0": p.arg0, "cwd": cwd, "envNames": env_names,
                "tty": p.tty, "sandboxType": sandbox_type,
                "limits": self.config.limits.to_json(),
            }),
        );
    }

    fn spawn(
        &self,
        p: &StartParams,
        cwd: &Path,
        confinement: Option<sandbox::Confinement>,
    ) -> io::Result<Arc<Proc>> {
        let confined = confinement.is_some();
        let cwd_path = cwd;
        let env = envpolicy::build(p.env_policy.as_ref(), &p.env, std::env::vars_os());
        let program = resolve_program(&p.argv[0], &env, cwd)?;
        let text = |s: &str| CString::new(s).map_err(|_| nul_error());
        let argv0 = p.arg0.as_deref().unwrap_or(&p.argv[0]);
        let argv = std::iter::once(argv0)
            .chain(p.argv[1..].iter().map(String::as_str))
            .map(text)
            .collect::<io::Result<Vec<_>>>()?;
        let envp = env
            .iter()
            .map(|(name, value)| {
                let mut entry = name.as_bytes().to_vec();
                entry.push(b'=');
                entry.extend_from_slice(value.as_bytes());
                CString::new(entry).map_err(|_| nul_error())
            })
            .collect::<io::Result<Vec<_>>>()?;
        let program = CString::new(program.into_os_string().into_vec()).map_err(|_| nul_error())?;
        let cwd = CString::new(cwd.as_os_str().as_bytes()).map_err(|_| nul_error())?;

        // The child's ends (kept until the spawn returns) and ours.
        let mut outputs: Vec<(Stream, File)> = Vec::new();
        let mut stdin_file: Option<File> = None;
        let child_ends: [OwnedFd; 3] = if p.tty {
            let pty = pty::open()?;
            stdin_file = Some(File::from(pty.master.try_clone()?));
            outputs.push((Stream::Pty, File::from(pty.master)));
            let slave = above_stdio(pty.slave)?;
            [slave.try_clone()?, slave.try_clone()?, slave]
        } else {
            let stdin = if p.pipe_stdin {
                let (read, write) = pipe()?;
                stdin_file = Some(File::from(write));
                read
            } else {
                OwnedFd::from(File::open("/dev/null")?)
            };
            let (stdout_read, stdout_write) = pipe()?;
            let (stderr_read, stderr_write) = pipe()?;
            outputs.push((Stream::Stdout, File::from(stdout_read)));
            outputs.push((Stream::Stderr, File::from(stderr_read)));
            [above_stdio(stdin)?, above_stdio(stdout_write)?, above_stdio(stderr_write)?]
        };
        let plan = SpawnPlan {
            program,
            argv,
            envp,
            cwd,
            stdio: child_ends.each_ref().map(|fd| fd.as_raw_fd()),
            tty: p.tty,
            confinement,
            rlimits: limits::rlimits(&self.config.limits),
        };
        let pid = spawn_on_spawner(plan)?;
        // Recorded before the waiter thread exists, so a child that exits at once cannot
        // have its `processEnded` line land ahead of this one.
        if crate::audit::enabled() {
            self.audit_started(p, cwd_path, pid, confined);
        }
        // Close our copies of the child's ends: readers see EOF (EIO on a PTY) only once
        // every copy is closed.
        drop(child_ends);

        let state = State {
            next_seq: 1,
            retention: Retention::new(self.config.retained_output_bytes),
            spool: Spool::new(&self.config, pid),
            open_streams: outputs.len(),
            reaped: false,
            exit: None,
            closed_at: None,
            announced: false,
            pending: VecDeque::new(),
            pending_bytes: 0,
            cause: None,
            report: None,
        };
        let proc = Arc::new(Proc {
            id: p.process_id.clone(),
            id_json: serde_json::to_string(&p.process_id).expect("a string always encodes as JSON"),
            pid,
            sink: self.sink.clone(),
            stdin: stdin_file.as_ref().map(|_| Arc::new(StdinQueue::new())),
            write_ids: Mutex::default(),
            state: Mutex::new(state),
            changed: Condvar::new(),
            emitting: Mutex::new(()),
            table: Arc::downgrade(&self.table),
            live: self.live.clone(),
            exited_retention: self.config.exited_retention,
            confined,
            denial_mentioned: AtomicBool::new(false),
            owner: reaper::Owner { tree: reaper::next_id(), group: self.group },
            tty: p.tty,
            started: Instant::now(),
            limits: self.config.limits.clone(),
            session: Arc::clone(&self.session),
            output_total: AtomicU64::new(0),
            output_bytes: Default::default(),
        });
        // The child exists from here on: whatever fails, it must still be reaped.
        let waiter = proc.clone();
        if let Err(e) = spawn_thread("process-wait", move || wait_loop(waiter)) {
            kill_session(pid);
            let mut status = 0;
            // SAFETY: reaping our own child, which was just killed.
            unsafe { libc::waitpid(pid, &mut status, 0) };
            crate::children::untrack(pid);
            return Err(e);
        }
        let started = (|| -> io::Result<()> {
            for (stream, file) in outputs {
                let reader = proc.clone();
                spawn_thread("process-output", move || read_loop(reader, stream, file))?;
            }
            if let (Some(queue), Some(file)) = (proc.stdin.clone(), stdin_file) {
                spawn_thread("process-stdin", move || queue.run(file))?;
            }
            Ok(())
        })();
        if let Err(e) = started {
            // Threads already running end at EOF once the tree is dead; the waiter reaps.
            proc.close_stdin();
            proc.kill_tree();
            return Err(e);
        }
        if let Some(timeout) = self.config.limits.process_timeout {
            limits::arm_timeout(&proc, timeout);
        }
        Ok(proc)
    }

    /// Called right after the start response was written (or failed to be): from now on the
    /// process's notifications may be sent, beginning with those held back so far.
    pub fn announce(&self, process_id: &str) {
        if let Lookup::Running(proc) = self.lookup(process_id) {
            proc.announce();
        }
    }

    /// `process/read` (§4.3), long-polling up to the capped `waitMs`, as a typed result
    /// (the unit tests' form; the request layer uses `read_into`).
    #[cfg(test)]
    pub fn read(&self, p: ReadParams) -> Result<ReadResponse, RpcError> {
        let proc = self.readable(&p.process_id)?;
        let found = self.find(&proc, &p);
        Ok(ReadResponse { chunks: found.chunks_out(), ..result(&proc, &found) })
    }

    /// `process/read` (§4.3), long-polling up to the capped `waitMs`, written straight into
    /// the response text after `"result":` (see `page::Found::write_result`).
    pub fn read_into(&self, p: ReadParams, out: &mut String) -> Result<(), RpcError> {
        let proc = self.readable(&p.process_id)?;
        let found = self.find(&proc, &p);
        found.write_result(&result(&proc, &found), out);
        Ok(())
    }

    fn readable(&self, process_id: &str) -> Result<Arc<Proc>, RpcError> {
        match self.lookup(process_id) {
            Lookup::Unknown => {
                Err(RpcError::invalid_request(format!("unknown process id {process_id}")))
            }
            Lookup::Starting => {
                Err(RpcError::invalid_request(format!("process id {process_id} is starting")))
            }
            Lookup::Running(proc) => Ok(proc),
        }
    }

    fn find<'a>(&self, proc: &'a Proc, p: &ReadParams) -> page::Found<'a> {
        let wait = Duration::from_millis(p.wait_ms.unwrap_or(0)).min(self.config.max_wait);
        page::read(proc, p.after_seq.unwrap_or(0), p.max_bytes, Instant::now() + wait)
    }

    /// `process/write` (§4.5).
    pub fn write(&self, p: WriteParams) -> Result<WriteResponse, RpcError> {
        v2::check_write_id(p.write_id.as_deref())?;
        let status = match self.lookup(&p.process_id) {
            Lookup::Unknown => WriteStatus::UnknownProcess,
            Lookup::Starting => WriteStatus::Starting,
            Lookup::Running(proc) => match &proc.stdin {
                None => WriteStatus::StdinClosed,
                Some(stdin) => {
                    // v2: a repeated `writeId` is a retry: acknowledged, not written again.
                    // The id is recorded only once the bytes are queued.
                    let mut ids = lock(&proc.write_ids);
                    let id = p.write_id.as_deref();
                    if id.is_some_and(|id| ids.contains(id)) {
                        WriteStatus::Accepted
                    } else if stdin.push(p.chunk) {
                        if let Some(id) = id {
                            ids.insert(id);
                        }
                        WriteStatus::Accepted
                    } else {
                        return Err(RpcError::internal("failed to write to process stdin"));
                    }
                }
            },
        };
        Ok(WriteResponse { status })
    }

    /// `process/signal` (v2): `interrupt` sends SIGINT to the process group. An unknown,
    /// starting or finished process is not an error (upstream answers `{}`).
    pub fn signal(&self, p: SignalParams) -> Result<SignalResponse, RpcError> {
        if let Lookup::Running(proc) = self.lookup(&p.process_id) {
            let Signal::Interrupt = p.signal;
            // Under the state lock, so the waiter cannot reap the leader (freeing its pid,
            // which is also the group id) in between.
            let state = lock(&proc.state);
            if !state.reaped {
                // SAFETY: kill(2) on the process group of a child we have not reaped.
                unsafe { libc::kill(-proc.pid, libc::SIGINT) };
            }
        }
        Ok(SignalResponse {})
    }

    /// `process/terminate` (§4.7): kill the whole tree and reap the child.
    pub fn terminate(&self, p: TerminateParams) -> Result<TerminateResponse, RpcError> {
        let Lookup::Running(proc) = self.lookup(&p.process_id) else {
            return Ok(TerminateResponse { running: false });
        };
        // Killed before its stdin closes: a child that ends at EOF (`cat`) must not exit on
        // its own in between, which would report it not running and its reason `exited`.
        let running = proc.end_with(EndCause::Terminated);
        proc.close_stdin();
        if running {
            let deadline = Instant::now() + TERMINATE_REAP_WAIT;
            let (state, reaped) =
                wait_while(&proc.changed, lock(&proc.state), deadline, |s| !s.reaped);
            drop(state);
            if !reaped {
                log::warn!(
                    processId = proc.id.as_str(), pid = proc.pid;
                    "process {} not reaped {TERMINATE_REAP_WAIT:?} after SIGKILL", proc.pid
                );
            }
        }
        // Escapees are killed even when the leader is over, and again once it is reaped: any
        // it left while dying are adopted by then. The reaper reaps them.
        reaper::kill_tree(None, proc.owner.tree);
        let deadline = Instant::now() + TERMINATE_REAP_WAIT;
        if !reaper::wait_reaped(self.group, Some(proc.owner.tree), deadline) {
            log::warn!(
                processId = proc.id.as_str(), pid = proc.pid;
                "escapees of process {} not reaped after SIGKILL", proc.pid
            );
        }
        Ok(TerminateResponse { running })
    }

    /// TTL expiry and shutdown: SIGKILL every process tree of the session (including trees
    /// whose leader exited but whose output is still open), reap, and remove all entries.
    /// Returns within a bounded time. `cause` is the exit reports' `reason`.
    pub fn kill_all(&self, cause: EndCause) {
        let slots: Vec<Slot> = {
            let mut table = lock(&self.table);
            table.killed = true;
            table.slots.drain().map(|(_, slot)| slot).collect()
        };
        self.live.fetch_sub(slots.len(), Ordering::SeqCst);
        let procs: Vec<Arc<Proc>> = slots
            .into_iter()
            .filter_map(|slot| match slot {
                Slot::Running(proc) => Some(proc),
                Slot::Starting(_) => None,
            })
            .collect();
        for proc in &procs {
            proc.close_stdin();
            proc.end_with(cause);
        }
        // Escapees of trees whose entries were already removed.
        reaper::kill_group(self.group);
        let deadline = Instant::now() + KILL_ALL_WAIT;
        for proc in &procs {
            // Only the reaping is waited for: the output threads may be blocked sending to a
            // peer that does not read, and end on their own once that send returns.
            let (state, reaped) =
                wait_while(&proc.changed, lock(&proc.state), deadline, |s| !s.reaped);
            drop(state);
            if !reaped {
                log::warn!("process {} not reaped {KILL_ALL_WAIT:?} after SIGKILL", proc.pid);
            }
        }
        // Killing a leader makes its killed descendants escapees: kill those too, and wait
        // until the reaper has reaped every one.
        reaper::kill_group(self.group);
        if !reaper::wait_reaped(self.group, None, deadline) {
            log::warn!("escapees of a session not reaped {KILL_ALL_WAIT:?} after SIGKILL");
        }
    }
}

/// A read result without its chunks.
fn result(proc: &Proc, found: &page::Found<'_>) -> ReadResponse {
    let state = &found.state;
    ReadResponse {
        chunks: Vec::new(),
        next_seq: found.next_seq(),
        exited: state.exit.is_some(),
        exit_code: state.exit.as_ref().map(|e| e.code),
        signal: state.exit.as_ref().and_then(|e| e.signal.clone()),
        closed: state.closed_at.is_some(),
        failure: None,
        sandbox_denied: state.exit.as_ref().is_some_and(|e| proc.sandbox_denied(e)),
        dropped_before_seq: found.dropped_before_seq,
        report: state.report.clone(),
    }
}

/// Daemon shutdown, after every session was ended: kills any escapee no session claimed.
pub fn kill_strays() {
    reaper::kill_strays();
}

impl Drop for Processes {
    fn drop(&mut self) {
        // A session dropped without kill_all must not leak its children.
        // Nor its escapees, which outlive their entries.
        self.kill_all(EndCause::DaemonShutdown);
    }
}

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;
