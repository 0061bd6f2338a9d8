//! The JSON-RPC error every handler returns: `RpcError { code, message }` with constructors
//! named for their JSON-RPC meaning. It is ground floor: it imports nothing of the crate, so
//! handlers (process, fs) can use it without depending on the request layer.

use std::fmt;

/// A JSON-RPC error as it goes on the wire: `{"code", "message"}`, never `data`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RpcError {
    pub code: i64,
    pub message: String,
}

impl RpcError {
    pub fn new(code: i64, message: impl Into<String>) -> Self {
        RpcError { code, message: message.into() }
    }
    /// -32600: invalid request or input (also fs invalid-input and permission denied).
    pub fn invalid_request(message: impl Into<String>) -> Self {
        Self::new(-32600, message)
    }
    /// -32601: no such method.
    pub fn method_not_found(method: &str) -> Self {
        Self::new(-32601, format!("exec-server stub does not implement `{method}` yet"))
    }
    /// -32602: params that do not decode or fail a parameter check.
    pub fn invalid_params(message: impl Into<String>) -> Self {
        Self::new(-32602, message)
    }
    /// -32603: internal error (spawn failure, other I/O errors, handler panic).
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(-32603, message)
    }
    /// -32004: a filesystem path that does not exist.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(-32004, message)
    }
}

impl fmt::Display for RpcError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.message, self.code)
    }
}
