//! The local listener's websocket framing at the byte level (RFC 6455 §5, §7): a raw client
//! here writes hand-built frames (fragmented, interleaved with control frames, pipelined,
//! split byte by byte, malformed, over the size limit) and parses the daemon's unmasked
//! frames itself, asserting the exact frames, close codes and close payloads that come back,
//! and that a new connection is still served after every violation. What requests mean is
//! tests/transport.rs's business; this file owns only how frames are read and answered.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};

use common::{Daemon, DEADLINE};
use serde_json::{json, Value};

const FIN: u8 = 0x80;
const RSV1: u8 = 0x40;
const RSV2: u8 = 0x20;
const RSV3: u8 = 0x10;
const CONTINUE: u8 = 0x0;
const TEXT: u8 = 0x1;
const BINARY: u8 = 0x2;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;

/// The masking key of every client frame; fixed, so a failing test's bytes are reproducible.
const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];
/// The handshake key of RFC 6455 §1.3 and the accept value it derives.
const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

// ---------------------------------------------------------------------------------------
// Building client frames.

/// `payload` XORed with the masking key (§5.3).
fn masked(payload: &[u8]) -> Vec<u8> {
    payload.iter().enumerate().map(|(i, b)| b ^ MASK[i % 4]).collect()
}

/// A masked client frame: `head` is the first byte (FIN, RSV bits, opcode); the length takes
/// the shortest of the 7-, 16- and 64-bit forms.
fn frame(head: u8, payload: &[u8]) -> Vec<u8> {
    match payload.len() {
        n if n < 126 => frame_with_length(head, n as u8, &[], payload),
        n if n <= 0xffff => frame_with_length(head, 126, &(n as u16).to_be_bytes(), payload),
        n => frame_with_length(head, 127, &(n as u64).to_be_bytes(), payload),
    }
}

/// A masked client frame whose length is written as given: the 7-bit field (126 or 127
/// announce a longer form) and the extended length that follows it, if any.
fn frame_with_length(head: u8, short: u8, extended: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut out = vec![head, 0x80 | short];
    out.extend_from_slice(extended);
    out.extend_from_slice(&MASK);
    out.extend_from_slice(&masked(payload));
    out
}

/// The same frame without the mask bit and key, as only a server may send it.
fn unmasked(head: u8, payload: &[u8]) -> Vec<u8> {
    assert!(payload.len() < 126, "unmasked frames here are short");
    let mut out = vec![head, payload.len() as u8];
    out.extend_from_slice(payload);
    out
}

/// A Close frame's payload: the code, big-endian, then the reason.
fn close_payload(code: u16, reason: &[u8]) -> Vec<u8> {
    let mut out = code.to_be_bytes().to_vec();
    out.extend_from_slice(reason);
    out
}

/// A request for a method that does not exist: any connection answers it with one -32601.
fn unknown(id: i64) -> String {
    json!({"id": id, "method": "x"}).to_string()
}

/// `unknown(id)` with a string param that makes it exactly `len` bytes long.
fn padded(id: i64, len: usize) -> String {
    let bare = format!(r#"{{"id":{id},"method":"x","params":{{"s":""}}}}"#).len();
    let text =
        format!(r#"{{"id":{id},"method":"x","params":{{"s":"{}"}}}}"#, "s".repeat(len - bare));
    assert_eq!(text.len(), len);
    text
}

/// A request the daemon answers on its reading thread, before it reads the next frame: a
/// quick method (fs/getMetadata) refused before initialize. Replies to other methods come
/// from the worker pool, so their order against later frames is not the framing's to pin.
fn gated(id: i64) -> String {
    json!({"id": id, "method": "fs/getMetadata", "params": {"path": "/"}}).to_string()
}

fn initialize(id: i64, name: &str) -> String {
    json!({"id": id, "method": "initialize", "params": {"clientName": name}}).to_string()
}

// ---------------------------------------------------------------------------------------
// The raw client.

/// A frame the daemon sent: its first byte and its payload.
#[derive(Debug, PartialEq)]
struct Frame {
    head: u8,
    payload: Vec<u8>,
}

impl Frame {
    fn new(head: u8, payload: &[u8]) -> Frame {
        Frame { head, payload: payload.to_vec() }
    }
}

/// One upgraded TCP connection, read and written by hand.
struct Raw {
    stream: TcpStream,
    /// Bytes read but not yet parsed into frames.
    buf: Vec<u8>,
}

impl Raw {
    /// Connects and upgrades; the 101 head is read and checked, nothing after it.
    fn connect(daemon: &Daemon) -> Raw {
        Raw::connect_with(daemon, &[])
    }

    /// Connects and sends the upgrade request with `early` bytes in the same write, before
    /// the 101 has come back.
    fn connect_with(daemon: &Daemon, early: &[u8]) -> Raw {
        let stream = TcpStream::connect(&daemon.addr).expect("tcp connect");
        stream.set_nodelay(true).expect("nodelay");
        stream.set_read_timeout(Some(DEADLINE)).expect("read timeout");
        stream.set_write_timeout(Some(DEADLINE)).expect("write timeout");
        let mut raw = Raw { stream, buf: Vec::new() };
        let mut request = format!(
            "GET / HTTP/1.1\r\nHost: {}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {KEY}\r\n\r\n",
            daemon.addr
        )
        .into_bytes();
        request.extend_from_slice(early);
        raw.write(&request);
        let end = loop {
            if let Some(at) = raw.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            raw.fill("the 101 head");
        };
        let head = String::from_utf8(raw.buf.drain(..end).collect()).expect("UTF-8 head");
        assert!(head.starts_with("HTTP/1.1 101 Switching Protocols\r\n"), "{head}");
        assert!(head.contains(&format!("\r\nSec-WebSocket-Accept: {ACCEPT}\r\n")), "{head}");
        raw
    }

    fn write(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write to the daemon");
    }

    /// Sets a `SOL_SOCKET` option of the connection to `value`.
    fn set_option<T>(&self, name: libc::c_int, value: &T) {
        // SAFETY: `value` is the option's own type, read for its size during the call.
        let rc = unsafe {
            libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(&self.stream),
                libc::SOL_SOCKET,
                name,
                (value as *const T).cast(),
                std::mem::size_of::<T>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0, "setsockopt {name}: {}", std::io::Error::last_os_error());
    }

    /// Reads once more into the buffer; the connection ending here fails the test.
    fn fill(&mut self, what: &str) {
        let mut chunk = [0u8; 64 << 10];
        match self.stream.read(&mut chunk) {
            Ok(0) => panic!("connection ended while waiting for {what}; buffered {:?}", self.buf),
            Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                panic!("timed out after {DEADLINE:?} waiting for {what}; buffered {:?}", self.buf)
            }
            Err(e) => panic!("reading {what}: {e}; buffered {:?}", self.buf),
        }
    }

    /// At least `n` bytes buffered.
    fn want(&mut self, n: usize, what: &str) {
        while self.buf.len() < n {
            self.fill(what);
        }
    }

    /// The next frame from the daemon, which must be unmasked (§5.1).
    fn frame(&mut self) -> Frame {
        self.want(2, "a frame header");
        let (head, second) = (self.buf[0], self.buf[1]);
        assert_eq!(second & 0x80, 0, "the daemon masked a frame: {:?}", &self.buf[..2]);
        let (len, at) = match second & 0x7f {
            126 => {
                self.want(4, "a 16-bit length");
                (u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize, 4)
            }
            127 => {
                self.want(10, "a 64-bit length");
                let bytes: [u8; 8] = self.buf[2..10].try_into().expect("eight bytes");
                (u64::from_be_bytes(bytes) as usize, 10)
            }
            n => (n as usize, 2),
        };
        self.want(at + len, "a frame payload");
        let payload = self.buf[at..at + len].to_vec();
        self.buf.drain(..at + len);
        Frame { head, payload }
    }

    /// The next frame, which must be a whole text message: one JSON-RPC reply.
    fn reply(&mut self) -> Value {
        let frame = self.frame();
        assert_eq!(frame.head, FIN | TEXT, "expected a text reply, got {frame:?}");
        let text = String::from_utf8(frame.payload).expect("a UTF-8 reply");
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("reply is not JSON ({e}): {text}"))
    }

    /// The next frame is the -32601 reply to `unknown(id)`.
    fn unknown_reply(&mut self, id: i64) {
        let reply = self.reply();
        assert_eq!(reply["id"], id, "{reply}");
        assert_eq!(reply["error"]["code"], -32601, "{reply}");
    }

    /// The next frame is the reply to `gated(id)` on a connection not yet initialized.
    fn gated_reply(&mut self, id: i64) {
        let message = "client must call initialize before using filesystem methods";
        assert_eq!(self.reply(), json!({"id": id, "error": {"code": -32600, "message": message}}));
    }

    /// The daemon sends nothing more and ends the TCP connection with a FIN: it read every
    /// byte we sent, so its close is no reset.
    fn ends(&mut self) {
        assert!(self.buf.is_empty(), "bytes after the last frame: {:?}", self.buf);
        let mut chunk = [0u8; 4096];
        match self.stream.read(&mut chunk) {
            Ok(0) => {}
            Ok(n) => panic!("bytes after the last frame: {:?}", &chunk[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                panic!("connection not ended within {DEADLINE:?}")
            }
            Err(e) => panic!("reading the end of the connection: {e}"),
        }
    }
}

/// A new connection to `daemon` is upgraded and answers initialize with a session.
fn still_serves(daemon: &Daemon) {
    let mut raw = Raw::connect(daemon);
    raw.write(&frame(FIN | TEXT, initialize(1, "next").as_bytes()));
    let reply = raw.reply();
    assert_eq!(reply["id"], 1, "{reply}");
    assert_eq!(reply["result"]["sessionId"].as_str().map(str::len), Some(36), "{reply}");
}

/// Sends `bytes` on a fresh connection and expects a Close with exactly `payload` back, then
/// the end of the connection, then a new connection served.
fn rejected(daemon: &Daemon, what: &str, bytes: &[u8], payload: &[u8]) {
    // Shown with a failure's output, which may be a timeout that cannot name the case.
    println!("case: {what}");
    let mut raw = Raw::connect(daemon);
    raw.write(bytes);
    let frame = raw.frame();
    assert_eq!(frame, Frame::new(FIN | CLOSE, payload), "{what}");
    raw.ends();
    still_serves(daemon);
}

// ---------------------------------------------------------------------------------------
// 1. Fragmentation.

#[test]
fn a_fragmented_text_message_is_answered_once_with_pings_between_fragments_answered_first() {
    let daemon = Daemon::start(&[]);
    let mut raw = Raw::connect(&daemon);
    let text = initialize(1, "fragmented");
    let (a, rest) = text.as_bytes().split_at(10);
    let (b, c) = rest.split_at(20);
    let mut bytes = frame(TEXT, a);
    bytes.extend(frame(CONTINUE, b));
    bytes.extend(frame(FIN | CONTINUE, c));
    bytes.extend(frame(FIN | TEXT, unknown(2).as_bytes()));
    raw.write(&bytes);
    let reply = raw.reply();
    assert_eq!(reply["id"], 1, "{reply}");
    assert!(reply["result"]["sessionId"].is_string(), "{reply}");
    // The message after it proves the fragments made one message, answered once.
    raw.unknown_reply(2);

    // A Ping between fragments is answered at once, before the message is complete.
    let text = unknown(3);
    let (a, rest) = text.as_bytes().split_at(5);
    let (b, c) = rest.split_at(5);
    raw.write(&frame(TEXT, a));
    raw.write(&frame(FIN | PING, b"between"));
    assert_eq!(raw.frame(), Frame::new(FIN | PONG, b"between"));
    raw.write(&frame(CONTINUE, b));
    raw.write(&frame(FIN | PING, b""));
    assert_eq!(raw.frame(), Frame::new(FIN | PONG, b""));
    raw.write(&frame(FIN | CONTINUE, c));
    raw.unknown_reply(3);

    // The same, all in one write: the Pong still comes before the reply.
    let mut bytes = frame(TEXT, a);
    bytes.extend(frame(FIN | PING, b"p"));
    bytes.extend(frame(CONTINUE, b));
    bytes.extend(frame(FIN | CONTINUE, c));
    raw.write(&bytes);
    assert_eq!(raw.frame(), Frame::new(FIN | PONG, b"p"));
    raw.unknown_reply(3);

    // An empty message is a message: text or binary, it is read as empty text (not JSON).
    for opcode in [TEXT, BINARY] {
        raw.write(&frame(FIN | opcode, b""));
        let reply = raw.reply();
        assert_eq!((&reply["id"], &reply["error"]["code"]), (&json!(-1), &json!(-32600)));
        let message = reply["error"]["message"].as_str().expect("a message");
        assert!(message.ends_with(": EOF while parsing a value at line 1 column 0"), "{reply}");
    }

    // Empty fragments count for nothing: an empty first and middle fragment.
    let mut bytes = frame(TEXT, b"");
    bytes.extend(frame(CONTINUE, b""));
    bytes.extend(frame(FIN | CONTINUE, unknown(4).as_bytes()));
    raw.write(&bytes);
    raw.unknown_reply(4);
}

// ---------------------------------------------------------------------------------------
// 2. Ping and Pong.

#[test]
fn a_ping_gets_its_payload_back_and_a_pong_gets_nothing() {
    let daemon = Daemon::start(&[]);
    let mut raw = Raw::connect(&daemon);
    raw.write(&frame(FIN | PING, b"hello \x00\xff"));
    assert_eq!(raw.frame(), Frame::new(FIN | PONG, b"hello \x00\xff"));
    raw.write(&frame(FIN | PING, b""));
    assert_eq!(raw.frame(), Frame::new(FIN | PONG, b""));
    let largest = [0xa5u8; 125];
    raw.write(&frame(FIN | PING, &largest));
    assert_eq!(raw.frame(), Frame::new(FIN | PONG, &largest));

    // Three Pings in one write get three Pongs, in order.
    let mut bytes = frame(FIN | PING, b"1");
    bytes.extend(frame(FIN | PING, b"2"));
    bytes.extend(frame(FIN | PING, b"3"));
    raw.write(&bytes);
    for payload in [b"1", b"2", b"3"] {
        assert_eq!(raw.frame(), Frame::new(FIN | PONG, payload));
    }

    // An unsolicited Pong is ignored: the next frame out is the reply to what followed it.
    let mut bytes = frame(FIN | PONG, b"unsolicited");
    bytes.extend(frame(FIN | TEXT, unknown(1).as_bytes()));
    raw.write(&bytes);
    raw.unknown_reply(1);
    raw.write(&frame(FIN | PONG, b""));
    raw.write(&frame(FIN | TEXT, unknown(2).as_bytes()));
    raw.unknown_reply(2);
}

// ---------------------------------------------------------------------------------------
// 3. The closing handshake.

#[test]
fn a_close_is_echoed_with_its_code_and_reason_then_the_connection_ends() {
    let daemon = Daemon::start(&[]);
    for (what, payload) in [
        ("1000 with a reason", close_payload(1000, b"bye")),
        ("1001 without a reason", close_payload(1001, b"")),
        ("registered 3000", close_payload(3000, b"iana")),
        ("private 4999", close_payload(4999, "ünïcode".as_bytes())),
        ("a 123-byte reason", close_payload(1000, &[b'r'; 123])),
        ("no payload", Vec::new()),
    ] {
        let mut raw = Raw::connect(&daemon);
        raw.write(&frame(FIN | TEXT, unknown(1).as_bytes()));
        raw.unknown_reply(1);
        raw.write(&frame(FIN | CLOSE, &payload));
        assert_eq!(raw.frame(), Frame::new(FIN | CLOSE, &payload), "{what}");
        raw.ends();
    }
    // A Close may come between the fragments of a message; the message is dropped.
    let mut raw = Raw::connect(&daemon);
    let mut bytes = frame(TEXT, &unknown(1).as_bytes()[..4]);
    bytes.extend(frame(FIN | CLOSE, &close_payload(1000, b"mid")));
    raw.write(&bytes);
    assert_eq!(raw.frame(), Frame::new(FIN | CLOSE, &close_payload(1000, b"mid")));
    raw.ends();
    still_serves(&daemon);
}

#[test]
fn a_close_with_a_bad_code_or_payload_is_answered_as_a_protocol_error() {
    let daemon = Daemon::start(&[]);
    for (what, code) in [
        ("0", 0),
        ("999", 999),
        ("1004, reserved", 1004),
        ("1005, no status", 1005),
        ("1006, abnormal", 1006),
        ("1015, TLS", 1015),
        ("1016, reserved", 1016),
        ("2999, reserved", 2999),
        ("5000, out of range", 5000),
    ] {
        // The daemon's reply to a close it cannot echo carries a reason of its own.
        let bytes = frame(FIN | CLOSE, &close_payload(code, b"x"));
        rejected(&daemon, what, &bytes, &close_payload(1002, b"Protocol violation"));
    }
    rejected(&daemon, "1-byte close", &frame(FIN | CLOSE, &[0x03]), &close_payload(1002, b""));
    rejected(
        &daemon,
        "close reason not UTF-8",
        &frame(FIN | CLOSE, &close_payload(1000, &[0xff, 0xfe])),
        &close_payload(1007, b""),
    );
    rejected(
        &daemon,
        "126-byte close",
        &frame(FIN | CLOSE, &close_payload(1000, &[b'r'; 124])),
        &close_payload(1002, b""),
    );
}

// ---------------------------------------------------------------------------------------
// 4. Protocol violations.

#[test]
fn protocol_violations_close_with_1002_and_the_daemon_serves_on() {
    let daemon = Daemon::start(&[]);
    let request = unknown(1);
    let request = request.as_bytes();
    let fragment_then = |second: Vec<u8>| {
        let mut bytes = frame(TEXT, b"{\"id\":");
        bytes.extend(second);
        bytes
    };
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("unmasked text", unmasked(FIN | TEXT, request)),
        ("unmasked ping", unmasked(FIN | PING, b"p")),
        ("unmasked close", unmasked(FIN | CLOSE, &close_payload(1000, b""))),
        ("RSV1", frame(FIN | RSV1 | TEXT, request)),
        ("RSV2", frame(FIN | RSV2 | TEXT, request)),
        ("RSV3", frame(FIN | RSV3 | TEXT, request)),
        ("RSV1 on a ping", frame(FIN | RSV1 | PING, b"")),
        ("opcode 0x3", frame(FIN | 0x3, request)),
        ("opcode 0x7", frame(FIN | 0x7, b"")),
        ("opcode 0xB", frame(FIN | 0xB, b"")),
        ("opcode 0xF", frame(FIN | 0xF, b"abc")),
        ("continuation with nothing to continue", frame(FIN | CONTINUE, request)),
        ("unfinished continuation with nothing to continue", frame(CONTINUE, request)),
        ("text inside a fragmented message", fragment_then(frame(FIN | TEXT, request))),
        ("binary inside a fragmented message", fragment_then(frame(FIN | BINARY, request))),
        ("unfinished text inside a fragmented message", fragment_then(frame(TEXT, b"1"))),
        ("126-byte ping", frame(FIN | PING, &[b'p'; 126])),
        ("126-byte pong", frame(FIN | PONG, &[b'p'; 126])),
        ("fragmented ping", frame(PING, b"p")),
        ("fragmented pong", frame(PONG, b"p")),
        ("fragmented close", frame(CLOSE, &close_payload(1000, b""))),
        ("fragmented ping inside a fragmented message", fragment_then(frame(PING, b""))),
    ];
    for (what, bytes) in cases {
        rejected(&daemon, what, &bytes, &close_payload(1002, b""));
    }
}

// ---------------------------------------------------------------------------------------
// 5. UTF-8, text and binary.

#[test]
fn text_must_be_utf8_even_when_split_across_fragments() {
    let daemon = Daemon::start(&[]);
    // "é" is C3 A9 and "€" is E2 82 AC: split inside each sequence, the message is valid.
    let text = r#"{"id":5,"method":"x","params":{"s":"é€"}}"#.as_bytes();
    let at = text.iter().position(|&b| b == 0xc3).expect("é");
    let mut raw = Raw::connect(&daemon);
    let mut bytes = frame(TEXT, &text[..at + 1]);
    bytes.extend(frame(CONTINUE, &text[at + 1..at + 3]));
    bytes.extend(frame(CONTINUE, &text[at + 3..at + 4]));
    bytes.extend(frame(FIN | CONTINUE, &text[at + 4..]));
    raw.write(&bytes);
    raw.unknown_reply(5);

    let invalid = |prefix: &[u8]| {
        let mut text = br#"{"id":1,"method":"x","params":{"s":""#.to_vec();
        text.extend_from_slice(prefix);
        text.extend_from_slice(br#""}}"#);
        text
    };
    let invalid_data = close_payload(1007, b"");
    for (what, bytes) in [
        ("a lone continuation byte", frame(FIN | TEXT, &invalid(&[0x80]))),
        ("an overlong encoding", frame(FIN | TEXT, &invalid(&[0xc0, 0xaf]))),
        ("a surrogate", frame(FIN | TEXT, &invalid(&[0xed, 0xa0, 0x80]))),
        ("past U+10FFFF", frame(FIN | TEXT, &invalid(&[0xf4, 0x90, 0x80, 0x80]))),
        ("0xFF", frame(FIN | TEXT, &invalid(&[0xff]))),
        ("a sequence cut by the end of the message", frame(FIN | TEXT, &[b'a', 0xe2, 0x82])),
        ("invalid in the last fragment", {
            let mut bytes = frame(TEXT, b"{\"id\":1");
            bytes.extend(frame(FIN | CONTINUE, &[0xc3, 0x28]));
            bytes
        }),
        ("a sequence cut by the end of a fragmented message", {
            let mut bytes = frame(TEXT, b"{\"id\":1");
            bytes.extend(frame(FIN | CONTINUE, &[0xe2]));
            bytes
        }),
    ] {
        rejected(&daemon, what, &bytes, &invalid_data);
    }
    // Invalid UTF-8 in a first fragment closes the connection at once, without waiting for
    // the rest of the message.
    rejected(&daemon, "invalid in an unfinished fragment", &frame(TEXT, &[0xff]), &invalid_data);
}

#[test]
fn binary_messages_are_read_as_text_and_non_utf8_ones_get_an_error_reply() {
    let daemon = Daemon::start(&[]);
    let mut raw = Raw::connect(&daemon);
    raw.write(&frame(FIN | BINARY, initialize(7, "b").as_bytes()));
    let reply = raw.reply();
    assert_eq!(reply["id"], 7, "{reply}");
    assert!(reply["result"]["sessionId"].is_string(), "{reply}");

    let text = unknown(8);
    let (a, b) = text.as_bytes().split_at(4);
    let mut bytes = frame(BINARY, a);
    bytes.extend(frame(FIN | CONTINUE, b));
    raw.write(&bytes);
    raw.unknown_reply(8);

    // Not UTF-8, whole or fragmented: an error with id -1, and the connection stays open.
    for bytes in [frame(FIN | BINARY, &[0xff, 0xfe]), {
        let mut bytes = frame(BINARY, b"{\"id\":9,");
        bytes.extend(frame(CONTINUE, &[0xc3]));
        bytes.extend(frame(FIN | CONTINUE, &[0x28]));
        bytes
    }] {
        raw.write(&bytes);
        let reply = raw.reply();
        assert_eq!(reply["id"], -1, "{reply}");
        assert_eq!(reply["error"]["code"], -32600, "{reply}");
        raw.write(&frame(FIN | TEXT, unknown(10).as_bytes()));
        raw.unknown_reply(10);
    }
}

// ---------------------------------------------------------------------------------------
// 6. The size limit.

#[test]
fn the_message_limit_bounds_frames_and_fragmented_messages_alike() {
    const LIMIT: usize = 1000;
    let daemon = Daemon::start(&["--max-message-bytes", &LIMIT.to_string()]);
    let exact = |id| padded(id, LIMIT);
    let mut raw = Raw::connect(&daemon);
    raw.write(&frame(FIN | TEXT, exact(1).as_bytes()));
    raw.unknown_reply(1);
    let text = exact(2);
    let (a, b) = text.as_bytes().split_at(400);
    let mut bytes = frame(TEXT, a);
    bytes.extend(frame(FIN | CONTINUE, b));
    raw.write(&bytes);
    raw.unknown_reply(2);

    let too_big = close_payload(1009, b"");
    let over = format!("{} ", exact(3));
    rejected(&daemon, "one frame over", &frame(FIN | TEXT, over.as_bytes()), &too_big);
    rejected(&daemon, "one binary frame over", &frame(FIN | BINARY, over.as_bytes()), &too_big);
    let fragmented = {
        let mut bytes = frame(TEXT, &over.as_bytes()[..400]);
        bytes.extend(frame(CONTINUE, &over.as_bytes()[400..800]));
        bytes.extend(frame(FIN | CONTINUE, &over.as_bytes()[800..]));
        bytes
    };
    rejected(&daemon, "fragments each under, together over", &fragmented, &too_big);
    // Over the limit is found as soon as the fragments so far pass it, before the last.
    let unfinished = {
        let mut bytes = frame(TEXT, &over.as_bytes()[..600]);
        bytes.extend(frame(CONTINUE, &over.as_bytes()[600..]));
        bytes
    };
    rejected(&daemon, "unfinished fragments over", &unfinished, &too_big);
    // A frame's length alone is enough: the header of a frame over the limit, no payload.
    let mut header = frame(FIN | TEXT, over.as_bytes());
    header.truncate(2 + 2 + 4);
    rejected(&daemon, "a header announcing too much", &header, &too_big);
}

// ---------------------------------------------------------------------------------------
// 7. Pipelining and partial writes.

#[test]
fn frames_pipelined_in_one_write_or_split_byte_by_byte_are_all_answered_in_order() {
    let daemon = Daemon::start(&[]);
    // Frames in the same write as the upgrade request itself.
    let mut early = frame(FIN | TEXT, gated(1).as_bytes());
    early.extend(frame(FIN | TEXT, gated(2).as_bytes()));
    let mut raw = Raw::connect_with(&daemon, &early);
    raw.gated_reply(1);
    raw.gated_reply(2);

    let mut bytes = Vec::new();
    for id in 3..8 {
        bytes.extend(frame(FIN | TEXT, gated(id).as_bytes()));
    }
    raw.write(&bytes);
    for id in 3..8 {
        raw.gated_reply(id);
    }

    // One byte per write, with TCP_NODELAY: every header field, mask key and payload arrives
    // in pieces.
    let long = json!({"id": 9, "method": "fs/getMetadata", "params": {"path": "/".repeat(200)}});
    let mut bytes = frame(FIN | TEXT, gated(8).as_bytes());
    bytes.extend(frame(FIN | PING, b"ab"));
    bytes.extend(frame(FIN | TEXT, long.to_string().as_bytes()));
    for byte in &bytes {
        raw.write(std::slice::from_ref(byte));
        raw.stream.flush().expect("flush");
    }
    raw.gated_reply(8);
    assert_eq!(raw.frame(), Frame::new(FIN | PONG, b"ab"));
    raw.gated_reply(9);
}

// ---------------------------------------------------------------------------------------
// 8. Length forms.

#[test]
fn sixteen_and_sixty_four_bit_lengths_are_read() {
    let daemon = Daemon::start(&[]);
    let mut raw = Raw::connect(&daemon);
    for (id, len, second) in [(1, 300, 126), (2, 65_535, 126), (3, 65_536, 127), (4, 70_000, 127)] {
        let bytes = frame(FIN | TEXT, padded(id, len).as_bytes());
        assert_eq!(bytes[1], 0x80 | second, "length form of {len}");
        raw.write(&bytes);
        raw.unknown_reply(id);
    }

    // Lengths in a longer form than needed are read all the same.
    let text = unknown(5);
    let length = (text.len() as u16).to_be_bytes();
    raw.write(&frame_with_length(FIN | TEXT, 126, &length, text.as_bytes()));
    raw.unknown_reply(5);
    let text = unknown(6);
    let length = (text.len() as u64).to_be_bytes();
    raw.write(&frame_with_length(FIN | TEXT, 127, &length, text.as_bytes()));
    raw.unknown_reply(6);
    raw.write(&frame_with_length(FIN | PING, 126, &[0, 2], b"pp"));
    assert_eq!(raw.frame(), Frame::new(FIN | PONG, b"pp"));

    // A 64-bit length with its top bit set (§5.2 forbids it) is over any limit.
    let bytes = frame_with_length(FIN | TEXT, 127, &(1u64 << 63 | 5).to_be_bytes(), b"");
    rejected(&daemon, "64-bit length with the top bit set", &bytes, &close_payload(1009, b""));
}

// ---------------------------------------------------------------------------------------
// 9. Peers that vanish.

#[test]
fn a_peer_that_half_closes_or_drops_without_a_close_frame_leaves_the_daemon_serving() {
    let daemon = Daemon::start(&[]);

    // Half-close between frames: the daemon ends the connection without a Close frame.
    let mut raw = Raw::connect(&daemon);
    raw.write(&frame(FIN | TEXT, unknown(1).as_bytes()));
    raw.unknown_reply(1);
    raw.stream.shutdown(Shutdown::Write).expect("half-close");
    raw.ends();
    still_serves(&daemon);

    // Half-close in the middle of a frame header, and in the middle of a fragmented message.
    for partial in [frame(FIN | TEXT, unknown(2).as_bytes())[..3].to_vec(), frame(TEXT, b"{")] {
        let mut raw = Raw::connect(&daemon);
        raw.write(&partial);
        raw.stream.shutdown(Shutdown::Write).expect("half-close");
        raw.ends();
        still_serves(&daemon);
    }

    // Dropped outright, mid-frame, with a reset (SO_LINGER 0) or a plain close.
    for reset in [true, false] {
        let mut raw = Raw::connect(&daemon);
        raw.write(&frame(FIN | TEXT, unknown(3).as_bytes())[..5]);
        if reset {
            raw.set_option(libc::SO_LINGER, &libc::linger { l_onoff: 1, l_linger: 0 });
        }
        drop(raw);
        still_serves(&daemon);
    }
    assert!(!daemon.stderr().contains("panicked"), "{}", daemon.stderr());
}

// ---------------------------------------------------------------------------------------
// 10. Control frames behind a long reply.

/// Sends initialize, initialized and an `fs/readFile` of `path` (id 2), and reads frames
/// until the reply's first fragment has begun, so the daemon is writing it.
/// The client's receive buffer is fixed at 256 KiB (no autotuning, which may grow it to
/// tens of MiB), so the daemon soon waits for room.
fn start_long_read(raw: &mut Raw, path: &str) {
    let size: libc::c_int = 256 << 10;
    raw.set_option(libc::SO_RCVBUF, &size);
    raw.write(&frame(FIN | TEXT, initialize(1, "long").as_bytes()));
    assert_eq!(raw.reply()["id"], 1);
    let initialized = json!({"method": "initialized", "params": {}}).to_string();
    let read = json!({"id": 2, "method": "fs/readFile", "params": {"path": path}}).to_string();
    raw.write(&frame(FIN | TEXT, initialized.as_bytes()));
    raw.write(&frame(FIN | TEXT, read.as_bytes()));
    raw.want(2, "the reply's first header");
    assert_eq!(raw.buf[0], TEXT, "the reply is fragmented, text first");
}

#[test]
fn pongs_and_a_close_wait_for_a_partly_written_fragment_and_never_split_it() {
    let daemon = Daemon::start(&[]);
    let dir = common::TempDir::new();
    // 24 MiB of base64 in 1 MiB fragments is far more than the socket buffers on both sides
    // hold, so while this client reads nothing the daemon stops inside a fragment.
    let data: Vec<u8> = (0..18u32 << 20).map(|i| (i * 7 + i / 4096) as u8).collect();
    std::fs::write(dir.join("big"), &data).expect("write the file");

    // Pings sent while the reply is under way are answered between its frames, in order.
    // The client reads a little between Pings, so the daemon, writing faster than that, is
    // mostly waiting for room with a fragment cut short when one arrives.
    let mut raw = Raw::connect(&daemon);
    start_long_read(&mut raw, &dir.s("big"));
    let pings: Vec<Vec<u8>> = (0..64).map(|i| format!("ping {i}").into_bytes()).collect();
    for payload in &pings {
        raw.write(&frame(FIN | PING, payload));
        let target = raw.buf.len() + (128 << 10);
        raw.want(target, "more of the reply");
    }
    let (mut text, mut pongs) = (Vec::new(), Vec::new());
    loop {
        let frame = raw.frame();
        match frame.head & 0x0f {
            PONG => pongs.push(frame.payload),
            TEXT | CONTINUE => {
                let expected = if text.is_empty() { TEXT } else { CONTINUE };
                assert_eq!(frame.head & 0x0f, expected, "fragment after {} bytes", text.len());
                text.extend_from_slice(&frame.payload);
                if frame.head & FIN != 0 {
                    break;
                }
            }
            _ => panic!("unexpected frame {:?}", frame.head),
        }
    }
    // Pings that came after the reply was all written are answered after it.
    while pongs.len() < pings.len() {
        let frame = raw.frame();
        assert_eq!(frame.head, FIN | PONG, "after the reply, only Pongs");
        pongs.push(frame.payload);
    }
    assert_eq!(pongs, pings);
    let reply: Value = serde_json::from_slice(&text).expect("the reply is JSON");
    assert_eq!(reply["id"], 2);
    assert!(reply["result"]["dataBase64"] == common::b64(&data), "the file comes back whole");

    // A Close sent while the reply is under way is answered after the fragment in
    // progress; nothing follows the answer.
    let mut raw = Raw::connect(&daemon);
    start_long_read(&mut raw, &dir.s("big"));
    raw.want(4 << 20, "the first MiBs of the reply");
    raw.write(&frame(FIN | CLOSE, &close_payload(1000, b"enough")));
    let mut fragments = 0;
    loop {
        let frame = raw.frame();
        if frame.head & 0x0f == CLOSE {
            assert_eq!(frame, Frame::new(FIN | CLOSE, &close_payload(1000, b"enough")));
            break;
        }
        let expected = if fragments == 0 { TEXT } else { CONTINUE };
        assert_eq!(frame.head, expected, "fragment {fragments} is not the last");
        fragments += 1;
    }
    assert!(fragments < 24, "the reply stopped at the Close ({fragments} fragments)");
    raw.ends();
    still_serves(&daemon);
}
