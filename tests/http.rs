//! Verifies `http/request` and `http/request/bodyDelta` over the real binary against a
//! local HTTP server on a thread: buffered and streamed bodies (deltas after the response,
//! numbered from 1, a final `done`), redirects followed and stopped, timeouts, headers from
//! the daemon's environment (never logged), the proxy variables (a CONNECT tunnel, `NO_PROXY`
//! bypass), and upstream 0.171's exact errors for bad input, after which the daemon keeps
//! serving.

mod common;
mod netfakes;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use common::{Daemon, DEADLINE};
use serde_json::{json, Value};

/// A value that must never appear in the daemon's log.
const SECRET: &str = "sekret-3b9f1c";
const SECRET_VAR: &str = "EXEC_SERVER_HTTP_TEST_TOKEN";
const EMPTY_VAR: &str = "EXEC_SERVER_HTTP_TEST_EMPTY";

/// One request as the test server saw it.
#[derive(Debug)]
struct Seen {
    method: String,
    path: String,
    /// Lowercase names, in arrival order.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

/// A one-request-per-connection HTTP/1.1 server on 127.0.0.1:0 with canned routes.
/// `/stream` sends `one`, then waits for `release` before sending `two`.
struct Server {
    port: u16,
    seen: mpsc::Receiver<Seen>,
    release: mpsc::Sender<()>,
}

impl Server {
    fn start() -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let (seen_tx, seen) = mpsc::channel();
        let (release, release_rx) = mpsc::channel::<()>();
        let release_rx = Arc::new(Mutex::new(release_rx));
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let seen_tx = seen_tx.clone();
                let release_rx = Arc::clone(&release_rx);
                std::thread::spawn(move || serve(stream, port, &seen_tx, &release_rx));
            }
        });
        Server { port, seen, release }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// The next request the server received.
    fn seen(&self) -> Seen {
        self.seen.recv_timeout(DEADLINE).expect("a request reached the server in time")
    }
}

fn serve(
    stream: TcpStream,
    port: u16,
    seen: &mpsc::Sender<Seen>,
    release: &Mutex<mpsc::Receiver<()>>,
) {
    stream.set_read_timeout(Some(DEADLINE)).expect("timeout");
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    let mut line = String::new();
    if reader.read_line(&mut line).unwrap_or(0) == 0 {
        return;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let path = parts.next().unwrap_or("").to_string();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        reader.read_line(&mut h).expect("header line");
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (name, value) = h.split_once(':').expect("name: value");
        headers.push((name.to_ascii_lowercase(), value.trim().to_string()));
    }
    let length = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .map_or(0, |(_, v)| v.parse::<usize>().expect("length"));
    let mut body = vec![0; length];
    reader.read_exact(&mut body).expect("body");
    let _ = seen.send(Seen { method, path: path.clone(), headers, body });
    let mut out = stream;
    // `head` is the status and header lines, each ending in CRLF.
    let respond = |out: &mut TcpStream, head: &str, body: &[u8]| {
        let text = format!("HTTP/1.1 {head}connection: close\r\n\r\n");
        let _ = out.write_all(text.as_bytes());
        let _ = out.write_all(body);
    };
    let redirect = |out: &mut TcpStream, status: &str, location: &str| {
        respond(out, &format!("{status}\r\nlocation: {location}\r\ncontent-length: 0\r\n"), b"");
    };
    match path.as_str() {
        "/hello" => respond(
            &mut out,
            "200 OK\r\ncontent-type: text/plain\r\nx-multi: a\r\nx-multi: b\r\ncontent-length: 5\r\n",
            b"hello",
        ),
        "/echo" => respond(&mut out, "200 OK\r\ncontent-length: 2\r\n", b"ok"),
        "/missing" => respond(&mut out, "404 Not Found\r\ncontent-length: 7\r\n", b"missing"),
        "/found" => redirect(&mut out, "302 Found", "/hello"),
        "/see-other" => redirect(&mut out, "303 See Other", "/echo"),
        "/temporary" => redirect(&mut out, "307 Temporary Redirect", "/echo"),
        "/loop" => redirect(&mut out, "302 Found", "/loop"),
        "/to-ftp" => redirect(&mut out, "302 Found", "ftp://127.0.0.1/x"),
        "/cross-origin" => redirect(&mut out, "302 Found", &format!("http://localhost:{port}/echo")),
        "/stream" => {
            respond(&mut out, "200 OK\r\ntransfer-encoding: chunked\r\n", b"3\r\none\r\n");
            let _ = out.flush();
            let released = release.lock().expect("lock").recv_timeout(DEADLINE);
            assert!(released.is_ok(), "the test never released the stream");
            let _ = out.write_all(b"3\r\ntwo\r\n0\r\n\r\n");
        }
        "/truncated" => respond(&mut out, "200 OK\r\ncontent-length: 100\r\n", b"short"),
        // Never answers (until the client gives up and closes).
        "/hang" => {
            let _ = out.read(&mut [0u8; 1]);
        }
        // Sends half the body, then nothing more.
        "/stall" => {
            respond(&mut out, "200 OK\r\ncontent-length: 10\r\n", b"12345");
            let _ = out.read(&mut [0u8; 1]);
        }
        _ => respond(&mut out, "500 Internal Server Error\r\ncontent-length: 0\r\n", b""),
    }
}

/// The daemon, with a secret and an empty variable in its environment and debug logging.
fn daemon() -> Daemon {
    Daemon::start_raw(
        &["--listen", "ws://127.0.0.1:0"],
        &[
            (SECRET_VAR, SECRET),
            (EMPTY_VAR, ""),
            ("RUST_LOG", "debug"),
            ("NO_PROXY", "127.0.0.1,localhost"),
        ],
    )
}

fn params(url: &str, extra: Value) -> Value {
    let mut p = json!({"method": "GET", "url": url, "headers": [], "requestId": "r1"});
    for (k, v) in extra.as_object().expect("object") {
        p[k] = v.clone();
    }
    p
}

fn result(response: &Value) -> &Value {
    assert!(response.get("error").is_none(), "unexpected error: {response}");
    &response["result"]
}

fn error(response: &Value) -> (i64, String) {
    let e = &response["error"];
    (e["code"].as_i64().expect("code"), e["message"].as_str().expect("message").to_string())
}

fn body(result: &Value) -> Vec<u8> {
    BASE64.decode(result["bodyBase64"].as_str().expect("bodyBase64")).expect("base64")
}

/// A port with nothing listening on it.
fn closed_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

#[test]
fn buffered_get_returns_status_headers_and_body() {
    let server = Server::start();
    let daemon = daemon();
    let (mut client, _) = daemon.session();
    let r = client.call("http/request", params(&server.url("/hello"), json!({})));
    assert_eq!(
        result(&r),
        &json!({"status": 200, "headers": [
            {"name": "content-type", "value": "text/plain"},
            {"name": "x-multi", "value": "a"},
            {"name": "x-multi", "value": "b"},
            {"name": "content-length", "value": "5"},
            {"name": "connection", "value": "close"}],
            "bodyBase64": "aGVsbG8="})
    );
    let seen = server.seen();
    assert_eq!((seen.method.as_str(), seen.path.as_str()), ("GET", "/hello"));
    // Like upstream: no User-Agent, and no Content-Length without a body.
    assert_eq!(seen.header("user-agent"), None, "{seen:?}");
    assert_eq!(seen.header("content-length"), None, "{seen:?}");

    // A 4xx is a response like any other.
    let r = client.call("http/request", params(&server.url("/missing"), json!({})));
    assert_eq!(result(&r)["status"], 404);
    assert_eq!(body(result(&r)), b"missing");
}

#[test]
fn post_sends_method_headers_and_body() {
    let server = Server::start();
    let daemon = daemon();
    let (mut client, _) = daemon.session();
    let r = client.call(
        "http/request",
        params(
            &server.url("/echo"),
            json!({"method": "POST", "bodyBase64": BASE64.encode("abc"),
                   "headers": [{"name": "X-A", "value": "1"}, {"name": "X-A", "value": "2"}]}),
        ),
    );
    assert_eq!(result(&r)["status"], 200);
    let seen = server.seen();
    assert_eq!(seen.method, "POST");
    assert_eq!(seen.body, b"abc");
    assert_eq!(seen.header("content-length"), Some("3"));
    let repeated: Vec<&str> =
        seen.headers.iter().filter(|(n, _)| n == "x-a").map(|(_, v)| v.as_str()).collect();
    assert_eq!(repeated, ["1", "2"]);
    // A POST without a body (or with an empty one) is sent as an empty body, never chunked.
    for extra in [json!({"method": "POST"}), json!({"method": "POST", "bodyBase64": ""})] {
        client.call("http/request", params(&server.url("/echo"), extra));
        let seen = server.seen();
        assert_eq!(seen.header("content-length"), Some("0"), "{seen:?}");
        assert_eq!(seen.header("transfer-encoding"), None, "{seen:?}");
    }
    // Methods are sent as given, even ones HTTP does not define.
    client.call("http/request", params(&server.url("/echo"), json!({"method": "FOO"})));
    assert_eq!(server.seen().method, "FOO");
}

#[test]
fn header_values_come_from_the_daemon_environment_and_are_never_logged() {
    let server = Server::start();
    let daemon = daemon();
    let (mut client, _) = daemon.session();
    let header = |var: &str| json!({"headers": [{"name": "Authorization", "value": "Bearer ", "valueEnvVar": var}]});
    let r = client.call("http/request", params(&server.url("/echo"), header(SECRET_VAR)));
    assert_eq!(result(&r)["status"], 200);
    let expected = format!("Bearer {SECRET}");
    assert_eq!(server.seen().header("authorization"), Some(expected.as_str()));

    let r =
        client.call("http/request", params(&server.url("/echo"), header("EXEC_SERVER_UNSET_VAR")));
    assert_eq!(
        error(&r),
        (-32602, "http/request header Authorization requires executor environment variable EXEC_SERVER_UNSET_VAR".into())
    );
    let r = client.call("http/request", params(&server.url("/echo"), header(EMPTY_VAR)));
    assert_eq!(
        error(&r),
        (-32602, format!("http/request header Authorization requires a non-empty executor environment variable {EMPTY_VAR}"))
    );
    // `value` is required even with `valueEnvVar`.
    let r = client.call(
        "http/request",
        params(
            &server.url("/echo"),
            json!({"headers": [{"name": "A", "valueEnvVar": SECRET_VAR}]}),
        ),
    );
    assert_eq!(error(&r), (-32602, "missing field `value`".into()));
    // The debug log has a line per request, without any header value.
    let log = daemon.stderr();
    assert!(log.contains("http/request r1: GET http://127.0.0.1"), "{log}");
    assert!(!log.contains(SECRET) && !log.contains("Bearer"), "a header value was logged: {log}");
}

#[test]
fn a_streamed_body_follows_the_response_as_numbered_deltas() {
    let server = Server::start();
    let daemon = daemon();
    let (mut client, _) = daemon.session();
    let id = client.request(
        "http/request",
        params(&server.url("/stream"), json!({"requestId": "s1", "streamResponse": true})),
    );
    // The response comes first, with status and headers and an empty body.
    let first = client.recv();
    assert_eq!(
        first,
        json!({"id": id, "result": {"status": 200, "headers": [
            {"name": "transfer-encoding", "value": "chunked"},
            {"name": "connection", "value": "close"}], "bodyBase64": ""}})
    );
    // The first delta arrives while the server still holds the rest of the body.
    assert_eq!(
        client.recv(),
        json!({"method": "http/request/bodyDelta", "params": {"requestId": "s1", "seq": 1,
               "deltaBase64": BASE64.encode("one"), "done": false, "error": null}})
    );
    // While it streams, its id cannot start another stream (checked before anything else),
    // but a buffered request may use it.
    for p in [
        params(&server.url("/hello"), json!({"requestId": "s1", "streamResponse": true})),
        params("ftp://x/", json!({"method": "BAD M", "requestId": "s1", "streamResponse": true})),
    ] {
        let r = client.call("http/request", p);
        assert_eq!(
            error(&r),
            (-32602, "http/request streamResponse requestId `s1` is already active".into())
        );
    }
    let r = client.call("http/request", params(&server.url("/hello"), json!({"requestId": "s1"})));
    assert_eq!(body(result(&r)), b"hello");
    server.release.send(()).expect("release");
    assert_eq!(
        client.recv(),
        json!({"method": "http/request/bodyDelta", "params": {"requestId": "s1", "seq": 2,
               "deltaBase64": BASE64.encode("two"), "done": false, "error": null}})
    );
    assert_eq!(
        client.recv(),
        json!({"method": "http/request/bodyDelta", "params": {"requestId": "s1", "seq": 3,
               "deltaBase64": "", "done": true, "error": null}})
    );
    // Once done, the id is free again; an empty body is one final delta.
    let id = client.request(
        "http/request",
        params(
            &server.url("/found"),
            json!({"requestId": "s1", "streamResponse": true, "redirectPolicy": "stop"}),
        ),
    );
    assert_eq!(client.response(&id)["result"]["status"], 302);
    assert_eq!(
        client.notification("http/request/bodyDelta"),
        json!({"method": "http/request/bodyDelta", "params": {"requestId": "s1", "seq": 1,
               "deltaBase64": "", "done": true, "error": null}})
    );
}

#[test]
fn a_broken_body_ends_the_stream_with_an_error() {
    let server = Server::start();
    let daemon = daemon();
    let (mut client, _) = daemon.session();
    let id = client.request(
        "http/request",
        params(&server.url("/truncated"), json!({"requestId": "t", "streamResponse": true})),
    );
    assert_eq!(client.response(&id)["result"]["bodyBase64"], "");
    let mut deltas = Vec::new();
    loop {
        let delta = client.notification("http/request/bodyDelta");
        let done = delta["params"]["done"] == true;
        deltas.push(delta["params"].clone());
        if done {
            break;
        }
    }
    let last = deltas.last().expect("a last delta");
    assert_eq!(
        last,
        &json!({"requestId": "t", "seq": deltas.len(), "deltaBase64": "", "done": true,
                "error": "error decoding response body"})
    );
    let bytes: Vec<u8> = deltas
        .iter()
        .flat_map(|d| BASE64.decode(d["deltaBase64"].as_str().expect("delta")).expect("b64"))
        .collect();
    assert_eq!(bytes, b"short");

    // Buffered, the same body fails the request.
    let r = client.call("http/request", params(&server.url("/truncated"), json!({})));
    assert_eq!(
        error(&r),
        (-32603, "failed to read http/request response body: error decoding response body".into())
    );
}

#[test]
fn redirects_are_followed_or_returned_as_asked() {
    let server = Server::start();
    let daemon = daemon();
    let (mut client, _) = daemon.session();
    let base = server.url("");

    // Followed by default, with a Referer.
    let r = client.call("http/request", params(&server.url("/found"), json!({})));
    assert_eq!(body(result(&r)), b"hello");
    assert_eq!(server.seen().path, "/found");
    let hop = server.seen();
    assert_eq!(hop.path, "/hello");
    assert_eq!(hop.header("referer"), Some(format!("{base}/found").as_str()));

    // Returned as they are with `stop`.
    let r = client
        .call("http/request", params(&server.url("/found"), json!({"redirectPolicy": "stop"})));
    assert_eq!(result(&r)["status"], 302);
    assert!(result(&r)["headers"]
        .as_array()
        .expect("headers")
        .contains(&json!({"name": "location", "value": "/hello"})));
    server.seen();

    // 303 turns a POST into a bodiless GET; 307 keeps both.
    let post = json!({"method": "POST", "bodyBase64": BASE64.encode("abc")});
    client.call("http/request", params(&server.url("/see-other"), post.clone()));
    server.seen();
    let hop = server.seen();
    assert_eq!((hop.method.as_str(), hop.body.as_slice()), ("GET", &b""[..]));
    client.call("http/request", params(&server.url("/temporary"), post));
    server.seen();
    let hop = server.seen();
    assert_eq!((hop.method.as_str(), hop.body.as_slice()), ("POST", &b"abc"[..]));

    // Credentials do not follow a redirect to another origin; other headers do.
    let headers = json!({"headers": [{"name": "Authorization", "value": "x"},
                                     {"name": "Cookie", "value": "c=1"},
                                     {"name": "X-Keep", "value": "k"}]});
    client.call("http/request", params(&server.url("/cross-origin"), headers));
    assert_eq!(server.seen().header("authorization"), Some("x"));
    let hop = server.seen();
    assert_eq!(hop.header("host"), Some(format!("localhost:{}", server.port).as_str()));
    assert_eq!((hop.header("authorization"), hop.header("cookie")), (None, None));
    assert_eq!(hop.header("x-keep"), Some("k"));
    assert_eq!(hop.header("referer"), Some(format!("{base}/").as_str()));

    // Ten redirects are followed; the eleventh is an error.
    let r = client.call("http/request", params(&server.url("/loop"), json!({})));
    assert_eq!(error(&r), (-32603, "http/request failed: too many redirects".into()));
    for _ in 0..11 {
        assert_eq!(server.seen().path, "/loop");
    }
    let r = client.call("http/request", params(&server.url("/to-ftp"), json!({})));
    assert_eq!(
        error(&r),
        (-32603, "http/request failed: redirect target uses unsupported URL scheme: ftp".into())
    );
}

#[test]
fn timeouts_give_upstreams_errors() {
    let server = Server::start();
    let daemon = daemon();
    let (mut client, _) = daemon.session();
    let started = Instant::now();
    let r = client.call("http/request", params(&server.url("/hang"), json!({"timeoutMs": 300})));
    assert_eq!(
        error(&r),
        (
            -32603,
            format!("http/request failed: error sending request for url ({})", server.url("/hang"))
        )
    );
    assert!(started.elapsed() >= Duration::from_millis(300), "{:?}", started.elapsed());
    let r = client.call("http/request", params(&server.url("/hang"), json!({"timeoutMs": 0})));
    assert_eq!(error(&r), (-32603, "http/request failed: route-aware request timed out".into()));

    // A timeout while the body arrives: an error for a buffered request, a final delta for
    // a streamed one.
    let r = client.call("http/request", params(&server.url("/stall"), json!({"timeoutMs": 300})));
    assert_eq!(
        error(&r),
        (-32603, "failed to read http/request response body: error decoding response body".into())
    );
    let id = client.request(
        "http/request",
        params(&server.url("/stall"), json!({"timeoutMs": 300, "streamResponse": true})),
    );
    assert_eq!(client.response(&id)["result"]["status"], 200);
    let mut last = client.notification("http/request/bodyDelta");
    while last["params"]["done"] != true {
        last = client.notification("http/request/bodyDelta");
    }
    assert_eq!(last["params"]["error"], "error decoding response body");
}

#[test]
fn bad_input_gets_upstreams_errors_and_the_daemon_keeps_serving() {
    let server = Server::start();
    let daemon = daemon();
    let (mut client, _) = daemon.session();
    let good = server.url("/hello");
    let port = closed_port();
    let cases: Vec<(Value, i64, String)> = vec![
        (json!({}), -32602, "missing field `method`".into()),
        (json!({"method": "GET", "url": good}), -32602, "missing field `requestId`".into()),
        (params(&good, json!({"requestId": 5})), -32602, "invalid type: integer `5`, expected a string".into()),
        (params(&good, json!({"headers": {"a": "b"}})), -32602, "invalid type: map, expected a sequence".into()),
        (params(&good, json!({"streamResponse": "yes"})), -32602, "invalid type: string \"yes\", expected a boolean".into()),
        (params(&good, json!({"timeoutMs": -1})), -32602, "invalid number".into()),
        (params(&good, json!({"timeoutMs": "default"})), -32602, "invalid type: string \"default\", expected u64".into()),
        (params(&good, json!({"redirectPolicy": "bogus"})), -32602, "unknown variant `bogus`, expected `follow` or `stop`".into()),
        (params(&good, json!({"redirectPolicy": null})), -32602, "invalid type: null, expected string or map".into()),
        (params(&good, json!({"bodyBase64": "!!!"})), -32602, "Invalid symbol 33, offset 0.".into()),
        (params(&good, json!({"method": "BAD METHOD"})), -32602, "http/request method is invalid: invalid HTTP method".into()),
        (params(&good, json!({"headers": [{"name": "bad name", "value": "x"}]})), -32602, "http/request header name is invalid: invalid HTTP header name".into()),
        (params(&good, json!({"headers": [{"name": "X", "value": "a\nb"}]})), -32602, "http/request header value is invalid for X: failed to parse header value".into()),
        (params("ftp://127.0.0.1/x", json!({})), -32602, "http/request only supports http and https URLs, got ftp".into()),
        (params("file:///etc/passwd", json!({})), -32602, "http/request only supports http and https URLs, got file".into()),
        (params("not a url", json!({})), -32602, "http/request url is invalid: relative URL without a base".into()),
        (params("http://", json!({})), -32602, "http/request url is invalid: empty host".into()),
        (
            params(&format!("http://user:pw@127.0.0.1:{port}"), json!({})),
            -32603,
            format!("http/request failed: error sending request for url (http://127.0.0.1:{port}/)"),
        ),
        (
            params(&format!("HTTP://127.0.0.1:{port}/a b"), json!({"streamResponse": true})),
            -32603,
            format!("http/request failed: error sending request for url (http://127.0.0.1:{port}/a%20b)"),
        ),
        (
            // Bounded, in case this host's resolver is unreachable rather than quick to fail.
            params("http://nonexistent.invalid/x", json!({"timeoutMs": 2000})),
            -32603,
            "http/request failed: error sending request for url (http://nonexistent.invalid/x)".into(),
        ),
    ];
    for (p, code, message) in cases {
        let r = client.call("http/request", p.clone());
        assert_eq!(error(&r), (code, message), "{p}");
    }
    let r = client.call("http/request", params(&good, json!({})));
    assert_eq!(body(result(&r)), b"hello");
}

#[test]
fn concurrent_requests_do_not_wait_for_each_other() {
    let server = Server::start();
    let daemon = daemon();
    let (mut client, _) = daemon.session();
    // A streamed response held open by the server does not block a buffered request.
    let streamed = client.request(
        "http/request",
        params(&server.url("/stream"), json!({"requestId": "s", "streamResponse": true})),
    );
    assert_eq!(client.response(&streamed)["result"]["status"], 200);
    let r = client.call("http/request", params(&server.url("/hello"), json!({})));
    assert_eq!(body(result(&r)), b"hello");
    server.release.send(()).expect("release");
    let mut done = HashMap::new();
    while done.is_empty() {
        let delta = client.notification("http/request/bodyDelta");
        if delta["params"]["done"] == true {
            done.insert(delta["params"]["requestId"].to_string(), delta);
        }
    }
    assert!(done.contains_key("\"s\""));
}

/// An HTTPS server on 127.0.0.1:0 with a certificate from a fresh CA; answers every
/// connection with 200 `ok`. Returns the port and the CA in PEM.
fn tls_server() -> (u16, String) {
    use rustls::{ServerConnection, StreamOwned};

    let pki = netfakes::pki();
    let config = pki.server;
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            let config = Arc::clone(&config);
            std::thread::spawn(move || {
                stream.set_read_timeout(Some(DEADLINE)).expect("timeout");
                let conn = ServerConnection::new(config).expect("connection");
                let mut tls = StreamOwned::new(conn, stream);
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    match tls.read(&mut byte) {
                        Ok(1) => head.push(byte[0]),
                        _ => return, // a refused handshake ends here
                    }
                }
                let _ = tls.write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                );
                let _ = tls.flush();
            });
        }
    });
    (port, pki.ca_pem)
}

#[test]
fn https_uses_the_daemons_trust_list() {
    let (port, ca_pem) = tls_server();
    let ca_file =
        std::env::temp_dir().join(format!("exec-server-http-ca-{}.pem", std::process::id()));
    std::fs::write(&ca_file, ca_pem).expect("write CA");
    let url = format!("https://127.0.0.1:{port}/x");

    // Trusted through SSL_CERT_FILE.
    let ca = ca_file.to_str().expect("UTF-8 path");
    let trusting = Daemon::start_raw(&["--listen", "ws://127.0.0.1:0"], &[("SSL_CERT_FILE", ca)]);
    let (mut client, _) = trusting.session();
    let r = client.call("http/request", params(&url, json!({})));
    assert_eq!(result(&r)["status"], 200, "{r}");
    assert_eq!(body(result(&r)), b"ok");

    // Unknown issuer: the request fails like any failure to connect.
    let strict = Daemon::start_raw(&["--listen", "ws://127.0.0.1:0"], &[("SSL_CERT_FILE", "")]);
    let (mut client, _) = strict.session();
    let r = client.call("http/request", params(&url, json!({})));
    assert_eq!(
        error(&r),
        (
            -32603,
            format!(
                "http/request failed: error sending request for url (https://127.0.0.1:{port}/x)"
            )
        )
    );
    let _ = std::fs::remove_file(&ca_file);
}

#[test]
fn requests_tunnel_through_the_environments_proxy_unless_no_proxy_names_the_host() {
    let server = Server::start();
    let proxy = netfakes::ConnectProxy::start(Some(("user", "pa:ss")));
    let proxy_url = format!("http://user:pa%3Ass@127.0.0.1:{}", proxy.port);
    let daemon = Daemon::start_raw(
        &["--listen", "ws://127.0.0.1:0"],
        &[("HTTP_PROXY", &proxy_url), ("NO_PROXY", "localhost"), ("RUST_LOG", "debug")],
    );
    let (mut client, _) = daemon.session();
    let r = client.call("http/request", params(&server.url("/hello"), json!({})));
    assert_eq!(body(result(&r)), b"hello");
    assert_eq!(server.seen().path, "/hello");
    assert_eq!(proxy.tunnels(), [format!("127.0.0.1:{}", server.port)]);

    let direct = format!("http://localhost:{}/hello", server.port);
    let r = client.call("http/request", params(&direct, json!({})));
    assert_eq!(body(result(&r)), b"hello");
    assert_eq!(proxy.tunnels().len(), 1, "NO_PROXY host went through the proxy");

    // A proxy that refuses the credentials fails the request, never goes direct.
    let refusing = netfakes::ConnectProxy::start(Some(("user", "other")));
    let daemon = Daemon::start_raw(
        &["--listen", "ws://127.0.0.1:0"],
        &[("HTTP_PROXY", &format!("http://user:pa%3Ass@127.0.0.1:{}", refusing.port))],
    );
    let (mut client, _) = daemon.session();
    let r = client.call("http/request", params(&server.url("/hello"), json!({})));
    assert_eq!(
        error(&r),
        (
            -32603,
            format!(
                "http/request failed: error sending request for url ({})",
                server.url("/hello")
            )
        )
    );
    assert_eq!(refusing.refused.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert!(!daemon.stderr().contains("pa:ss") && !daemon.stderr().contains("pa%3Ass"));
}
