//! The global allocator: the system allocator, except for blocks of `LARGE_BYTES` and more
//! (a file's base64 in a message, its decoded bytes), which are mapped on their own,
//! advised for transparent huge pages, and grown or shrunk with `mremap`.
//!
//! Why: such a block is written once, front to back, right after it is allocated. With
//! 4 KiB pages that costs a fault per page, as much as the base64 coding itself (an 85 MiB
//! buffer: ~45 ms of faults against ~15 ms with 2 MiB pages, measured here), and a `Vec`
//! that doubles copies everything it holds at each step, where `mremap` moves page tables.
//! The kernel aligns anonymous mappings of 2 MiB and more to 2 MiB by itself.
//!
//! Freed large blocks stay mapped for a while, as free ranges (`Warm`), once the daemon runs
//! the trimmer thread (`start_trimmer`): the next large block is cut from one, and a block
//! grows in place over the free range right after it. Why: the kernel zeroes every fresh
//! page, and a large request arrives in a message that grows to its size while being read,
//! so each 64 MiB `fs/writeFile` or `fs/readFile` had its ~85 MiB message buffer zeroed
//! anew — half of the reading thread's time (perf: `clear_page_erms`). The ranges hold at
//! most `WARM_MAX_BYTES` and are unmapped once unused for `WARM_IDLE`, so a large transfer
//! leaves nothing resident behind for longer than that.
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
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

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

/// Free ranges kept mapped hold at most this many bytes of address space (pages never
/// touched are not resident): a 64 MiB file's message and its read buffer.
const WARM_MAX_BYTES: usize = 192 << 20;
/// Free ranges kept at once; a range that would need another is unmapped.
const WARM_SLOTS: usize = 8;
/// Free ranges unused this long are unmapped by the trimmer.
const WARM_IDLE: Duration = Duration::from_secs(1);

/// Freed large blocks kept mapped: page-aligned ranges, disjoint, adjacent ones merged.
struct Warm {
    ranges: [(usize, usize); WARM_SLOTS],
    len: usize,
    /// When a range was last taken or given.
    used: Option<Instant>,
}

static WARM: Mutex<Warm> = Mutex::new(Warm { ranges: [(0, 0); WARM_SLOTS], len: 0, used: None });
/// Signalled when the first range is kept, for the trimmer.
static WARMED: Condvar = Condvar::new();
/// Whether freed large blocks are kept: only while the trimmer runs.
static KEEP_WARM: AtomicBool = AtomicBool::new(false);

fn warm() -> MutexGuard<'static, Warm> {
    WARM.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Warm {
    /// The bytes the free ranges hold.
    fn bytes(&self) -> usize {
        self.ranges[..self.len].iter().map(|r| r.1).sum()
    }

    fn remove(&mut self, i: usize) {
        self.len -= 1;
        self.ranges[i] = self.ranges[self.len];
    }

    /// The start of `len` bytes cut from the front of the smallest range that holds them.
    fn take(&mut self, len: usize) -> Option<usize> {
        let i =
            (0..self.len).filter(|&i| self.ranges[i].1 >= len).min_by_key(|&i| self.ranges[i].1)?;
        let (start, have) = self.ranges[i];
        self.cut(i, start, have, len);
        Some(start)
    }

    /// Cuts `len` bytes from the front of the range that starts at `at`; false when there
    /// is none or it is shorter.
    fn take_at(&mut self, at: usize, len: usize) -> bool {
        let Some(i) = (0..self.len).find(|&i| self.ranges[i].0 == at && self.ranges[i].1 >= len)
        else {
            return false;
        };
        self.cut(i, at, self.ranges[i].1, len);
        true
    }

    fn cut(&mut self, i: usize, start: usize, have: usize, len: usize) {
        if have == len {
            self.remove(i);
        } else {
            self.ranges[i] = (start + len, have - len);
        }
        self.used = Some(Instant::now());
    }

    /// Keeps `start..start + len` as free, merged with its neighbours; false (the caller
    /// unmaps it) past the byte limit or when no slot is left.
    fn give(&mut self, start: usize, len: usize) -> bool {
        if self.bytes() + len > WARM_MAX_BYTES {
            return false;
        }
        let (mut start, mut len) = (start, len);
        if let Some(i) = (0..self.len).find(|&i| self.ranges[i].0 + self.ranges[i].1 == start) {
            start = self.ranges[i].0;
            len += self.ranges[i].1;
            self.remove(i);
        }
        if let Some(i) = (0..self.len).find(|&i| self.ranges[i].0 == start + len) {
            len += self.ranges[i].1;
            self.remove(i);
        }
        if self.len == WARM_SLOTS {
            // Only when nothing merged: the freed block's bytes are not counted yet.
            return false;
        }
        self.ranges[self.len] = (start, len);
        self.len += 1;
        self.used = Some(Instant::now());
        true
    }
}

/// Starts the thread that unmaps free large ranges once unused for `WARM_IDLE`; until it
/// runs, freed large blocks are unmapped at once. Once is enough; later calls do nothing.
pub fn start_trimmer() -> std::io::Result<()> {
    static STARTED: Mutex<bool> = Mutex::new(false);
    let mut started = STARTED.lock().unwrap_or_else(PoisonError::into_inner);
    if *started {
        return Ok(());
    }
    std::thread::Builder::new().name("alloc-trim".into()).spawn(|| loop {
        let mut kept = warm();
        while kept.len == 0 {
            kept = WARMED.wait(kept).unwrap_or_else(PoisonError::into_inner);
        }
        let idle = kept.used.map_or(WARM_IDLE, |at| at.elapsed());
        if idle < WARM_IDLE {
            drop(WARMED.wait_timeout(kept, WARM_IDLE - idle));
            continue;
        }
        let ranges = kept.ranges;
        let n = std::mem::take(&mut kept.len);
        drop(kept);
        for &(start, len) in &ranges[..n] {
            // SAFETY: a free range of our mappings that nothing refers to any more.
            unsafe { libc::munmap(start as *mut libc::c_void, len) };
        }
    })?;
    *started = true;
    KEEP_WARM.store(true, Ordering::SeqCst);
    Ok(())
}

/// A large block of `len` (page-rounded) bytes: cut from a free range, or mapped fresh.
fn large_alloc(len: usize) -> *mut u8 {
    if KEEP_WARM.load(Ordering::Relaxed) {
        if let Some(start) = warm().take(len) {
            return start as *mut u8;
        }
    }
    map(len)
}

/// Frees `block..block + len`: kept as a free range while the trimmer runs, else unmapped.
///
/// # Safety
/// The range is ours, page aligned, and nothing refers to it any more.
unsafe fn large_free(block: *mut u8, len: usize) {
    if KEEP_WARM.load(Ordering::Relaxed) {
        let mut kept = warm();
        let first = kept.len == 0;
        if kept.give(block as usize, len) {
            if first {
                WARMED.notify_one();
            }
            return;
        }
    }
    // SAFETY: the caller's guarantees.
    unsafe { libc::munmap(block.cast(), len) };
}

/// Grows the large block `block` of `old` bytes to `new` (both page-rounded): over the free
/// range right after it, into a free range (its pages moved there), or by the kernel.
///
/// # Safety
/// `block` is a large block of `old` bytes, `new > old`.
unsafe fn large_grow(block: *mut u8, old: usize, new: usize) -> *mut u8 {
    let dest = if KEEP_WARM.load(Ordering::Relaxed) {
        let mut kept = warm();
        if kept.take_at(block as usize + old, new - old) {
            return block;
        }
        kept.take(new)
    } else {
        None
    };
    if let Some(dest) = dest {
        // The block's pages move to the front of the free range; the rest stays resident.
        // SAFETY: both are our mappings; the destination range is free.
        let moved = unsafe {
            libc::mremap(
                block.cast(),
                old,
                old,
                libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED,
                dest as *mut libc::c_void,
            )
        };
        if moved != libc::MAP_FAILED {
            return dest as *mut u8;
        }
        // A block made of ranges of several mappings cannot be moved. The failed call
        // may have unmapped the destination: map it again, then copy.
        // SAFETY: `dest..dest + new` is ours and free; the copy covers the old block.
        unsafe {
            let again = libc::mmap(
                dest as *mut libc::c_void,
                new,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                -1,
                0,
            );
            if again == libc::MAP_FAILED {
                return ptr::null_mut();
            }
            ptr::copy_nonoverlapping(block, dest as *mut u8, old);
            large_free(block, old);
        }
        return dest as *mut u8;
    }
    // SAFETY: the block is ours; the kernel moves it if it cannot grow in place, keeping
    // its contents and its advice.
    let moved = unsafe { libc::mremap(block.cast(), old, new, libc::MREMAP_MAYMOVE) };
    if moved != libc::MAP_FAILED {
        return moved.cast();
    }
    // As above: a block spanning mappings is copied into a fresh one.
    let fresh = map(new);
    if !fresh.is_null() {
        // SAFETY: both blocks are ours and at least `old` long.
        unsafe {
            ptr::copy_nonoverlapping(block, fresh, old);
            large_free(block, old);
        }
    }
    fresh
}

fn is_large(size: usize, align: usize) -> bool {
    size >= LARGE_BYTES && align <= PAGE_BYTES
}

fn mapped_len(size: usize) -> usize {
    size.next_multiple_of(PAGE_BYTES)
}

/// A fresh zeroed mapping of `size` bytes (page-rounded), or null.
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
            large_alloc(mapped_len(layout.size()))
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
            // SAFETY: the block is a large block of this length, no longer used.
            unsafe { large_free(block, mapped_len(layout.size())) };
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
                let (old, new) = (mapped_len(layout.size()), mapped_len(new_size));
                if new <= old {
                    if new < old {
                        // SAFETY: the tail is ours and beyond what the caller keeps.
                        unsafe { large_free(block.add(new), old - new) };
                    }
                    return block;
                }
                // SAFETY: a large block of `old` bytes, growing.
                unsafe { large_grow(block, old, new) }
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
    fn free_ranges_are_cut_best_fit_merged_and_bounded() {
        use super::{Warm, WARM_MAX_BYTES, WARM_SLOTS};
        const M: usize = 1 << 20;
        let mut w = Warm { ranges: [(0, 0); WARM_SLOTS], len: 0, used: None };
        assert_eq!(w.take(M), None);
        assert!(w.give(100 * M, 8 * M));
        assert!(w.give(200 * M, 16 * M));
        assert_eq!(w.bytes(), 24 * M);
        // Smallest that fits; cut from its front.
        assert_eq!(w.take(4 * M), Some(100 * M));
        assert_eq!(w.bytes(), 20 * M);
        // Growing in place: only the range starting right at the block's end.
        assert!(!w.take_at(100 * M, M));
        assert!(!w.take_at(104 * M, 5 * M));
        assert!(w.take_at(104 * M, 4 * M));
        assert_eq!(w.len, 1);
        // Freed blocks merge with both neighbours into one range.
        assert!(w.give(100 * M, 4 * M));
        assert!(w.give(108 * M, 92 * M));
        assert!(w.give(104 * M, 4 * M));
        assert_eq!((w.len, w.ranges[0], w.bytes()), (1, (100 * M, 116 * M), 116 * M));
        // The byte limit and the slot limit refuse (the caller unmaps).
        assert!(!w.give(1000 * M, WARM_MAX_BYTES));
        for i in 1..WARM_SLOTS {
            assert!(w.give(1000 * M + i * 2 * M, M));
        }
        assert!(!w.give(3000 * M, M));
        assert_eq!(w.take(116 * M), Some(100 * M));
        assert_eq!(w.len, WARM_SLOTS - 1);
    }

    #[test]
    fn kept_blocks_are_reused_and_grown_with_their_contents() {
        super::start_trimmer().unwrap();
        super::start_trimmer().unwrap();
        // Each round frees its blocks into the free ranges the next one is cut from (other
        // tests allocate meanwhile, so no address is asserted), growing in place, into a
        // range, and by the kernel, and shrinking.
        for round in 0..4usize {
            let mut v: Vec<u8> = Vec::with_capacity(4 << 20);
            for i in 0..((24 + round) << 20) {
                v.push((i + round) as u8);
            }
            let w: Vec<u8> = vec![7; 5 << 20];
            assert!(v.iter().enumerate().all(|(i, &b)| b == (i + round) as u8));
            v.truncate(5 << 20);
            v.shrink_to_fit();
            assert!(v.iter().enumerate().all(|(i, &b)| b == (i + round) as u8));
            assert!(w.iter().all(|&b| b == 7));
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
