//! Running each serving mode to its end: the local websocket listener, stdio, cloud mode v1
//! (§8) and v2 (Noise relay), each followed by the graceful shutdown of §9.4 (every session
//! ended, every connection closed, strays killed, the audit log flushed). main.rs picks the
//! mode; this file owns how a mode runs and stops.

use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use crate::cli::Exit;
use crate::config::Config;
use crate::rpc::{Server, Transport};
use crate::transport::{listener, websocket};
use crate::{audit, cloud, process, shutdown, transport};

/// How long graceful shutdown waits for connections to finish closing (§9.4 asks < 5 s).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// Local mode: binds `addr`, prints the bound URL as the one stdout line, serves until
/// shutdown. `token` is the connection token clients must present, if any.
pub fn listen(addr: SocketAddr, token: Option<&str>, config: Config) -> Result<(), Exit> {
    let listener = TcpListener::bind(addr)
        .map_err(|e| Exit::internal(format!("failed to bind {addr}: {e}")))?;
    let bound = listener.local_addr().map_err(|e| Exit::internal(e.to_string()))?;
    let server = Server::new(config);
    let mut stdout = std::io::stdout();
    writeln!(stdout, "ws://{bound}")
        .and_then(|()| stdout.flush())
        .map_err(|e| Exit::internal(format!("cannot write to stdout: {e}")))?;
    log::info!("listening on ws://{bound}");
    let security = listener::Security::new(token);
    listener::accept(listener, &server, security).map_err(|e| Exit::internal(e.to_string()))?;
    stop(&server);
    Ok(())
}

/// `--listen stdio`: one connection on stdin/stdout until EOF or shutdown.
pub fn stdio(config: Config) -> Result<(), Exit> {
    let server = Server::new(config);
    transport::stdio::serve(&server);
    stop(&server);
    Ok(())
}

/// Cloud mode (§8): the registration loop serves each rendezvous socket with the same
/// code as local connections, and sleeps until the next round unless shutdown comes first.
pub fn cloud(flags: &cloud::CloudArgs, config: Config) -> Result<(), Exit> {
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
            websocket::serve(
                ws,
                websocket::Reading::Tungstenite,
                &server,
                Transport::Rendezvous,
                Some(keepalive),
            )
        },
        &|delay| shutdown::wait(Some(delay)),
    );
    stop(&server);
    let _ = done.send(());
    outcome.map_err(|e| Exit { code: e.code, message: e.message })
}

/// Cloud mode v2 (codex 0.171: environment registry + Noise relay; cloud::noise). The
/// bearer may come from stdin's first line; `--exit-on-stdin-close` then watches the rest.
pub fn cloud_v2(args: &cloud::noise::V2Args, config: Config) -> Result<(), Exit> {
    let cfg =
        cloud::noise::validate(args, &|k| std::env::var(k).ok(), &mut cloud::noise::stdin_line)
            .map_err(|e| Exit { code: e.code, message: e.message })?;
    if cfg.exit_on_stdin_close {
        cloud::noise::watch_stdin()
            .map_err(|e| Exit::internal(format!("cannot start the stdin watcher: {e}")))?;
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
        .map_err(|e| Exit::internal(format!("cannot start the shutdown thread: {e}")))?;
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
