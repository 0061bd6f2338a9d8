//! The harness side of one Noise relay stream, built from the daemon's own channel, frame
//! and framing modules (included by path by the test crate): handshake to a pinned
//! executor key, then JSON-RPC over encrypted data frames. Every read has a deadline (the
//! socket's read timeout, set by the caller).
#![allow(dead_code)]

use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::Value;
use tungstenite::{Message, WebSocket};

use super::{channel, frame, framing};

pub const DEADLINE: Duration = Duration::from_secs(20);

/// The next decodable relay frame; pings, pongs and undecodable frames are skipped.
pub fn read_frame(ws: &mut WebSocket<TcpStream>) -> frame::Frame {
    let end = Instant::now() + DEADLINE;
    loop {
        assert!(Instant::now() < end, "relay frame in time");
        match ws.read().expect("relay read") {
            Message::Binary(b) => {
                if let Ok(f) = frame::decode(&b) {
                    return f;
                }
            }
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected message {other:?}"),
        }
    }
}

pub struct Harness {
    pub stream_id: String,
    pub channel: channel::Channel,
    send_seq: framing::Sequencer,
    reorder: framing::Reorder,
    reassembler: framing::Reassembler,
    queued: std::collections::VecDeque<Value>,
    next_id: i64,
}

/// Writes message 1 for `stream_id`; returns the initiator state to finish.
pub fn begin(
    ws: &mut WebSocket<TcpStream>,
    me: &channel::Identity,
    executor: &channel::PublicKey,
    ids: (&str, &str),
    stream_id: &str,
    authorization: &[u8],
) -> channel::Initiator {
    let prologue = channel::prologue(ids.0, ids.1, stream_id);
    let (init, msg1) =
        channel::Initiator::start(me, executor, &prologue, authorization).expect("message 1");
    ws.send(Message::binary(frame::encode_handshake(stream_id, msg1))).expect("send handshake");
    init
}

fn stream_of(f: &frame::Frame) -> &str {
    match f {
        frame::Frame::Handshake { stream_id, .. }
        | frame::Frame::Data { stream_id, .. }
        | frame::Frame::Reset { stream_id, .. }
        | frame::Frame::Other { stream_id } => stream_id,
    }
}

/// The next frame of `stream_id`; frames of other streams on the link are skipped.
pub fn read_frame_of(ws: &mut WebSocket<TcpStream>, stream_id: &str) -> frame::Frame {
    loop {
        let f = read_frame(ws);
        if stream_of(&f) == stream_id {
            return f;
        }
    }
}

/// Waits for message 2 on `stream_id` and enters transport mode.
pub fn finish(ws: &mut WebSocket<TcpStream>, init: channel::Initiator, stream_id: &str) -> Harness {
    match read_frame_of(ws, stream_id) {
        frame::Frame::Handshake { stream_id: s, payload } if s == stream_id => Harness {
            stream_id: stream_id.to_string(),
            channel: init.finish(&payload).expect("message 2"),
            send_seq: Default::default(),
            reorder: Default::default(),
            reassembler: Default::default(),
            queued: Default::default(),
            next_id: 1,
        },
        other => panic!("expected the handshake response on {stream_id}, got {other:?}"),
    }
}

impl Harness {
    /// Encrypts `value` as records and returns the frames (not sent), for tests that
    /// reorder or tamper with them.
    pub fn frames(&mut self, value: &Value) -> Vec<(u32, Vec<u8>)> {
        framing::records(value.to_string().as_bytes())
            .expect("frame")
            .into_iter()
            .map(|record| {
                let ct = self.channel.encrypt(&record).expect("encrypt");
                (self.send_seq.take().expect("seq"), ct)
            })
            .collect()
    }

    pub fn send(&mut self, ws: &mut WebSocket<TcpStream>, value: &Value) {
        for (seq, ct) in self.frames(value) {
            ws.send(Message::binary(frame::encode_data(&self.stream_id, seq, ct))).expect("send");
        }
    }

    /// The next JSON-RPC message on this stream; a reset panics.
    pub fn recv(&mut self, ws: &mut WebSocket<TcpStream>) -> Value {
        if let Some(v) = self.queued.pop_front() {
            return v;
        }
        loop {
            match read_frame_of(ws, &self.stream_id) {
                frame::Frame::Data { seq, payload, .. } => {
                    for ct in self.reorder.push(seq, payload).expect("reorder") {
                        let pt = self.channel.decrypt(&ct).expect("decrypt");
                        for m in self.reassembler.push(&pt).expect("reassemble") {
                            self.queued.push_back(serde_json::from_slice(&m).expect("json"));
                        }
                    }
                    if let Some(v) = self.queued.pop_front() {
                        return v;
                    }
                }
                other => panic!("unexpected frame on {}: {other:?}", self.stream_id),
            }
        }
    }

    /// Sends a request and waits for its response (notifications in between are kept).
    pub fn call(&mut self, ws: &mut WebSocket<TcpStream>, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        self.send(ws, &serde_json::json!({"id": id, "method": method, "params": params}));
        let mut others = Vec::new();
        loop {
            let m = self.recv(ws);
            if m.get("id") == Some(&Value::from(id)) && m.get("method").is_none() {
                for o in others.into_iter().rev() {
                    self.queued.push_front(o);
                }
                return m;
            }
            others.push(m);
        }
    }
}
