//! Exit status and signal names (PROTOCOL.md §4.2): turning a wait status into the exit code
//! and signal name the wire reports. Pure functions; it waits for nothing.

#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Exit {
    pub(super) code: i32,
    pub(super) signal: Option<String>,
}

/// Conventional Linux names of signals 1..=31; others are `SIG<n>`.
pub fn signal_name(signal: i32) -> String {
    const NAMES: [&str; 31] = [
        "SIGHUP",
        "SIGINT",
        "SIGQUIT",
        "SIGILL",
        "SIGTRAP",
        "SIGABRT",
        "SIGBUS",
        "SIGFPE",
        "SIGKILL",
        "SIGUSR1",
        "SIGSEGV",
        "SIGUSR2",
        "SIGPIPE",
        "SIGALRM",
        "SIGTERM",
        "SIGSTKFLT",
        "SIGCHLD",
        "SIGCONT",
        "SIGSTOP",
        "SIGTSTP",
        "SIGTTIN",
        "SIGTTOU",
        "SIGURG",
        "SIGXCPU",
        "SIGXFSZ",
        "SIGVTALRM",
        "SIGPROF",
        "SIGWINCH",
        "SIGIO",
        "SIGPWR",
        "SIGSYS",
    ];
    usize::try_from(signal)
        .ok()
        .and_then(|n| n.checked_sub(1))
        .and_then(|i| NAMES.get(i))
        .map_or_else(|| format!("SIG{signal}"), |name| (*name).to_string())
}

pub(super) fn exit_from_status(status: libc::c_int) -> Exit {
    if libc::WIFEXITED(status) {
        Exit { code: libc::WEXITSTATUS(status), signal: None }
    } else if libc::WIFSIGNALED(status) {
        let signal = libc::WTERMSIG(status);
        Exit { code: 128 + signal, signal: Some(signal_name(signal)) }
    } else {
        Exit { code: -1, signal: None }
    }
}
