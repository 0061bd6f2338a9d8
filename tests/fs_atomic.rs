//! Verifies that `fs/writeFile` replaces files atomically (issue 17) over the real binary:
//! the old mode and owner are kept and the inode is new, a new file gets 0666 & ~umask, a
//! symlink's target is replaced while the link stays, hard links and a directory the daemon
//! may not write fall back to an in-place write, and a full disk answers -32603 with the OS
//! text while the old file stays intact and no temporary file is left.

mod common;

use std::fs;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{b64, Daemon, TempDir, NOBODY};
use serde_json::{json, Value};

/// Sends `fs/writeFile` and returns its result, or its error's code and message.
fn write(c: &mut common::Client, path: &str, data: &[u8]) -> Result<Value, (i64, String)> {
    let response = c.call("fs/writeFile", json!({"path": path, "dataBase64": b64(data)}));
    match response.get("error") {
        Some(e) => Err((e["code"].as_i64().unwrap(), e["message"].as_str().unwrap().to_owned())),
        None => Ok(response["result"].clone()),
    }
}

fn chown(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).unwrap();
}

fn umask_of_self() -> u32 {
    let status = fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find_map(|l| l.strip_prefix("Umask:")).expect("Umask line");
    u32::from_str_radix(line.trim(), 8).unwrap()
}

#[test]
fn replaces_atomically_keeping_mode_and_owner() {
    let daemon = Daemon::start(&[]);
    let (mut c, _) = daemon.session();
    let dir = TempDir::new();
    let f = dir.join("f");
    fs::write(&f, b"old content").unwrap();
    chown(&f, 1234, 5678);
    // After the chown: set-gid survives only if it is restored after the owner is set.
    fs::set_permissions(&f, fs::Permissions::from_mode(0o2640)).unwrap();
    let before = fs::metadata(&f).unwrap();

    assert_eq!(write(&mut c, &dir.s("f"), b"new content"), Ok(json!({})));
    let after = fs::metadata(&f).unwrap();
    assert_eq!(fs::read(&f).unwrap(), b"new content");
    assert_ne!(after.ino(), before.ino(), "a rename gives the path a new inode");
    assert_eq!(after.mode() & 0o7777, 0o2640);
    assert_eq!((after.uid(), after.gid()), (1234, 5678));
    assert_eq!(dir.names(), ["f"]);

    // A new file gets what a plain create would: 0666 & ~umask (the daemon inherits ours).
    assert_eq!(write(&mut c, &dir.s("new"), b"x"), Ok(json!({})));
    let mode = fs::metadata(dir.join("new")).unwrap().mode() & 0o7777;
    assert_eq!(mode, 0o666 & !umask_of_self());
    assert_eq!(dir.names(), ["f", "new"]);

    // A missing parent is still -32004 with the OS text, and leaves nothing.
    assert_eq!(
        write(&mut c, &dir.s("no/parent"), b"x"),
        Err((-32004, "No such file or directory (os error 2)".to_owned()))
    );
    // Bad base64 is refused before the file is touched.
    let bad = c.call("fs/writeFile", json!({"path": dir.s("f"), "dataBase64": "aGk"}));
    assert_eq!(bad["error"]["code"], -32600);
    assert_eq!(fs::read(&f).unwrap(), b"new content");
    assert_eq!(dir.names(), ["f", "new"]);
}

#[test]
fn symlinks_are_written_through_to_their_target() {
    let daemon = Daemon::start(&[]);
    let (mut c, _) = daemon.session();
    let dir = TempDir::new();
    fs::create_dir(dir.join("sub")).unwrap();
    let real = dir.join("sub/real");
    fs::write(&real, b"old").unwrap();
    fs::set_permissions(&real, fs::Permissions::from_mode(0o600)).unwrap();
    // Two hops, one relative and one absolute.
    symlink("sub/real", dir.join("hop")).unwrap();
    symlink(dir.join("hop"), dir.join("link")).unwrap();
    let inode = fs::metadata(&real).unwrap().ino();

    assert_eq!(write(&mut c, &dir.s("link"), b"through the link"), Ok(json!({})));
    assert!(fs::symlink_metadata(dir.join("link")).unwrap().file_type().is_symlink());
    assert!(fs::symlink_metadata(dir.join("hop")).unwrap().file_type().is_symlink());
    assert_eq!(fs::read(&real).unwrap(), b"through the link");
    let meta = fs::metadata(&real).unwrap();
    assert_ne!(meta.ino(), inode, "the target was replaced, not truncated");
    assert_eq!(meta.mode() & 0o7777, 0o600);
    assert_eq!(dir.names(), ["hop", "link", "sub"]);
    let mut sub: Vec<_> =
        fs::read_dir(dir.join("sub")).unwrap().map(|e| e.unwrap().file_name()).collect();
    sub.sort();
    assert_eq!(sub, ["real"]);

    // A dangling link creates its target, as open(O_CREAT) would.
    symlink("sub/missing", dir.join("dangling")).unwrap();
    assert_eq!(write(&mut c, &dir.s("dangling"), b"created"), Ok(json!({})));
    assert_eq!(fs::read(dir.join("sub/missing")).unwrap(), b"created");
    assert!(fs::symlink_metadata(dir.join("dangling")).unwrap().file_type().is_symlink());

    // A loop is the kernel's ELOOP text, -32603 as before.
    symlink("loop2", dir.join("loop1")).unwrap();
    symlink("loop1", dir.join("loop2")).unwrap();
    let looped = write(&mut c, &dir.s("loop1"), b"x").unwrap_err();
    assert_eq!(looped, (-32603, "Too many levels of symbolic links (os error 40)".to_owned()));
}

#[test]
fn hard_links_are_written_in_place() {
    let daemon = Daemon::start(&[]);
    let (mut c, _) = daemon.session();
    let dir = TempDir::new();
    fs::write(dir.join("a"), b"old").unwrap();
    fs::hard_link(dir.join("a"), dir.join("b")).unwrap();
    let inode = fs::metadata(dir.join("a")).unwrap().ino();

    assert_eq!(write(&mut c, &dir.s("a"), b"shared"), Ok(json!({})));
    // Both names still share one inode, which holds the new bytes.
    assert_eq!(fs::metadata(dir.join("a")).unwrap().ino(), inode);
    assert_eq!(fs::read(dir.join("b")).unwrap(), b"shared");
    assert_eq!(dir.names(), ["a", "b"]);
}

/// `shared` in `dir`, holding `old`, mode 0666 (anyone may write it): its path and inode.
fn shared_file(dir: &TempDir) -> (PathBuf, u64) {
    let f = dir.join("shared");
    fs::write(&f, b"old").unwrap();
    fs::set_permissions(&f, fs::Permissions::from_mode(0o666)).unwrap();
    let inode = fs::metadata(&f).unwrap().ino();
    (f, inode)
}

#[test]
fn unwritable_directory_falls_back_to_in_place() {
    let Some(daemon) = Daemon::start_as_nobody() else {
        return;
    };
    let dir = TempDir::new();
    let (f, inode) = shared_file(&dir);
    let (mut c, _) = daemon.session();
    // nobody may write the file but not its directory (root's, 0755).
    let result = write(&mut c, &dir.s("shared"), b"in place");
    let denied_new = write(&mut c, &dir.s("new"), b"x");
    drop(daemon);
    assert_eq!(result, Ok(json!({})));
    assert_eq!(fs::read(&f).unwrap(), b"in place");
    assert_eq!(fs::metadata(&f).unwrap().ino(), inode);
    assert_eq!(denied_new, Err((-32600, "Permission denied (os error 13)".to_owned())));
    assert_eq!(dir.names(), ["shared"]);
}

#[test]
fn a_read_only_file_in_a_writable_directory_stays_refused() {
    let Some(daemon) = Daemon::start_as_nobody() else {
        return;
    };
    let dir = TempDir::new();
    chown(&dir.0, NOBODY, NOBODY);
    let f = dir.join("ro");
    fs::write(&f, b"keep").unwrap();
    chown(&f, NOBODY, NOBODY);
    fs::set_permissions(&f, fs::Permissions::from_mode(0o444)).unwrap();
    let (mut c, _) = daemon.session();
    // A rename could replace it, but the write was refused before and still is.
    let result = write(&mut c, &dir.s("ro"), b"changed");
    // A file the daemon's user may write is replaced atomically, keeping mode and owner.
    fs::write(dir.join("rw"), b"old").unwrap();
    chown(&dir.join("rw"), NOBODY, NOBODY);
    fs::set_permissions(dir.join("rw"), fs::Permissions::from_mode(0o640)).unwrap();
    let inode = fs::metadata(dir.join("rw")).unwrap().ino();
    let replaced = write(&mut c, &dir.s("rw"), b"new");
    drop(daemon);
    assert_eq!(result, Err((-32600, "Permission denied (os error 13)".to_owned())));
    assert_eq!(fs::read(&f).unwrap(), b"keep");
    assert_eq!(replaced, Ok(json!({})));
    let meta = fs::metadata(dir.join("rw")).unwrap();
    assert_ne!(meta.ino(), inode);
    assert_eq!((meta.mode() & 0o7777, meta.uid(), meta.gid()), (0o640, NOBODY, NOBODY));
    assert_eq!(fs::read(dir.join("rw")).unwrap(), b"new");
    assert_eq!(dir.names(), ["ro", "rw"]);
}

/// A small tmpfs mounted for one test and unmounted when dropped.
struct Tmpfs(TempDir);

impl Tmpfs {
    fn mount(size: &str) -> Result<Tmpfs, String> {
        let dir = TempDir::new();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0755"), "tmpfs"])
            .arg(&dir.0)
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_owned());
        }
        Ok(Tmpfs(dir))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0 .0).status();
    }
}

#[test]
fn disk_full_keeps_the_old_file_and_leaves_no_temporary() {
    let disk = match Tmpfs::mount("1m") {
        Ok(disk) => disk,
        Err(why) => {
            println!("skipped: cannot mount a tmpfs for the disk-full case: {why}");
            return;
        }
    };
    let daemon = Daemon::start(&[]);
    let (mut c, _) = daemon.session();
    let old: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let f = disk.0.join("f");
    fs::write(&f, &old).unwrap();

    let big = vec![7u8; 2 << 20];
    assert_eq!(
        write(&mut c, &disk.0.s("f"), &big),
        Err((-32603, "No space left on device (os error 28)".to_owned()))
    );
    assert_eq!(fs::read(&f).unwrap(), old, "the old content is intact");
    assert_eq!(disk.0.names(), ["f"], "no temporary file is left");
    // A new file that does not fit leaves nothing either.
    assert_eq!(
        write(&mut c, &disk.0.s("g"), &big),
        Err((-32603, "No space left on device (os error 28)".to_owned()))
    );
    assert_eq!(disk.0.names(), ["f"]);
    // And the daemon is fine afterwards: a write that fits replaces the file.
    assert_eq!(write(&mut c, &disk.0.s("f"), b"fits"), Ok(json!({})));
    assert_eq!(fs::read(&f).unwrap(), b"fits");
    assert_eq!(disk.0.names(), ["f"]);
}

#[test]
fn another_users_file_in_a_sticky_directory_is_written_in_place() {
    let Some(daemon) = Daemon::start_as_nobody() else {
        return;
    };
    let dir = TempDir::new();
    fs::set_permissions(&dir.0, fs::Permissions::from_mode(0o1777)).unwrap();
    let (f, inode) = shared_file(&dir);
    let (mut c, _) = daemon.session();
    // nobody may write root's file, but the sticky bit forbids replacing it by a rename.
    let result = write(&mut c, &dir.s("shared"), b"in place");
    drop(daemon);
    assert_eq!(result, Ok(json!({})));
    let meta = fs::metadata(&f).unwrap();
    assert_eq!((meta.ino(), meta.uid()), (inode, 0));
    assert_eq!(fs::read(&f).unwrap(), b"in place");
    assert_eq!(dir.names(), ["shared"]);
}
