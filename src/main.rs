//! exec-server: the table of contents. Parse flags, set up logging, pick the mode (listen,
//! stdio, cloud), run it, and turn the outcome into an exit code (PROTOCOL.md §8.8).

// Ground floor: shared types and services that import none of the modules below.
mod alloc;
mod audit;
mod b64;
mod children;
mod config;
mod error;
mod limits;
mod logfmt;
mod outbound;
#[cfg(test)]
mod proptest_config;
mod recycle;
mod shutdown;
mod toml;
mod uri;
mod wire;

// Outbound connections: proxies, TLS, dialing and HTTP/1.1 for the cloud legs,
// `http/request` and `doctor`.
mod net;

// Handlers: what the methods do (they never import `rpc`).
mod envconfig;
mod environment;
mod fs;
mod http;
mod process;
mod sandbox;

// The request layer: envelope, ordering, sessions and the one dispatch `match`.
mod rpc;

// What feeds the request layer: transports, cloud mode, the command line, and running a
// mode to its graceful shutdown.
mod cli;
mod cloud;
mod modes;
mod transport;

use cli::{Exit, Mode};

#[global_allocator]
static ALLOCATOR: alloc::Allocator = alloc::Allocator;

fn main() {
    // The confined filesystem helper (sandbox/fs_child.rs) is this binary run again.
    if std::env::args_os().nth(1).is_some_and(|a| a == sandbox::fs_child::HELPER_ARG) {
        std::process::exit(sandbox::fs_child::main(fs::confined::run_unconfined));
    }
    let args: Vec<String> = std::env::args().collect();
    let code = match run(&args) {
        Ok(()) => 0,
        Err(exit) => {
            if exit.code == 0 {
                print!("{}", exit.message);
            } else if !exit.message.is_empty() {
                eprintln!("{}", exit.message);
            }
            exit.code
        }
    };
    std::process::exit(code);
}

fn run(args: &[String]) -> Result<(), Exit> {
    let log_format = cli::log_format(args)?;
    let (mode, config) = cli::parse(args)?;
    logfmt::init(log_format);
    if let Mode::AuditVerify(path) = &mode {
        let (code, out, err) = audit::verify_report(path);
        print!("{out}");
        return if code == 0 { Ok(()) } else { Err(Exit { code, message: err }) };
    }
    if let Mode::Doctor(args) = &mode {
        let code = cloud::doctor::run(args, &|key| std::env::var(key).ok());
        return if code == 0 { Ok(()) } else { Err(Exit { code, message: String::new() }) };
    }
    if let Mode::Version = mode {
        // The version, then what this host can enforce of a client's sandbox.
        println!("exec-server {}", env!("CARGO_PKG_VERSION"));
        println!("{}", sandbox::probe::support().summary());
        return Ok(());
    }
    // Probes (once) and logs what this host can enforce of a client's sandbox.
    sandbox::probe::support();
    fs::set_fsync_writes(config.fsync_writes);
    if config.limits != limits::Limits::default() {
        log::info!("operator limits on every process: {}", config.limits.to_json());
    }
    if let Some(path) = &config.audit_log {
        audit::start(path, config.limits.to_json()).map_err(|e| {
            Exit::usage(format!("audit log `{}` cannot be opened: {e}", path.display()))
        })?;
    }
    shutdown::install()
        .map_err(|e| Exit::internal(format!("cannot install signal handlers: {e}")))?;
    if let Err(e) = alloc::start_trimmer() {
        log::warn!("large buffers are not kept for reuse: cannot start their trimmer: {e}");
    }
    process::prepare_spool(&config);
    match mode {
        Mode::Version | Mode::AuditVerify(_) | Mode::Doctor(_) => Ok(()),
        Mode::Listen { addr, token } => modes::listen(addr, token.as_deref(), config),
        Mode::Stdio => modes::stdio(config),
        Mode::Cloud(flags) => modes::cloud(&flags, config),
        Mode::CloudV2(args) => modes::cloud_v2(&args, config),
    }
}
