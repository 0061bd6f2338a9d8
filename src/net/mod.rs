//! Outbound connections of the daemon (cloud registries, the rendezvous and relay dials,
//! `http/request`, `doctor`): which proxy a target goes through (proxy.rs), the TLS client
//! streams and trust list (tls.rs), opening a TCP connection or CONNECT tunnel and TLS
//! inside it before one deadline (dial.rs), and one HTTP/1.1 request and response over
//! such a connection (http1.rs). It knows no JSON-RPC,
//! websocket or registry detail; those are the callers'.

pub mod dial;
pub mod http1;
pub mod proxy;
pub mod tls;
