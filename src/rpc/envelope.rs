//! The JSON-RPC envelope (PROTOCOL.md §1.4, §2.1, §2.2): decoding a message's shape without
//! copying its params, the nesting limit, the ordering keys a request names (§1.5), and
//! encoding results and errors into response text. Pure functions over text: no locks,
//! sessions or handlers.

use std::borrow::Cow;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::outline::Field;
use crate::error::RpcError;

pub use super::outline::MAX_NESTING;

/// An inbound message's text, owned without copying whatever the transport produced.
pub type Text = Box<dyn AsStr>;

/// Text a transport hands over: a `String`, or a websocket's shared bytes.
pub trait AsStr: Send + 'static {
    fn as_str(&self) -> &str;
}

impl<T: AsRef<str> + Send + 'static> AsStr for T {
    fn as_str(&self) -> &str {
        self.as_ref()
    }
}

/// What two requests must not do at once (§1.5): name the same process or the same path.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) enum Key {
    Process(String),
    Path(PathBuf),
    /// An `fs/open` handle id (v2): its blocks and its close run in arrival order.
    Handle(String),
}

/// The message shapes of §2.1, borrowing from the frame.
#[derive(Debug)]
pub(super) enum Message<'a> {
    Request { method: Cow<'a, str>, id: &'a str, params: Option<&'a RawValue> },
    Notification { method: Cow<'a, str> },
    Response,
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(default, borrow, deserialize_with = "present")]
    id: Option<&'a RawValue>,
    #[serde(default, borrow)]
    method: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    params: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    result: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    error: Option<&'a RawValue>,
}

/// Keeps a member that is present but `null` distinct from an absent one.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

/// Why a message is malformed (§1.4); the text follows the connection's prefix.
#[derive(Debug)]
pub(super) struct Malformed(pub(super) String);

impl std::fmt::Display for Malformed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Decodes one message's envelope (§2.1).
pub(super) fn decode(text: &str) -> Result<Message<'_>, Malformed> {
    let trimmed = text.trim_start();
    if trimmed.starts_with('[') {
        return Err(Malformed("batch requests are not supported".into()));
    }
    if nesting_exceeds(text, MAX_NESTING) {
        return Err(Malformed(format!("nesting deeper than {MAX_NESTING} levels")));
    }
    if !trimmed.starts_with('{') {
        // Let the decoder describe what it found instead of an object.
        let e = serde_json::from_str::<serde::de::IgnoredAny>(text).err();
        return Err(Malformed(
            e.map_or_else(|| "expected a JSON object".into(), |e| e.to_string()),
        ));
    }
    let envelope: Envelope = serde_json::from_str(text).map_err(|e| Malformed(e.to_string()))?;
    let params = envelope.params.filter(|p| p.get() != "null");
    match (envelope.method, envelope.id) {
        (Some(method), Some(id)) => {
            let raw = id.get();
            check_id(raw)?;
            Ok(Message::Request { method, id: raw, params })
        }
        (Some(method), None) => Ok(Message::Notification { method }),
        (None, Some(_)) if envelope.result.is_some() || envelope.error.is_some() => {
            Ok(Message::Response)
        }
        (None, _) => Err(Malformed("message has no `method` and is not a response".into())),
    }
}

/// A request id must be a string or a 64-bit integer (§2.1); `raw` is its JSON text.
pub(super) fn check_id(raw: &str) -> Result<(), Malformed> {
    if raw.starts_with('"') || raw.parse::<i64>().is_ok() {
        Ok(())
    } else {
        Err(Malformed(format!("request id must be a string or a 64-bit integer, got {raw}")))
    }
}

/// True when `json` nests arrays/objects deeper than `max` (strings are skipped).
///
/// A string body is skipped with a `memchr` search for its closing quote (a quote is
/// escaped exactly when an odd run of backslashes precedes it): the scan covers the whole
/// message, and a file's base64 makes up nearly all of a large one.
fn nesting_exceeds(json: &str, max: usize) -> bool {
    let bytes = json.as_bytes();
    let mut depth = 0usize;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => match closing_quote(json, i + 1) {
                Some(end) => i = end,
                None => return false,
            },
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    false
}

/// The index of the unescaped quote that ends a string whose body starts at `from`.
fn closing_quote(json: &str, from: usize) -> Option<usize> {
    let bytes = json.as_bytes();
    let mut at = from;
    loop {
        // The memchr crate's vector search: core's `str::find` goes a word at a time,
        // and this scan covers a file's base64 twice (nesting check, ordering keys).
        let quote = at + memchr::memchr(b'"', bytes.get(at..)?)?;
        let backslashes = bytes[from..quote].iter().rev().take_while(|&&b| b == b'\\').count();
        if backslashes % 2 == 0 {
            return Some(quote);
        }
        at = quote + 1;
    }
}

/// Params at least this long have their ordering keys picked out by `only_members`
/// before decoding; below it, one direct decode is cheaper than the extra pass.
const KEYS_SCAN_MIN_BYTES: usize = 4096;
/// The params members `keys` reads (the fields of its `Named`).
const KEY_MEMBERS: [&str; 6] =
    ["processId", "path", "sourcePath", "destinationPath", "waitMs", "handleId"];

/// The ordering keys of a request (§1.5), read from its raw params, and whether it asks
/// to long-poll (`waitMs` above zero). `members`: the params' members when the outline
/// found them (outline.rs), so large params are not walked again.
pub(super) fn keys(params: &str, members: Option<&[Field]>) -> (Vec<Key>, bool) {
    if let Some(read) = members.and_then(|members| keys_of_members(params, members)) {
        return read;
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Named {
        process_id: Option<String>,
        path: Option<String>,
        source_path: Option<String>,
        destination_path: Option<String>,
        wait_ms: Option<u64>,
        handle_id: Option<String>,
    }
    // In large params only the named members are decoded: a file's base64 is skipped with
    // a `memchr` search, not walked by the decoder. Params of any other shape have no keys.
    let wanted = (params.len() >= KEYS_SCAN_MIN_BYTES)
        .then(|| match members {
            Some(members) => Some(only_members(params, members, &KEY_MEMBERS)),
            None => fields(params).map(|found| only_members(params, &found, &KEY_MEMBERS)),
        })
        .flatten();
    let Ok(named) = serde_json::from_str::<Named>(wanted.as_deref().unwrap_or(params)) else {
        return (Vec::new(), false);
    };
    let waits = named.wait_ms.is_some_and(|ms| ms > 0);
    let mut keys = Vec::new();
    if let Some(id) = named.process_id {
        keys.push(Key::Process(id));
    }
    if let Some(id) = named.handle_id {
        keys.push(Key::Handle(id));
    }
    for path in [named.path, named.source_path, named.destination_path].into_iter().flatten() {
        if let Some(path) = crate::uri::key_path(&path) {
            keys.push(Key::Path(path));
        }
    }
    (keys, waits)
}

/// `keys` read from the outline's members without a decoder, when every key member is
/// null, a string free of escapes, or (`waitMs`) a plain unsigned integer, and none comes
/// twice; None for anything else, which the decoder reads (and may refuse) as before.
fn keys_of_members(params: &str, members: &[Field]) -> Option<(Vec<Key>, bool)> {
    let mut seen = [false; KEY_MEMBERS.len()];
    let mut found: [Option<&str>; KEY_MEMBERS.len()] = [None; KEY_MEMBERS.len()];
    let mut waits = false;
    for m in members {
        let Some(at) = KEY_MEMBERS.iter().position(|k| *k == &params[m.name.clone()]) else {
            continue;
        };
        if std::mem::replace(&mut seen[at], true) {
            return None;
        }
        let value = &params[m.value.clone()];
        if value == "null" {
            continue;
        }
        if KEY_MEMBERS[at] == "waitMs" {
            // A fraction, exponent or sign fails to parse and is the decoder's to judge.
            waits = value.parse::<u64>().ok()? > 0;
        } else if m.plain_string {
            found[at] = Some(&value[1..value.len() - 1]);
        } else {
            return None;
        }
    }
    let mut keys = Vec::new();
    let [process, path, source, destination, _, handle] = found;
    if let Some(id) = process {
        keys.push(Key::Process(id.to_string()));
    }
    if let Some(id) = handle {
        keys.push(Key::Handle(id.to_string()));
    }
    for path in [path, source, destination].into_iter().flatten() {
        if let Some(path) = crate::uri::key_path(path) {
            keys.push(Key::Path(path));
        }
    }
    Some((keys, waits))
}

/// One member of a JSON object: where it starts (its name's opening quote), its name (free
/// of escapes) and where its value starts.
struct Member<'a> {
    start: usize,
    name: &'a str,
    value: usize,
}

/// A walk over the members of a JSON object in valid JSON text, for the scans below. The
/// caller finds each value's end and hands it back with `resume`.
struct ObjectWalk<'a> {
    json: &'a str,
    at: usize,
}

impl<'a> ObjectWalk<'a> {
    /// None when `json` is not an object.
    fn new(json: &'a str) -> Option<ObjectWalk<'a>> {
        let at = skip_whitespace(json.as_bytes(), 0);
        (json.as_bytes().get(at) == Some(&b'{')).then_some(ObjectWalk { json, at: at + 1 })
    }

    /// The next member, `Ok(None)` at the object's end, `Err(())` when a member's name has
    /// an escape (and so may be any name) or the text is not what valid JSON would be.
    fn next_member(&mut self) -> Result<Option<Member<'a>>, ()> {
        let (json, bytes) = (self.json, self.json.as_bytes());
        let mut at = skip_whitespace(bytes, self.at);
        match bytes.get(at).ok_or(())? {
            b'}' => return Ok(None),
            b',' => at = skip_whitespace(bytes, at + 1),
            _ => {}
        }
        if bytes.get(at) != Some(&b'"') {
            return Err(());
        }
        let name_end = closing_quote(json, at + 1).ok_or(())?;
        let name = &json[at + 1..name_end];
        if name.contains('\\') {
            return Err(());
        }
        let colon = skip_whitespace(bytes, name_end + 1);
        if bytes.get(colon) != Some(&b':') {
            return Err(());
        }
        Ok(Some(Member { start: at, name, value: skip_whitespace(bytes, colon + 1) }))
    }

    /// Goes on after the value that ends at `end`.
    fn resume(&mut self, end: usize) {
        self.at = end;
    }
}

/// The members of the JSON object `json` (valid JSON, as every message's is once its
/// envelope has decoded) as the outline records them (outline.rs). None when it is not an
/// object, or when a member's name has an escape (and so may be any name).
fn fields(json: &str) -> Option<Vec<Field>> {
    let bytes = json.as_bytes();
    let mut fields = Vec::new();
    let mut walk = ObjectWalk::new(json)?;
    while let Some(member) = walk.next_member().ok()? {
        let end = value_end(json, member.value)?;
        walk.resume(end);
        let plain_string = bytes[member.value] == b'"'
            && memchr::memchr(b'\\', &bytes[member.value + 1..end - 1]).is_none();
        let name = member.start + 1..member.start + 1 + member.name.len();
        fields.push(Field { start: member.start, name, value: member.value..end, plain_string });
    }
    Some(fields)
}

/// The members of the object `json` named in `names` (`fields` of it), as an object of
/// their own that a decoder ignoring other members reads the same way (duplicates stay
/// duplicates).
fn only_members(json: &str, members: &[Field], names: &[&str]) -> String {
    let mut out = String::from("{");
    for m in members.iter().filter(|m| names.contains(&&json[m.name.clone()])) {
        if out.len() > 1 {
            out.push(',');
        }
        out.push_str(&json[m.start..m.value.end]);
    }
    out.push('}');
    out
}

/// `json` (an object, valid JSON) with the body of every string value of its member `name`
/// emptied, and the last such body: a large string member (a file's base64) is then decoded
/// from the text the envelope's decode has already checked, instead of walked once more by
/// the params decoder, which reads the emptied text the same way (a string stays a string,
/// duplicates stay duplicates). The body is the string itself only without escapes, so None,
/// to decode `json` whole, when `json` is small or not an object, a member's name has an
/// escape (and so may be `name`), or a value of `name` is not a string free of escapes.
/// `members`: the object's members when the outline found them, so the text is not
/// walked again.
pub(super) fn lift_string_member<'a>(
    json: &'a str,
    name: &str,
    members: Option<&[Field]>,
) -> Option<(String, Option<&'a str>)> {
    if json.len() < KEYS_SCAN_MIN_BYTES {
        return None;
    }
    let found;
    let members = match members {
        Some(members) => members,
        None => {
            found = fields(json)?;
            &found
        }
    };
    let mut out = String::new();
    // `json[copied..]` is still to be copied into `out`.
    let mut copied = 0;
    let mut lifted = None;
    for m in members.iter().filter(|m| &json[m.name.clone()] == name) {
        if !m.plain_string {
            return None;
        }
        let body = m.value.start + 1..m.value.end - 1;
        out.push_str(&json[copied..body.start]);
        copied = body.end;
        lifted = Some(&json[body]);
    }
    out.push_str(&json[copied..]);
    Some((out, lifted))
}

fn skip_whitespace(bytes: &[u8], mut at: usize) -> usize {
    while matches!(bytes.get(at), Some(b' ' | b'\t' | b'\n' | b'\r')) {
        at += 1;
    }
    at
}

/// The end of the valid JSON value starting at `start`.
fn value_end(json: &str, start: usize) -> Option<usize> {
    let bytes = json.as_bytes();
    match bytes.get(start)? {
        b'"' => closing_quote(json, start + 1).map(|quote| quote + 1),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut at = start;
            loop {
                match bytes.get(at)? {
                    b'"' => at = closing_quote(json, at + 1)?,
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(at + 1);
                        }
                    }
                    _ => {}
                }
                at += 1;
            }
        }
        // A number or a literal: it runs to the next delimiter.
        _ => Some(
            bytes[start..]
                .iter()
                .position(|b| matches!(b, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r'))
                .map_or(bytes.len(), |n| start + n),
        ),
    }
}

/// Decodes typed params; the error is the decoder's text without its position (§2.2).
pub(super) fn decode_params<'a, P: Deserialize<'a>>(params: &'a str) -> Result<P, RpcError> {
    serde_json::from_str(params).map_err(|e| {
        let text = e.to_string();
        let position = format!(" at line {} column {}", e.line(), e.column());
        RpcError::invalid_params(text.strip_suffix(&position).unwrap_or(&text))
    })
}

/// Serializes a handler's result straight into its response message.
pub(super) fn encode<R: Serialize>(
    id: &str,
    result: Result<R, RpcError>,
) -> Result<String, RpcError> {
    let value = result?;
    // Room for most results (a metadata result is ~140 bytes): each doubling of the buffer
    // is a realloc and a copy, the largest cost of encoding a small result.
    let mut text = Vec::with_capacity(256);
    text.extend_from_slice(b"{\"id\":");
    text.extend_from_slice(id.as_bytes());
    text.extend_from_slice(b",\"result\":");
    serde_json::to_writer(&mut text, &value).map_err(|e| RpcError::internal(e.to_string()))?;
    text.push(b'}');
    // serde_json writes UTF-8 and the id is a slice of a `str`.
    String::from_utf8(text).map_err(|e| RpcError::internal(e.to_string()))
}

pub(super) fn error_text(id: &str, error: &RpcError) -> String {
    let message = serde_json::to_string(&error.message).unwrap_or_else(|_| "\"\"".into());
    format!("{{\"id\":{id},\"error\":{{\"code\":{},\"message\":{message}}}}}", error.code)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(text: &str) -> (String, String, Option<String>) {
        match decode(text).expect("well-formed") {
            Message::Request { method, id, params } => {
                (method.into_owned(), id.to_string(), params.map(|p| p.get().to_string()))
            }
            other => panic!("not a request: {other:?}"),
        }
    }

    #[test]
    fn ids_keep_their_json_type() {
        assert_eq!(request(r#"{"id":0,"method":"m"}"#).1, "0");
        assert_eq!(request(r#"{"id":-7,"method":"m"}"#).1, "-7");
        assert_eq!(request(r#"{"id":9223372036854775807,"method":"m"}"#).1, "9223372036854775807");
        assert_eq!(request(r#"{"id":"x","method":"m"}"#).1, "\"x\"");
    }

    #[test]
    fn other_ids_are_malformed() {
        for text in [
            r#"{"id":1.5,"method":"m"}"#,
            r#"{"id":null,"method":"m"}"#,
            r#"{"id":9223372036854775808,"method":"m"}"#,
            r#"{"id":[1],"method":"m"}"#,
            r#"{"id":{},"method":"m"}"#,
        ] {
            assert!(decode(text).is_err(), "{text}");
        }
    }

    #[test]
    fn shapes() {
        assert!(matches!(decode(r#"{"method":"initialized"}"#), Ok(Message::Notification { .. })));
        assert!(matches!(decode(r#"{"id":1,"result":{}}"#), Ok(Message::Response)));
        assert!(matches!(decode(r#"{"id":1,"error":{"code":1}}"#), Ok(Message::Response)));
        assert!(decode(r#"{"id":1}"#).is_err());
        assert!(decode("[1]").is_err());
        assert!(decode("5").is_err());
        assert!(decode("not-json").is_err());
        assert!(decode(r#"{"id":1,"method":5}"#).is_err());
        let (method, _, params) = request(r#"{"jsonrpc":"2.0","id":1,"method":"m","params":null}"#);
        assert_eq!((method.as_str(), params), ("m", None));
        let (_, _, params) = request(r#"{"id":1,"method":"m","params":{"a":[1]},"trace":{}}"#);
        assert_eq!(params.as_deref(), Some(r#"{"a":[1]}"#));
    }

    #[test]
    fn nesting_limit() {
        let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        assert!(!nesting_exceeds(&deep(128), 128));
        assert!(nesting_exceeds(&deep(129), 128));
        assert!(!nesting_exceeds(r#"{"a":"[[[[\"[[["}"#, 2));
        assert!(!nesting_exceeds(r#"{"a":"\\\\"}"#, 1));
        assert!(nesting_exceeds(r#"{"a":"\\\\",["#, 1));
        assert!(!nesting_exceeds(r#"{"a":"\\\"[[["#, 1));
        assert!(nesting_exceeds(r#"{"a":"x\\"}[[]]"#, 1));
        let text = format!(r#"{{"id":1,"method":"m","params":{}}}"#, deep(100_000));
        assert!(decode(&text).is_err());
    }

    #[test]
    fn keys_name_processes_and_normalized_paths() {
        assert_eq!(
            keys(r#"{"processId":"p1","chunk":""}"#, None).0,
            vec![Key::Process("p1".into())]
        );
        assert_eq!(
            keys(r#"{"sourcePath":"/a/./b/../c","destinationPath":"/d"}"#, None).0,
            vec![Key::Path("/a/c".into()), Key::Path("/d".into())]
        );
        assert_eq!(keys(r#"{"path":"relative"}"#, None).0, vec![]);
        assert_eq!(keys("[1,2]", None).0, vec![]);
        assert!(keys(r#"{"processId":"p","waitMs":5000}"#, None).1);
        assert!(!keys(r#"{"processId":"p","waitMs":0}"#, None).1);
        assert!(!keys(r#"{"processId":"p","waitMs":null}"#, None).1);
    }

    #[test]
    fn keys_read_only_the_named_members_as_a_full_decode_would() {
        let full = |params: &str| -> Option<Vec<(String, serde_json::Value)>> {
            let value: serde_json::Map<String, serde_json::Value> =
                serde_json::from_str(params).ok()?;
            Some(value.into_iter().filter(|(k, _)| KEY_MEMBERS.contains(&k.as_str())).collect())
        };
        for params in [
            r#"{}"#,
            r#" { "path" : "/a" , "dataBase64" : "QUJD" } "#,
            r#"{"dataBase64":"x\"}{[\\","path":"/b","n":{"path":"/no","a":[1,"]"]}}"#,
            r#"{"processId":"p","waitMs":12,"x":-1.5e3,"y":true,"z":null,"w":[[],{}]}"#,
            "{\n\t\"sourcePath\":\"/s\",\r\"destinationPath\":\"/d\"}",
            r#"{"path":"/a","path":"/b"}"#,
        ] {
            let found = fields(params).expect("an object with plain names");
            let wanted = only_members(params, &found, &KEY_MEMBERS);
            assert_eq!(
                serde_json::from_str::<serde_json::Value>(&wanted).ok(),
                full(params).map(|m| serde_json::Value::Object(m.into_iter().collect())),
                "{params}"
            );
        }
        let only = |json: &str, names: &[&str]| fields(json).map(|f| only_members(json, &f, names));
        assert_eq!(only("[1]", &["path"]), None);
        assert_eq!(only(r#"{"p\u0061th":"/x"}"#, &["path"]), None);
        // Escaped names fall back to the full decode, which reads them.
        assert_eq!(keys(r#"{"p\u0061th":"/x"}"#, None).0, vec![Key::Path("/x".into())]);
        // A duplicate is still a decode error, so no keys.
        assert_eq!(keys(r#"{"path":"/a","path":"/b"}"#, None).0, vec![]);
        let large = format!(r#"{{"data":"{}\"","path":"/a/../b","waitMs":1}}"#, "x".repeat(5000));
        assert_eq!(keys(&large, None), (vec![Key::Path("/b".into())], true));
    }

    #[test]
    fn error_text_escapes_the_message() {
        let e = RpcError::invalid_request("a \"quoted\" word");
        assert_eq!(
            error_text("\"x\"", &e),
            r#"{"id":"x","error":{"code":-32600,"message":"a \"quoted\" word"}}"#
        );
    }
}
