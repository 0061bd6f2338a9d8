//! The session registry shared by every connection (PROTOCOL.md §3.5–§3.6): creating,
//! resuming, detaching and expiring sessions, and routing a session's notifications to the
//! one connection it is attached to. It owns the TTL reaper thread; it never touches
//! sockets or parses requests.

use std::collections::HashMap;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::error::RpcError;
use crate::fs::handles::Handles;
use crate::fs::watch::Watches;
use crate::outbound::Outbound;
use crate::process::{EndCause, Notify, Processes};

/// The error code for resuming a session that another connection holds (upstream 0.171).
const SESSION_ATTACHED: i64 = -32010;

/// Where a session's notifications go: the attached connection, or nowhere while detached.
pub struct Link {
    state: Mutex<LinkState>,
}

struct LinkState {
    /// The attached connection's id and writer.
    conn: Option<(u64, Arc<dyn Outbound>)>,
    /// When the session was last detached; `None` while attached.
    detached_at: Option<Instant>,
}

impl Link {
    /// Sends one notification to the attached connection. Blocks while that connection's
    /// socket is full (the backpressure of §5); drops the message while detached. True
    /// when the attached connection's writer took it.
    pub fn notify(&self, message: String) -> bool {
        let out = self.lock().conn.as_ref().map(|(_, out)| Arc::clone(out));
        // A connection that fails here is closing; its reader detaches the session.
        out.is_some_and(|out| out.send(message).is_ok())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LinkState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Notify for Link {
    fn notify(&self, message: String) -> bool {
        Link::notify(self, message)
    }
}

/// One client session: its id, its link and the processes it owns.
pub struct Session {
    pub id: String,
    pub link: Arc<Link>,
    pub processes: Processes,
    /// v2 (issue 12): files opened with `fs/open`, and the `fs/watchMissing` watch.
    pub handles: Handles,
    pub watches: Watches,
}

impl Session {
    /// True when the session is attached to a connection other than `conn` (it was resumed
    /// elsewhere while a request of `conn` was executing).
    pub fn attached_elsewhere(&self, conn: u64) -> bool {
        matches!(self.link.lock().conn, Some((id, _)) if id != conn)
    }

    /// Kills and reaps everything the session owns; called once it is removed.
    fn end(&self, cause: EndCause) {
        log::info!(session = self.id.as_str(); "session {} removed", self.id);
        self.processes.kill_all(cause);
        let cause = match cause {
            EndCause::SessionExpired => "sessionExpired",
            _ => "daemonShutdown",
        };
        crate::audit::record(
            "sessionClosed",
            serde_json::json!({"sessionId": self.id, "cause": cause}),
        );
        self.handles.close_all();
        self.watches.stop();
    }
}

/// Every live session of the daemon, attached or detached.
pub struct Sessions {
    map: Mutex<HashMap<String, Arc<Session>>>,
    /// Wakes the reaper when a session is detached.
    detached: Condvar,
    ttl: Duration,
    config: Arc<Config>,
    /// Registered processes over all sessions (`--max-processes`).
    live_processes: Arc<AtomicUsize>,
}

impl Sessions {
    /// Creates the registry and starts its reaper thread.
    pub fn new(config: Arc<Config>) -> Arc<Sessions> {
        let sessions = Arc::new(Sessions {
            map: Mutex::new(HashMap::new()),
            detached: Condvar::new(),
            ttl: config.detach_ttl,
            config,
            live_processes: Arc::default(),
        });
        let reaper = Arc::clone(&sessions);
        let spawned =
            std::thread::Builder::new().name("reaper".into()).spawn(move || reap(&reaper));
        if let Err(e) = spawned {
            log::error!("cannot start the session reaper: {e}");
        }
        sessions
    }

    /// A new session attached to connection `conn`.
    pub fn create(&self, conn: u64, out: Arc<dyn Outbound>) -> Arc<Session> {
        let id = uuid::Uuid::new_v4().to_string();
        let link = Arc::new(Link {
            state: Mutex::new(LinkState { conn: Some((conn, out)), detached_at: None }),
        });
        let processes = Processes::new(
            Arc::clone(&self.config),
            Arc::clone(&self.live_processes),
            Arc::clone(&link) as Arc<dyn Notify>,
        )
        .with_session(&id);
        let notify_link = Arc::clone(&link);
        let watches = Watches::new(Arc::new(move |message| {
            notify_link.notify(message);
        }));
        let handles = Handles::new();
        let session = Arc::new(Session { id: id.clone(), link, processes, handles, watches });
        self.lock().insert(id, Arc::clone(&session));
        session
    }

    /// Attaches the detached session `id` to connection `conn` (§3.2).
    pub fn resume(
        &self,
        id: &str,
        conn: u64,
        out: Arc<dyn Outbound>,
    ) -> Result<Arc<Session>, RpcError> {
        let unknown = || RpcError::invalid_request(format!("unknown session id {id}"));
        let map = self.lock();
        let session = map.get(id).ok_or_else(unknown)?;
        let mut link = session.link.lock();
        match link.detached_at {
            // v2 (issue 12): upstream 0.171 answers -32010 here (v1 had -32600).
            None => {
                return Err(RpcError::new(
                    SESSION_ATTACHED,
                    format!("session {id} is already attached to another connection"),
                ))
            }
            // Expired but not yet reaped: as good as gone.
            Some(at) if at.elapsed() >= self.ttl => return Err(unknown()),
            Some(_) => {}
        }
        link.conn = Some((conn, out));
        link.detached_at = None;
        drop(link);
        log::info!(session = id; "session {id} resumed");
        Ok(Arc::clone(session))
    }

    /// Detaches `session` from connection `conn`, if it is still attached there (§3.6).
    pub fn detach(&self, session: &Session, conn: u64) {
        let mut link = session.link.lock();
        if matches!(link.conn, Some((id, _)) if id == conn) {
            link.conn = None;
            link.detached_at = Some(Instant::now());
            drop(link);
            log::info!(session = session.id.as_str(); "session {} detached", session.id);
            // Notify under the map lock, which the reaper holds from its scan to its wait,
            // so the wake-up cannot fall between them.
            let _map = self.lock();
            self.detached.notify_all();
        }
    }

    /// Removes every session and kills what they own (graceful shutdown, §9.4).
    pub fn end_all(&self) {
        let all: Vec<Arc<Session>> = self.lock().drain().map(|(_, s)| s).collect();
        for session in all {
            session.end(EndCause::DaemonShutdown);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Session>>> {
        self.map.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The reaper: removes detached sessions whose TTL has run out and ends them.
fn reap(sessions: &Sessions) {
    let mut map = sessions.lock();
    loop {
        let now = Instant::now();
        let mut next: Option<Instant> = None;
        let mut expired = Vec::new();
        for (id, session) in map.iter() {
            if let Some(at) = session.link.lock().detached_at {
                let deadline = at + sessions.ttl;
                if deadline <= now {
                    expired.push(id.clone());
                } else {
                    next = Some(next.map_or(deadline, |n| n.min(deadline)));
                }
            }
        }
        if !expired.is_empty() {
            let ended: Vec<Arc<Session>> = expired.iter().filter_map(|id| map.remove(id)).collect();
            drop(map);
            for session in ended {
                log::info!(session = session.id.as_str(); "session {} expired", session.id);
                session.end(EndCause::SessionExpired);
            }
            map = sessions.lock();
            continue;
        }
        map = match next {
            Some(deadline) => {
                let wait = deadline.saturating_duration_since(Instant::now());
                sessions.detached.wait_timeout(map, wait).unwrap_or_else(PoisonError::into_inner).0
            }
            None => sessions.detached.wait(map).unwrap_or_else(PoisonError::into_inner),
        };
    }
}
