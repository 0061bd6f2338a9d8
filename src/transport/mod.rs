//! Transports: what carries a connection's JSON-RPC text. The local websocket listener
//! (listener.rs), serving one websocket with its guarded writer and read loop (websocket.rs),
//! stdin/stdout (stdio.rs), and the TLS streams and trust list of the cloud legs (tls.rs).
//! A transport hands inbound text to `rpc::Connection` and implements `Outbound` for what
//! goes back; it parses no JSON-RPC.

pub mod listener;
pub mod stdio;
pub mod tls;
pub mod websocket;
