//! Unit tests of processes: wire encoding, retention, and real children started through
//! `Processes` with a collecting `Notify`.

use std::collections::HashMap;
use std::thread;

use super::exit::*;
use super::kill::session_members;
use super::retention::*;
use super::wire::*;
use super::*;
use crate::b64;
use crate::uri::AbsolutePath;
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use serde_json::{json, Value};

/// Every wait in these tests ends by this deadline.
const DEADLINE: Duration = Duration::from_secs(20);

#[derive(Default)]
struct Collect {
    messages: Mutex<Vec<Value>>,
    changed: Condvar,
}

impl Notify for Collect {
    fn notify(&self, message: String) -> bool {
        assert!(!message.contains("jsonrpc"));
        let value = serde_json::from_str(&message).expect("a notification is JSON");
        lock(&self.messages).push(value);
        self.changed.notify_all();
        true
    }
}

impl Collect {
    /// The notifications of `id`, once its closed event has arrived.
    fn until_closed(&self, id: &str) -> Vec<Value> {
        let is_mine = |m: &Value| m["params"]["processId"] == id;
        let deadline = Instant::now() + DEADLINE;
        let (messages, closed) = wait_while(&self.changed, lock(&self.messages), deadline, |ms| {
            !ms.iter().any(|m| is_mine(m) && m["method"] == "process/closed")
        });
        let mut mine: Vec<Value> = messages.iter().filter(|m| is_mine(m)).cloned().collect();
        assert!(closed, "no closed event for {id}: {mine:?}");
        // The exit report (issue 18) is checked in tests/limits.rs; the v1 members here.
        for m in mine.iter_mut().filter(|m| m["method"] == "process/exited") {
            let params = m["params"].as_object_mut().expect("params");
            assert!(
                params.remove("reason").is_some_and(|r| r.is_string()),
                "no reason: {params:?}"
            );
            for key in ["wallTimeMs", "userCpuMs", "systemCpuMs", "maxRssKb"] {
                params.remove(key);
            }
            for key in ["stdoutBytes", "stderrBytes", "ptyBytes"] {
                params.remove(key);
            }
        }
        mine
    }

    fn output_of(&self, id: &str) -> String {
        let bytes: Vec<u8> = self
            .until_closed(id)
            .iter()
            .filter(|m| m["method"] == "process/output")
            .flat_map(|m| {
                BASE64
                    .decode(m["params"]["chunk"].as_str().expect("chunk is a string"))
                    .expect("base64")
            })
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

fn setup(config: Config) -> (Processes, Arc<Collect>, Arc<AtomicUsize>) {
    let sink = Arc::new(Collect::default());
    let live = Arc::new(AtomicUsize::new(0));
    (Processes::new(Arc::new(config), live.clone(), sink.clone()), sink, live)
}

fn params(id: &str, argv: &[&str]) -> StartParams {
    StartParams {
        process_id: id.into(),
        argv: argv.iter().map(|s| s.to_string()).collect(),
        cwd: AbsolutePath::from_path("/"),
        env: HashMap::from([("PATH".to_string(), "/usr/bin:/bin".to_string())]),
        tty: false,
        pipe_stdin: false,
        arg0: None,
        env_policy: None,
        metadata: None,
        sandbox: None,
        enforce_managed_network: false,
        managed_network: None,
        network_proxy: None,
        shell_snapshot: None,
    }
}

fn run(processes: &Processes, p: StartParams) {
    let id = p.process_id.clone();
    processes.start(p).expect("process starts");
    processes.announce(&id);
}

fn read(processes: &Processes, id: &str, after: u64, max: Option<u64>, wait: u64) -> ReadResponse {
    let p = ReadParams {
        process_id: id.into(),
        after_seq: Some(after),
        max_bytes: max,
        wait_ms: Some(wait),
    };
    processes.read(p).expect("read succeeds")
}

fn pid_of(processes: &Processes, id: &str) -> libc::pid_t {
    match processes.lookup(id) {
        Lookup::Running(proc) => proc.pid,
        _ => panic!("{id} is not running"),
    }
}

#[test]
fn base64_matches_the_crate() {
    let bytes: Vec<u8> = (0..300u32).map(|i| (i * 37 + i / 7) as u8).collect();
    for len in (0..20).chain([255, 256, 257, 299, 300]) {
        let mut out = b"x".to_vec();
        b64::encode(&bytes[..len], &mut out);
        assert_eq!(out[1..], *BASE64.encode(&bytes[..len]).as_bytes(), "length {len}");
    }
}

#[test]
fn output_message_matches_serde() {
    let id = "p\"1\u{e9}";
    let id_json = serde_json::to_string(id).expect("encodes");
    let message = output_message(&id_json, 7, Stream::Stderr, b"hi\n");
    let value: Value = serde_json::from_str(&message).expect("valid JSON");
    assert_eq!(
        value,
        json!({"method":"process/output","params":{"processId":id,"seq":7,"stream":"stderr","chunk":"aGkK"}})
    );
}

#[test]
fn signal_names_and_exit_codes() {
    assert_eq!(signal_name(9), "SIGKILL");
    assert_eq!(signal_name(15), "SIGTERM");
    assert_eq!(signal_name(1), "SIGHUP");
    assert_eq!(signal_name(31), "SIGSYS");
    assert_eq!(signal_name(34), "SIG34");
    assert_eq!(signal_name(0), "SIG0");
    assert_eq!(exit_from_status(7 << 8), Exit { code: 7, signal: None });
    assert_eq!(exit_from_status(9), Exit { code: 137, signal: Some("SIGKILL".into()) });
}

#[test]
fn retention_evicts_oldest_until_the_new_chunk_fits() {
    let mut r = Retention::new(10);
    r.push(1, Stream::Stdout, vec![1; 4], |_| {});
    r.push(2, Stream::Stderr, vec![2; 4], |_| {});
    r.push(3, Stream::Stdout, vec![3; 4], |_| {});
    assert_eq!(r.chunks.iter().map(|c| c.seq).collect::<Vec<_>>(), [2, 3]);
    assert_eq!(r.bytes, 8);
    r.push(5, Stream::Stdout, vec![5; 20], |_| {});
    assert_eq!(r.chunks.iter().map(|c| c.seq).collect::<Vec<_>>(), [5]);
    assert_eq!(r.bytes, 20);
}

#[test]
fn read_paging_follows_max_bytes() {
    let mut r = Retention::new(1 << 20);
    r.push(1, Stream::Stdout, vec![0; 3], |_| {});
    r.push(2, Stream::Stdout, vec![0; 3], |_| {});
    // seq 3 was an exit event, not output.
    r.push(4, Stream::Stdout, vec![0; 3], |_| {});
    let seqs = |page: Vec<&Retained>| page.iter().map(|c| c.seq).collect::<Vec<_>>();
    assert_eq!(seqs(r.page(0, None)), [1, 2, 4]);
    assert_eq!(seqs(r.page(0, Some(1))), [1]);
    assert_eq!(seqs(r.page(0, Some(0))), [1]);
    assert_eq!(seqs(r.page(0, Some(5))), [1]);
    assert_eq!(seqs(r.page(0, Some(6))), [1, 2]);
    assert_eq!(seqs(r.page(2, None)), [4]);
    assert_eq!(seqs(r.page(3, Some(1))), [4]);
    assert!(r.page(4, None).is_empty());
    assert!(r.has_after(3) && !r.has_after(4));
}

#[test]
fn params_decode_like_the_wire() {
    let start: StartParams = serde_json::from_str(
        r#"{"processId":"p","argv":["true"],"cwd":"/","env":{},"tty":false,"arg0":null,"pipeStdin":null,"extra":1}"#,
    )
    .expect("upstream start params decode");
    assert!(!start.pipe_stdin && start.arg0.is_none());
    let err = serde_json::from_str::<StartParams>(r#"{"argv":[],"cwd":"/","env":{},"tty":false}"#)
        .expect_err("processId is required");
    assert!(err.to_string().contains("missing field `processId`"), "{err}");
    let write: WriteParams =
        serde_json::from_str(r#"{"processId":"p","chunk":"aGkK","writeId":"w"}"#)
            .expect("write decodes");
    assert_eq!(write.chunk, b"hi\n");
    assert!(serde_json::from_str::<WriteParams>(r#"{"processId":"p","chunk":"!!"}"#).is_err());
    let read: ReadParams =
        serde_json::from_str(r#"{"processId":"p","afterSeq":null,"maxBytes":null}"#)
            .expect("nulls decode");
    assert_eq!((read.after_seq, read.max_bytes, read.wait_ms), (None, None, None));
    assert!(serde_json::from_str::<ReadParams>(r#"{"processId":"p","afterSeq":-1}"#).is_err());
}

#[test]
fn true_exits_then_closes() {
    let (processes, sink, _) = setup(Config::default());
    run(&processes, params("t", &["true"]));
    assert_eq!(
        sink.until_closed("t"),
        [
            json!({"method":"process/exited","params":{"processId":"t","seq":1,"exitCode":0,"sandboxDenied":false}}),
            json!({"method":"process/closed","params":{"processId":"t","seq":2}}),
        ]
    );
    let r = read(&processes, "t", 0, None, 0);
    assert!(r.chunks.is_empty() && r.exited && r.closed);
    assert_eq!((r.next_seq, r.exit_code, r.failure), (3, Some(0), None));
}

#[test]
fn section_5_example_yields_exactly_four_events() {
    let (processes, sink, _) = setup(Config::default());
    let script =
        r#"printf "event output\n"; sleep 0.1; printf "event err\n" >&2; sleep 0.1; exit 7"#;
    run(&processes, params("p1", &["sh", "-c", script]));
    assert_eq!(
        sink.until_closed("p1"),
        [
            json!({"method":"process/output","params":{"processId":"p1","seq":1,"stream":"stdout","chunk":"ZXZlbnQgb3V0cHV0Cg=="}}),
            json!({"method":"process/output","params":{"processId":"p1","seq":2,"stream":"stderr","chunk":"ZXZlbnQgZXJyCg=="}}),
            json!({"method":"process/exited","params":{"processId":"p1","seq":3,"exitCode":7,"sandboxDenied":false}}),
            json!({"method":"process/closed","params":{"processId":"p1","seq":4}}),
        ]
    );
}

#[test]
fn nothing_is_sent_before_announce_and_nothing_is_lost() {
    let (processes, sink, _) = setup(Config::default());
    processes.start(params("a", &["sh", "-c", "echo one; echo two >&2"])).expect("starts");
    // Wait (through read's long poll) until the process has closed.
    let deadline = Instant::now() + DEADLINE;
    while !read(&processes, "a", 0, None, 1000).closed {
        assert!(Instant::now() < deadline, "process never closed");
    }
    assert!(lock(&sink.messages).is_empty());
    processes.announce("a");
    let seqs: Vec<u64> =
        sink.until_closed("a").iter().map(|m| m["params"]["seq"].as_u64().expect("seq")).collect();
    assert_eq!(seqs, [1, 2, 3, 4]);
}

#[test]
fn long_poll_wakes_on_output_and_returns_at_once_after_exit() {
    let (processes, _, _) = setup(Config::default());
    run(&processes, params("w", &["sh", "-c", "sleep 0.3; echo x"]));
    let started = Instant::now();
    let r = read(&processes, "w", 0, None, 10_000);
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(r.chunks.len(), 1);
    assert_eq!((r.chunks[0].seq, r.chunks[0].chunk.as_str(), r.next_seq), (1, "eAo=", 2));
    let r = read(&processes, "w", 1, None, 10_000);
    assert!(r.exited && r.chunks.is_empty());
    // Idle deadline, capped by max_wait.
    let (processes, _, _) =
        setup(Config { max_wait: Duration::from_millis(200), ..Config::default() });
    run(&processes, params("idle", &["sleep", "100"]));
    let started = Instant::now();
    let r = read(&processes, "idle", 0, None, 60_000);
    assert!(!r.exited && r.chunks.is_empty() && r.next_seq == 1);
    assert!(
        started.elapsed() >= Duration::from_millis(200)
            && started.elapsed() < Duration::from_secs(5)
    );
    processes.kill_all(super::EndCause::DaemonShutdown);
}

#[test]
fn start_checks_and_spawn_errors() {
    let (processes, _, live) = setup(Config { max_processes: 1, ..Config::default() });
    let err = |p| processes.start(p).expect_err("start fails");
    assert_eq!(err(params("x", &[])), RpcError::invalid_params("argv must not be empty"));
    let mut p = params("x", &["true"]);
    p.cwd = AbsolutePath::parse("file://elsewhere/tmp").expect("a well-formed URI");
    assert_eq!(
        err(p),
        RpcError::invalid_params(
            "cwd URI `file://elsewhere/tmp` is not valid on this exec-server host: 'file://elsewhere/tmp' is invalid on 'linux'"
        )
    );
    assert_eq!(
        err(params("x", &["no-such-program-here"])),
        RpcError::internal("No such file or directory (os error 2)")
    );
    let mut p = params("x", &["true"]);
    p.cwd = AbsolutePath::from_path("/etc/passwd");
    assert_eq!(err(p), RpcError::internal("Not a directory (os error 20)"));
    let mut p = params("x", &["true"]);
    p.cwd = AbsolutePath::from_path("/no/such/dir");
    assert_eq!(err(p), RpcError::internal("No such file or directory (os error 2)"));
    assert_eq!(err(params("x", &["tr\0ue"])).code, -32603);
    assert_eq!(live.load(Ordering::SeqCst), 0);
    run(&processes, params("x", &["sleep", "100"]));
    assert_eq!(err(params("x", &["true"])), RpcError::invalid_request("process x already exists"));
    assert_eq!(err(params("y", &["true"])), RpcError::internal("process limit reached (1)"));
    processes.kill_all(super::EndCause::DaemonShutdown);
    assert_eq!(live.load(Ordering::SeqCst), 0);
    assert_eq!(
        processes
            .read(ReadParams {
                process_id: "x".into(),
                after_seq: None,
                max_bytes: None,
                wait_ms: None
            })
            .expect_err("gone"),
        RpcError::invalid_request("unknown process id x")
    );
}

#[test]
fn env_cwd_arg0_and_path_lookup() {
    let (processes, sink, _) = setup(Config::default());
    let mut p = params("env", &["env"]);
    p.env.insert("A".into(), "1".into());
    p.cwd = AbsolutePath::from_path("/tmp");
    run(&processes, p);
    let mut lines: Vec<String> = sink.output_of("env").lines().map(String::from).collect();
    lines.sort();
    assert_eq!(lines, ["A=1", "PATH=/usr/bin:/bin"]);

    let mut p = params("arg0", &["sh", "-c", r#"pwd; tr '\0' ' ' < /proc/$$/cmdline"#]);
    p.arg0 = Some("renamed".into());
    p.cwd = AbsolutePath::from_path("/tmp");
    run(&processes, p);
    assert_eq!(sink.output_of("arg0"), "/tmp\nrenamed -c pwd; tr '\\0' ' ' < /proc/$$/cmdline ");

    let mut p = params("nopath", &["sh", "-c", "true"]);
    p.env.insert("PATH".into(), "/nonexistent".into());
    assert_eq!(processes.start(p).expect_err("not found in child PATH").code, -32603);
}

#[test]
fn writes_reach_stdin_in_order() {
    let (processes, sink, _) = setup(Config::default());
    let mut p = params("cat", &["cat"]);
    p.pipe_stdin = true;
    run(&processes, p);
    let write = |id: &str, bytes: &[u8]| {
        processes.write(WriteParams {
            process_id: id.into(),
            chunk: bytes.to_vec(),
            write_id: None,
        })
    };
    for part in ["a", "b", "c\n"] {
        assert_eq!(write("cat", part.as_bytes()).expect("write").status, WriteStatus::Accepted);
    }
    let deadline = Instant::now() + DEADLINE;
    let echoed = loop {
        let chunks = read(&processes, "cat", 0, None, 1000).chunks;
        let text: Vec<u8> = chunks
            .iter()
            .flat_map(|c| base64::engine::general_purpose::STANDARD.decode(&c.chunk).expect("b64"))
            .collect();
        if text.len() >= 4 {
            break text;
        }
        assert!(Instant::now() < deadline, "cat never echoed");
    };
    assert!(echoed.starts_with(b"abc\n"));
    assert!(
        processes
            .terminate(TerminateParams { process_id: "cat".into() })
            .expect("terminate")
            .running
    );
    assert_eq!(write("cat", b"x"), Err(RpcError::internal("failed to write to process stdin")));
    assert_eq!(write("nope", b"x").expect("write").status, WriteStatus::UnknownProcess);

    run(&processes, params("closed", &["sh", "-c", "cat; echo eof"]));
    assert_eq!(write("closed", b"x").expect("write").status, WriteStatus::StdinClosed);
    assert_eq!(sink.output_of("closed"), "eof\n");
}

#[test]
fn pty_has_size_echo_and_a_controlling_terminal() {
    let (processes, sink, _) = setup(Config::default());
    let mut p = params("tty", &["sh", "-c", "stty size; tty; read line; echo got:$line"]);
    p.tty = true;
    run(&processes, p);
    let deadline = Instant::now() + DEADLINE;
    let mut seen = String::new();
    let mut after = 0;
    while !seen.contains("/dev/pts/") {
        assert!(Instant::now() < deadline, "no tty output: {seen:?}");
        let r = read(&processes, "tty", after, None, 1000);
        for c in r.chunks {
            assert_eq!(c.stream, Stream::Pty);
            seen += &String::from_utf8_lossy(&BASE64.decode(&c.chunk).expect("base64"));
            after = c.seq;
        }
    }
    let status = processes.write(WriteParams {
        process_id: "tty".into(),
        chunk: b"hello\n".to_vec(),
        write_id: None,
    });
    assert_eq!(status.expect("write").status, WriteStatus::Accepted);
    let out = sink.output_of("tty");
    assert!(out.starts_with("24 80\r\n/dev/pts/"), "{out:?}");
    assert!(out.contains("hello\r\ngot:hello\r\n"), "{out:?}");
}

#[test]
fn terminate_kills_the_whole_tree() {
    let (processes, sink, live) = setup(Config::default());
    run(&processes, params("tree", &["sh", "-c", "sleep 100 & sleep 100"]));
    let pid = pid_of(&processes, "tree");
    // No event tells when the shell has forked; poll /proc within the deadline.
    let deadline = Instant::now() + DEADLINE;
    while session_members(pid).len() < 3 {
        assert!(Instant::now() < deadline, "tree never formed");
        thread::sleep(Duration::from_millis(10));
    }
    let r = processes.terminate(TerminateParams { process_id: "tree".into() }).expect("terminate");
    assert!(r.running);
    let events = sink.until_closed("tree");
    assert_eq!(
        events[0],
        json!({"method":"process/exited","params":{"processId":"tree","seq":1,"exitCode":137,"signal":"SIGKILL","sandboxDenied":false}})
    );
    assert_eq!(events.len(), 2);
    assert!(session_members(pid).is_empty());
    let r = processes.terminate(TerminateParams { process_id: "tree".into() }).expect("terminate");
    assert!(!r.running);
    let read = read(&processes, "tree", 0, None, 0);
    assert_eq!((read.exit_code, read.signal.as_deref()), (Some(137), Some("SIGKILL")));
    processes.kill_all(super::EndCause::DaemonShutdown);
    assert_eq!(live.load(Ordering::SeqCst), 0);
}

#[test]
fn kill_all_kills_trees_whose_leader_exited() {
    let (processes, sink, live) = setup(Config::default());
    // The leader exits at once; the background sleep keeps stdout open.
    run(&processes, params("orphan", &["sh", "-c", "sleep 100 & echo started"]));
    let pid = pid_of(&processes, "orphan");
    let deadline = Instant::now() + DEADLINE;
    while !read(&processes, "orphan", 0, None, 1000).exited {
        assert!(Instant::now() < deadline, "leader never exited");
    }
    assert!(!read(&processes, "orphan", 0, None, 0).closed);
    processes.kill_all(super::EndCause::DaemonShutdown);
    assert_eq!(live.load(Ordering::SeqCst), 0);
    // The output ends once the background sleep is dead.
    assert_eq!(sink.output_of("orphan"), "started\n");
    assert!(session_members(pid).is_empty());
}

#[test]
fn finished_entries_are_removed_after_retention() {
    let config = Config { exited_retention: Duration::from_millis(50), ..Config::default() };
    let (processes, sink, live) = setup(config);
    run(&processes, params("gone", &["true"]));
    sink.until_closed("gone");
    // No event marks the removal, so poll for it within the deadline.
    let deadline = Instant::now() + DEADLINE;
    while live.load(Ordering::SeqCst) != 0 {
        assert!(Instant::now() < deadline, "entry never removed");
        thread::sleep(Duration::from_millis(10));
    }
    let p =
        ReadParams { process_id: "gone".into(), after_seq: None, max_bytes: None, wait_ms: None };
    assert_eq!(
        processes.read(p).expect_err("removed"),
        RpcError::invalid_request("unknown process id gone")
    );
    let w = processes
        .write(WriteParams { process_id: "gone".into(), chunk: vec![], write_id: None })
        .expect("write");
    assert_eq!(w.status, WriteStatus::UnknownProcess);
    run(&processes, params("gone", &["true"]));
}

#[test]
fn the_hand_written_read_result_matches_serde() {
    let (processes, sink, _) = setup(Config::default());
    run(&processes, params("r", &["sh", "-c", "printf 'a\\x00\\xff'; printf e >&2; exit 3"]));
    sink.until_closed("r");
    for (after, max) in [(0, None), (0, Some(1)), (1, None), (9, None)] {
        let typed = serde_json::to_value(read(&processes, "r", after, max, 0)).expect("encodes");
        let p = ReadParams {
            process_id: "r".into(),
            after_seq: Some(after),
            max_bytes: max,
            wait_ms: None,
        };
        let mut text = String::new();
        processes.read_into(p, &mut text).expect("read succeeds");
        let written: Value = serde_json::from_str(&text).expect("valid JSON");
        assert_eq!(written, typed, "after {after}, max {max:?}");
    }
}
