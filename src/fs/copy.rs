//! `fs/copy`'s file work (PROTOCOL.md §6): copying one file (FIFO-safe, onto itself a no-op),
//! recreating a symlink, copying a tree iteratively, and finding where a not-yet-existing
//! destination would resolve. Plain `io::Result` functions; the handler in mod.rs maps errors.

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::{symlink, MetadataExt};
use std::path::{Path, PathBuf};

use super::open_nonblocking;

/// The canonical form of `path`, or for a path that does not exist yet, the canonical form
/// of its nearest existing ancestor with the missing tail appended. `path` is already
/// lexically normalized, so the tail holds no `.` or `..`.
pub(super) fn canonicalize_nearest(path: &Path) -> io::Result<PathBuf> {
    let mut missing = Vec::new();
    let mut current = path;
    loop {
        match fs::canonicalize(current) {
            Ok(mut real) => {
                real.extend(missing.iter().rev());
                return Ok(real);
            }
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                let (Some(parent), Some(name)) = (current.parent(), current.file_name()) else {
                    return Err(err);
                };
                missing.push(name);
                current = parent;
            }
            Err(err) => return Err(err),
        }
    }
}

/// Recreates the link with the same link text, relative or not; the target is not read.
pub(super) fn copy_symlink(source: &Path, destination: &Path) -> io::Result<()> {
    symlink(fs::read_link(source)?, destination)
}

pub(super) fn copy_file(source: &Path, destination: &Path) -> io::Result<()> {
    // Copying a file onto itself would truncate it before reading it; its content already
    // is the copy's content, so there is nothing to do.
    if let (Ok(from), Ok(to)) = (fs::metadata(source), fs::metadata(destination)) {
        if (from.dev(), from.ino()) == (to.dev(), to.ino()) {
            return Ok(());
        }
    }
    // `fs::copy` would block opening a FIFO destination; this opens it non-blocking and
    // otherwise does what `fs::copy` does (`io::copy` between files uses
    // `copy_file_range`, and the permission bits are copied).
    let mut from = File::open(source)?;
    let permissions = from.metadata()?.permissions();
    let mut to =
        open_nonblocking(destination, File::options().write(true).create(true).truncate(true))?;
    io::copy(&mut from, &mut to)?;
    to.set_permissions(permissions)
}

/// `mkdir -p` the destination, then copy regular files by content and recreate symlinks;
/// FIFOs, sockets and devices inside the tree are skipped (§6). Iterative, so a deep tree
/// cannot exhaust a worker's stack.
pub(super) fn copy_tree(source: &Path, destination: &Path) -> io::Result<()> {
    let mut pending = vec![(source.to_path_buf(), destination.to_path_buf())];
    while let Some((from_dir, to_dir)) = pending.pop() {
        fs::create_dir_all(&to_dir)?;
        for entry in fs::read_dir(&from_dir)? {
            let entry = entry?;
            let kind = entry.file_type()?;
            let (from, to) = (entry.path(), to_dir.join(entry.file_name()));
            if kind.is_dir() {
                pending.push((from, to));
            } else if kind.is_symlink() {
                copy_symlink(&from, &to)?;
            } else if kind.is_file() {
                copy_file(&from, &to)?;
            }
        }
    }
    Ok(())
}
