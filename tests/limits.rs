//! Operator limits and the exit report (issue 18) over the real binary: a wall-clock timeout,
//! an output limit, a CPU limit and rlimits reach the child and end it with the matching
//! `reason`; the report's usage figures are plausible; bad values are usage errors.

mod common;

use std::process::{Command, Stdio};

use common::{decode, output, until_closed, Client, Daemon, BIN};
use serde_json::{json, Value};

const PATH: &str = "/usr/local/bin:/usr/bin:/bin";

fn start(client: &mut Client, id: &str, argv: &[&str], tty: bool) {
    let params =
        json!({"processId": id, "argv": argv, "cwd": "/", "env": {"PATH": PATH}, "tty": tty});
    let response = client.call("process/start", params);
    assert_eq!(response["result"]["processId"], id, "{response}");
}

fn exited(events: &[Value]) -> Value {
    events
        .iter()
        .find(|m| m["method"] == "process/exited")
        .map(|m| m["params"].clone())
        .expect("an exited event")
}

fn ms(report: &Value, key: &str) -> u64 {
    report[key].as_u64().unwrap_or_else(|| panic!("{key} missing: {report}"))
}

#[test]
fn an_ordinary_exit_reports_usage_and_output_counts_and_read_agrees() {
    let daemon = Daemon::start(&[]);
    let (mut client, _) = daemon.session();
    start(&mut client, "p", &["sh", "-c", "printf hello; printf ab >&2; exit 4"], false);
    let events = until_closed(&mut client, "p");
    let report = exited(&events);
    assert_eq!(report["reason"], "exited", "{report}");
    assert_eq!(report["exitCode"], 4);
    assert_eq!(report["stdoutBytes"], 5, "{report}");
    assert_eq!(report["stderrBytes"], 2, "{report}");
    assert!(report.get("ptyBytes").is_none(), "{report}");
    assert!(ms(&report, "wallTimeMs") < 10_000, "{report}");
    assert!(ms(&report, "maxRssKb") > 0, "{report}");
    ms(&report, "userCpuMs");
    ms(&report, "systemCpuMs");
    let read = client.call("process/read", json!({"processId": "p"}))["result"].clone();
    for key in common::REPORT_KEYS {
        assert_eq!(read.get(key), report.get(key), "{key}: {read} vs {report}");
    }

    // A running process's read has no report; terminate makes it `terminated`.
    start(&mut client, "s", &["sleep", "30"], true);
    let read = client.call("process/read", json!({"processId": "s"}))["result"].clone();
    assert!(read.get("reason").is_none(), "{read}");
    let r = client.call("process/terminate", json!({"processId": "s"}));
    assert_eq!(r["result"]["running"], true, "{r}");
    let report = exited(&until_closed(&mut client, "s"));
    assert_eq!(report["reason"], "terminated", "{report}");
    assert_eq!(report["signal"], "SIGKILL", "{report}");
    assert_eq!(report["ptyBytes"], 0, "{report}");
    assert!(report.get("stdoutBytes").is_none(), "{report}");
}

#[test]
fn a_child_over_its_timeout_is_killed_and_reported_timeout() {
    let daemon = Daemon::start(&["--process-timeout-secs", "1"]);
    let (mut client, _) = daemon.session();
    // A grandchild holding the output must die with the tree too, or closed never comes.
    start(&mut client, "t", &["sh", "-c", "sleep 30 & sleep 30"], false);
    let report = exited(&until_closed(&mut client, "t"));
    assert_eq!(report["reason"], "timeout", "{report}");
    assert_eq!(report["signal"], "SIGKILL", "{report}");
    assert_eq!(report["exitCode"], 137, "{report}");
    let wall = ms(&report, "wallTimeMs");
    assert!((950..5_000).contains(&wall), "wall time {wall} ms for a 1 s timeout");

    // A process that ends in time is not affected.
    start(&mut client, "quick", &["true"], false);
    assert_eq!(exited(&until_closed(&mut client, "quick"))["reason"], "exited");
}

#[test]
fn the_environment_fallback_sets_a_limit() {
    let daemon = Daemon::start_raw(
        &["--listen", "ws://127.0.0.1:0"],
        &[("EXEC_SERVER_PROCESS_TIMEOUT_SECS", "1")],
    );
    let (mut client, _) = daemon.session();
    start(&mut client, "t", &["sleep", "30"], false);
    assert_eq!(exited(&until_closed(&mut client, "t"))["reason"], "timeout");
}

#[test]
fn an_output_bomb_stops_at_the_limit() {
    const LIMIT: usize = 100_000;
    let daemon = Daemon::start(&["--max-output-bytes", &LIMIT.to_string()]);
    let (mut client, _) = daemon.session();
    start(&mut client, "bomb", &["yes", "0123456789abcdef"], false);
    let events = until_closed(&mut client, "bomb");
    let output = output(&events);
    assert_eq!(output.len(), LIMIT, "delivered exactly up to the limit");
    assert!(output.starts_with(b"0123456789abcdef\n0123456789abcdef\n"));
    let report = exited(&events);
    assert_eq!(report["reason"], "outputLimit", "{report}");
    assert_eq!(report["signal"], "SIGKILL", "{report}");
    assert_eq!(report["stdoutBytes"], LIMIT, "{report}");
    assert_eq!(report["stderrBytes"], 0, "{report}");
    // Retention holds what was delivered, not more.
    let read = client.call("process/read", json!({"processId": "bomb"}))["result"].clone();
    let retained: usize =
        read["chunks"].as_array().expect("chunks").iter().map(|c| decode(&c["chunk"]).len()).sum();
    assert_eq!(retained, LIMIT);
}

#[test]
fn a_cpu_spinner_ends_with_cpu_limit() {
    let daemon = Daemon::start(&["--cpu-limit-secs", "1"]);
    let (mut client, _) = daemon.session();
    start(&mut client, "spin", &["sh", "-c", "while :; do :; done"], false);
    let report = exited(&until_closed(&mut client, "spin"));
    assert_eq!(report["reason"], "cpuLimit", "{report}");
    assert_eq!(report["signal"], "SIGXCPU", "{report}");
    let cpu = ms(&report, "userCpuMs") + ms(&report, "systemCpuMs");
    assert!((900..3_000).contains(&cpu), "cpu {cpu} ms for a 1 s limit: {report}");
}

/// The limit of `name` in /proc/self/limits as (soft, hard).
fn limit_line<'a>(limits: &'a str, name: &str) -> (&'a str, &'a str) {
    let line = limits.lines().find(|l| l.starts_with(name)).expect(name);
    let mut fields = line[name.len()..].split_whitespace();
    (fields.next().expect("soft"), fields.next().expect("hard"))
}

#[test]
fn rlimits_reach_the_child() {
    let daemon = Daemon::start(&[
        "--cpu-limit-secs",
        "100",
        "--memory-limit-bytes",
        "4294967296",
        "--max-file-size-bytes",
        "1048576",
        "--max-open-files",
        "37",
        "--max-child-processes",
        "5000",
    ]);
    let (mut client, _) = daemon.session();
    start(&mut client, "l", &["cat", "/proc/self/limits"], false);
    let events = until_closed(&mut client, "l");
    let text = String::from_utf8(output(&events)).expect("utf-8");
    assert_eq!(limit_line(&text, "Max cpu time"), ("100", "101"), "{text}");
    assert_eq!(limit_line(&text, "Max address space"), ("4294967296", "4294967296"), "{text}");
    assert_eq!(limit_line(&text, "Max file size"), ("1048576", "1048576"), "{text}");
    assert_eq!(limit_line(&text, "Max open files"), ("37", "37"), "{text}");
    assert_eq!(limit_line(&text, "Max processes"), ("5000", "5000"), "{text}");

    // Over RLIMIT_FSIZE the writer gets SIGXFSZ: reported as a signal.
    let script = "head -c 2000000 /dev/zero > /tmp/exec-server-limits-fsize-$$; r=$?; rm -f /tmp/exec-server-limits-fsize-$$; exit $r";
    start(&mut client, "f", &["sh", "-c", script], false);
    let report = exited(&until_closed(&mut client, "f"));
    assert_ne!(report["exitCode"], 0, "{report}");
}

#[test]
fn invalid_limits_are_usage_errors() {
    for (args, env, message) in [
        (
            vec!["--process-timeout-secs", "0"],
            vec![],
            "invalid --process-timeout-secs `0`: expected a positive integer",
        ),
        (
            vec!["--max-output-bytes", "10k"],
            vec![],
            "invalid --max-output-bytes `10k`: expected a positive integer",
        ),
        (
            vec![],
            vec![("EXEC_SERVER_MAX_OPEN_FILES", "many")],
            "invalid EXEC_SERVER_MAX_OPEN_FILES `many`: expected a positive integer",
        ),
    ] {
        let mut command = Command::new(BIN);
        command.args(&args).stdin(Stdio::null());
        for (k, v) in env {
            command.env(k, v);
        }
        let output = command.output().expect("run exec-server");
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(message), "{args:?}: {stderr}");
    }
}

/// Live (non-zombie) processes whose session id is `sid`.
fn session_members(sid: u32) -> usize {
    std::fs::read_dir("/proc")
        .expect("/proc")
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                return false;
            };
            let Some((_, rest)) = stat.rsplit_once(')') else { return false };
            let fields: Vec<&str> = rest.split_whitespace().collect();
            fields.len() > 3 && fields[0] != "Z" && fields[3].parse() == Ok(sid)
        })
        .count()
}

/// RLIMIT_NPROC counts every process (thread) of the daemon's user and root ignores it, so
/// as root the daemon is run as `nobody` through setpriv; without that the test is skipped.
#[test]
fn a_fork_bomb_stays_bounded_by_the_process_limit_and_is_cleaned_up() {
    const LIMIT: usize = 150;
    let limit = LIMIT.to_string();
    let args = ["--listen", "ws://127.0.0.1:0", "--max-child-processes", &limit];
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let daemon = if !root {
        Daemon::start_raw(&args, &[])
    } else if std::path::Path::new("/usr/bin/setpriv").exists() {
        // `nobody` may not be able to reach the checkout (e.g. one below /root): run a copy
        // from a world-readable place instead.
        let dir =
            std::path::PathBuf::from(format!("/var/tmp/exec-server-nobody-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a directory for the copy");
        let copy = dir.join("exec-server");
        std::fs::copy(BIN, &copy).expect("copy the binary");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod dir");
        std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).expect("chmod bin");
        let copy = copy.to_str().expect("a UTF-8 path").to_owned();
        let mut all = vec!["--reuid=65534", "--regid=65534", "--clear-groups", copy.as_str()];
        all.extend_from_slice(&args);
        let daemon = Daemon::start_with("/usr/bin/setpriv", &all, &[]);
        // The running daemon keeps its image; the copy can go now.
        let _ = std::fs::remove_dir_all(&dir);
        daemon
    } else {
        eprintln!("SKIPPED: running as root without setpriv, RLIMIT_NPROC cannot be enforced");
        return;
    };
    let (mut client, _) = daemon.session();
    // 400 long sleepers: far more than the limit allows.
    let script = "echo $$; i=0; while [ $i -lt 400 ]; do sleep 60 & i=$((i+1)); done; wait";
    start(&mut client, "bomb", &["sh", "-c", script], false);
    let mut sid = None;
    let mut exited = None;
    while exited.is_none() {
        let m = client.recv();
        match m["method"].as_str() {
            Some("process/output") if sid.is_none() && m["params"]["stream"] == "stdout" => {
                let text = decode(&m["params"]["chunk"]);
                let line = String::from_utf8_lossy(&text).lines().next().unwrap_or("").to_string();
                sid = Some(line.trim().parse::<u32>().expect("the shell's pid"));
            }
            Some("process/exited") => exited = Some(m["params"].clone()),
            _ => {}
        }
    }
    let exited = exited.expect("exited");
    let sid = sid.expect("pid line before exit");
    // The shell gave up when fork failed, leaving a bounded number of sleepers behind.
    assert_ne!(exited["exitCode"], 0, "the shell never hit the limit: {exited}");
    let members = session_members(sid);
    eprintln!("fork bomb: {members} processes left under a limit of {LIMIT} (exit {exited})");
    assert!((1..=LIMIT).contains(&members), "{members} processes for a limit of {LIMIT}");
    // Terminate kills what is left of the tree.
    let r = client.call("process/terminate", json!({"processId": "bomb"}));
    assert!(r.get("result").is_some(), "{r}");
    let deadline = std::time::Instant::now() + common::DEADLINE;
    while session_members(sid) > 0 {
        assert!(std::time::Instant::now() < deadline, "the bomb's tree survived terminate");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}
