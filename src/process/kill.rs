//! Killing a whole process tree (PROTOCOL.md §4.7): SIGKILL to the child's process group and
//! to every member of its session found in `/proc`. It signals only; reaping is the waiter's.

/// Sweeps over `/proc` when killing a session: a member may fork while it is being killed.
const KILL_PASSES: usize = 4;

/// SIGKILL to the process group `sid`, then to every process whose session is `sid`
/// (job-control shells move background jobs into groups of their own, §4.7).
pub(super) fn kill_session(sid: libc::pid_t) {
    // SAFETY: kill(2) with a negative pid signals a process group; no memory is involved.
    unsafe { libc::kill(-sid, libc::SIGKILL) };
    for _ in 0..KILL_PASSES {
        let members = session_members(sid);
        if members.is_empty() {
            break;
        }
        for pid in members {
            // SAFETY: as above, for one process.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

/// Live (non-zombie) processes whose session id is `sid`, from `/proc/<pid>/stat`.
pub(super) fn session_members(sid: libc::pid_t) -> Vec<libc::pid_t> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<libc::pid_t>().ok())
        .filter(|&pid| {
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                return false;
            };
            // Fields after the parenthesised command (which may itself hold ')' or spaces):
            // state, ppid, pgrp, session.
            let Some((_, rest)) = stat.rsplit_once(')') else {
                return false;
            };
            let fields: Vec<&str> = rest.split_whitespace().collect();
            fields.len() > 3 && fields[0] != "Z" && fields[3].parse() == Ok(sid)
        })
        .collect()
}
