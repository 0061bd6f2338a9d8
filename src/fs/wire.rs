//! The wire types of the `fs/*` methods (PROTOCOL.md §6): params and results, mirroring the
//! contract's names. Pure data: no I/O and no error mapping.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use crate::uri::AbsolutePath;

/// `{}` on the wire.
#[derive(Debug, Default, PartialEq, Eq, Serialize)]
pub struct Empty {}

#[derive(Debug, Deserialize)]
pub struct ReadFileParams {
    pub path: AbsolutePath,
    #[serde(default)]
    pub sandbox: Option<serde_json::Value>,
}

/// `fs/readFile`'s result as a test sees it; the server writes it with `read_file_into`.
#[cfg(test)]
#[derive(Debug)]
pub struct ReadFileResponse {
    pub(super) data_base64: String,
}

#[cfg(test)]
impl ReadFileResponse {
    /// The base64 text.
    pub fn data_base64(&self) -> &str {
        &self.data_base64
    }
}

/// Borrows `dataBase64` from the request frame when it has no JSON escapes, so a large
/// write holds the base64 text once (in the frame) plus the decoded bytes.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WriteFileParams<'a> {
    pub path: AbsolutePath,
    #[serde(borrow)]
    pub data_base64: Cow<'a, str>,
    #[serde(default)]
    pub sandbox: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
pub struct CreateDirectoryParams {
    pub path: AbsolutePath,
    #[serde(default)]
    pub recursive: Option<bool>,
    #[serde(default)]
    pub sandbox: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
pub struct GetMetadataParams {
    pub path: AbsolutePath,
    #[serde(default)]
    pub sandbox: Option<serde_json::Value>,
}

#[derive(Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GetMetadataResponse {
    pub is_directory: bool,
    pub is_file: bool,
    pub is_symlink: bool,
    /// Bytes (`st_size`, following a symlink); v2 (0.171) requires it.
    pub size: u64,
    pub created_at_ms: i64,
    pub modified_at_ms: i64,
}

impl GetMetadataResponse {
    /// Appends the JSON serde would write for it. The most frequent request's result is
    /// written by hand because serde_json's writer, a call per token, was the largest
    /// single cost of its round trip (a sixth of the instructions).
    pub fn write_json(&self, out: &mut String) {
        let flag = |b: bool| if b { "true" } else { "false" };
        let mut number = itoa::Buffer::new();
        out.push_str("{\"isDirectory\":");
        out.push_str(flag(self.is_directory));
        out.push_str(",\"isFile\":");
        out.push_str(flag(self.is_file));
        out.push_str(",\"isSymlink\":");
        out.push_str(flag(self.is_symlink));
        out.push_str(",\"size\":");
        out.push_str(number.format(self.size));
        out.push_str(",\"createdAtMs\":");
        out.push_str(number.format(self.created_at_ms));
        out.push_str(",\"modifiedAtMs\":");
        out.push_str(number.format(self.modified_at_ms));
        out.push('}');
    }
}

#[derive(Debug, Deserialize)]
pub struct ReadDirectoryParams {
    pub path: AbsolutePath,
    #[serde(default)]
    pub sandbox: Option<serde_json::Value>,
}

#[derive(Debug, Serialize)]
pub struct ReadDirectoryResponse {
    pub entries: Vec<ReadDirectoryEntry>,
}

#[derive(Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReadDirectoryEntry {
    pub file_name: String,
    pub is_directory: bool,
    pub is_file: bool,
}

#[derive(Debug, Deserialize)]
pub struct RemoveParams {
    pub path: AbsolutePath,
    #[serde(default)]
    pub recursive: Option<bool>,
    #[serde(default)]
    pub force: Option<bool>,
    #[serde(default)]
    pub sandbox: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CopyParams {
    pub source_path: AbsolutePath,
    pub destination_path: AbsolutePath,
    /// Required, unlike the other methods' `recursive` (§6): a missing one is -32602.
    pub recursive: bool,
    #[serde(default)]
    pub sandbox: Option<serde_json::Value>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_json_written_by_hand_is_what_serde_writes() {
        for (flags, size, created, modified) in [
            ((true, false, false), 0, 0, 0),
            ((false, true, true), u64::MAX, i64::MIN, i64::MAX),
            ((false, false, true), 4096, -1, 1_764_000_000_123),
        ] {
            let response = GetMetadataResponse {
                is_directory: flags.0,
                is_file: flags.1,
                is_symlink: flags.2,
                size,
                created_at_ms: created,
                modified_at_ms: modified,
            };
            let mut out = String::from("x");
            response.write_json(&mut out);
            let serde = serde_json::to_string(&response).expect("serializes");
            assert_eq!(out, format!("x{serde}"));
        }
    }
}
