//! Verifies the filesystem methods (PROTOCOL.md §6) over the real binary: every §11
//! "Filesystem" checklist item with its exact code and message, a 64 MiB binary round trip,
//! the §6.9 sandbox table row by row, and permission-denied paths with the daemon running
//! as `nobody`.

mod common;

use std::ffi::{CString, OsStr};
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;
use std::time::{Duration, Instant, UNIX_EPOCH};

use base64::Engine as _;
use common::{b64, TempDir};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

const ENOENT: &str = "No such file or directory (os error 2)";
// v2 (0.171): a path that is neither a `file:` URI nor absolute.
const RELATIVE_PATH: &str = "invalid URI: relative URL without a base";
/// The wait for one response carrying tens or hundreds of MiB: debug builds on a busy
/// machine move it at a few MiB/s, and the default deadline is meant for small requests.
const LARGE_DEADLINE: Duration = Duration::from_secs(300);

fn unb64(text: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD.decode(text).expect("the server sends valid base64")
}

fn mkfifo(path: &Path) {
    let c = CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: `c` is a valid NUL-terminated path for the duration of the call.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
}

/// An initialized connection to a daemon of its own, with the daemon's lifetime.
struct Conn {
    client: common::Client,
    /// Killed when the test ends.
    _daemon: common::Daemon,
}

impl Conn {
    fn open() -> Conn {
        let daemon = common::Daemon::start(&[]);
        let client = Conn::initialized(&daemon.url);
        Conn { client, _daemon: daemon }
    }

    /// A daemon running as `nobody` (uid and gid 65534, no supplementary groups), for
    /// permission-denied paths: these tests run as root, which no mode bits stop. `None`,
    /// with the reason printed, where privileges cannot be dropped.
    fn open_as_nobody() -> Option<Conn> {
        let daemon = common::Daemon::start_as_nobody()?;
        let client = Conn::initialized(&daemon.url);
        Some(Conn { client, _daemon: daemon })
    }

    fn initialized(url: &str) -> common::Client {
        let mut client = common::Client::connect(url);
        // Responses carrying a 64 MiB file are larger than tungstenite's default limits.
        client.ws.set_config(|config| {
            config.max_message_size = None;
            config.max_frame_size = None;
        });
        client.initialize();
        client
    }

    /// Sends a request and returns its `result`, or its error's code and message.
    fn call(&mut self, method: &str, params: Value) -> Result<Value, (i64, String)> {
        let response = self.client.call(method, params);
        match response.get("error") {
            Some(error) => Err((
                error["code"].as_i64().expect("integer error code"),
                error["message"].as_str().expect("string error message").to_owned(),
            )),
            None => Ok(response["result"].clone()),
        }
    }
}

fn err(code: i64, message: &str) -> Result<Value, (i64, String)> {
    Err((code, message.to_owned()))
}

#[test]
fn write_read_round_trip_and_truncate() {
    let mut c = Conn::open();
    let dir = TempDir::new();
    let f = dir.s("f");
    assert_eq!(
        c.call("fs/writeFile", json!({"path": f, "dataBase64": b64(b"hello world")})),
        Ok(json!({}))
    );
    assert_eq!(
        c.call("fs/readFile", json!({"path": f})),
        Ok(json!({"dataBase64": b64(b"hello world")}))
    );
    assert_eq!(c.call("fs/writeFile", json!({"path": f, "dataBase64": b64(b"hi")})), Ok(json!({})));
    assert_eq!(fs::read(dir.join("f")).unwrap(), b"hi");
    assert_eq!(c.call("fs/readFile", json!({"path": f})), Ok(json!({"dataBase64": "aGk="})));
    // Empty files both ways; a path with `.` and `..` is normalized lexically.
    assert_eq!(c.call("fs/writeFile", json!({"path": f, "dataBase64": ""})), Ok(json!({})));
    let dotted = format!("{}/./x/../f", dir.s(""));
    assert_eq!(c.call("fs/readFile", json!({"path": dotted})), Ok(json!({"dataBase64": ""})));
}

#[test]
fn large_binary_round_trip_is_byte_exact() {
    const SIZE: usize = 64 << 20;
    let mut c = Conn::open();
    c.client.ws.get_mut().set_read_timeout(Some(LARGE_DEADLINE)).unwrap();
    let dir = TempDir::new();
    // Every byte value, in a pattern no shorter period hides.
    let data: Vec<u8> =
        (0..SIZE as u64).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    let want = Sha256::digest(&data);
    let text = b64(&data);
    let f = dir.s("big");

    // Timed from the first byte sent to the last byte received, so the test client's own
    // JSON work is not counted; the transport and the client's websocket reads are.
    let request = |id: &str, method: &str, params: Value| {
        json!({"id": id, "method": method, "params": params}).to_string()
    };
    let write_request = request("w", "fs/writeFile", json!({"path": f, "dataBase64": text}));
    drop(text);
    let started = Instant::now();
    c.client.send_text(&write_request);
    let response = c.client.recv_raw();
    let write_elapsed = started.elapsed();
    drop(write_request);
    let response: Value = serde_json::from_str(response.to_text().unwrap()).unwrap();
    assert_eq!(response, json!({"id": "w", "result": {}}));
    assert_eq!(Sha256::digest(fs::read(dir.join("big")).unwrap()), want);

    let read_request = request("r", "fs/readFile", json!({"path": f}));
    let started = Instant::now();
    c.client.send_text(&read_request);
    let response = c.client.recv_raw();
    let read_elapsed = started.elapsed();
    let response: Value = serde_json::from_str(response.to_text().unwrap()).unwrap();
    assert_eq!(response["id"], "r");
    let back = unb64(response["result"]["dataBase64"].as_str().unwrap());
    assert_eq!(back.len(), SIZE);
    assert_eq!(Sha256::digest(&back), want);
    let mib_per_s = |d: Duration| (SIZE >> 20) as f64 / d.as_secs_f64();
    println!(
        "64 MiB end to end: writeFile {:.0} MiB/s, readFile {:.0} MiB/s",
        mib_per_s(write_elapsed),
        mib_per_s(read_elapsed)
    );
}

/// A memory figure of a process (`VmHWM` is the peak resident size, `VmRSS` the current
/// one), in bytes.
fn memory(pid: u32, field: &str) -> u64 {
    common::status_kib(pid, field) * 1024
}

/// Polls the resident size of `pid` (`/proc` signals nothing) every 20 ms until it is at
/// most `limit` bytes, for up to 20 s; `context` completes the failure's message.
fn resident_falls_to(pid: u32, limit: u64, context: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let now = memory(pid, "VmRSS:");
        if now <= limit {
            return;
        }
        assert!(Instant::now() < deadline, "resident {now} bytes 20 s on; {context}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Issue 5 asks that a 256 MiB readFile or writeFile need no more than about three times
/// the file's size at peak. The message limit is raised because the base64 of 256 MiB is
/// larger than the default 256 MiB frame. Each request is measured from the resident size
/// before it, so memory the transport keeps after a large frame (its read buffer) is
/// reported, not charged to the next request.
#[test]
fn a_256_mib_file_needs_at_most_three_times_its_size() {
    const SIZE: usize = 256 << 20;
    let daemon = common::Daemon::start(&["--max-message-bytes", "536870912"]);
    let pid = daemon.pid();
    let mut client = Conn::initialized(&daemon.url);
    client.ws.get_mut().set_read_timeout(Some(LARGE_DEADLINE)).unwrap();
    let dir = TempDir::new();
    let path = dir.s("big");
    let data: Vec<u8> =
        (0..SIZE as u64).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    // Built by hand so the test holds one copy of the base64 text, not three.
    let mut request = String::with_capacity(SIZE / 3 * 4 + 1024);
    request.push_str(&format!(
        r#"{{"id":"w","method":"fs/writeFile","params":{{"path":"{path}","dataBase64":""#
    ));
    base64::engine::general_purpose::STANDARD.encode_string(&data, &mut request);
    request.push_str(r#""}}"#);

    let before_write = memory(pid, "VmRSS:");
    client.send_text(&request);
    drop(request);
    assert_eq!(client.response(&json!("w"))["result"], json!({}));
    let write_peak = memory(pid, "VmHWM:") - before_write;
    assert!(fs::read(dir.join("big")).unwrap() == data, "written bytes differ");

    let before_read = memory(pid, "VmRSS:");
    client
        .send_text(&format!(r#"{{"id":"r","method":"fs/readFile","params":{{"path":"{path}"}}}}"#));
    let response = client.response(&json!("r"));
    let read_peak = memory(pid, "VmHWM:") - before_read;
    assert!(unb64(response["result"]["dataBase64"].as_str().unwrap()) == data, "read bytes differ");
    let ratio = |bytes: u64| bytes as f64 / SIZE as f64;
    println!(
        "256 MiB: writeFile peak {:.2}x, readFile peak {:.2}x the file size; \
         resident after the write {:.2}x",
        ratio(write_peak),
        ratio(read_peak),
        ratio(before_read.saturating_sub(before_write))
    );
    assert!(ratio(write_peak) <= 3.0, "writeFile peak {:.2}x", ratio(write_peak));
    assert!(ratio(read_peak) <= 3.0, "readFile peak {:.2}x", ratio(read_peak));
}

/// The daemon keeps freed large buffers mapped for reuse only while they are being reused:
/// after two 16 MiB writes and reads and the connection's close, its resident size comes
/// back to where it started once they have gone unused for a second. Polls `/proc`, which
/// signals nothing, every 20 ms up to a deadline.
#[test]
fn large_buffers_are_not_kept_once_unused() {
    const SIZE: usize = 16 << 20;
    const SLACK: u64 = 8 << 20;
    let daemon = common::Daemon::start(&[]);
    let pid = daemon.pid();
    let dir = TempDir::new();
    let before = memory(pid, "VmRSS:");
    {
        let mut client = Conn::initialized(&daemon.url);
        client.ws.get_mut().set_read_timeout(Some(LARGE_DEADLINE)).unwrap();
        let text = b64(&vec![0x5a; SIZE]);
        for _ in 0..2 {
            let id =
                client.request("fs/writeFile", json!({"path": dir.s("f"), "dataBase64": text}));
            assert_eq!(client.response(&id)["result"], json!({}));
            let id = client.request("fs/readFile", json!({"path": dir.s("f")}));
            assert_eq!(client.response(&id)["result"]["dataBase64"].as_str(), Some(&*text));
        }
        let peak = memory(pid, "VmHWM:");
        assert!(peak > before + SIZE as u64, "the buffers were resident: {peak} after {before}");
    }
    resident_falls_to(pid, before + SLACK, &format!("{before} before"));
}

/// A connection that stays open keeps no copy of a large reply once it is sent (the write
/// buffer tungstenite kept at its largest size held about 1 MiB per connection for good):
/// 28 more open connections that each read a 4 MiB file leave the daemon about as resident
/// as the first 4 did. Polls `/proc`, which signals nothing, up to a deadline.
#[test]
fn open_connections_keep_no_copy_of_a_large_reply() {
    const SIZE: usize = 4 << 20;
    /// Per-connection state (a thread, a 32 KiB read buffer) for 28 connections, with room.
    const SLACK: u64 = 8 << 20;
    let daemon = common::Daemon::start(&[]);
    let pid = daemon.pid();
    let dir = TempDir::new();
    fs::write(dir.join("f"), vec![0xa5; SIZE]).unwrap();
    let open = |n: usize| -> Vec<common::Client> {
        (0..n)
            .map(|_| {
                let mut client = Conn::initialized(&daemon.url);
                let id = client.request("fs/readFile", json!({"path": dir.s("f")}));
                let data = client.response(&id)["result"]["dataBase64"].as_str().map(str::len);
                assert_eq!(data, Some(SIZE / 3 * 4 + 4));
                client
            })
            .collect()
    };
    let _first = open(4);
    let warm = memory(pid, "VmRSS:");
    let _more = open(28);
    resident_falls_to(pid, warm + SLACK, &format!("32 open; {warm} with 4"));
}

/// §1.5: requests naming the same path after lexical normalization take effect in
/// arrival order even when pipelined.
#[test]
fn pipelined_write_then_read_of_one_path_is_ordered() {
    let mut c = Conn::open();
    c.client.ws.get_mut().set_read_timeout(Some(LARGE_DEADLINE)).unwrap();
    let dir = TempDir::new();
    let big = vec![7u8; 4 << 20];
    let mut ids = Vec::new();
    for round in 0..8u8 {
        // A large write, then a read under another spelling of the same path.
        let mut data = big.clone();
        data[0] = round;
        ids.push(
            c.client.request("fs/writeFile", json!({"path": dir.s("f"), "dataBase64": b64(&data)})),
        );
        let spelled = format!("{}/sub/../f", dir.s(""));
        ids.push(c.client.request("fs/readFile", json!({"path": spelled})));
    }
    for (round, pair) in ids.chunks(2).enumerate() {
        assert_eq!(c.client.response(&pair[0])["result"], json!({}));
        let read = c.client.response(&pair[1]);
        let data = unb64(read["result"]["dataBase64"].as_str().unwrap());
        assert_eq!((data.len(), data[0]), (big.len(), round as u8));
    }
}

/// §1.5: a large `fs/readFile` delays no request with a different path.
#[test]
fn a_large_read_does_not_hold_up_other_paths() {
    let mut c = Conn::open();
    c.client.ws.get_mut().set_read_timeout(Some(LARGE_DEADLINE)).unwrap();
    let dir = TempDir::new();
    fs::write(dir.join("big"), vec![1u8; 64 << 20]).unwrap();
    fs::write(dir.join("small"), b"x").unwrap();
    c.client.send_text(
        &json!({"id": "big", "method": "fs/readFile", "params": {"path": dir.s("big")}})
            .to_string(),
    );
    c.client.send_text(
        &json!({"id": "small", "method": "fs/getMetadata", "params": {"path": dir.s("small")}})
            .to_string(),
    );
    let first: Value = serde_json::from_str(c.client.recv_raw().to_text().unwrap()).unwrap();
    assert_eq!(first["id"], "small", "the small request answered first");
    assert_eq!(first["result"]["isFile"], true);
    let second: Value = serde_json::from_str(c.client.recv_raw().to_text().unwrap()).unwrap();
    assert_eq!(second["id"], "big");
    assert_eq!(second["result"]["dataBase64"].as_str().unwrap().len(), (64 << 20) / 3 * 4 + 4);
}

#[test]
fn missing_paths_are_not_found() {
    let mut c = Conn::open();
    let dir = TempDir::new();
    assert_eq!(c.call("fs/readFile", json!({"path": dir.s("nope")})), err(-32004, ENOENT));
    assert_eq!(
        c.call("fs/writeFile", json!({"path": dir.s("no/parent"), "dataBase64": "aGk="})),
        err(-32004, ENOENT)
    );
    assert!(!dir.join("no").exists());
    assert_eq!(c.call("fs/getMetadata", json!({"path": dir.s("nope")})), err(-32004, ENOENT));
    assert_eq!(c.call("fs/readDirectory", json!({"path": dir.s("nope")})), err(-32004, ENOENT));
    symlink("missing", dir.join("dangling")).unwrap();
    assert_eq!(c.call("fs/getMetadata", json!({"path": dir.s("dangling")})), err(-32004, ENOENT));
    assert_eq!(c.call("fs/readFile", json!({"path": dir.s("dangling")})), err(-32004, ENOENT));
}

#[test]
fn relative_paths_and_bad_base64() {
    let mut c = Conn::open();
    let name = format!("exec-server-relative-{}", std::process::id());
    for (method, params) in [
        ("fs/writeFile", json!({"path": name, "dataBase64": "aGk="})),
        ("fs/createDirectory", json!({"path": name})),
        ("fs/readFile", json!({"path": "./x"})),
        ("fs/getMetadata", json!({"path": ""})),
        ("fs/readDirectory", json!({"path": "a/b"})),
        ("fs/remove", json!({"path": name})),
        ("fs/copy", json!({"sourcePath": "/tmp", "destinationPath": name, "recursive": true})),
    ] {
        assert_eq!(c.call(method, params), err(-32602, RELATIVE_PATH), "{method}");
    }
    // Neither in the server's working directory (inherited from this test) nor anywhere else
    // the name could have been resolved against.
    assert!(!Path::new(&name).exists());
    assert!(!Path::new("/").join(&name).exists());

    let dir = TempDir::new();
    fs::write(dir.join("f"), b"kept").unwrap();
    assert_eq!(
        c.call("fs/writeFile", json!({"path": dir.s("f"), "dataBase64": "not base64!"})),
        err(-32600, "fs/writeFile requires valid base64 dataBase64: Invalid symbol 32, offset 3.")
    );
    assert_eq!(
        c.call("fs/writeFile", json!({"path": dir.s("f"), "dataBase64": "aGk"})),
        err(-32600, "fs/writeFile requires valid base64 dataBase64: Invalid padding")
    );
    assert_eq!(fs::read(dir.join("f")).unwrap(), b"kept");
    assert_eq!(
        c.call("fs/writeFile", json!({"path": dir.s("f")})),
        err(-32602, "missing field `dataBase64`")
    );
    assert_eq!(c.call("fs/readFile", json!({})), err(-32602, "missing field `path`"));
    assert_eq!(
        c.call("fs/readFile", json!({"path": 5})),
        err(-32602, "invalid type: integer `5`, expected a string")
    );
    assert_eq!(
        c.call("fs/remove", json!({"path": dir.s("f"), "recursive": "yes"})),
        err(-32602, "invalid type: string \"yes\", expected a boolean")
    );
    assert_eq!(
        c.call(
            "fs/copy",
            json!({"sourcePath": dir.s("f"), "destinationPath": dir.s("g"), "recursive": null})
        ),
        err(-32602, "invalid type: null, expected a boolean")
    );
    assert!(dir.join("f").exists() && !dir.join("g").exists());
}

#[test]
fn nul_bytes_and_wrong_kinds() {
    let mut c = Conn::open();
    let dir = TempDir::new();
    let nul = format!("{}/a\u{0}b", dir.s(""));
    let invalid = err(-32600, "file name contained an unexpected NUL byte");
    assert_eq!(c.call("fs/readFile", json!({"path": nul})), invalid);
    assert_eq!(c.call("fs/writeFile", json!({"path": nul, "dataBase64": ""})), invalid);
    assert_eq!(c.call("fs/createDirectory", json!({"path": nul})), invalid);
    assert_eq!(c.call("fs/getMetadata", json!({"path": nul})), invalid);
    assert_eq!(c.call("fs/readDirectory", json!({"path": nul})), invalid);
    assert_eq!(c.call("fs/remove", json!({"path": nul})), invalid);
    assert_eq!(
        c.call(
            "fs/copy",
            json!({"sourcePath": dir.s(""), "destinationPath": nul, "recursive": true})
        ),
        invalid
    );

    fs::create_dir(dir.join("d")).unwrap();
    fs::write(dir.join("f"), b"x").unwrap();
    let is_dir = err(-32603, "Is a directory (os error 21)");
    let not_dir = err(-32603, "Not a directory (os error 20)");
    assert_eq!(c.call("fs/readFile", json!({"path": dir.s("d")})), is_dir);
    assert_eq!(c.call("fs/writeFile", json!({"path": dir.s("d"), "dataBase64": ""})), is_dir);
    assert_eq!(c.call("fs/readDirectory", json!({"path": dir.s("f")})), not_dir);
    assert_eq!(c.call("fs/readFile", json!({"path": dir.s("f/x")})), not_dir);
    assert_eq!(
        c.call("fs/createDirectory", json!({"path": dir.s("f")})),
        err(-32603, "File exists (os error 17)")
    );
}

#[test]
fn create_directory_is_recursive_by_default_and_idempotent() {
    let mut c = Conn::open();
    let dir = TempDir::new();
    let deep = dir.s("a/b/c");
    assert_eq!(c.call("fs/createDirectory", json!({"path": deep})), Ok(json!({})));
    assert!(dir.join("a/b/c").is_dir());
    assert_eq!(c.call("fs/createDirectory", json!({"path": deep})), Ok(json!({})));
    assert_eq!(
        c.call("fs/createDirectory", json!({"path": deep, "recursive": null})),
        Ok(json!({}))
    );
    assert_eq!(
        c.call("fs/createDirectory", json!({"path": deep, "recursive": true})),
        Ok(json!({}))
    );
    assert_eq!(
        c.call("fs/createDirectory", json!({"path": deep, "recursive": false})),
        err(-32603, "File exists (os error 17)")
    );
    assert_eq!(
        c.call("fs/createDirectory", json!({"path": dir.s("x/y"), "recursive": false})),
        err(-32004, ENOENT)
    );
    assert_eq!(
        c.call("fs/createDirectory", json!({"path": dir.s("a/d"), "recursive": false})),
        Ok(json!({}))
    );
    assert!(dir.join("a/d").is_dir());
}

#[test]
fn get_metadata_flags_and_exact_mtime() {
    let mut c = Conn::open();
    let dir = TempDir::new();
    fs::write(dir.join("f"), b"x").unwrap();
    fs::create_dir(dir.join("d")).unwrap();
    symlink(dir.join("f"), dir.join("lf")).unwrap();
    symlink("d", dir.join("ld")).unwrap();
    let mtime_ms: u64 = 1_700_000_000_123;
    fs::File::options()
        .write(true)
        .open(dir.join("f"))
        .unwrap()
        .set_modified(UNIX_EPOCH + Duration::from_millis(mtime_ms))
        .unwrap();
    let mut meta = |name: &str| c.call("fs/getMetadata", json!({"path": dir.s(name)})).unwrap();
    let flags = |m: &Value| (m["isDirectory"].clone(), m["isFile"].clone(), m["isSymlink"].clone());
    let f = meta("f");
    assert_eq!(flags(&f), (json!(false), json!(true), json!(false)));
    assert_eq!(f["modifiedAtMs"], json!(mtime_ms));
    assert!(f["createdAtMs"].is_u64(), "{f}");
    assert_eq!(flags(&meta("d")), (json!(true), json!(false), json!(false)));
    let lf = meta("lf");
    assert_eq!(flags(&lf), (json!(false), json!(true), json!(true)));
    assert_eq!(lf["modifiedAtMs"], json!(mtime_ms));
    assert_eq!(flags(&meta("ld")), (json!(true), json!(false), json!(true)));
    let mut keys: Vec<_> = f.as_object().unwrap().keys().cloned().collect();
    keys.sort();
    assert_eq!(keys, ["createdAtMs", "isDirectory", "isFile", "isSymlink", "modifiedAtMs", "size"]);
}

#[test]
fn read_directory_skips_dangling_links_and_lists_names_lossily() {
    let mut c = Conn::open();
    let dir = TempDir::new();
    fs::write(dir.join("f"), b"x").unwrap();
    fs::create_dir(dir.join("d")).unwrap();
    symlink("d", dir.join("ld")).unwrap();
    symlink("f", dir.join("lf")).unwrap();
    symlink("missing", dir.join("dangling")).unwrap();
    mkfifo(&dir.join("fifo"));
    fs::write(dir.0.join(OsStr::from_bytes(b"bad\xffname")), b"").unwrap();
    let listing = c.call("fs/readDirectory", json!({"path": dir.s("")})).unwrap();
    let mut entries = listing["entries"].as_array().unwrap().clone();
    entries.sort_by_key(|e| e["fileName"].as_str().unwrap().to_owned());
    let entry = |name: &str, is_directory: bool, is_file: bool| json!({"fileName": name, "isDirectory": is_directory, "isFile": is_file});
    assert_eq!(
        entries,
        [
            entry("bad\u{fffd}name", false, true),
            entry("d", true, false),
            entry("f", false, true),
            entry("fifo", false, false),
            entry("ld", true, false),
            entry("lf", false, true),
        ]
    );
    assert_eq!(c.call("fs/readDirectory", json!({"path": dir.s("d")})), Ok(json!({"entries": []})));
}

#[test]
fn remove_defaults_and_links() {
    let mut c = Conn::open();
    let dir = TempDir::new();
    assert_eq!(c.call("fs/remove", json!({"path": dir.s("missing")})), Ok(json!({})));
    assert_eq!(
        c.call("fs/remove", json!({"path": dir.s("missing"), "recursive": null, "force": null})),
        Ok(json!({}))
    );
    assert_eq!(
        c.call("fs/remove", json!({"path": dir.s("missing"), "force": false})),
        err(-32004, ENOENT)
    );

    fs::create_dir_all(dir.join("t/sub")).unwrap();
    fs::write(dir.join("t/sub/f"), b"x").unwrap();
    symlink(dir.join("t"), dir.join("lt")).unwrap();
    assert_eq!(
        c.call("fs/remove", json!({"path": dir.s("t"), "recursive": false})),
        err(-32603, "Directory not empty (os error 39)")
    );
    // A link to a directory is unlinked, recursive or not, and its target is kept.
    assert_eq!(c.call("fs/remove", json!({"path": dir.s("lt")})), Ok(json!({})));
    assert!(fs::symlink_metadata(dir.join("lt")).is_err());
    assert!(dir.join("t/sub/f").is_file());
    // The default is recursive.
    assert_eq!(c.call("fs/remove", json!({"path": dir.s("t")})), Ok(json!({})));
    assert!(!dir.join("t").exists());

    fs::create_dir(dir.join("empty")).unwrap();
    assert_eq!(
        c.call("fs/remove", json!({"path": dir.s("empty"), "recursive": false, "force": false})),
        Ok(json!({}))
    );
    assert!(!dir.join("empty").exists());
    fs::write(dir.join("f"), b"x").unwrap();
    symlink(dir.join("f"), dir.join("lf")).unwrap();
    assert_eq!(c.call("fs/remove", json!({"path": dir.s("lf"), "force": false})), Ok(json!({})));
    assert!(dir.join("f").is_file());
    assert_eq!(c.call("fs/remove", json!({"path": dir.s("f"), "recursive": false})), Ok(json!({})));
    assert!(!dir.join("f").exists());
}

#[test]
fn copy_rules() {
    let mut c = Conn::open();
    let dir = TempDir::new();
    let cp = |c: &mut Conn, from: &str, to: &str, recursive: Value| {
        let mut params = json!({"sourcePath": dir.s(from), "destinationPath": dir.s(to)});
        if !recursive.is_null() {
            params["recursive"] = recursive;
        }
        c.call("fs/copy", params)
    };

    fs::write(dir.join("f"), b"content").unwrap();
    assert_eq!(cp(&mut c, "f", "g", json!(false)), Ok(json!({})));
    assert_eq!(fs::read(dir.join("g")).unwrap(), b"content");
    assert_eq!(cp(&mut c, "f", "g", json!(true)), Ok(json!({})));
    assert_eq!(cp(&mut c, "f", "f", json!(false)), Ok(json!({})));
    assert_eq!(fs::read(dir.join("f")).unwrap(), b"content");

    symlink("../somewhere/else", dir.join("link")).unwrap();
    assert_eq!(cp(&mut c, "link", "link2", json!(false)), Ok(json!({})));
    assert_eq!(fs::read_link(dir.join("link2")).unwrap(), Path::new("../somewhere/else"));

    fs::create_dir_all(dir.join("src/deep/er")).unwrap();
    fs::write(dir.join("src/deep/er/file"), b"deep").unwrap();
    symlink("deep/er/file", dir.join("src/rel")).unwrap();
    symlink("/nonexistent/target", dir.join("src/dangling")).unwrap();
    mkfifo(&dir.join("src/fifo"));
    assert_eq!(
        cp(&mut c, "src", "dst", json!(false)),
        err(-32600, "fs/copy requires recursive: true when sourcePath is a directory")
    );
    assert!(!dir.join("dst").exists());
    assert_eq!(cp(&mut c, "src", "dst/nested", json!(true)), Ok(json!({})));
    let dst = dir.join("dst/nested");
    assert_eq!(fs::read(dst.join("deep/er/file")).unwrap(), b"deep");
    assert_eq!(fs::read_link(dst.join("rel")).unwrap(), Path::new("deep/er/file"));
    assert_eq!(fs::read_link(dst.join("dangling")).unwrap(), Path::new("/nonexistent/target"));
    assert!(fs::symlink_metadata(dst.join("fifo")).is_err(), "FIFOs are skipped");

    let into_itself =
        err(-32600, "fs/copy cannot copy a directory to itself or one of its descendants");
    symlink(dir.join("src/deep"), dir.join("alias")).unwrap();
    for to in ["src", "src/deep", "src/new/deeper", "alias", "alias/new"] {
        assert_eq!(cp(&mut c, "src", to, json!(true)), into_itself, "{to}");
    }
    assert!(!dir.join("src/new").exists());
    assert_eq!(cp(&mut c, "src", "src2", json!(true)), Ok(json!({})));

    assert_eq!(
        cp(&mut c, "src/fifo", "fifo2", json!(false)),
        err(-32600, "fs/copy only supports regular files, directories, and symlinks")
    );
    assert_eq!(cp(&mut c, "nope", "x", json!(true)), err(-32004, ENOENT));
    assert_eq!(cp(&mut c, "f", "h", Value::Null), err(-32602, "missing field `recursive`"));
    assert!(!dir.join("h").exists());
}

#[test]
fn read_over_the_limit_is_refused() {
    let mut c = Conn::open();
    let dir = TempDir::new();
    // Sparse: no disk space or time is spent on it.
    let file = fs::File::create(dir.join("big")).unwrap();
    file.set_len((512 << 20) + 1).unwrap();
    assert_eq!(
        c.call("fs/readFile", json!({"path": dir.s("big")})),
        err(-32600, "file is too large to read: limit is 536870912 bytes")
    );
}

#[test]
fn sandbox_table_row_by_row() {
    let mut c = Conn::open();
    let dir = TempDir::new();
    fs::write(dir.join("f"), b"x").unwrap();
    let read = |c: &mut Conn, sandbox: Value| {
        c.call("fs/readFile", json!({"path": dir.s("f"), "sandbox": sandbox}))
    };
    let ok = Ok(json!({"dataBase64": "eA=="}));
    // absent or null
    assert_eq!(c.call("fs/readFile", json!({"path": dir.s("f")})), ok);
    assert_eq!(read(&mut c, Value::Null), ok);
    // permissions.type disabled / external
    let context = json!({"permissions":{"type":"disabled"},"cwd":"/home/user/project","windowsSandboxLevel":"disabled","windowsSandboxPrivateDesktop":false,"useLegacyLandlock":false});
    assert_eq!(read(&mut c, context), ok);
    let level = json!("disabled");
    assert_eq!(
        read(
            &mut c,
            json!({"permissions":{"type":"external","network":"restricted"},"windowsSandboxLevel":level})
        ),
        ok
    );
    // managed with an unrestricted file system
    assert_eq!(
        read(
            &mut c,
            json!({"permissions":{"type":"managed","file_system":{"type":"unrestricted"},"network":"enabled"},"windowsSandboxLevel":level})
        ),
        ok
    );
    // legacy sandboxPolicy
    for policy in ["danger-full-access", "external-sandbox"] {
        let legacy = json!({"sandboxPolicy":{"type":policy},"windowsSandboxLevel":"disabled","additionalPermissions":null});
        assert_eq!(read(&mut c, legacy), ok, "{policy}");
        // bare legacy policy
        assert_eq!(read(&mut c, json!({"type": policy})), ok, "{policy}");
    }

    // Anything else is refused, whatever its shape, before the filesystem is touched.
    let read_only = json!({"type":"managed","file_system":{"type":"restricted","entries":[{"path":{"type":"special","value":{"kind":"root"}},"access":"read"}]},"network":"restricted"});
    let workspace_write = json!({"type":"managed","file_system":{"type":"restricted","entries":[
        {"path":{"type":"special","value":{"kind":"root"}},"access":"read"},
        {"path":{"type":"special","value":{"kind":"project_roots"}},"access":"write"},
        {"path":{"type":"special","value":{"kind":"slash_tmp"}},"access":"write"},
        {"path":{"type":"special","value":{"kind":"tmpdir"}},"access":"write"},
        {"path":{"type":"path","path":"/data/extra"},"access":"write"},
        {"path":{"type":"glob_pattern","pattern":"**/.env"},"access":"deny"}]},"network":"restricted"});
    // Issue 13: restricted sandboxes are enforced (tests/sandbox.rs), not refused; contexts
    // that do not decode get upstream's -32602 decoder text.
    let context = json!({"permissions": read_only, "cwd": "/p", "windowsSandboxLevel": "disabled"});
    assert_eq!(read(&mut c, context.clone()), ok);
    assert_eq!(read(&mut c, json!({"sandboxPolicy":{"type":"read-only"}})), ok);
    assert_eq!(read(&mut c, json!({"type":"read-only"})), ok);
    let no_level = err(-32602, "missing field `windowsSandboxLevel`");
    assert_eq!(read(&mut c, json!({"permissions": workspace_write})), no_level);
    let no_permissions = err(-32602, "missing field `permissions`");
    for sandbox in [read_only.clone(), json!({"type":"disabled"}), json!({})] {
        assert_eq!(read(&mut c, sandbox.clone()), no_permissions, "{sandbox}");
    }
    for sandbox in [json!([]), json!(5), json!("danger-full-access")] {
        assert_eq!(read(&mut c, sandbox.clone()).unwrap_err().0, -32602, "{sandbox}");
    }

    // Under read-only every method reads as before and writes nothing.
    let missing = dir.s("missing/x");
    // Refused writes answer as upstream 0.171 does (measured).
    let denied = err(-32603, "Read-only file system (os error 30)");
    for (method, params, expected) in [
        ("fs/readFile", json!({"path": missing}), err(-32004, ENOENT)),
        ("fs/writeFile", json!({"path": missing, "dataBase64": "aGk="}), denied.clone()),
        ("fs/createDirectory", json!({"path": missing}), denied.clone()),
        ("fs/getMetadata", json!({"path": missing}), err(-32004, ENOENT)),
        ("fs/readDirectory", json!({"path": missing}), err(-32004, ENOENT)),
        ("fs/remove", json!({"path": dir.s("f")}), denied.clone()),
        (
            "fs/copy",
            json!({"sourcePath": dir.s("f"), "destinationPath": dir.s("g"), "recursive": false}),
            denied.clone(),
        ),
    ] {
        let mut params = params;
        params["sandbox"] = context.clone();
        assert_eq!(c.call(method, params), expected, "{method}");
    }
    assert!(dir.join("f").exists());
    assert!(!dir.join("g").exists());
    assert!(!dir.join("missing").exists());
}

#[test]
fn permission_denied_is_invalid_request() {
    let Some(mut c) = Conn::open_as_nobody() else {
        return;
    };
    let dir = TempDir::new();
    fs::write(dir.join("secret"), b"x").unwrap();
    fs::set_permissions(dir.join("secret"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::create_dir(dir.join("locked")).unwrap();
    fs::set_permissions(dir.join("locked"), fs::Permissions::from_mode(0o700)).unwrap();
    let denied = err(-32600, "Permission denied (os error 13)");
    assert_eq!(c.call("fs/readFile", json!({"path": dir.s("secret")})), denied);
    assert_eq!(c.call("fs/writeFile", json!({"path": dir.s("secret"), "dataBase64": ""})), denied);
    assert_eq!(c.call("fs/writeFile", json!({"path": dir.s("new"), "dataBase64": ""})), denied);
    assert_eq!(c.call("fs/createDirectory", json!({"path": dir.s("newdir")})), denied);
    assert_eq!(c.call("fs/readDirectory", json!({"path": dir.s("locked")})), denied);
    assert_eq!(c.call("fs/getMetadata", json!({"path": dir.s("locked/x")})), denied);
    assert_eq!(c.call("fs/remove", json!({"path": dir.s("secret")})), denied);
    assert_eq!(
        c.call("fs/copy", json!({"sourcePath": dir.s("secret"), "destinationPath": "/tmp/exec-server-denied-copy", "recursive": false})),
        denied
    );
    assert!(dir.join("secret").exists());
    assert!(!dir.join("new").exists());
    // What nobody may read still works.
    assert_eq!(
        c.call("fs/getMetadata", json!({"path": dir.s("secret")})).map(|m| m["isFile"].clone()),
        Ok(json!(true))
    );
}

/// §2.2 and §3.4 for the fs methods: params are decoded before the handshake gate, and
/// nothing touches the disk before the handshake completes.
#[test]
fn fs_methods_wait_for_the_handshake() {
    let daemon = common::Daemon::start(&[]);
    let mut client = common::Client::connect(&daemon.url);
    let dir = TempDir::new();
    let call = |client: &mut common::Client, method: &str, params: Value| {
        let response = client.call(method, params);
        (response["error"]["code"].clone(), response["error"]["message"].clone())
    };
    let methods = [
        ("fs/readFile", json!({"path": dir.s("f")})),
        ("fs/writeFile", json!({"path": dir.s("f"), "dataBase64": ""})),
        ("fs/createDirectory", json!({"path": dir.s("d")})),
        ("fs/getMetadata", json!({"path": dir.s("f")})),
        ("fs/readDirectory", json!({"path": dir.s("")})),
        ("fs/remove", json!({"path": dir.s("f")})),
        (
            "fs/copy",
            json!({"sourcePath": dir.s("f"), "destinationPath": dir.s("g"), "recursive": false}),
        ),
    ];
    assert_eq!(
        call(&mut client, "fs/readFile", json!({"path": "relative"})),
        (json!(-32602), json!(RELATIVE_PATH))
    );
    for (method, params) in &methods {
        assert_eq!(
            call(&mut client, method, params.clone()),
            (json!(-32600), json!("client must call initialize before using filesystem methods")),
            "{method}"
        );
    }
    let response = client.call("initialize", json!({"clientName": "test"}));
    assert!(response["result"]["sessionId"].is_string(), "{response}");
    for (method, params) in &methods {
        assert_eq!(
            call(&mut client, method, params.clone()),
            (json!(-32600), json!("client must send initialized before using filesystem methods")),
            "{method}"
        );
    }
    assert!(!dir.join("f").exists() && !dir.join("d").exists());
    client.send(&json!({"method": "initialized"}));
    assert_eq!(client.call("fs/createDirectory", json!({"path": dir.s("d")}))["result"], json!({}));
    assert!(dir.join("d").is_dir());
}
