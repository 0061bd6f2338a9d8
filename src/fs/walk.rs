//! `fs/walk` (PROTOCOL v2): a bounded breadth-first listing of a directory tree, as the
//! 0.171 server walks it: each directory's entries sorted by name, only regular files and
//! directories listed (symlinked directories only when asked to follow them, each real
//! directory expanded once), hidden directories optionally listed but not entered, per-entry
//! errors collected instead of failing the walk. A plain blocking handler; no state.

use serde::{Deserialize, Serialize};
use std::collections::{HashSet, VecDeque};
use std::fs;
use std::os::unix::fs::MetadataExt;

use super::{check_sandbox, io_error};
use crate::error::RpcError;
use crate::uri::{AbsolutePath, Uri};

/// Upstream's ceilings on the client's limits.
pub const MAX_DEPTH: u64 = 64;
pub const MAX_DIRECTORIES: u64 = 10_000;
pub const MAX_ENTRIES: u64 = 50_000;

#[derive(Debug, Deserialize)]
pub struct WalkParams {
    pub path: AbsolutePath,
    pub options: WalkOptions,
    #[serde(default)]
    pub sandbox: Option<serde_json::Value>,
}

/// Every member is required, as upstream's decoder requires them.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WalkOptions {
    pub max_depth: u64,
    pub max_directories: u64,
    pub max_entries: u64,
    pub follow_directory_symlinks: bool,
    pub prune_hidden_directories: bool,
}

#[derive(Debug, Default, PartialEq, Eq, Serialize)]
pub struct WalkResponse {
    pub entries: Vec<WalkEntry>,
    pub errors: Vec<WalkError>,
    pub truncated: bool,
}

#[derive(Debug, PartialEq, Eq, Serialize)]
pub struct WalkEntry {
    pub path: Uri,
    pub kind: Kind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Kind {
    File,
    Directory,
}

#[derive(Debug, PartialEq, Eq, Serialize)]
pub struct WalkError {
    pub path: Uri,
    pub message: String,
}

pub fn walk(p: WalkParams) -> Result<WalkResponse, RpcError> {
    check_sandbox(p.sandbox.as_ref())?;
    let o = p.options;
    if o.max_directories == 0 || o.max_entries == 0 {
        return Err(RpcError::invalid_request("filesystem walk limits must be greater than zero"));
    }
    if o.max_depth > MAX_DEPTH || o.max_directories > MAX_DIRECTORIES || o.max_entries > MAX_ENTRIES
    {
        return Err(RpcError::invalid_request(format!(
            "filesystem walk limits exceed maximums: depth={MAX_DEPTH}, \
             directories={MAX_DIRECTORIES}, entries={MAX_ENTRIES}"
        )));
    }
    let root = p.path.as_path()?.to_path_buf();
    let meta =
        if o.follow_directory_symlinks { fs::metadata(&root) } else { fs::symlink_metadata(&root) }
            .map_err(io_error)?;
    let mut out = WalkResponse::default();
    // A file, or a symlink not to be followed, has nothing under it.
    if !meta.is_dir() {
        return Ok(out);
    }
    let mut visited = HashSet::from([(meta.dev(), meta.ino())]);
    let mut pending = VecDeque::from([(root, 0u64)]);
    let mut directories = 0u64;
    'walk: while let Some((dir, depth)) = pending.pop_front() {
        if directories >= o.max_directories {
            out.truncated = true;
            break;
        }
        directories += 1;
        let listing = match fs::read_dir(&dir) {
            Ok(listing) => listing,
            Err(err) => {
                out.errors.push(WalkError { path: Uri(dir), message: err.to_string() });
                continue;
            }
        };
        // Upstream builds each child's path from its name converted lossily, so a
        // non-UTF-8 name becomes an error entry for a path that does not exist; kept as is.
        let mut names: Vec<String> = listing
            .filter_map(Result::ok)
            .map(|entry| entry.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort_unstable();
        for name in names {
            let path = dir.join(&name);
            let meta = match fs::symlink_metadata(&path) {
                Ok(meta) => meta,
                Err(err) => {
                    out.errors.push(WalkError { path: Uri(path), message: err.to_string() });
                    continue;
                }
            };
            let target = if meta.file_type().is_symlink() {
                // Only a followed link to a directory is listed; links to files, dangling
                // links and links not followed are skipped.
                match fs::metadata(&path) {
                    Ok(target) if o.follow_directory_symlinks && target.is_dir() => target,
                    _ => continue,
                }
            } else {
                meta
            };
            let kind = if target.is_dir() {
                Kind::Directory
            } else if target.is_file() {
                Kind::File
            } else {
                continue;
            };
            if out.entries.len() as u64 >= o.max_entries {
                out.truncated = true;
                break 'walk;
            }
            out.entries.push(WalkEntry { path: Uri(path.clone()), kind });
            let hidden = o.prune_hidden_directories && name.starts_with('.');
            if kind == Kind::Directory
                && depth < o.max_depth
                && !hidden
                && visited.insert((target.dev(), target.ino()))
            {
                pending.push_back((path, depth + 1));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::symlink;
    use std::path::{Path, PathBuf};

    fn options(depth: u64, dirs: u64, entries: u64, follow: bool, prune: bool) -> WalkOptions {
        WalkOptions {
            max_depth: depth,
            max_directories: dirs,
            max_entries: entries,
            follow_directory_symlinks: follow,
            prune_hidden_directories: prune,
        }
    }

    fn run(root: &Path, o: WalkOptions) -> Result<WalkResponse, RpcError> {
        walk(WalkParams { path: AbsolutePath::from_path(root), options: o, sandbox: None })
    }

    /// Entries as `kind:relative` strings.
    fn listed(root: &Path, out: &WalkResponse) -> Vec<String> {
        let prefix = crate::uri::to_uri(root);
        let json = serde_json::to_value(&out.entries).unwrap();
        json.as_array()
            .unwrap()
            .iter()
            .map(|e| {
                let path = e["path"].as_str().unwrap();
                format!("{}:{}", e["kind"].as_str().unwrap(), &path[prefix.len() + 1..])
            })
            .collect()
    }

    /// The tree the 0.171 server was probed with.
    fn tree(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("exec-server-walk-{}-{tag}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(d.join("a b")).unwrap();
        fs::create_dir_all(d.join("sub/deep")).unwrap();
        fs::create_dir_all(d.join(".hdir")).unwrap();
        fs::write(d.join("a b/f.txt"), b"hello").unwrap();
        fs::write(d.join(std::ffi::OsStr::from_bytes(b"bad\xffname")), b"x").unwrap();
        fs::write(d.join(".hidden"), b"").unwrap();
        fs::write(d.join(".hdir/x"), b"").unwrap();
        fs::write(d.join("sub/deep/g"), b"").unwrap();
        fs::write(d.join("ten"), b"0123456789").unwrap();
        symlink("sub", d.join("lsub")).unwrap();
        symlink("ten", d.join("lten")).unwrap();
        symlink("missing", d.join("dangle")).unwrap();
        fs::canonicalize(&d).unwrap()
    }

    #[test]
    fn breadth_first_sorted_files_and_directories_only() {
        let d = tree("bfs");
        let out = run(&d, options(5, 100, 100, false, false)).unwrap();
        assert_eq!(
            listed(&d, &out),
            [
                "directory:.hdir",
                "file:.hidden",
                "directory:a%20b",
                "directory:sub",
                "file:ten",
                "file:.hdir/x",
                "file:a%20b/f.txt",
                "directory:sub/deep",
                "file:sub/deep/g"
            ]
        );
        let errors = serde_json::to_value(&out.errors).unwrap();
        assert_eq!(errors[0]["path"], crate::uri::to_uri(&d.join("bad\u{fffd}name")));
        assert_eq!(errors[0]["message"], "No such file or directory (os error 2)");
        assert!(!out.truncated);
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn follow_prune_depth_and_each_directory_once() {
        let d = tree("follow");
        let out = run(&d, options(1, 100, 100, true, true)).unwrap();
        assert_eq!(
            listed(&d, &out),
            [
                "directory:.hdir",
                "file:.hidden",
                "directory:a%20b",
                "directory:lsub",
                "directory:sub",
                "file:ten",
                "file:a%20b/f.txt",
                "directory:lsub/deep"
            ]
        );
        let out = run(&d, options(0, 100, 100, false, false)).unwrap();
        assert_eq!(listed(&d, &out).len(), 5);
        let out = run(&d.join("lsub"), options(5, 100, 100, false, false)).unwrap();
        assert_eq!(out, WalkResponse::default());
        let out = run(&d.join("ten"), options(5, 100, 100, false, false)).unwrap();
        assert_eq!(out, WalkResponse::default());
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn limits_truncate_or_refuse() {
        let d = tree("limits");
        let out = run(&d, options(5, 1, 100, false, false)).unwrap();
        assert_eq!(listed(&d, &out).len(), 5);
        assert!(out.truncated);
        let out = run(&d, options(5, 100, 2, false, false)).unwrap();
        assert_eq!(listed(&d, &out), ["directory:.hdir", "file:.hidden"]);
        assert!(out.truncated && out.errors.is_empty());
        let zero = RpcError::invalid_request("filesystem walk limits must be greater than zero");
        assert_eq!(run(&d, options(5, 0, 100, false, false)).unwrap_err(), zero);
        assert_eq!(run(&d, options(5, 100, 0, false, false)).unwrap_err(), zero);
        let over = RpcError::invalid_request(
            "filesystem walk limits exceed maximums: depth=64, directories=10000, entries=50000",
        );
        assert_eq!(run(&d, options(65, 100, 100, false, false)).unwrap_err(), over);
        assert_eq!(run(&d, options(64, 10_001, 100, false, false)).unwrap_err(), over);
        assert_eq!(run(&d, options(64, 100, 50_001, false, false)).unwrap_err(), over);
        let missing = run(&d.join("nope"), options(5, 100, 100, false, false)).unwrap_err();
        assert_eq!(missing, RpcError::not_found("No such file or directory (os error 2)"));
        fs::remove_dir_all(&d).unwrap();
    }
}
