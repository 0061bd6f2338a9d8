//! Filesystem calls under a sandbox, race-free: the daemon re-executes its own binary
//! (`/proc/self/exe __sandboxed-fs`), writes one request to the helper's stdin, and reads
//! one reply from its stdout. The helper is a fresh single-threaded process: it confines
//! itself (mount carve-outs, Landlock) and only then performs the call with the ordinary fs
//! handler, so every path it resolves, including a symlink swapped in meanwhile, is
//! checked by the kernel at use. The daemon's own threads are never confined.
//!
//! Request: one JSON line `{"method","policy"}`, then the call's params JSON to EOF.
//! Reply: `O` + the result JSON, or `E` + `<code>\n<message>`.

use std::ffi::CString;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use super::policy::{self, Effective, Env, Policy};
use super::Confinement;
use crate::error::RpcError;

/// The hidden first argument that makes the binary the helper.
pub const HELPER_ARG: &str = "__sandboxed-fs";

/// What an fs handler looks like to the helper: method and params JSON in, result JSON out.
pub type Dispatch = fn(&str, &str) -> Result<String, RpcError>;

/// Daemon side: runs `method` in a confined helper and returns its reply.
pub fn run(sandbox: &Value, method: &str, params: &str) -> Result<String, RpcError> {
    let tmpdir = Env::current().tmpdir.map(|p| p.to_string_lossy().into_owned());
    // The daemon's probe result travels along, so the helper does not probe again.
    let mounts = super::support().mount_namespace;
    let header = json!({"method": method, "sandbox": sandbox, "tmpdir": tmpdir, "mounts": mounts})
        .to_string();
    let failed = |e: io::Error| RpcError::internal(format!("sandboxed filesystem helper: {e}"));
    // Tracked from before the spawn until reaped, so the orphan reaper (when processes run)
    // never reaps or adopts the helper in between.
    let spawning = crate::children::spawning();
    let (pid, mut stdin, mut stdout) = spawn_helper().map_err(failed)?;
    crate::children::track(pid);
    drop(spawning);
    // The helper reads all of its input before it writes anything, so writing everything
    // first and then reading cannot deadlock.
    let written = stdin
        .write_all(header.as_bytes())
        .and_then(|()| stdin.write_all(b"\n"))
        .and_then(|()| stdin.write_all(params.as_bytes()));
    drop(stdin);
    let mut reply = Vec::new();
    let read = stdout.read_to_end(&mut reply);
    let status = reap(pid);
    crate::children::untrack(pid);
    let status = status.map_err(failed)?;
    written.and(read).map_err(failed)?;
    match reply.split_first() {
        Some((b'O', result)) => {
            String::from_utf8(result.to_vec()).map_err(|e| RpcError::internal(e.to_string()))
        }
        Some((b'E', error)) => {
            let text = String::from_utf8_lossy(error);
            let (code, message) = text.split_once('\n').unwrap_or(("-32603", &text));
            Err(RpcError::new(code.parse().unwrap_or(-32603), message))
        }
        _ => Err(RpcError::internal(format!(
            "sandboxed filesystem helper failed (wait status {status})"
        ))),
    }
}

/// Starts `/proc/self/exe __sandboxed-fs` with posix_spawn (std's `Command` costs more
/// binary than this), stdin and stdout on fresh pipes, stderr on /dev/null, no environment.
fn spawn_helper() -> io::Result<(libc::pid_t, File, File)> {
    let (in_read, in_write) = pipe()?;
    let (out_read, out_write) = pipe()?;
    let program = c"/proc/self/exe";
    let arg = CString::new(HELPER_ARG).map_err(io::Error::other)?;
    let argv = [program.as_ptr(), arg.as_ptr(), std::ptr::null()];
    let envp = [std::ptr::null::<libc::c_char>()];
    let mut pid: libc::pid_t = 0;
    // SAFETY: the file actions are initialized before use and destroyed after; every
    // pointer handed to posix_spawn outlives the call.
    let ret = unsafe {
        let mut actions: libc::posix_spawn_file_actions_t = std::mem::zeroed();
        libc::posix_spawn_file_actions_init(&mut actions);
        libc::posix_spawn_file_actions_adddup2(&mut actions, in_read.as_raw_fd(), 0);
        libc::posix_spawn_file_actions_adddup2(&mut actions, out_write.as_raw_fd(), 1);
        libc::posix_spawn_file_actions_addopen(
            &mut actions,
            2,
            c"/dev/null".as_ptr(),
            libc::O_WRONLY,
            0,
        );
        let ret = libc::posix_spawn(
            &mut pid,
            program.as_ptr(),
            &actions,
            std::ptr::null(),
            argv.as_ptr() as *const *mut libc::c_char,
            envp.as_ptr() as *const *mut libc::c_char,
        );
        libc::posix_spawn_file_actions_destroy(&mut actions);
        ret
    };
    if ret != 0 {
        return Err(io::Error::from_raw_os_error(ret));
    }
    Ok((pid, File::from(in_write), File::from(out_read)))
}

/// A close-on-exec pipe: (read end, write end).
fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: pipe2 fills two descriptors that we then own.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors are fresh and owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Waits for the helper; returns its raw wait status.
fn reap(pid: libc::pid_t) -> io::Result<libc::c_int> {
    loop {
        let mut status = 0;
        // SAFETY: waiting for our own child.
        if unsafe { libc::waitpid(pid, &mut status, 0) } == pid {
            return Ok(status);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Helper side (`main` hands over here for `HELPER_ARG`): read the request, confine this
/// process, run `dispatch`, write the reply. Returns the exit code.
pub fn main(dispatch: Dispatch) -> i32 {
    let reply = serve(dispatch);
    let mut out = io::stdout().lock();
    let written = match &reply {
        Ok(result) => out.write_all(b"O").and_then(|()| out.write_all(result.as_bytes())),
        Err(e) => write!(out, "E{}\n{}", e.code, e.message),
    };
    match written.and_then(|()| out.flush()) {
        Ok(()) => 0,
        Err(_) => 1,
    }
}

fn serve(dispatch: Dispatch) -> Result<String, RpcError> {
    let mut input = Vec::new();
    io::stdin().lock().read_to_end(&mut input).map_err(|e| RpcError::internal(e.to_string()))?;
    let split = input.iter().position(|&b| b == b'\n').unwrap_or(input.len());
    let header: Value = serde_json::from_slice(&input[..split])
        .map_err(|e| RpcError::internal(format!("bad helper request: {e}")))?;
    let params = std::str::from_utf8(input.get(split + 1..).unwrap_or_default())
        .map_err(|e| RpcError::internal(e.to_string()))?;
    let method = header["method"].as_str().unwrap_or_default();
    let tmpdir = header["tmpdir"].as_str().map(std::path::PathBuf::from);
    let policy = policy::parse(Some(&header["sandbox"]), &Env { tmpdir })
        .map_err(super::SandboxError::from)?;
    let support = super::probe::Support {
        landlock_abi: super::landlock::abi_version(),
        seccomp: false, // fs calls never need the network filter
        mount_namespace: header["mounts"].as_bool().unwrap_or(false),
    };
    let policy = Policy { network_restricted: false, ..policy };
    let confinement = Confinement::prepare_for(&policy, &support)?;
    let errno = confinement.apply();
    if errno != 0 {
        let e = io::Error::from_raw_os_error(errno);
        return Err(RpcError::internal(format!("cannot confine the filesystem call: {e}")));
    }
    drop(confinement);
    if let Some(fs) = &policy.fs {
        check_paths(fs, method, params)?;
    }
    dispatch(method, params)
}

/// Each path of the call is checked against the rules after confinement, with symlinks
/// resolved, so a refusal reads as upstream 0.171's (a write outside the writable roots:
/// -32603 `Read-only file system (os error 30)`; a read of an uncovered path: -32600
/// `Permission denied (os error 13)`). The kernel still decides every open; this only makes
/// the plain cases answer like upstream. `fs/getMetadata` is not checked: upstream answers
/// it for uncovered paths too (measured), and Landlock does not govern `stat`.
fn check_paths(fs: &policy::FsRules, method: &str, params: &str) -> Result<(), RpcError> {
    if method == "fs/getMetadata" {
        return Ok(());
    }
    let Ok(value) = serde_json::from_str::<serde_json::Value>(params) else {
        return Ok(()); // The handler reports the decode error as the unconfined call would.
    };
    let write = matches!(method, "fs/writeFile" | "fs/createDirectory" | "fs/remove");
    let mut checks: Vec<(&str, bool)> = vec![("path", write)];
    if method == "fs/copy" {
        checks = vec![("sourcePath", false), ("destinationPath", true)];
    }
    for (key, needs_write) in checks {
        let Some(path) = value.get(key).and_then(|v| v.as_str()).and_then(policy::native_path)
        else {
            continue;
        };
        let resolved = resolve_for(&path, method == "fs/remove");
        let access = fs.access_of(&resolved);
        if needs_write && access < Effective::Write {
            let e = io::Error::from_raw_os_error(libc::EROFS);
            return Err(RpcError::internal(e.to_string()));
        }
        if access < Effective::Read {
            let e = io::Error::from_raw_os_error(libc::EACCES);
            return Err(RpcError::invalid_request(e.to_string()));
        }
    }
    Ok(())
}

/// The path as the kernel will reach it; for `remove` the link itself, not its target.
fn resolve_for(path: &Path, keep_last: bool) -> PathBuf {
    match (keep_last, path.parent(), path.file_name()) {
        (true, Some(parent), Some(name)) => policy::resolve(parent).join(name),
        _ => policy::resolve(path),
    }
}
