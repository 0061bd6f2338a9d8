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
//!
//! Small blocks (up to `SMALL_MAX_BYTES`) are rounded up to a multiple of 16 bytes and, when
//! freed, kept on a short free list of their size for the next allocation of that size.
//! Why: musl's allocator gives a size class's memory back — unmapping its page — as soon as
//! the last block of it is free, so the few blocks a request allocates and frees mapped and
//! unmapped a page per round trip (two system calls and a page fault, seen with strace),
//! and each of its allocations costs some 200 instructions against a list pop here. The
//! lists hold at most `SMALL_DEPTH` blocks per size, a few tens of KiB in all.

use std::alloc::{GlobalAlloc, Layout, System};
use std::ptr;
use std::sync::{Mutex, PoisonError};

/// Blocks at least this large bypass the system allocator.
const LARGE_BYTES: usize = 4 << 20;
const PAGE_BYTES: usize = 4096;

/// Blocks up to this size (and alignment 16) are kept on the free lists.
const SMALL_MAX_BYTES: usize = 512;
const SMALL_STEP: usize = 16;
const SMALL_CLASSES: usize = SMALL_MAX_BYTES / SMALL_STEP;
/// Free blocks kept per size.
const SMALL_DEPTH: usize = 8;

pub struct Allocator;

/// Free small blocks, by size class (`class_of`).
struct FreeLists {
    blocks: [[*mut u8; SMALL_DEPTH]; SMALL_CLASSES],
    len: [usize; SMALL_CLASSES],
}

// SAFETY: the pointers are free blocks that nothing else refers to; the mutex hands each
// out to one caller.
unsafe impl Send for FreeLists {}

static FREE: Mutex<FreeLists> = Mutex::new(FreeLists {
    blocks: [[ptr::null_mut(); SMALL_DEPTH]; SMALL_CLASSES],
    len: [0; SMALL_CLASSES],
});

fn is_small(size: usize, align: usize) -> bool {
    size <= SMALL_MAX_BYTES && align <= SMALL_STEP
}

/// The class of a small size; its blocks are `(class + 1) * 16` bytes.
fn class_of(size: usize) -> usize {
    size.max(1).div_ceil(SMALL_STEP) - 1
}

/// The layout every block of `class` is allocated from the system with.
fn class_layout(class: usize) -> Layout {
    // SAFETY: a non-zero multiple of 16 below isize::MAX, with a power-of-two alignment.
    unsafe { Layout::from_size_align_unchecked((class + 1) * SMALL_STEP, SMALL_STEP) }
}

fn lists() -> std::sync::MutexGuard<'static, FreeLists> {
    FREE.lock().unwrap_or_else(PoisonError::into_inner)
}

fn small_alloc(size: usize) -> *mut u8 {
    let class = class_of(size);
    {
        let mut free = lists();
        if free.len[class] > 0 {
            free.len[class] -= 1;
            let n = free.len[class];
            return free.blocks[class][n];
        }
    }
    // SAFETY: a valid, non-zero layout.
    unsafe { System.alloc(class_layout(class)) }
}

/// # Safety
/// `block` was returned by `small_alloc` for a size of the same class and is not used again.
unsafe fn small_dealloc(block: *mut u8, size: usize) {
    let class = class_of(size);
    {
        let mut free = lists();
        let n = free.len[class];
        if n < SMALL_DEPTH {
            free.blocks[class][n] = block;
            free.len[class] = n + 1;
            return;
        }
    }
    // SAFETY: the block came from the system allocator with this class's layout.
    unsafe { System.dealloc(block, class_layout(class)) }
}

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
        if is_small(layout.size(), layout.align()) {
            small_alloc(layout.size())
        } else if is_large(layout.size(), layout.align()) {
            map(layout.size())
        } else {
            // SAFETY: forwarded with the caller's guarantees.
            unsafe { System.alloc(layout) }
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if is_small(layout.size(), layout.align()) {
            let block = small_alloc(layout.size());
            if !block.is_null() {
                // SAFETY: the block holds at least `size` bytes.
                unsafe { ptr::write_bytes(block, 0, layout.size()) };
            }
            block
        } else if is_large(layout.size(), layout.align()) {
            map(layout.size())
        } else {
            // SAFETY: forwarded with the caller's guarantees.
            unsafe { System.alloc_zeroed(layout) }
        }
    }

    unsafe fn dealloc(&self, block: *mut u8, layout: Layout) {
        if is_small(layout.size(), layout.align()) {
            // SAFETY: small layouts are allocated by `small_alloc` (alloc, alloc_zeroed,
            // realloc), and the caller passes the block's layout back.
            unsafe { small_dealloc(block, layout.size()) }
        } else if is_large(layout.size(), layout.align()) {
            // SAFETY: the block is a mapping of this length made by `map` or `realloc`.
            unsafe { libc::munmap(block.cast(), mapped_len(layout.size())) };
        } else {
            // SAFETY: forwarded with the caller's guarantees.
            unsafe { System.dealloc(block, layout) }
        }
    }

    unsafe fn realloc(&self, block: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let align = layout.align();
        let (small, new_small) = (is_small(layout.size(), align), is_small(new_size, align));
        if small && new_small && class_of(layout.size()) == class_of(new_size) {
            // The block already holds the new size.
            return block;
        }
        let system = |size: usize| !is_small(size, align) && !is_large(size, align);
        match (is_large(layout.size(), align), is_large(new_size, align)) {
            // Both with the system allocator, which may grow the block in place.
            // SAFETY: forwarded with the caller's guarantees.
            _ if system(layout.size()) && system(new_size) => unsafe {
                System.realloc(block, layout, new_size)
            },
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
    fn small_blocks_are_reused_by_size_and_keep_their_contents_across_classes() {
        use super::{ptr, Allocator, GlobalAlloc, Layout};
        let a = Allocator;
        let layout = Layout::from_size_align(100, 8).unwrap();
        // SAFETY: valid layouts; every block is freed once with the layout it has.
        unsafe {
            let first = a.alloc(layout);
            ptr::write_bytes(first, 0xAA, 100);
            a.dealloc(first, layout);
            // Same class (97..=112 bytes): a freed block of it (this one, unless a test on
            // another thread took it first) comes back zeroed on request.
            let again = a.alloc_zeroed(Layout::from_size_align(110, 8).unwrap());
            assert!(!again.is_null());
            assert!(std::slice::from_raw_parts(again, 110).iter().all(|&b| b == 0));
            for i in 0..110 {
                *again.add(i) = i as u8;
            }
            // Within the class the block stays; across classes and to the system and the
            // mapped sizes the contents move along.
            let grown = a.realloc(again, Layout::from_size_align(110, 8).unwrap(), 112);
            assert_eq!(grown, again);
            let mut block = grown;
            let mut size = 112;
            for next in [300, 512, 513, 5000, 5 << 20, 200, 8] {
                block = a.realloc(block, Layout::from_size_align(size, 8).unwrap(), next);
                assert!(!block.is_null());
                let kept = size.min(next).min(110);
                assert!((0..kept).all(|i| *block.add(i) == i as u8), "{size} -> {next}");
                size = next;
            }
            a.dealloc(block, Layout::from_size_align(size, 8).unwrap());
            // Over-aligned small blocks are the system's.
            let aligned = Layout::from_size_align(64, 64).unwrap();
            let b = a.alloc(aligned);
            assert_eq!(b as usize % 64, 0);
            a.dealloc(b, aligned);
        }
    }
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
