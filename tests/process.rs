//! Verifies processes over the real binary (PROTOCOL.md §4, §5 and the process parts of §3.6):
//! every "Processes" item of the §11 checklist, resume and TTL with processes, byte-exact bulk
//! output, PTY job-control tree kill, bounded memory under a slow reader, and no leaked
//! descriptors, threads or zombies.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use common::{
    all_pids, children, decode, error, eventually, fds, merge, output, read, sh, start,
    start_params, stat, status_kib, Client, Daemon, DEADLINE, PATH,
};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

thread_local! {
    /// Notifications `until_closed` received for other processes, kept for their turn.
    static STASHED: std::cell::RefCell<Vec<Value>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Every notification of `id` up to and including its closed event, in arrival order.
/// Notifications of other processes are kept for a later call; responses are dropped.
fn until_closed(client: &mut Client, id: &str) -> Vec<Value> {
    let mut mine: Vec<Value> = STASHED.with_borrow_mut(|stash| {
        let (mine, others) =
            std::mem::take(stash).into_iter().partition(|m| m["params"]["processId"] == id);
        *stash = others;
        mine
    });
    if mine.iter().any(|m| m["method"] == "process/closed") {
        return mine;
    }
    loop {
        let message = client.recv();
        if message.get("method").is_none() {
            continue;
        }
        if message["params"]["processId"] != id {
            STASHED.with_borrow_mut(|stash| stash.push(message));
            continue;
        }
        let closed = message["method"] == "process/closed";
        mine.push(message);
        if closed {
            return mine;
        }
    }
}

/// Live (non-zombie) processes in session `sid`.
fn session_members(sid: u32) -> Vec<u32> {
    all_pids()
        .into_iter()
        .filter(|&pid| stat(pid).is_some_and(|f| f[0] != "Z" && f[3] == sid.to_string()))
        .collect()
}

#[test]
fn true_exits_then_closes_and_the_response_comes_first() {
    let daemon = Daemon::start(&[]);
    let (mut client, _) = daemon.session();
    // Raw upstream params, with `arg0: null`.
    let id = client.request(
        "process/start",
        json!({"processId":"t","argv":["true"],"cwd":"/","env":{"PATH":PATH},"tty":false,"pipeStdin":false,"arg0":null}),
    );
    assert_eq!(
        client.recv(),
        json!({"id": id, "result": {"processId": "t", "sandboxType": "none"}})
    );
    assert_eq!(
        common::v1_exit(client.recv()),
        json!({"method":"process/exited","params":{"processId":"t","seq":1,"exitCode":0,"sandboxDenied":false}})
    );
    assert_eq!(
        client.recv(),
        json!({"method":"process/closed","params":{"processId":"t","seq":2}})
    );
    // One-shot latency, start request to closed notification (reported, not asserted).
    let mut samples: Vec<Duration> = (0..20)
        .map(|i| {
            let t = Instant::now();
            start(&mut client, start_params(&format!("l{i}"), &["/bin/true"]));
            until_closed(&mut client, &format!("l{i}"));
            t.elapsed()
        })
        .collect();
    samples.sort();
    eprintln!("/bin/true start -> closed: median {:?}, max {:?}", samples[10], samples[19]);
}

#[test]
fn section_5_example_yields_exactly_four_notifications() {
    let daemon = Daemon::start(&[]);
    let (mut client, _) = daemon.session();
    let script =
        r#"printf "event output\n"; sleep 0.1; printf "event err\n" >&2; sleep 0.1; exit 7"#;
    start(&mut client, sh("p1", script));
    let mut events = until_closed(&mut client, "p1");
    events[2] = common::v1_exit(events[2].clone());
    assert_eq!(
        events,
        [
            json!({"method":"process/output","params":{"processId":"p1","seq":1,"stream":"stdout","chunk":"ZXZlbnQgb3V0cHV0Cg=="}}),
            json!({"method":"process/output","params":{"processId":"p1","seq":2,"stream":"stderr","chunk":"ZXZlbnQgZXJyCg=="}}),
            json!({"method":"process/exited","params":{"processId":"p1","seq":3,"exitCode":7,"sandboxDenied":false}}),
            json!({"method":"process/closed","params":{"processId":"p1","seq":4}}),
        ]
    );
}

#[test]
fn start_checks_give_the_contract_errors() {
    let daemon = Daemon::start(&[]);
    let (mut client, _) = daemon.session();
    for field in ["processId", "argv", "cwd", "env", "tty"] {
        let mut params = start_params("x", &["true"]);
        params.as_object_mut().expect("object").remove(field);
        let (code, message) = error(&client.call("process/start", params));
        assert_eq!(code, -32602);
        assert!(message.contains(&format!("missing field `{field}`")), "{message}");
    }
    let (code, message) = error(&client.call("process/start", start_params("x", &[])));
    assert_eq!((code, message.as_str()), (-32602, "argv must not be empty"));
    let relative = merge(start_params("x", &["true"]), json!({"cwd": "tmp"}));
    let (code, message) = error(&client.call("process/start", relative));
    // A relative cwd is neither a native absolute path nor a URI (upstream 0.171's text).
    assert_eq!((code, message.as_str()), (-32602, "invalid URI: relative URL without a base"));

    let missing = start_params("x", &["/no/such/program"]);
    let (code, message) = error(&client.call("process/start", missing));
    assert_eq!((code, message.as_str()), (-32603, "No such file or directory (os error 2)"));
    let missing_cwd = merge(start_params("x", &["true"]), json!({"cwd": "/no/such/dir"}));
    let (code, message) = error(&client.call("process/start", missing_cwd));
    assert_eq!((code, message.as_str()), (-32603, "No such file or directory (os error 2)"));
    let file_cwd = merge(start_params("x", &["true"]), json!({"cwd": "/etc/passwd"}));
    assert_eq!(error(&client.call("process/start", file_cwd)).0, -32603);
    let nul = start_params("x", &["sh", "-c", "tr\0ue"]);
    assert_eq!(error(&client.call("process/start", nul)).0, -32603);
    let nul_env = merge(start_params("x", &["true"]), json!({"env": {"A": "b\u{0}c"}}));
    assert_eq!(error(&client.call("process/start", nul_env)).0, -32603);

    // The id stayed free after every failure.
    start(&mut client, start_params("x", &["sleep", "100"]));
    let (code, message) = error(&client.call("process/start", start_params("x", &["true"])));
    assert_eq!((code, message.as_str()), (-32600, "process x already exists"));
    client.call("process/terminate", json!({"processId": "x"}));
    until_closed(&mut client, "x");
    // Exited but retained: still taken.
    let (code, message) = error(&client.call("process/start", start_params("x", &["true"])));
    assert_eq!((code, message.as_str()), (-32600, "process x already exists"));
}

#[test]
fn seqs_are_contiguous_across_streams_and_closed_is_last() {
    let daemon = Daemon::start(&[]);
    let (mut client, _) = daemon.session();
    let script = "i=0; while [ $i -lt 300 ]; do echo out$i; echo err$i >&2; i=$((i+1)); done";
    start(&mut client, sh("s", script));
    let events = until_closed(&mut client, "s");
    for (i, event) in events.iter().enumerate() {
        assert_eq!(event["params"]["seq"], json!(i as u64 + 1), "{event}");
    }
    // Output read after the exit may follow it (§4.2); closed is always last.
    assert_eq!(events.iter().filter(|m| m["method"] == "process/exited").count(), 1);
    assert_eq!(events.last().expect("events")["method"], "process/closed");
    let stdout: Vec<u8> = events
        .iter()
        .filter(|m| m["params"]["stream"] == "stdout")
        .flat_map(|m| decode(&m["params"]["chunk"]))
        .collect();
    let expected: String = (0..300).map(|i| format!("out{i}\n")).collect();
    assert_eq!(String::from_utf8_lossy(&stdout), expected);
}

#[test]
fn bulk_output_arrives_complete_and_byte_exact() {
    const BYTES: usize = 100_000_000;
    let dir = std::env::temp_dir().join(format!("exec-server-bulk-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("data");
    // Pseudo-random bytes (xorshift), so every byte value and invalid UTF-8 appear.
    let mut data = vec![0u8; BYTES];
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for chunk in data.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    let expected = Sha256::digest(&data);
    std::fs::write(&file, &data).expect("write data");
    drop(data);

    let daemon = Daemon::start(&[]);
    let (mut client, _) = daemon.session();
    let started = Instant::now();
    start(&mut client, start_params("bulk", &["cat", file.to_str().expect("utf-8 path")]));
    let mut hash = Sha256::new();
    let mut total = 0;
    let mut next_seq = 1;
    loop {
        let message = client.recv();
        if message["params"]["processId"] != "bulk" {
            continue;
        }
        assert_eq!(message["params"]["seq"], json!(next_seq));
        next_seq += 1;
        match message["method"].as_str() {
            Some("process/output") => {
                let bytes = decode(&message["params"]["chunk"]);
                assert!(bytes.len() <= 64 << 10);
                total += bytes.len();
                hash.update(&bytes);
            }
            Some("process/exited") => assert_eq!(message["params"]["exitCode"], 0),
            _ => break,
        }
    }
    let elapsed = started.elapsed();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(total, BYTES);
    assert_eq!(hash.finalize(), expected);
    eprintln!(
        "streamed {BYTES} bytes in {elapsed:?}: {:.0} MB/s",
        BYTES as f64 / elapsed.as_secs_f64() / 1e6
    );
}

#[test]
fn non_utf8_bytes_survive() {
    let daemon = Daemon::start(&[]);
    let (mut client, _) = daemon.session();
    start(&mut client, sh("b", r"printf '\377\376\000\200'"));
    let events = until_closed(&mut client, "b");
    assert_eq!(output(&events), [0xff, 0xfe, 0x00, 0x80]);
    let r = read(&mut client, json!({"processId": "b"}));
    assert_eq!(r["chunks"], json!([{"seq": 1, "stream": "stdout", "chunk": "//4AgA=="}]));
}

#[test]
fn read_defaults_next_seq_and_max_bytes() {
    let daemon = Daemon::start(&[]);
    let (mut client, _) = daemon.session();
    // The last sleep lets "c" be read before the exit is (output may follow exit, §4.2).
    start(&mut client, sh("r", "echo a; sleep 0.1; echo b; sleep 0.1; echo c; sleep 0.1"));
    until_closed(&mut client, "r");
    let all = read(
        &mut client,
        json!({"processId": "r", "afterSeq": null, "maxBytes": null, "waitMs": null}),
    );
    assert_eq!(
        common::v1_exit(all.clone()),
        json!({"chunks":[
            {"seq":1,"stream":"stdout","chunk":"YQo="},
            {"seq":2,"stream":"stdout","chunk":"Ygo="},
            {"seq":3,"stream":"stdout","chunk":"Ywo="}],
         "nextSeq":4,"exited":true,"exitCode":0,"closed":true,"failure":null,"sandboxDenied":false})
    );
    assert_eq!(read(&mut client, json!({"processId": "r"})), all);
    let one = read(&mut client, json!({"processId": "r", "maxBytes": 1}));
    assert_eq!(one["chunks"], json!([{"seq":1,"stream":"stdout","chunk":"YQo="}]));
    assert_eq!(one["nextSeq"], 2);
    let two = read(&mut client, json!({"processId": "r", "afterSeq": 1, "maxBytes": 4}));
    assert_eq!(two["chunks"].as_array().expect("chunks").len(), 2);
    assert_eq!(two["nextSeq"], 4);
    // No chunks: the next unassigned number, which counts exit (4) and closed (5).
    let none = read(&mut client, json!({"processId": "r", "afterSeq": 3}));
    assert_eq!((none["chunks"].clone(), none["nextSeq"].clone()), (json!([]), json!(6)));

    let (code, message) = error(&client.call("process/read", json!({"processId": "nope"})));
    assert_eq!((code, message.as_str()), (-32600, "unknown process id nope"));
    let (code, message) =
        error(&client.call("process/read", json!({"processId": "r", "afterSeq": -1})));
    assert_eq!(code, -32602, "{message}");
}

#[test]
fn long_poll_returns_on_output_at_the_deadline_and_at_once_after_exit() {
    let daemon = Daemon::start(&["--max-wait-ms", "2000"]);
    let (mut client, _) = daemon.session();
    start(&mut client, sh("w", "sleep 0.5; echo x; sleep 100"));
    let t = Instant::now();
    let r = read(&mut client, json!({"processId": "w", "waitMs": 10000}));
    assert!(
        t.elapsed() >= Duration::from_millis(300) && t.elapsed() < Duration::from_secs(2),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(r["chunks"][0]["chunk"], "eAo=");
    // Idle: answers at the deadline.
    let t = Instant::now();
    let r = read(&mut client, json!({"processId": "w", "afterSeq": 1, "waitMs": 300}));
    assert!(t.elapsed() >= Duration::from_millis(300) && t.elapsed() < Duration::from_secs(2));
    assert_eq!(
        (r["chunks"].clone(), r["nextSeq"].clone(), r["exited"].clone()),
        (json!([]), json!(2), json!(false))
    );
    // The cap shortens a longer wait.
    let t = Instant::now();
    read(&mut client, json!({"processId": "w", "afterSeq": 1, "waitMs": 60000}));
    assert!(t.elapsed() >= Duration::from_millis(2000) && t.elapsed() < Duration::from_secs(5));
    // After exit: at once.
    client.call("process/terminate", json!({"processId": "w"}));
    let t = Instant::now();
    let r = read(&mut client, json!({"processId": "w", "afterSeq": 1, "waitMs": 10000}));
    assert!(t.elapsed() < Duration::from_secs(1));
    assert_eq!(
        (r["exited"].clone(), r["exitCode"].clone(), r["signal"].clone()),
        (json!(true), json!(137), json!("SIGKILL"))
    );
}

#[test]
fn pty_has_its_stream_size_terminal_and_echo() {
    let daemon = Daemon::start(&[]);
    let (mut client, _) = daemon.session();
    let script = "tty; stty size; read line; echo got:$line";
    start(&mut client, merge(sh("tty", script), json!({"tty": true})));
    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen).contains("24 80") {
        let m = client.notification("process/output");
        assert_eq!(m["params"]["stream"], "pty");
        seen.extend(decode(&m["params"]["chunk"]));
    }
    let w = client
        .call("process/write", json!({"processId": "tty", "chunk": BASE64.encode("hello\n")}));
    assert_eq!(w["result"], json!({"status": "accepted"}));
    let events = until_closed(&mut client, "tty");
    seen.extend(output(&events));
    let text = String::from_utf8_lossy(&seen).into_owned();
    let mut lines = text.split("\r\n");
    assert!(lines.next().expect("tty line").starts_with("/dev/pts/"), "{text:?}");
    assert_eq!(lines.next(), Some("24 80"));
    assert!(text.contains("hello\r\ngot:hello\r\n"), "input not echoed: {text:?}");
}

#[test]
fn stdin_pipe_write_and_closed_stdin() {
    let daemon = Daemon::start(&[]);
    let (mut client, _) = daemon.session();
    start(&mut client, merge(sh("cat", "head -c 6; echo done"), json!({"pipeStdin": true})));
    for part in ["ab", "cd", "ef"] {
        let w =
            client.call("process/write", json!({"processId": "cat", "chunk": BASE64.encode(part)}));
        assert_eq!(w["result"], json!({"status": "accepted"}));
    }
    assert_eq!(output(&until_closed(&mut client, "cat")), b"abcdefdone\n");
    // After the exit stdin is known closed.
    let w = client.call("process/write", json!({"processId": "cat", "chunk": "eA=="}));
    assert_eq!(error(&w), (-32603, "failed to write to process stdin".into()));

    start(&mut client, sh("eof", "cat; echo eof"));
    let w = client.call("process/write", json!({"processId": "eof", "chunk": "eA=="}));
    assert_eq!(w["result"], json!({"status": "stdinClosed"}));
    assert_eq!(output(&until_closed(&mut client, "eof")), b"eof\n");

    let w = client.call("process/write", json!({"processId": "nope", "chunk": "eA=="}));
    assert_eq!(w["result"], json!({"status": "unknownProcess"}));
    let w = client.call("process/write", json!({"processId": "nope", "chunk": "!!!"}));
    assert_eq!(error(&w).0, -32602);
}

#[test]
fn ten_thousand_writes_to_a_process_that_never_reads() {
    let daemon = Daemon::start(&[]);
    let (mut client, _) = daemon.session();
    start(&mut client, merge(start_params("stuck", &["sleep", "100"]), json!({"pipeStdin": true})));
    let chunk = BASE64.encode(vec![b'x'; 1024]);
    let ids: Vec<Value> = (0..10_000)
        .map(|_| client.request("process/write", json!({"processId": "stuck", "chunk": chunk})))
        .collect();
    let (mut accepted, mut refused) = (0, 0);
    for id in &ids {
        let r = client.response(id);
        if r["result"]["status"] == "accepted" {
            accepted += 1;
        } else {
            assert_eq!(error(&r), (-32603, "failed to write to process stdin".into()));
            refused += 1;
        }
    }
    // 8 MiB of queue plus what the pipe holds; the rest is refused.
    assert!(accepted >= 8192 && refused > 0, "accepted {accepted}, refused {refused}");
    let t = client.call("process/terminate", json!({"processId": "stuck"}));
    assert_eq!(t["result"], json!({"running": true}));
    start(&mut client, start_params("after", &["true"]));
    until_closed(&mut client, "after");
}

#[test]
fn env_is_exact_and_env_policy_steps_hold() {
    let server_env = [
        ("KEEP_ME", "1"),
        ("Drop_This", "2"),
        ("MY_API_KEY", "3"),
        ("a_secret_b", "4"),
        ("GH_Token", "5"),
        ("HOME", "/home/test"),
    ];
    let daemon = Daemon::start_raw(&["--listen", "ws://127.0.0.1:0"], &server_env);
    let (mut client, _) = daemon.session();
    let env_of = |client: &mut Client, id: &str, extra: Value| -> BTreeMap<String, String> {
        start(client, merge(start_params(id, &["/usr/bin/env"]), extra));
        String::from_utf8(output(&until_closed(client, id)))
            .expect("utf-8 env")
            .lines()
            .filter_map(|l| l.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())))
            .collect()
    };
    let exact = env_of(&mut client, "exact", json!({"env": {"A": "1", "B": "two"}}));
    assert_eq!(exact, BTreeMap::from([("A".into(), "1".into()), ("B".into(), "two".into())]));

    let policy = |inherit: &str| json!({"inherit": inherit, "ignoreDefaultExcludes": false, "exclude": [], "set": {}, "includeOnly": []});
    let all = env_of(&mut client, "all", json!({"env": {}, "envPolicy": policy("all")}));
    assert_eq!(all.get("KEEP_ME").map(String::as_str), Some("1"));
    for secret in ["MY_API_KEY", "a_secret_b", "GH_Token"] {
        assert!(!all.contains_key(secret), "{secret} not excluded by default");
    }
    let core = env_of(&mut client, "core", json!({"env": {}, "envPolicy": policy("core")}));
    assert!(core.keys().all(|k| [
        "HOME", "LOGNAME", "PATH", "SHELL", "USER", "USERNAME", "TMPDIR", "TEMP", "TMP"
    ]
    .contains(&k.as_str())));
    assert_eq!(core.get("HOME").map(String::as_str), Some("/home/test"));
    let none = env_of(&mut client, "none", json!({"env": {"X": "y"}, "envPolicy": policy("none")}));
    assert_eq!(none, BTreeMap::from([("X".into(), "y".into())]));

    let mut steps = policy("all");
    steps["ignoreDefaultExcludes"] = json!(true);
    steps["exclude"] = json!(["drop_*"]);
    steps["set"] = json!({"SET_TOKEN": "s", "KEEP_ME": "set"});
    steps["includeOnly"] = json!(["keep_me", "*_token", "*KEY"]);
    let got = env_of(
        &mut client,
        "steps",
        json!({"env": {"OVER": "o", "KEEP_ME": "env"}, "envPolicy": steps}),
    );
    let expected: BTreeMap<String, String> = [
        ("GH_Token", "5"),
        ("KEEP_ME", "env"),
        ("MY_API_KEY", "3"),
        ("OVER", "o"),
        ("SET_TOKEN", "s"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    assert_eq!(got, expected);

    let incomplete = json!({"env": {}, "envPolicy": {"inherit": "all"}});
    let r = client.call("process/start", merge(start_params("bad", &["true"]), incomplete));
    assert_eq!(error(&r).0, -32602);
}

#[test]
fn cwd_and_arg0_are_honoured() {
    let daemon = Daemon::start(&[]);
    let (mut client, _) = daemon.session();
    let script = r#"pwd; tr '\0' ' ' < /proc/$$/cmdline"#;
    for tty in [false, true] {
        let id = format!("a{tty}");
        start(
            &mut client,
            merge(sh(&id, script), json!({"cwd": "/tmp", "arg0": "renamed", "tty": tty})),
        );
        let text = String::from_utf8(output(&until_closed(&mut client, &id)))
            .expect("utf-8")
            .replace("\r\n", "\n");
        assert_eq!(text, format!("/tmp\nrenamed -c {script} "));
    }
}

#[test]
fn terminate_kills_the_tree_for_pipes_and_pty() {
    let daemon = Daemon::start(&[]);
    let (mut client, _) = daemon.session();
    for tty in [false, true] {
        let id = format!("tree{tty}");
        start(
            &mut client,
            merge(sh(&id, "sleep 1000 & sleep 1001 & echo ready; wait"), json!({"tty": tty})),
        );
        client.notification("process/output");
        let (leader, _) =
            children(daemon.pid()).into_iter().find(|(_, s)| s != "Z").expect("the child");
        eventually("the tree to form", || session_members(leader).len() >= 3);
        let r = client.call("process/terminate", json!({"processId": id}));
        assert_eq!(r["result"], json!({"running": true}));
        let events = until_closed(&mut client, &id);
        let exited = events.iter().find(|m| m["method"] == "process/exited").expect("exited");
        assert_eq!(exited["params"]["exitCode"], 137);
        assert_eq!(exited["params"]["signal"], "SIGKILL");
        assert_eq!(events.last().expect("closed")["method"], "process/closed");
        assert_eq!(session_members(leader), Vec::<u32>::new());
        let r = client.call("process/terminate", json!({"processId": id}));
        assert_eq!(r["result"], json!({"running": false}));
    }
    let r = client.call("process/terminate", json!({"processId": "unknown"}));
    assert_eq!(r["result"], json!({"running": false}));
    // No zombies are left among the server's children.
    eventually("no children", || children(daemon.pid()).is_empty());
}

#[test]
fn pty_job_control_tree_is_killed() {
    let daemon = Daemon::start(&[]);
    let (mut client, _) = daemon.session();
    let params = json!({"processId":"bash","argv":["bash","--norc","-i"],"cwd":"/","env":{"PATH":PATH,"PS1":"$ "},"tty":true});
    start(&mut client, params);
    let w = client.call(
        "process/write",
        json!({"processId":"bash","chunk":BASE64.encode("sleep 1002 &\nsleep 1003 &\n")}),
    );
    assert_eq!(w["result"]["status"], "accepted");
    let (leader, _) = children(daemon.pid()).into_iter().find(|(_, s)| s != "Z").expect("bash");
    // Job control puts each background job in a process group of its own.
    eventually("two background jobs", || {
        let members = session_members(leader);
        members.iter().filter(|&&pid| stat(pid).is_some_and(|f| f[2] != leader.to_string())).count()
            >= 2
    });
    let r = client.call("process/terminate", json!({"processId":"bash"}));
    assert_eq!(r["result"], json!({"running": true}));
    until_closed(&mut client, "bash");
    assert_eq!(session_members(leader), Vec::<u32>::new());
}

#[test]
fn slow_reader_keeps_server_memory_bounded() {
    const RSS_LIMIT_KIB: u64 = 64 << 10;
    const PER_TICK: usize = 1 << 20;
    const TICK: Duration = Duration::from_millis(100);
    let daemon = Daemon::start(&[]);
    let (mut client, _) = daemon.session();
    start(&mut client, start_params("zero", &["cat", "/dev/zero"]));
    let started = Instant::now();
    let mut max_rss = 0;
    while started.elapsed() < Duration::from_secs(5) {
        let tick = Instant::now();
        let mut got = 0;
        while got < PER_TICK {
            let m = client.notification("process/output");
            got += decode(&m["params"]["chunk"]).len();
        }
        max_rss = max_rss.max(status_kib(daemon.pid(), "VmRSS:"));
        assert!(max_rss < RSS_LIMIT_KIB, "server RSS {max_rss} KiB");
        // Pace the reader: this sleep is the slow client, not synchronization.
        if let Some(rest) = TICK.checked_sub(tick.elapsed()) {
            std::thread::sleep(rest);
        }
    }
    eprintln!("slow reader: max server RSS {max_rss} KiB");
    let id = client.request("process/terminate", json!({"processId": "zero"}));
    assert_eq!(client.response(&id)["result"], json!({"running": true}));
    let exited = client.notification("process/exited");
    assert_eq!(exited["params"]["exitCode"], 137);
}

fn thread_names(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("task dir")
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
        .map(|name| name.trim_end().to_string())
        .collect()
}

#[test]
fn no_leaked_fds_threads_or_zombies() {
    let daemon = Daemon::start(&["--exited-retention-secs", "0"]);
    let (mut client, _) = daemon.session();
    let batch = |client: &mut Client, round: usize| {
        for i in 0..10 {
            let (p, c, t) =
                (format!("p{round}-{i}"), format!("c{round}-{i}"), format!("t{round}-{i}"));
            start(client, sh(&p, "echo out; echo err >&2"));
            start(client, merge(sh(&c, "cat"), json!({"pipeStdin": true})));
            start(client, merge(sh(&t, "echo tty"), json!({"tty": true})));
            client.call("process/write", json!({"processId": c, "chunk": "eAo="}));
            client.call("process/terminate", json!({"processId": c}));
            for id in [p, c, t] {
                until_closed(client, &id);
            }
        }
    };
    // A first round warms up what the daemon keeps for good (pool workers, helper threads).
    batch(&mut client, 0);
    // Pool workers come and go with load; every other thread and every descriptor must
    // return to the baseline, and no per-process thread may remain.
    let settled = |pid| {
        let names = thread_names(pid);
        let process_threads = names.iter().filter(|n| n.starts_with("process-")).count();
        (fds(pid), names.iter().filter(|n| *n != "worker").count(), process_threads)
    };
    // A reaped child's threads finish just after the reap, so both are awaited.
    eventually("no children or process threads after the warm-up", || {
        children(daemon.pid()).is_empty() && settled(daemon.pid()).2 == 0
    });
    let base = settled(daemon.pid());
    batch(&mut client, 1);
    let deadline = Instant::now() + DEADLINE;
    while settled(daemon.pid()) != base {
        let names = thread_names(daemon.pid());
        assert!(
            Instant::now() < deadline,
            "{:?} != baseline {base:?}: {names:?}",
            settled(daemon.pid())
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    eventually("no zombies", || children(daemon.pid()).is_empty());
}

#[test]
fn process_limit_and_exited_retention() {
    let daemon = Daemon::start(&["--max-processes", "1", "--exited-retention-secs", "1"]);
    let (mut client, _) = daemon.session();
    start(&mut client, start_params("one", &["true"]));
    until_closed(&mut client, "one");
    // Retained: still counts, still readable.
    let (code, message) = error(&client.call("process/start", start_params("two", &["true"])));
    assert_eq!((code, message.as_str()), (-32603, "process limit reached (1)"));
    assert_eq!(read(&mut client, json!({"processId": "one"}))["closed"], true);
    eventually("the entry to be removed", || {
        client.call("process/read", json!({"processId": "one"}))["error"]["message"]
            == "unknown process id one"
    });
    let w = client.call("process/write", json!({"processId": "one", "chunk": ""}));
    assert_eq!(w["result"], json!({"status": "unknownProcess"}));
    let t = client.call("process/terminate", json!({"processId": "one"}));
    assert_eq!(t["result"], json!({"running": false}));
    start(&mut client, start_params("one", &["true"]));
}

#[test]
fn process_ids_are_per_session() {
    let daemon = Daemon::start(&[]);
    let (mut a, _) = daemon.session();
    let (mut b, _) = daemon.session();
    start(&mut a, sh("p", "echo a"));
    start(&mut b, sh("p", "echo b"));
    assert_eq!(output(&until_closed(&mut a, "p")), b"a\n");
    assert_eq!(output(&until_closed(&mut b, "p")), b"b\n");
}

/// A new connection that resumes `session` once its old connection has been noticed gone.
fn resume(daemon: &Daemon, session: &str) -> Client {
    let (client, response) = daemon.resume(session);
    // v2: the resumed session's result carries the environment info too.
    assert_eq!(response["result"]["sessionId"], json!(session));
    assert!(response["result"]["environmentInfo"].is_object());
    client
}

#[test]
fn resume_keeps_processes_and_their_detached_output() {
    let daemon = Daemon::start(&[]);
    let (mut client, session) = daemon.session();
    start(
        &mut client,
        merge(sh("bg", "read x; echo later:$x; sleep 100"), json!({"pipeStdin": true})),
    );
    let w = client.call("process/write", json!({"processId": "bg", "chunk": BASE64.encode("v\n")}));
    assert_eq!(w["result"]["status"], "accepted");
    drop(client);
    let mut resumed = resume(&daemon, &session);
    let r = read(&mut resumed, json!({"processId": "bg", "waitMs": 5000}));
    assert_eq!(r["chunks"][0]["chunk"], BASE64.encode("later:v\n"));
    assert_eq!(r["exited"], false);
    let t = resumed.call("process/terminate", json!({"processId": "bg"}));
    assert_eq!(t["result"], json!({"running": true}));
}

/// Live processes whose command line contains `needle` (tests give their sleeps unique
/// durations to find them).
fn with_cmdline(needle: &str) -> Vec<u32> {
    all_pids()
        .into_iter()
        .filter(|&pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            String::from_utf8_lossy(&cmdline).contains(needle)
                && stat(pid).is_some_and(|f| f[0] != "Z")
        })
        .collect()
}

#[test]
fn ttl_expiry_kills_the_session_trees() {
    let daemon = Daemon::start(&["--detach-ttl-secs", "1"]);
    let (mut client, session) = daemon.session();
    // The leader exits; a background child keeps the output open.
    start(&mut client, sh("orphan", "sleep 1000.71 & echo started"));
    start(&mut client, sh("running", "sleep 1000.72"));
    assert_eq!(client.notification("process/exited")["params"]["processId"], "orphan");
    eventually("both sleeps to run", || with_cmdline("1000.7").len() >= 2);
    drop(client);
    eventually("the session's trees to die", || with_cmdline("1000.7").is_empty());
    let mut again = daemon.connect();
    let r = again.call("initialize", json!({"clientName": "t", "resumeSessionId": session}));
    assert_eq!(error(&r), (-32600, format!("unknown session id {session}")));
}

#[test]
fn pipelined_start_and_write_take_effect_in_order() {
    let daemon = Daemon::start(&[]);
    let (mut client, _) = daemon.session();
    let start_id =
        client.request("process/start", merge(sh("pipe", "head -c 5"), json!({"pipeStdin": true})));
    let write_id = client
        .request("process/write", json!({"processId": "pipe", "chunk": BASE64.encode("hello")}));
    assert_eq!(
        client.response(&start_id)["result"],
        json!({"processId": "pipe", "sandboxType": "none"})
    );
    assert_eq!(client.response(&write_id)["result"], json!({"status": "accepted"}));
    assert_eq!(output(&until_closed(&mut client, "pipe")), b"hello");
}

#[test]
fn sigterm_kills_every_tree_of_every_session() {
    let mut daemon = Daemon::start(&[]);
    let (mut attached, _) = daemon.session();
    let (mut detached, _) = daemon.session();
    start(&mut attached, sh("a", "sleep 1000.81 & sleep 1000.82"));
    start(
        &mut detached,
        merge(sh("b", "sleep 1000.83 & exec sleep 1000.84"), json!({"tty": true})),
    );
    eventually("the trees to run", || with_cmdline("1000.8").len() >= 4);
    drop(detached);
    let status = daemon.terminate();
    assert_eq!(status.code(), Some(0));
    eventually("every tree to die", || with_cmdline("1000.8").is_empty());
}

#[test]
fn a_stalled_peer_is_detached_and_output_keeps_draining() {
    let daemon = Daemon::start(&["--write-stall-secs", "1"]);
    let (mut client, session) = daemon.session();
    start(&mut client, start_params("zero", &["cat", "/dev/zero"]));
    // This client reads nothing more: the server's writes stall and it gives up on the peer.
    let mut resumed = resume(&daemon, &session);
    // Detached, the child was never blocked; now attached again, it runs on.
    let first = read(&mut resumed, json!({"processId": "zero", "maxBytes": 1}));
    let second = read(
        &mut resumed,
        json!({"processId": "zero", "afterSeq": first["nextSeq"], "waitMs": 5000}),
    );
    assert!(second["chunks"][0]["seq"].as_u64() > first["nextSeq"].as_u64(), "{first} {second}");
    let t = resumed.call("process/terminate", json!({"processId": "zero"}));
    assert_eq!(t["result"], json!({"running": true}));
    drop(client);
}

#[test]
fn processes_work_over_stdio() {
    let mut daemon = common::StdioDaemon::start(&[]);
    daemon.send_line(r#"{"id":1,"method":"initialize","params":{"clientName":"t"}}"#);
    daemon.send_line(r#"{"method":"initialized","params":{}}"#);
    let start = json!({"id": 2, "method": "process/start", "params": sh("s", "echo hi")});
    daemon.send_line(&start.to_string());
    assert!(daemon.recv()["result"]["sessionId"].is_string());
    assert_eq!(
        daemon.recv(),
        json!({"id": 2, "result": {"processId": "s", "sandboxType": "none"}})
    );
    assert_eq!(
        daemon.recv(),
        json!({"method":"process/output","params":{"processId":"s","seq":1,"stream":"stdout","chunk":"aGkK"}})
    );
    assert_eq!(daemon.recv()["params"]["seq"], 2);
    assert_eq!(
        daemon.recv(),
        json!({"method":"process/closed","params":{"processId":"s","seq":3}})
    );
}

#[test]
fn sigterm_is_quick_even_with_a_peer_that_reads_nothing() {
    let mut daemon = Daemon::start(&[]);
    let (mut client, _) = daemon.session();
    start(&mut client, start_params("zero", &["cat", "/dev/zero"]));
    // The client stops reading; the output threads block on its full socket.
    client.call("process/read", json!({"processId": "zero", "maxBytes": 1}));
    let started = Instant::now();
    let status = daemon.terminate();
    assert_eq!(status.code(), Some(0));
    assert!(started.elapsed() < Duration::from_secs(5), "shutdown took {:?}", started.elapsed());
}
