//! `fs/canonicalize` (PROTOCOL v2): the real path of an existing file, symlinks resolved,
//! returned as a `file:` URI. A plain blocking handler; it owns no state.

use serde::{Deserialize, Serialize};

use super::{check_sandbox, io_error};
use crate::error::RpcError;
use crate::uri::{AbsolutePath, Uri};

#[derive(Debug, Deserialize)]
pub struct CanonicalizeParams {
    pub path: AbsolutePath,
    #[serde(default)]
    pub sandbox: Option<serde_json::Value>,
}

#[derive(Debug, PartialEq, Eq, Serialize)]
pub struct CanonicalizeResponse {
    pub path: Uri,
}

pub fn canonicalize(p: CanonicalizeParams) -> Result<CanonicalizeResponse, RpcError> {
    check_sandbox(p.sandbox.as_ref())?;
    let real = std::fs::canonicalize(p.path.as_path()?).map_err(io_error)?;
    Ok(CanonicalizeResponse { path: Uri(real) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn params(path: PathBuf) -> CanonicalizeParams {
        CanonicalizeParams { path: AbsolutePath::from_path(path), sandbox: None }
    }

    #[test]
    fn resolves_links_and_maps_errors_by_kind() {
        let dir = std::env::temp_dir().join(format!("exec-server-canon-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("real/deep")).unwrap();
        std::fs::write(dir.join("file"), b"x").unwrap();
        let _ = std::fs::remove_file(dir.join("link"));
        std::os::unix::fs::symlink("real", dir.join("link")).unwrap();
        let real = std::fs::canonicalize(&dir).unwrap();
        let got = canonicalize(params(dir.join("link/deep"))).unwrap();
        assert_eq!(got.path, Uri(real.join("real/deep")));
        let missing = canonicalize(params(dir.join("nope"))).unwrap_err();
        assert_eq!(missing, RpcError::not_found("No such file or directory (os error 2)"));
        let not_dir = canonicalize(params(dir.join("file/x"))).unwrap_err();
        assert_eq!(not_dir, RpcError::internal("Not a directory (os error 20)"));
        let refused = canonicalize(CanonicalizeParams {
            path: AbsolutePath::from_path(dir.clone()),
            sandbox: Some(serde_json::json!({"sandboxPolicy":{"type":"read-only"}})),
        });
        assert_eq!(refused.unwrap_err().code, -32600);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
