//! The protocol-v2 (upstream codex 0.171) additions to the `process/*` wire shapes, kept
//! together: `process/start`'s `metadata`, `enforceManagedNetwork`, `managedNetwork`,
//! `networkProxy` and `shellSnapshot`, the `sandboxType` result, `process/write`'s `writeId`
//! bookkeeping, and `process/signal`'s params. It owns no processes and spawns nothing;
//! `mod.rs` calls it. The `sandbox` context is decoded and enforced by `crate::sandbox`; a
//! start that asks for a managed network proxy is refused (the `networkProxyLaunch`
//! capability is not advertised).

use std::collections::{HashSet, VecDeque};
use std::fmt;

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Serialize};

use crate::error::RpcError;

/// `writeId`s remembered per process for de-duplication; the oldest is forgotten first.
pub const MAX_WRITE_IDS: usize = 4096;

/// `metadata` of `process/start`: attribution for logs, never used for decisions.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExecMetadata {
    #[serde(default, deserialize_with = "thread_id")]
    pub thread_id: Option<String>,
    #[serde(default)]
    pub tool_call_id: Option<String>,
}

/// Upstream's `threadId` is a UUID; its decode error is the uuid crate's text.
fn thread_id<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let Some(text) = Option::<String>::deserialize(d)? else {
        return Ok(None);
    };
    match uuid::Uuid::parse_str(&text) {
        Ok(_) => Ok(Some(text)),
        Err(e) => Err(de::Error::custom(uuid_error(&text, e))),
    }
}

/// The uuid crate's error in the wording of the version upstream uses: a bad character is
/// named with its 1-based position, a bad length with the simple format's length.
fn uuid_error(text: &str, e: uuid::Error) -> String {
    let body = if text.starts_with("urn:uuid:") { "urn:uuid:".len() } else { 0 };
    let bad =
        text.chars().enumerate().skip(body).find(|(_, c)| !c.is_ascii_hexdigit() && *c != '-');
    if let Some((index, c)) = bad {
        return format!(
            "invalid character: expected an optional prefix of `urn:uuid:` followed by [0-9a-fA-F-], found `{c}` at {}",
            index + 1
        );
    }
    if !text.contains('-') {
        return format!(
            "invalid length: expected length 32 for simple format, found {}",
            text.len()
        );
    }
    e.to_string()
}

/// An object member whose contents exec-server does not use yet: any JSON object is
/// accepted (upstream decodes a struct named `name`; other types get its wording).
macro_rules! opaque_object {
    ($(#[$doc:meta])* $ty:ident, $name:literal) => {
        $(#[$doc])*
        #[derive(Debug)]
        pub struct $ty;

        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct ObjectVisitor;
                impl<'de> Visitor<'de> for ObjectVisitor {
                    type Value = $ty;
                    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                        f.write_str($name)
                    }
                    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<$ty, A::Error> {
                        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                        Ok($ty)
                    }
                }
                d.deserialize_map(ObjectVisitor)
            }
        }
    };
}

opaque_object!(
    /// `managedNetwork`: how an executor-side sandbox enforces managed networking. Only
    /// meaningful inside a sandbox, which is refused for now.
    ManagedNetwork,
    "struct ManagedNetworkSandboxContext"
);
opaque_object!(
    /// `networkProxy`: start a managed network proxy for the process. Refused: the
    /// `networkProxyLaunch` capability is not advertised.
    NetworkProxy,
    "struct RemoteNetworkProxyLaunchConfig"
);
opaque_object!(
    /// `shellSnapshot`: restore a cached shell state. Ignored: the `shellSnapshotV2`
    /// capability is not advertised, so a conforming client sends none, and a command run
    /// without the snapshot only lacks the user's profile state.
    ShellSnapshot,
    "struct ShellSnapshotRequest"
);

/// `sandboxType` of the `process/start` result.
#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum SandboxType {
    /// The process runs without a platform sandbox.
    None,
    /// Confined by Landlock, seccomp and (where needed) a mount namespace; upstream's name
    /// for its bubblewrap + seccomp sandbox, so clients that branch on it stay correct.
    LinuxSeccomp,
}

/// The v2 checks of `process/start`, before anything is spawned.
pub fn check_start(process_id: &str, network_proxy: Option<&NetworkProxy>) -> Result<(), RpcError> {
    if network_proxy.is_some() {
        return Err(RpcError::invalid_request(format!(
            "process {process_id} asks for a managed network proxy, which this executor does not support; it was not started"
        )));
    }
    Ok(())
}

/// `process/write`'s `writeId` before the process is looked up: upstream refuses an empty
/// one. A missing one (v1 clients) is accepted and never de-duplicated.
pub fn check_write_id(write_id: Option<&str>) -> Result<(), RpcError> {
    match write_id {
        Some("") => Err(RpcError::invalid_params("writeId must not be empty")),
        _ => Ok(()),
    }
}

/// The `writeId`s a process has accepted, so a retried write is acknowledged without
/// being written twice (upstream: a repeated id answers `accepted` and writes nothing).
#[derive(Debug, Default)]
pub struct WriteIds {
    seen: HashSet<String>,
    order: VecDeque<String>,
}

impl WriteIds {
    pub fn contains(&self, id: &str) -> bool {
        self.seen.contains(id)
    }

    /// Records `id`; false when it was already recorded.
    pub fn insert(&mut self, id: &str) -> bool {
        if self.seen.contains(id) {
            return false;
        }
        if self.order.len() >= MAX_WRITE_IDS {
            if let Some(oldest) = self.order.pop_front() {
                self.seen.remove(&oldest);
            }
        }
        self.seen.insert(id.to_owned());
        self.order.push_back(id.to_owned());
        true
    }
}

/// `process/signal` params.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SignalParams {
    pub process_id: String,
    pub signal: Signal,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    /// SIGINT to the process group.
    Interrupt,
}

impl<'de> Deserialize<'de> for Signal {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        crate::wire::unit_variant(d, &["interrupt"]).map(|_| Signal::Interrupt)
    }
}

/// `process/signal` result: always `{}`, also for unknown or finished processes.
#[derive(Debug, Serialize)]
pub struct SignalResponse {}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Start {
        #[serde(default)]
        metadata: Option<ExecMetadata>,
        #[serde(default)]
        managed_network: Option<ManagedNetwork>,
    }

    fn decode(json: &str) -> Result<Start, String> {
        serde_json::from_str(json).map_err(|e| {
            let text = e.to_string();
            let position = format!(" at line {} column {}", e.line(), e.column());
            text.strip_suffix(&position).unwrap_or(&text).to_owned()
        })
    }

    #[test]
    fn metadata_decodes_like_upstream() {
        assert_eq!(
            decode(r#"{"metadata":{"threadId":"t"}}"#).unwrap_err(),
            "invalid character: expected an optional prefix of `urn:uuid:` followed by [0-9a-fA-F-], found `t` at 1"
        );
        let ok = decode(
            r#"{"metadata":{"threadId":"3f2b8c1e-0000-4000-8000-000000000001","toolCallId":"c"}}"#,
        )
        .unwrap();
        assert_eq!(ok.metadata.unwrap().tool_call_id.as_deref(), Some("c"));
        for (id, message) in [
            ("urn:uuid:zz", "invalid character: expected an optional prefix of `urn:uuid:` followed by [0-9a-fA-F-], found `z` at 10"),
            ("3f2b8c1e-0000-4000-8000-000000000001x", "invalid character: expected an optional prefix of `urn:uuid:` followed by [0-9a-fA-F-], found `x` at 37"),
            ("1234", "invalid length: expected length 32 for simple format, found 4"),
            ("", "invalid length: expected length 32 for simple format, found 0"),
            ("3f2b8c1e-00004-000-8000-000000000001", "invalid group length in group 1: expected 4, found 5"),
            ("3f2b8c1e-0000-4000-8000-00000000000", "invalid group length in group 4: expected 12, found 11"),
        ] {
            let json = format!(r#"{{"metadata":{{"threadId":"{id}"}}}}"#);
            assert_eq!(decode(&json).unwrap_err(), message, "{id}");
        }
        assert!(decode(r#"{"metadata":{"threadId":"3F2B8C1E000040008000000000000001"}}"#).is_ok());
        assert!(decode(r#"{"metadata":{}}"#).is_ok());
        assert!(decode(r#"{"metadata":{"threadId":null,"toolCallId":null}}"#).is_ok());
        assert_eq!(
            decode(r#"{"metadata":{"toolCallId":5}}"#).unwrap_err(),
            "invalid type: integer `5`, expected a string"
        );
    }

    #[test]
    fn managed_network_is_an_object() {
        assert_eq!(
            decode(r#"{"managedNetwork":5}"#).unwrap_err(),
            "invalid type: integer `5`, expected struct ManagedNetworkSandboxContext"
        );
        assert!(decode(r#"{"managedNetwork":{"x":[1]}}"#).unwrap().managed_network.is_some());
    }

    #[test]
    fn a_network_proxy_is_refused() {
        assert_eq!(check_start("p", Some(&NetworkProxy)).unwrap_err().code, -32600);
        assert_eq!(check_start("p", None), Ok(()));
    }

    #[test]
    fn write_ids_are_remembered_up_to_the_bound() {
        let mut ids = WriteIds::default();
        assert!(ids.insert("a"));
        assert!(!ids.insert("a"));
        for n in 0..MAX_WRITE_IDS {
            ids.insert(&n.to_string());
        }
        assert!(ids.insert("a"), "the oldest id is forgotten first");
        assert_eq!(check_write_id(Some("")).unwrap_err().message, "writeId must not be empty");
        assert!(check_write_id(None).is_ok());
    }

    #[test]
    fn signals_decode_like_upstream() {
        let err = serde_json::from_str::<SignalParams>(r#"{"processId":"p","signal":"kill"}"#)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("unknown variant `kill`, expected `interrupt`"), "{err}");
        let err = serde_json::from_str::<SignalParams>(r#"{"processId":"p","signal":null}"#)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("invalid type: null, expected string or map"), "{err}");
    }
}
