//! One `process/read` page (PROTOCOL.md §4.3, issue 15): the chunks after `afterSeq`, from
//! the spool (spool.rs) while it holds some, else from the retained window (retention.rs) —
//! never both in one page — and the `droppedBeforeSeq` mark when output in the asked range
//! is gone. The spool file is read without the state lock, then checked against the ring
//! having moved on meanwhile. It builds no response and sends nothing.

use std::sync::MutexGuard;
use std::time::Instant;

use super::table::{Proc, State};
use super::wait::{lock, wait_while};
use super::wire::{ChunkOut, Stream};
use crate::b64;

/// Spool reads done without the state lock before one is done under it, so that a writer
/// lapping the ring cannot starve a reader.
const UNLOCKED_READS: usize = 3;

/// Long-polls until `deadline` for output after `after_seq` or the exit, then returns the
/// page's chunks and `droppedBeforeSeq`, with the state they were taken under.
pub(super) fn read(
    proc: &Proc,
    after_seq: u64,
    max_bytes: Option<u64>,
    deadline: Instant,
) -> (MutexGuard<'_, State>, Vec<ChunkOut>, Option<u64>) {
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
                let chunks = page
                    .chunks
                    .iter()
                    .map(|(seq, stream, range)| {
                        chunk_out(*seq, *stream, &page.bytes[range.clone()])
                    })
                    .collect();
                let dropped = state.spool.dropped_before(after_seq);
                return (state, chunks, dropped);
            }
            // The ring dropped part of what was read: plan again (the loss now shows).
            Ok(_) => {}
            Err(e) => state.spool.fail(&e),
        }
    }
    let chunks = state
        .retention
        .page(after_seq, max_bytes)
        .into_iter()
        .map(|c| chunk_out(c.seq, c.stream, &c.bytes))
        .collect();
    let dropped = state.spool.dropped_before(after_seq);
    (state, chunks, dropped)
}

fn chunk_out(seq: u64, stream: Stream, bytes: &[u8]) -> ChunkOut {
    let mut chunk = String::with_capacity(bytes.len().div_ceil(3) * 4);
    b64::encode_into(bytes, &mut chunk);
    ChunkOut { seq, stream, chunk }
}
