//! Enforcing the client's sandbox (issue 13) inside this one binary. The facade: parse a
//! request's `sandbox` member into a `Policy`, turn it into a `Confinement` (a Landlock
//! ruleset descriptor, a mount plan for carve-outs, the seccomp network filter) prepared in
//! the parent, and apply that in a child with raw syscalls only (between clone and exec, or
//! in the filesystem helper of `fs_child`). Never runs anything weaker than asked: a host
//! lacking a mechanism a request needs gets -32600 naming it. Owns no threads and no
//! sessions; knows the fs handlers only as a function handed to `fs_child::main`.
//!
//! How rules map to the kernel:
//! - readable / writable trees → Landlock grants (read: execute, read file, read dir;
//!   write: every right up to ABI 5). Uncovered paths get nothing.
//! - a read-only or denied path inside a granted tree (`.git` in a writable root, a deny
//!   entry, a `**/.env` match) → a private mount namespace: read-only bind mount, or an
//!   empty read-only tmpfs / `/dev/null` over it. Without mount namespaces the grant
//!   around it is split into grants on its siblings (denies more: nothing new can be
//!   created directly in the split directories).
//! - network restricted → `seccomp`'s filter (no sockets but AF_UNIX, as upstream).

pub mod fs_child;
pub mod landlock;
pub mod mounts;
pub mod policy;
pub mod probe;
pub mod seccomp;

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use crate::error::RpcError;

pub use policy::{Env, Policy, PolicyError};
pub use probe::support;

use self::landlock::Grant;
use self::mounts::{Kind, MountPlan};
use self::policy::{Access, Effective, FsRules};

/// A glob scan stops after visiting this many directory entries in total.
const GLOB_SCAN_MAX_ENTRIES: usize = 20_000;

/// Why a sandboxed request cannot run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SandboxError {
    /// The `sandbox` member does not decode (-32602).
    Invalid(String),
    /// This host cannot enforce what is asked, or the policy cannot be used (-32600).
    Unsupported(String),
    /// Preparing or running the confinement failed (-32603).
    Failed(String),
}

impl From<PolicyError> for SandboxError {
    fn from(e: PolicyError) -> Self {
        match e {
            PolicyError::Invalid(m) => SandboxError::Invalid(m),
            PolicyError::Unsupported(m) => SandboxError::Unsupported(m),
        }
    }
}

impl From<SandboxError> for RpcError {
    fn from(e: SandboxError) -> Self {
        match e {
            SandboxError::Invalid(m) => RpcError::invalid_params(m),
            SandboxError::Unsupported(m) => RpcError::invalid_request(m),
            SandboxError::Failed(m) => RpcError::internal(m),
        }
    }
}

/// Parses a request's `sandbox` member with the daemon's environment, which is only read
/// when there is a sandbox (most requests carry none, and reading it costs a scan of the
/// environment).
pub fn parse(sandbox: Option<&serde_json::Value>) -> Result<Policy, SandboxError> {
    match sandbox.filter(|s| !s.is_null()) {
        None => Ok(Policy::default()),
        Some(_) => Ok(policy::parse(sandbox, &Env::current())?),
    }
}

/// Everything a child needs to confine itself, prepared before fork. Applying it makes raw
/// syscalls only (no allocation, no locks), so it is safe in a `CLONE_VM | CLONE_VFORK`
/// child. Dropping it closes the ruleset descriptor.
#[derive(Debug)]
pub struct Confinement {
    mounts: MountPlan,
    landlock: Option<OwnedFd>,
    seccomp: Option<&'static [libc::sock_filter]>,
}

impl Confinement {
    /// Prepares `policy` (which must not be unrestricted) for this host.
    pub fn prepare(policy: &Policy) -> Result<Confinement, SandboxError> {
        Self::prepare_for(policy, support())
    }

    /// `prepare` for a host whose support is already known (the fs helper is told the
    /// daemon's, instead of probing again).
    pub fn prepare_for(
        policy: &Policy,
        support: &probe::Support,
    ) -> Result<Confinement, SandboxError> {
        let mut confinement =
            Confinement { mounts: MountPlan::default(), landlock: None, seccomp: None };
        if let Some(fs) = &policy.fs {
            if support.landlock_abi.is_none() {
                return Err(SandboxError::Unsupported(
                    "cannot enforce the sandbox's file rules: this kernel has no Landlock (Linux 5.13+ with landlock in the LSM list)".into(),
                ));
            }
            let (grants, mounts) = plan(fs, support.mount_namespace);
            confinement.mounts = mounts;
            let fd = landlock::ruleset(&grants).map_err(SandboxError::Failed)?;
            confinement.landlock = Some(fd.ok_or_else(|| {
                SandboxError::Unsupported(
                    "cannot enforce the sandbox's file rules: Landlock is not enabled on this host"
                        .into(),
                )
            })?);
        }
        if policy.network_restricted {
            if !support.seccomp {
                return Err(SandboxError::Unsupported(
                    "cannot restrict the network: this kernel has no seccomp filters".into(),
                ));
            }
            confinement.seccomp = Some(seccomp::program());
        }
        Ok(confinement)
    }

    /// Confines the calling process: mounts (before Landlock, which forbids mounting), then
    /// `PR_SET_NO_NEW_PRIVS`, Landlock, seccomp. Raw syscalls on prepared data only.
    /// Returns 0 or the errno of the step that failed.
    pub fn apply(&self) -> libc::c_int {
        if !self.mounts.is_empty() {
            let e = self.mounts.apply();
            if e != 0 {
                return e;
            }
        }
        // SAFETY: prctl with integer arguments, affecting this process only.
        if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
            return landlock::errno();
        }
        if let Some(fd) = &self.landlock {
            let e = landlock::restrict_self(fd.as_raw_fd());
            if e != 0 {
                return e;
            }
        }
        if let Some(program) = self.seccomp {
            let e = seccomp::install(program);
            if e != 0 {
                return e;
            }
        }
        0
    }
}

/// Landlock grants and mount carve-outs for `fs`. With `mount_namespace` false, each
/// carve-out is made by splitting the grants above it instead (denying more).
pub fn plan(fs: &FsRules, mount_namespace: bool) -> (Vec<(PathBuf, Grant)>, MountPlan) {
    let mut grants: Vec<(PathBuf, Grant)> = Vec::new();
    for rule in &fs.rules {
        let grant = match rule.access {
            Access::Read => Grant::Read,
            Access::Write => Grant::Write,
            Access::Deny => continue,
        };
        if rule.path.symlink_metadata().is_ok() {
            grants.push((rule.path.clone(), grant));
        }
    }
    for device in policy::DEVICE_FILES {
        if Path::new(device).exists() {
            grants.push((PathBuf::from(device), Grant::Write));
        }
    }
    // Paths where the union of grants gives more than the rules allow.
    let mut carve_outs: Vec<(PathBuf, Effective)> = Vec::new();
    for rule in &fs.rules {
        if rule.access != Access::Write && rule.path.symlink_metadata().is_ok() {
            carve_outs.push((rule.path.clone(), fs.access_of(&rule.path)));
        }
    }
    for glob in &fs.deny_globs {
        for path in glob_matches(glob, fs.glob_scan_depth) {
            carve_outs.push((path, Effective::None));
        }
    }
    carve_outs.retain(|(path, intended)| granted(&grants, path) > *intended);
    carve_outs.sort();
    carve_outs.dedup();
    let mut mounts = MountPlan::default();
    for (path, intended) in carve_outs {
        if mount_namespace {
            let kind = match (intended, path.is_dir()) {
                (Effective::Read, _) => Kind::ReadOnly,
                (_, true) => Kind::MaskDir,
                (_, false) => Kind::MaskFile,
            };
            mounts.push(kind, &path);
        } else {
            split(&mut grants, &path, intended);
        }
    }
    (grants, mounts)
}

/// What the Landlock grants alone give `path`: the widest grant on it or an ancestor.
fn granted(grants: &[(PathBuf, Grant)], path: &Path) -> Effective {
    grants
        .iter()
        .filter(|(p, _)| path.starts_with(p))
        .map(|(_, g)| match g {
            Grant::Read => Effective::Read,
            Grant::Write => Effective::Write,
        })
        .max()
        .unwrap_or(Effective::None)
}

/// Without mount namespaces: replaces every grant above `carve` that gives it more than
/// `intended` by the same grant on each sibling along the way down, and `intended` (if
/// any) on `carve` itself. The split directories themselves lose that grant.
fn split(grants: &mut Vec<(PathBuf, Grant)>, carve: &Path, intended: Effective) {
    let above: Vec<(PathBuf, Grant)> = grants
        .iter()
        .filter(|(p, g)| carve.starts_with(p) && p != carve && grant_level(*g) > intended)
        .cloned()
        .collect();
    grants.retain(|entry| !above.contains(entry));
    grants.retain(|(p, g)| !(p == carve && grant_level(*g) > intended));
    for (root, grant) in above {
        let mut dir = root.clone();
        for name in carve.strip_prefix(&root).into_iter().flat_map(|r| r.components()) {
            let next = dir.join(name);
            if let Ok(entries) = std::fs::read_dir(&dir) {
                for entry in entries.flatten() {
                    // A symlink would grant its target, wherever it points: left out.
                    let link = entry.file_type().map_or(true, |t| t.is_symlink());
                    if entry.path() != next && !link {
                        grants.push((entry.path(), grant));
                    }
                }
            }
            dir = next;
        }
    }
    if intended == Effective::Read {
        grants.push((carve.to_path_buf(), Grant::Read));
    }
}

fn grant_level(g: Grant) -> Effective {
    match g {
        Grant::Read => Effective::Read,
        Grant::Write => Effective::Write,
    }
}

/// Existing paths matching a deny glob, scanned from its literal base at most `depth`
/// levels deep (symlinks not followed) and at most `GLOB_SCAN_MAX_ENTRIES` entries.
fn glob_matches(glob: &str, depth: usize) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut budget = GLOB_SCAN_MAX_ENTRIES;
    let base = policy::glob_base(glob);
    let mut stack = vec![(base, 0usize)];
    while let Some((dir, level)) = stack.pop() {
        if policy::glob_match(glob, &dir) {
            found.push(dir.clone());
            continue;
        }
        if level >= depth {
            continue;
        }
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            if budget == 0 {
                return found;
            }
            budget -= 1;
            let path = entry.path();
            match entry.file_type() {
                Ok(t) if t.is_dir() => stack.push((path, level + 1)),
                _ => {
                    if policy::glob_match(glob, &path) {
                        found.push(path);
                    }
                }
            }
        }
    }
    found
}

/// Runs one filesystem call (`method` with its JSON `params`) under the request's
/// `sandbox` in the confined helper process; returns the result's JSON text or the call's
/// error, mapped exactly as the unconfined call maps it.
pub fn run_fs(sandbox: &serde_json::Value, method: &str, params: &str) -> Result<String, RpcError> {
    fs_child::run(sandbox, method, params)
}

/// Exit codes that say "not a sandbox problem" (upstream's quick rejects): misuse of a
/// shell builtin, not executable, not found.
const QUICK_REJECT_EXIT_CODES: [i32; 3] = [2, 126, 127];

/// Output that suggests a sandbox denial (upstream's keywords), compared case-insensitively.
const DENIAL_KEYWORDS: [&str; 7] = [
    "operation not permitted",
    "permission denied",
    "read-only file system",
    "seccomp",
    "sandbox",
    "landlock",
    "failed to write file",
];

/// Whether `output` mentions a denial.
pub fn mentions_denial(output: &[u8]) -> bool {
    DENIAL_KEYWORDS.iter().any(|k| {
        let k = k.as_bytes();
        output.windows(k.len()).any(|w| w.eq_ignore_ascii_case(k))
    })
}

/// `sandboxDenied` for a confined process, upstream's heuristic in upstream's order: a
/// non-zero exit with output mentioning a denial; else, unless the code is a quick reject,
/// death by SIGSYS (exit code 159, a seccomp kill). The kernel reports Landlock and
/// seccomp-errno denials only as errors the process sees, so this is a heuristic: a
/// program that prints "permission denied" for its own reasons counts as denied.
pub fn is_likely_denied(exit_code: i32, killed_by_sigsys: bool, mentioned_denial: bool) -> bool {
    const SIGSYS_EXIT_CODE: i32 = 128 + libc::SIGSYS;
    if exit_code == 0 {
        return false;
    }
    if mentioned_denial {
        return true;
    }
    if QUICK_REJECT_EXIT_CODES.contains(&exit_code) {
        return false;
    }
    killed_by_sigsys || exit_code == SIGSYS_EXIT_CODE
}

#[cfg(test)]
mod tests;
