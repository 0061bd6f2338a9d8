//! The command line: flags (argh), their validation with the exact texts of PROTOCOL.md
//! §1.1, §9.3 and §10, and the resulting mode and `Config`. It starts nothing.

use std::net::SocketAddr;
use std::time::Duration;

use argh::FromArgs;

use crate::cloud::noise::V2Args;
use crate::cloud::CloudArgs;
use crate::config::Config;
use crate::limits::Limits;
use crate::logfmt::{LogFormat, LOG_FORMAT_ENV};

/// exec-server: run processes and use files on this host for a remote orchestrator, over
/// JSON-RPC on a websocket, stdio, or an outbound cloud rendezvous.
#[derive(FromArgs, Debug)]
pub struct Flags {
    /// where to serve: ws://IP:PORT (default ws://127.0.0.1:0) or stdio
    #[argh(option)]
    listen: Option<String>,
    /// file holding the token websocket clients must present (wins over
    /// EXEC_SERVER_CONNECTION_TOKEN)
    #[argh(option)]
    connection_token_file: Option<String>,
    /// allow listening beyond loopback without a connection token
    #[argh(switch)]
    allow_unauthenticated: bool,
    /// largest inbound message in bytes (default 268435456)
    #[argh(option)]
    max_message_bytes: Option<usize>,
    /// websocket connections at once (default 256)
    #[argh(option)]
    max_connections: Option<usize>,
    /// requests executing at once over all connections (default 64)
    #[argh(option)]
    workers: Option<usize>,
    /// requests executing at once per connection (default 16)
    #[argh(option)]
    concurrent_requests: Option<usize>,
    /// seconds a TCP connection has to finish its upgrade (default 10)
    #[argh(option)]
    handshake_timeout_secs: Option<u64>,
    /// seconds a detached session lives (default 600; 0 = ends at once; env
    /// EXEC_SERVER_SESSION_TTL_SECS)
    #[argh(option)]
    session_ttl_secs: Option<u64>,
    /// same as --session-ttl-secs
    #[argh(option)]
    detach_ttl_secs: Option<u64>,
    /// seconds a peer may accept no byte before it is dropped (default 60)
    #[argh(option)]
    write_stall_secs: Option<u64>,
    /// live processes over all sessions (default 1024)
    #[argh(option)]
    max_processes: Option<usize>,
    /// retained output bytes per process (default 1048576)
    #[argh(option)]
    retained_output_bytes: Option<usize>,
    /// seconds a finished process stays readable (default 30)
    #[argh(option)]
    exited_retention_secs: Option<u64>,
    /// cap on process/read waitMs in milliseconds (default 30000)
    #[argh(option)]
    max_wait_ms: Option<u64>,
    /// directory for output spool files (default $TMPDIR/exec-server-spool-<uid>; env
    /// EXEC_SERVER_SPOOL_DIR)
    #[argh(option)]
    spool_dir: Option<String>,
    /// spooled output bytes per process, 0 = no spool (default 67108864; env
    /// EXEC_SERVER_SPOOL_BYTES_PER_PROCESS)
    #[argh(option)]
    spool_bytes_per_process: Option<u64>,
    /// spooled output bytes over all processes (default 1073741824; env
    /// EXEC_SERVER_SPOOL_BYTES_TOTAL)
    #[argh(option)]
    spool_bytes_total: Option<u64>,
    /// fs/writeFile flushes each file to disk before renaming it over the old one: true
    /// or false (default true)
    #[argh(option)]
    fsync_writes: Option<bool>,
    /// cloud mode: register with an executor registry and serve its rendezvous
    #[argh(switch)]
    cloud: bool,
    /// executor registry base URL (env CODEX_CLOUD_ENVIRONMENTS_BASE_URL)
    #[argh(option)]
    cloud_base_url: Option<String>,
    /// same as --cloud-base-url; implies --cloud
    #[argh(option)]
    remote: Option<String>,
    /// the registry's executor id (env CODEX_CLOUD_ENVIRONMENT_ID)
    #[argh(option)]
    cloud_environment_id: Option<String>,
    /// same as --cloud-environment-id
    #[argh(option)]
    executor_id: Option<String>,
    /// executor name to register (default codex-exec-server)
    #[argh(option)]
    cloud_name: Option<String>,
    /// same as --cloud-name
    #[argh(option)]
    name: Option<String>,
    /// file holding the registry bearer token (wins over
    /// CODEX_EXEC_SERVER_REMOTE_BEARER_TOKEN)
    #[argh(option)]
    token_file: Option<String>,
    /// extra PEM CA bundle to trust (env SSL_CERT_FILE)
    #[argh(option)]
    ca_file: Option<String>,
    /// log lines as `text` (default) or `json`, one object per line (env
    /// EXEC_SERVER_LOG_FORMAT)
    #[argh(option)]
    #[allow(dead_code)] // read by `log_format` before logging starts
    log_format: Option<String>,
    /// cloud mode: http://[user:pass@]host:port CONNECT proxy for both legs (overrides
    /// HTTPS_PROXY, HTTP_PROXY, ALL_PROXY; NO_PROXY still applies)
    #[argh(option)]
    proxy: Option<String>,
    /// print the version and exit
    #[argh(switch)]
    version: bool,
    /// cloud mode v2: environment id to register (with --remote; env
    /// CODEX_EXEC_SERVER_NOISE_ENVIRONMENT_ID)
    #[argh(option)]
    environment_id: Option<String>,
    /// cloud mode v2: read one registration bearer line from stdin
    #[argh(switch)]
    registration_bearer_stdin: bool,
    /// cloud mode v2 transport: noise (default); direct is not supported
    #[argh(option)]
    remote_transport: Option<String>,
    /// exit when standard input is closed (env CODEX_EXEC_SERVER_EXIT_ON_STDIN_CLOSE)
    #[argh(switch)]
    exit_on_stdin_close: bool,
    // Operator limits on every child (issue 18; src/limits.rs), each with an
    // EXEC_SERVER_<NAME> environment fallback.
    /// wall-clock seconds after which a process tree is killed (default off)
    #[argh(option)]
    process_timeout_secs: Option<String>,
    /// CPU seconds per process (RLIMIT_CPU)
    #[argh(option)]
    cpu_limit_secs: Option<String>,
    /// address space bytes per process (RLIMIT_AS)
    #[argh(option)]
    memory_limit_bytes: Option<String>,
    /// processes of the daemon's user, host-wide (RLIMIT_NPROC; root ignores it)
    #[argh(option)]
    max_child_processes: Option<String>,
    /// output bytes per process, after which its tree is killed
    #[argh(option)]
    max_output_bytes: Option<String>,
    /// largest file a process may write (RLIMIT_FSIZE)
    #[argh(option)]
    max_file_size_bytes: Option<String>,
    /// open descriptors per process (RLIMIT_NOFILE)
    #[argh(option)]
    max_open_files: Option<String>,
    /// append a hash-chained JSON-lines audit log to PATH (env EXEC_SERVER_AUDIT_LOG;
    /// check one with `exec-server audit verify PATH`)
    #[argh(option)]
    audit_log: Option<String>,
}

/// exec-server doctor: check each link of cloud mode's path (configuration, token, DNS,
/// proxy, TCP, TLS, clock, registration, rendezvous websocket) and report one line each.
#[derive(FromArgs, Debug)]
struct DoctorFlags {
    /// registry base URL (env CODEX_CLOUD_ENVIRONMENTS_BASE_URL)
    #[argh(option)]
    cloud_base_url: Option<String>,
    /// executor id (env CODEX_CLOUD_ENVIRONMENT_ID)
    #[argh(option)]
    cloud_environment_id: Option<String>,
    /// cloud mode v2: registry base URL (with --environment-id)
    #[argh(option)]
    remote: Option<String>,
    /// cloud mode v2: environment id (selects v2)
    #[argh(option)]
    environment_id: Option<String>,
    /// executor name (default codex-exec-server)
    #[argh(option)]
    cloud_name: Option<String>,
    /// file holding the registry bearer token (else CODEX_EXEC_SERVER_REMOTE_BEARER_TOKEN)
    #[argh(option)]
    token_file: Option<String>,
    /// extra PEM CA bundle to trust (env SSL_CERT_FILE)
    #[argh(option)]
    ca_file: Option<String>,
    /// http://[user:pass@]host:port CONNECT proxy (overrides the proxy variables)
    #[argh(option)]
    proxy: Option<String>,
    /// deadline of each check in seconds (default 10)
    #[argh(option)]
    timeout: Option<u64>,
    /// print one JSON object instead of lines
    #[argh(switch)]
    json: bool,
}

/// What to run.
pub enum Mode {
    Doctor(crate::cloud::doctor::DoctorArgs),
    Version,
    /// `exec-server audit verify PATH`.
    AuditVerify(std::path::PathBuf),
    Listen {
        addr: SocketAddr,
        token: Option<String>,
    },
    Stdio,
    Cloud(CloudArgs),
    CloudV2(V2Args),
}

/// A startup failure: the message for stderr and the exit code (§8.8).
#[derive(Debug)]
pub struct Exit {
    pub code: i32,
    pub message: String,
}

impl Exit {
    pub fn usage(message: impl Into<String>) -> Exit {
        Exit { code: 2, message: message.into() }
    }

    /// Exit 1: the daemon could not do what it was asked (bind, write, spawn a thread).
    pub fn internal(message: impl Into<String>) -> Exit {
        Exit { code: 1, message: message.into() }
    }
}

/// `--log-format` (else `EXEC_SERVER_LOG_FORMAT`), read before anything logs; `parse`
/// accepts the flag and leaves it alone.
pub fn log_format(args: &[String]) -> Result<LogFormat, Exit> {
    let mut given = None;
    for (i, arg) in args.iter().enumerate() {
        if arg == "--log-format" {
            given = args.get(i + 1).cloned();
        } else if let Some(value) = arg.strip_prefix("--log-format=") {
            given = Some(value.to_owned());
        }
    }
    match given {
        Some(value) => LogFormat::parse(&value, "--log-format").map_err(Exit::usage),
        None => match std::env::var(LOG_FORMAT_ENV) {
            Ok(value) => LogFormat::parse(&value, LOG_FORMAT_ENV).map_err(Exit::usage),
            Err(_) => Ok(LogFormat::Text),
        },
    }
}

/// Parses the process's arguments into a mode and a configuration.
pub fn parse(args: &[String]) -> Result<(Mode, Config), Exit> {
    let command = args.first().map_or("exec-server", String::as_str);
    let rest: Vec<&str> = args.iter().skip(1).map(String::as_str).collect();
    if rest.first() == Some(&"audit") {
        return match rest[1..] {
            ["verify", path] => Ok((Mode::AuditVerify(path.into()), Config::default())),
            _ => Err(Exit::usage("usage: exec-server audit verify PATH")),
        };
    }
    if rest.first() == Some(&"doctor") {
        let defaults = Flags::from_args(&[command], &[]).map_err(|e| Exit::usage(e.output))?;
        return Ok((Mode::Doctor(doctor_args(command, &rest[1..])?), config(&defaults)));
    }
    let flags = Flags::from_args(&[command], &rest).map_err(|early| match early.status {
        Ok(()) => Exit { code: 0, message: early.output },
        Err(()) => Exit::usage(early.output.trim_end()),
    })?;
    let mut config = config(&flags);
    session_and_spool(&flags, &|key| std::env::var(key).ok(), &mut config)?;
    config.limits = limits(&flags, &|key| std::env::var(key).ok())?;
    config.audit_log = match &flags.audit_log {
        Some(path) => Some(path.into()),
        None => std::env::var_os("EXEC_SERVER_AUDIT_LOG").filter(|v| !v.is_empty()).map(Into::into),
    };
    if flags.version {
        return Ok((Mode::Version, config));
    }
    let cloud = cloud_args(&flags);
    if let Some(v2) = v2_args(&flags, &cloud)? {
        return Ok((Mode::CloudV2(v2), config));
    }
    if let Some(message) = cloud.usage_error(flags.listen.as_deref()) {
        return Err(Exit::usage(message));
    }
    if cloud.enabled() {
        return Ok((Mode::Cloud(cloud), config));
    }
    let listen = flags.listen.as_deref().unwrap_or("ws://127.0.0.1:0");
    if listen == "stdio" || listen == "stdio://" {
        return Ok((Mode::Stdio, config));
    }
    let addr = parse_listen(listen)?;
    let token = connection_token(flags.connection_token_file.as_deref())?;
    let loopback = addr.ip().is_loopback();
    if !loopback && token.is_none() && !flags.allow_unauthenticated {
        return Err(Exit::usage(format!(
            "refusing to listen on {addr} without a connection token: set \
             --connection-token-file or EXEC_SERVER_CONNECTION_TOKEN, or pass \
             --allow-unauthenticated"
        )));
    }
    Ok((Mode::Listen { addr, token }, config))
}

fn parse_listen(listen: &str) -> Result<SocketAddr, Exit> {
    match listen.strip_prefix("ws://") {
        Some(rest) => rest.parse().map_err(|_| {
            Exit::usage(format!(
                "invalid websocket --listen URL `{listen}`; expected `ws://IP:PORT`"
            ))
        }),
        None => Err(Exit::usage(format!(
            "unsupported --listen URL `{listen}`; expected `ws://IP:PORT` or `stdio`"
        ))),
    }
}

/// The connection token of §9.3, from its file (which wins) or the environment.
fn connection_token(file: Option<&str>) -> Result<Option<String>, Exit> {
    let token = match file {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                Exit::usage(format!("connection token file `{path}` could not be read: {e}"))
            })?;
            let token = text.trim().to_string();
            if token.is_empty() {
                return Err(Exit::usage(format!("connection token file `{path}` is empty")));
            }
            token
        }
        None => match std::env::var("EXEC_SERVER_CONNECTION_TOKEN") {
            Ok(value) if value.trim().is_empty() => {
                return Err(Exit::usage("EXEC_SERVER_CONNECTION_TOKEN is empty"))
            }
            Ok(value) => value.trim().to_string(),
            Err(std::env::VarError::NotPresent) => return Ok(None),
            Err(std::env::VarError::NotUnicode(_)) => {
                return Err(Exit::usage("EXEC_SERVER_CONNECTION_TOKEN is not valid UTF-8"))
            }
        },
    };
    Ok(Some(token))
}

fn config(flags: &Flags) -> Config {
    let defaults = Config::default();
    let secs = |v: Option<u64>, d: Duration| v.map_or(d, Duration::from_secs);
    Config {
        max_message_bytes: flags.max_message_bytes.unwrap_or(defaults.max_message_bytes),
        max_connections: flags.max_connections.unwrap_or(defaults.max_connections),
        workers: flags.workers.unwrap_or(defaults.workers).max(1),
        concurrent_requests: flags
            .concurrent_requests
            .unwrap_or(defaults.concurrent_requests)
            .max(1),
        handshake_timeout: secs(flags.handshake_timeout_secs, defaults.handshake_timeout),
        // Set with the spool flags (session_and_spool), which read the environment too.
        detach_ttl: defaults.detach_ttl,
        write_stall: secs(flags.write_stall_secs, defaults.write_stall),
        max_processes: flags.max_processes.unwrap_or(defaults.max_processes),
        retained_output_bytes: flags
            .retained_output_bytes
            .unwrap_or(defaults.retained_output_bytes),
        exited_retention: secs(flags.exited_retention_secs, defaults.exited_retention),
        max_wait: flags.max_wait_ms.map_or(defaults.max_wait, Duration::from_millis),
        fsync_writes: flags.fsync_writes.unwrap_or(defaults.fsync_writes),
        limits: Limits::default(),
        audit_log: None,
        ..defaults
    }
}

/// The session TTL and the spool settings: a flag wins over its environment variable, which
/// wins over the default. `--detach-ttl-secs` is the older name of `--session-ttl-secs`.
fn session_and_spool(
    flags: &Flags,
    env: &dyn Fn(&str) -> Option<String>,
    config: &mut Config,
) -> Result<(), Exit> {
    let number = |flag: Option<u64>, key: &str| -> Result<Option<u64>, Exit> {
        match (flag, env(key)) {
            (Some(value), _) => Ok(Some(value)),
            (None, Some(text)) => text.trim().parse().map(Some).map_err(|_| {
                Exit::usage(format!("{key} must be a non-negative integer, got `{text}`"))
            }),
            (None, None) => Ok(None),
        }
    };
    let ttl = match (flags.session_ttl_secs, flags.detach_ttl_secs) {
        (Some(a), Some(b)) if a != b => {
            return Err(Exit::usage(
                "--session-ttl-secs and --detach-ttl-secs (its older name) disagree",
            ))
        }
        (a, b) => a.or(b),
    };
    if let Some(secs) = number(ttl, "EXEC_SERVER_SESSION_TTL_SECS")? {
        config.detach_ttl = Duration::from_secs(secs);
    }
    if let Some(bytes) =
        number(flags.spool_bytes_per_process, "EXEC_SERVER_SPOOL_BYTES_PER_PROCESS")?
    {
        config.spool_bytes_per_process = bytes;
    }
    if let Some(bytes) = number(flags.spool_bytes_total, "EXEC_SERVER_SPOOL_BYTES_TOTAL")? {
        config.spool_bytes_total = bytes;
    }
    match flags.spool_dir.clone().or_else(|| env("EXEC_SERVER_SPOOL_DIR")) {
        Some(dir) if dir.is_empty() => return Err(Exit::usage("the spool directory is empty")),
        Some(dir) => config.spool_dir = dir.into(),
        None => {}
    }
    Ok(())
}

fn limits(flags: &Flags, env: &dyn Fn(&str) -> Option<String>) -> Result<Limits, Exit> {
    let values = [
        &flags.process_timeout_secs,
        &flags.cpu_limit_secs,
        &flags.memory_limit_bytes,
        &flags.max_child_processes,
        &flags.max_output_bytes,
        &flags.max_file_size_bytes,
        &flags.max_open_files,
    ]
    .map(Option::as_deref);
    Limits::parse(values, env).map_err(Exit::usage)
}

fn doctor_args(command: &str, rest: &[&str]) -> Result<crate::cloud::doctor::DoctorArgs, Exit> {
    let flags =
        DoctorFlags::from_args(&[command, "doctor"], rest).map_err(|early| match early.status {
            Ok(()) => Exit { code: 0, message: early.output },
            Err(()) => Exit::usage(early.output.trim_end()),
        })?;
    let v2 = flags.environment_id.is_some().then(|| V2Args {
        remote: flags.remote.clone(),
        environment_id: flags.environment_id.clone(),
        token_file: flags.token_file.clone(),
        ca_file: flags.ca_file.clone(),
        proxy: flags.proxy.clone(),
        ..V2Args::default()
    });
    Ok(crate::cloud::doctor::DoctorArgs {
        v2,
        cloud: CloudArgs {
            cloud: true,
            cloud_base_url: flags.cloud_base_url.or(flags.remote),
            cloud_environment_id: flags.cloud_environment_id,
            cloud_name: flags.cloud_name,
            token_file: flags.token_file,
            ca_file: flags.ca_file,
            proxy: flags.proxy,
            ..CloudArgs::default()
        },
        timeout: flags.timeout.map(Duration::from_secs),
        json: flags.json,
    })
}

fn cloud_args(flags: &Flags) -> CloudArgs {
    CloudArgs {
        cloud: flags.cloud,
        cloud_base_url: flags.cloud_base_url.clone(),
        remote: flags.remote.clone(),
        cloud_environment_id: flags.cloud_environment_id.clone(),
        executor_id: flags.executor_id.clone(),
        cloud_name: flags.cloud_name.clone(),
        name: flags.name.clone(),
        token_file: flags.token_file.clone(),
        ca_file: flags.ca_file.clone(),
        proxy: flags.proxy.clone(),
    }
}

/// Cloud mode v2 when its options (or its two environment variables) are given; v1's own
/// options and `--listen` cannot be combined with it.
fn v2_args(flags: &Flags, v1: &CloudArgs) -> Result<Option<V2Args>, Exit> {
    let args = V2Args {
        remote: flags.remote.clone(),
        environment_id: flags.environment_id.clone(),
        name: flags.name.clone(),
        registration_bearer_stdin: flags.registration_bearer_stdin,
        remote_transport: flags.remote_transport.clone(),
        token_file: flags.token_file.clone(),
        ca_file: flags.ca_file.clone(),
        proxy: flags.proxy.clone(),
        exit_on_stdin_close: flags.exit_on_stdin_close,
    };
    let v1_only = v1.cloud
        || v1.cloud_base_url.is_some()
        || v1.cloud_environment_id.is_some()
        || v1.executor_id.is_some()
        || v1.cloud_name.is_some();
    if !args.enabled() {
        return Ok(None);
    }
    if v1_only {
        return Err(Exit::usage(
            "--environment-id (cloud mode v2) cannot be combined with --cloud, --cloud-base-url, --cloud-environment-id, --executor-id or --cloud-name",
        ));
    }
    if let Some(listen) = &flags.listen {
        return Err(Exit::usage(format!("--listen `{listen}` cannot be combined with cloud mode")));
    }
    Ok(Some(args))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_args(args: &[&str]) -> Result<Mode, Exit> {
        let mut all = vec!["exec-server".to_string()];
        all.extend(args.iter().map(|s| s.to_string()));
        parse(&all).map(|(mode, _)| mode)
    }

    #[test]
    fn listen_urls() {
        assert!(
            matches!(parse_args(&[]), Ok(Mode::Listen { addr, .. }) if addr.to_string() == "127.0.0.1:0")
        );
        assert!(matches!(parse_args(&["--listen", "ws://[::1]:0"]), Ok(Mode::Listen { .. })));
        assert!(matches!(parse_args(&["--listen", "stdio"]), Ok(Mode::Stdio)));
        assert!(matches!(parse_args(&["--listen", "stdio://"]), Ok(Mode::Stdio)));
        let e = parse_args(&["--listen", "ws://localhost:1234"]).err().expect("rejected");
        assert_eq!(e.code, 2);
        assert_eq!(
            e.message,
            "invalid websocket --listen URL `ws://localhost:1234`; expected `ws://IP:PORT`"
        );
        let e = parse_args(&["--listen", "http://x"]).err().expect("rejected");
        assert_eq!(
            e.message,
            "unsupported --listen URL `http://x`; expected `ws://IP:PORT` or `stdio`"
        );
    }

    fn config_of(args: &[&str], env: &[(&str, &str)]) -> Result<Config, Exit> {
        let flags = Flags::from_args(&["exec-server"], args).map_err(|e| Exit::usage(e.output))?;
        let mut config = config(&flags);
        let lookup = |key: &str| env.iter().find(|(k, _)| *k == key).map(|(_, v)| v.to_string());
        session_and_spool(&flags, &lookup, &mut config)?;
        Ok(config)
    }

    #[test]
    fn session_ttl_and_spool_settings() {
        let c = config_of(&[], &[]).expect("defaults");
        assert_eq!(c.detach_ttl, Duration::from_secs(600));
        assert_eq!((c.spool_bytes_per_process, c.spool_bytes_total), (64 << 20, 1 << 30));
        assert!(c.spool_dir.ends_with(format!("exec-server-spool-{}", unsafe { libc::geteuid() })));
        let c = config_of(&["--detach-ttl-secs", "5"], &[]).expect("old name");
        assert_eq!(c.detach_ttl, Duration::from_secs(5));
        let c = config_of(&["--session-ttl-secs", "7"], &[("EXEC_SERVER_SESSION_TTL_SECS", "9")])
            .expect("flag wins");
        assert_eq!(c.detach_ttl, Duration::from_secs(7));
        let env = [
            ("EXEC_SERVER_SESSION_TTL_SECS", "9"),
            ("EXEC_SERVER_SPOOL_DIR", "/var/spool/x"),
            ("EXEC_SERVER_SPOOL_BYTES_PER_PROCESS", "0"),
            ("EXEC_SERVER_SPOOL_BYTES_TOTAL", "4096"),
        ];
        let c = config_of(&[], &env).expect("environment");
        assert_eq!(c.detach_ttl, Duration::from_secs(9));
        assert_eq!(c.spool_dir, std::path::Path::new("/var/spool/x"));
        assert_eq!((c.spool_bytes_per_process, c.spool_bytes_total), (0, 4096));
        let c = config_of(&["--spool-bytes-total", "1", "--spool-dir", "/d"], &env).expect("flags");
        assert_eq!((c.spool_bytes_total, c.spool_dir.as_path()), (1, std::path::Path::new("/d")));
        let e = config_of(&[], &[("EXEC_SERVER_SPOOL_BYTES_TOTAL", "1G")]).expect_err("bad");
        assert_eq!(
            (e.code, e.message.as_str()),
            (2, "EXEC_SERVER_SPOOL_BYTES_TOTAL must be a non-negative integer, got `1G`")
        );
        let e = config_of(&["--session-ttl-secs", "1", "--detach-ttl-secs", "2"], &[]).err();
        assert_eq!(e.map(|e| e.code), Some(2));
    }

    #[test]
    fn bad_flags_are_usage_errors() {
        assert_eq!(parse_args(&["--bogus"]).err().map(|e| e.code), Some(2));
        assert_eq!(parse_args(&["--workers", "x"]).err().map(|e| e.code), Some(2));
        assert_eq!(parse_args(&["--help"]).err().map(|e| e.code), Some(0));
        let e = parse_args(&["--cloud", "--listen", "stdio"]).err().expect("rejected");
        assert_eq!(e.code, 2);
        let e = parse_args(&["--cpu-limit-secs", "-1"]).err().expect("rejected");
        assert_eq!(e.code, 2);
        assert_eq!(e.message, "invalid --cpu-limit-secs `-1`: expected a positive integer");
    }
}
