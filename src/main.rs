//! exec-server: the table of contents. Parse flags, set up logging, pick the mode (listen,
//! stdio, cloud), run it, and turn the outcome into an exit code (PROTOCOL.md §8.8).

mod cli;
mod config;
mod pool;
mod rpc;
mod session;
mod shutdown;
mod socket;
mod stdio;

use std::io::Write;
use std::net::TcpListener;
use std::time::Duration;

use cli::{Exit, Mode};
use rpc::Server;

/// How long graceful shutdown waits for connections to finish closing (§9.4 asks < 5 s).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let code = match run(&args) {
        Ok(()) => 0,
        Err(exit) => {
            if exit.code == 0 {
                print!("{}", exit.message);
            } else {
                eprintln!("{}", exit.message);
            }
            exit.code
        }
    };
    std::process::exit(code);
}

fn run(args: &[String]) -> Result<(), Exit> {
    let (mode, config) = cli::parse(args)?;
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("exec_server=info"))
        .target(env_logger::Target::Stderr)
        .init();
    if let Mode::Version = mode {
        println!("exec-server {}", env!("CARGO_PKG_VERSION"));
        return Ok(());
    }
    shutdown::install().map_err(|e| internal(format!("cannot install signal handlers: {e}")))?;
    match mode {
        Mode::Version => Ok(()),
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
            let security = socket::Security::new(token.as_deref());
            socket::accept(listener, &server, security).map_err(|e| internal(e.to_string()))?;
            stop(&server);
            Ok(())
        }
        Mode::Stdio => {
            let server = Server::new(config);
            stdio::serve(&server);
            stop(&server);
            Ok(())
        }
        Mode::Cloud(_) => Err(Exit::usage("cloud mode is not available in this build")),
    }
}

/// Graceful shutdown (§9.4): end every session and close every connection.
fn stop(server: &Server) {
    log::info!("shutting down");
    server.shutdown();
    server.wait_closed(SHUTDOWN_GRACE);
}

fn internal(message: String) -> Exit {
    Exit { code: 1, message }
}
