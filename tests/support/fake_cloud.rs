//! A fake environment registry (plain HTTP/1.1, one request per connection) and a fake
//! relay endpoint (accepts the executor's rendezvous websocket and hands it to the test,
//! which then plays the harness). Both record what they saw; every wait has a deadline.
#![allow(dead_code)]
// tungstenite's accept callback returns its large `ErrorResponse` by value.
#![allow(clippy::result_large_err)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use std::sync::atomic::{AtomicU16, Ordering};

use tungstenite::handshake::server::{ErrorResponse, Request as WsRequest, Response as WsResponse};
use tungstenite::WebSocket;

/// One request as the fake registry received it. Header names are lowercase.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub headers: BTreeMap<String, String>,
    pub body: String,
}

/// What the registry answers: status, extra headers, body.
pub type Reply = (u16, Vec<(String, String)>, String);

/// The registration response the tests' registries give: environment `env-1`, registration
/// `reg-1`, the relay at `relay_url`, the Noise profile.
pub fn registration(relay_url: &str) -> serde_json::Value {
    serde_json::json!({"environment_id": "env-1", "url": relay_url, "security_profile": "noise_hybrid_ik_v1", "executor_registration_id": "reg-1"})
}

pub struct FakeRegistry {
    pub base: String,
    pub seen: mpsc::Receiver<Seen>,
}

impl FakeRegistry {
    pub fn start(reply: impl Fn(&Seen) -> Reply + Send + Sync + 'static) -> FakeRegistry {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind registry");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let (tx, rx) = mpsc::channel();
        let reply = Arc::new(reply);
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let tx = tx.clone();
                let reply = Arc::clone(&reply);
                thread::spawn(move || serve_one(stream, &tx, &*reply));
            }
        });
        FakeRegistry { base, seen: rx }
    }

    pub fn next(&self, deadline: Duration) -> Seen {
        self.seen.recv_timeout(deadline).expect("registry request in time")
    }
}

fn serve_one(
    stream: TcpStream,
    tx: &mpsc::Sender<Seen>,
    reply: &(dyn Fn(&Seen) -> Reply + Send + Sync),
) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(15)));
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut parts = line.split_whitespace();
        let method = parts.next().unwrap_or_default().to_string();
        let path = parts.next().unwrap_or_default().to_string();
        let mut headers = BTreeMap::new();
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
            }
        }
        let len: usize = headers.get("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
        let mut body = vec![0u8; len];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let seen =
            Seen { method, path, headers, body: String::from_utf8_lossy(&body).into_owned() };
        let (status, extra, body) = reply(&seen);
        let _ = tx.send(seen);
        let mut out = format!(
            "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
            body.len()
        );
        for (k, v) in extra {
            out.push_str(&format!("{k}: {v}\r\n"));
        }
        out.push_str("\r\n");
        out.push_str(&body);
        let mut w = reader.get_ref();
        if w.write_all(out.as_bytes()).is_err() {
            return;
        }
    }
}

/// Accepts websocket upgrades and hands each socket (with its request path and headers)
/// to the test.
pub struct FakeRelay {
    pub url: String,
    pub accepted: mpsc::Receiver<(Seen, WebSocket<TcpStream>)>,
    /// When non-zero, upgrades are refused with this HTTP status (and still reported
    /// through `refused`).
    pub reject: Arc<AtomicU16>,
    pub refused: mpsc::Receiver<u16>,
}

impl FakeRelay {
    pub fn start(path: &str) -> FakeRelay {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind relay");
        let url = format!("ws://{}{path}", listener.local_addr().expect("addr"));
        let (tx, rx) = mpsc::channel();
        let reject = Arc::new(AtomicU16::new(0));
        let (refused_tx, refused) = mpsc::channel();
        let reject2 = Arc::clone(&reject);
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let status = reject2.load(Ordering::SeqCst);
                if status != 0 {
                    let callback = move |_: &WsRequest, _: WsResponse| {
                        let mut refusal = ErrorResponse::new(None);
                        *refusal.status_mut() =
                            tungstenite::http::StatusCode::from_u16(status).expect("status");
                        Err(refusal)
                    };
                    let _ = tungstenite::accept_hdr(stream, callback);
                    let _ = refused_tx.send(status);
                    continue;
                }
                let seen = Arc::new(Mutex::new(None));
                let seen2 = Arc::clone(&seen);
                let callback = move |req: &WsRequest, resp: WsResponse| {
                    let headers = req
                        .headers()
                        .iter()
                        .map(|(k, v)| {
                            (k.as_str().to_string(), v.to_str().unwrap_or("").to_string())
                        })
                        .collect();
                    *seen2.lock().expect("lock") = Some(Seen {
                        method: req.method().to_string(),
                        path: req.uri().to_string(),
                        headers,
                        body: String::new(),
                    });
                    Ok(resp)
                };
                if let Ok(ws) = tungstenite::accept_hdr(stream, callback) {
                    let seen = seen.lock().expect("lock").take().expect("request seen");
                    let _ = tx.send((seen, ws));
                }
            }
        });
        FakeRelay { url, accepted: rx, reject, refused }
    }

    pub fn next(&self, deadline: Duration) -> (Seen, WebSocket<TcpStream>) {
        self.accepted.recv_timeout(deadline).expect("relay connection in time")
    }
}
