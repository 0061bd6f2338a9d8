//! What this host can enforce, probed once: the Landlock ABI, seccomp filters, and whether
//! we may create a private mount namespace (root or CAP_SYS_ADMIN, not forbidden by a
//! container's own filter). The probes change nothing outside a throwaway thread.

use std::sync::OnceLock;

use super::{landlock, seccomp};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Support {
    /// Landlock ABI version; `None` when the kernel lacks Landlock or has it disabled.
    pub landlock_abi: Option<i64>,
    pub seccomp: bool,
    /// A private mount namespace with bind mounts can be set up (carve-outs, §mounts).
    pub mount_namespace: bool,
}

impl Support {
    /// One line for the start-up log and `--version --verbose`.
    pub fn summary(&self) -> String {
        let landlock = match self.landlock_abi {
            Some(abi) => format!("Landlock ABI {abi}"),
            None => "no Landlock".into(),
        };
        let seccomp = if self.seccomp { "seccomp" } else { "no seccomp" };
        let mounts = if self.mount_namespace { "mount namespaces" } else { "no mount namespaces" };
        format!("sandbox: {landlock}, {seccomp}, {mounts}")
    }
}

/// The host's support, probed on first use and logged once.
pub fn support() -> &'static Support {
    static SUPPORT: OnceLock<Support> = OnceLock::new();
    SUPPORT.get_or_init(|| {
        let support = Support {
            landlock_abi: landlock::abi_version(),
            seccomp: seccomp::available(),
            mount_namespace: mount_namespace_works(),
        };
        log::info!("{}", support.summary());
        support
    })
}

/// Tries `unshare(CLONE_FS | CLONE_NEWNS)` and a private remount of `/` in a thread of its
/// own, whose namespace disappears with it; the rest of the daemon is untouched.
fn mount_namespace_works() -> bool {
    let probe = std::thread::Builder::new().name("sandbox-probe".into()).spawn(|| {
        // SAFETY: both calls act on this thread's own (new) namespace only.
        unsafe {
            libc::unshare(libc::CLONE_FS | libc::CLONE_NEWNS) == 0
                && libc::mount(
                    std::ptr::null(),
                    c"/".as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                ) == 0
        }
    });
    probe.ok().and_then(|t| t.join().ok()).unwrap_or(false)
}
