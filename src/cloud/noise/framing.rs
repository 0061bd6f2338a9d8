//! What travels inside the Noise records of one relay stream: JSON-RPC messages, each
//! preceded by its length as a big-endian u32, the resulting byte stream cut into records
//! of at most `RECORD_PLAINTEXT_BYTES`; and, before decryption, the reorder buffer that
//! releases ciphertext records in relay sequence order (Noise nonces are implicit, so a
//! record decrypted out of order fails). It owns those two byte-level state machines and
//! nothing else: no crypto, no sockets. Imports nothing of ours.

use std::collections::BTreeMap;
use std::fmt;

/// Bytes of the length prefix before each JSON-RPC message.
pub const LENGTH_PREFIX_BYTES: usize = 4;
/// Largest JSON-RPC message accepted or sent, in bytes.
pub const MESSAGE_MAX_BYTES: usize = 64 * 1024 * 1024;
/// Largest plaintext per Noise record, in bytes (fits the 65,535-byte Noise limit with tag).
pub const RECORD_PLAINTEXT_BYTES: usize = 60 * 1024;
/// How far ahead of the next expected sequence a record may arrive.
pub const REORDER_WINDOW: u32 = 64;
/// Records held while a gap is open.
pub const PENDING_RECORDS_MAX: usize = 64;
/// Ciphertext bytes held while a gap is open.
pub const PENDING_BYTES_MAX: usize = 1024 * 1024;

/// A stream-fatal framing fault (the stream is reset, the link stays).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FramingError(pub &'static str);

impl fmt::Display for FramingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

/// Splits one JSON-RPC message into record plaintexts: length prefix, then the bytes, cut
/// at `RECORD_PLAINTEXT_BYTES`.
pub fn records(message: &[u8]) -> Result<Vec<Vec<u8>>, FramingError> {
    if message.is_empty() || message.len() > MESSAGE_MAX_BYTES {
        return Err(FramingError("noise relay JSON-RPC message has invalid length"));
    }
    let mut framed = Vec::with_capacity(LENGTH_PREFIX_BYTES + message.len());
    framed.extend_from_slice(&(message.len() as u32).to_be_bytes());
    framed.extend_from_slice(message);
    Ok(framed.chunks(RECORD_PLAINTEXT_BYTES).map(<[u8]>::to_vec).collect())
}

/// Reassembles JSON-RPC messages from decrypted record plaintexts.
#[derive(Default)]
pub struct Reassembler {
    buffered: Vec<u8>,
}

impl Reassembler {
    /// Appends one record's plaintext; returns every message it completed.
    pub fn push(&mut self, record: &[u8]) -> Result<Vec<Vec<u8>>, FramingError> {
        if record.len() > RECORD_PLAINTEXT_BYTES {
            return Err(FramingError("noise relay plaintext record exceeds maximum length"));
        }
        self.buffered.extend_from_slice(record);
        let mut out = Vec::new();
        let mut start = 0;
        while self.buffered.len() - start >= LENGTH_PREFIX_BYTES {
            let mut prefix = [0u8; LENGTH_PREFIX_BYTES];
            prefix.copy_from_slice(&self.buffered[start..start + LENGTH_PREFIX_BYTES]);
            let len = u32::from_be_bytes(prefix) as usize;
            // Checked before waiting for the body, so a bad length never grows the buffer.
            if len == 0 || len > MESSAGE_MAX_BYTES {
                return Err(FramingError("noise relay JSON-RPC message has invalid length"));
            }
            let end = start + LENGTH_PREFIX_BYTES + len;
            if self.buffered.len() < end {
                break;
            }
            out.push(self.buffered[start + LENGTH_PREFIX_BYTES..end].to_vec());
            start = end;
        }
        self.buffered.drain(..start);
        Ok(out)
    }
}

/// Releases ciphertext records in sequence order, starting at 0. Duplicates (a sequence
/// already released or already held) are dropped silently; a record beyond the window or
/// past the held-bytes bound is a fault.
#[derive(Default)]
pub struct Reorder {
    next_seq: u32,
    pending: BTreeMap<u32, Vec<u8>>,
    pending_bytes: usize,
}

impl Reorder {
    pub fn push(&mut self, seq: u32, payload: Vec<u8>) -> Result<Vec<Vec<u8>>, FramingError> {
        if seq < self.next_seq || self.pending.contains_key(&seq) {
            return Ok(Vec::new());
        }
        if seq > self.next_seq {
            if seq - self.next_seq > REORDER_WINDOW {
                return Err(FramingError("noise relay ciphertext exceeds reorder window"));
            }
            let bytes = self.pending_bytes + payload.len();
            if self.pending.len() >= PENDING_RECORDS_MAX || bytes > PENDING_BYTES_MAX {
                return Err(FramingError("noise relay pending ciphertext buffer is full"));
            }
            self.pending.insert(seq, payload);
            self.pending_bytes = bytes;
            return Ok(Vec::new());
        }
        let mut ready = vec![payload];
        self.advance()?;
        while let Some(p) = self.pending.remove(&self.next_seq) {
            self.pending_bytes -= p.len();
            ready.push(p);
            self.advance()?;
        }
        Ok(ready)
    }

    fn advance(&mut self) -> Result<(), FramingError> {
        self.next_seq = self
            .next_seq
            .checked_add(1)
            .ok_or(FramingError("noise relay sequence number exhausted"))?;
        Ok(())
    }
}

/// Hands out send sequences 0, 1, 2, … and refuses to wrap.
#[derive(Default)]
pub struct Sequencer {
    next: u32,
}

impl Sequencer {
    pub fn take(&mut self) -> Result<u32, FramingError> {
        let seq = self.next;
        self.next =
            seq.checked_add(1).ok_or(FramingError("noise relay sequence number exhausted"))?;
        Ok(seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_split_and_reassemble() {
        let big = vec![b'x'; RECORD_PLAINTEXT_BYTES * 2 + 10];
        let records = records(&big).expect("records");
        assert_eq!(records.len(), 3);
        assert_eq!(records[0].len(), RECORD_PLAINTEXT_BYTES);
        assert_eq!(&records[0][..4], &(big.len() as u32).to_be_bytes());
        let mut r = Reassembler::default();
        assert!(r.push(&records[0]).expect("push").is_empty());
        assert!(r.push(&records[1]).expect("push").is_empty());
        assert_eq!(r.push(&records[2]).expect("push"), vec![big]);
        // Two messages in one record.
        let mut joined = records_of(b"{}");
        joined.extend(records_of(b"[1]"));
        assert_eq!(r.push(&joined).expect("push"), vec![b"{}".to_vec(), b"[1]".to_vec()]);
    }

    fn records_of(m: &[u8]) -> Vec<u8> {
        records(m).expect("records").concat()
    }

    #[test]
    fn bad_lengths_are_faults() {
        let mut r = Reassembler::default();
        assert!(r.push(&[0, 0, 0, 0]).is_err());
        let mut r = Reassembler::default();
        assert!(r.push(&((MESSAGE_MAX_BYTES as u32) + 1).to_be_bytes()).is_err());
        let mut r = Reassembler::default();
        assert!(r.push(&vec![0; RECORD_PLAINTEXT_BYTES + 1]).is_err());
        assert!(records(b"").is_err());
    }

    #[test]
    fn reorder_releases_in_order_and_drops_duplicates() {
        let mut o = Reorder::default();
        assert!(o.push(1, vec![1]).expect("held").is_empty());
        assert!(o.push(1, vec![9]).expect("duplicate held").is_empty());
        assert_eq!(o.push(0, vec![0]).expect("released"), vec![vec![0], vec![1]]);
        assert!(o.push(0, vec![0]).expect("replayed").is_empty());
        assert_eq!(o.push(2, vec![2]).expect("next"), vec![vec![2]]);
        assert!(o.push(3 + REORDER_WINDOW, vec![7]).expect("edge of window").is_empty());
        assert!(o.push(4 + REORDER_WINDOW, vec![7]).is_err());
        let mut o = Reorder::default();
        assert!(o.push(1, vec![0; PENDING_BYTES_MAX]).expect("held").is_empty());
        assert!(o.push(2, vec![0]).is_err());
    }

    #[test]
    fn sequencer_never_wraps() {
        let mut s = Sequencer { next: u32::MAX - 1 };
        assert_eq!(s.take(), Ok(u32::MAX - 1));
        assert!(s.take().is_err());
    }
}
