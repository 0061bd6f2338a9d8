//! The way out of a connection: the `Outbound` trait a transport implements (a websocket, stdout)
//! and the request layer and sessions write messages through, with `Closed` and `CloseReason`.
//! Ground floor: it imports nothing of the crate and knows no socket or JSON-RPC detail.

/// The connection is gone; the message was not sent.
#[derive(Debug)]
pub struct Closed;

/// Why the server closes a connection; each maps to a websocket close code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// 1002: the client broke the protocol (§2.3).
    Protocol,
    /// 1001: the server is shutting down (§9.4).
    GoingAway,
    /// 1008: the peer accepted no byte for the write-stall limit (§10).
    Stalled,
    /// 1009: an inbound message over the size limit (§1.4).
    TooBig,
    /// 1007: a text frame that is not UTF-8 (§1.4).
    InvalidData,
}

/// Something a connection's messages are written through (a websocket, stdout).
pub trait Outbound: Send + Sync {
    /// Writes one complete message. Blocks while the peer's socket is full; fails once the
    /// connection is closed or the peer stalls past the write-stall limit.
    fn send(&self, text: String) -> Result<(), Closed>;
    /// Starts closing the connection; returns without waiting for the peer.
    fn close(&self, reason: CloseReason);
}
