//! The relay's binary frame: protobuf `codex.exec_server.relay.v1.RelayMessageFrame`, one
//! per websocket binary message, written as hand-made prost structs (no protoc). It owns
//! encoding, decoding and the validation of the cleartext routing fields (version, stream
//! id, body shape); it knows nothing of Noise or JSON-RPC. Imports nothing of ours.
//!
//! ```proto
//! message RelayMessageFrame { uint32 version = 1; string stream_id = 2; uint32 ack = 3;
//!   uint32 ack_bits = 4; oneof body { RelayData data = 5; RelayAck ack_frame = 6;
//!   RelayResume resume = 7; RelayReset reset = 8; RelayHeartbeat heartbeat = 9;
//!   RelayHandshake handshake = 10; } }
//! message RelayData { uint32 seq = 1; uint32 segment_index = 2; uint32 segment_count = 3;
//!   bytes payload = 4; }
//! message RelayAck {}  message RelayResume { uint32 next_seq = 1; }
//! message RelayReset { string reason = 1; }  message RelayHeartbeat {}
//! message RelayHandshake { bytes payload = 1; }
//! ```

use std::fmt;

use prost::Message;

/// The only frame version there is.
pub const VERSION: u32 = 1;
/// Longest stream id accepted, in bytes.
pub const STREAM_ID_MAX_BYTES: usize = 128;
/// Longest reset reason accepted, in bytes.
pub const RESET_REASON_MAX_BYTES: usize = 256;
/// The reason this side puts in every reset it sends (0.171: `noise_relay_protocol_error`).
pub const RESET_REASON: &str = "noise_relay_protocol_error";

#[derive(Clone, PartialEq, Message)]
pub struct RelayMessageFrame {
    #[prost(uint32, tag = "1")]
    pub version: u32,
    #[prost(string, tag = "2")]
    pub stream_id: String,
    #[prost(uint32, tag = "3")]
    pub ack: u32,
    #[prost(uint32, tag = "4")]
    pub ack_bits: u32,
    #[prost(oneof = "Body", tags = "5, 6, 7, 8, 9, 10")]
    pub body: Option<Body>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Body {
    #[prost(message, tag = "5")]
    Data(RelayData),
    #[prost(message, tag = "6")]
    AckFrame(RelayAck),
    #[prost(message, tag = "7")]
    Resume(RelayResume),
    #[prost(message, tag = "8")]
    Reset(RelayReset),
    #[prost(message, tag = "9")]
    Heartbeat(RelayHeartbeat),
    #[prost(message, tag = "10")]
    Handshake(RelayHandshake),
}

#[derive(Clone, PartialEq, Message)]
pub struct RelayData {
    #[prost(uint32, tag = "1")]
    pub seq: u32,
    #[prost(uint32, tag = "2")]
    pub segment_index: u32,
    #[prost(uint32, tag = "3")]
    pub segment_count: u32,
    #[prost(bytes = "vec", tag = "4")]
    pub payload: Vec<u8>,
}

#[derive(Clone, PartialEq, Message)]
pub struct RelayAck {}

#[derive(Clone, PartialEq, Message)]
pub struct RelayResume {
    #[prost(uint32, tag = "1")]
    pub next_seq: u32,
}

#[derive(Clone, PartialEq, Message)]
pub struct RelayReset {
    #[prost(string, tag = "1")]
    pub reason: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct RelayHeartbeat {}

#[derive(Clone, PartialEq, Message)]
pub struct RelayHandshake {
    #[prost(bytes = "vec", tag = "1")]
    pub payload: Vec<u8>,
}

/// A frame that failed decoding or validation; the frame is dropped, the link stays.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameError(pub String);

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A frame after validation, by what it carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Handshake {
        stream_id: String,
        payload: Vec<u8>,
    },
    Data {
        stream_id: String,
        seq: u32,
        payload: Vec<u8>,
    },
    Reset {
        stream_id: String,
        reason: String,
    },
    /// Ack, resume and heartbeat: routing noise for the executor, ignored.
    Other {
        stream_id: String,
    },
}

fn frame(stream_id: &str, body: Body) -> RelayMessageFrame {
    RelayMessageFrame {
        version: VERSION,
        stream_id: stream_id.to_string(),
        ack: 0,
        ack_bits: 0,
        body: Some(body),
    }
}

pub fn encode_handshake(stream_id: &str, payload: Vec<u8>) -> Vec<u8> {
    frame(stream_id, Body::Handshake(RelayHandshake { payload })).encode_to_vec()
}

/// One data frame: a whole record (`segment_index` 0 of `segment_count` 1).
pub fn encode_data(stream_id: &str, seq: u32, payload: Vec<u8>) -> Vec<u8> {
    frame(stream_id, Body::Data(RelayData { seq, segment_index: 0, segment_count: 1, payload }))
        .encode_to_vec()
}

pub fn encode_reset(stream_id: &str, reason: &str) -> Vec<u8> {
    frame(stream_id, Body::Reset(RelayReset { reason: reason.to_string() })).encode_to_vec()
}

#[cfg_attr(not(test), allow(dead_code))]
pub fn encode_resume(stream_id: &str, next_seq: u32) -> Vec<u8> {
    frame(stream_id, Body::Resume(RelayResume { next_seq })).encode_to_vec()
}

#[cfg_attr(not(test), allow(dead_code))]
pub fn encode_heartbeat(stream_id: &str) -> Vec<u8> {
    frame(stream_id, Body::Heartbeat(RelayHeartbeat {})).encode_to_vec()
}

/// Decodes and validates one websocket binary message.
pub fn decode(bytes: &[u8]) -> Result<Frame, FrameError> {
    let f = RelayMessageFrame::decode(bytes)
        .map_err(|e| FrameError(format!("invalid relay message frame: {e}")))?;
    if f.version != VERSION {
        return Err(FrameError(format!("unsupported relay message frame version {}", f.version)));
    }
    if f.stream_id.is_empty() {
        return Err(FrameError("relay message frame is missing stream_id".into()));
    }
    if f.stream_id.trim() != f.stream_id {
        return Err(FrameError("relay message frame stream_id is not canonical".into()));
    }
    if f.stream_id.len() > STREAM_ID_MAX_BYTES {
        return Err(FrameError("relay message frame stream_id is too long".into()));
    }
    let stream_id = f.stream_id;
    match f.body {
        Some(Body::Data(d)) => {
            if d.segment_index != 0 || d.segment_count != 1 || d.payload.is_empty() {
                return Err(FrameError(
                    "relay data message frame is missing required fields".into(),
                ));
            }
            Ok(Frame::Data { stream_id, seq: d.seq, payload: d.payload })
        }
        Some(Body::Handshake(h)) => {
            if h.payload.is_empty() {
                return Err(FrameError("relay handshake message frame is missing payload".into()));
            }
            Ok(Frame::Handshake { stream_id, payload: h.payload })
        }
        Some(Body::Reset(r)) => {
            if r.reason.is_empty() || r.reason.len() > RESET_REASON_MAX_BYTES {
                return Err(FrameError("relay reset message frame has invalid reason".into()));
            }
            Ok(Frame::Reset { stream_id, reason: r.reason })
        }
        Some(Body::AckFrame(_) | Body::Resume(_) | Body::Heartbeat(_)) => {
            Ok(Frame::Other { stream_id })
        }
        None => Err(FrameError("relay message frame is missing body".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_answer_bytes() {
        // Upstream's vector: {version: 1, stream_id: "s-1", resume: {next_seq: 0}}.
        assert_eq!(encode_resume("s-1", 0), [0x08, 0x01, 0x12, 0x03, b's', b'-', b'1', 0x3a, 0x00]);
        // data seq 0 (omitted, proto3 default), segment_count 1, payload "ab".
        assert_eq!(
            encode_data("s", 0, b"ab".to_vec()),
            [0x08, 0x01, 0x12, 0x01, b's', 0x2a, 0x06, 0x18, 0x01, 0x22, 0x02, b'a', b'b']
        );
        assert_eq!(
            encode_reset("s", RESET_REASON)[..7],
            [0x08, 0x01, 0x12, 0x01, b's', 0x42, 0x1c]
        );
        assert_eq!(
            encode_handshake("s", vec![9]),
            [0x08, 0x01, 0x12, 0x01, b's', 0x52, 0x03, 0x0a, 0x01, 9]
        );
    }

    #[test]
    fn roundtrip_and_validation() {
        assert_eq!(
            decode(&encode_data("s-1", 7, vec![1, 2])),
            Ok(Frame::Data { stream_id: "s-1".into(), seq: 7, payload: vec![1, 2] })
        );
        assert_eq!(
            decode(&encode_handshake("x", vec![5])),
            Ok(Frame::Handshake { stream_id: "x".into(), payload: vec![5] })
        );
        assert_eq!(decode(&encode_heartbeat("x")), Ok(Frame::Other { stream_id: "x".into() }));
        assert!(decode(&[0xff, 0xff, 0xff]).is_err());
        assert!(decode(&encode_data("", 0, vec![1])).is_err());
        assert!(decode(&encode_data(" s", 0, vec![1])).is_err());
        assert!(decode(&encode_data(&"s".repeat(129), 0, vec![1])).is_err());
        assert!(decode(&encode_data("s", 0, vec![])).is_err());
        assert!(decode(&encode_handshake("s", vec![])).is_err());
        assert!(decode(&encode_reset("s", "")).is_err());
        let mut v2 = RelayMessageFrame::decode(&encode_heartbeat("s")[..]).expect("decode");
        v2.version = 2;
        assert!(decode(&v2.encode_to_vec()).is_err());
        v2.version = 1;
        v2.body = None;
        assert!(decode(&v2.encode_to_vec()).is_err());
        let segmented = RelayMessageFrame {
            version: 1,
            stream_id: "s".into(),
            ack: 0,
            ack_bits: 0,
            body: Some(Body::Data(RelayData {
                seq: 0,
                segment_index: 1,
                segment_count: 2,
                payload: vec![1],
            })),
        };
        assert!(decode(&segmented.encode_to_vec()).is_err());
    }
}
