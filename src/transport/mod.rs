//! Transports: what carries a connection's JSON-RPC text. The local websocket listener
//! (listener.rs), serving one websocket with its read loop (websocket.rs), its client frames
//! (frames.rs) and guarded writer (guarded.rs, which the Noise relay link writes through too),
//! and stdin/stdout (stdio.rs).
//! A transport hands inbound text to `rpc::Connection` and implements `Outbound` for what
//! goes back; it parses no JSON-RPC.

pub mod frames;
pub mod guarded;
pub mod listener;
pub mod stdio;
pub mod websocket;
