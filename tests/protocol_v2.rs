//! Verifies protocol v2 (codex 0.171, issue 12) over the real binary: `file:` URIs and native
//! paths on every path param, `environmentInfo` in `initialize` and `environment/info`,
//! `environment/status`, `fs/getMetadata`'s `size`, `fs/canonicalize`, `fs/walk`, the
//! `fs/open` family with its per-session handle table, and `fs/watchMissing` with its
//! `fs/missingChanged` notification — each with its bad input and exact errors, the daemon
//! serving on afterwards.

mod common;

use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::symlink;
use std::path::Path;

use serde_json::{json, Value};

use common::{eventually, Client, Daemon, TempDir};

const ENOENT: &str = "No such file or directory (os error 2)";
const SANDBOX_REFUSED: &str = "sandboxed filesystem operations are not supported by this executor";
/// A workspace-write sandbox as the 0.171 client sends it for apply_patch writes.
fn restricted_sandbox() -> Value {
    json!({"permissions":{"type":"managed","file_system":{"type":"restricted","entries":[
        {"path":{"type":"special","value":{"kind":"root"}},"access":"read"}]},"network":"restricted"},
        "cwd":"file:///tmp","windowsSandboxLevel":"disabled"})
}

/// A path as upstream encodes it in a `file:` URI.
fn uri(path: &Path) -> String {
    let mut out = String::from("file://");
    for &b in path.as_os_str().as_bytes() {
        let escape = b <= 0x20
            || b >= 0x7f
            || matches!(b, b'"' | b'#' | b'%' | b'<' | b'>' | b'?' | b'`' | b'{' | b'}' | b'\\');
        if escape {
            out.push_str(&format!("%{b:02X}"));
        } else {
            out.push(char::from(b));
        }
    }
    out
}

fn ok(result: Value) -> Value {
    json!({"result": result})
}

fn err(code: i64, message: &str) -> Value {
    json!({"error": {"code": code, "message": message}})
}

/// Sends one request and returns its outcome without the id.
fn call(c: &mut Client, method: &str, params: Value) -> Value {
    let mut response = c.call(method, params);
    let object = response.as_object_mut().expect("a response object");
    object.remove("id");
    response
}

fn session(daemon: &Daemon) -> Client {
    daemon.session().0
}

/// Still answering: a plain request succeeds.
fn serving(c: &mut Client) {
    assert_eq!(call(c, "environment/status", json!({})), ok(json!({"status": "ready"})));
}

#[test]
fn initialize_carries_environment_info_and_environment_info_matches() {
    let home = TempDir::new();
    let home_text = home.0.to_str().unwrap().to_owned();
    let daemon = Daemon::start_raw(
        &["--listen", "ws://127.0.0.1:0"],
        &[("HOME", home_text.as_str()), ("TMPDIR", "/var/tmp")],
    );
    let mut c = daemon.connect();
    let init = c.call("initialize", json!({"clientName": "v2"}));
    let info = init["result"]["environmentInfo"].clone();
    // Member sets (the order on the wire is checked by environment.rs's unit tests).
    let members: Vec<&String> = info.as_object().unwrap().keys().collect();
    assert_eq!(
        members,
        [
            "capabilities",
            "cwd",
            "executorVersion",
            "platformOs",
            "prependPathDirs",
            "providerId",
            "shell",
            "tempDir",
            "temporaryDirectories",
            "userHomeDir"
        ]
    );
    assert!(["bash", "zsh", "sh"].contains(&info["shell"]["name"].as_str().unwrap()), "{info}");
    assert!(info["shell"]["path"]
        .as_str()
        .unwrap()
        .ends_with(info["shell"]["name"].as_str().unwrap()));
    assert_eq!(info["executorVersion"], env!("CARGO_PKG_VERSION"));
    let provider = info["providerId"].as_str().unwrap();
    assert_eq!(provider.len(), "sha256:".len() + 64, "{provider}");
    assert!(provider.starts_with("sha256:"));
    assert_eq!(info["cwd"], uri(&std::env::current_dir().unwrap()));
    assert_eq!(info["userHomeDir"], uri(&home.0));
    assert_eq!(info["platformOs"], "linux");
    assert_eq!(info["temporaryDirectories"], json!(["file:///var/tmp"]));
    assert_eq!(info["tempDir"], "file:///var/tmp");
    assert_eq!(
        info["capabilities"],
        json!({
            "networkProxyLaunch": false,
            "networkProxyReviewDomains": false,
            "networkProxyTransparentTcp": false,
            "credentialMasking": false,
            "credentialMaskingCustomProviders": false,
            "capabilityDiscoverySandbox": false,
            "fsWatchMissing": true,
            "capabilityDiscoveryV2": false,
            "environmentConfigRead": true,
            "httpHeaderEnvVars": true,
            "sandboxedFileStreaming": false,
            "fileWriteStreaming": true,
            "shellSnapshotV2": false,
            "windowsMxc": false,
            "linuxRootWritePreservesDevices": false,
            "linuxApprovedRootWritePreservesRestrictions": false
        })
    );
    // Before `initialized`, the environment families are gated like the others.
    assert_eq!(
        call(&mut c, "environment/info", json!(null)),
        err(-32600, "client must send initialized before using environment info methods")
    );
    c.send(&json!({"method": "initialized"}));
    assert_eq!(call(&mut c, "environment/info", json!(null)), ok(info.clone()));
    assert_eq!(call(&mut c, "environment/info", json!({})), ok(info.clone()));
    assert_eq!(
        call(&mut c, "environment/info", json!({"a": 1})),
        err(-32602, "invalid type: map, expected unit")
    );
    assert_eq!(
        call(&mut c, "environment/info", json!([])),
        err(-32602, "invalid type: sequence, expected unit")
    );
    // The provider id is stable across runs on one host.
    let other = Daemon::start(&[]);
    let mut c2 = other.connect();
    let again = c2.call("initialize", json!({"clientName": "v2"}));
    assert_eq!(again["result"]["environmentInfo"]["providerId"], provider);
    // Without an absolute TMPDIR: no temporary directories, /tmp.
    let plain = Daemon::start_raw(&["--listen", "ws://127.0.0.1:0"], &[("TMPDIR", "")]);
    let mut c3 = plain.connect();
    let info =
        c3.call("initialize", json!({"clientName": "v2"}))["result"]["environmentInfo"].clone();
    assert_eq!(info["temporaryDirectories"], json!([]));
    assert_eq!(info["tempDir"], "file:///tmp");
    // Nor does an empty TMPDIR put the spool directory into the daemon's cwd (this one's).
    let strays: Vec<_> = std::fs::read_dir(".")
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("exec-server-spool-"))
        .collect();
    assert!(strays.is_empty(), "spool directory created in the cwd: {strays:?}");
}

#[test]
fn environment_status_and_the_gates() {
    let daemon = Daemon::start(&[]);
    let mut c = daemon.connect();
    let gated = [
        ("environment/info", "environment info"),
        ("environment/status", "environment status"),
        ("fs/canonicalize", "filesystem"),
        ("fs/walk", "filesystem"),
        ("fs/open", "filesystem"),
        ("fs/readBlock", "filesystem"),
        ("fs/writeBlock", "filesystem"),
        ("fs/close", "filesystem"),
        ("fs/watchMissing", "filesystem"),
    ];
    let valid = |method: &str| match method {
        "fs/canonicalize" => json!({"path": "file:///tmp"}),
        "fs/walk" => json!({"path": "file:///tmp", "options": {"maxDepth": 1, "maxDirectories": 1,
            "maxEntries": 1, "followDirectorySymlinks": false, "pruneHiddenDirectories": false}}),
        "fs/open" => json!({"handleId": "h", "path": "file:///tmp"}),
        "fs/readBlock" => json!({"handleId": "h", "offset": 0, "len": 1}),
        "fs/writeBlock" => json!({"handleId": "h", "offset": 0, "chunk": "eA=="}),
        "fs/close" => json!({"handleId": "h"}),
        "fs/watchMissing" => json!({"watchId": 1, "missing": [], "present": "file:///tmp"}),
        _ => json!({}),
    };
    for (method, family) in gated {
        let message = format!("client must call initialize before using {family} methods");
        assert_eq!(call(&mut c, method, valid(method)), err(-32600, &message), "{method}");
    }
    // Params decode before the gate, as upstream.
    assert_eq!(call(&mut c, "fs/walk", json!({})), err(-32602, "missing field `path`"));
    c.initialize();
    assert_eq!(call(&mut c, "environment/status", json!({})), ok(json!({"status": "ready"})));
    assert_eq!(call(&mut c, "environment/status", json!(null)), ok(json!({"status": "ready"})));
    assert_eq!(
        call(&mut c, "environment/status", json!({"x": 1})),
        err(-32602, "invalid type: map, expected unit")
    );
    // Still unadvertised: answered as upstream answers an unknown method.
    assert_eq!(
        call(&mut c, "bogus/x", json!({})),
        err(-32601, "exec-server stub does not implement `bogus/x` yet")
    );
}

#[test]
fn every_path_param_takes_uris_and_native_paths() {
    let dir = TempDir::new();
    fs::create_dir(dir.join("a b")).unwrap();
    fs::write(dir.join("a b/f.txt"), b"hello world").unwrap();
    fs::write(dir.0.join(std::ffi::OsStr::from_bytes(b"bad\xffname")), b"x").unwrap();
    let daemon = Daemon::start(&[]);
    let mut c = session(&daemon);
    let meta = |c: &mut Client, path: Value| call(c, "fs/getMetadata", json!({"path": path}));
    let file = meta(&mut c, json!(uri(&dir.join("a b/f.txt"))));
    assert_eq!(file["result"]["size"], 11, "{file}");
    assert_eq!(file["result"]["isFile"], true);
    let keys: Vec<&String> = file["result"].as_object().unwrap().keys().collect();
    assert_eq!(keys, ["createdAtMs", "isDirectory", "isFile", "isSymlink", "modifiedAtMs", "size"]);
    let native = dir.join("a b/f.txt").to_str().unwrap().to_owned();
    assert_eq!(meta(&mut c, json!(native)), file);
    let localhost = format!("file://localhost{}", &uri(&dir.join("a b/f.txt"))["file://".len()..]);
    assert_eq!(meta(&mut c, json!(localhost)), file);
    let dotted = format!("{}/./x/../a%20b/f.txt", uri(&dir.0));
    assert_eq!(meta(&mut c, json!(dotted)), file);
    assert_eq!(meta(&mut c, json!(format!("{}/bad%FFname", uri(&dir.0))))["result"]["size"], 1);
    assert_eq!(meta(&mut c, json!("file://"))["result"]["isDirectory"], true);

    let a = uri(&dir.0);
    let bad = [
        (json!("relative"), err(-32602, "invalid URI: relative URL without a base")),
        (json!(""), err(-32602, "invalid URI: relative URL without a base")),
        (json!("http://x/tmp"), err(-32602, "unsupported path URI scheme `http`")),
        (json!(format!("{a}?q=1")), err(-32602, "query parameters are not allowed in path URIs")),
        (json!(format!("{a}#f")), err(-32602, "fragments are not allowed in path URIs")),
        (
            json!("file://localhost:80/tmp"),
            err(-32602, "invalid URI: invalid international domain name"),
        ),
        (json!("file:///tmp/a%00b"), err(-32602, "'file:///tmp/a%00b' is invalid on 'linux'")),
        (
            json!("file://otherhost/tmp"),
            err(-32600, "'file://otherhost/tmp' is invalid on 'linux'"),
        ),
        (json!("file:///C:/tmp"), err(-32600, "'file:///C:/tmp' is invalid on 'linux'")),
        (json!(5), err(-32602, "invalid type: integer `5`, expected a string")),
        (json!(null), err(-32602, "invalid type: null, expected a string")),
        (json!(format!("{a}/nope")), err(-32004, ENOENT)),
    ];
    for (path, expected) in &bad {
        assert_eq!(&meta(&mut c, path.clone()), expected, "{path}");
    }
    // The other v1 methods decode through the same type.
    let copied = call(
        &mut c,
        "fs/copy",
        json!({"sourcePath": uri(&dir.join("a b/f.txt")), "destinationPath": format!("{}/c%20d", uri(&dir.0)), "recursive": false}),
    );
    assert_eq!(copied, ok(json!({})));
    assert_eq!(fs::read(dir.join("c d")).unwrap(), b"hello world");
    let read = call(&mut c, "fs/readFile", json!({"path": uri(&dir.join("c d"))}));
    assert_eq!(read, ok(json!({"dataBase64": "aGVsbG8gd29ybGQ="})));
    let foreign = call(
        &mut c,
        "fs/copy",
        json!({"sourcePath": "file:///tmp/nonexistent", "destinationPath": "file://other/x", "recursive": true}),
    );
    assert_eq!(foreign, err(-32600, "'file://other/x' is invalid on 'linux'"));
    // Base64 is checked before the path is, as upstream.
    let write = call(&mut c, "fs/writeFile", json!({"path": "file://other/x", "dataBase64": "!!"}));
    assert_eq!(
        write,
        err(-32600, "fs/writeFile requires valid base64 dataBase64: Invalid symbol 33, offset 0.")
    );
    serving(&mut c);
}

#[test]
fn canonicalize_resolves_links_and_encodes_the_result() {
    let dir = TempDir::new();
    let odd = "sp ace#?%[]@!$&'()*+,;=:~é";
    fs::create_dir_all(dir.join(odd).join("deep")).unwrap();
    symlink(odd, dir.join("link")).unwrap();
    fs::write(dir.join("file"), b"x").unwrap();
    let daemon = Daemon::start(&[]);
    let mut c = session(&daemon);
    let canon = |c: &mut Client, params: Value| call(c, "fs/canonicalize", params);
    let expected = format!("{}/sp%20ace%23%3F%25[]@!$&'()*+,;=:~%C3%A9/deep", uri(&dir.0));
    assert_eq!(
        canon(&mut c, json!({"path": uri(&dir.join("link/deep"))})),
        ok(json!({"path": expected}))
    );
    assert_eq!(canon(&mut c, json!({"path": "file:///"})), ok(json!({"path": "file:///"})));
    assert_eq!(canon(&mut c, json!({"path": uri(&dir.join("nope"))})), err(-32004, ENOENT));
    assert_eq!(
        canon(&mut c, json!({"path": uri(&dir.join("file/x"))})),
        err(-32603, "Not a directory (os error 20)")
    );
    assert_eq!(canon(&mut c, json!({})), err(-32602, "missing field `path`"));
    assert_eq!(
        canon(&mut c, json!({"path": uri(&dir.join("file")), "sandbox": restricted_sandbox()})),
        err(-32600, SANDBOX_REFUSED)
    );
    assert_eq!(
        canon(&mut c, json!({"path": uri(&dir.join("file")), "sandbox": null})),
        ok(json!({"path": uri(&dir.join("file"))}))
    );
    serving(&mut c);
}

fn walk_options(depth: u64, dirs: u64, entries: u64, follow: bool, prune: bool) -> Value {
    json!({"maxDepth": depth, "maxDirectories": dirs, "maxEntries": entries,
        "followDirectorySymlinks": follow, "pruneHiddenDirectories": prune})
}

#[test]
fn walk_lists_breadth_first_within_limits() {
    let dir = TempDir::new();
    fs::create_dir_all(dir.join("sub/deep")).unwrap();
    fs::create_dir_all(dir.join(".h")).unwrap();
    fs::write(dir.join("sub/deep/g"), b"").unwrap();
    fs::write(dir.join(".h/x"), b"").unwrap();
    fs::write(dir.join("f"), b"").unwrap();
    symlink("sub", dir.join("lsub")).unwrap();
    symlink("f", dir.join("lf")).unwrap();
    let daemon = Daemon::start(&[]);
    let mut c = session(&daemon);
    let walk = |c: &mut Client, path: String, options: Value| {
        call(c, "fs/walk", json!({"path": path, "options": options}))
    };
    let entry = |name: &str, kind: &str| json!({"path": uri(&dir.join(name)), "kind": kind});
    assert_eq!(
        walk(&mut c, uri(&dir.0), walk_options(5, 100, 100, false, false)),
        ok(json!({"entries": [
            entry(".h", "directory"), entry("f", "file"), entry("sub", "directory"),
            entry(".h/x", "file"), entry("sub/deep", "directory"), entry("sub/deep/g", "file")],
            "errors": [], "truncated": false}))
    );
    assert_eq!(
        walk(&mut c, uri(&dir.0), walk_options(1, 100, 100, true, true)),
        ok(json!({"entries": [
            entry(".h", "directory"), entry("f", "file"), entry("lsub", "directory"),
            entry("sub", "directory"), entry("lsub/deep", "directory")],
            "errors": [], "truncated": false}))
    );
    assert_eq!(
        walk(&mut c, uri(&dir.0), walk_options(5, 100, 2, false, false)),
        ok(
            json!({"entries": [entry(".h", "directory"), entry("f", "file")], "errors": [], "truncated": true})
        )
    );
    assert_eq!(
        walk(&mut c, uri(&dir.join("f")), walk_options(5, 100, 100, false, false)),
        ok(json!({"entries": [], "errors": [], "truncated": false}))
    );
    let zero = err(-32600, "filesystem walk limits must be greater than zero");
    assert_eq!(walk(&mut c, uri(&dir.0), walk_options(5, 0, 100, false, false)), zero);
    let over = err(
        -32600,
        "filesystem walk limits exceed maximums: depth=64, directories=10000, entries=50000",
    );
    assert_eq!(walk(&mut c, uri(&dir.0), walk_options(65, 100, 100, false, false)), over);
    assert_eq!(
        walk(&mut c, uri(&dir.join("nope")), walk_options(5, 100, 100, false, false)),
        err(-32004, ENOENT)
    );
    assert_eq!(
        call(&mut c, "fs/walk", json!({"path": uri(&dir.0)})),
        err(-32602, "missing field `options`")
    );
    assert_eq!(
        walk(&mut c, uri(&dir.0), json!({"maxDepth": 5, "maxDirectories": 100})),
        err(-32602, "missing field `maxEntries`")
    );
    assert_eq!(
        walk(&mut c, uri(&dir.0), json!({"maxDepth": "5"})),
        err(-32602, "invalid type: string \"5\", expected u64")
    );
    assert_eq!(
        call(
            &mut c,
            "fs/walk",
            json!({"path": uri(&dir.0), "options": walk_options(5, 100, 100, false, false),
            "sandbox": restricted_sandbox()})
        ),
        err(-32600, SANDBOX_REFUSED)
    );
    serving(&mut c);
}

#[test]
fn open_read_write_close_with_exact_errors() {
    let dir = TempDir::new();
    fs::write(dir.join("ten"), b"abcdefghij").unwrap();
    let daemon = Daemon::start(&[]);
    let mut c = session(&daemon);
    let open = |c: &mut Client, id: &str, path: String, mode: Option<&str>| {
        let mut params = json!({"handleId": id, "path": path});
        if let Some(mode) = mode {
            params["mode"] = json!(mode);
        }
        call(c, "fs/open", params)
    };
    let read = |c: &mut Client, id: &str, offset: u64, len: Value| {
        call(c, "fs/readBlock", json!({"handleId": id, "offset": offset, "len": len}))
    };
    let write = |c: &mut Client, id: &str, offset: u64, chunk: &str| {
        call(c, "fs/writeBlock", json!({"handleId": id, "offset": offset, "chunk": chunk}))
    };
    assert_eq!(open(&mut c, "h1", uri(&dir.join("ten")), None), ok(json!({"handleId": "h1"})));
    assert_eq!(read(&mut c, "h1", 0, json!(4)), ok(json!({"chunk": "YWJjZA==", "eof": false})));
    assert_eq!(read(&mut c, "h1", 8, json!(4)), ok(json!({"chunk": "aWo=", "eof": true})));
    assert_eq!(read(&mut c, "h1", 100, json!(4)), ok(json!({"chunk": "", "eof": true})));
    let bad_len = err(-32600, "file read block length must be between 1 and 1048576");
    assert_eq!(read(&mut c, "h1", 0, json!(0)), bad_len);
    assert_eq!(read(&mut c, "h1", 0, json!(99_999_999_999u64)), bad_len);
    assert_eq!(read(&mut c, "h1", 0, json!(1_048_577)), bad_len);
    assert_eq!(read(&mut c, "nope", 0, json!(3)), err(-32004, "unknown file handle `nope`"));
    assert_eq!(
        read(&mut c, "h1", 0, json!("3")),
        err(-32602, "invalid type: string \"3\", expected u64")
    );
    assert_eq!(
        call(&mut c, "fs/readBlock", json!({"handleId": "h1", "offset": 0})),
        err(-32602, "missing field `len`")
    );
    assert_eq!(write(&mut c, "h1", 0, "aGk="), err(-32603, "Bad file descriptor (os error 9)"));
    assert_eq!(
        open(&mut c, "h1", uri(&dir.join("ten")), Some("read")),
        err(-32600, "file handle `h1` already exists")
    );
    assert_eq!(
        open(&mut c, "h2", uri(&dir.0), Some("read")),
        err(-32600, &format!("path `{}` is not a file", dir.0.display()))
    );
    assert_eq!(open(&mut c, "h2", uri(&dir.join("nope")), None), err(-32004, ENOENT));
    assert_eq!(
        open(&mut c, "h2", uri(&dir.join("ten")), Some("append")),
        err(-32602, "unknown variant `append`, expected `read` or `replace`")
    );
    assert_eq!(
        call(&mut c, "fs/open", json!({"handleId": 5, "path": uri(&dir.join("ten"))})),
        err(-32602, "invalid type: integer `5`, expected a string")
    );
    assert_eq!(
        call(
            &mut c,
            "fs/open",
            json!({"handleId": "s", "path": uri(&dir.join("ten")), "sandbox": restricted_sandbox()})
        ),
        err(-32600, SANDBOX_REFUSED)
    );
    assert_eq!(
        open(&mut c, "h2", "file://other/x".into(), None),
        err(-32600, "'file://other/x' is invalid on 'linux'")
    );

    assert_eq!(
        open(&mut c, "w", uri(&dir.join("out")), Some("replace")),
        ok(json!({"handleId": "w"}))
    );
    assert_eq!(write(&mut c, "w", 0, "aGVsbG8="), ok(json!({})));
    assert_eq!(write(&mut c, "w", 5, "IHdvcmxk"), ok(json!({})));
    assert_eq!(write(&mut c, "w", 0, "eA=="), ok(json!({})));
    assert_eq!(fs::read(dir.join("out")).unwrap(), b"xello world");
    assert_eq!(write(&mut c, "w", 0, "!!"), err(-32602, "Invalid symbol 33, offset 0."));
    assert_eq!(
        write(&mut c, "w", 0, ""),
        err(-32600, "file write block length must be between 1 and 1048576")
    );
    assert_eq!(write(&mut c, "zz", 0, "eA=="), err(-32004, "unknown file handle `zz`"));
    assert_eq!(read(&mut c, "w", 0, json!(4)), err(-32603, "Bad file descriptor (os error 9)"));
    assert_eq!(call(&mut c, "fs/close", json!({"handleId": "w"})), ok(json!({})));
    assert_eq!(call(&mut c, "fs/close", json!({"handleId": "w"})), ok(json!({})));
    assert_eq!(call(&mut c, "fs/close", json!({})), err(-32602, "missing field `handleId`"));
    assert_eq!(write(&mut c, "w", 0, "eA=="), err(-32004, "unknown file handle `w`"));
    serving(&mut c);
}

/// Open descriptors of `pid` that point at `path`.
fn fds_on(pid: u32, path: &Path) -> usize {
    let Ok(entries) = fs::read_dir(format!("/proc/{pid}/fd")) else { return 0 };
    entries
        .filter_map(Result::ok)
        .filter(|e| fs::read_link(e.path()).is_ok_and(|target| target == path))
        .count()
}

#[test]
fn handles_are_bounded_per_session_survive_a_resume_and_close_with_the_session() {
    let dir = TempDir::new();
    fs::write(dir.join("f"), b"x").unwrap();
    let daemon = Daemon::start(&["--detach-ttl-secs", "3"]);
    let (mut c, session_id) = daemon.session();
    for i in 0..128 {
        let r = call(
            &mut c,
            "fs/open",
            json!({"handleId": format!("k{i}"), "path": uri(&dir.join("f"))}),
        );
        assert_eq!(r, ok(json!({"handleId": format!("k{i}")})));
    }
    assert_eq!(
        call(&mut c, "fs/open", json!({"handleId": "one-more", "path": uri(&dir.join("f"))})),
        err(-32600, "at most 128 file handles may be open per connection")
    );
    assert_eq!(call(&mut c, "fs/close", json!({"handleId": "k0"})), ok(json!({})));
    assert_eq!(
        call(&mut c, "fs/open", json!({"handleId": "one-more", "path": uri(&dir.join("f"))})),
        ok(json!({"handleId": "one-more"}))
    );
    assert_eq!(fds_on(daemon.pid(), &dir.join("f")), 128);
    // Another session has its own table.
    let mut other = session(&daemon);
    assert_eq!(
        call(&mut other, "fs/readBlock", json!({"handleId": "k1", "offset": 0, "len": 1})),
        err(-32004, "unknown file handle `k1`")
    );
    drop(other);
    // Resumed within the TTL, the session keeps its handles.
    drop(c);
    // The server notices the dropped connection on its own time; until then the session is
    // still attached there, and a resume is refused.
    let mut resumed = None;
    eventually("resuming the session", || {
        let mut client = daemon.connect();
        let r =
            client.call("initialize", json!({"clientName": "t", "resumeSessionId": session_id}));
        let done = r["result"]["sessionId"] == json!(session_id);
        if done {
            resumed = Some(client);
        }
        done
    });
    let mut resumed = resumed.expect("resumed");
    resumed.send(&json!({"method": "initialized"}));
    assert_eq!(
        call(&mut resumed, "fs/readBlock", json!({"handleId": "k1", "offset": 0, "len": 1})),
        ok(json!({"chunk": "eA==", "eof": false}))
    );
    // Once the session ends, every file is closed.
    drop(resumed);
    eventually("closing the session's files", || fds_on(daemon.pid(), &dir.join("f")) == 0);
}

/// Threads of `pid` named `name`.
fn threads_named(pid: u32, name: &str) -> usize {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else { return 0 };
    tasks
        .filter_map(Result::ok)
        .filter(|t| fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim_end() == name))
        .count()
}

#[test]
fn watch_missing_notifies_once_and_ends_with_the_session() {
    let dir = TempDir::new();
    let daemon = Daemon::start(&["--detach-ttl-secs", "0"]);
    let mut c = session(&daemon);
    let watch = |c: &mut Client, id: Value, missing: Vec<String>, present: String| {
        call(c, "fs/watchMissing", json!({"watchId": id, "missing": missing, "present": present}))
    };
    let watching = |yes: bool| ok(json!({"watching": yes}));
    assert_eq!(watch(&mut c, json!(10), vec![uri(&dir.join("a"))], uri(&dir.0)), watching(true));
    assert_eq!(watch(&mut c, json!(11), vec![uri(&dir.join("x/y"))], uri(&dir.0)), watching(true));
    assert_eq!(watch(&mut c, json!(11), vec![uri(&dir.join("b"))], uri(&dir.0)), watching(false));
    assert_eq!(watch(&mut c, json!(9), vec![uri(&dir.join("b"))], uri(&dir.0)), watching(false));
    // Watch 10 was replaced: creating `a` says nothing; `x` is on the way to `x/y`.
    fs::write(dir.join("a"), b"").unwrap();
    fs::create_dir(dir.join("x")).unwrap();
    let note = c.notification("fs/missingChanged");
    assert_eq!(note, json!({"method": "fs/missingChanged", "params": {"watchId": 11}}));
    // Already there, nothing missing, no present directory, another host: not watching.
    assert_eq!(watch(&mut c, json!(12), vec![uri(&dir.join("a"))], uri(&dir.0)), watching(false));
    assert_eq!(watch(&mut c, json!(13), vec![], uri(&dir.0)), watching(false));
    assert_eq!(
        watch(&mut c, json!(14), vec![uri(&dir.join("k"))], uri(&dir.join("nope"))),
        watching(false)
    );
    assert_eq!(
        watch(&mut c, json!(15), vec!["file://other/k".into()], uri(&dir.0)),
        watching(false)
    );
    assert_eq!(
        watch(&mut c, json!("s"), vec![], uri(&dir.0)),
        err(-32602, "invalid type: string \"s\", expected u64")
    );
    assert_eq!(
        call(&mut c, "fs/watchMissing", json!({"watchId": 16})),
        err(-32602, "missing field `missing`")
    );
    assert_eq!(
        watch(&mut c, json!(17), vec!["relative".into()], uri(&dir.0)),
        err(-32602, "invalid URI: relative URL without a base")
    );
    // `present` is optional; a missing path deep below fires when its first missing
    // ancestor appears; a restricted sandbox is accepted (nothing is read).
    let r = call(
        &mut c,
        "fs/watchMissing",
        json!({"watchId": 18, "missing": [uri(&dir.join("p/q/r"))],
        "sandbox": restricted_sandbox()}),
    );
    assert_eq!(r, watching(true));
    fs::create_dir(dir.join("p")).unwrap();
    assert_eq!(
        c.notification("fs/missingChanged"),
        json!({"method": "fs/missingChanged", "params": {"watchId": 18}})
    );
    // A change to the `present` file fires too.
    fs::write(dir.join("AGENTS.md"), b"v1").unwrap();
    assert_eq!(
        watch(&mut c, json!(19), vec![uri(&dir.join("late"))], uri(&dir.join("AGENTS.md"))),
        watching(true)
    );
    fs::write(dir.join("AGENTS.md"), b"v2").unwrap();
    assert_eq!(
        c.notification("fs/missingChanged"),
        json!({"method": "fs/missingChanged", "params": {"watchId": 19}})
    );
    assert_eq!(watch(&mut c, json!(20), vec![uri(&dir.join("late"))], uri(&dir.0)), watching(true));
    assert_eq!(threads_named(daemon.pid(), "fs-watch"), 1);
    serving(&mut c);
    drop(c);
    eventually("the watcher thread ending", || threads_named(daemon.pid(), "fs-watch") == 0);
}

#[test]
fn environment_config_read_returns_the_selected_keys_of_each_layer() {
    let home = TempDir::new();
    fs::create_dir(home.join(".codex")).unwrap();
    let user = home.join(".codex/config.toml");
    fs::write(&user, "model = \"gpt-x\"\nsandbox_mode = \"workspace-write\"\n[profiles.p]\nmodel=\"m2\"\n[features]\nfoo = true\n")
        .unwrap();
    let home_text = home.0.to_str().unwrap().to_owned();
    let codex_home = home.join(".codex").to_str().unwrap().to_owned();
    let daemon = Daemon::start_raw(
        &["--listen", "ws://127.0.0.1:0"],
        &[("HOME", home_text.as_str()), ("CODEX_HOME", codex_home.as_str())],
    );
    let mut c = daemon.connect();
    let params = json!({"cwd": uri(&home.0), "configPaths": [["model"], ["features"], ["profiles", "p", "model"]],
        "requirementsPaths": [["allowed_sandbox_modes"]]});
    assert_eq!(
        call(&mut c, "environmentConfig/read", params.clone()),
        err(-32600, "client must call initialize before using environment config methods")
    );
    c.initialize();
    let r = call(&mut c, "environmentConfig/read", params);
    let result = &r["result"];
    assert_eq!(result["userHomeDir"], uri(&home.0), "{r}");
    assert_eq!(result["codexHomeDir"], uri(&home.join(".codex")));
    let host = fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert_eq!(result["hostname"], host.trim_end());
    let layers = result["config"]["layers"].as_array().unwrap();
    let mine: Vec<&Value> =
        layers.iter().filter(|l| l["source"].as_str().unwrap().starts_with("user (")).collect();
    assert_eq!(
        mine,
        [
            &json!({"source": format!("user ({})", user.display()), "baseDir": uri(&home.join(".codex")),
            "toml": "model = \"gpt-x\"\n\n[profiles.p]\nmodel = \"m2\"\n\n[features]\nfoo = true\n"})
        ]
    );
    let bad = [
        (
            json!({"cwd": uri(&home.0), "configPaths": [], "requirementsPaths": []}),
            err(-32602, "at least one config or requirements path is required"),
        ),
        (
            json!({"cwd": uri(&home.0), "configPaths": [[]], "requirementsPaths": []}),
            err(-32602, "TOML paths must contain at least one key segment"),
        ),
        (
            json!({"cwd": "file://other/x", "configPaths": [["a"]], "requirementsPaths": []}),
            err(-32602, "'file://other/x' is invalid on 'linux'"),
        ),
        (
            json!({"cwd": uri(&home.0), "configPaths": ["model"], "requirementsPaths": []}),
            err(-32602, "invalid type: string \"model\", expected a sequence"),
        ),
        (
            json!({"cwd": uri(&home.0), "configPaths": []}),
            err(-32602, "missing field `requirementsPaths`"),
        ),
        (json!({}), err(-32602, "missing field `cwd`")),
    ];
    for (params, expected) in &bad {
        assert_eq!(&call(&mut c, "environmentConfig/read", params.clone()), expected, "{params}");
    }
    fs::write(&user, "model = gpt\n").unwrap();
    let broken = call(
        &mut c,
        "environmentConfig/read",
        json!({"cwd": uri(&home.0), "configPaths": [["model"]], "requirementsPaths": []}),
    );
    assert_eq!(broken["error"]["code"], -32603);
    let text = broken["error"]["message"].as_str().unwrap();
    assert!(
        text.starts_with(&format!(
            "failed to load executor-local config: {}:1:9: ",
            user.display()
        )),
        "{text}"
    );
    serving(&mut c);
}
