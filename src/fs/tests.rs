//! Unit tests of the fs handlers against a temporary directory.

use std::borrow::Cow;
use std::os::unix::fs::symlink;
use std::path::PathBuf;

use super::*;
use crate::uri::{normalize, AbsolutePath};
use serde_json::json;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A fresh directory under the system temp dir, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "exec-server-fs-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir(&path).unwrap();
        TempDir(fs::canonicalize(path).unwrap())
    }
    fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
    fn path(&self, name: &str) -> AbsolutePath {
        AbsolutePath::from_path(self.join(name))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn abs(p: &Path) -> AbsolutePath {
    AbsolutePath::from_path(p.to_path_buf())
}

fn copy_params(source: &Path, destination: &Path, recursive: bool) -> CopyParams {
    CopyParams {
        source_path: abs(source),
        destination_path: abs(destination),
        recursive,
        sandbox: None,
    }
}

fn mkfifo(path: &Path) {
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: `c` is a valid NUL-terminated path for the duration of the call.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
}

#[test]
fn normalize_is_lexical() {
    let n = |s: &str| normalize(s).map(|p| p.to_string_lossy().into_owned());
    assert_eq!(n("/a/link/../x").as_deref(), Some("/a/x"));
    assert_eq!(n("/a/./b/").as_deref(), Some("/a/b"));
    assert_eq!(n("//a//b").as_deref(), Some("/a/b"));
    assert_eq!(n("/..").as_deref(), Some("/"));
    assert_eq!(n("/../../a/..").as_deref(), Some("/"));
    assert_eq!(n("/").as_deref(), Some("/"));
    assert_eq!(n("/a/b/../../c/./d/..").as_deref(), Some("/c"));
    assert_eq!(n("a/b"), None);
    assert_eq!(n("./a"), None);
    assert_eq!(n("../a"), None);
    assert_eq!(n(""), None);
}

#[test]
fn relative_path_is_a_decode_error_with_the_exact_message() {
    let err = serde_json::from_str::<ReadFileParams>(r#"{"path":"tmp/x"}"#).unwrap_err();
    assert!(err.to_string().starts_with("invalid URI: relative URL without a base"), "{err}");
    let err = serde_json::from_str::<ReadFileParams>(r#"{"path":5}"#).unwrap_err();
    assert!(err.to_string().starts_with("invalid type: integer `5`, expected a string"));
    let p: ReadFileParams = serde_json::from_str(r#"{"path":"/a\/b\u0041"}"#).unwrap();
    assert_eq!(p.path.as_path().unwrap(), Path::new("/a/bA"));
    let p: ReadFileParams = serde_json::from_str(r#"{"path":"/tmp/./a/../x"}"#).unwrap();
    assert_eq!(p.path.as_path().unwrap(), Path::new("/tmp/x"));
    let err = serde_json::from_str::<CopyParams>(r#"{"sourcePath":"/a","destinationPath":"/b"}"#)
        .unwrap_err();
    assert!(err.to_string().starts_with("missing field `recursive`"), "{err}");
    let p: RemoveParams =
        serde_json::from_str(r#"{"path":"/a","recursive":null,"force":null,"sandbox":7}"#).unwrap();
    assert_eq!((p.recursive, p.force, p.sandbox), (None, None, Some(json!(7))));
}

#[test]
fn write_params_borrow_the_base64_text() {
    let frame = r#"{"path":"/x","dataBase64":"aGVsbG8="}"#;
    let p: WriteFileParams<'_> = serde_json::from_str(frame).unwrap();
    assert!(matches!(p.data_base64, Cow::Borrowed("aGVsbG8=")));
    // An escaped solidus cannot be borrowed but must still decode.
    let p: WriteFileParams<'_> =
        serde_json::from_str(r#"{"path":"/x","dataBase64":"a\/8="}"#).unwrap();
    assert_eq!(p.data_base64, "a/8=");
}

#[test]
fn sandbox_table() {
    let runs = [
        json!(null),
        json!({"permissions":{"type":"disabled"},"cwd":"/p","windowsSandboxLevel":"disabled"}),
        json!({"permissions":{"type":"external","network":"restricted"},"windowsSandboxLevel":"disabled"}),
        json!({"permissions":{"type":"managed","file_system":{"type":"unrestricted"},"network":"enabled"},"windowsSandboxLevel":"disabled"}),
        json!({"sandboxPolicy":{"type":"danger-full-access"},"windowsSandboxLevel":"disabled"}),
        json!({"sandboxPolicy":{"type":"external-sandbox","network_access":"restricted"}}),
        json!({"type":"danger-full-access"}),
        json!({"type":"external-sandbox","network_access":"enabled"}),
    ];
    for sandbox in &runs {
        assert_eq!(check_sandbox(Some(sandbox)), Ok(()), "{sandbox}");
    }
    assert_eq!(check_sandbox(None), Ok(()));

    let read_only = json!({"type":"managed","file_system":{"type":"restricted","entries":[{"path":{"type":"special","value":{"kind":"root"}},"access":"read"}]},"network":"restricted"});
    let workspace_write = json!({"type":"managed","file_system":{"type":"restricted","entries":[
        {"path":{"type":"special","value":{"kind":"root"}},"access":"read"},
        {"path":{"type":"special","value":{"kind":"project_roots"}},"access":"write"},
        {"path":{"type":"special","value":{"kind":"slash_tmp"}},"access":"write"},
        {"path":{"type":"special","value":{"kind":"tmpdir"}},"access":"write"},
        {"path":{"type":"path","path":"/data/extra"},"access":"write"},
        {"path":{"type":"glob_pattern","pattern":"**/.env"},"access":"deny"}]},"network":"restricted"});
    // Restricted file systems never reach the handlers directly (rpc routes them to
    // `run_sandboxed`); if they do, they are refused.
    let level = |mut v: serde_json::Value| {
        v["windowsSandboxLevel"] = json!("disabled");
        v["cwd"] = json!("/p");
        v
    };
    let refused = [
        level(json!({"permissions": read_only.clone()})),
        level(json!({"permissions": workspace_write.clone()})),
        json!({"sandboxPolicy":{"type":"read-only"}}),
        json!({"sandboxPolicy":{"type":"workspace-write","writable_roots":["/abs"]},"sandboxPolicyCwd":"/p"}),
        json!({"type":"read-only"}),
    ];
    for sandbox in &refused {
        assert_eq!(
            check_sandbox(Some(sandbox)),
            Err(RpcError::invalid_request(SANDBOX_REFUSED)),
            "{sandbox}"
        );
    }
    // Malformed contexts are the decoder's -32602, as upstream answers them.
    let malformed = [
        read_only,
        workspace_write,
        json!({"permissions":{"type":"managed"},"windowsSandboxLevel":"disabled"}),
        json!({"permissions":{"type":"DISABLED"},"windowsSandboxLevel":"disabled"}),
        json!({"permissions":"disabled","windowsSandboxLevel":"disabled"}),
        json!({"permissions":{"type":"disabled"}}),
        json!({"type":"disabled"}),
        json!({}),
        json!([]),
        json!("danger-full-access"),
        json!(5),
        json!(true),
    ];
    for sandbox in &malformed {
        assert_eq!(check_sandbox(Some(sandbox)).unwrap_err().code, -32602, "{sandbox}");
    }
}

#[test]
fn sandbox_is_checked_before_the_filesystem() {
    let sandbox = Some(json!({"sandboxPolicy":{"type":"read-only"}}));
    let missing = AbsolutePath::from_path(PathBuf::from("/nonexistent/exec-server/x"));
    let err = read_file(ReadFileParams { path: missing.clone(), sandbox: sandbox.clone() });
    assert_eq!(err.unwrap_err(), RpcError::invalid_request(SANDBOX_REFUSED));
    let err = write_file(WriteFileParams { path: missing, data_base64: "!!".into(), sandbox });
    assert_eq!(err.unwrap_err(), RpcError::invalid_request(SANDBOX_REFUSED));
}

#[test]
fn errors_map_by_kind() {
    let e = |kind: io::ErrorKind| io_error(io::Error::new(kind, "text")).code;
    assert_eq!(e(io::ErrorKind::NotFound), -32004);
    assert_eq!(e(io::ErrorKind::InvalidInput), -32600);
    assert_eq!(e(io::ErrorKind::PermissionDenied), -32600);
    assert_eq!(e(io::ErrorKind::AlreadyExists), -32603);
    assert_eq!(e(io::ErrorKind::Other), -32603);
    let os = io_error(io::Error::from_raw_os_error(libc::ENOENT));
    assert_eq!(os, RpcError::not_found("No such file or directory (os error 2)"));
    let os = io_error(io::Error::from_raw_os_error(libc::EACCES));
    assert_eq!(os, RpcError::invalid_request("Permission denied (os error 13)"));
}

#[test]
fn missing_paths_and_nul_bytes() {
    let dir = TempDir::new();
    let enoent = RpcError::not_found("No such file or directory (os error 2)");
    let read = read_file(ReadFileParams { path: dir.path("nope"), sandbox: None });
    assert_eq!(read.unwrap_err(), enoent);
    let write = write_file(WriteFileParams {
        path: dir.path("no/parent"),
        data_base64: "".into(),
        sandbox: None,
    });
    assert_eq!(write.unwrap_err(), enoent);
    assert!(!dir.join("no").exists());
    let meta = get_metadata(GetMetadataParams { path: dir.path("nope"), sandbox: None });
    assert_eq!(meta.unwrap_err(), enoent);
    let list = read_directory(ReadDirectoryParams { path: dir.path("nope"), sandbox: None });
    assert_eq!(list.unwrap_err(), enoent);

    let p: ReadFileParams = serde_json::from_str(r#"{"path":"/tmp/a\u0000b"}"#).unwrap();
    let err = read_file(p).unwrap_err();
    assert_eq!(err.code, -32600, "{err}");
    let p: RemoveParams = serde_json::from_str(r#"{"path":"/tmp/a\u0000b"}"#).unwrap();
    assert_eq!(remove(p).unwrap_err().code, -32600);
    let p: CopyParams = serde_json::from_str(
        r#"{"sourcePath":"/tmp","destinationPath":"/tmp/a\u0000b","recursive":true}"#,
    )
    .unwrap();
    assert_eq!(copy(p).unwrap_err().code, -32600);
}

#[test]
fn write_read_round_trip_truncates_and_rejects_bad_base64() {
    let dir = TempDir::new();
    let write = |data: &str| {
        write_file(WriteFileParams { path: dir.path("f"), data_base64: data.into(), sandbox: None })
    };
    write("aGVsbG8gd29ybGQ=").unwrap();
    write("aGk=").unwrap();
    assert_eq!(fs::read(dir.join("f")).unwrap(), b"hi");
    let read = read_file(ReadFileParams { path: dir.path("f"), sandbox: None }).unwrap();
    assert_eq!(read.data_base64(), "aGk=");
    let mut out = String::from("head:");
    read_file_into(ReadFileParams { path: dir.path("f"), sandbox: None }, &mut out).unwrap();
    assert_eq!(out, r#"head:{"dataBase64":"aGk="}"#);
    let err = write("not base64!").unwrap_err();
    assert_eq!(err.code, -32600);
    assert!(err.message.starts_with("fs/writeFile requires valid base64 dataBase64: "), "{err}");
    assert_eq!(fs::read(dir.join("f")).unwrap(), b"hi");
    // A directory where a file is expected: EISDIR is "anything else".
    let err = read_file(ReadFileParams { path: abs(&dir.0), sandbox: None }).unwrap_err();
    assert_eq!(err, RpcError::internal("Is a directory (os error 21)"));
}

#[test]
fn large_writes_are_streamed_in_pieces_byte_exact_and_bad_text_late_on_keeps_the_old_file() {
    let dir = TempDir::new();
    let write = |data: &str, path: AbsolutePath| {
        write_file(WriteFileParams { path, data_base64: data.into(), sandbox: None })
    };
    // Three pieces and a short tail, padded.
    let data: Vec<u8> =
        (0..(3 * Base64Text::PIECE_CHARS / 4 * 3 + 1000)).map(|i| (i * 7 % 251) as u8).collect();
    let mut text = Vec::new();
    b64::encode(&data, &mut text);
    let text = String::from_utf8(text).unwrap();
    write(&text, dir.path("f")).unwrap();
    assert!(fs::read(dir.join("f")).unwrap() == data, "content differs");
    // A bad character in the third piece: the crate's error with its offset in the whole
    // text, and the old content intact with no temporary file left.
    let at = 2 * Base64Text::PIECE_CHARS + 5;
    let mut bad = text.clone().into_bytes();
    bad[at] = b'!';
    let err = write(std::str::from_utf8(&bad).unwrap(), dir.path("f")).unwrap_err();
    assert_eq!(
        err,
        RpcError::invalid_request(format!(
            "fs/writeFile requires valid base64 dataBase64: Invalid symbol 33, offset {at}."
        ))
    );
    assert!(fs::read(dir.join("f")).unwrap() == data, "old content changed");
    assert_eq!(fs::read_dir(&dir.0).unwrap().count(), 1, "a temporary file was left");
    // Bad base64 wins over a missing parent, as when the text was checked first.
    let err = write("a!==", dir.path("no/parent")).unwrap_err();
    assert_eq!(err.code, -32600, "{err}");
    assert!(err.message.starts_with("fs/writeFile requires valid base64"), "{err}");
}

#[test]
fn fifos_never_block() {
    let dir = TempDir::new();
    mkfifo(&dir.join("fifo"));
    fs::write(dir.join("f"), b"x").unwrap();
    let read = read_file(ReadFileParams { path: dir.path("fifo"), sandbox: None });
    assert_eq!(read.unwrap().data_base64(), "");
    let enxio = RpcError::internal("No such device or address (os error 6)");
    let write = write_file(WriteFileParams {
        path: dir.path("fifo"),
        data_base64: "aGk=".into(),
        sandbox: None,
    });
    assert_eq!(write.unwrap_err(), enxio);
    let err = copy(copy_params(&dir.join("f"), &dir.join("fifo"), false)).unwrap_err();
    assert_eq!(err, enxio);
}

#[test]
fn read_refuses_files_over_the_limit() {
    let dir = TempDir::new();
    let file = File::create(dir.join("big")).unwrap();
    file.set_len(READ_LIMIT_BYTES + 1).unwrap();
    let err = read_file(ReadFileParams { path: dir.path("big"), sandbox: None }).unwrap_err();
    assert_eq!(
        err,
        RpcError::invalid_request("file is too large to read: limit is 536870912 bytes")
    );
}

#[test]
fn create_directory_defaults_to_recursive() {
    let dir = TempDir::new();
    let mk = |name: &str, recursive: Option<bool>| {
        create_directory(CreateDirectoryParams { path: dir.path(name), recursive, sandbox: None })
    };
    mk("a/b/c", None).unwrap();
    mk("a/b/c", None).unwrap();
    assert!(dir.join("a/b/c").is_dir());
    assert_eq!(
        mk("a/b/c", Some(false)).unwrap_err(),
        RpcError::internal("File exists (os error 17)")
    );
    assert_eq!(
        mk("x/y", Some(false)).unwrap_err(),
        RpcError::not_found("No such file or directory (os error 2)")
    );
    mk("a/d", Some(false)).unwrap();
}

#[test]
fn metadata_follows_links_except_for_is_symlink() {
    let dir = TempDir::new();
    fs::write(dir.join("f"), b"x").unwrap();
    fs::create_dir(dir.join("d")).unwrap();
    symlink(dir.join("f"), dir.join("lf")).unwrap();
    symlink("d", dir.join("ld")).unwrap();
    let when = UNIX_EPOCH + std::time::Duration::from_millis(1_700_000_000_123);
    File::options().write(true).open(dir.join("f")).unwrap().set_modified(when).unwrap();
    let meta = |name: &str| {
        get_metadata(GetMetadataParams { path: dir.path(name), sandbox: None }).unwrap()
    };
    let f = meta("f");
    assert_eq!((f.is_directory, f.is_file, f.is_symlink), (false, true, false));
    assert_eq!(f.modified_at_ms, 1_700_000_000_123);
    let d = meta("d");
    assert_eq!((d.is_directory, d.is_file, d.is_symlink), (true, false, false));
    let lf = meta("lf");
    assert_eq!((lf.is_directory, lf.is_file, lf.is_symlink), (false, true, true));
    assert_eq!(lf.modified_at_ms, 1_700_000_000_123);
    let ld = meta("ld");
    assert_eq!((ld.is_directory, ld.is_file, ld.is_symlink), (true, false, true));
    assert_eq!(unix_ms(UNIX_EPOCH - std::time::Duration::from_micros(1500)), -2);
}

#[test]
fn read_directory_skips_dangling_links_and_names_lossily() {
    let dir = TempDir::new();
    fs::write(dir.join("f"), b"x").unwrap();
    fs::create_dir(dir.join("d")).unwrap();
    symlink("d", dir.join("ld")).unwrap();
    symlink("missing", dir.join("dangling")).unwrap();
    let odd = std::ffi::OsStr::from_bytes(b"bad\xffname");
    fs::write(dir.0.join(odd), b"").unwrap();
    let mut entries =
        read_directory(ReadDirectoryParams { path: abs(&dir.0), sandbox: None }).unwrap().entries;
    entries.sort_by(|a, b| a.file_name.cmp(&b.file_name));
    let entry = |name: &str, is_directory, is_file| ReadDirectoryEntry {
        file_name: name.into(),
        is_directory,
        is_file,
    };
    assert_eq!(
        entries,
        [
            entry("bad\u{fffd}name", false, true),
            entry("d", true, false),
            entry("f", false, true),
            entry("ld", true, false),
        ]
    );
}

#[test]
fn remove_defaults_and_links() {
    let dir = TempDir::new();
    let rm = |name: &str, recursive, force| {
        remove(RemoveParams { path: dir.path(name), recursive, force, sandbox: None })
    };
    rm("missing", None, None).unwrap();
    assert_eq!(
        rm("missing", None, Some(false)).unwrap_err(),
        RpcError::not_found("No such file or directory (os error 2)")
    );
    fs::create_dir_all(dir.join("t/sub")).unwrap();
    fs::write(dir.join("t/sub/f"), b"x").unwrap();
    symlink(dir.join("t"), dir.join("lt")).unwrap();
    rm("lt", Some(false), None).unwrap();
    assert!(fs::symlink_metadata(dir.join("lt")).is_err());
    assert!(dir.join("t/sub/f").is_file());
    assert_eq!(
        rm("t", Some(false), None).unwrap_err(),
        RpcError::internal("Directory not empty (os error 39)")
    );
    rm("t", None, None).unwrap();
    assert!(!dir.join("t").exists());
    fs::create_dir(dir.join("empty")).unwrap();
    rm("empty", Some(false), Some(false)).unwrap();
    fs::write(dir.join("f"), b"x").unwrap();
    rm("f", Some(false), Some(false)).unwrap();
    assert!(!dir.join("f").exists());
}

#[test]
fn copy_files_links_and_trees() {
    let dir = TempDir::new();
    fs::write(dir.join("f"), b"content").unwrap();
    fs::set_permissions(dir.join("f"), fs::Permissions::from_mode(0o640)).unwrap();
    fs::write(dir.join("g"), b"longer old content").unwrap();
    copy(copy_params(&dir.join("f"), &dir.join("g"), false)).unwrap();
    assert_eq!(fs::read(dir.join("g")).unwrap(), b"content");
    assert_eq!(fs::metadata(dir.join("g")).unwrap().permissions().mode() & 0o777, 0o640);
    // Onto itself: nothing is lost.
    copy(copy_params(&dir.join("f"), &dir.join("f"), false)).unwrap();
    assert_eq!(fs::read(dir.join("f")).unwrap(), b"content");

    symlink("../elsewhere", dir.join("link")).unwrap();
    copy(copy_params(&dir.join("link"), &dir.join("link2"), false)).unwrap();
    assert_eq!(fs::read_link(dir.join("link2")).unwrap(), Path::new("../elsewhere"));

    fs::create_dir_all(dir.join("src/deep/er")).unwrap();
    fs::write(dir.join("src/deep/er/file"), b"deep").unwrap();
    symlink("deep/er/file", dir.join("src/rel")).unwrap();
    symlink("/nonexistent", dir.join("src/dangling")).unwrap();
    mkfifo(&dir.join("src/fifo"));
    let err = copy(copy_params(&dir.join("src"), &dir.join("dst"), false)).unwrap_err();
    assert_eq!(err, RpcError::invalid_request(COPY_DIR_NEEDS_RECURSIVE));
    assert!(!dir.join("dst").exists());
    copy(copy_params(&dir.join("src"), &dir.join("dst/nested"), true)).unwrap();
    let dst = dir.join("dst/nested");
    assert_eq!(fs::read(dst.join("deep/er/file")).unwrap(), b"deep");
    assert_eq!(fs::read_link(dst.join("rel")).unwrap(), Path::new("deep/er/file"));
    assert_eq!(fs::read_link(dst.join("dangling")).unwrap(), Path::new("/nonexistent"));
    assert!(fs::symlink_metadata(dst.join("fifo")).is_err());

    let err = copy(copy_params(&dir.join("src/fifo"), &dir.join("fifo2"), false)).unwrap_err();
    assert_eq!(err, RpcError::invalid_request(COPY_UNSUPPORTED));
    let err = copy(copy_params(&dir.join("nope"), &dir.join("x"), true)).unwrap_err();
    assert_eq!(err, RpcError::not_found("No such file or directory (os error 2)"));
}

#[test]
fn copy_refuses_a_directory_into_itself() {
    let dir = TempDir::new();
    fs::create_dir_all(dir.join("src/sub")).unwrap();
    symlink(dir.join("src/sub"), dir.join("alias")).unwrap();
    let refused = RpcError::invalid_request(COPY_INTO_ITSELF);
    for destination in ["src", "src/sub", "src/new/deeper", "alias/new", "alias"] {
        let err = copy(copy_params(&dir.join("src"), &dir.join(destination), true));
        assert_eq!(err.unwrap_err(), refused, "{destination}");
    }
    assert!(!dir.join("src/new").exists());
    // A sibling whose name merely starts with the source's name is fine.
    copy(copy_params(&dir.join("src"), &dir.join("src2"), true)).unwrap();
    assert!(dir.join("src2/sub").is_dir());
}
