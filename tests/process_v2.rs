//! Verifies the protocol-v2 (upstream codex 0.171) process shapes over the real binary:
//! `process/start`'s new members (metadata logged, restricted sandbox and network proxy
//! refused, the rest accepted), `sandboxType` and `sandboxDenied`, `envPolicy` inherit
//! `all` with excludes, `process/write`'s `writeId`, and `process/signal`, with upstream's
//! exact errors and the daemon serving on after each.

mod common;

use std::time::Instant;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use common::{decode, error, merge, start, until_closed, Client, Daemon, DEADLINE};
use serde_json::{json, Value};

const THREAD: &str = "3f2b8c1e-0000-4000-8000-000000000001";

fn daemon() -> Daemon {
    Daemon::start_raw(
        &["--listen", "ws://127.0.0.1:0"],
        &[("RUST_LOG", "debug"), ("EXEC_V2_KEEP", "kept"), ("EXEC_V2_SECRET_X", "dropped")],
    )
}

fn sh(id: &str, script: &str, extra: Value) -> Value {
    merge(common::sh(id, script), extra)
}

fn output(messages: &[Value]) -> String {
    String::from_utf8(common::output(messages)).expect("UTF-8 output")
}

/// True when a `sleep <arg>` process exists (a fact no event announces, so it is polled).
fn sleeping(arg: &str) -> bool {
    let wanted = format!("sleep\0{arg}\0");
    std::fs::read_dir("/proc").expect("/proc").flatten().any(|entry| {
        std::fs::read(entry.path().join("cmdline")).is_ok_and(|c| c == wanted.as_bytes())
    })
}

/// Waits until the daemon's log contains `text`.
fn logged(daemon: &Daemon, text: &str) {
    let deadline = Instant::now() + DEADLINE;
    while !daemon.stderr().contains(text) {
        assert!(Instant::now() < deadline, "never logged {text:?}: {}", daemon.stderr());
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn start_reports_sandbox_type_and_exit_and_read_carry_sandbox_denied() {
    let daemon = daemon();
    let (mut client, _) = daemon.session();
    start(&mut client, sh("t", "exit 3", json!({})));
    let mut events = until_closed(&mut client, "t");
    events[0] = common::v1_exit(events[0].clone());
    assert_eq!(
        events,
        [
            json!({"method": "process/exited", "params": {"processId": "t", "seq": 1, "exitCode": 3, "sandboxDenied": false}}),
            json!({"method": "process/closed", "params": {"processId": "t", "seq": 2}}),
        ]
    );
    let r = client.call("process/read", json!({"processId": "t"}));
    assert_eq!(
        common::v1_exit(r["result"].clone()),
        json!({"chunks": [], "nextSeq": 3, "exited": true, "exitCode": 3, "closed": true,
               "failure": null, "sandboxDenied": false})
    );
}

#[test]
fn metadata_is_checked_and_logged_with_the_process() {
    let daemon = daemon();
    let (mut client, _) = daemon.session();
    let metadata = json!({"metadata": {"threadId": THREAD, "toolCallId": "call_1"}});
    start(&mut client, sh("m", "true", metadata));
    logged(&daemon, "process m (pid ");
    logged(&daemon, &format!("thread {THREAD}, tool call call_1"));
    for (metadata, message) in [
        (json!({"threadId": "t"}), "invalid character: expected an optional prefix of `urn:uuid:` followed by [0-9a-fA-F-], found `t` at 1"),
        (json!({"threadId": "1234"}), "invalid length: expected length 32 for simple format, found 4"),
        (json!({"toolCallId": 5}), "invalid type: integer `5`, expected a string"),
        (json!("x"), "invalid type: string \"x\", expected struct ExecMetadata"),
    ] {
        let r = client.call("process/start", sh("bad", "true", json!({"metadata": metadata})));
        assert_eq!(error(&r), (-32602, message.to_string()), "{metadata}");
    }
    // Absent, null and empty are all fine.
    start(&mut client, sh("m2", "true", json!({"metadata": null})));
    start(&mut client, sh("m3", "true", json!({"metadata": {}})));
}

#[test]
fn a_restricted_sandbox_is_enforced_and_a_network_proxy_is_refused() {
    let daemon = daemon();
    let (mut client, _) = daemon.session();
    let marker = std::env::temp_dir().join(format!("exec-v2-{}", std::process::id()));
    let script = format!("touch {}", marker.display());
    // Read-only everywhere: the process runs, confined, and its write is denied.
    let restricted = json!({
        "permissions": {"type": "managed", "file_system": {"type": "restricted", "entries": [
            {"path": {"type": "special", "value": {"kind": "root"}}, "access": "read"}]},
            "network": "restricted"},
        "cwd": "file:///", "windowsSandboxLevel": "disabled"});
    let r = client.call("process/start", sh("sbx", &script, json!({"sandbox": restricted})));
    assert_eq!(r["result"], json!({"processId": "sbx", "sandboxType": "linuxSeccomp"}), "{r}");
    let events = until_closed(&mut client, "sbx");
    let exited = events.iter().find(|m| m["method"] == "process/exited").expect("exited");
    assert_ne!(exited["params"]["exitCode"], 0, "{exited}");
    assert_eq!(exited["params"]["sandboxDenied"], true, "{exited}");
    let r = client.call("process/start", sh("np", &script, json!({"networkProxy": {"proxy": {}}})));
    assert_eq!(
        error(&r),
        (-32600, "process np asks for a managed network proxy, which this executor does not support; it was not started".into())
    );
    let r = client.call("process/read", json!({"processId": "np"}));
    assert_eq!(error(&r), (-32600, "unknown process id np".to_string()));
    assert!(!marker.exists(), "a denied or refused process wrote");
    // A context must name its permissions and Windows level, as upstream requires.
    let r = client.call("process/start", sh("e", "true", json!({"sandbox": {}})));
    assert_eq!(error(&r), (-32602, "missing field `permissions`".into()));
    let r = client.call(
        "process/start",
        sh("e", "true", json!({"sandbox": {"permissions": {"type": "disabled"}}})),
    );
    assert_eq!(error(&r), (-32602, "missing field `windowsSandboxLevel`".into()));
}

#[test]
fn unrestricted_contexts_and_the_other_members_are_accepted() {
    let daemon = daemon();
    let (mut client, _) = daemon.session();
    let open = json!({"permissions": {"type": "disabled"}, "windowsSandboxLevel": "disabled"});
    start(&mut client, sh("a", "echo a", json!({"sandbox": open})));
    assert_eq!(output(&until_closed(&mut client, "a")), "a\n");
    let managed = json!({"enforceManagedNetwork": true, "managedNetwork": {"any": [1]},
                         "shellSnapshot": {"scopeId": "s", "shell": {"name": "bash", "path": "/bin/bash"}},
                         "networkProxy": null, "sandbox": null});
    start(&mut client, sh("b", "echo b", managed));
    assert_eq!(output(&until_closed(&mut client, "b")), "b\n");
    for (member, message) in [
        (
            json!({"managedNetwork": 5}),
            "invalid type: integer `5`, expected struct ManagedNetworkSandboxContext",
        ),
        (
            json!({"enforceManagedNetwork": "yes"}),
            "invalid type: string \"yes\", expected a boolean",
        ),
        (
            json!({"networkProxy": "x"}),
            "invalid type: string \"x\", expected struct RemoteNetworkProxyLaunchConfig",
        ),
        (
            json!({"shellSnapshot": true}),
            "invalid type: boolean `true`, expected struct ShellSnapshotRequest",
        ),
    ] {
        let r = client.call("process/start", sh("bad", "true", member.clone()));
        assert_eq!(error(&r), (-32602, message.to_string()), "{member}");
    }
}

#[test]
fn env_policy_inherit_all_with_excludes() {
    let daemon = daemon();
    let (mut client, _) = daemon.session();
    let policy = json!({"envPolicy": {"inherit": "all", "ignoreDefaultExcludes": true,
                                      "exclude": ["EXEC_V2_SECRET*"], "set": {}, "includeOnly": []}});
    start(&mut client, sh("env", "env | grep '^EXEC_V2_' | sort", policy));
    assert_eq!(output(&until_closed(&mut client, "env")), "EXEC_V2_KEEP=kept\n");
    // All five members stay required.
    let r = client.call(
        "process/start",
        sh("e", "true", json!({"envPolicy": {"inherit": "all", "exclude": []}})),
    );
    assert_eq!(error(&r), (-32602, "missing field `ignoreDefaultExcludes`".into()));
}

#[test]
fn write_ids_are_checked_and_a_repeated_one_is_not_written_twice() {
    let daemon = daemon();
    let (mut client, _) = daemon.session();
    start(&mut client, sh("cat", "cat", json!({"pipeStdin": true})));
    start(&mut client, sh("cat2", "cat", json!({"pipeStdin": true})));
    let write = |client: &mut Client, id: &str, text: &str, write_id: Value| {
        let mut p = json!({"processId": id, "chunk": BASE64.encode(text)});
        if !write_id.is_null() {
            p["writeId"] = write_id;
        }
        client.call("process/write", p)
    };
    // Empty is refused before the process is even looked up.
    for id in ["cat", "nope"] {
        let r = write(&mut client, id, "x", json!(""));
        assert_eq!(error(&r), (-32602, "writeId must not be empty".into()));
    }
    let r = write(&mut client, "cat", "x", json!(5));
    assert_eq!(error(&r), (-32602, "invalid type: integer `5`, expected a string".into()));
    let accepted = json!({"status": "accepted"});
    assert_eq!(write(&mut client, "cat", "one\n", json!("w1"))["result"], accepted);
    // A retry with the same id is acknowledged and dropped, whatever it carries.
    assert_eq!(write(&mut client, "cat", "again\n", json!("w1"))["result"], accepted);
    // Ids are per process, and a write without one (v1 clients) is always written.
    assert_eq!(write(&mut client, "cat2", "other\n", json!("w1"))["result"], accepted);
    assert_eq!(write(&mut client, "cat", "two\n", Value::Null)["result"], accepted);
    assert_eq!(write(&mut client, "cat", "three\n", json!("w2"))["result"], accepted);
    assert_eq!(
        write(&mut client, "nope", "x", json!("w3"))["result"],
        json!({"status": "unknownProcess"})
    );
    // cat echoes what reached it; a written retry would show up between "one" and "two".
    let expected = "one\ntwo\nthree\n";
    let mut echoed = String::new();
    while echoed.len() < expected.len() {
        let m = client.notification("process/output");
        if m["params"]["processId"] == "cat" {
            let bytes = decode(&m["params"]["chunk"]);
            echoed.push_str(std::str::from_utf8(&bytes).expect("text"));
        }
    }
    assert_eq!(echoed, expected);
    for id in ["cat", "cat2"] {
        let r = client.call("process/terminate", json!({"processId": id}));
        assert_eq!(r["result"]["running"], true);
    }
}

#[test]
fn signal_interrupts_the_process_group() {
    let daemon = daemon();
    let (mut client, _) = daemon.session();
    // The shell's trap runs only once its foreground `sleep` is gone, so the exit below
    // shows that the whole group got SIGINT, not just the shell.
    let sleep = format!("1000.93{}", std::process::id());
    let script =
        format!("trap 'echo got INT; exit 7' INT; echo ready; sleep {sleep}; echo not reached");
    start(&mut client, sh("s", &script, json!({})));
    let ready = client.notification("process/output");
    assert_eq!(ready["params"]["chunk"], BASE64.encode("ready\n"));
    // Only once `sleep` runs: a signal between the shell's fork and exec is lost in the
    // child, and the shell would then wait the whole sleep before running its trap.
    let deadline = Instant::now() + DEADLINE;
    while !sleeping(&sleep) {
        assert!(Instant::now() < deadline, "sleep never started");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let r = client.call("process/signal", json!({"processId": "s", "signal": "interrupt"}));
    assert_eq!(r["result"], json!({}));
    let events = until_closed(&mut client, "s");
    assert_eq!(output(&events), "got INT\n");
    let exited = events.iter().find(|m| m["method"] == "process/exited").expect("exited");
    assert_eq!(exited["params"]["exitCode"], 7);
    // Finished and unknown processes are not errors.
    for id in ["s", "nope"] {
        let r = client.call("process/signal", json!({"processId": id, "signal": "interrupt"}));
        assert_eq!(r["result"], json!({}), "{id}");
    }
    for (params, message) in [
        (
            json!({"processId": "s", "signal": "kill"}),
            "unknown variant `kill`, expected `interrupt`",
        ),
        (
            json!({"processId": "s", "signal": "Interrupt"}),
            "unknown variant `Interrupt`, expected `interrupt`",
        ),
        (json!({"processId": "s", "signal": null}), "invalid type: null, expected string or map"),
        (json!({"processId": "s"}), "missing field `signal`"),
        (json!({"signal": "interrupt"}), "missing field `processId`"),
    ] {
        let r = client.call("process/signal", params.clone());
        assert_eq!(error(&r), (-32602, message.to_string()), "{params}");
    }
    start(&mut client, sh("after", "echo still serving", json!({})));
    assert_eq!(output(&until_closed(&mut client, "after")), "still serving\n");
}
