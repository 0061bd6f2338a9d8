//! Spawning (PROTOCOL.md §4.1): the long-lived spawner threads, `clone`/`exec` of the child as
//! a session leader with its stdio installed, program lookup in PATH, and the pipes and threads
//! a child needs. The child side runs between clone and exec and must not allocate or lock.
//! It keeps no state about processes once the child has exec'd.

use std::collections::BTreeMap;
use std::ffi::{CString, OsString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::thread;

use super::reaper;
use super::wait::lock;
use crate::sandbox;

/// Long-lived threads that fork children (see `spawn_on_spawner`).
const SPAWNER_THREADS: usize = 8;
/// Stack the cloned child runs on until exec (a few libc calls).
const CHILD_STACK_BYTES: usize = 64 << 10;
/// Stack of the per-process I/O threads: they hold their buffers on the heap.
const IO_THREAD_STACK_BYTES: usize = 128 << 10;
/// PATH used for lookup when neither the child environment nor the server has one
/// (the same fallback as glibc's `execvp`).
const DEFAULT_PATH: &str = "/bin:/usr/bin";

/// Everything the child needs between clone and exec, prepared by the parent: the child
/// shares the parent's memory and must not allocate or take locks.
pub(super) struct SpawnPlan {
    pub(super) program: CString,
    pub(super) argv: Vec<CString>,
    pub(super) envp: Vec<CString>,
    pub(super) cwd: CString,
    /// Descriptors (all >= 3, close-on-exec) to install as the child's 0, 1 and 2; the
    /// caller keeps them open until the spawn returns.
    pub(super) stdio: [RawFd; 3],
    /// Make stdin (a PTY slave) the controlling terminal.
    pub(super) tty: bool,
    /// The sandbox, prepared by the parent; applied in the child right before chdir and exec.
    pub(super) confinement: Option<sandbox::Confinement>,
    /// Operator rlimits (issue 18), set right before exec.
    pub(super) rlimits: Vec<super::limits::Rlimit>,
}

type SpawnJob = (SpawnPlan, mpsc::SyncSender<io::Result<libc::pid_t>>);

/// Children are created by long-lived spawner threads because Linux delivers
/// PR_SET_PDEATHSIG when the *thread* that created the child exits, not the process: a pool
/// worker that ends would otherwise kill the children it started. The spawners never exit.
/// There are several because a spawn occupies its thread until the child has exec'd, and
/// under load that is mostly waiting for the child to be scheduled.
pub(super) fn spawn_on_spawner(plan: SpawnPlan) -> io::Result<libc::pid_t> {
    static SPAWNER: OnceLock<Option<Mutex<mpsc::Sender<SpawnJob>>>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (jobs, receiver) = mpsc::channel::<SpawnJob>();
        let receiver = Arc::new(Mutex::new(receiver));
        let mut started = 0;
        for _ in 0..SPAWNER_THREADS {
            let receiver = Arc::clone(&receiver);
            let body = move || loop {
                // The lock is held only to take a job, never while spawning.
                let job = lock(&receiver).recv();
                let Ok((plan, reply)) = job else { return };
                let _ = reply.send(clone_and_exec(&plan));
            };
            match thread::Builder::new()
                .name("spawner".into())
                .stack_size(IO_THREAD_STACK_BYTES)
                .spawn(body)
            {
                Ok(_) => started += 1,
                Err(e) => log::error!("cannot start a spawner thread: {e}"),
            }
        }
        (started > 0).then(|| Mutex::new(jobs))
    });
    let Some(jobs) = spawner else {
        return Err(io::Error::other("spawner thread unavailable"));
    };
    let (reply, result) = mpsc::sync_channel(1);
    lock(jobs).send((plan, reply)).map_err(|_| io::Error::other("spawner thread stopped"))?;
    result.recv().map_err(|_| io::Error::other("spawner thread stopped"))?
}

/// What the child reads (and writes its failure into) while it shares our memory.
struct ChildArgs<'a> {
    plan: &'a SpawnPlan,
    argv: &'a [*const libc::c_char],
    envp: &'a [*const libc::c_char],
    parent: libc::pid_t,
    /// The errno of the step that failed, or 0 once exec succeeded.
    error: libc::c_int,
}

/// Starts the child with `clone(CLONE_VM | CLONE_VFORK)`, the way posix_spawn does: unlike
/// fork, nothing of our address space is copied, which with hundreds of threads (each a
/// stack mapping) made every fork cost milliseconds. We are suspended until the child has
/// exec'd or given up, so its failure is known when this returns, and a failed child is
/// reaped here.
fn clone_and_exec(plan: &SpawnPlan) -> io::Result<libc::pid_t> {
    let pointers = |strings: &[CString]| -> Vec<*const libc::c_char> {
        strings.iter().map(|s| s.as_ptr()).chain(std::iter::once(std::ptr::null())).collect()
    };
    let (argv, envp) = (pointers(&plan.argv), pointers(&plan.envp));
    let mut args = ChildArgs {
        plan,
        argv: &argv,
        envp: &envp,
        parent: std::process::id() as libc::pid_t,
        error: 0,
    };
    let mut stack = vec![0u8; CHILD_STACK_BYTES];
    // From clone until the pid is tracked, the reaper must not take the child for an orphan.
    let _spawning = reaper::spawning();
    // SAFETY: the stack grows down from its (16-byte aligned) top; `stack` and `args` outlive
    // the child's use of them, since CLONE_VFORK suspends us until it execs or exits. All
    // signals are blocked around clone so that no handler of ours runs in the child before it
    // has reset the dispositions; the previous mask is restored right after.
    let pid = unsafe {
        let top = stack.as_mut_ptr().add(CHILD_STACK_BYTES);
        let top = top.sub(top as usize % 16);
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut previous: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut previous);
        let pid = libc::clone(
            child_main,
            top.cast(),
            libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
            (&mut args as *mut ChildArgs).cast(),
        );
        libc::pthread_sigmask(libc::SIG_SETMASK, &previous, std::ptr::null_mut());
        pid
    };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the child wrote `error` before exec or exit, and no longer runs on our memory.
    let error = unsafe { std::ptr::read_volatile(&args.error) };
    if error != 0 {
        let mut status = 0;
        // SAFETY: reaping our own child, which has exited.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        return Err(io::Error::from_raw_os_error(error));
    }
    crate::children::track(pid);
    Ok(pid)
}

/// The child between clone and exec: only async-signal-safe calls, no allocation, no locks
/// (it shares the parent's memory). It becomes a session leader (with the PTY as controlling
/// terminal), dies with the server (PR_SET_PDEATHSIG), gets default signal dispositions and
/// an empty mask, and keeps no descriptor beyond its stdio.
extern "C" fn child_main(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the parent's `ChildArgs`, alive while the parent is suspended.
    let args = unsafe { &mut *arg.cast::<ChildArgs>() };
    let plan = args.plan;
    // SAFETY: each call is async-signal-safe and acts only on this (child) process.
    unsafe {
        let fail = |args: &mut ChildArgs| -> libc::c_int {
            let errno = *libc::__errno_location();
            std::ptr::write_volatile(
                &mut args.error,
                if errno == 0 { libc::EINVAL } else { errno },
            );
            libc::_exit(127)
        };
        for signal in 1..=64 {
            if signal != libc::SIGKILL && signal != libc::SIGSTOP {
                // Fails harmlessly for numbers the C library reserves.
                libc::signal(signal, libc::SIG_DFL);
            }
        }
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        if libc::pthread_sigmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut()) != 0 {
            return fail(args);
        }
        if libc::setsid() < 0 {
            return fail(args);
        }
        for (target, &fd) in plan.stdio.iter().enumerate() {
            // The sources are >= 3, so dup2 always makes a fresh (inheritable) descriptor.
            if libc::dup2(fd, target as libc::c_int) < 0 {
                return fail(args);
            }
        }
        if plan.tty && libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
            return fail(args);
        }
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) < 0 {
            return fail(args);
        }
        // Orphans of the tree stay in it, below this leader, instead of going to the server
        // unattributed (reaper.rs). The flag survives exec.
        if libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1) < 0 {
            return fail(args);
        }
        if libc::getppid() != args.parent {
            // The server died before the death signal was armed.
            libc::_exit(137);
        }
        // Mounts, no-new-privs, Landlock, seccomp: raw syscalls on prepared data.
        if let Some(confinement) = &plan.confinement {
            let errno = confinement.apply();
            if errno != 0 {
                *libc::__errno_location() = errno;
                return fail(args);
            }
        }
        if libc::chdir(plan.cwd.as_ptr()) < 0 {
            return fail(args);
        }
        // Everything we open is close-on-exec, but make sure no descriptor beyond stdio
        // leaks into the child, whoever opened it.
        let marked =
            libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, libc::CLOSE_RANGE_CLOEXEC);
        if marked != 0 {
            let mut limit: libc::rlimit = std::mem::zeroed();
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
            let top = limit.rlim_cur.min(1 << 16) as libc::c_int;
            for fd in 3..top {
                libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
            }
        }
        // Last, so that nothing above (the sandbox's descriptors) runs under them.
        for (resource, limit) in &plan.rlimits {
            if libc::setrlimit(*resource as _, limit) < 0 {
                return fail(args);
            }
        }
        libc::execve(plan.program.as_ptr(), args.argv.as_ptr(), args.envp.as_ptr());
        fail(args)
    }
}

/// The program to execute for `argv0`: itself if it holds a `/`, else the first executable
/// file named so in the child environment's PATH, or the server's when the child has none.
pub(super) fn resolve_program(
    argv0: &str,
    env: &BTreeMap<OsString, OsString>,
    cwd: &Path,
) -> io::Result<PathBuf> {
    if argv0.contains('/') {
        return Ok(PathBuf::from(argv0));
    }
    let path = env
        .get(&OsString::from("PATH"))
        .cloned()
        .or_else(|| std::env::var_os("PATH"))
        .unwrap_or_else(|| DEFAULT_PATH.into());
    let mut denied = false;
    for dir in std::env::split_paths(&path) {
        // An empty PATH element means the current directory, which for the child is `cwd`.
        let candidate = cwd.join(dir).join(argv0);
        let Ok(meta) = std::fs::metadata(&candidate) else {
            continue;
        };
        if meta.is_file() && meta.permissions().mode() & 0o111 != 0 {
            return Ok(candidate);
        }
        denied = true;
    }
    Err(io::Error::from_raw_os_error(if denied { libc::EACCES } else { libc::ENOENT }))
}

/// What std reports for an argument, variable or path holding a NUL byte.
pub(super) fn nul_error() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, "nul byte found in provided data")
}

/// A close-on-exec pipe: (read end, write end).
pub(super) fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: pipe2 fills two descriptors that we then own.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors are fresh and owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// `fd` moved to a number >= 3 (close-on-exec), so that installing the child's stdio with
/// dup2 never finds a source already in place (which would keep it close-on-exec) nor
/// overwrites a source not yet installed. Only a server started with stdio closed needs it.
pub(super) fn above_stdio(fd: OwnedFd) -> io::Result<OwnedFd> {
    if fd.as_raw_fd() > 2 {
        return Ok(fd);
    }
    // SAFETY: duplicating a descriptor we own into a fresh one we then own.
    let moved = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 3) };
    if moved < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    Ok(unsafe { OwnedFd::from_raw_fd(moved) })
}

pub(super) fn spawn_thread(name: &str, body: impl FnOnce() + Send + 'static) -> io::Result<()> {
    thread::Builder::new().name(name.into()).stack_size(IO_THREAD_STACK_BYTES).spawn(body).map(drop)
}
