//! Output retention (PROTOCOL.md §4.3, §4.4): the retained chunks of one process under a byte
//! limit, and the `maxBytes` paging of `process/read`. Pure data: no locks, threads or I/O.

use std::collections::VecDeque;

use super::wire::Stream;

pub(super) struct Retained {
    pub(super) seq: u64,
    pub(super) stream: Stream,
    pub(super) bytes: Vec<u8>,
}

/// The retained output chunks of one process, oldest first, at most `limit` payload bytes
/// (a single chunk larger than the limit is kept alone, so the newest output stays readable).
pub(super) struct Retention {
    pub(super) chunks: VecDeque<Retained>,
    pub(super) bytes: usize,
    pub(super) limit: usize,
}

impl Retention {
    pub(super) fn new(limit: usize) -> Self {
        Retention { chunks: VecDeque::new(), bytes: 0, limit }
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
            if let Some(old) = self.chunks.pop_front() {
                evicted(&old);
                self.bytes -= old.bytes.len();
                if spare.as_ref().is_none_or(|s| s.capacity() < old.bytes.capacity()) {
                    spare = Some(old.bytes);
                }
            }
        }
        self.bytes += bytes.len();
        self.chunks.push_back(Retained { seq, stream, bytes });
        spare
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
