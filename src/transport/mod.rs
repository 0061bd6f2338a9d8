//! Transports: what carries a connection's JSON-RPC text. The local websocket listener
//! (listener.rs), serving one websocket with its read loop (websocket.rs), its client frames
//! (frames.rs) and frame writer (sink.rs) on accepted sockets, the guarded tungstenite writer
//! (guarded.rs) for rendezvous links and the Noise relay link, and stdin/stdout (stdio.rs).
//! A transport hands inbound text to `rpc::Connection` and implements `Outbound` for what
//! goes back; it parses no JSON-RPC.

pub mod frames;
pub mod guarded;
pub mod listener;
pub mod sink;
pub mod stdio;
pub mod websocket;
