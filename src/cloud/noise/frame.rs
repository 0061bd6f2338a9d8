//! The relay's binary frame: protobuf `codex.exec_server.relay.v1.RelayMessageFrame`, one
//! per websocket binary message, encoded and decoded by hand (proto3 wire format; no protoc,
//! no prost: the few fields below are ~150 lines, ~10 KB less static binary than derived
//! code). It owns encoding, decoding and the validation of the cleartext routing fields
//! (version, stream id, body shape); it knows nothing of Noise or JSON-RPC. Imports nothing
//! of ours.
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
//!
//! Encoding is proto3's: fields in number order, a scalar or string at its default value
//! left out, the one body message always written. Decoding accepts what prost accepts
//! except groups (wire types 3 and 4, unused since proto2): fields in any order, the last
//! value of a repeated scalar wins, a repeated body of the same kind merges, unknown fields
//! are skipped, strings must be UTF-8.

use std::fmt;

/// The only frame version there is.
pub const VERSION: u32 = 1;
/// Longest stream id accepted, in bytes.
pub const STREAM_ID_MAX_BYTES: usize = 128;
/// Longest reset reason accepted, in bytes.
pub const RESET_REASON_MAX_BYTES: usize = 256;
/// The reason this side puts in every reset it sends (0.171: `noise_relay_protocol_error`).
pub const RESET_REASON: &str = "noise_relay_protocol_error";

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

/// Field numbers of `RelayMessageFrame`.
const F_VERSION: u32 = 1;
const F_STREAM_ID: u32 = 2;
const F_DATA: u32 = 5;
// 6 is `ack_frame`: like `resume` and `heartbeat`, an `Other` body.
const F_RESUME: u32 = 7;
const F_RESET: u32 = 8;
const F_HEARTBEAT: u32 = 9;
const F_HANDSHAKE: u32 = 10;
/// Wire types.
const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LEN: u8 = 2;
const FIXED32: u8 = 5;

/// One field of a message to encode: a `uint32` (left out when 0) or a length-delimited
/// value (left out when empty, unless `always`: an embedded message is always written).
enum Field<'a> {
    Uint(u32, u32),
    Bytes(u32, &'a [u8], bool),
}

impl Field<'_> {
    fn len(&self) -> usize {
        match *self {
            Field::Uint(_, 0) | Field::Bytes(_, [], false) => 0,
            Field::Uint(n, v) => varint_len(u64::from(n) << 3) + varint_len(u64::from(v)),
            Field::Bytes(n, b, _) => {
                varint_len(u64::from(n) << 3) + varint_len(b.len() as u64) + b.len()
            }
        }
    }

    fn write(&self, out: &mut Vec<u8>) {
        match *self {
            Field::Uint(_, 0) | Field::Bytes(_, [], false) => {}
            Field::Uint(n, v) => {
                put_varint(out, u64::from(n) << 3 | u64::from(VARINT));
                put_varint(out, u64::from(v));
            }
            Field::Bytes(n, b, _) => {
                put_varint(out, u64::from(n) << 3 | u64::from(LEN));
                put_varint(out, b.len() as u64);
                out.extend_from_slice(b);
            }
        }
    }
}

fn varint_len(v: u64) -> usize {
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A whole frame: version, stream id, and the body message `body_field` made of `body`,
/// written into one buffer of the exact size (the payload is copied once).
fn frame(stream_id: &str, body_field: u32, body: &[Field]) -> Vec<u8> {
    let body_len: usize = body.iter().map(Field::len).sum();
    let head =
        [Field::Uint(F_VERSION, VERSION), Field::Bytes(F_STREAM_ID, stream_id.as_bytes(), false)];
    let total = head.iter().map(Field::len).sum::<usize>()
        + varint_len(u64::from(body_field) << 3)
        + varint_len(body_len as u64)
        + body_len;
    let mut out = Vec::with_capacity(total);
    for f in &head {
        f.write(&mut out);
    }
    put_varint(&mut out, u64::from(body_field) << 3 | u64::from(LEN));
    put_varint(&mut out, body_len as u64);
    for f in body {
        f.write(&mut out);
    }
    out
}

pub fn encode_handshake(stream_id: &str, payload: Vec<u8>) -> Vec<u8> {
    frame(stream_id, F_HANDSHAKE, &[Field::Bytes(1, &payload, false)])
}

/// One data frame: a whole record (`segment_index` 0 of `segment_count` 1).
pub fn encode_data(stream_id: &str, seq: u32, payload: Vec<u8>) -> Vec<u8> {
    let fields = [
        Field::Uint(1, seq),
        Field::Uint(2, 0),
        Field::Uint(3, 1),
        Field::Bytes(4, &payload, false),
    ];
    frame(stream_id, F_DATA, &fields)
}

pub fn encode_reset(stream_id: &str, reason: &str) -> Vec<u8> {
    frame(stream_id, F_RESET, &[Field::Bytes(1, reason.as_bytes(), false)])
}

#[cfg_attr(not(test), allow(dead_code))]
pub fn encode_resume(stream_id: &str, next_seq: u32) -> Vec<u8> {
    frame(stream_id, F_RESUME, &[Field::Uint(1, next_seq)])
}

#[cfg_attr(not(test), allow(dead_code))]
pub fn encode_heartbeat(stream_id: &str) -> Vec<u8> {
    frame(stream_id, F_HEARTBEAT, &[])
}

/// A reader over one message's bytes.
struct Reader<'a>(&'a [u8]);

/// A decoded field value: a varint, or a length-delimited slice (fixed-width values are
/// skipped, no field here has one).
enum Value<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed,
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Result<u64, &'static str> {
        let mut v = 0u64;
        for i in 0..10 {
            let (&b, rest) = self.0.split_first().ok_or("truncated varint")?;
            self.0 = rest;
            v |= u64::from(b & 0x7f) << (7 * i);
            if b < 0x80 {
                return if i == 9 && b > 1 { Err("invalid varint") } else { Ok(v) };
            }
        }
        Err("invalid varint")
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], &'static str> {
        if n > self.0.len() {
            return Err("buffer underflow");
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    /// The next field's number and value, or `None` at the end of the message.
    fn field(&mut self) -> Result<Option<(u32, Value<'a>)>, &'static str> {
        if self.0.is_empty() {
            return Ok(None);
        }
        let key = self.varint()?;
        let number = u32::try_from(key >> 3).map_err(|_| "invalid key value")?;
        if number == 0 {
            return Err("invalid tag value: 0");
        }
        let value = match (key & 7) as u8 {
            VARINT => Value::Varint(self.varint()?),
            FIXED64 => self.take(8).map(|_| Value::Fixed)?,
            LEN => {
                let n = usize::try_from(self.varint()?).map_err(|_| "buffer underflow")?;
                Value::Bytes(self.take(n)?)
            }
            FIXED32 => self.take(4).map(|_| Value::Fixed)?,
            _ => return Err("invalid wire type"),
        };
        Ok(Some((number, value)))
    }
}

/// The wire type a known field must have.
fn varint(v: Value<'_>) -> Result<u32, &'static str> {
    match v {
        // proto3 uint32 from a varint: the low 32 bits, as prost reads it.
        Value::Varint(v) => Ok(v as u32),
        _ => Err("invalid wire type"),
    }
}

fn delimited<'a>(v: Value<'a>) -> Result<&'a [u8], &'static str> {
    match v {
        Value::Bytes(b) => Ok(b),
        _ => Err("invalid wire type"),
    }
}

fn string(v: Value<'_>) -> Result<String, &'static str> {
    String::from_utf8(delimited(v)?.to_vec())
        .map_err(|_| "invalid string value: data is not UTF-8 encoded")
}

/// The decoded `body` oneof; `Other` is ack, resume and heartbeat.
enum Body {
    Data { seq: u32, segment_index: u32, segment_count: u32, payload: Vec<u8> },
    Handshake(Vec<u8>),
    Reset(String),
    Other(u32),
}

/// Merges one body message into `body`: into the one already there when it is of the same
/// kind (protobuf's rule for a repeated embedded message), else into a fresh default one.
fn merge_body(body: &mut Option<Body>, number: u32, bytes: &[u8]) -> Result<(), &'static str> {
    let fresh = match number {
        F_DATA => Body::Data { seq: 0, segment_index: 0, segment_count: 0, payload: Vec::new() },
        F_HANDSHAKE => Body::Handshake(Vec::new()),
        F_RESET => Body::Reset(String::new()),
        _ => Body::Other(number),
    };
    let same = matches!(
        (&*body, &fresh),
        (Some(Body::Data { .. }), Body::Data { .. })
            | (Some(Body::Handshake(_)), Body::Handshake(_))
            | (Some(Body::Reset(_)), Body::Reset(_))
    ) || matches!((&*body, &fresh), (Some(Body::Other(a)), Body::Other(b)) if a == b);
    let current = if same { body.as_mut().expect("same kind") } else { body.insert(fresh) };
    let mut r = Reader(bytes);
    while let Some((n, v)) = r.field()? {
        match (&mut *current, n) {
            (Body::Data { seq, .. }, 1) => *seq = varint(v)?,
            (Body::Data { segment_index, .. }, 2) => *segment_index = varint(v)?,
            (Body::Data { segment_count, .. }, 3) => *segment_count = varint(v)?,
            (Body::Data { payload, .. }, 4) => *payload = delimited(v)?.to_vec(),
            (Body::Handshake(payload), 1) => *payload = delimited(v)?.to_vec(),
            (Body::Reset(reason), 1) => *reason = string(v)?,
            (Body::Other(F_RESUME), 1) => {
                varint(v)?;
            }
            _ => {}
        }
    }
    Ok(())
}

/// The wire fields of a frame: version, stream id, body.
fn parse(bytes: &[u8]) -> Result<(u32, String, Option<Body>), &'static str> {
    let (mut version, mut stream_id, mut body) = (0, String::new(), None);
    let mut r = Reader(bytes);
    while let Some((n, v)) = r.field()? {
        match n {
            F_VERSION => version = varint(v)?,
            F_STREAM_ID => stream_id = string(v)?,
            3 | 4 => {
                varint(v)?;
            }
            F_DATA..=F_HANDSHAKE => merge_body(&mut body, n, delimited(v)?)?,
            _ => {}
        }
    }
    Ok((version, stream_id, body))
}

/// Decodes and validates one websocket binary message.
pub fn decode(bytes: &[u8]) -> Result<Frame, FrameError> {
    let (version, stream_id, body) =
        parse(bytes).map_err(|e| FrameError(format!("invalid relay message frame: {e}")))?;
    if version != VERSION {
        return Err(FrameError(format!("unsupported relay message frame version {version}")));
    }
    if stream_id.is_empty() {
        return Err(FrameError("relay message frame is missing stream_id".into()));
    }
    if stream_id.trim() != stream_id {
        return Err(FrameError("relay message frame stream_id is not canonical".into()));
    }
    if stream_id.len() > STREAM_ID_MAX_BYTES {
        return Err(FrameError("relay message frame stream_id is too long".into()));
    }
    match body {
        Some(Body::Data { seq, segment_index, segment_count, payload }) => {
            if segment_index != 0 || segment_count != 1 || payload.is_empty() {
                return Err(FrameError(
                    "relay data message frame is missing required fields".into(),
                ));
            }
            Ok(Frame::Data { stream_id, seq, payload })
        }
        Some(Body::Handshake(payload)) => {
            if payload.is_empty() {
                return Err(FrameError("relay handshake message frame is missing payload".into()));
            }
            Ok(Frame::Handshake { stream_id, payload })
        }
        Some(Body::Reset(reason)) => {
            if reason.is_empty() || reason.len() > RESET_REASON_MAX_BYTES {
                return Err(FrameError("relay reset message frame has invalid reason".into()));
            }
            Ok(Frame::Reset { stream_id, reason })
        }
        Some(Body::Other(_)) => Ok(Frame::Other { stream_id }),
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
        // Version 2; no body; a segment of 2 (segment_index 1, segment_count 2, payload [1]).
        assert!(decode(&[0x08, 0x02, 0x12, 0x01, b's', 0x4a, 0x00]).is_err());
        assert!(decode(&[0x08, 0x01, 0x12, 0x01, b's']).is_err());
        let segmented =
            [0x08, 0x01, 0x12, 0x01, b's', 0x2a, 0x07, 0x10, 0x01, 0x18, 0x02, 0x22, 0x01, 1];
        assert!(decode(&segmented).is_err());
        // Truncated length, a group, invalid UTF-8 in stream_id.
        assert!(decode(&[0x08, 0x01, 0x12, 0x05, b's']).is_err());
        assert!(decode(&[0x0b, 0x0c]).is_err());
        assert!(decode(&[0x08, 0x01, 0x12, 0x01, 0xff, 0x4a, 0x00]).is_err());
    }

    #[test]
    fn decoding_follows_protobuf_rules() {
        // Fields out of order, an unknown varint, fixed32, fixed64 and bytes field skipped,
        // ack and ack_bits ignored, a large multi-byte varint seq, a 200-byte payload.
        let payload = vec![7u8; 200];
        let mut data = vec![0x08, 0x80, 0x80, 0x04, 0x18, 0x01, 0x22, 0xc8, 0x01];
        data.extend(&payload);
        let mut bytes = vec![0x2a, data.len() as u8, 0x01];
        bytes.extend(&data);
        bytes.extend([0x12, 0x02, b'i', b'd', 0x18, 0x05, 0x20, 0x06, 0x08, 0x01]);
        bytes.extend([0x58, 0x01, 0x65, 1, 2, 3, 4, 0x69, 1, 2, 3, 4, 5, 6, 7, 8, 0x72, 0x01, 0]);
        assert_eq!(
            decode(&bytes),
            Ok(Frame::Data { stream_id: "id".into(), seq: 0x10000, payload: payload.clone() })
        );
        assert_eq!(encode_data("id", 0x10000, payload.clone())[..2], [0x08, 0x01]);
        assert_eq!(decode(&encode_data("id", 0x10000, payload.clone())), decode(&bytes));
        // The last version wins; a repeated body of the same kind merges, another replaces.
        let merged = [
            0x08, 0x02, 0x08, 0x01, 0x12, 0x01, b's', 0x2a, 0x02, 0x08, 0x03, 0x2a, 0x04, 0x18,
            0x01, 0x22, 0x00,
        ];
        assert!(decode(&merged).is_err(), "empty payload");
        let merged = [
            0x08, 0x01, 0x12, 0x01, b's', 0x2a, 0x02, 0x08, 0x03, 0x2a, 0x05, 0x18, 0x01, 0x22,
            0x01, 9,
        ];
        assert_eq!(
            decode(&merged),
            Ok(Frame::Data { stream_id: "s".into(), seq: 3, payload: vec![9] })
        );
        let replaced =
            [0x08, 0x01, 0x12, 0x01, b's', 0x2a, 0x02, 0x08, 0x03, 0x52, 0x03, 0x0a, 0x01, 9];
        assert_eq!(
            decode(&replaced),
            Ok(Frame::Handshake { stream_id: "s".into(), payload: vec![9] })
        );
        // An 11-byte varint is refused.
        assert!(decode(&[0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01])
            .is_err());
        assert_eq!(encode_heartbeat("s"), [0x08, 0x01, 0x12, 0x01, b's', 0x4a, 0x00]);
    }
}
