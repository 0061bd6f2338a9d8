//! Property tests (issue 17) of the request layer's decoders: arbitrary bytes and arbitrary
//! JSON through the envelope decoder and through a whole connection never panic or hang,
//! and answer exactly what PROTOCOL.md §1.4/§2 say (malformed reply, close, -32601, -32602,
//! the handshake gate's -32600, or initialize's result); every method's params decoder gives
//! a value or a -32602 without a position; base64 round-trips. Connections here never pass
//! `initialize`+`initialized`, so the gate keeps every generated request from running.
//! `PROPTEST_CASES` sets the number of cases (`make fuzz` runs many).

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use proptest::prelude::*;
use serde_json::{Map, Value};

use super::envelope::{decode, decode_params, error_text, Message};
use super::{Flow, Server, Transport};
use crate::config::Config;
use crate::error::RpcError;
use crate::outbound::{CloseReason, Closed, Outbound};
use crate::{b64, fs, process};

const STDIO_PREFIX: &str = "failed to parse JSON-RPC message from exec-server stdio: ";
/// How long one generated message may take to be answered before the case fails as a hang.
const ANSWER_DEADLINE: Duration = Duration::from_secs(10);
/// Cases per property in `make test` unless `PROPTEST_CASES` says otherwise.
const DEFAULT_CASES: u32 = 1024;

const METHODS: &[&str] = &[
    "initialize",
    "process/start",
    "process/read",
    "process/write",
    "process/terminate",
    "fs/readFile",
    "fs/writeFile",
    "fs/createDirectory",
    "fs/getMetadata",
    "fs/readDirectory",
    "fs/remove",
    "fs/copy",
];

/// Member names the decoders know, so generated objects often come close to valid ones.
const FIELDS: &[&str] = &[
    "id",
    "method",
    "params",
    "result",
    "error",
    "jsonrpc",
    "clientName",
    "resumeSessionId",
    "processId",
    "argv",
    "cwd",
    "env",
    "tty",
    "pipeStdin",
    "arg0",
    "envPolicy",
    "afterSeq",
    "maxBytes",
    "waitMs",
    "chunk",
    "path",
    "dataBase64",
    "recursive",
    "force",
    "sourcePath",
    "destinationPath",
    "sandbox",
    "inherit",
    "type",
];

fn config() -> ProptestConfig {
    crate::proptest_config::config(DEFAULT_CASES)
}

fn arb_string() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(FIELDS).prop_map(str::to_owned),
        prop::sample::select(METHODS).prop_map(str::to_owned),
        Just("/tmp/x".to_owned()),
        Just("aGk=".to_owned()),
        Just("initialized".to_owned()),
        any::<String>(),
        "[a-z/=+\"\\\\ ]{0,12}",
    ]
}

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (-1e6f64..1e6).prop_map(Value::from),
        arb_string().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((arb_string(), inner), 0..6)
                .prop_map(|members| Value::Object(members.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// An object made of known member names with arbitrary values.
fn arb_object() -> impl Strategy<Value = Value> {
    prop::collection::vec((prop::sample::select(FIELDS), arb_json()), 0..8).prop_map(|members| {
        Value::Object(members.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
    })
}

/// Envelopes: any mix of id, method, params, result and error, of any type.
fn arb_envelope() -> impl Strategy<Value = Value> {
    let id = prop_oneof![
        any::<i64>().prop_map(Value::from),
        arb_string().prop_map(Value::String),
        arb_json(),
    ];
    let method = prop_oneof![
        4 => prop::sample::select(METHODS).prop_map(|m| Value::String(m.to_owned())),
        1 => arb_string().prop_map(Value::String),
        1 => arb_json(),
    ];
    let params = prop_oneof![3 => arb_object(), 1 => arb_json()];
    (
        prop::option::of(id),
        prop::option::of(method),
        prop::option::of(params),
        prop::option::of(arb_json()),
        prop::option::of(arb_json()),
        prop::option::of(arb_object()),
    )
        .prop_map(|(id, method, params, result, error, extra)| {
            let mut object = match extra {
                Some(Value::Object(extra)) => extra,
                _ => Map::new(),
            };
            for (name, value) in [
                ("id", id),
                ("method", method),
                ("params", params),
                ("result", result),
                ("error", error),
            ] {
                if let Some(value) = value {
                    object.insert(name.to_owned(), value);
                }
            }
            Value::Object(object)
        })
}

/// What §1.4/§2 say one message on a fresh connection (no handshake yet) gets.
#[derive(Debug)]
enum Expect {
    Malformed,
    Close,
    Reply(String),
    /// `initialize`: its result, or a -32602 when the params do not decode.
    Initialize(String),
}

/// The contract, computed from a generic JSON value (an independent reading of §2.1).
fn expected(text: &str) -> Expect {
    let Ok(value) = serde_json::from_str::<Value>(text) else {
        return Expect::Malformed;
    };
    let Value::Object(object) = value else {
        return Expect::Malformed;
    };
    let method = match object.get("method") {
        None | Some(Value::Null) => None,
        Some(Value::String(m)) => Some(m.clone()),
        Some(_) => return Expect::Malformed,
    };
    match (method, object.get("id")) {
        (Some(method), Some(id)) => {
            let raw = id.to_string();
            let valid = id.is_string() || id.as_i64().is_some() && raw.parse::<i64>().is_ok();
            if !valid {
                return Expect::Malformed;
            }
            let params = match object.get("params") {
                None | Some(Value::Null) => "{}".to_owned(),
                Some(p) => p.to_string(),
            };
            if method == "initialize" {
                return Expect::Initialize(raw);
            }
            let error = match request_error(&method, &params) {
                Some(error) => error,
                None => RpcError::invalid_request(format!(
                    "client must call initialize before using {} methods",
                    if method.starts_with("fs/") { "filesystem" } else { "exec" }
                )),
            };
            Expect::Reply(error_text(&raw, &error))
        }
        (Some(_), None) => Expect::Close,
        (None, Some(_)) if object.contains_key("result") || object.contains_key("error") => {
            Expect::Close
        }
        (None, _) => Expect::Malformed,
    }
}

/// The -32601 or -32602 a request gets before the gate, if any.
fn request_error(method: &str, params: &str) -> Option<RpcError> {
    fn check<'a, P: serde::Deserialize<'a>>(params: &'a str) -> Option<RpcError> {
        decode_params::<P>(params).err()
    }
    match method {
        "process/start" => check::<process::StartParams>(params),
        "process/read" => check::<process::ReadParams>(params),
        "process/write" => check::<process::WriteParams>(params),
        "process/terminate" => check::<process::TerminateParams>(params),
        "fs/readFile" => check::<fs::ReadFileParams>(params),
        "fs/writeFile" => check::<fs::WriteFileParams>(params),
        "fs/createDirectory" => check::<fs::CreateDirectoryParams>(params),
        "fs/getMetadata" => check::<fs::GetMetadataParams>(params),
        "fs/readDirectory" => check::<fs::ReadDirectoryParams>(params),
        "fs/remove" => check::<fs::RemoveParams>(params),
        "fs/copy" => check::<fs::CopyParams>(params),
        other => Some(RpcError::method_not_found(other)),
    }
}

/// An outbound that keeps what is sent.
#[derive(Default)]
struct Capture {
    sent: Mutex<Vec<String>>,
    closed: Mutex<Option<CloseReason>>,
}

impl Outbound for Capture {
    fn send(&self, text: String) -> Result<(), Closed> {
        self.sent.lock().expect("capture lock").push(text);
        Ok(())
    }
    fn close(&self, reason: CloseReason) {
        *self.closed.lock().expect("capture lock") = Some(reason);
    }
}

fn server() -> &'static Arc<Server> {
    static SERVER: OnceLock<Arc<Server>> = OnceLock::new();
    SERVER.get_or_init(|| Server::new(Config { detach_ttl: Duration::ZERO, ..Config::default() }))
}

/// Sends `text` on a fresh stdio connection; returns the flow, what was sent, and whether
/// the connection was closed.
fn exchange(text: String) -> (Flow, Vec<String>, bool) {
    let capture = Arc::new(Capture::default());
    let conn = server().connect(capture.clone(), Transport::Stdio);
    let flow = conn.handle(Box::new(text));
    conn.drain(ANSWER_DEADLINE);
    let sent = std::mem::take(&mut *capture.sent.lock().expect("capture lock"));
    let closed = capture.closed.lock().expect("capture lock").is_some();
    conn.closed();
    (flow, sent, closed)
}

/// Checks one exchange against the contract.
fn check_exchange(text: &str) -> Result<(), TestCaseError> {
    let expect = expected(text);
    let (flow, sent, closed) = exchange(text.to_owned());
    match expect {
        Expect::Malformed => {
            prop_assert_eq!(flow, Flow::Continue);
            prop_assert_eq!(sent.len(), 1, "{:?}", sent);
            let reply: Value = serde_json::from_str(&sent[0]).expect("replies are JSON");
            prop_assert_eq!(reply["id"].as_i64(), Some(-1));
            prop_assert_eq!(reply["error"]["code"].as_i64(), Some(-32600));
            let message = reply["error"]["message"].as_str().unwrap_or_default();
            prop_assert!(message.starts_with(STDIO_PREFIX), "{}", message);
            prop_assert_eq!(reply.as_object().map(Map::len), Some(2));
            prop_assert_eq!(reply["error"].as_object().map(Map::len), Some(2));
        }
        Expect::Close => {
            prop_assert!(sent.is_empty(), "{:?}", sent);
            prop_assert!(flow == Flow::Close || closed);
        }
        Expect::Reply(reply) => {
            prop_assert_eq!(flow, Flow::Continue);
            prop_assert_eq!(sent, vec![reply]);
        }
        Expect::Initialize(raw_id) => {
            prop_assert_eq!(sent.len(), 1, "{:?}", sent);
            let reply: Value = serde_json::from_str(&sent[0]).expect("replies are JSON");
            prop_assert_eq!(reply["id"].to_string(), raw_id);
            let ok = reply["result"]["sessionId"].is_string();
            let bad_params = reply["error"]["code"].as_i64() == Some(-32602);
            // A resumeSessionId that names no session is -32600 (§3.2).
            let unknown = reply["error"]["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("unknown session id"));
            prop_assert!(ok || bad_params || unknown, "{}", sent[0]);
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn arbitrary_text_never_panics_and_gets_a_contract_answer(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let text = String::from_utf8_lossy(&bytes).into_owned();
        // The decoder alone never panics.
        let _ = decode(&text);
        let (flow, sent, closed) = exchange(text);
        // Whatever it is, at most one reply, and it is JSON with an id and exactly one of
        // result or error; or nothing and the connection closes.
        prop_assert!(sent.len() <= 1);
        if let Some(reply) = sent.first() {
            let reply: Value = serde_json::from_str(reply).expect("replies are JSON");
            prop_assert!(reply.get("id").is_some());
            prop_assert!(reply.get("result").is_some() != reply.get("error").is_some());
        } else {
            prop_assert!(flow == Flow::Close || closed);
        }
    }

    #[test]
    fn arbitrary_json_gets_exactly_the_contract_answer(value in arb_json()) {
        check_exchange(&value.to_string())?;
    }

    #[test]
    fn arbitrary_envelopes_get_exactly_the_contract_answer(value in arb_envelope()) {
        check_exchange(&value.to_string())?;
    }

    #[test]
    fn the_outline_reads_requests_as_the_decoders_do(
        value in arb_envelope(),
        pretty in any::<bool>(),
        large in any::<bool>(),
        edit in prop::option::of((any::<prop::sample::Index>(), prop::sample::select(&[
            b'"', b'\\', b'{', b'}', b'[', b']', b',', b':', b' ', b'0', b'-', b'e', b'u', b'\n',
        ][..]))),
    ) {
        let mut value = value;
        if large {
            // A file's base64 and a long padding member, as large params have.
            if let Some(Value::Object(params)) = value.get_mut("params") {
                params.insert("dataBase64".into(), Value::String("QUJD".repeat(1100)));
                params.insert("pad".into(), Value::String("x".repeat(5000)));
            }
        }
        let text = if pretty {
            serde_json::to_string_pretty(&value).expect("a Value serializes")
        } else {
            value.to_string()
        };
        let mut bytes = text.into_bytes();
        if let Some((at, byte)) = edit {
            let at = at.index(bytes.len());
            bytes[at] = byte;
        }
        // An edit inside a multi-byte character leaves no text to read.
        if let Ok(text) = String::from_utf8(bytes) {
            prop_assert_eq!(super::outline_tests::agrees(&text).map(drop), Ok(()));
        }
    }

    #[test]
    fn deep_nesting_is_malformed_not_a_stack_overflow(depth in 100usize..2000, object in any::<bool>()) {
        let (open, close) = if object { ("{\"a\":", "}") } else { ("[", "]") };
        let text = format!("{}1{}", open.repeat(depth), close.repeat(depth));
        let text = format!("{{\"id\":1,\"method\":\"process/read\",\"params\":{text}}}");
        // The envelope adds one level: 128 in all is still a message.
        let malformed = depth + 1 > super::envelope::MAX_NESTING;
        prop_assert_eq!(decode(&text).is_err(), malformed);
        // The generic oracle's own parser stops at 128 levels, so the answer is spelled out:
        // within the limit, process/read's decoder refuses the (array or object) params.
        let (flow, sent, _) = exchange(text.clone());
        prop_assert_eq!(flow, Flow::Continue);
        prop_assert_eq!(sent.len(), 1);
        if malformed {
            prop_assert!(sent[0].starts_with(&format!("{{\"id\":-1,\"error\":{{\"code\":-32600,\"message\":\"{STDIO_PREFIX}")), "{}", sent[0]);
        } else {
            let params = &text[text.find("\"params\":").map_or(0, |i| i + 9)..text.len() - 1];
            let error = request_error("process/read", params).expect("not a ReadParams");
            prop_assert_eq!(&sent[0], &error_text("1", &error));
        }
    }

    #[test]
    fn every_params_decoder_gives_a_value_or_a_positionless_32602(params in prop_oneof![arb_object(), arb_json()]) {
        let text = params.to_string();
        for method in METHODS.iter().filter(|m| **m != "initialize") {
            if let Some(error) = request_error(method, &text) {
                prop_assert_eq!(error.code, -32602, "{}: {}", method, error.message);
                let tail = error.message.rsplit(" at line ").next().unwrap_or_default();
                let positioned = tail.split(" column ").count() == 2
                    && tail.split(" column ").all(|n| n.parse::<u64>().is_ok());
                prop_assert!(!positioned, "{}: {}", method, error.message);
            }
        }
    }

    #[test]
    fn request_ids_are_echoed_with_their_type(id in prop_oneof![any::<i64>().prop_map(Value::from), arb_string().prop_map(Value::String)]) {
        let text = serde_json::json!({"id": id, "method": "nope"}).to_string();
        match decode(&text) {
            Ok(Message::Request { id: raw, .. }) => prop_assert_eq!(raw, id.to_string()),
            other => prop_assert!(false, "{:?}", other),
        }
        check_exchange(&text)?;
    }

    #[test]
    fn base64_round_trips_and_agrees_with_the_base64_crate(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        use base64::Engine as _;
        let reference = base64::engine::general_purpose::STANDARD.encode(&bytes);
        let mut encoded = Vec::new();
        b64::encode(&bytes, &mut encoded);
        prop_assert_eq!(&encoded, reference.as_bytes());
        let mut text = String::new();
        b64::encode_into(&bytes, &mut text);
        prop_assert_eq!(&text, &reference);
        let mut decoded = Vec::new();
        prop_assert!(b64::decode(reference.as_bytes(), &mut decoded).is_ok());
        prop_assert_eq!(decoded, bytes);
    }

    #[test]
    fn base64_decoding_arbitrary_text_agrees_with_the_base64_crate(text in prop_oneof![
        prop::collection::vec(any::<u8>(), 0..512),
        "[A-Za-z0-9+/=]{0,512}".prop_map(String::into_bytes),
    ]) {
        use base64::Engine as _;
        let reference = base64::engine::general_purpose::STANDARD.decode(&text);
        let mut decoded = Vec::new();
        let ours = b64::decode(&text, &mut decoded);
        prop_assert_eq!(ours.is_ok(), reference.is_ok(), "{:?} vs {:?}", ours, reference);
        if let (Err(ours), Err(theirs)) = (&ours, &reference) {
            prop_assert_eq!(ours.to_string(), theirs.to_string());
        }
        if let Ok(reference) = reference {
            prop_assert_eq!(decoded, reference);
        }
    }
}
