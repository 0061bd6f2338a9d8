//! Verifies the output spool of issue 15 over the real binary: output produced while a
//! session is detached comes back whole and in order through `process/read`; a spool that
//! is too small, turned off, unusable or failing mid-stream drops the oldest output and says
//! so with `droppedBeforeSeq`, while the chunks it kept are exact; the daemon keeps serving
//! and warns once per process; and no spool file outlives its process entry or the daemon.

mod common;

use std::path::{Path, PathBuf};
use std::time::Instant;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use common::{children, eventually, read, start, Client, Daemon, DEADLINE};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

const MIB: usize = 1 << 20;

/// A directory under the system temp dir, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let path = std::env::temp_dir()
            .join(format!("exec-server-spool-it-{tag}-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir(path)
    }

    fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    fn arg(&self, name: &str) -> String {
        self.join(name).display().to_string()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `len` deterministic bytes that differ at every position (xorshift), written to `path`.
fn data_file(path: &Path, len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut data = Vec::with_capacity(len + 8);
    while data.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        data.extend_from_slice(&x.to_le_bytes());
    }
    data.truncate(len);
    std::fs::write(path, &data).expect("write data file");
    data
}

fn cat(id: &str, path: &Path) -> Value {
    json!({"processId": id, "argv": ["/bin/cat", path], "cwd": "/", "env": {}, "tty": false})
}

/// The daemon's threads named `name` (e.g. the per-process output readers).
fn threads_named(pid: u32, name: &str) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("task dir")
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
        .filter(|comm| comm.trim_end() == name)
        .count()
}

/// Starts `params` on a new session and drops the connection at once: the session
/// detaches with the process running and nobody reading. Once the process is gone (reaped
/// by the daemon), resumes the session on a new connection and waits there for the exit.
fn run_detached(daemon: &Daemon, params: Value) -> Client {
    let id = params["processId"].clone();
    let (mut client, session) = daemon.session();
    start(&mut client, params);
    drop(client);
    eventually("the process to end while detached", || children(daemon.pid()).is_empty());
    // Its pipes may still hold output when it is reaped: once the readers are gone, all of
    // it is numbered while detached (a chunk read after the resume would be sent to the
    // resumed connection, count as delivered, and not be spooled).
    eventually("the output to be read while detached", || {
        threads_named(daemon.pid(), "process-output") == 0
    });
    let (mut resumed, response) = daemon.resume(&session);
    assert_eq!(response["result"]["sessionId"], json!(session), "{response}");
    // With `afterSeq` beyond any output, the long poll answers only at the exit; output
    // read after the exit may still follow until closed.
    let deadline = Instant::now() + DEADLINE;
    loop {
        let r =
            read(&mut resumed, json!({"processId": id, "afterSeq": 1u64 << 60, "waitMs": 1000}));
        if r["closed"] == true {
            assert_eq!(r["exitCode"], 0, "{r}");
            break;
        }
        assert!(Instant::now() < deadline, "process did not close in time");
    }
    resumed
}

/// What reading a finished process from `afterSeq` to its end gave.
struct ReadBack {
    /// (seq, payload) in the order received.
    chunks: Vec<(u64, Vec<u8>)>,
    /// `droppedBeforeSeq` of each response that had one, with the `afterSeq` it answered.
    marks: Vec<(u64, u64)>,
    responses: usize,
}

impl ReadBack {
    fn bytes(&self) -> Vec<u8> {
        self.chunks.iter().flat_map(|(_, b)| b.iter().copied()).collect()
    }
}

/// Follows `nextSeq` like a client until a page comes back empty (the process has exited).
fn read_back(client: &mut Client, id: &str, max_bytes: Option<u64>) -> ReadBack {
    let mut back = ReadBack { chunks: Vec::new(), marks: Vec::new(), responses: 0 };
    let mut after = 0u64;
    loop {
        let r = read(client, json!({"processId": id, "afterSeq": after, "maxBytes": max_bytes}));
        back.responses += 1;
        if let Some(mark) = r.get("droppedBeforeSeq") {
            back.marks.push((after, mark.as_u64().expect("droppedBeforeSeq is a u64")));
        }
        let chunks = r["chunks"].as_array().expect("chunks");
        if chunks.is_empty() {
            assert_eq!(r["closed"], true, "{r}");
            return back;
        }
        for c in chunks {
            let seq = c["seq"].as_u64().expect("seq");
            assert!(seq > after, "seq {seq} after {after}");
            let bytes = BASE64.decode(c["chunk"].as_str().expect("chunk")).expect("base64");
            back.chunks.push((seq, bytes));
            after = seq;
        }
        assert_eq!(r["nextSeq"], after + 1);
    }
}

/// Seqs ascend with no gap but the one of the exit event, which output read after the
/// exit may follow (PROTOCOL.md §4.2).
fn assert_contiguous(back: &ReadBack) {
    let skipped: u64 = back.chunks.windows(2).map(|w| w[1].0 - w[0].0 - 1).sum();
    assert!(skipped <= 1, "{skipped} seqs missing between the kept chunks");
}

fn sha256(bytes: &[u8]) -> Vec<u8> {
    Sha256::digest(bytes).to_vec()
}

fn vm_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("status field")
}

/// The daemon's descriptors that point into `dir` (an unlinked spool file shows as
/// `<dir>/#<inode> (deleted)`).
fn fds_into(pid: u32, dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("fd dir")
        .flatten()
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .filter(|target| target.starts_with(dir))
        .collect()
}

fn entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default()
}

fn spool_warnings(daemon: &Daemon) -> usize {
    daemon.stderr().lines().filter(|l| l.contains("output spool in")).count()
}

#[test]
fn fifty_mib_while_detached_come_back_whole_and_in_order() {
    let tmp = TempDir::new("whole");
    let data = data_file(&tmp.join("data"), 50 * MIB);
    let spool = tmp.arg("spool");
    let daemon = Daemon::start(&["--spool-dir", &spool, "--session-ttl-secs", "60"]);
    let mut client = run_detached(&daemon, cat("big", &tmp.join("data")));
    // The 49 MiB beyond the retained window are on disk, not in the daemon's memory.
    let rss = vm_kib(daemon.pid(), "VmRSS:");
    assert!(rss < 32 << 10, "daemon RSS {rss} KiB after a 50 MiB detached burst");
    assert_eq!(fds_into(daemon.pid(), &tmp.join("spool")).len(), 1, "one spool file");
    let back = read_back(&mut client, "big", None);
    assert!(back.marks.is_empty(), "nothing was dropped: {:?}", back.marks);
    assert_eq!(back.chunks[0].0, 1);
    assert_contiguous(&back);
    let bytes = back.bytes();
    assert_eq!(bytes.len(), data.len());
    assert_eq!(sha256(&bytes), sha256(&data));
    // Pages from the spool are capped (4 MiB of payload) even without maxBytes.
    assert!(back.responses > 50 / 4, "{} responses", back.responses);
    // With a small maxBytes, a page from the spool follows the §4.3 rule.
    let r = read(&mut client, json!({"processId": "big", "afterSeq": 10, "maxBytes": 1}));
    assert_eq!(r["chunks"].as_array().expect("chunks").len(), 1);
    assert_eq!(r["chunks"][0]["seq"], 11);
    assert_eq!(r["nextSeq"], 12);
    assert!(r.get("droppedBeforeSeq").is_none());
    assert_eq!(spool_warnings(&daemon), 0);
}

#[test]
fn a_small_or_absent_spool_drops_the_oldest_and_says_where() {
    let tmp = TempDir::new("small");
    let data = data_file(&tmp.join("data"), 20 * MIB);
    let spool = tmp.arg("spool");
    // (per-process spool bytes, least and most payload kept: the spool plus the 1 MiB
    // retained in memory, less record headers and whole dropped blocks).
    for (limit, least, most) in [("4194304", 4 * MIB, 5 * MIB), ("0", MIB / 2, MIB)] {
        let daemon = Daemon::start(&["--spool-dir", &spool, "--spool-bytes-per-process", limit]);
        let mut client = run_detached(&daemon, cat("p", &tmp.join("data")));
        let back = read_back(&mut client, "p", None);
        // One explicit mark, on the first page, naming the first kept chunk.
        let first = back.chunks[0].0;
        assert!(first > 1);
        assert_eq!(back.marks, [(0, first)], "limit {limit}");
        assert_contiguous(&back);
        // What was kept is exactly the end of the output.
        let kept = back.bytes();
        assert!((least..=most).contains(&kept.len()), "limit {limit}: kept {}", kept.len());
        assert_eq!(sha256(&kept), sha256(&data[data.len() - kept.len()..]), "limit {limit}");
        // The mark appears exactly when the asked range reaches into the loss.
        let r = read(&mut client, json!({"processId": "p", "afterSeq": first - 2, "maxBytes": 1}));
        assert_eq!(
            (&r["droppedBeforeSeq"], &r["chunks"][0]["seq"]),
            (&json!(first), &json!(first))
        );
        let r = read(&mut client, json!({"processId": "p", "afterSeq": first - 1, "maxBytes": 1}));
        assert!(r.get("droppedBeforeSeq").is_none(), "{r}");
        assert_eq!(r["chunks"][0]["seq"], first);
        assert_eq!(spool_warnings(&daemon), 0);
    }
}

#[test]
fn output_a_reader_keeps_up_with_is_not_spooled_and_its_gap_is_marked() {
    let tmp = TempDir::new("live");
    let data = data_file(&tmp.join("data"), 20 * MIB);
    let spool = tmp.arg("spool");
    let daemon = Daemon::start(&["--spool-dir", &spool]);
    let (mut client, _) = daemon.session();
    let response = client.call("process/start", cat("live", &tmp.join("data")));
    assert_eq!(
        response["result"],
        json!({"processId": "live", "sandboxType": "none"}),
        "{response}"
    );
    let mut live = Vec::new();
    loop {
        let m = client.recv();
        match m["method"].as_str() {
            Some("process/output") => live
                .extend(BASE64.decode(m["params"]["chunk"].as_str().expect("chunk")).expect("b64")),
            Some("process/closed") => break,
            _ => {}
        }
    }
    assert_eq!(sha256(&live), sha256(&data));
    // Everything went out as notifications: nothing was written to disk.
    assert!(fds_into(daemon.pid(), &tmp.join("spool")).is_empty());
    let back = read_back(&mut client, "live", None);
    let first = back.chunks[0].0;
    assert_eq!(back.marks, [(0, first)]);
    let kept = back.bytes();
    assert!(kept.len() <= MIB, "only the retained window: {}", kept.len());
    assert_eq!(sha256(&kept), sha256(&data[data.len() - kept.len()..]));
}

#[test]
fn an_unusable_spool_dir_keeps_serving_memory_only_and_warns_once_per_process() {
    let tmp = TempDir::new("unusable");
    let data = data_file(&tmp.join("data"), 5 * MIB);
    std::fs::write(tmp.join("file"), b"not a directory").expect("write");
    // A path below a regular file: no one, not even root, can create it.
    let spool = tmp.arg("file/spool");
    let daemon = Daemon::start(&["--spool-dir", &spool]);
    assert_eq!(spool_warnings(&daemon), 0);
    for id in ["a", "b"] {
        let mut client = run_detached(&daemon, cat(id, &tmp.join("data")));
        let back = read_back(&mut client, id, None);
        let first = back.chunks[0].0;
        assert_eq!(back.marks, [(0, first)]);
        let kept = back.bytes();
        assert!(kept.len() <= MIB && kept.len() >= MIB / 2, "kept {}", kept.len());
        assert_eq!(sha256(&kept), sha256(&data[data.len() - kept.len()..]));
        let r = client.call("fs/getMetadata", json!({"path": tmp.0}));
        assert_eq!(r["result"]["isDirectory"], true, "{r}");
    }
    eventually("one warning per process", || spool_warnings(&daemon) == 2);
    assert!(daemon.stderr().contains(&format!("output spool in {spool} failed")));
}

#[test]
fn a_write_error_mid_stream_falls_back_to_memory_and_reports_the_loss() {
    let tmp = TempDir::new("efbig");
    let data = data_file(&tmp.join("data"), 12 * MIB);
    let spool = tmp.arg("spool");
    // Writes past 2 MiB of a file fail with EFBIG instead of raising SIGXFSZ: the
    // daemon inherits the ignored disposition (its children get the default back).
    // SAFETY: setting a signal disposition of this test process.
    unsafe { libc::signal(libc::SIGXFSZ, libc::SIG_IGN) };
    let daemon = Daemon::start(&["--spool-dir", &spool]);
    let limit = libc::rlimit { rlim_cur: 2 * MIB as u64, rlim_max: 2 * MIB as u64 };
    // SAFETY: prlimit on our own child with a valid new limit and no old one wanted.
    let set = unsafe {
        libc::prlimit(daemon.pid() as i32, libc::RLIMIT_FSIZE, &limit, std::ptr::null_mut())
    };
    assert_eq!(set, 0, "prlimit: {}", std::io::Error::last_os_error());
    let mut client = run_detached(&daemon, cat("p", &tmp.join("data")));
    let back = read_back(&mut client, "p", None);
    let first = back.chunks[0].0;
    assert_eq!(back.marks, [(0, first)]);
    let kept = back.bytes();
    assert!(kept.len() <= MIB, "memory only after the failure: kept {}", kept.len());
    assert_eq!(sha256(&kept), sha256(&data[data.len() - kept.len()..]));
    assert_eq!(spool_warnings(&daemon), 1);
    assert!(daemon.stderr().contains("File too large"), "{}", daemon.stderr());
    assert!(fds_into(daemon.pid(), &tmp.join("spool")).is_empty(), "the broken file is closed");
}

#[test]
fn no_spool_file_outlives_its_entry_or_the_daemon() {
    let tmp = TempDir::new("cleanup");
    data_file(&tmp.join("data"), 5 * MIB);
    let spool_dir = tmp.join("spool");
    std::fs::create_dir_all(&spool_dir).expect("mkdir");
    // Left by a crashed daemon (pid_max is at most 2^22), and a file that is not ours.
    std::fs::write(spool_dir.join("exec-server-99999999-1.spool"), b"stale").expect("write");
    std::fs::write(spool_dir.join("notes.txt"), b"keep").expect("write");
    let spool = tmp.arg("spool");
    let mut daemon = Daemon::start(&["--spool-dir", &spool, "--exited-retention-secs", "1"]);
    assert_eq!(entries(&spool_dir), ["notes.txt"], "the stale spool file is removed at start");
    std::fs::remove_file(spool_dir.join("notes.txt")).expect("remove");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&spool_dir).expect("spool dir").permissions().mode();
    assert_eq!(mode & 0o777, 0o700);

    let mut client = run_detached(&daemon, cat("p", &tmp.join("data")));
    assert_eq!(fds_into(daemon.pid(), &spool_dir).len(), 1, "the spool is in use");
    assert!(entries(&spool_dir).is_empty(), "the spool file has no name");
    // Closed, then removed one second later: the spool goes with the entry.
    eventually("the entry's removal", || {
        let r = client.call("process/read", json!({"processId": "p"}));
        r.get("error").is_some()
    });
    eventually("the spool file to be closed", || fds_into(daemon.pid(), &spool_dir).is_empty());

    // A spool in use when the daemon is stopped.
    let mut client = run_detached(&daemon, cat("q", &tmp.join("data")));
    assert_eq!(fds_into(daemon.pid(), &spool_dir).len(), 1);
    drop(client.call("process/read", json!({"processId": "q"})));
    assert_eq!(daemon.terminate().code(), Some(0));
    assert!(entries(&spool_dir).is_empty());
}
