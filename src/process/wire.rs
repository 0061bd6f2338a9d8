//! The wire side of processes (PROTOCOL.md §4, §5): params and results of `process/*`, the
//! `Notify` sink notifications leave through, and the encoding of `process/output`,
//! `process/exited` and `process/closed`. Pure data and encoding: it spawns, locks and
//! sends nothing.

use std::collections::HashMap;
use std::fmt::Write as _;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use serde::{Deserialize, Deserializer, Serialize};

use super::envpolicy::EnvPolicy;
use super::report::ExitReport;
use super::v2::{ExecMetadata, ManagedNetwork, NetworkProxy, SandboxType, ShellSnapshot};
use crate::b64;
use crate::recycle;
use crate::uri::AbsolutePath;

/// Where a session's notifications go. Implemented by the session code.
pub trait Notify: Send + Sync {
    /// Sends one server notification — a complete JSON text such as
    /// `{"method":"process/output","params":{…}}` (never a "jsonrpc" member) — to the
    /// connection the session is attached to. It blocks while that connection's socket is full
    /// (the §5 backpressure that slows the child); it returns at once, dropping the message,
    /// while the session is detached. True when the message was handed to an attached
    /// connection's writer (output delivered that way is not spooled, issue 15).
    fn notify(&self, message: String) -> bool;
}

fn null_as_false<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    Ok(Option::<bool>::deserialize(d)?.unwrap_or(false))
}

fn base64_bytes<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    let text = String::deserialize(d)?;
    BASE64
        .decode(text.as_bytes())
        .map_err(|e| serde::de::Error::custom(format!("invalid base64: {e}")))
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StartParams {
    pub process_id: String,
    pub argv: Vec<String>,
    /// A `file:` URI or (0.130 clients) a native absolute path.
    pub cwd: AbsolutePath,
    pub env: HashMap<String, String>,
    pub tty: bool,
    #[serde(default, deserialize_with = "null_as_false")]
    pub pipe_stdin: bool,
    #[serde(default)]
    pub arg0: Option<String>,
    #[serde(default)]
    pub env_policy: Option<EnvPolicy>,
    // v2 (upstream 0.171): see v2.rs.
    #[serde(default)]
    pub metadata: Option<ExecMetadata>,
    /// The filesystem sandbox context (UPSTREAM-0.171.md §5), decoded by `crate::sandbox`.
    #[serde(default)]
    pub sandbox: Option<serde_json::Value>,
    /// Only enforced inside a sandbox; without one upstream runs the process as asked.
    #[serde(default)]
    pub enforce_managed_network: bool,
    #[serde(default)]
    pub managed_network: Option<ManagedNetwork>,
    #[serde(default)]
    pub network_proxy: Option<NetworkProxy>,
    #[serde(default)]
    pub shell_snapshot: Option<ShellSnapshot>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StartResponse {
    pub process_id: String,
    /// v2: what enforces the process's sandbox (`none` when it has none).
    pub sandbox_type: SandboxType,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReadParams {
    pub process_id: String,
    pub after_seq: Option<u64>,
    pub max_bytes: Option<u64>,
    pub wait_ms: Option<u64>,
}

#[derive(Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ChunkOut {
    pub seq: u64,
    pub stream: Stream,
    pub chunk: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReadResponse {
    pub chunks: Vec<ChunkOut>,
    pub next_seq: u64,
    pub exited: bool,
    pub exit_code: Option<i32>,
    /// Extension (§4.2): the name of the signal that killed the child; absent otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signal: Option<String>,
    pub closed: bool,
    /// Always null in v1.
    pub failure: Option<String>,
    /// v2: whether the process hit a sandbox denial the daemon could observe.
    pub sandbox_denied: bool,
    /// Extension (issue 15): present when output after `afterSeq` is gone (taken live as
    /// notifications while attached, or the spool is off, full or broken): every output chunk
    /// with `afterSeq < seq < droppedBeforeSeq` is gone; the returned chunks follow.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dropped_before_seq: Option<u64>,
    /// Extension (issue 18): why the process ended and what it used, once it exited.
    #[serde(flatten)]
    pub report: Option<ExitReport>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WriteParams {
    pub process_id: String,
    #[serde(deserialize_with = "base64_bytes")]
    pub chunk: Vec<u8>,
    /// v2: upstream requires it; optional here so v1 clients keep working.
    #[serde(default)]
    pub write_id: Option<String>,
}

#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum WriteStatus {
    Accepted,
    UnknownProcess,
    Starting,
    StdinClosed,
}

#[derive(Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct WriteResponse {
    pub status: WriteStatus,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TerminateParams {
    pub process_id: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TerminateResponse {
    pub running: bool,
}

#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    Stdout,
    Stderr,
    Pty,
}

#[derive(Serialize)]
struct Notification<P> {
    method: &'static str,
    params: P,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct ExitedParams<'a> {
    pub(super) process_id: &'a str,
    pub(super) seq: u64,
    pub(super) exit_code: i32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) signal: Option<&'a str>,
    /// v2: whether the process hit a sandbox denial the daemon could observe.
    pub(super) sandbox_denied: bool,
    /// Extension (issue 18): why the process ended and what it used.
    #[serde(flatten)]
    pub(super) report: &'a ExitReport,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct ClosedParams<'a> {
    pub(super) process_id: &'a str,
    pub(super) seq: u64,
}

pub(super) fn encode<P: Serialize>(method: &'static str, params: P) -> String {
    serde_json::to_string(&Notification { method, params })
        .expect("notification params are plain strings and integers")
}

/// A `process/output` notification, written by hand rather than through serde: the chunk is
/// base64, which needs no JSON escaping, and serde_json would scan and copy its ~87 KiB once
/// more per chunk (the hottest loop of streaming). `id_json` is the process id as a JSON
/// string literal. Same member order as the derived encoding of the other notifications.
pub(super) fn output_message(id_json: &str, seq: u64, stream: Stream, bytes: &[u8]) -> String {
    let stream = match stream {
        Stream::Stdout => "stdout",
        Stream::Stderr => "stderr",
        Stream::Pty => "pty",
    };
    const PREFIX: &str = r#"{"method":"process/output","params":{"processId":"#;
    // Room for the fixed text, a u64 and the padded base64 of `bytes`.
    let capacity = PREFIX.len() + id_json.len() + 64 + bytes.len().div_ceil(3) * 4;
    let mut message = recycle::string(capacity);
    message.push_str(PREFIX);
    message.push_str(id_json);
    // Writing into a String cannot fail.
    let _ = write!(message, r#","seq":{seq},"stream":"{stream}","chunk":""#);
    b64::encode_into(bytes, &mut message);
    message.push_str("\"}}");
    message
}
