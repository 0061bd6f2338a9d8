//! The JSON-RPC layer: the daemon's `Server` (sessions, pool, live connections) and the
//! `Transport` a connection runs over. A message's path: a transport hands its text to
//! `Connection::handle` (connection.rs), which decodes the envelope (envelope.rs), orders it
//! (§1.5) and runs it through the one `match` (dispatch.rs) into a handler of process/ or fs/;
//! the response leaves through the connection's `Outbound`. It never touches sockets.

mod connection;
mod dispatch;
mod envelope;
mod outline;
#[cfg(test)]
mod outline_tests;
mod pool;
#[cfg(test)]
mod proptests;
mod session;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

use crate::config::Config;
use crate::outbound::{CloseReason, Outbound};
use connection::ConnState;
pub use connection::{Connection, Flow};
pub use envelope::Text;
use pool::Pool;
use session::Sessions;

/// What a connection runs over; it decides the malformed-message prefix (§1.4).
pub enum Transport {
    Local(SocketAddr),
    Rendezvous,
    Stdio,
}

/// The daemon's shared state: configuration, sessions, the worker pool, live connections.
pub struct Server {
    pub config: Arc<Config>,
    pub sessions: Arc<Sessions>,
    pool: Pool,
    conns: Mutex<HashMap<u64, Arc<dyn Outbound>>>,
    /// Signalled whenever a connection is deregistered.
    conn_gone: Condvar,
    next_conn: AtomicU64,
}

impl Server {
    pub fn new(config: Config) -> Arc<Server> {
        let config = Arc::new(config);
        Arc::new(Server {
            sessions: Sessions::new(Arc::clone(&config)),
            pool: Pool::new(config.workers),
            config,
            conns: Mutex::new(HashMap::new()),
            conn_gone: Condvar::new(),
            next_conn: AtomicU64::new(1),
        })
    }

    /// Registers a new client connection that writes through `out`.
    pub fn connect(
        self: &Arc<Self>,
        out: Arc<dyn Outbound>,
        transport: Transport,
    ) -> Arc<Connection> {
        let id = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let prefix = match transport {
            Transport::Local(peer) => format!(
                "failed to parse websocket JSON-RPC message from exec-server websocket {peer}: "
            ),
            Transport::Rendezvous => {
                "failed to parse websocket JSON-RPC message from remote exec-server websocket: "
                    .to_string()
            }
            Transport::Stdio => {
                "failed to parse JSON-RPC message from exec-server stdio: ".to_string()
            }
        };
        lock(&self.conns).insert(id, Arc::clone(&out));
        let (kind, peer) = match transport {
            Transport::Local(peer) => ("websocket", Some(peer.to_string())),
            Transport::Rendezvous => ("rendezvous", None),
            Transport::Stdio => ("stdio", None),
        };
        crate::audit::record(
            "connectionOpened",
            serde_json::json!({"connection": id, "transport": kind, "peer": peer}),
        );
        Arc::new(Connection {
            id,
            server: Arc::clone(self),
            out,
            prefix,
            state: Mutex::new(ConnState::default()),
            room: Condvar::new(),
        })
    }

    /// Graceful shutdown (§9.4): ends every session (killing its processes) and starts
    /// closing every connection with 1001.
    pub fn shutdown(&self) {
        self.sessions.end_all();
        let conns: Vec<Arc<dyn Outbound>> = lock(&self.conns).values().cloned().collect();
        for out in conns {
            out.close(CloseReason::GoingAway);
        }
    }

    /// Waits until every connection has ended, for at most `grace`.
    pub fn wait_closed(&self, grace: std::time::Duration) {
        let conns = lock(&self.conns);
        let _ = self
            .conn_gone
            .wait_timeout_while(conns, grace, |c| !c.is_empty())
            .unwrap_or_else(PoisonError::into_inner);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
