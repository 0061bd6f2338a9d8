//! A small pool of message buffers for the streaming path. Each output chunk becomes a
//! ~87 KiB notification; allocating and freeing one per chunk made musl's allocator hand the
//! pages back to the kernel and fault them in again every time, halving the static build's
//! streaming rate. Reading a spool back has the same shape with larger buffers: each
//! `process/read` page reads ~4 MiB from the spool and answers with ~5.7 MiB of text, fresh
//! mappings whose page faults were a quarter of the server's time. Buffers taken here go back
//! to the pool when the websocket writer (or the spool page) is done with them. It owns the
//! pool and nothing else.

use std::sync::{Mutex, PoisonError};

use tungstenite::Bytes;

/// Buffers kept for reuse; enough for a few processes streaming at once.
const POOL_BUFFERS: usize = 16;
/// Buffers smaller than this are cheap to allocate and not worth pooling.
const MIN_RECYCLED_BYTES: usize = 16 << 10;
/// Buffers larger than this (a file's base64) are freed, so the pool stays small; a spool
/// page (`spool::PAGE_BYTES` and its read slack) and its response text fit.
const MAX_RECYCLED_BYTES: usize = 8 << 20;
/// Buffers larger than this count against `LARGE_BUFFERS`.
const SMALL_BUFFER_BYTES: usize = 1 << 20;
/// Large buffers kept: one spool page and one response, so a read-back leaves at most
/// 16 MiB resident.
const LARGE_BUFFERS: usize = 2;

static POOL: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

/// An empty buffer with room for `capacity` bytes, reusing the smallest pooled one that fits
/// (so small messages leave the large buffers to spool pages).
pub fn buffer(capacity: usize) -> Vec<u8> {
    if (MIN_RECYCLED_BYTES..=MAX_RECYCLED_BYTES).contains(&capacity) {
        let mut pool = POOL.lock().unwrap_or_else(PoisonError::into_inner);
        let fits = pool.iter().enumerate().filter(|(_, b)| b.capacity() >= capacity);
        if let Some((i, _)) = fits.min_by_key(|(_, b)| b.capacity()) {
            let mut buffer = pool.swap_remove(i);
            buffer.clear();
            return buffer;
        }
    }
    Vec::with_capacity(capacity)
}

/// An empty string with room for `capacity` bytes, reusing a pooled buffer when one fits.
pub fn string(capacity: usize) -> String {
    // An empty buffer is valid UTF-8.
    String::from_utf8(buffer(capacity)).unwrap_or_default()
}

/// Returns a buffer to the pool, if it is of a poolable size and there is room.
pub fn give(buffer: Vec<u8>) {
    if !(MIN_RECYCLED_BYTES..=MAX_RECYCLED_BYTES).contains(&buffer.capacity()) {
        return;
    }
    let large = |b: &Vec<u8>| b.capacity() > SMALL_BUFFER_BYTES;
    let mut pool = POOL.lock().unwrap_or_else(PoisonError::into_inner);
    if pool.len() < POOL_BUFFERS
        && (!large(&buffer) || pool.iter().filter(|b| large(b)).count() < LARGE_BUFFERS)
    {
        pool.push(buffer);
    }
}

/// The message's bytes for the websocket writer, without copying; a poolable buffer
/// returns to the pool once the writer drops it.
pub fn bytes(text: String) -> Bytes {
    let buffer = text.into_bytes();
    if (MIN_RECYCLED_BYTES..=MAX_RECYCLED_BYTES).contains(&buffer.capacity()) {
        Bytes::from_owner(Recycled(buffer))
    } else {
        Bytes::from(buffer)
    }
}

struct Recycled(Vec<u8>);

impl AsRef<[u8]> for Recycled {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Drop for Recycled {
    fn drop(&mut self) {
        give(std::mem::take(&mut self.0));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_written_buffer_comes_back_and_small_or_huge_ones_do_not() {
        let mut text = string(64 << 10);
        text.push_str("hello");
        let written = bytes(text);
        assert_eq!(&written[..], b"hello");
        drop(written);
        let again = string(64 << 10);
        assert!(again.is_empty());
        assert!(string(100).capacity() >= 100);
        let huge = bytes(String::with_capacity(16 << 20));
        assert!(huge.is_empty());
    }

    #[test]
    fn large_buffers_are_kept_two_at_most() {
        for _ in 0..3 {
            give(Vec::with_capacity(5 << 20));
        }
        let pool = POOL.lock().unwrap_or_else(PoisonError::into_inner);
        assert!(pool.iter().filter(|b| b.capacity() > SMALL_BUFFER_BYTES).count() <= 2);
    }
}
