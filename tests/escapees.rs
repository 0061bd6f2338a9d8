//! Verifies the escapee-proof tree kill (issue 17) over the real binary: a descendant that
//! double-forks and calls `setsid` leaves its tree's session, yet `process/terminate`
//! (whether or not the leader is still running), session expiry and daemon SIGTERM kill it,
//! and every process the daemon adopted is reaped (no zombies).

mod common;

use common::{all_pids, children, eventually, sh, start, stat, Client, Daemon, PATH};
use serde_json::json;

/// A sleep duration unique to this test run and `n` (so strays of an earlier, failed run
/// are never counted): `1<pid>.<n>` seconds.
fn tag(n: &str) -> String {
    format!("1{:07}.{n}", std::process::id())
}

/// Starts `sleep <tag>` double-forked into a session of its own (the intermediate shell
/// exits at once), then runs `then` in the leader.
fn escapee_script(tag: &str, then: &str) -> String {
    format!("setsid sh -c 'sleep {tag} >/dev/null 2>&1 </dev/null &'; {then}")
}

/// Live (non-zombie) processes running `sleep <duration>` with a duration starting with
/// `prefix` (the shells whose scripts mention it do not count).
fn with_cmdline(prefix: &str) -> Vec<u32> {
    all_pids()
        .into_iter()
        .filter(|&pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline).into_owned();
            let mut args = cmdline.split('\0');
            args.next() == Some("sleep")
                && args.next().is_some_and(|d| d.starts_with(prefix))
                && stat(pid).is_some_and(|f| f[0] != "Z")
        })
        .collect()
}

/// The one live process running `sleep <tag>`, once it runs.
fn sleeper(tag: &str) -> u32 {
    let mut found = Vec::new();
    eventually(&format!("sleep {tag} to run"), || {
        found = with_cmdline(tag);
        found.len() == 1
    });
    found[0]
}

/// Waits for the closed event of `id` (other messages are dropped).
fn until_closed(client: &mut Client, id: &str) {
    loop {
        let m = client.recv();
        if m["method"] == "process/closed" && m["params"]["processId"] == id {
            return;
        }
    }
}

#[test]
fn terminate_kills_a_setsid_escapee_below_a_running_leader() {
    let daemon = Daemon::start(&[]);
    let (mut client, _) = daemon.session();
    start(
        &mut client,
        sh("p", &escapee_script(&tag("911"), &format!("exec sleep {}", tag("912")))),
    );
    let leader = sleeper(&tag("912"));
    let escapee = sleeper(&tag("911"));
    let fields = stat(escapee).expect("escapee runs");
    assert_ne!(fields[3], leader.to_string(), "the escapee left the leader's session");
    // The leader is a subreaper, so the orphan stays below it instead of going to init.
    assert_eq!(fields[1], leader.to_string());

    let r = client.call("process/terminate", json!({"processId": "p"}));
    assert_eq!(r["result"], json!({"running": true}));
    eventually("the escapee to die", || with_cmdline(&tag("91")).is_empty());
    eventually("no zombie children", || children(daemon.pid()).is_empty());
}

#[test]
fn terminate_after_the_leader_exited_kills_its_escapee() {
    let daemon = Daemon::start(&[]);
    let (mut client, _) = daemon.session();
    start(&mut client, sh("p", &escapee_script(&tag("921"), "echo started")));
    until_closed(&mut client, "p");
    let escapee = sleeper(&tag("921"));
    // Its leader died, so the daemon (a subreaper) adopted it.
    assert_eq!(stat(escapee).expect("escapee runs")[1], daemon.pid().to_string());

    let r = client.call("process/terminate", json!({"processId": "p"}));
    assert_eq!(r["result"], json!({"running": false}));
    eventually("the escapee to die", || with_cmdline(&tag("921")).is_empty());
    eventually("no zombie children", || children(daemon.pid()).is_empty());
}

#[test]
fn session_expiry_kills_escapees_even_after_their_entries_are_gone() {
    let daemon = Daemon::start(&["--detach-ttl-secs", "1", "--exited-retention-secs", "0"]);
    let (mut client, _) = daemon.session();
    start(&mut client, sh("gone", &escapee_script(&tag("931"), "true")));
    start(
        &mut client,
        sh("alive", &escapee_script(&tag("932"), &format!("exec sleep {}", tag("933")))),
    );
    until_closed(&mut client, "gone");
    sleeper(&tag("931"));
    sleeper(&tag("932"));
    sleeper(&tag("933"));
    drop(client);
    eventually("the session's escapees to die", || with_cmdline(&tag("93")).is_empty());
    eventually("no zombie children", || children(daemon.pid()).is_empty());
}

#[test]
fn sigterm_kills_every_escapee() {
    let mut daemon = Daemon::start(&[]);
    let (mut client, _) = daemon.session();
    start(&mut client, sh("gone", &escapee_script(&tag("941"), "true")));
    start(
        &mut client,
        sh("alive", &escapee_script(&tag("942"), &format!("exec sleep {}", tag("943")))),
    );
    let pty = json!({"processId": "tty", "argv": ["sh", "-c", escapee_script(&tag("944"), &format!("exec sleep {}", tag("945")))],
                     "cwd": "/", "env": {"PATH": PATH}, "tty": true});
    start(&mut client, pty);
    until_closed(&mut client, "gone");
    for n in ["941", "942", "943", "944", "945"] {
        sleeper(&tag(n));
    }
    let status = daemon.terminate();
    assert_eq!(status.code(), Some(0));
    // Killed and reaped before the daemon exited: nothing of it is left, not even a zombie
    // waiting for init.
    let left: Vec<u32> = all_pids()
        .into_iter()
        .filter(|&pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            String::from_utf8_lossy(&cmdline).contains(&tag("94"))
        })
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn escapees_that_exit_on_their_own_are_reaped() {
    let daemon = Daemon::start(&[]);
    let (mut client, _) = daemon.session();
    for i in 0..5 {
        let id = format!("p{i}");
        start(&mut client, sh(&id, "setsid sh -c 'sleep 0.1 &'; setsid sh -c 'true &'"));
        until_closed(&mut client, &id);
    }
    eventually("every adopted orphan to be reaped", || children(daemon.pid()).is_empty());
}
