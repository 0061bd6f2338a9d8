//! Startup, transport, envelope, lifecycle and listener-security behaviour of the real
//! binary over real sockets (PROTOCOL.md §1–§3, §9; §11 checklist).

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{http, Client, Daemon, StdioDaemon, BIN, DEADLINE};
use serde_json::{json, Value};
use tungstenite::Message;

fn run_to_exit(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .env_remove("EXEC_SERVER_CONNECTION_TOKEN")
        .stdin(Stdio::null())
        .output()
        .expect("run");
    (
        out.status.code().expect("exit code"),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn no_arguments_prints_one_loopback_url_line() {
    let daemon = Daemon::start_raw(&[], &[]);
    let port = daemon.url.strip_prefix("ws://127.0.0.1:").expect("loopback URL");
    assert!(port.parse::<u16>().expect("numeric port") > 0);
    let (mut client, _) = daemon.session();
    let r = client.call("nope", json!({}));
    assert_eq!(r["error"]["code"], -32601);
}

#[test]
fn bad_listen_urls_exit_2_with_exact_messages() {
    let (code, stdout, stderr) = run_to_exit(&["--listen", "ws://localhost:1234"]);
    assert_eq!(code, 2);
    assert!(stdout.is_empty());
    assert!(stderr
        .contains("invalid websocket --listen URL `ws://localhost:1234`; expected `ws://IP:PORT`"));
    let (code, _, stderr) = run_to_exit(&["--listen", "http://x"]);
    assert_eq!(code, 2);
    assert!(
        stderr.contains("unsupported --listen URL `http://x`; expected `ws://IP:PORT` or `stdio`")
    );
    let (code, _, _) = run_to_exit(&["--no-such-flag"]);
    assert_eq!(code, 2);
    let (code, _, _) = run_to_exit(&["--cloud", "--listen", "stdio"]);
    assert_eq!(code, 2);
}

#[test]
fn help_and_version() {
    let (code, stdout, _) = run_to_exit(&["--help"]);
    assert_eq!(code, 0);
    assert!(stdout.contains("--listen"));
    let (code, stdout, _) = run_to_exit(&["--version"]);
    assert_eq!(code, 0);
    assert!(stdout.starts_with("exec-server "));
    // The second line says what this host can enforce of a client's sandbox.
    let sandbox = stdout.lines().nth(1).expect("a sandbox line");
    assert!(sandbox.starts_with("sandbox: "), "{stdout}");
}

#[test]
fn bind_failure_exits_1() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = format!("ws://{}", taken.local_addr().expect("addr"));
    let (code, stdout, _) = run_to_exit(&["--listen", &addr]);
    assert_eq!(code, 1);
    assert!(stdout.is_empty());
}

#[test]
fn stdio_serves_one_json_per_line_and_exits_0_on_eof() {
    let mut daemon = StdioDaemon::start(&[]);
    daemon.send_line(r#"{"id":1,"method":"initialize","params":{"clientName":"t"}}"#);
    let r = daemon.recv();
    assert_eq!(r["id"], 1);
    assert!(r["result"]["sessionId"].is_string());
    daemon.send_line("");
    daemon.send_line("not-json\r");
    let r = daemon.recv();
    assert_eq!(r["id"], -1);
    let message = r["error"]["message"].as_str().expect("message");
    assert!(
        message.starts_with("failed to parse JSON-RPC message from exec-server stdio: "),
        "{message}"
    );
    daemon.send_line(r#"{"id":"two","method":"x/y"}"#);
    assert_eq!(
        daemon.recv(),
        json!({"id":"two","error":{"code":-32601,"message":"exec-server stub does not implement `x/y` yet"}})
    );
    // Requests already sent are answered even when stdin ends right after them.
    daemon.send_line(r#"{"id":"last","method":"x/z"}"#);
    daemon.close_stdin();
    assert_eq!(daemon.recv()["id"], "last");
    let status = common::wait_exit(&mut daemon.child);
    assert_eq!(status.code(), Some(0));
}

#[test]
fn binary_frames_are_answered_like_text_and_replies_are_text() {
    let daemon = Daemon::start(&[]);
    let mut client = daemon.connect();
    client
        .ws
        .send(Message::binary(
            br#"{"id":7,"method":"initialize","params":{"clientName":"b"}}"#.to_vec(),
        ))
        .expect("send");
    match client.recv_raw() {
        Message::Text(text) => {
            let v: Value = serde_json::from_str(&text).expect("json");
            assert_eq!(v["id"], 7);
            assert!(v["result"]["sessionId"].is_string());
        }
        other => panic!("expected text, got {other:?}"),
    }
    client.ws.send(Message::binary(vec![0xff, 0xfe])).expect("send");
    let r = client.recv();
    assert_eq!(r["id"], -1);
    assert_eq!(r["error"]["code"], -32600);
}

#[test]
fn ids_are_echoed_with_value_and_type() {
    let daemon = Daemon::start(&[]);
    let mut client = daemon.connect();
    for id in [json!(0), json!(-7), json!(i64::MAX), json!("x")] {
        client.send(&json!({"id": id, "method": "no/such"}));
        let r = client.response(&id);
        assert_eq!(r["id"], id);
        assert!(r["id"].is_string() == id.is_string());
    }
}

#[test]
fn malformed_messages_get_id_minus_1_and_the_connection_stays_open() {
    let daemon = Daemon::start(&[]);
    let mut client = daemon.connect();
    let local = client.ws.get_ref().local_addr().expect("local addr");
    let prefix =
        format!("failed to parse websocket JSON-RPC message from exec-server websocket {local}: ");
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let deep_request = format!(r#"{{"id":1,"method":"x","params":{deep}}}"#);
    for text in [
        "not-json",
        "[1]",
        "5",
        deep.as_str(),
        deep_request.as_str(),
        r#"{"id":1.5,"method":"m"}"#,
        r#"{"id":1}"#,
    ] {
        client.send_text(text);
        let r = client.recv();
        assert_eq!(r["id"], -1, "{text:.40}");
        assert_eq!(r["error"]["code"], -32600);
        let message = r["error"]["message"].as_str().expect("message");
        assert!(message.starts_with(&prefix), "{message}");
    }
    let session = client.initialize();
    assert_eq!(session.len(), 36);
}

#[test]
fn jsonrpc_member_is_accepted_and_never_sent() {
    let daemon = Daemon::start(&[]);
    let mut client = daemon.connect();
    client.send(&json!({"jsonrpc":"2.0","id":1,"method":"initialize","params":{"clientName":"j"},"trace":{"x":1}}));
    let r = client.recv();
    assert_eq!(r["id"], 1);
    assert!(r.get("jsonrpc").is_none());
    assert!(r["result"]["sessionId"].is_string());
}

#[test]
fn unknown_method_is_minus_32601_before_and_after_the_handshake() {
    let daemon = Daemon::start(&[]);
    let mut client = daemon.connect();
    let expected = |id: i64| json!({"id": id, "error": {"code": -32601, "message": "exec-server stub does not implement `example/unknown` yet"}});
    let r = client.call("example/unknown", json!({}));
    assert_eq!(r, expected(1));
    client.initialize();
    let r = client.call("example/unknown", json!({}));
    assert_eq!(r, expected(3));
}

#[test]
fn undecodable_params_are_minus_32602_with_the_decoder_text() {
    let daemon = Daemon::start(&[]);
    let mut client = daemon.connect();
    let r = client.call("initialize", json!({}));
    assert_eq!(r["error"], json!({"code": -32602, "message": "missing field `clientName`"}));
    let r = client.call("initialize", json!({"clientName": 5}));
    assert_eq!(r["error"]["code"], -32602);
    // A failed initialize does not count: it can be retried.
    let r = client.call("initialize", json!({"clientName": "ok"}));
    assert!(r["result"]["sessionId"].is_string());
}

fn assert_closed_without_reply(client: &mut Client) {
    // Whatever arrives before the close must not be a reply.
    loop {
        match client.ws.read() {
            Ok(Message::Text(t)) => panic!("unexpected reply {t}"),
            Ok(Message::Close(_)) => break,
            Ok(_) => continue,
            Err(tungstenite::Error::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock => {
                panic!("not closed in time")
            }
            Err(_) => break,
        }
    }
}

#[test]
fn protocol_violations_close_the_connection_without_reply() {
    let daemon = Daemon::start(&[]);
    for text in [
        r#"{"id":1,"result":{}}"#,
        r#"{"id":1,"error":{"code":1,"message":"x"}}"#,
        r#"{"method":"something/else","params":{}}"#,
        r#"{"method":"initialized","params":{}}"#,
    ] {
        let mut client = daemon.connect();
        client.send_text(text);
        assert_closed_without_reply(&mut client);
    }
    // The daemon keeps serving.
    let (mut client, _) = daemon.session();
    assert_eq!(client.call("x", json!({}))["error"]["code"], -32601);
}

#[test]
fn initialize_returns_exactly_a_uuid_v4_and_only_once() {
    let daemon = Daemon::start(&[]);
    let mut a = daemon.connect();
    let mut b = daemon.connect();
    let ra = a.call("initialize", json!({"clientName": "a"}));
    let rb = b.call("initialize", json!({"clientName": "b"}));
    let result = ra["result"].as_object().expect("object");
    // v2: `sessionId` and `environmentInfo` (checked in tests/protocol_v2.rs).
    assert_eq!(result.keys().collect::<Vec<_>>(), ["environmentInfo", "sessionId"]);
    let id = result["sessionId"].as_str().expect("string");
    let uuid = uuid::Uuid::parse_str(id).expect("uuid");
    assert_eq!(uuid.get_version_num(), 4);
    assert_eq!(id, id.to_lowercase());
    assert_ne!(ra["result"], rb["result"]);
    let again = a.call("initialize", json!({"clientName": "a"}));
    assert_eq!(
        again["error"],
        json!({"code": -32600, "message": "initialize may only be sent once per connection"})
    );
}

#[test]
fn gate_messages_before_initialize_and_before_initialized() {
    let daemon = Daemon::start(&[]);
    let mut client = daemon.connect();
    let cases = [
        (
            "process/start",
            "exec",
            json!({"processId":"p","argv":["true"],"cwd":"/","env":{},"tty":false}),
        ),
        ("process/read", "exec", json!({"processId":"p"})),
        ("process/write", "exec", json!({"processId":"p","chunk":""})),
        ("process/terminate", "exec", json!({"processId":"p"})),
        ("process/signal", "exec", json!({"processId":"p","signal":"interrupt"})),
        (
            "http/request",
            "http",
            json!({"method":"GET","url":"http://127.0.0.1:1/","requestId":"r"}),
        ),
        ("fs/readFile", "filesystem", json!({"path":"/"})),
        ("fs/writeFile", "filesystem", json!({"path":"/tmp/x","dataBase64":""})),
        ("fs/createDirectory", "filesystem", json!({"path":"/tmp"})),
        ("fs/getMetadata", "filesystem", json!({"path":"/"})),
        ("fs/readDirectory", "filesystem", json!({"path":"/"})),
        ("fs/remove", "filesystem", json!({"path":"/tmp/none"})),
        (
            "fs/copy",
            "filesystem",
            json!({"sourcePath":"/a","destinationPath":"/b","recursive":false}),
        ),
    ];
    for (method, family, params) in &cases {
        let r = client.call(method, params.clone());
        if r["error"]["code"] == -32601 {
            continue; // that method arrives with its own capability
        }
        assert_eq!(
            r["error"],
            json!({"code": -32600, "message": format!("client must call initialize before using {family} methods")}),
            "{method}"
        );
    }
    let r = client.call("initialize", json!({"clientName": "g"}));
    assert!(r["result"]["sessionId"].is_string());
    for (method, family, params) in &cases {
        let r = client.call(method, params.clone());
        if r["error"]["code"] == -32601 {
            continue;
        }
        assert_eq!(
            r["error"],
            json!({"code": -32600, "message": format!("client must send initialized before using {family} methods")}),
            "{method}"
        );
    }
}

#[test]
fn resume_rules() {
    let daemon = Daemon::start(&[]);
    let mut a = daemon.connect();
    let session = a.initialize();
    let mut b = daemon.connect();
    let r = b.call(
        "initialize",
        json!({"clientName": "b", "resumeSessionId": "00000000-0000-4000-8000-000000000000"}),
    );
    assert_eq!(
        r["error"],
        json!({"code": -32600, "message": "unknown session id 00000000-0000-4000-8000-000000000000"})
    );
    let r = b.call("initialize", json!({"clientName": "b", "resumeSessionId": session}));
    assert_eq!(
        r["error"],
        // v2 (issue 12): upstream 0.171 answers -32010 here.
        json!({"code": -32010, "message": format!("session {session} is already attached to another connection")})
    );
    drop(a);
    // The detach happens when the server notices the close; retry until it has, within the deadline.
    let deadline = Instant::now() + DEADLINE;
    loop {
        let r = b.call("initialize", json!({"clientName": "b", "resumeSessionId": session}));
        if r["result"]["sessionId"] == json!(session) {
            assert_eq!(r["result"].as_object().expect("object").len(), 2);
            break;
        }
        assert_eq!(r["error"]["code"], -32010);
        assert!(Instant::now() < deadline, "session never detached");
    }
}

#[test]
fn ttl_expiry_makes_resume_fail() {
    let daemon = Daemon::start(&["--detach-ttl-secs", "0"]);
    let mut a = daemon.connect();
    let session = a.initialize();
    a.ws.close(None).expect("close");
    let _ = a.closed();
    let mut b = daemon.connect();
    let deadline = Instant::now() + DEADLINE;
    loop {
        let r = b.call("initialize", json!({"clientName": "b", "resumeSessionId": session}));
        let message = r["error"]["message"].as_str().expect("error").to_string();
        if message == format!("unknown session id {session}") {
            break;
        }
        assert_eq!(message, format!("session {session} is already attached to another connection"));
        assert!(Instant::now() < deadline);
    }
}

#[test]
fn health_routes() {
    let daemon = Daemon::start(&[]);
    for path in ["/readyz", "/healthz", "/readyz?x=1"] {
        let (status, response) = http(
            &daemon.addr,
            &format!("GET {path} HTTP/1.1\r\nHost: x\r\nOrigin: http://evil\r\n\r\n"),
        );
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert!(response.ends_with("\r\n\r\n"), "empty body: {response:?}");
        assert!(response.to_ascii_lowercase().contains("content-length: 0"));
    }
    let (status, _) = http(&daemon.addr, "HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(status, "HTTP/1.1 200 OK");
    let (status, _) =
        http(&daemon.addr, "POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(status, "HTTP/1.1 405 Method Not Allowed");
    let (status, _) = http(&daemon.addr, "GET /other HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(status, "HTTP/1.1 404 Not Found");
}

fn upgrade(addr: &str, path: &str, extra: &str) -> String {
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{extra}\r\n"
    );
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(DEADLINE)).expect("timeout");
    stream.write_all(request.as_bytes()).expect("write");
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut chunk).expect("read");
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    String::from_utf8_lossy(&buf).lines().next().unwrap_or("").to_string()
}

#[test]
fn upgrade_checks_origin_token_and_extensions() {
    let daemon = Daemon::start(&[]);
    assert_eq!(upgrade(&daemon.addr, "/", "Origin: http://evil\r\n"), "HTTP/1.1 403 Forbidden");
    assert_eq!(
        upgrade(
            &daemon.addr,
            "/",
            "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
        ),
        "HTTP/1.1 101 Switching Protocols"
    );
    assert_eq!(upgrade(&daemon.addr, "/any/path", ""), "HTTP/1.1 101 Switching Protocols");

    let dir = std::env::temp_dir().join(format!("exec-server-token-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("token");
    std::fs::write(&file, "s3cr3t+/=\n").expect("write token");
    let secured = Daemon::start(&["--connection-token-file", file.to_str().expect("utf8")]);
    assert_eq!(upgrade(&secured.addr, "/", ""), "HTTP/1.1 401 Unauthorized");
    assert_eq!(upgrade(&secured.addr, "/?token=wrong", ""), "HTTP/1.1 401 Unauthorized");
    assert_eq!(
        upgrade(&secured.addr, "/?token=s3cr3t%2B%2F%3D", ""),
        "HTTP/1.1 101 Switching Protocols"
    );
    assert_eq!(
        upgrade(&secured.addr, "/", "Authorization: Bearer s3cr3t+/=\r\n"),
        "HTTP/1.1 101 Switching Protocols"
    );
    assert_eq!(
        upgrade(&secured.addr, "/", "Origin: x\r\nAuthorization: Bearer s3cr3t+/=\r\n"),
        "HTTP/1.1 403 Forbidden"
    );
    let (status, _) = http(&secured.addr, "GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(!secured.stderr().contains("s3cr3t"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn connection_limit_gives_503_but_health_still_answers() {
    let daemon = Daemon::start(&["--max-connections", "1"]);
    let mut first = daemon.connect();
    first.initialize();
    assert_eq!(upgrade(&daemon.addr, "/", ""), "HTTP/1.1 503 Service Unavailable");
    let (status, _) = http(&daemon.addr, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(status, "HTTP/1.1 200 OK");
}

#[test]
fn token_and_binding_rules_at_startup() {
    let (code, _, stderr) = run_to_exit(&["--listen", "ws://0.0.0.0:0"]);
    assert_eq!(code, 2, "{stderr}");
    let (code, _, _) = run_to_exit(&["--connection-token-file", "/nonexistent/token"]);
    assert_eq!(code, 2);
    let daemon = Daemon::start_raw(&["--listen", "ws://0.0.0.0:0", "--allow-unauthenticated"], &[]);
    assert!(daemon.url.starts_with("ws://0.0.0.0:"));
    let out = Command::new(BIN)
        .env("EXEC_SERVER_CONNECTION_TOKEN", "  ")
        .stdin(Stdio::null())
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn an_idle_tcp_connection_delays_no_handshake() {
    let daemon = Daemon::start(&["--handshake-timeout-secs", "2"]);
    let idle = TcpStream::connect(&daemon.addr).expect("connect");
    let started = Instant::now();
    let (mut client, _) = daemon.session();
    assert_eq!(client.call("x", json!({}))["error"]["code"], -32601);
    // The idle one is dropped by the handshake deadline.
    let mut idle = idle;
    idle.set_read_timeout(Some(DEADLINE)).expect("timeout");
    let mut buf = [0u8; 1];
    match idle.read(&mut buf) {
        Ok(0) => {}
        // A reset is as good a drop as a FIN.
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("the idle connection was not dropped: {other:?}"),
    }
    assert!(started.elapsed() >= Duration::from_secs(1));
}

#[test]
fn oversized_message_closes_with_1009_and_a_limit_sized_frame_is_accepted() {
    let daemon = Daemon::start(&["--max-message-bytes", "100000"]);
    let mut client = daemon.connect();
    let name =
        "x".repeat(100_000 - r#"{"id":1,"method":"initialize","params":{"clientName":""}}"#.len());
    let exact = format!(r#"{{"id":1,"method":"initialize","params":{{"clientName":"{name}"}}}}"#);
    assert_eq!(exact.len(), 100_000);
    client.send_text(&exact);
    assert!(client.recv()["result"]["sessionId"].is_string());
    client.send_text(&format!("{exact} "));
    assert_eq!(client.closed(), Some(1009));
    let (mut other, _) = daemon.session();
    assert_eq!(other.call("x", json!({}))["error"]["code"], -32601);
}

#[test]
fn sigterm_closes_websockets_with_1001_and_exits_0() {
    let mut daemon = Daemon::start(&[]);
    let (mut client, _) = daemon.session();
    common::signal(daemon.pid(), libc::SIGTERM);
    assert_eq!(client.closed(), Some(1001));
    let status = common::wait_exit(&mut daemon.child);
    assert_eq!(status.code(), Some(0));
}

#[test]
fn two_hundred_concurrent_connections_each_get_a_session() {
    let daemon = Daemon::start(&[]);
    let url = daemon.url.clone();
    let threads: Vec<_> = (0..200)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || {
                let mut client = Client::connect(&url);
                client.initialize()
            })
        })
        .collect();
    let mut ids: Vec<String> = threads.into_iter().map(|t| t.join().expect("client")).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 200);
}

#[test]
fn pipelined_handshake_and_requests_are_all_answered_in_order() {
    let daemon = Daemon::start(&[]);
    let mut client = daemon.connect();
    for text in [
        r#"{"id":1,"method":"initialize","params":{"clientName":"p"}}"#,
        r#"{"method":"initialized","params":{}}"#,
        r#"{"id":2,"method":"a/b"}"#,
        r#"{"id":3,"method":"c/d"}"#,
    ] {
        client.ws.write(Message::text(text)).expect("queue");
    }
    client.ws.flush().expect("flush");
    assert!(client.response(&json!(1))["result"]["sessionId"].is_string());
    assert_eq!(client.response(&json!(2))["error"]["code"], -32601);
    assert_eq!(client.response(&json!(3))["error"]["code"], -32601);
}

#[test]
fn pipelined_initialize_initialized_start_and_get_metadata_succeed_in_order() {
    let daemon = Daemon::start(&[]);
    let mut client = daemon.connect();
    for value in [
        json!({"id": 1, "method": "initialize", "params": {"clientName": "p"}}),
        json!({"method": "initialized", "params": {}}),
        json!({"id": 2, "method": "process/start", "params": {"processId": "p1", "argv": ["true"], "cwd": "/", "env": {}, "tty": false}}),
        json!({"id": 3, "method": "fs/getMetadata", "params": {"path": "/"}}),
    ] {
        client.ws.write(Message::text(value.to_string())).expect("queue");
    }
    client.ws.flush().expect("flush");
    assert!(client.response(&json!(1))["result"]["sessionId"].is_string());
    assert_eq!(
        client.response(&json!(2))["result"],
        json!({"processId": "p1", "sandboxType": "none"})
    );
    let metadata = client.response(&json!(3));
    assert_eq!(metadata["result"]["isDirectory"], true);
    let closed = client.notification("process/closed");
    assert_eq!(closed["params"]["processId"], "p1");
}

#[test]
fn a_long_poll_does_not_delay_another_request_on_the_connection() {
    let daemon = Daemon::start(&[]);
    let (mut client, _) = daemon.session();
    let start = client.call(
        "process/start",
        json!({"processId": "idle", "argv": ["sleep", "30"], "cwd": "/", "env": {"PATH": "/usr/bin:/bin"}, "tty": false}),
    );
    assert_eq!(start["result"], json!({"processId": "idle", "sandboxType": "none"}));
    let poll = client.request("process/read", json!({"processId": "idle", "waitMs": 5000}));
    let started = Instant::now();
    let metadata = client.call("fs/getMetadata", json!({"path": "/"}));
    assert_eq!(metadata["result"]["isDirectory"], true);
    // Answered while the long poll still waits: well before its 5 s deadline.
    assert!(started.elapsed() < Duration::from_secs(4), "took {:?}", started.elapsed());
    let read = client.response(&poll);
    assert_eq!(read["result"]["chunks"], json!([]));
    assert!(started.elapsed() >= Duration::from_secs(4));
    let stop = client.call("process/terminate", json!({"processId": "idle"}));
    assert_eq!(stop["result"], json!({"running": true}));
}
