//! Carve-outs Landlock cannot express, done with a private mount namespace: a read-only
//! bind mount keeps `.git` read-only inside a writable root, an empty read-only tmpfs (or
//! `/dev/null`) hides a denied directory (or file) inside a readable one. The plan is built
//! before fork; applying it is raw syscalls on prepared C strings, safe between clone and
//! exec, and must come before Landlock (a Landlock-restricted process may not mount).

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// An empty, read-only tmpfs: no room to write, no devices, no set-uid.
const MASK_OPTIONS: &std::ffi::CStr = c"size=4k,mode=000";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Bind the path onto itself read-only.
    ReadOnly,
    /// Hide a directory under an empty read-only tmpfs.
    MaskDir,
    /// Hide a file under a read-only, `nodev` `/dev/null` (opening it fails).
    MaskFile,
}

#[derive(Debug)]
pub struct MountOp {
    pub kind: Kind,
    pub path: CString,
}

#[derive(Debug, Default)]
pub struct MountPlan {
    pub ops: Vec<MountOp>,
}

impl MountPlan {
    pub fn push(&mut self, kind: Kind, path: &Path) {
        // A path with a NUL byte cannot exist on Linux, so there is nothing to mount over.
        if let Ok(path) = CString::new(path.as_os_str().as_bytes()) {
            self.ops.push(MountOp { kind, path });
        }
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Enters a private mount namespace and applies every operation. Raw syscalls only.
    /// Returns 0 or an errno.
    pub fn apply(&self) -> libc::c_int {
        // SAFETY: mount(2)/unshare(2) on prepared NUL-terminated strings; they affect only
        // the new, private namespace of this process.
        unsafe {
            if libc::unshare(libc::CLONE_NEWNS) != 0 {
                return super::landlock::errno();
            }
            let null = std::ptr::null::<libc::c_char>();
            if libc::mount(
                null,
                c"/".as_ptr(),
                null,
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ) != 0
            {
                return super::landlock::errno();
            }
            for op in &self.ops {
                let path = op.path.as_ptr();
                let (source, fstype, flags, data) = match op.kind {
                    Kind::ReadOnly => (path, null, libc::MS_BIND | libc::MS_REC, std::ptr::null()),
                    Kind::MaskFile => {
                        (c"/dev/null".as_ptr(), null, libc::MS_BIND, std::ptr::null())
                    }
                    Kind::MaskDir => (
                        c"tmpfs".as_ptr(),
                        c"tmpfs".as_ptr(),
                        libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                        MASK_OPTIONS.as_ptr().cast(),
                    ),
                };
                if libc::mount(source, path, fstype, flags, data) != 0 {
                    return super::landlock::errno();
                }
                if op.kind != Kind::MaskDir {
                    // `nodev` matters for the `/dev/null` mask: a device node on a read-only
                    // mount is still writable, on a `nodev` one it cannot even be opened.
                    let remount = libc::MS_BIND
                        | libc::MS_REMOUNT
                        | libc::MS_RDONLY
                        | libc::MS_NOSUID
                        | libc::MS_NODEV;
                    if libc::mount(null, path, null, remount, std::ptr::null()) != 0 {
                        return super::landlock::errno();
                    }
                }
            }
        }
        0
    }
}
