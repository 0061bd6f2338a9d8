//! The global allocator: the system allocator, except for blocks of `LARGE_BYTES` and more
//! (a file's base64 in a message, its decoded bytes), which are mapped on their own,
//! advised for transparent huge pages, and grown or shrunk with `mremap`.
//!
//! Why: such a block is written once, front to back, right after it is allocated. With
//! 4 KiB pages that costs a fault per page, as much as the base64 coding itself (an 85 MiB
//! buffer: ~45 ms of faults against ~15 ms with 2 MiB pages, measured here), and a `Vec`
//! that doubles copies everything it holds at each step, where `mremap` moves page tables.
//! The kernel aligns anonymous mappings of 2 MiB and more to 2 MiB by itself. Freed blocks
//! are unmapped at once, so a large transfer leaves nothing resident behind.

use std::alloc::{GlobalAlloc, Layout, System};
use std::ptr;

/// Blocks at least this large bypass the system allocator.
const LARGE_BYTES: usize = 4 << 20;
const PAGE_BYTES: usize = 4096;

pub struct Allocator;

fn is_large(size: usize, align: usize) -> bool {
    size >= LARGE_BYTES && align <= PAGE_BYTES
}

fn mapped_len(size: usize) -> usize {
    size.next_multiple_of(PAGE_BYTES)
}

/// A fresh zeroed mapping of `size` bytes, or null.
fn map(size: usize) -> *mut u8 {
    let len = mapped_len(size);
    // SAFETY: an anonymous private mapping owned by nobody else yet.
    let p = unsafe {
        libc::mmap(
            ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return ptr::null_mut();
    }
    // Advice only: without transparent huge pages the mapping works with 4 KiB pages.
    // SAFETY: the range is the mapping just made.
    unsafe { libc::madvise(p, len, libc::MADV_HUGEPAGE) };
    p.cast()
}

// SAFETY: large blocks are whole mappings of at least `size` bytes, page aligned (which
// covers every `align` they are used for); everything else is the system allocator's.
// `GlobalAlloc` callers pass the same layout (or the `new_size` of a realloc) back, so a
// block's size always says which of the two owns it.
unsafe impl GlobalAlloc for Allocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if is_large(layout.size(), layout.align()) {
            map(layout.size())
        } else {
            // SAFETY: forwarded with the caller's guarantees.
            unsafe { System.alloc(layout) }
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if is_large(layout.size(), layout.align()) {
            map(layout.size())
        } else {
            // SAFETY: forwarded with the caller's guarantees.
            unsafe { System.alloc_zeroed(layout) }
        }
    }

    unsafe fn dealloc(&self, block: *mut u8, layout: Layout) {
        if is_large(layout.size(), layout.align()) {
            // SAFETY: the block is a mapping of this length made by `map` or `realloc`.
            unsafe { libc::munmap(block.cast(), mapped_len(layout.size())) };
        } else {
            // SAFETY: forwarded with the caller's guarantees.
            unsafe { System.dealloc(block, layout) }
        }
    }

    unsafe fn realloc(&self, block: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let align = layout.align();
        match (is_large(layout.size(), align), is_large(new_size, align)) {
            // SAFETY: forwarded with the caller's guarantees.
            (false, false) => unsafe { System.realloc(block, layout, new_size) },
            (true, true) => {
                // SAFETY: the block is a mapping of the old length; the kernel moves it
                // if it cannot grow in place, keeping its contents and its advice.
                let moved = unsafe {
                    libc::mremap(
                        block.cast(),
                        mapped_len(layout.size()),
                        mapped_len(new_size),
                        libc::MREMAP_MAYMOVE,
                    )
                };
                if moved == libc::MAP_FAILED {
                    ptr::null_mut()
                } else {
                    moved.cast()
                }
            }
            _ => {
                // SAFETY: `new_size` is non-zero and, rounded to `align`, fits in isize
                // (the caller's guarantees), so the layout is valid.
                let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, align) };
                // SAFETY: a valid layout; the copy covers what both blocks hold.
                unsafe {
                    let new = self.alloc(new_layout);
                    if !new.is_null() {
                        ptr::copy_nonoverlapping(block, new, layout.size().min(new_size));
                        self.dealloc(block, layout);
                    }
                    new
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn large_blocks_grow_shrink_and_keep_their_contents() {
        let mut v: Vec<u8> = Vec::with_capacity(16);
        for i in 0..(20usize << 20) {
            v.push(i as u8);
        }
        assert!(v.iter().enumerate().all(|(i, &b)| b == i as u8));
        v.truncate(3 << 20);
        v.shrink_to_fit();
        assert!(v.iter().enumerate().all(|(i, &b)| b == i as u8));
        let zeroed = vec![0u8; 9 << 20];
        assert!(zeroed.iter().all(|&b| b == 0));
    }
}
