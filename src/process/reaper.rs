//! Escapees (issue 17): descendants that left their tree with `setsid` or a double fork.
//! The daemon is a child subreaper (`PR_SET_CHILD_SUBREAPER`), and so is every child it
//! starts (the flag survives exec): an orphan goes to the nearest living leader, so it stays
//! among that leader's descendants by parent id, and only when a leader dies do its orphans
//! come to the daemon, which then attributes them to the leader's tree and session. This
//! file owns that attribution, the reaper thread that reaps every child nobody else waits
//! for, and the kill of a tree, a session's escapees, or all of them.
//!
//! Tracked children (children.rs: the leaders and the sandboxed filesystem helper, whose
//! waiters reap them with `waitpid(pid)`) are never reaped or adopted here: the reaper
//! learns of an exit with `WNOWAIT` and reaps only untracked pids. A spawn in flight holds
//! the spawn lock for reading from clone until its pid is tracked, and the reaper and the
//! attribution hold it for writing, so a just-cloned child is never taken for an orphan.
//! It never touches the process table or the wire.

use std::collections::{HashMap, HashSet};
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, OnceLock, RwLockReadGuard};
use std::thread;
use std::time::{Duration, Instant};

use super::wait::{lock, wait_while};
use crate::children;

/// Sweeps over `/proc` when killing: a member may fork while it is being killed.
const KILL_PASSES: usize = 4;
/// The longest the reaper waits for a tracked child's own waiter before looking again.
const TRACKED_RECHECK: Duration = Duration::from_secs(1);
/// Stack of the reaper thread (a few syscalls and a `/proc` scan on the heap).
const REAPER_STACK_BYTES: usize = 128 << 10;

/// Whom an adopted orphan belongs to: the tree of one started process, and its session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Owner {
    pub(super) tree: u64,
    pub(super) group: u64,
}

#[derive(Default)]
struct Registry {
    /// Orphans reparented to the daemon, by owner, until reaped.
    adopted: HashMap<libc::pid_t, Owner>,
}

static REGISTRY: Mutex<Option<Registry>> = Mutex::new(None);
static CHANGED: Condvar = Condvar::new();

/// A fresh id for an `Owner`'s tree or group.
pub(super) fn next_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

fn with<T>(f: impl FnOnce(&mut Registry) -> T) -> T {
    f(lock(&REGISTRY).get_or_insert_with(Registry::default))
}

/// Held by a spawner from before clone until `track`; starts the reaper on first use.
pub(super) fn spawning() -> RwLockReadGuard<'static, ()> {
    start();
    children::spawning()
}

/// Makes the daemon a subreaper and starts the reaper thread, once.
fn start() {
    static STARTED: OnceLock<()> = OnceLock::new();
    STARTED.get_or_init(|| {
        // SAFETY: prctl with integer arguments only.
        if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
            let err = io::Error::last_os_error();
            log::warn!("cannot become a child subreaper ({err}); escapees go to init");
        }
        let spawned = thread::Builder::new()
            .name("orphan-reaper".into())
            .stack_size(REAPER_STACK_BYTES)
            .spawn(reap_loop);
        if let Err(err) = spawned {
            log::error!("cannot start the reaper thread: {err}; orphans stay zombies");
        }
    });
}

/// Reaps every exited child that is not tracked, attributing the orphans its death makes.
fn reap_loop() {
    loop {
        let generation = children::generation();
        // SAFETY: waitid with a zeroed siginfo it fills in; WNOWAIT leaves the child as it is.
        let (ret, pid) = unsafe {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            let ret = libc::waitid(libc::P_ALL, 0, &mut info, libc::WEXITED | libc::WNOWAIT);
            (ret, info.si_pid())
        };
        if ret != 0 {
            let err = io::Error::last_os_error();
            match err.raw_os_error() {
                Some(libc::EINTR) => {}
                // No child at all: none can appear before the next spawn (an orphan always
                // comes from a dying child), so wait for one.
                Some(libc::ECHILD) => children::wait_for_spawn(generation),
                _ => {
                    log::error!("reaper: waitid failed: {err}; reaper stops");
                    return;
                }
            }
            continue;
        }
        let no_spawn = children::exclusive();
        let tracked = children::is_tracked(pid);
        let owner = with(|r| r.adopted.get(&pid).copied());
        if tracked {
            drop(no_spawn);
            // Its waiter reaps it; wait for that rather than spin on the same zombie.
            let deadline = Instant::now() + TRACKED_RECHECK;
            children::wait_untracked(pid, deadline);
            continue;
        }
        // Its children were reparented to us as it died: they are its tree's too.
        if let Some(owner) = owner {
            claim_locked(owner);
        }
        drop(no_spawn);
        let mut status = 0;
        // SAFETY: reaping our own child, which has exited (WNOWAIT said so).
        unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        with(|r| r.adopted.remove(&pid));
        CHANGED.notify_all();
        if let Some(owner) = owner {
            log::debug!("reaped escapee {pid} of tree {}", owner.tree);
        }
    }
}

/// A process of `owner` (its leader or an escapee) has exited: the orphans it left were
/// reparented to the daemon and become `owner`'s. Call before reaping that process.
pub(super) fn claim_orphans(owner: Owner) {
    let _no_spawn = children::exclusive();
    claim_locked(owner);
}

fn claim_locked(owner: Owner) {
    let orphans = daemon_children();
    with(|r| {
        for pid in orphans {
            if !children::is_tracked(pid) && !r.adopted.contains_key(&pid) {
                log::debug!("adopted escapee {pid} into tree {}", owner.tree);
                r.adopted.insert(pid, owner);
            }
        }
    });
}

/// SIGKILLs `leader` (if given: the caller guarantees it is not reaped) and every escapee
/// of `tree`, with all their descendants.
pub(super) fn kill_tree(leader: Option<libc::pid_t>, tree: u64) {
    kill_from(|| {
        let mut roots: Vec<libc::pid_t> = leader.into_iter().collect();
        with(|r| roots.extend(r.adopted.iter().filter(|(_, o)| o.tree == tree).map(|(p, _)| *p)));
        roots
    });
}

/// SIGKILLs every escapee of the session `group`, with all their descendants.
pub(super) fn kill_group(group: u64) {
    kill_from(|| {
        with(|r| r.adopted.iter().filter(|(_, o)| o.group == group).map(|(p, _)| *p).collect())
    });
}

/// Daemon shutdown, after every session ended: SIGKILLs whatever child of the daemon is
/// left that no waiter owns (an orphan whose attribution lost a race), with its descendants.
pub(super) fn kill_strays() {
    kill_from(|| daemon_children().into_iter().filter(|pid| !children::is_tracked(*pid)).collect());
}

/// Waits until no escapee of `group` (or of `tree`, if given) is left unreaped; true if none is.
pub(super) fn wait_reaped(group: u64, tree: Option<u64>, deadline: Instant) -> bool {
    let pending = |r: &mut Option<Registry>| {
        r.as_ref().is_some_and(|r| {
            r.adopted.values().any(|o| o.group == group && tree.is_none_or(|t| o.tree == t))
        })
    };
    wait_while(&CHANGED, lock(&REGISTRY), deadline, pending).1
}

fn kill_from(roots: impl Fn() -> Vec<libc::pid_t>) {
    for _ in 0..KILL_PASSES {
        let roots = roots();
        if roots.is_empty() {
            return;
        }
        let procs = scan();
        let mut children: HashMap<libc::pid_t, Vec<libc::pid_t>> = HashMap::new();
        for p in procs.iter().filter(|p| !p.zombie) {
            children.entry(p.ppid).or_default().push(p.pid);
        }
        let mut doomed = roots.clone();
        let mut next = 0;
        while next < doomed.len() {
            if let Some(kids) = children.get(&doomed[next]) {
                doomed.extend(kids);
            }
            next += 1;
        }
        let alive: HashSet<libc::pid_t> =
            procs.iter().filter(|p| !p.zombie).map(|p| p.pid).collect();
        let mut killed = 0;
        // Deepest first: a parent that died first would hand its children to the daemon,
        // and they would no longer be found below it (they are found by the next pass).
        for pid in doomed.into_iter().rev().filter(|p| alive.contains(p)) {
            // SAFETY: kill(2) on one pid; no memory is involved.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            killed += 1;
        }
        if killed == 0 {
            return;
        }
    }
}

/// The daemon's children that orphans could be among. The kernel hands an orphan to the
/// subreaper's first living thread, the main thread, whose `children` file lists them (the
/// leaders are children of spawner threads and are not listed); without that file (a
/// kernel without CONFIG_PROC_CHILDREN) every process in `/proc` is looked at.
fn daemon_children() -> Vec<libc::pid_t> {
    let me = std::process::id() as libc::pid_t;
    match std::fs::read_to_string(format!("/proc/{me}/task/{me}/children")) {
        Ok(list) => list.split_whitespace().filter_map(|pid| pid.parse().ok()).collect(),
        Err(_) => scan().into_iter().filter(|p| p.ppid == me).map(|p| p.pid).collect(),
    }
}

struct ProcEntry {
    pid: libc::pid_t,
    ppid: libc::pid_t,
    zombie: bool,
}

/// Every process in `/proc` with its parent.
fn scan() -> Vec<ProcEntry> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<libc::pid_t>().ok())
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // After the parenthesised command (which may hold ')' or spaces): state, ppid.
            let (_, rest) = stat.rsplit_once(')')?;
            let mut fields = rest.split_whitespace();
            let state = fields.next()?;
            let ppid = fields.next()?.parse().ok()?;
            Some(ProcEntry { pid, ppid, zombie: state == "Z" || state == "X" })
        })
        .collect()
}
