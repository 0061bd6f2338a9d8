//! Network fakes for the cloud, fault, proxy, trust and doctor tests: a test CA, a fake
//! executor registry (HTTP or HTTPS, answering from a script: a reply, a reset or a hang per
//! request), a fake rendezvous (ws or wss) whose sockets the test plays as the orchestrator,
//! a tiny threaded HTTP CONNECT proxy that counts its tunnels and may demand basic auth, and
//! the daemon with its stderr collected. Everything binds 127.0.0.1:0; every wait has a
//! deadline. Uses the test crate's `common` module (its `TempDir`), so a test crate that
//! declares `mod netfakes;` declares `mod common;` too.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::{ServerConfig, ServerConnection, StreamOwned};
use serde_json::{json, Value};
use tungstenite::{Message, WebSocket};

pub use crate::common::TempDir;

/// Anything a single step may take: a registration round with backoff, a dial, a reply.
pub const STEP: Duration = Duration::from_secs(15);
/// How long the registry holds a hanging request: past the daemon's registry request
/// timeout (10 s, registry.rs) plus the backoff after it.
pub const HANG_STEP: Duration = Duration::from_secs(40);
pub const TOKEN: &str = "TOKEN-do-not-log-4711";
pub const SIGNATURE: &str = "SIG-do-not-log-0815";

/// Every variable that would change where the daemon connects or what it trusts.
const CLEARED: &[&str] = &[
    "CODEX_CLOUD_ENVIRONMENTS_BASE_URL",
    "CODEX_CLOUD_ENVIRONMENT_ID",
    "CODEX_EXEC_SERVER_REMOTE_BEARER_TOKEN",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "HTTPS_PROXY",
    "https_proxy",
    "HTTP_PROXY",
    "http_proxy",
    "ALL_PROXY",
    "all_proxy",
    "NO_PROXY",
    "no_proxy",
    "EXEC_SERVER_LOG_FORMAT",
];

/// A temp dir holding the bearer token in `token`, and that file's path.
pub fn token_file() -> (TempDir, String) {
    let dir = TempDir::new();
    let path = dir.file("token", TOKEN);
    (dir, path)
}

/// A temp dir holding the bearer token in `token` and the CA of `pki` in `ca.pem`, and the
/// paths of both files.
pub fn token_and_ca_file(pki: &Pki) -> (TempDir, String, String) {
    let (dir, token) = token_file();
    let ca = dir.file("ca.pem", &pki.ca_pem);
    (dir, token, ca)
}

pub struct Pki {
    pub ca_pem: String,
    pub server: Arc<ServerConfig>,
}

/// A fresh CA and a server certificate for `localhost` and `127.0.0.1`.
pub fn pki() -> Pki {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(DnType::CommonName, "exec-server proxy-test CA");
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let mut leaf =
        CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
    leaf.distinguished_name.push(DnType::CommonName, "localhost");
    let leaf = leaf.signed_by(&leaf_key, &ca).unwrap();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
    let server =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![leaf.der().clone()], key)
            .unwrap();
    Pki { ca_pem: ca.pem(), server: Arc::new(server) }
}

/// The daemon under test; killed when dropped.
pub struct Daemon {
    pid: i32,
    exited: Receiver<ExitStatus>,
    lines: Receiver<String>,
    stderr: Arc<Mutex<String>>,
    stdout: Arc<Mutex<String>>,
}

impl Daemon {
    pub fn spawn(args: &[&str], env: &[(&str, &str)]) -> Daemon {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_exec-server"));
        cmd.args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        for var in CLEARED {
            cmd.env_remove(var);
        }
        cmd.env("RUST_LOG", "debug");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child: Child = cmd.spawn().unwrap();
        let pid = child.id() as i32;
        let stderr_pipe = child.stderr.take().unwrap();
        let mut stdout_pipe = child.stdout.take().unwrap();
        let stderr = Arc::new(Mutex::new(String::new()));
        let stdout = Arc::new(Mutex::new(String::new()));
        let (line_tx, lines) = mpsc::channel();
        let sink = stderr.clone();
        thread::spawn(move || {
            for line in BufReader::new(stderr_pipe).lines().map_while(Result::ok) {
                let mut all = sink.lock().unwrap_or_else(PoisonError::into_inner);
                all.push_str(&line);
                all.push('\n');
                drop(all);
                let _ = line_tx.send(line);
            }
        });
        let out = stdout.clone();
        let (out_done_tx, out_done) = mpsc::channel::<()>();
        thread::spawn(move || {
            let mut text = String::new();
            let _ = stdout_pipe.read_to_string(&mut text);
            out.lock().unwrap_or_else(PoisonError::into_inner).push_str(&text);
            let _ = out_done_tx.send(());
        });
        let (exit_tx, exited) = mpsc::channel();
        thread::spawn(move || {
            if let Ok(status) = child.wait() {
                let _ = out_done.recv_timeout(STEP);
                let _ = exit_tx.send(status);
            }
        });
        Daemon { pid, exited, lines, stderr, stdout }
    }

    pub fn wait_exit(&self) -> i32 {
        let status = self.exited.recv_timeout(STEP * 3).expect("daemon did not exit in time");
        let deadline = Instant::now() + STEP;
        while self.lines.recv_timeout(deadline.saturating_duration_since(Instant::now())).is_ok() {}
        status.code().expect("exited with a code, not a signal")
    }

    /// Sends `SIGTERM`.
    pub fn sigterm(&self) {
        // SAFETY: kill(2) on our own child, not yet reaped by the waiter thread.
        unsafe { libc::kill(self.pid, libc::SIGTERM) };
    }

    pub fn is_running(&self) -> bool {
        matches!(self.exited.try_recv(), Err(mpsc::TryRecvError::Empty))
    }

    pub fn wait_line(&self, needle: &str) -> String {
        let deadline = Instant::now() + STEP * 2;
        loop {
            match self.lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(_) => {
                    panic!("no stderr line containing {needle:?}; stderr:\n{}", self.stderr())
                }
            }
        }
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    pub fn stdout(&self) -> String {
        self.stdout.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.is_running() {
            // SAFETY: kill(2) on our own child, not yet reaped by the waiter thread.
            unsafe { libc::kill(self.pid, libc::SIGKILL) };
            let _ = self.exited.recv_timeout(STEP);
        }
    }
}

/// The registry flags: base URL, environment `exec-it`, the token file.
pub fn registry_args<'a>(base: &'a str, token_file: &'a str) -> Vec<&'a str> {
    vec!["--cloud-base-url", base, "--cloud-environment-id", "exec-it", "--token-file", token_file]
}

/// Cloud mode against the registry at `base`.
pub fn cloud_args<'a>(base: &'a str, token_file: &'a str) -> Vec<&'a str> {
    [vec!["--cloud"], registry_args(base, token_file)].concat()
}

/// A server-side socket, TLS or not, with the TCP socket under it.
pub trait Duplex: Read + Write + Send {
    fn tcp(&self) -> &TcpStream;

    /// True while a TLS handshake is under way.
    fn handshaking(&self) -> bool {
        false
    }
}

impl Duplex for TcpStream {
    fn tcp(&self) -> &TcpStream {
        self
    }
}

impl Duplex for StreamOwned<ServerConnection, TcpStream> {
    fn tcp(&self) -> &TcpStream {
        self.get_ref()
    }

    fn handshaking(&self) -> bool {
        self.conn.is_handshaking()
    }
}

/// Accepts on `listener`, with `STEP` as read timeout, TLS when `tls` is set.
fn accept_on(listener: &TcpListener, tls: &Option<Arc<ServerConfig>>) -> Option<Box<dyn Duplex>> {
    let (sock, _) = listener.accept().ok()?;
    sock.set_read_timeout(Some(STEP)).unwrap();
    Some(match tls {
        Some(config) => {
            Box::new(StreamOwned::new(ServerConnection::new(config.clone()).unwrap(), sock))
        }
        None => Box::new(sock),
    })
}

/// One request as the fake registry saw it; header names are lowercase.
#[derive(Debug)]
pub struct Seen {
    /// Which connection, from 0, brought it.
    pub index: usize,
    /// When it was read whole.
    pub at: Instant,
    pub method: String,
    pub path: String,
    pub headers: HashMap<String, String>,
    /// The request head as sent.
    pub head: String,
    pub body: String,
}

pub enum RegistryEvent {
    /// A request, reported once it was answered.
    Request(Seen),
    /// A TLS handshake the daemon broke off.
    TlsRefused,
}

/// What the registry does with one request.
#[derive(Clone, Debug)]
pub enum Answer {
    /// This status and JSON body.
    Reply(u16, String),
    /// This whole response, as it stands.
    Raw(String),
    /// Resets the connection (SO_LINGER 0).
    Reset,
    /// Answers nothing until the daemon gives up (`HANG_STEP` at most).
    Hang,
}

/// A registry answering the request on connection n (from 0) with `answer(n)`; it reports
/// each request, and each refused TLS handshake.
pub struct FakeRegistry {
    pub base: String,
    pub port: u16,
    pub events: Receiver<RegistryEvent>,
}

impl FakeRegistry {
    /// Answers every request with `status` and `body`.
    pub fn start(tls: Option<Arc<ServerConfig>>, status: u16, body: String) -> FakeRegistry {
        Self::scripted(tls, move |_| Answer::Reply(status, body.clone()))
    }

    pub fn scripted(
        tls: Option<Arc<ServerConfig>>,
        answer: impl Fn(usize) -> Answer + Send + 'static,
    ) -> FakeRegistry {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let base = match tls {
            Some(_) => format!("https://localhost:{port}"),
            None => format!("http://127.0.0.1:{port}"),
        };
        let (tx, events) = mpsc::channel();
        thread::spawn(move || {
            for index in 0.. {
                let Some(stream) = accept_on(&listener, &tls) else { return };
                if !serve_registry(stream, index, &answer, &tx) {
                    return;
                }
            }
        });
        FakeRegistry { base, port, events }
    }

    pub fn next(&self) -> RegistryEvent {
        self.next_within(STEP)
    }

    pub fn next_within(&self, deadline: Duration) -> RegistryEvent {
        self.events.recv_timeout(deadline).expect("no registry request in time")
    }

    pub fn next_request(&self) -> Seen {
        match self.next() {
            RegistryEvent::Request(seen) => seen,
            RegistryEvent::TlsRefused => panic!("expected a request, got a refused TLS handshake"),
        }
    }
}

/// Reads one request and answers it; false once the test stopped listening.
fn serve_registry(
    mut stream: Box<dyn Duplex>,
    index: usize,
    answer: &dyn Fn(usize) -> Answer,
    tx: &Sender<RegistryEvent>,
) -> bool {
    let Some(seen) = read_request(&mut *stream, index) else {
        // A TLS handshake still under way when the connection ended: the daemon refused it.
        return !stream.handshaking() || tx.send(RegistryEvent::TlsRefused).is_ok();
    };
    match answer(index) {
        Answer::Reply(status, body) => {
            let date = httpdate_now();
            let reply = format!(
                "HTTP/1.1 {status} Whatever\r\nDate: {date}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(reply.as_bytes()).and_then(|()| stream.flush());
        }
        Answer::Raw(reply) => {
            let _ = stream.write_all(reply.as_bytes()).and_then(|()| stream.flush());
        }
        Answer::Reset => reset(stream.tcp()),
        Answer::Hang => {
            // Until the daemon's own timeout closes the connection.
            stream.tcp().set_read_timeout(Some(HANG_STEP)).unwrap();
            while matches!(stream.read(&mut [0u8; 512]), Ok(n) if n > 0) {}
        }
    }
    // Closed (or reset) before the test hears of it.
    drop(stream);
    tx.send(RegistryEvent::Request(seen)).is_ok()
}

/// Reads a request head and its body (Content-Length).
fn read_request(stream: &mut dyn Duplex, index: usize) -> Option<Seen> {
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = stream.read(&mut buf).ok().filter(|n| *n > 0)?;
        data.extend_from_slice(&buf[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        if let Ok(httparse::Status::Complete(len)) = req.parse(&data) {
            let headers: HashMap<String, String> = req
                .headers
                .iter()
                .map(|h| {
                    (h.name.to_ascii_lowercase(), String::from_utf8_lossy(h.value).into_owned())
                })
                .collect();
            let length: usize =
                headers.get("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
            let (method, path) = (req.method?.to_owned(), req.path?.to_owned());
            while data.len() < len + length {
                let n = stream.read(&mut buf).ok().filter(|n| *n > 0)?;
                data.extend_from_slice(&buf[..n]);
            }
            return Some(Seen {
                index,
                at: Instant::now(),
                method,
                path,
                headers,
                head: String::from_utf8_lossy(&data[..len]).into_owned(),
                body: String::from_utf8_lossy(&data[len..len + length]).into_owned(),
            });
        }
    }
}

/// Closes `sock` with a TCP reset instead of a FIN (once every handle to it is dropped).
pub fn reset(sock: &TcpStream) {
    let linger = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: setsockopt on a socket we own, with a properly sized linger value.
    unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

/// The current time as an HTTP date (RFC 9110 IMF-fixdate).
fn httpdate_now() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
        as i64;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil(days);
    let weekday = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"][days.rem_euclid(7) as usize];
    let month =
        ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
            [(m - 1) as usize];
    format!(
        "{weekday}, {d:02} {month} {y} {:02}:{:02}:{:02} GMT",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn civil(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// A rendezvous accepting websockets (`wss://localhost` with TLS, `ws://127.0.0.1`
/// without); each accepted socket is handed to the test as an `Orchestrator`.
pub struct FakeRendezvous {
    /// `ws://` or `wss://` URL with a signed query string.
    pub url: String,
    accepted: Receiver<Orchestrator>,
}

impl FakeRendezvous {
    pub fn start(tls: Option<Arc<ServerConfig>>) -> FakeRendezvous {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let url = match tls {
            Some(_) => format!("wss://localhost:{port}/rendezvous/exec-it?sig={SIGNATURE}"),
            None => format!("ws://127.0.0.1:{port}/rendezvous/exec-it?sig={SIGNATURE}"),
        };
        let (tx, accepted) = mpsc::channel();
        thread::spawn(move || loop {
            let Some(stream) = accept_on(&listener, &tls) else { return };
            // A refused TLS handshake or a bad upgrade just ends this connection.
            if let Ok(ws) = tungstenite::accept(stream) {
                if tx.send(Orchestrator { ws, next_id: 1, notes: Vec::new() }).is_err() {
                    return;
                }
            }
        });
        FakeRendezvous { url, accepted }
    }

    /// The daemon's next websocket.
    pub fn accept(&self) -> Orchestrator {
        self.accepted.recv_timeout(STEP).expect("the daemon did not dial the rendezvous in time")
    }

    /// Waits for the daemon's websocket and checks it speaks JSON-RPC (`initialize`).
    pub fn accept_and_initialize(&self) {
        let mut ws = self.accept().ws;
        let init = r#"{"id":1,"method":"initialize","params":{"clientName":"proxy-it"}}"#;
        ws.send(Message::text(init)).unwrap();
        loop {
            match ws.read().expect("rendezvous read") {
                Message::Text(t) if t.contains("sessionId") => return,
                Message::Text(t) => panic!("unexpected {t}"),
                _ => {}
            }
        }
    }

    /// Serves every accepted socket in the background: reads until the peer closes, so a
    /// client's close handshake gets its reply.
    pub fn answer_closes(self) {
        thread::spawn(move || {
            while let Ok(mut orch) = self.accepted.recv() {
                thread::spawn(move || while orch.ws.read().is_ok() {});
            }
        });
    }

    pub fn accepted_any(&self) -> bool {
        self.accepted.try_recv().is_ok()
    }
}

/// The test's side of one rendezvous socket: it plays the orchestrator.
pub struct Orchestrator {
    pub ws: WebSocket<Box<dyn Duplex>>,
    next_id: i64,
    /// Notifications that arrived while waiting for a response.
    pub notes: Vec<Value>,
}

impl Orchestrator {
    pub fn next_message(&mut self) -> Value {
        loop {
            match self.ws.read().expect("rendezvous socket read") {
                Message::Text(text) => return serde_json::from_str(&text).unwrap(),
                Message::Binary(_) => panic!("server frames must be text"),
                _ => {}
            }
        }
    }

    pub fn notify(&mut self, method: &str, params: Value) {
        let msg = json!({"method": method, "params": params});
        self.ws.send(Message::text(msg.to_string())).unwrap();
    }

    /// Sends a request and returns its response (`result` or `error` object).
    pub fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let msg = json!({"id": id, "method": method, "params": params});
        self.ws.send(Message::text(msg.to_string())).unwrap();
        loop {
            let msg = self.next_message();
            if msg.get("id") == Some(&json!(id)) {
                return msg;
            }
            self.notes.push(msg);
        }
    }

    /// Notifications (kept or new) until `process/closed` for `process_id`.
    pub fn notifications_until_closed(&mut self, process_id: &str) -> Vec<Value> {
        let mut out: Vec<Value> = std::mem::take(&mut self.notes);
        let is_closed =
            |v: &Value| v["method"] == "process/closed" && v["params"]["processId"] == process_id;
        while !out.iter().any(is_closed) {
            out.push(self.next_message());
        }
        out.retain(|v| v["params"]["processId"] == process_id);
        out
    }

    /// initialize (resuming `resume` if given) + initialized; returns the session id.
    pub fn handshake(&mut self, client_name: &str, resume: Option<&str>) -> String {
        let mut params = json!({"clientName": client_name});
        if let Some(id) = resume {
            params["resumeSessionId"] = json!(id);
        }
        let reply = self.call("initialize", params);
        let session =
            reply["result"]["sessionId"].as_str().unwrap_or_else(|| panic!("{reply}")).to_owned();
        self.notify("initialized", json!({}));
        session
    }
}

pub fn registered(url: &str) -> String {
    format!(r#"{{"id":"reg-1","url":"{url}"}}"#)
}

/// An HTTP CONNECT proxy: one thread per client, two per tunnel. It records each CONNECT
/// target it opened; with `auth` set it answers 407 to requests without that exact
/// `Proxy-Authorization: Basic` value.
pub struct ConnectProxy {
    pub port: u16,
    pub tunnels: Arc<Mutex<Vec<String>>>,
    pub refused: Arc<AtomicUsize>,
}

impl ConnectProxy {
    pub fn start(auth: Option<(&str, &str)>) -> ConnectProxy {
        use base64::Engine as _;
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let expected = auth.map(|(u, p)| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
            )
        });
        let tunnels = Arc::new(Mutex::new(Vec::new()));
        let refused = Arc::new(AtomicUsize::new(0));
        let (t, r) = (tunnels.clone(), refused.clone());
        thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let (t, r, expected) = (t.clone(), r.clone(), expected.clone());
                thread::spawn(move || serve_proxy_client(client, expected, &t, &r));
            }
        });
        ConnectProxy { port, tunnels, refused }
    }

    pub fn tunnels(&self) -> Vec<String> {
        self.tunnels.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

fn serve_proxy_client(
    mut client: TcpStream,
    expected: Option<String>,
    tunnels: &Mutex<Vec<String>>,
    refused: &AtomicUsize,
) {
    client.set_read_timeout(Some(STEP)).unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match client.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return,
        }
    }
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    if !matches!(req.parse(&head), Ok(httparse::Status::Complete(_)))
        || req.method != Some("CONNECT")
    {
        let _ = client.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n");
        return;
    }
    let target = req.path.unwrap_or_default().to_owned();
    let given = req
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("proxy-authorization"))
        .map(|h| String::from_utf8_lossy(h.value).into_owned());
    if expected.is_some() && given != expected {
        refused.fetch_add(1, Ordering::SeqCst);
        let _ = client.write_all(
            b"HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm=\"t\"\r\nContent-Length: 0\r\n\r\n",
        );
        return;
    }
    let Ok(upstream) = TcpStream::connect(&target) else {
        let _ = client.write_all(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n");
        return;
    };
    tunnels.lock().unwrap_or_else(PoisonError::into_inner).push(target);
    if client.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n").is_err() {
        return;
    }
    client.set_read_timeout(None).unwrap();
    let (mut c2, mut u2) = (client.try_clone().unwrap(), upstream.try_clone().unwrap());
    let (mut c1, mut u1) = (client, upstream);
    thread::spawn(move || {
        let _ = std::io::copy(&mut c2, &mut u2);
        let _ = u2.shutdown(Shutdown::Write);
    });
    let _ = std::io::copy(&mut u1, &mut c1);
    let _ = c1.shutdown(Shutdown::Write);
}
