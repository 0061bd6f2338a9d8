//! Output retention (PROTOCOL.md §4.3, §4.4): the retained chunks of one process under a byte
//! limit, whether each reached a connection, and the `maxBytes` paging of `process/read`.
//! Evicted chunks are handed to the caller, which spools them (spool.rs). Pure data: no
//! locks, threads or I/O.

use std::collections::VecDeque;

use super::wire::Stream;

pub(super) struct Retained {
    pub(super) seq: u64,
    pub(super) stream: Stream,
    pub(super) bytes: Vec<u8>,
    /// Its notification went to an attached connection (so eviction need not spool it).
    pub(super) delivered: bool,
}

/// The retained output chunks of one process, oldest first, at most `limit` payload bytes
/// (a single chunk larger than the limit is kept alone, so the newest output stays readable).
pub(super) struct Retention {
    pub(super) chunks: VecDeque<Retained>,
    pub(super) bytes: usize,
    pub(super) limit: usize,
    /// Chunks up to this seq count as undelivered whatever their flag says (set when a
    /// send failed, in O(1) however many chunks are retained).
    undelivered_through: u64,
}

impl Retention {
    pub(super) fn new(limit: usize) -> Self {
        Retention { chunks: VecDeque::new(), bytes: 0, limit, undelivered_through: 0 }
    }

    /// Retains `bytes`, evicting the oldest chunks as needed (each is shown to `evicted`
    /// first, which spills it); returns one evicted buffer for the caller to read into again,
    /// so steady streaming allocates nothing per chunk.
    pub(super) fn push(
        &mut self,
        seq: u64,
        stream: Stream,
        bytes: Vec<u8>,
        mut evicted: impl FnMut(&Retained),
    ) -> Option<Vec<u8>> {
        let mut spare: Option<Vec<u8>> = None;
        while !self.chunks.is_empty() && self.bytes + bytes.len() > self.limit {
            if let Some(mut old) = self.chunks.pop_front() {
                old.delivered &= old.seq > self.undelivered_through;
                evicted(&old);
                self.bytes -= old.bytes.len();
                if spare.as_ref().is_none_or(|s| s.capacity() < old.bytes.capacity()) {
                    spare = Some(old.bytes);
                }
            }
        }
        self.bytes += bytes.len();
        self.chunks.push_back(Retained { seq, stream, bytes, delivered: false });
        spare
    }

    /// Records whether the notifications of the chunks with `seqs` reached an attached
    /// connection. When one did not, the connection is gone, and what it took last may
    /// never have arrived: every retained chunk counts as undelivered again, so that the
    /// whole window is spooled once evicted.
    pub(super) fn set_delivered(&mut self, seqs: std::ops::RangeInclusive<u64>, delivered: bool) {
        if delivered {
            for chunk in self.chunks.iter_mut().rev().take_while(|c| c.seq >= *seqs.start()) {
                chunk.delivered |= seqs.contains(&chunk.seq);
            }
        } else if let Some(newest) = self.chunks.back() {
            self.undelivered_through = newest.seq;
        }
    }

    pub(super) fn has_after(&self, after_seq: u64) -> bool {
        self.chunks.back().is_some_and(|c| c.seq > after_seq)
    }

    /// Chunks with `seq > after_seq` under the §4.3 `maxBytes` rule: the first is always
    /// included; stop before a chunk that would take the total over `max_bytes`, and once the
    /// total reaches it.
    pub(super) fn page(&self, after_seq: u64, max_bytes: Option<u64>) -> Vec<&Retained> {
        let first = self.chunks.partition_point(|c| c.seq <= after_seq);
        let mut total: u64 = 0;
        let mut page = Vec::new();
        for chunk in self.chunks.range(first..) {
            let len = chunk.bytes.len() as u64;
            if let (Some(max), false) = (max_bytes, page.is_empty()) {
                if total >= max || total + len > max {
                    break;
                }
            }
            total += len;
            page.push(chunk);
        }
        page
    }
}
