//! The one dispatch `match` (PROTOCOL.md §2.2, §3): method name to handler, in the order
//! decode params, pass the handshake gate (§3.4), run the handler, encode its result; and
//! `initialize`, which binds the connection to a session. Handlers are plain typed functions
//! of process/ and fs/; this file holds no method's logic of its own.

use std::borrow::Cow;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::connection::{Connection, Request};
use super::envelope::{decode_params, encode, lift_string_member};
use super::outline::Field;
use super::session::Session;
use crate::envconfig;
use crate::environment::{self, EnvironmentInfo};
use crate::error::RpcError;
use crate::fs::{self, canonicalize, handles, walk, watch};
use crate::process::StartParams;

/// The method families behind the handshake gate (§3.4).
#[derive(Clone, Copy)]
enum Family {
    Exec,
    Filesystem,
    /// `http/request` has its own gate family; upstream 0.171 names it "http".
    Http,
    EnvironmentInfo,
    EnvironmentStatus,
    EnvironmentConfig,
}

impl Family {
    pub(super) fn name(self) -> &'static str {
        match self {
            Family::Exec => "exec",
            Family::Filesystem => "filesystem",
            Family::Http => "http",
            Family::EnvironmentInfo => "environment info",
            Family::EnvironmentStatus => "environment status",
            Family::EnvironmentConfig => "environment config",
        }
    }
}

impl Connection {
    /// The one dispatch table (§2.2 order: method, params, gate, handler). Returns the
    /// serialized result and, for some methods, work to do once the response is written.
    pub(super) fn dispatch(&self, request: &Request) -> (Result<String, RpcError>, Option<After>) {
        let params = request.params();
        let id = request.id();
        let mut after: Option<After> = None;
        let result = match request.method() {
            "initialize" => decode_params(params).and_then(|p| encode(id, self.initialize(p))),
            "process/start" => self.gated(Family::Exec, id, params, |p: StartParams, session| {
                let id = p.process_id.clone();
                let started = session.processes.start(p)?;
                // §5: the process's notifications wait until this response is written.
                let session = Arc::clone(session);
                after = Some(Box::new(move || session.processes.announce(&id)));
                Ok(started)
            }),
            "process/read" => {
                self.gated_into(Family::Exec, id, params, |p, s, out| s.processes.read_into(p, out))
            }
            "process/write" => self.gated(Family::Exec, id, params, |p, s| s.processes.write(p)),
            "process/terminate" => {
                self.gated(Family::Exec, id, params, |p, s| s.processes.terminate(p))
            }
            // Gated methods go through `self.gated(Family::…, params, |p, session| …)`.
            "process/signal" => self.gated(Family::Exec, id, params, |p, s| s.processes.signal(p)),
            // fs calls carrying a sandbox object may need confinement (fs/confined.rs).
            method @ ("fs/readFile" | "fs/writeFile" | "fs/createDirectory" | "fs/getMetadata"
            | "fs/readDirectory" | "fs/remove" | "fs/copy")
                if request.carries_sandbox() =>
            {
                fs::confined::validate(method, params).and_then(|()| {
                    self.gated(Family::Filesystem, id, params, |p, _| {
                        fs::confined::run(method, params, p)
                    })
                })
            }
            "fs/readFile" => self
                .gated_into(Family::Filesystem, id, params, |p, _, out| fs::read_file_into(p, out)),
            "fs/writeFile" => self.gated_decoded(
                Family::Filesystem,
                id,
                decode_write_file(params, request.members()),
                |p, _| fs::write_file(p),
            ),
            "fs/createDirectory" => {
                self.gated(Family::Filesystem, id, params, |p, _| fs::create_directory(p))
            }
            "fs/getMetadata" => self.gated_into(Family::Filesystem, id, params, |p, _, out| {
                fs::get_metadata(p).map(|metadata| metadata.write_json(out))
            }),
            "fs/readDirectory" => {
                self.gated(Family::Filesystem, id, params, |p, _| fs::read_directory(p))
            }
            "fs/remove" => self.gated(Family::Filesystem, id, params, |p, _| fs::remove(p)),
            "fs/copy" => self.gated(Family::Filesystem, id, params, |p, _| fs::copy(p)),
            // Protocol v2 (codex 0.171).
            // A streamed body's deltas follow this response, so the stream starts once it
            // is written. Deltas go to whichever connection the session is attached to; the
            // stream stops once the session is gone.
            "http/request" => self.gated(Family::Http, id, params, |p, session| {
                let (response, body) = crate::http::request(p, &session.id)?;
                if let Some(body) = body {
                    let link = Arc::downgrade(&session.link);
                    after = Some(Box::new(move || {
                        body.stream(move |message| match link.upgrade() {
                            Some(link) => {
                                link.notify(message);
                                true
                            }
                            None => false,
                        })
                    }));
                }
                Ok(response)
            }),
            "environment/info" => {
                self.gated(Family::EnvironmentInfo, id, params, |p, _| environment::info(p))
            }
            "environment/status" => {
                self.gated(Family::EnvironmentStatus, id, params, |p, _| environment::status(p))
            }
            "environmentConfig/read" => {
                self.gated(Family::EnvironmentConfig, id, params, |p, _| envconfig::read(p))
            }
            "fs/canonicalize" => {
                self.gated(Family::Filesystem, id, params, |p, _| canonicalize::canonicalize(p))
            }
            "fs/walk" => self.gated(Family::Filesystem, id, params, |p, _| walk::walk(p)),
            "fs/open" => {
                self.gated(Family::Filesystem, id, params, |p, s| handles::open(p, &s.handles))
            }
            "fs/readBlock" => self
                .gated(Family::Filesystem, id, params, |p, s| handles::read_block(p, &s.handles)),
            "fs/writeBlock" => self
                .gated(Family::Filesystem, id, params, |p, s| handles::write_block(p, &s.handles)),
            "fs/close" => {
                self.gated(Family::Filesystem, id, params, |p, s| handles::close(p, &s.handles))
            }
            "fs/watchMissing" => self
                .gated(Family::Filesystem, id, params, |p, s| watch::watch_missing(p, &s.watches)),
            other => Err(RpcError::method_not_found(other)),
        };
        // The audit log (issue 18) records every filesystem change and its outcome, however
        // it was served (confined or not).
        let method = request.method();
        if crate::audit::enabled()
            && matches!(method, "fs/writeFile" | "fs/createDirectory" | "fs/remove" | "fs/copy")
        {
            let session = self.lock().session.as_ref().map(|s| s.id.clone());
            let error = result.as_ref().err().map(|e| e.to_string());
            crate::audit::fs_call(session.as_deref(), method, params, error);
        }
        (result, after)
    }

    /// A gated method in the §2.2 order: decode params, pass the handshake gate (§3.4),
    /// run the handler, serialize its result.
    fn gated<'a, P, R>(
        &self,
        family: Family,
        id: &str,
        params: &'a str,
        handler: impl FnOnce(P, &Arc<Session>) -> Result<R, RpcError>,
    ) -> Result<String, RpcError>
    where
        P: Deserialize<'a>,
        R: Serialize,
    {
        self.gated_decoded(family, id, decode_params(params), handler)
    }

    /// `gated` for params already decoded (or not) by other means.
    fn gated_decoded<P, R>(
        &self,
        family: Family,
        id: &str,
        params: Result<P, RpcError>,
        handler: impl FnOnce(P, &Arc<Session>) -> Result<R, RpcError>,
    ) -> Result<String, RpcError>
    where
        R: Serialize,
    {
        let params = params?;
        let session = self.gate(family)?;
        encode(id, handler(params, &session))
    }

    /// `gated` for a handler that writes its result's JSON itself, straight into the
    /// response message, so a large result (a file's base64) is never copied.
    fn gated_into<'a, P>(
        &self,
        family: Family,
        id: &str,
        params: &'a str,
        handler: impl FnOnce(P, &Arc<Session>, &mut String) -> Result<(), RpcError>,
    ) -> Result<String, RpcError>
    where
        P: Deserialize<'a>,
    {
        let params = decode_params(params)?;
        let session = self.gate(family)?;
        // Room for a small result; a large one (a file) reserves its own.
        let mut text = String::with_capacity(256);
        text.push_str("{\"id\":");
        text.push_str(id);
        text.push_str(",\"result\":");
        handler(params, &session, &mut text)?;
        text.push('}');
        Ok(text)
    }

    /// §3.4: the session, if this connection may use `family` methods now.
    fn gate(&self, family: Family) -> Result<Arc<Session>, RpcError> {
        let state = self.lock();
        let family = family.name();
        let session = state.session.as_ref().ok_or_else(|| {
            RpcError::invalid_request(format!(
                "client must call initialize before using {family} methods"
            ))
        })?;
        if !state.initialized {
            return Err(RpcError::invalid_request(format!(
                "client must send initialized before using {family} methods"
            )));
        }
        if session.attached_elsewhere(self.id) {
            return Err(RpcError::invalid_request(
                "session has been resumed by another connection",
            ));
        }
        Ok(Arc::clone(session))
    }

    fn initialize(&self, p: InitializeParams) -> Result<InitializeResponse, RpcError> {
        let mut state = self.lock();
        if state.session.is_some() {
            return Err(RpcError::invalid_request(
                "initialize may only be sent once per connection",
            ));
        }
        if state.closed {
            return Err(RpcError::invalid_request("connection closed"));
        }
        let sessions = &self.server.sessions;
        let out = Arc::clone(&self.out);
        let resumed = p.resume_session_id.is_some();
        let session = match p.resume_session_id {
            Some(id) => sessions.resume(&id, self.id, out)?,
            None => sessions.create(self.id, out),
        };
        log::info!("connection {}: client `{}` on session {}", self.id, p.client_name, session.id);
        crate::audit::record(
            "sessionOpened",
            serde_json::json!({"sessionId": session.id, "connection": self.id,
                "clientName": p.client_name, "resumed": resumed}),
        );
        let session_id = session.id.clone();
        state.session = Some(session);
        Ok(InitializeResponse { session_id, environment_info: environment::cached() })
    }
}

/// Work to run after a response is written (e.g. releasing a process's notifications).
type After = Box<dyn FnOnce() + Send>;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct InitializeParams {
    client_name: String,
    #[serde(default)]
    resume_session_id: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct InitializeResponse {
    session_id: String,
    /// v2: what `environment/info` returns.
    environment_info: &'static EnvironmentInfo,
}

/// `fs/writeFile`'s params as `decode_params` gives them (the same value or error), with a
/// large `dataBase64` taken from the text instead of walked by the decoder a second time
/// after the envelope's decode (`lift_string_member`): 85 MiB for a 64 MiB file.
fn decode_write_file<'a>(
    params: &'a str,
    members: Option<&[Field]>,
) -> Result<fs::WriteFileParams<'a>, RpcError> {
    let Some((rest, data)) = lift_string_member(params, "dataBase64", members) else {
        return decode_params(params);
    };
    let p: fs::WriteFileParams<'_> = decode_params(&rest)?;
    // A missing `dataBase64` is the decoder's error above, so this fallback never runs.
    let Some(data) = data else { return decode_params(params) };
    Ok(fs::WriteFileParams { path: p.path, data_base64: Cow::Borrowed(data), sandbox: p.sandbox })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_file_params_decode_as_the_decoder_does() {
        let data = "QUJD".repeat(2048);
        let cases = [
            format!(r#"{{"path":"/tmp/x","dataBase64":"{data}"}}"#),
            format!(r#" {{ "dataBase64" : "{data}" , "path" : "/tmp/x", "sandbox": null }} "#),
            format!(r#"{{"path":"/tmp/x","dataBase64":"{data}","other":[1,{{"a":"}}"}}]}}"#),
            format!(r#"{{"path":"/tmp/x","sandbox":{{"k":"v"}},"dataBase64":"{data}"}}"#),
            format!(r#"{{"dataBase64":"{data}"}}"#),
            format!(r#"{{"path":5,"dataBase64":"{data}"}}"#),
            format!(r#"{{"path":"relative","dataBase64":"{data}"}}"#),
            format!(r#"{{"path":"/tmp/x","dataBase64":"{data}","dataBase64":"QUJD"}}"#),
            format!(r#"{{"path":"/tmp/x","dataBase64":"{data}\/"}}"#),
            format!(r#"{{"path":"/tmp/x","data\u0042ase64":"{data}"}}"#),
            format!(r#"{{"path":"/tmp/x","dataBase64":["{data}"]}}"#),
            format!(r#"{{"path":"/tmp/x","dataBase64":null,"pad":"{data}"}}"#),
            format!(r#"{{"path":"/tmp/x","pad":"{data}"}}"#),
            format!(r#"["/tmp/x","{data}"]"#),
            r#"{"path":"/tmp/x","dataBase64":"QUJD"}"#.to_string(),
        ];
        let show =
            |p: fs::WriteFileParams<'_>| format!("{:?} {} {:?}", p.path, p.data_base64, p.sandbox);
        for params in &cases {
            let ours = decode_write_file(params, None).map(show);
            let theirs = decode_params::<fs::WriteFileParams<'_>>(params).map(show);
            assert_eq!(ours, theirs, "{params}");
        }
        // The large base64 is borrowed from the text, not copied.
        let p = decode_write_file(&cases[0], None).expect("valid");
        assert!(matches!(p.data_base64, Cow::Borrowed(_)));
    }

    #[test]
    fn decode_errors_carry_no_position() {
        let e = decode_params::<InitializeParams>("{}").err().expect("fails");
        assert_eq!(e, RpcError::invalid_params("missing field `clientName`"));
    }
}
