//! Filesystem calls that carry a sandbox object (issue 13): finding them without decoding a
//! file's base64 (`carries_sandbox`), and running them either confined — in the
//! `__sandboxed-fs` helper process, through `crate::sandbox::run_fs` — or, when the policy
//! restricts nothing, here as usual. `run_unconfined` is also what the helper runs once it has
//! confined itself. It owns no threads and never decides on an error's message text.

use serde::{Deserialize, Serialize};

use super::*;
use crate::error::RpcError;

/// Just the `sandbox` member of any fs method's params.
#[derive(Debug, Deserialize)]
pub struct SandboxOnly {
    #[serde(default)]
    pub sandbox: Option<serde_json::Value>,
}

/// Whether `params` (an fs method's JSON) may carry a sandbox object, found without decoding:
/// `"sandbox"` followed by `:` and `{`. Base64 never holds a quote, so large writes scan fast.
pub fn carries_sandbox(params: &str) -> bool {
    const KEY: &str = "\"sandbox\"";
    let mut rest = params;
    // Quote by quote with the memchr crate's vector search (a substring search over a
    // file's base64 was the slowest step of a large write, core's word-at-a-time `find`
    // the next slowest).
    while let Some(at) = memchr::memchr(b'"', rest.as_bytes()) {
        if rest[at..].starts_with(KEY) {
            let after = rest[at + KEY.len()..].trim_start();
            if let Some(value) = after.strip_prefix(':') {
                if value.trim_start().starts_with('{') && !rest[..at].ends_with('\\') {
                    return true;
                }
            }
        }
        rest = &rest[at + 1..];
    }
    false
}

/// Decodes `params` as `method`'s full params and discards them: the §2.2 order checks
/// params before the handshake gate, and `run` itself only decodes the sandbox.
pub fn validate(method: &str, params: &str) -> Result<(), RpcError> {
    match method {
        "fs/readFile" => decode::<ReadFileParams>(params).map(drop),
        "fs/writeFile" => decode::<WriteFileParams<'_>>(params).map(drop),
        "fs/createDirectory" => decode::<CreateDirectoryParams>(params).map(drop),
        "fs/getMetadata" => decode::<GetMetadataParams>(params).map(drop),
        "fs/readDirectory" => decode::<ReadDirectoryParams>(params).map(drop),
        "fs/remove" => decode::<RemoveParams>(params).map(drop),
        "fs/copy" => decode::<CopyParams>(params).map(drop),
        other => Err(RpcError::method_not_found(other)),
    }
}

/// Decodes params as the request layer does: serde's text without its position suffix.
fn decode<'a, P: Deserialize<'a>>(params: &'a str) -> Result<P, RpcError> {
    serde_json::from_str(params).map_err(|e| {
        let text = e.to_string();
        let position = format!(" at line {} column {}", e.line(), e.column());
        RpcError::invalid_params(text.strip_suffix(&position).unwrap_or(&text))
    })
}

/// An fs call whose params carry a sandbox object: confined in the helper process when the
/// policy restricts the file system, else run here as usual.
pub fn run(
    method: &str,
    params: &str,
    p: SandboxOnly,
) -> Result<Box<serde_json::value::RawValue>, RpcError> {
    let text = match p.sandbox {
        Some(sandbox) if crate::sandbox::parse(Some(&sandbox))?.fs.is_some() => {
            crate::sandbox::run_fs(&sandbox, method, params)?
        }
        _ => run_unconfined(method, params)?,
    };
    serde_json::value::RawValue::from_string(text).map_err(|e| RpcError::internal(e.to_string()))
}

/// Runs one fs method on its JSON params without any sandbox check (the caller has confined
/// this process or found the sandbox unrestricted) and returns the result's JSON text.
pub fn run_unconfined(method: &str, params: &str) -> Result<String, RpcError> {
    fn json<R: Serialize>(r: Result<R, RpcError>) -> Result<String, RpcError> {
        serde_json::to_string(&r?).map_err(|e| RpcError::internal(e.to_string()))
    }
    match method {
        "fs/readFile" => {
            let mut p: ReadFileParams = decode(params)?;
            p.sandbox = None;
            let mut out = String::new();
            read_file_into(p, &mut out)?;
            Ok(out)
        }
        "fs/writeFile" => {
            let mut p: WriteFileParams<'_> = decode(params)?;
            p.sandbox = None;
            json(write_file(p))
        }
        "fs/createDirectory" => {
            let mut p: CreateDirectoryParams = decode(params)?;
            p.sandbox = None;
            json(create_directory(p))
        }
        "fs/getMetadata" => {
            let mut p: GetMetadataParams = decode(params)?;
            p.sandbox = None;
            json(get_metadata(p))
        }
        "fs/readDirectory" => {
            let mut p: ReadDirectoryParams = decode(params)?;
            p.sandbox = None;
            json(read_directory(p))
        }
        "fs/remove" => {
            let mut p: RemoveParams = decode(params)?;
            p.sandbox = None;
            json(remove(p))
        }
        "fs/copy" => {
            let mut p: CopyParams = decode(params)?;
            p.sandbox = None;
            json(copy(p))
        }
        other => Err(RpcError::method_not_found(other)),
    }
}

#[cfg(test)]
mod carries_tests {
    use super::carries_sandbox;

    #[test]
    fn finds_a_sandbox_object_member_and_nothing_else() {
        let yes = [
            r#"{"path":"/x","sandbox":{"a":1}}"#,
            r#"{"sandbox" :  {}}"#,
            r#"{"dataBase64":"aGk=","sandbox":{"x":"\"sandbox\""}}"#,
            "{\"path\":\"/x\",\n\"sandbox\":\n{}}",
        ];
        let no = [
            r#"{"path":"/x"}"#,
            r#"{"sandbox":null}"#,
            r#"{"path":"a\"sandbox\":{"}"#,
            r#"{"sandboxx":{}}"#,
            r#"{"path":"sandbox","x":{}}"#,
            r#"""#,
            "",
        ];
        for params in yes {
            assert!(carries_sandbox(params), "{params}");
        }
        for params in no {
            assert!(!carries_sandbox(params), "{params}");
        }
    }
}
