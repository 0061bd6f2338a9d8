//! Landlock, the kernel's unprivileged file-access control: turns a list of grants into a
//! ruleset descriptor, built before fork by the parent (it allocates and opens paths), and
//! restricts a process with it by one raw syscall, safe between clone and exec. Landlock
//! only grants: what the grants cannot express (a read-only or denied path inside a granted
//! tree) is `mounts`' job, decided by `plan` in mod.rs. Every right the kernel's ABI knows
//! is handled, so anything not granted is denied.

use std::ffi::CString;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

// File-system access rights (linux/landlock.h), by the ABI that introduced them.
const EXECUTE: u64 = 1 << 0;
const WRITE_FILE: u64 = 1 << 1;
const READ_FILE: u64 = 1 << 2;
const READ_DIR: u64 = 1 << 3;
/// ABI 1: the thirteen rights from EXECUTE to MAKE_SYM.
const ABI1_ALL: u64 = (1 << 13) - 1;
/// ABI 2: REFER (link or rename across directories).
const REFER: u64 = 1 << 13;
/// ABI 3: TRUNCATE.
const TRUNCATE: u64 = 1 << 14;
/// ABI 5: IOCTL_DEV.
const IOCTL_DEV: u64 = 1 << 15;
/// The rights that apply to a file that is not a directory.
const FILE_RIGHTS: u64 = EXECUTE | WRITE_FILE | READ_FILE | TRUNCATE | IOCTL_DEV;
const READ_RIGHTS: u64 = EXECUTE | READ_FILE | READ_DIR;

const LANDLOCK_RULE_PATH_BENEATH: libc::c_int = 1;

#[repr(C)]
struct RulesetAttr {
    handled_access_fs: u64,
}

#[repr(C, packed)]
struct PathBeneathAttr {
    allowed_access: u64,
    parent_fd: i32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Grant {
    Read,
    Write,
}

/// Every file-system right the running kernel's ABI knows (we handle all of them, so each
/// is denied unless granted).
fn handled(abi: i64) -> u64 {
    let mut rights = ABI1_ALL;
    if abi >= 2 {
        rights |= REFER;
    }
    if abi >= 3 {
        rights |= TRUNCATE;
    }
    if abi >= 5 {
        rights |= IOCTL_DEV;
    }
    rights
}

/// A ruleset with `grants` added (paths that do not exist are skipped), by raw syscalls
/// (the `landlock` crate cost ~10 KB of the binary); `None` when the kernel has no
/// Landlock, so the caller refuses instead of running unconfined. Symlinks in a grant's
/// path are followed (the policy resolved them already).
pub fn ruleset(grants: &[(PathBuf, Grant)]) -> Result<Option<OwnedFd>, String> {
    let Some(abi) = abi_version() else {
        return Ok(None);
    };
    let handled = handled(abi);
    let attr = RulesetAttr { handled_access_fs: handled };
    // SAFETY: the attribute lives across the call; its size is passed with it.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            &attr as *const RulesetAttr,
            std::mem::size_of::<RulesetAttr>(),
            0u32,
        )
    };
    if fd < 0 {
        return Err(format!(
            "cannot create a Landlock ruleset: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: a fresh descriptor the kernel just returned (close-on-exec).
    let ruleset = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
    for (path, grant) in grants {
        let Ok(c_path) = CString::new(path.as_os_str().as_bytes()) else { continue };
        // SAFETY: opening a path for reference only; the descriptor is closed below.
        let parent = unsafe { libc::open(c_path.as_ptr(), libc::O_PATH | libc::O_CLOEXEC) };
        if parent < 0 {
            continue; // Missing: nothing to grant (upstream's `skip`).
        }
        // SAFETY: `parent` is ours.
        let parent = unsafe { OwnedFd::from_raw_fd(parent) };
        let mut rights = match grant {
            Grant::Read => READ_RIGHTS,
            Grant::Write => handled,
        } & handled;
        // SAFETY: fstat into a zeroed struct on our descriptor.
        let is_dir = unsafe {
            let mut st: libc::stat = std::mem::zeroed();
            libc::fstat(std::os::fd::AsRawFd::as_raw_fd(&parent), &mut st) == 0
                && st.st_mode & libc::S_IFMT == libc::S_IFDIR
        };
        if !is_dir {
            rights &= FILE_RIGHTS;
        }
        let rule = PathBeneathAttr {
            allowed_access: rights,
            parent_fd: std::os::fd::AsRawFd::as_raw_fd(&parent),
        };
        // SAFETY: the rule attribute lives across the call.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_landlock_add_rule,
                std::os::fd::AsRawFd::as_raw_fd(&ruleset),
                LANDLOCK_RULE_PATH_BENEATH,
                &rule as *const PathBeneathAttr,
                0u32,
            )
        };
        if ret != 0 {
            let e = std::io::Error::last_os_error();
            return Err(format!("cannot add a Landlock rule for {}: {e}", path.display()));
        }
    }
    Ok(Some(ruleset))
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
