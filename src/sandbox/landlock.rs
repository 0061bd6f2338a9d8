//! Landlock, the kernel's unprivileged file-access control: turns a list of grants into a
//! ruleset descriptor, built before fork by the parent (it allocates and opens paths), and
//! restricts a process with it by one raw syscall, safe between clone and exec. Landlock
//! only grants: what the grants cannot express (a read-only or denied path inside a granted
//! tree) is `mounts`' job, decided by `plan` in mod.rs.

use std::os::fd::{OwnedFd, RawFd};
use std::path::PathBuf;

use landlock::{Access, AccessFs, Ruleset, RulesetAttr, RulesetCreatedAttr, ABI};

/// The file-system rights we ask the kernel to handle: everything up to ABI 5 (ioctl on
/// devices). The crate's default best-effort mode drops what an older kernel lacks.
const HANDLED_ABI: ABI = ABI::V5;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Grant {
    Read,
    Write,
}

/// A ruleset with `grants` added (paths that do not exist are skipped); `None` when the
/// kernel has no Landlock, so the caller refuses instead of running unconfined.
pub fn ruleset(grants: &[(PathBuf, Grant)]) -> Result<Option<OwnedFd>, String> {
    let created = Ruleset::default()
        .handle_access(AccessFs::from_all(HANDLED_ABI))
        .and_then(|r| r.create())
        .map_err(|e| format!("cannot create a Landlock ruleset: {e}"))?;
    let mut created = created;
    for (path, grant) in grants {
        let access = match grant {
            Grant::Read => AccessFs::from_read(HANDLED_ABI),
            Grant::Write => AccessFs::from_all(HANDLED_ABI),
        };
        created = created
            .add_rules(landlock::path_beneath_rules([path], access))
            .map_err(|e| format!("cannot add a Landlock rule for {}: {e}", path.display()))?;
    }
    Ok(created.into())
}

/// `landlock_restrict_self(fd, 0)`: a raw syscall on a prepared descriptor; no allocation.
/// Returns 0 or an errno. The caller must have set `PR_SET_NO_NEW_PRIVS`.
pub fn restrict_self(fd: RawFd) -> libc::c_int {
    // SAFETY: a plain syscall with an integer descriptor and flags 0.
    let ret = unsafe { libc::syscall(libc::SYS_landlock_restrict_self, fd, 0u32) };
    if ret == 0 {
        0
    } else {
        errno()
    }
}

/// The kernel's Landlock ABI version, or `None` when Landlock is absent or disabled.
pub fn abi_version() -> Option<i64> {
    const LANDLOCK_CREATE_RULESET_VERSION: u32 = 1;
    // SAFETY: the version query takes a null attribute of size 0.
    let v = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<libc::c_void>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    (v > 0).then_some(v)
}

pub fn errno() -> libc::c_int {
    // SAFETY: reading the calling thread's errno.
    let e = unsafe { *libc::__errno_location() };
    if e == 0 {
        libc::EPERM
    } else {
        e
    }
}
