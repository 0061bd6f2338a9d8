//! One `process/read` page (PROTOCOL.md §4.3, issue 15): the chunks after `afterSeq`, from
//! the spool (spool.rs) while it holds some, else from the retained window (retention.rs) —
//! never both in one page — and the `droppedBeforeSeq` mark when output in the asked range
//! is gone; and the result written straight into the response text. The spool file is read
//! without the state lock, then checked against the ring having moved on meanwhile. It
//! decides no other field of the result and sends nothing.

use std::fmt::Write as _;
use std::sync::MutexGuard;
use std::time::Instant;

use super::spool;
use super::table::{Proc, State};
use super::wait::{lock, wait_while};
use super::wire::{ReadResponse, Stream};
use crate::{b64, recycle};

/// Spool reads done without the state lock before one is done under it, so that a writer
/// lapping the ring cannot starve a reader.
const UNLOCKED_READS: usize = 3;
/// The result text of an empty page, up to where the chunks go.
const EMPTY_CHUNKS: &str = "{\"chunks\":[";

/// A page found for a read, with the state it was taken under.
pub(super) struct Found<'a> {
    pub(super) state: MutexGuard<'a, State>,
    /// Chunks read from the spool; `None` when the page comes from memory.
    spooled: Option<spool::Page>,
    after_seq: u64,
    max_bytes: Option<u64>,
    pub(super) dropped_before_seq: Option<u64>,
}

impl Found<'_> {
    /// (seq, stream, payload) of the page's chunks, in order.
    pub(super) fn chunks(&self) -> Vec<(u64, Stream, &[u8])> {
        match &self.spooled {
            Some(page) => page
                .chunks
                .iter()
                .map(|(seq, stream, range)| (*seq, *stream, &page.bytes[range.clone()]))
                .collect(),
            None => (self.state.retention.page(self.after_seq, self.max_bytes).into_iter())
                .map(|c| (c.seq, c.stream, c.bytes.as_slice()))
                .collect(),
        }
    }

    /// The result's `nextSeq`: last returned `seq` + 1, else the next unassigned number.
    pub(super) fn next_seq(&self) -> u64 {
        self.chunks().last().map_or(self.state.next_seq, |c| c.0 + 1)
    }

    #[cfg(test)]
    pub(super) fn chunks_out(&self) -> Vec<super::wire::ChunkOut> {
        let encoded = |(seq, stream, bytes): (u64, Stream, &[u8])| {
            let mut chunk = String::with_capacity(bytes.len().div_ceil(3) * 4);
            b64::encode_into(bytes, &mut chunk);
            super::wire::ChunkOut { seq, stream, chunk }
        };
        self.chunks().into_iter().map(encoded).collect()
    }

    /// Appends the JSON of `rest` (every field but the chunks, which it must not hold) with
    /// this page's chunks written by hand: their base64 goes straight into `out`, with no
    /// string per chunk and no escaping pass, which is what makes reading a spool back fast.
    pub(super) fn write_result(&self, rest: &ReadResponse, out: &mut String) {
        debug_assert!(rest.chunks.is_empty());
        let tail = serde_json::to_string(rest).expect("a read result always encodes as JSON");
        let tail = tail.strip_prefix(EMPTY_CHUNKS).expect("chunks is the first member");
        let chunks = self.chunks();
        let payload: usize = chunks.iter().map(|c| c.2.len().div_ceil(3) * 4 + 64).sum();
        // One byte more: the response's closing brace, which the caller appends.
        let need = out.len() + EMPTY_CHUNKS.len() + payload + tail.len() + 1;
        if out.capacity() < need {
            // A pooled buffer: a spool page's ~5.7 MiB answer is a fresh mapping otherwise.
            let mut pooled = recycle::string(need);
            pooled.push_str(out);
            *out = pooled;
        }
        out.push_str(EMPTY_CHUNKS);
        for (i, (seq, stream, bytes)) in chunks.into_iter().enumerate() {
            let stream = match stream {
                Stream::Stdout => "stdout",
                Stream::Stderr => "stderr",
                Stream::Pty => "pty",
            };
            let comma = if i == 0 { "" } else { "," };
            // Writing into a String cannot fail.
            let _ = write!(out, r#"{comma}{{"seq":{seq},"stream":"{stream}","chunk":""#);
            b64::encode_into(bytes, out);
            out.push_str("\"}");
        }
        out.push_str(tail);
    }
}

/// Long-polls until `deadline` for output after `after_seq` or the exit, then finds the
/// page.
pub(super) fn read(
    proc: &Proc,
    after_seq: u64,
    max_bytes: Option<u64>,
    deadline: Instant,
) -> Found<'_> {
    // The newest output chunk is always in memory, so memory alone tells whether any exists.
    let (mut state, _) = wait_while(&proc.changed, lock(&proc.state), deadline, |s| {
        !s.retention.has_after(after_seq) && s.exit.is_none()
    });
    for attempt in 0..=UNLOCKED_READS {
        let Some(plan) = state.spool.plan(after_seq, max_bytes) else { break };
        let read = if attempt < UNLOCKED_READS {
            drop(state);
            let read = plan.read();
            state = lock(&proc.state);
            read
        } else {
            plan.read()
        };
        match read {
            Ok(page) if state.spool.holds(&plan) => {
                let dropped_before_seq = state.spool.dropped_before(after_seq);
                return Found {
                    state,
                    spooled: Some(page),
                    after_seq,
                    max_bytes,
                    dropped_before_seq,
                };
            }
            // The ring dropped part of what was read: plan again (the loss now shows).
            Ok(_) => {}
            Err(e) => state.spool.fail(&e),
        }
    }
    let dropped_before_seq = state.spool.dropped_before(after_seq);
    Found { state, spooled: None, after_seq, max_bytes, dropped_before_seq }
}
