//! exec-server: the table of contents. Parse flags, set up logging, pick the mode (listen,
//! stdio, cloud), run it, and turn the outcome into an exit code (PROTOCOL.md §8.8).

// Ground floor: shared types and services that import none of the modules below.
mod alloc;
mod audit;
mod b64;
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

// What feeds the request layer: transports, cloud mode, and the command line.
mod cli;
mod cloud;
mod transport;

use std::io::Write;
use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use cli::{Exit, Mode};
use rpc::{Server, Transport};
use transport::{listener, websocket};

#[global_allocator]
static ALLOCATOR: alloc::Allocator = alloc::Allocator;

/// How long graceful shutdown waits for connections to finish closing (§9.4 asks < 5 s).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

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
    shutdown::install().map_err(|e| internal(format!("cannot install signal handlers: {e}")))?;
    process::prepare_spool(&config);
    match mode {
        Mode::Version | Mode::AuditVerify(_) | Mode::Doctor(_) => Ok(()),
        Mode::Listen { addr, token } => {
            let listener = TcpListener::bind(addr)
                .map_err(|e| internal(format!("failed to bind {addr}: {e}")))?;
            let bound = listener.local_addr().map_err(|e| internal(e.to_string()))?;
            let server = Server::new(config);
            let mut stdout = std::io::stdout();
            writeln!(stdout, "ws://{bound}")
                .and_then(|()| stdout.flush())
                .map_err(|e| internal(format!("cannot write to stdout: {e}")))?;
            log::info!("listening on ws://{bound}");
            let security = listener::Security::new(token.as_deref());
            listener::accept(listener, &server, security).map_err(|e| internal(e.to_string()))?;
            stop(&server);
            Ok(())
        }
        Mode::Stdio => {
            let server = Server::new(config);
            transport::stdio::serve(&server);
            stop(&server);
            Ok(())
        }
        Mode::Cloud(flags) => run_cloud(&flags, config),
        Mode::CloudV2(args) => run_cloud_v2(&args, config),
    }
}

/// Cloud mode (§8): the registration loop serves each rendezvous socket with the same
/// code as local connections, and sleeps until the next round unless shutdown comes first.
fn run_cloud(flags: &cloud::CloudArgs, config: config::Config) -> Result<(), Exit> {
    let cloud = flags.validate(&|key| std::env::var(key).ok()).map_err(Exit::usage)?;
    let server = Server::new(config);
    let done = watch_shutdown(&server)?;
    let keepalive =
        websocket::Keepalive { ping_every: cloud::PING_EVERY, dead_after: cloud::DEAD_AFTER };
    let outcome = cloud::run(
        cloud,
        &mut |mut ws| {
            // The client handshake used tungstenite's defaults; serve with ours.
            ws.set_config(|c| *c = websocket::ws_config(&server.config));
            websocket::serve(ws, &server, Transport::Rendezvous, Some(keepalive))
        },
        &|delay| shutdown::wait(Some(delay)),
    );
    stop(&server);
    let _ = done.send(());
    outcome.map_err(|e| Exit { code: e.code, message: e.message })
}

/// Cloud mode v2 (codex 0.171: environment registry + Noise relay; cloud::noise). The
/// bearer may come from stdin's first line; `--exit-on-stdin-close` then watches the rest.
fn run_cloud_v2(args: &cloud::noise::V2Args, config: config::Config) -> Result<(), Exit> {
    let cfg =
        cloud::noise::validate(args, &|k| std::env::var(k).ok(), &mut cloud::noise::stdin_line)
            .map_err(|e| Exit { code: e.code, message: e.message })?;
    if cfg.exit_on_stdin_close {
        cloud::noise::watch_stdin()
            .map_err(|e| internal(format!("cannot start the stdin watcher: {e}")))?;
    }
    let server = Server::new(config);
    let done = watch_shutdown(&server)?;
    let outcome =
        cloud::noise::run(cfg, &server, (cloud::PING_EVERY, cloud::DEAD_AFTER), &|delay| {
            shutdown::wait(Some(delay))
        });
    stop(&server);
    let _ = done.send(());
    outcome.map_err(|e| Exit { code: e.code, message: e.message })
}

/// Cloud modes block in `serve` while a link is up, and in a registry request or a dial
/// (up to 10 s each) otherwise. This thread turns SIGTERM/SIGINT into closing the link; if
/// the loop is stuck in a request instead, it finishes the shutdown itself so that it stays
/// within §9.4's few seconds. The loop sends on the returned channel once it has ended.
fn watch_shutdown(server: &Arc<Server>) -> Result<std::sync::mpsc::Sender<()>, Exit> {
    let (done, loop_ended) = std::sync::mpsc::channel::<()>();
    let watcher = Arc::clone(server);
    std::thread::Builder::new()
        .name("shutdown".into())
        .spawn(move || {
            shutdown::wait(None);
            watcher.shutdown();
            if loop_ended.recv_timeout(SHUTDOWN_GRACE).is_err() {
                watcher.wait_closed(SHUTDOWN_GRACE);
                log::info!("shutting down during a registry request");
                std::process::exit(0);
            }
        })
        .map_err(|e| internal(format!("cannot start the shutdown thread: {e}")))?;
    Ok(done)
}

/// Graceful shutdown (§9.4): end every session and close every connection.
fn stop(server: &Server) {
    log::info!("shutting down");
    server.shutdown();
    process::kill_strays();
    server.wait_closed(SHUTDOWN_GRACE);
    audit::record("daemonStopped", serde_json::json!({}));
    audit::flush();
}

fn internal(message: String) -> Exit {
    Exit { code: 1, message }
}
