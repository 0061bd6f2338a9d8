//! Verifies sandbox enforcement over the real binary (issue 13): `process/start` and fs calls
//! with workspace-write and read-only profiles, network restriction, symlink escapes and a
//! symlink-swap race, and that the daemon itself stays unconfined. Needs Landlock and (for
//! the `.git` carve-out) mount namespaces, i.e. root on a Landlock kernel, as in CI.

mod common;

use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use common::{Client, Daemon};
use serde_json::{json, Value};

const PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// A fresh base directory outside /tmp and $TMPDIR (which workspace-write makes writable),
/// holding a workspace `ws` (with `.git/config`) and a sibling directory `out`. Not under the
/// target dir: a checkout may itself live below /tmp.
struct Tree {
    base: PathBuf,
}

/// Where the trees go: /var/tmp, unless $TMPDIR is there too; then the target dir.
fn tree_root() -> PathBuf {
    let var_tmp = Path::new("/var/tmp");
    let tmpdir = std::env::var_os("TMPDIR").map(PathBuf::from);
    if tmpdir.is_some_and(|t| t.starts_with(var_tmp)) {
        PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
    } else {
        var_tmp.to_path_buf()
    }
}

impl Tree {
    fn new(name: &str) -> Tree {
        let base = tree_root().join(format!("exec-server-sandbox-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(base.join("ws/.git")).unwrap();
        std::fs::create_dir_all(base.join("out")).unwrap();
        std::fs::write(base.join("ws/.git/config"), "[core]\n").unwrap();
        std::fs::write(base.join("ws/readme"), "hello").unwrap();
        std::os::unix::fs::symlink(base.join("out"), base.join("ws/link-out")).unwrap();
        let base = std::fs::canonicalize(base).unwrap();
        Tree { base }
    }
    fn ws(&self) -> PathBuf {
        self.base.join("ws")
    }
    fn p(&self, rel: &str) -> String {
        self.base.join(rel).to_str().unwrap().to_string()
    }
}

impl Drop for Tree {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.base);
    }
}

fn special(kind: &str) -> Value {
    json!({"type":"special","value":{"kind": kind}})
}

/// The 0.171 client's workspace-write context (UPSTREAM-0.171.md §5), paths as `file:` URIs.
fn workspace_write(ws: &Path, network: &str) -> Value {
    let uri = format!("file://{}", ws.display());
    let sub = |s: &str| json!({"type":"special","value":{"kind":"project_roots","subpath": s}});
    json!({
        "permissions": {"type":"managed","file_system":{"type":"restricted","entries":[
            {"path": special("root"), "access":"read"},
            {"path": special("project_roots"), "access":"write"},
            {"path": special("slash_tmp"), "access":"write"},
            {"path": special("tmpdir"), "access":"write"},
            {"path": sub(".git"), "access":"read", "missing_path_behavior":"skip"},
            {"path": sub(".agents"), "access":"read", "missing_path_behavior":"skip"},
            {"path": sub(".codex"), "access":"read", "missing_path_behavior":"skip"}]},
            "network": network},
        "cwd": uri, "policyContext": {"cwd": uri, "workspaceRoots": [uri]},
        "workspaceRoots": [uri], "userHomeDir": "file:///root",
        "windowsSandboxLevel": "disabled", "useLegacyLandlock": false
    })
}

/// The 0.130 client's read-only context (Appendix A.3), native paths.
fn read_only(ws: &Path) -> Value {
    json!({
        "permissions": {"type":"managed","file_system":{"type":"restricted","entries":[
            {"path": special("root"), "access":"read"}]},"network":"restricted"},
        "cwd": ws, "windowsSandboxLevel": "disabled"
    })
}

fn session() -> (Daemon, Client) {
    let daemon = Daemon::start(&[]);
    let (client, _) = daemon.session();
    (daemon, client)
}

/// Runs `sh -c script` in `cwd` under `sandbox`; returns (start result, exit code,
/// sandboxDenied of the exit notification, output).
fn run(
    client: &mut Client,
    id: &str,
    cwd: &Path,
    sandbox: Value,
    script: &str,
) -> (Value, i64, Value, String) {
    let params = json!({"processId": id, "argv": ["sh", "-c", script], "cwd": cwd,
        "env": {"PATH": PATH}, "tty": false, "sandbox": sandbox});
    let response = client.call("process/start", params);
    let result =
        response.get("result").cloned().unwrap_or_else(|| panic!("start failed: {response}"));
    let mut out = Vec::new();
    let (mut code, mut denied) = (-1, Value::Null);
    loop {
        let m = client.recv();
        if m["params"]["processId"] != id {
            continue;
        }
        match m["method"].as_str() {
            Some("process/output") => {
                out.extend(BASE64.decode(m["params"]["chunk"].as_str().unwrap()).unwrap())
            }
            Some("process/exited") => {
                code = m["params"]["exitCode"].as_i64().unwrap();
                denied = m["params"].get("sandboxDenied").cloned().unwrap_or(Value::Null);
            }
            Some("process/closed") => break,
            _ => {}
        }
    }
    (result, code, denied, String::from_utf8_lossy(&out).into_owned())
}

fn write_file(client: &mut Client, path: &str, data: &[u8], sandbox: Value) -> Value {
    client.call(
        "fs/writeFile",
        json!({"path": path, "dataBase64": BASE64.encode(data), "sandbox": sandbox}),
    )
}

/// A denial as the contract allows it: -32600 Permission denied or -32603 Read-only file system.
fn assert_denied(response: &Value) {
    let error = &response["error"];
    let pair = (error["code"].as_i64(), error["message"].as_str());
    assert!(
        matches!(
            pair,
            (Some(-32600), Some("Permission denied (os error 13)"))
                | (Some(-32603), Some("Read-only file system (os error 30)"))
        ),
        "expected a denial, got {response}"
    );
}

#[test]
fn workspace_write_command_writes_inside_only() {
    let tree = Tree::new("cmd-ww");
    let (_daemon, mut client) = session();
    let script = format!(
        "echo ok > inside && echo inside-ok; \
         echo x > /etc/exec-server-sandbox-test || echo etc-denied; \
         echo x > {out}/f || echo sibling-denied; \
         echo x >> .git/config || echo git-denied; \
         echo x > .git/new || echo git-new-denied; \
         mv .git .git-moved || echo git-move-denied; \
         echo x > link-out/f || echo link-denied; \
         cat readme",
        out = tree.p("out")
    );
    let (result, code, denied, out) =
        run(&mut client, "ww", &tree.ws(), workspace_write(&tree.ws(), "restricted"), &script);
    assert_eq!(result["sandboxType"], "linuxSeccomp", "{result}");
    for line in [
        "inside-ok",
        "etc-denied",
        "sibling-denied",
        "git-denied",
        "git-new-denied",
        "git-move-denied",
        "link-denied",
        "hello",
    ] {
        assert!(out.contains(line), "missing {line} in:\n{out}");
    }
    assert_eq!(code, 0, "{out}");
    assert_eq!(denied, json!(false), "exit 0 is never a denial");
    assert_eq!(std::fs::read_to_string(tree.ws().join("inside")).unwrap(), "ok\n");
    assert!(!Path::new("/etc/exec-server-sandbox-test").exists());
    assert!(!tree.base.join("out/f").exists());
    assert!(!tree.ws().join(".git/new").exists());
    assert_eq!(std::fs::read_to_string(tree.ws().join(".git/config")).unwrap(), "[core]\n");

    // A failing write reports sandboxDenied.
    let (_, code, denied, out) = run(
        &mut client,
        "deny",
        &tree.ws(),
        workspace_write(&tree.ws(), "restricted"),
        "echo x > /etc/exec-server-sandbox-test",
    );
    // dash exits 2 on a failed redirection; the denial text decides, as upstream.
    assert_eq!((code, denied), (2, json!(true)), "{out}");

    // The daemon stays unconfined: an unrestricted command writes outside afterwards.
    let params = json!({"processId": "free", "argv": ["sh", "-c", format!("echo x > {}/free", tree.p("out"))],
        "cwd": tree.ws(), "env": {"PATH": PATH}, "tty": false});
    let response = client.call("process/start", params);
    assert_eq!(response["result"]["sandboxType"], "none", "{response}");
    let exited = client.notification("process/exited");
    assert_eq!(exited["params"]["exitCode"], 0);
    assert_eq!(exited["params"]["sandboxDenied"], false, "{exited}");
    assert!(tree.base.join("out/free").exists());
}

#[test]
fn read_only_command_reads_but_cannot_write() {
    let tree = Tree::new("cmd-ro");
    let (_daemon, mut client) = session();
    let (_, code, _, out) = run(&mut client, "ro", &tree.ws(), read_only(&tree.ws()), "cat readme /etc/hostname >/dev/null && echo read-ok; touch new || echo write-denied; echo x > /tmp/exec-server-ro-test || echo tmp-denied");
    assert_eq!(code, 0, "{out}");
    for line in ["read-ok", "write-denied", "tmp-denied"] {
        assert!(out.contains(line), "missing {line} in:\n{out}");
    }
    assert!(!tree.ws().join("new").exists());
    assert!(!Path::new("/tmp/exec-server-ro-test").exists());
}

#[test]
fn network_restricted_blocks_connect_and_enabled_allows_it() {
    let tree = Tree::new("net");
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (_daemon, mut client) = session();
    let script = format!(
        "python3 -c \"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=5); print('connected')\""
    );
    let (_, code, denied, out) =
        run(&mut client, "off", &tree.ws(), workspace_write(&tree.ws(), "restricted"), &script);
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("Operation not permitted"), "{out}");
    assert_eq!(denied, json!(true));
    let (_, code, _, out) =
        run(&mut client, "on", &tree.ws(), workspace_write(&tree.ws(), "enabled"), &script);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("connected"), "{out}");
    // AF_UNIX socketpairs stay usable.
    let (_, code, _, out) = run(
        &mut client,
        "unix",
        &tree.ws(),
        workspace_write(&tree.ws(), "restricted"),
        "python3 -c \"import socket; a, b = socket.socketpair(); print('pair')\"",
    );
    assert_eq!(code, 0, "{out}");
}

#[test]
fn fs_calls_follow_the_same_rules() {
    let tree = Tree::new("fs");
    let (_daemon, mut client) = session();
    let ww = workspace_write(&tree.ws(), "restricted");
    let ok = write_file(&mut client, &tree.p("ws/new.txt"), b"data", ww.clone());
    assert_eq!(ok["result"], json!({}), "{ok}");
    assert_eq!(std::fs::read(tree.ws().join("new.txt")).unwrap(), b"data");
    // file: URI paths inside the sandbox context, native path in params.
    for outside in [
        "/etc/exec-server-sandbox-fs",
        &tree.p("out/f"),
        &tree.p("ws/.git/config"),
        &tree.p("ws/link-out/f"),
    ] {
        let response = write_file(&mut client, outside, b"evil", ww.clone());
        // Exactly upstream 0.171's answer (measured against its binary).
        let erofs = json!({"code": -32603, "message": "Read-only file system (os error 30)"});
        assert_eq!(response["error"], erofs, "{outside}");
    }
    assert!(!Path::new("/etc/exec-server-sandbox-fs").exists());
    assert!(!tree.base.join("out/f").exists());
    assert_eq!(std::fs::read_to_string(tree.ws().join(".git/config")).unwrap(), "[core]\n");
    let mkdir =
        client.call("fs/createDirectory", json!({"path": tree.p("out/d"), "sandbox": ww.clone()}));
    assert_denied(&mkdir);
    let rm =
        client.call("fs/remove", json!({"path": tree.p("ws/.git/config"), "sandbox": ww.clone()}));
    assert_denied(&rm);
    assert!(tree.ws().join(".git/config").exists());

    // Read-only: reads work, writes don't.
    let ro = read_only(&tree.ws());
    let read =
        client.call("fs/readFile", json!({"path": tree.p("ws/readme"), "sandbox": ro.clone()}));
    assert_eq!(read["result"]["dataBase64"], BASE64.encode("hello"), "{read}");
    let list =
        client.call("fs/readDirectory", json!({"path": tree.p("ws"), "sandbox": ro.clone()}));
    assert!(list["result"]["entries"].as_array().is_some(), "{list}");
    assert_denied(&write_file(&mut client, &tree.p("ws/readme"), b"x", ro.clone()));
    assert_eq!(std::fs::read_to_string(tree.ws().join("readme")).unwrap(), "hello");
    // Not-found keeps its code under a sandbox.
    let missing = client.call("fs/readFile", json!({"path": tree.p("ws/nope"), "sandbox": ro}));
    assert_eq!(missing["error"]["code"], -32004, "{missing}");

    // A malformed context is upstream's -32602.
    let bad =
        write_file(&mut client, &tree.p("ws/x"), b"x", json!({"permissions": {"type":"disabled"}}));
    assert_eq!(
        bad["error"],
        json!({"code": -32602, "message": "missing field `windowsSandboxLevel`"})
    );
    // Unrestricted contexts run as before, and later plain calls are unconfined.
    let disabled = json!({"permissions": {"type":"disabled"}, "windowsSandboxLevel": "disabled"});
    assert_eq!(write_file(&mut client, &tree.p("out/free"), b"x", disabled)["result"], json!({}));
    assert_eq!(
        write_file(&mut client, &tree.p("out/free2"), b"x", Value::Null)["result"],
        json!({})
    );
}

/// As nobody the daemon cannot create mount namespaces: the write grant around `.git` is split
/// into grants on the workspace's entries (symlinks left out), which denies more, not less.
#[test]
fn without_mount_namespaces_the_grant_is_split() {
    use std::os::unix::process::CommandExt;
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } != 0 {
        println!("skipped: needs root to start the daemon as nobody");
        return;
    }
    const NOBODY: u32 = 65534;
    let tree = Tree::new("split");
    std::fs::create_dir(tree.ws().join("sub")).unwrap();
    for path in ["", "ws", "ws/.git", "ws/.git/config", "ws/readme", "ws/sub", "out"] {
        std::os::unix::fs::chown(tree.base.join(path), Some(NOBODY), Some(NOBODY)).unwrap();
    }
    // Every ancestor must be searchable by nobody.
    let mut ancestor = tree.base.parent();
    while let Some(dir) = ancestor {
        let mode = std::fs::metadata(dir).unwrap().permissions().mode();
        if mode & 0o001 == 0 {
            println!("skipped: {} is not searchable by nobody", dir.display());
            return;
        }
        ancestor = dir.parent();
    }
    // nobody may not reach the checkout (e.g. one below /root): run a copy from the tree.
    let bin = tree.base.join("exec-server");
    std::fs::copy(common::BIN, &bin).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut daemon = std::process::Command::new(&bin)
        .args(["--listen", "ws://127.0.0.1:0"])
        .uid(NOBODY)
        .gid(NOBODY)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(daemon.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let mut client = Client::connect(line.trim_end());
    client.initialize();
    let script = format!(
        "echo ok > sub/f && echo sub-ok; echo x >> readme && echo readme-ok; \
         echo x >> .git/config || echo git-denied; echo x > newtop || echo top-denied; \
         echo x > link-out/f || echo link-denied; echo x > {}/f || echo out-denied",
        tree.p("out")
    );
    let (result, code, _, out) =
        run(&mut client, "split", &tree.ws(), workspace_write(&tree.ws(), "restricted"), &script);
    let _ = daemon.kill();
    let _ = daemon.wait();
    assert_eq!(result["sandboxType"], "linuxSeccomp");
    assert_eq!(code, 0, "{out}");
    for line in ["sub-ok", "readme-ok", "git-denied", "top-denied", "link-denied", "out-denied"] {
        assert!(out.contains(line), "missing {line} in:\n{out}");
    }
    assert_eq!(std::fs::read_to_string(tree.ws().join(".git/config")).unwrap(), "[core]\n");
    assert!(!tree.base.join("out/f").exists());
}

#[test]
fn deny_globs_hide_existing_matches_and_refuse_new_ones() {
    let tree = Tree::new("glob");
    std::fs::write(tree.ws().join(".env"), "SECRET=1").unwrap();
    std::fs::create_dir(tree.ws().join("sub")).unwrap();
    let mut ww = workspace_write(&tree.ws(), "restricted");
    ww["permissions"]["file_system"]["entries"]
        .as_array_mut()
        .unwrap()
        .push(json!({"path": {"type":"glob_pattern","pattern":"**/.env"}, "access":"deny"}));
    let (_daemon, mut client) = session();
    let (_, code, _, out) = run(
        &mut client,
        "g",
        &tree.ws(),
        ww.clone(),
        "cat .env; echo x > .env || echo env-denied; echo fine > ok",
    );
    assert!(!out.contains("SECRET"), "{out}");
    assert!(out.contains("env-denied"), "{out}");
    assert_eq!(code, 0, "{out}");
    assert_eq!(std::fs::read_to_string(tree.ws().join(".env")).unwrap(), "SECRET=1");
    let read =
        client.call("fs/readFile", json!({"path": tree.p("ws/.env"), "sandbox": ww.clone()}));
    assert_denied(&read);
    assert_denied(&write_file(&mut client, &tree.p("ws/sub/.env"), b"x", ww.clone()));
    assert!(!tree.ws().join("sub/.env").exists());
    assert_eq!(write_file(&mut client, &tree.p("ws/sub/ok"), b"x", ww)["result"], json!({}));
}

#[test]
fn a_symlink_swapped_during_writes_never_escapes() {
    let tree = Tree::new("race");
    std::fs::create_dir(tree.ws().join("real")).unwrap();
    let flip = tree.ws().join("flip");
    std::os::unix::fs::symlink(tree.ws().join("real"), &flip).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let swapper = {
        let (stop, flip, tree_ws, out) =
            (stop.clone(), flip.clone(), tree.ws(), tree.base.join("out"));
        std::thread::spawn(move || {
            let tmp = tree_ws.join("flip.tmp");
            let mut to_out = true;
            while !stop.load(Ordering::Relaxed) {
                let target = if to_out { out.clone() } else { tree_ws.join("real") };
                let _ = std::fs::remove_file(&tmp);
                let _ = std::os::unix::fs::symlink(&target, &tmp);
                let _ = std::fs::rename(&tmp, &flip);
                to_out = !to_out;
            }
        })
    };
    let (_daemon, mut client) = session();
    let ww = workspace_write(&tree.ws(), "restricted");
    let target = format!("{}/f", flip.display());
    let (mut written, mut denied) = (0, 0);
    for _ in 0..200 {
        let response = write_file(&mut client, &target, b"x", ww.clone());
        if response.get("result").is_some() {
            written += 1;
        } else {
            denied += 1;
        }
        assert!(!tree.base.join("out/f").exists(), "escaped after {written} writes");
    }
    // The same race from inside a confined command.
    let script =
        format!("i=0; while [ $i -lt 300 ]; do echo x > {target} 2>/dev/null; i=$((i+1)); done");
    let (_, code, _, out) = run(&mut client, "race", &tree.ws(), ww, &script);
    assert_eq!(code, 0, "{out}");
    stop.store(true, Ordering::Relaxed);
    swapper.join().unwrap();
    assert!(!tree.base.join("out/f").exists());
    assert!(tree.ws().join("real/f").exists(), "some writes landed inside");
    assert!(written + denied == 200 && denied > 0, "written {written}, denied {denied}");
}

/// Start latency of `/bin/true` with and without workspace-write (prints p50/p90; run with
/// `cargo test --release --test sandbox -- --ignored --nocapture start_latency`).
#[test]
#[ignore]
fn start_latency() {
    let tree = Tree::new("latency");
    let (_daemon, mut client) = session();
    for (label, sandbox) in [
        ("unsandboxed", Value::Null),
        ("workspace-write", workspace_write(&tree.ws(), "restricted")),
    ] {
        let mut times = Vec::new();
        for i in 0..200 {
            let id = format!("{label}-{i}");
            let params = json!({"processId": id, "argv": ["/bin/true"], "cwd": tree.ws(),
                "env": {"PATH": PATH}, "tty": false, "sandbox": sandbox});
            let started = std::time::Instant::now();
            let response = client.call("process/start", params);
            assert!(response.get("result").is_some(), "{response}");
            loop {
                let m = client.recv();
                if m["method"] == "process/closed" && m["params"]["processId"] == id.as_str() {
                    break;
                }
            }
            times.push(started.elapsed());
        }
        times.sort();
        println!("process/start {label}: p50 {:?} p90 {:?}", times[100], times[180]);
    }
    for (label, sandbox) in [
        ("unsandboxed", Value::Null),
        ("workspace-write", workspace_write(&tree.ws(), "restricted")),
    ] {
        let mut times = Vec::new();
        for _ in 0..200 {
            let started = std::time::Instant::now();
            let response = write_file(&mut client, &tree.p("ws/f"), b"x", sandbox.clone());
            assert_eq!(response["result"], json!({}), "{response}");
            times.push(started.elapsed());
        }
        times.sort();
        println!("fs/writeFile {label}: p50 {:?} p90 {:?}", times[100], times[180]);
    }
}

/// The orphan reaper runs once a process has started; it must never reap (or adopt) the
/// confined filesystem helper, whose own waiter then failed with ECHILD (seen under load).
/// Four clients write at once, with processes exiting beside them, to make the race likely.
#[test]
fn sandboxed_fs_calls_survive_the_orphan_reaper() {
    let tree = Tree::new("fs-reaper");
    let daemon = Daemon::start(&[]);
    let (mut client, _) = daemon.session();
    let (_, code, _, out) = run(&mut client, "first", &tree.ws(), Value::Null, "true");
    assert_eq!(code, 0, "{out}");
    let ws = tree.ws();
    std::thread::scope(|scope| {
        for t in 0..4 {
            let (daemon, ws) = (&daemon, &ws);
            scope.spawn(move || {
                let (mut client, _) = daemon.session();
                for i in 0..25 {
                    let (_, code, _, out) =
                        run(&mut client, &format!("p{i}"), ws, Value::Null, "true");
                    assert_eq!(code, 0, "{out}");
                    let path = ws.join(format!("f{t}-{i}"));
                    let sandbox = workspace_write(ws, "restricted");
                    let response = write_file(&mut client, path.to_str().unwrap(), b"x", sandbox);
                    assert_eq!(response["result"], json!({}), "client {t} call {i}: {response}");
                }
            });
        }
    });
}
