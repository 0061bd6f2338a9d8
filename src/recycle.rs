//! A small pool of message buffers for the streaming path. Each output chunk becomes a
//! ~87 KiB notification; allocating and freeing one per chunk made musl's allocator hand the
//! pages back to the kernel and fault them in again every time, halving the static build's
//! streaming rate. Buffers taken here go back to the pool when the websocket writer is done
//! with them. It owns the pool and nothing else.

use std::sync::{Mutex, PoisonError};

use tungstenite::Bytes;

/// Buffers kept for reuse; enough for a few processes streaming at once.
const POOL_BUFFERS: usize = 16;
/// Buffers smaller than this are cheap to allocate and not worth pooling.
const MIN_RECYCLED_BYTES: usize = 16 << 10;
/// Buffers larger than this (a file's base64) are freed, so the pool stays small.
const MAX_RECYCLED_BYTES: usize = 1 << 20;

static POOL: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

/// An empty string with room for `capacity` bytes, reusing a pooled buffer when one fits.
pub fn string(capacity: usize) -> String {
    if (MIN_RECYCLED_BYTES..=MAX_RECYCLED_BYTES).contains(&capacity) {
        let mut pool = POOL.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(i) = pool.iter().position(|b| b.capacity() >= capacity) {
            let mut buffer = pool.swap_remove(i);
            buffer.clear();
            // An empty buffer is valid UTF-8.
            return String::from_utf8(buffer).unwrap_or_default();
        }
    }
    String::with_capacity(capacity)
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
        let mut pool = POOL.lock().unwrap_or_else(PoisonError::into_inner);
        if pool.len() < POOL_BUFFERS {
            pool.push(std::mem::take(&mut self.0));
        }
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
        let huge = bytes(String::with_capacity(8 << 20));
        assert!(huge.is_empty());
    }
}
