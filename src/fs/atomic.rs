//! `fs/writeFile`'s file work (issue 17): the bytes go to a fresh temporary file in the
//! target's directory (`O_EXCL`, mode 0600 while written), which is given the old file's
//! mode and owner, `fsync`ed and renamed over the target, so that a failed or interrupted
//! write never destroys the old content. Where a rename cannot keep the target's semantics
//! (hard links, not a regular file, a directory we may not write) it writes in place as
//! before. The content arrives in pieces (`Content`), so a large write never holds its whole
//! decoded bytes in memory, and with `fsync` on, the disk starts writing each piece while the
//! next is produced (`sync_file_range`), so the final flush waits only for the tail.
//! A large replaced file is closed after the answer, on a short thread of its own
//! (`release`), so that freeing it does not delay the write.
//! It owns no state and knows nothing of the wire: errors are plain `io::Error`s.

use std::ffi::OsString;
use std::fs::{self, File, Metadata};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{fchown, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::open_nonblocking;

/// Symlinks followed before giving up with `ELOOP`, as the kernel's own limit (`MAXSYMLINKS`).
const MAX_SYMLINK_HOPS: usize = 40;
/// Bytes of the target's name kept in the temporary file's name, so that the name stays
/// under `NAME_MAX` (255) with the prefix and suffix added.
const TEMP_NAME_PREFIX_BYTES: usize = 128;
/// Names tried before a temporary file creation gives up (each clash is a live writer).
const TEMP_NAME_ATTEMPTS: usize = 16;
/// A temporary file is readable by the daemon's user only until it gets its final mode.
const TEMP_MODE: u32 = 0o600;
/// A new file's mode before the umask, as `open(O_CREAT)` with std's default would give.
const NEW_FILE_MODE: u32 = 0o666;
/// The umask assumed when `/proc/self/status` does not say (kernels before 4.7).
const DEFAULT_UMASK: u32 = 0o022;
/// Replaced files at least this large are closed after the answer (`release`); freeing a
/// smaller one costs less than starting a thread.
const RELEASE_AFTER_BYTES: u64 = 4 << 20;
/// The closing thread only closes a descriptor.
const RELEASE_THREAD_STACK_BYTES: usize = 64 << 10;

/// Whether writes are flushed to disk before the rename (`--fsync-writes`, default on).
static FSYNC: AtomicBool = AtomicBool::new(true);

/// Sets whether atomic writes `fsync` the file and its directory (set once at startup).
pub fn set_fsync_writes(on: bool) {
    FSYNC.store(on, Ordering::Relaxed);
}

/// What a write puts into the file, produced piece by piece. Producing may fail (bad
/// input found on the way); then nothing of it is kept.
pub(super) trait Content {
    /// Hands every piece, in order, to `sink`; stops at the first error of either.
    fn pieces(&self, sink: &mut dyn FnMut(&[u8]) -> io::Result<()>) -> io::Result<()>;
}

impl Content for [u8] {
    fn pieces(&self, sink: &mut dyn FnMut(&[u8]) -> io::Result<()>) -> io::Result<()> {
        sink(self)
    }
}

/// Replaces the content of `path` (or of the file its symlinks lead to) with `data`.
pub(super) fn write_file(path: &Path, data: &dyn Content) -> io::Result<()> {
    let target = follow_links(path)?;
    let existing = match fs::symlink_metadata(&target) {
        Ok(meta) => Some(meta),
        Err(err) if err.kind() == io::ErrorKind::NotFound => None,
        Err(err) => return Err(err),
    };
    let reason = match &existing {
        Some(meta) if !meta.file_type().is_file() => Some("not a regular file"),
        Some(meta) if meta.nlink() > 1 => Some("the file has hard links"),
        // A rename would replace a file we may not write (as `sed -i` does); the open in
        // place fails with the same error as before instead.
        Some(_) if !writable(&target) => Some("the file is not writable"),
        _ => None,
    };
    let (Some(dir), Some(name), None) = (target.parent(), target.file_name(), reason) else {
        let reason = reason.unwrap_or("no parent directory");
        log::debug!("fs/writeFile {}: written in place ({reason})", target.display());
        return write_in_place(&target, data);
    };
    let (mut file, temp) = match create_temp(dir, name.as_bytes()) {
        Ok(created) => created,
        // A directory we may not write, while the file itself may be: keep today's
        // semantics. Where the file may not be written either, the open fails as before.
        Err(err) if is_denied(&err) => {
            log::debug!("fs/writeFile {}: written in place ({err})", target.display());
            return write_in_place(&target, data);
        }
        Err(err) => return Err(err),
    };
    let fsync = FSYNC.load(Ordering::Relaxed);
    let filled = fill(&mut file, &target, existing.as_ref(), data, fsync);
    drop(file);
    // The replaced file's last link goes with the rename, and with it, at once, its pages
    // and blocks: 16-20 ms of the rename for 64 MiB on ext4. Held open, it is freed when
    // this descriptor closes, after the answer (`release`). Nothing else changes: no link
    // is added, and a file that cannot be opened is simply freed by the rename.
    let old = existing
        .as_ref()
        .filter(|meta| meta.len() >= RELEASE_AFTER_BYTES)
        .and_then(|_| open_nonblocking(&target, File::options().read(true)).ok());
    if let Err(err) = filled.and_then(|()| fs::rename(&temp, &target)) {
        // Nothing else may be left behind; the old file was never touched.
        let _ = fs::remove_file(&temp);
        // A sticky directory lets only the owner replace a file that others may write.
        if existing.is_some() && is_denied(&err) {
            log::debug!("fs/writeFile {}: written in place ({err})", target.display());
            return write_in_place(&target, data);
        }
        return Err(err);
    }
    if fsync {
        // The rename itself is durable only once the directory is; a failure here leaves
        // the new content in place, so it is not an error of the write.
        if let Err(err) = File::open(dir).and_then(|d| d.sync_all()) {
            log::debug!("fs/writeFile {}: directory not synced: {err}", target.display());
        }
    }
    if let Some(old) = old {
        release(old);
    }
    Ok(())
}

/// Closes a replaced file on a thread of its own, so that freeing its pages and blocks
/// runs beside the answer rather than before it. If no thread can be started, it is closed
/// here.
fn release(old: File) {
    let spawned = std::thread::Builder::new()
        .name("fs-release".into())
        .stack_size(RELEASE_THREAD_STACK_BYTES)
        .spawn(move || drop(old));
    if let Err(err) = spawned {
        log::debug!("fs/writeFile: replaced file closed in place: {err}");
    }
}

/// Writes the temporary file, gives it its final mode and owner, and flushes it.
fn fill(
    file: &mut File,
    target: &Path,
    existing: Option<&Metadata>,
    data: &dyn Content,
    fsync: bool,
) -> io::Result<()> {
    let mut written: i64 = 0;
    data.pieces(&mut |piece| {
        file.write_all(piece)?;
        if fsync && !piece.is_empty() {
            // Start writing this piece back now, without waiting (a hint: errors show up
            // in the final sync, so this one's result is not needed).
            // SAFETY: plain syscall on our own open descriptor.
            unsafe {
                libc::sync_file_range(
                    file.as_raw_fd(),
                    written,
                    piece.len() as i64,
                    libc::SYNC_FILE_RANGE_WRITE,
                );
            }
        }
        written += piece.len() as i64;
        Ok(())
    })?;
    let mode = match existing {
        Some(meta) => {
            // Owner first: chown clears the set-id bits that the chmod below restores.
            // Only a privileged daemon (or one changing to a group it is in) may do this;
            // otherwise the file becomes the daemon's, as any new file would.
            let ours = file.metadata()?;
            if (meta.uid(), meta.gid()) != (ours.uid(), ours.gid()) {
                if let Err(err) = fchown(&*file, Some(meta.uid()), Some(meta.gid())) {
                    log::debug!("fs/writeFile {}: owner not kept: {err}", target.display());
                }
            }
            meta.mode() & 0o7777
        }
        None => NEW_FILE_MODE & !umask(),
    };
    file.set_permissions(fs::Permissions::from_mode(mode))?;
    if fsync {
        file.sync_all()?;
    }
    Ok(())
}

/// Today's write: truncate and write the target itself. The content is produced whole
/// first, so that input found bad on the way never leaves the target truncated.
fn write_in_place(target: &Path, data: &dyn Content) -> io::Result<()> {
    let mut whole = Vec::new();
    data.pieces(&mut |piece| {
        whole.extend_from_slice(piece);
        Ok(())
    })?;
    let mut file =
        open_nonblocking(target, File::options().write(true).create(true).truncate(true))?;
    file.write_all(&whole)
}

/// Creates `.<name>.<unique>.tmp` in `dir` with `O_EXCL` and mode 0600.
fn create_temp(dir: &Path, name: &[u8]) -> io::Result<(File, PathBuf)> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let prefix = &name[..name.len().min(TEMP_NAME_PREFIX_BYTES)];
    let mut last = io::Error::from(io::ErrorKind::AlreadyExists);
    for _ in 0..TEMP_NAME_ATTEMPTS {
        let unique =
            format!(".{}-{}.tmp", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        let mut file_name = OsString::from(".");
        file_name.push(std::ffi::OsStr::from_bytes(prefix));
        file_name.push(unique);
        let path = dir.join(file_name);
        match File::options().write(true).create_new(true).mode(TEMP_MODE).open(&path) {
            Ok(file) => return Ok((file, path)),
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => last = err,
            Err(err) => return Err(err),
        }
    }
    Err(last)
}

/// Errors for which writing in place may still succeed where creating a file did not.
fn is_denied(err: &io::Error) -> bool {
    matches!(err.raw_os_error(), Some(libc::EACCES | libc::EPERM | libc::EROFS))
}

/// Whether the daemon may write `path` (with its effective ids, as `open` would decide).
fn writable(path: &Path) -> bool {
    let Ok(path) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: `path` is a valid NUL-terminated string for the duration of the call.
    unsafe { libc::faccessat(libc::AT_FDCWD, path.as_ptr(), libc::W_OK, libc::AT_EACCESS) == 0 }
}

/// The file `path`'s symlinks lead to, which need not exist (a dangling link is written
/// through, creating its target, as `open(O_CREAT)` does). Only the last component is
/// followed; the directories on the way are the kernel's to resolve.
fn follow_links(path: &Path) -> io::Result<PathBuf> {
    let mut current = path.to_path_buf();
    for _ in 0..MAX_SYMLINK_HOPS {
        match fs::symlink_metadata(&current) {
            Ok(meta) if meta.file_type().is_symlink() => {
                let link = fs::read_link(&current)?;
                // A relative link is relative to the directory holding it.
                current = match current.parent() {
                    Some(dir) => dir.join(link),
                    None => link,
                };
            }
            _ => return Ok(current),
        }
    }
    Err(io::Error::from_raw_os_error(libc::ELOOP))
}

/// The process umask, read without changing it (`umask(2)` can only set it, and setting it
/// even briefly would race with every other thread creating files).
fn umask() -> u32 {
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("Umask:"))
        .and_then(|value| u32::from_str_radix(value.trim(), 8).ok())
        .unwrap_or(DEFAULT_UMASK)
}
