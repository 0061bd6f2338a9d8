//! The stdin queue of one process (PROTOCOL.md §4.5): bounded, in-order delivery of
//! `process/write` chunks by a writer thread of its own, until stdin closes or fails. It knows
//! nothing of the process table or of notifications.

use std::collections::VecDeque;
use std::fs::File;
use std::io::Write;
use std::sync::{Condvar, Mutex, PoisonError};

use super::wait::lock;

/// Bytes accepted for stdin but not yet written to the child (§10).
const STDIN_QUEUE_BYTES: usize = 8 << 20;

struct StdinState {
    chunks: VecDeque<Vec<u8>>,
    /// Accepted bytes not yet written, including a chunk being written.
    bytes: usize,
    closed: bool,
}

pub(super) struct StdinQueue {
    state: Mutex<StdinState>,
    changed: Condvar,
}

impl StdinQueue {
    pub(super) fn new() -> Self {
        let state = StdinState { chunks: VecDeque::new(), bytes: 0, closed: false };
        StdinQueue { state: Mutex::new(state), changed: Condvar::new() }
    }

    /// Queues `bytes` for the child; `false` once stdin is known closed or the queue is full.
    pub(super) fn push(&self, bytes: Vec<u8>) -> bool {
        let mut state = lock(&self.state);
        if state.closed || state.bytes + bytes.len() > STDIN_QUEUE_BYTES {
            return false;
        }
        state.bytes += bytes.len();
        state.chunks.push_back(bytes);
        self.changed.notify_all();
        true
    }

    /// Stdin is known closed: later writes fail and queued bytes are dropped.
    pub(super) fn close(&self) {
        let mut state = lock(&self.state);
        state.closed = true;
        state.chunks.clear();
        self.changed.notify_all();
    }

    /// The writer thread: delivers queued chunks in order until stdin is closed or fails.
    pub(super) fn run(&self, mut stdin: File) {
        loop {
            let chunk = {
                let mut state = lock(&self.state);
                loop {
                    if state.closed {
                        return;
                    }
                    if let Some(chunk) = state.chunks.pop_front() {
                        break chunk;
                    }
                    state = self.changed.wait(state).unwrap_or_else(PoisonError::into_inner);
                }
            };
            let result = stdin.write_all(&chunk);
            lock(&self.state).bytes -= chunk.len();
            if result.is_err() {
                // EPIPE (or EIO on a hung-up PTY): the child will never read again.
                self.close();
                return;
            }
        }
    }
}
