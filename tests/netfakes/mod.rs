//! Network fakes for the proxy, trust and doctor tests: a test CA, a fake executor registry
//! (HTTP or HTTPS, one scripted answer), a fake rendezvous (ws or wss), a tiny threaded
//! HTTP CONNECT proxy that counts its tunnels and may demand basic auth, and the daemon
//! with its stderr collected. Everything binds 127.0.0.1:0; every wait has a deadline.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::{ServerConfig, ServerConnection, StreamOwned};
use tungstenite::WebSocket;

pub const STEP: Duration = Duration::from_secs(15);
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

pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new() -> TempDir {
        let path =
            std::env::temp_dir().join(format!("exec-server-net-it-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }
    pub fn file(&self, name: &str, contents: &str) -> String {
        let path = self.0.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, contents).unwrap();
        path.to_str().unwrap().to_owned()
    }
    pub fn path(&self, name: &str) -> String {
        self.0.join(name).to_str().unwrap().to_owned()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
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

pub fn cloud_args<'a>(base: &'a str, token_file: &'a str) -> Vec<&'a str> {
    vec![
        "--cloud",
        "--cloud-base-url",
        base,
        "--cloud-environment-id",
        "exec-it",
        "--token-file",
        token_file,
    ]
}

trait Duplex: Read + Write + Send {}
impl<T: Read + Write + Send> Duplex for T {}

/// A registry answering every request with `status` and `body` (`{url}` replaced by the
/// URL given to `start`); it counts requests and records each request's head.
pub struct FakeRegistry {
    pub base: String,
    pub port: u16,
    pub requests: Receiver<String>,
}

impl FakeRegistry {
    pub fn start(tls: Option<Arc<ServerConfig>>, status: u16, body: String) -> FakeRegistry {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let base = match tls {
            Some(_) => format!("https://localhost:{port}"),
            None => format!("http://127.0.0.1:{port}"),
        };
        let (tx, requests) = mpsc::channel();
        thread::spawn(move || {
            for sock in listener.incoming() {
                let Ok(sock) = sock else { return };
                sock.set_read_timeout(Some(STEP)).unwrap();
                let mut stream: Box<dyn Duplex> = match &tls {
                    Some(config) => Box::new(StreamOwned::new(
                        ServerConnection::new(config.clone()).unwrap(),
                        sock,
                    )),
                    None => Box::new(sock),
                };
                let Some(head) = read_request(&mut stream) else { continue };
                let date = httpdate_now();
                let reply = format!(
                    "HTTP/1.1 {status} Whatever\r\nDate: {date}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(reply.as_bytes()).and_then(|()| stream.flush());
                if tx.send(head).is_err() {
                    return;
                }
            }
        });
        FakeRegistry { base, port, requests }
    }

    pub fn next_request(&self) -> String {
        self.requests.recv_timeout(STEP).expect("no registry request in time")
    }
}

/// Reads a request head and its body (Content-Length); returns the head.
fn read_request(stream: &mut dyn Duplex) -> Option<String> {
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = stream.read(&mut buf).ok().filter(|n| *n > 0)?;
        data.extend_from_slice(&buf[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        if let Ok(httparse::Status::Complete(len)) = req.parse(&data) {
            let length: usize = req
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .and_then(|h| std::str::from_utf8(h.value).ok()?.parse().ok())
                .unwrap_or(0);
            while data.len() < len + length {
                let n = stream.read(&mut buf).ok().filter(|n| *n > 0)?;
                data.extend_from_slice(&buf[..n]);
            }
            return Some(String::from_utf8_lossy(&data[..len]).into_owned());
        }
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
/// without); each accepted socket is handed over, then closed cleanly by the test.
pub struct FakeRendezvous {
    pub url: String,
    accepted: Receiver<WebSocket<Box<dyn Duplex>>>,
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
        thread::spawn(move || {
            for sock in listener.incoming() {
                let Ok(sock) = sock else { return };
                sock.set_read_timeout(Some(STEP)).unwrap();
                let stream: Box<dyn Duplex> = match &tls {
                    Some(config) => Box::new(StreamOwned::new(
                        ServerConnection::new(config.clone()).unwrap(),
                        sock,
                    )),
                    None => Box::new(sock),
                };
                if let Ok(ws) = tungstenite::accept(stream) {
                    if tx.send(ws).is_err() {
                        return;
                    }
                }
            }
        });
        FakeRendezvous { url, accepted }
    }

    /// Waits for the daemon's websocket and checks it speaks JSON-RPC (`initialize`).
    pub fn accept_and_initialize(&self) {
        let mut ws = self.accepted.recv_timeout(STEP).expect("no rendezvous dial in time");
        let init = r#"{"id":1,"method":"initialize","params":{"clientName":"proxy-it"}}"#;
        ws.send(tungstenite::Message::text(init)).unwrap();
        loop {
            match ws.read().expect("rendezvous read") {
                tungstenite::Message::Text(t) if t.contains("sessionId") => return,
                tungstenite::Message::Text(t) => panic!("unexpected {t}"),
                _ => {}
            }
        }
    }

    /// Serves every accepted socket in the background: reads until the peer closes, so a
    /// client's close handshake gets its reply.
    pub fn answer_closes(self) {
        thread::spawn(move || {
            while let Ok(mut ws) = self.accepted.recv() {
                thread::spawn(move || while ws.read().is_ok() {});
            }
        });
    }

    pub fn accepted_any(&self) -> bool {
        self.accepted.try_recv().is_ok()
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
