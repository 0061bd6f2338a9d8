//! The disk spool of one process's output (issue 15), and the account of what was lost.
//! Chunks evicted from the in-memory window (retention.rs) are appended as records to a ring
//! file of at most `--spool-bytes-per-process` bytes, created unlinked in `--spool-dir`, so
//! that `process/read` can page back through them; a full ring drops its oldest block, and
//! the daemon-wide `--spool-bytes-total` budget is shared through one counter. Whatever is
//! not kept — spool off, full or broken — moves `dropped_through`, which `process/read`
//! reports as `droppedBeforeSeq`. Kept chunks are always the newest ones, so one number
//! describes every loss.
//!
//! It owns the spool directory (creation, ownership check, stale files), the byte budget
//! and the file I/O. It takes no lock and knows nothing of requests: its caller holds the
//! process's state lock around every method, and reads the file through a `Plan` without it.

use std::collections::VecDeque;
use std::fs::{DirBuilder, File, OpenOptions};
use std::io;
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::wire::Stream;
use crate::config::Config;
use crate::recycle;

/// Bytes before each record's payload: seq (u64 LE), payload length (u32 LE), stream (u8),
/// three reserved bytes.
const HEADER_BYTES: usize = 16;
/// Records are grouped into blocks of at least this many bytes: the in-memory index has one
/// entry per block (so tiny chunks cost no memory per chunk), and a full ring drops its
/// oldest block whole.
const BLOCK_BYTES: u64 = 64 << 10;
/// Most payload one `process/read` page carries from the spool, whatever `maxBytes` asks:
/// it bounds what a read holds in memory (the bytes, their base64, the response text).
pub(super) const PAGE_BYTES: u64 = 4 << 20;
/// Most entries one spool indexes (about 160 KiB): normally one per 64 KiB block, but a
/// session that keeps detaching and resuming splits them with gaps; beyond this, the
/// oldest are dropped.
const MAX_ENTRIES: usize = 4096;
/// Most chunks in one page from the spool: with tiny chunks, what bounds a page's memory is
/// their number, not their bytes.
const PAGE_CHUNKS: usize = 4096;
/// What the first read of a page fetches beyond the page itself: the records of the first
/// block that precede `afterSeq`, and the record that may end the page.
const READ_SLACK_BYTES: u64 = 4 * BLOCK_BYTES;
/// Named spool files (only where the filesystem lacks O_TMPFILE) are
/// `exec-server-<daemon pid>-<n>.spool`, unlinked right after creation.
const FILE_PREFIX: &str = "exec-server-";
const FILE_SUFFIX: &str = ".spool";

/// Spool bytes in use over all processes of the daemon (`--spool-bytes-total`).
static SPOOLED_BYTES: AtomicU64 = AtomicU64::new(0);

/// At start: creates the spool directory (0700, ours) and removes the spool files a previous
/// run left behind (a crash between creating and unlinking one). Failure only costs the
/// spool: each process then logs it once and keeps its output in memory.
pub fn prepare(config: &Config) {
    if config.spool_bytes_per_process == 0 || config.spool_bytes_total == 0 {
        return;
    }
    let dir = &config.spool_dir;
    match prepare_dir(dir).and_then(|()| remove_stale(dir)) {
        Ok(0) => {}
        Ok(n) => log::info!("removed {n} stale spool files from {}", dir.display()),
        Err(e) => log::warn!(
            "spool directory {}: {e}; output beyond the retained window will be dropped",
            dir.display()
        ),
    }
}

/// Creates `dir` if missing and checks that it is a real directory of ours, closed to
/// others (tightening its mode if needed).
fn prepare_dir(dir: &Path) -> io::Result<()> {
    DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    let meta = std::fs::symlink_metadata(dir)?;
    if !meta.is_dir() {
        return Err(io::Error::other("not a directory"));
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let uid = unsafe { libc::geteuid() };
    if meta.uid() != uid {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("owned by uid {}, not {uid}", meta.uid()),
        ));
    }
    if meta.mode() & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// Removes named spool files whose daemon is gone; returns how many.
fn remove_stale(dir: &Path) -> io::Result<usize> {
    let mut removed = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(spool_file_pid) else { continue };
        if pid == std::process::id() || alive(pid) {
            continue;
        }
        match std::fs::remove_file(entry.path()) {
            Ok(()) => removed += 1,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io::Error::new(e.kind(), format!("{}: {e}", name.display()))),
        }
    }
    Ok(removed)
}

/// The daemon pid in a spool file name `exec-server-<pid>-<n>.spool`.
fn spool_file_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(FILE_PREFIX)?.strip_suffix(FILE_SUFFIX)?;
    let (pid, n) = rest.split_once('-')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    (digits(pid) && digits(n)).then(|| pid.parse().ok()).flatten()
}

fn alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else { return false };
    // SAFETY: signal 0 only checks that the process exists.
    unsafe { libc::kill(pid, 0) == 0 || *libc::__errno_location() == libc::EPERM }
}

/// A new spool file in `dir` that has no name: O_TMPFILE, or a named file unlinked at once
/// where the filesystem lacks it. The directory is checked first, every time: it may have
/// been removed or replaced since start.
fn create_file(dir: &Path) -> io::Result<File> {
    prepare_dir(dir)?;
    let unnamed = OpenOptions::new()
        .read(true)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_TMPFILE | libc::O_CLOEXEC)
        .open(dir);
    match unnamed {
        // Kernels or filesystems without O_TMPFILE.
        Err(e) if matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP | libc::EISDIR)) => {}
        other => return other,
    }
    static NEXT_NAME: AtomicU64 = AtomicU64::new(1);
    let n = NEXT_NAME.fetch_add(1, Ordering::Relaxed);
    let path = dir.join(format!("{FILE_PREFIX}{}-{n}{FILE_SUFFIX}", std::process::id()));
    let file =
        OpenOptions::new().read(true).write(true).create_new(true).mode(0o600).open(&path)?;
    std::fs::remove_file(&path)?;
    Ok(file)
}

fn stream_code(stream: Stream) -> u8 {
    match stream {
        Stream::Stdout => 0,
        Stream::Stderr => 1,
        Stream::Pty => 2,
    }
}

fn stream_of(code: u8) -> Option<Stream> {
    match code {
        0 => Some(Stream::Stdout),
        1 => Some(Stream::Stderr),
        2 => Some(Stream::Pty),
        _ => None,
    }
}

/// A stretch of output chunks, in seq order: either records kept in the file at logical
/// offsets `start..end` (a logical offset `x` lives at `x % capacity`), or a gap of chunks
/// that were not kept (`start == end`): delivered live while attached, or lost.
struct Entry {
    last_seq: u64,
    start: u64,
    end: u64,
    kept: bool,
}

/// The spool of one process. Logical offsets only grow: `head` is where the next record
/// goes, the oldest kept entry starts at the tail, and `head - tail <= capacity`.
pub(super) struct Spool {
    dir: PathBuf,
    /// Ring size (`--spool-bytes-per-process`); 0 = no spool.
    capacity: u64,
    /// The daemon-wide budget (`--spool-bytes-total`).
    total: u64,
    /// The child's pid, for the one warning.
    pid: libc::pid_t,
    /// Created at the first spill: a process whose reader keeps up never needs one.
    file: Option<Arc<File>>,
    /// Creating or writing the file failed: memory-only from then on.
    broken: bool,
    /// Oldest first; the first is always kept and no two gaps touch (a gap that becomes
    /// the oldest moves into `dropped_through`), so gaps never outnumber kept entries.
    entries: VecDeque<Entry>,
    head: u64,
    /// Every output chunk up to this seq is gone (0 = none); every entry is above it.
    dropped_through: u64,
}

impl Spool {
    pub(super) fn new(config: &Config, pid: libc::pid_t) -> Spool {
        Spool {
            dir: config.spool_dir.clone(),
            capacity: config.spool_bytes_per_process,
            total: config.spool_bytes_total,
            pid,
            file: None,
            broken: false,
            entries: VecDeque::new(),
            head: 0,
            dropped_through: 0,
        }
    }

    fn tail(&self) -> u64 {
        self.entries.front().map_or(self.head, |e| e.start)
    }

    /// Takes a chunk evicted from memory: a chunk its reader already got as a notification
    /// is only noted as a gap; any other is written, or noted as lost. Never blocks on
    /// anything but the write itself, and never fails: a spool that cannot be written is
    /// given up.
    pub(super) fn spill(&mut self, seq: u64, stream: Stream, bytes: &[u8], delivered: bool) {
        let len = (HEADER_BYTES + bytes.len()) as u64;
        if delivered || self.broken || len > self.capacity {
            self.skip(seq);
            return;
        }
        while self.head + len - self.tail() > self.capacity {
            self.drop_oldest();
        }
        if !self.reserve(len) {
            self.skip(seq);
            return;
        }
        let file = match &self.file {
            Some(file) => Arc::clone(file),
            None => match create_file(&self.dir) {
                Ok(file) => Arc::clone(self.file.insert(Arc::new(file))),
                Err(e) => {
                    release(len);
                    self.fail(&e);
                    self.skip(seq);
                    return;
                }
            },
        };
        let mut header = [0u8; HEADER_BYTES];
        header[..8].copy_from_slice(&seq.to_le_bytes());
        header[8..12].copy_from_slice(&(bytes.len() as u32).to_le_bytes());
        header[12] = stream_code(stream);
        if let Err(e) = write_at(&file, self.capacity, self.head, &[&header, bytes]) {
            release(len);
            self.fail(&e);
            self.skip(seq);
            return;
        }
        match self.entries.back_mut() {
            Some(e) if e.kept && e.end - e.start < BLOCK_BYTES => {
                e.end += len;
                e.last_seq = seq;
            }
            _ => self.entries.push_back(Entry {
                last_seq: seq,
                start: self.head,
                end: self.head + len,
                kept: true,
            }),
        }
        self.head += len;
        if self.entries.len() > MAX_ENTRIES {
            self.drop_oldest();
        }
    }

    /// Chunk `seq` is not kept.
    fn skip(&mut self, seq: u64) {
        match self.entries.back_mut() {
            None => self.dropped_through = self.dropped_through.max(seq),
            Some(e) if !e.kept => e.last_seq = seq,
            Some(_) => self.entries.push_back(Entry {
                last_seq: seq,
                start: self.head,
                end: self.head,
                kept: false,
            }),
        }
    }

    /// Takes `len` bytes of the daemon-wide budget, dropping this spool's oldest entries
    /// while the budget is spent; false when even an empty spool does not fit.
    fn reserve(&mut self, len: u64) -> bool {
        loop {
            let taken = SPOOLED_BYTES.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |used| {
                (used + len <= self.total).then_some(used + len)
            });
            if taken.is_ok() {
                return true;
            }
            if self.entries.is_empty() {
                return false;
            }
            self.drop_oldest();
        }
    }

    /// Drops the oldest kept entry, and the gap after it.
    fn drop_oldest(&mut self) {
        if let Some(e) = self.entries.pop_front() {
            release(e.end - e.start);
            self.dropped_through = self.dropped_through.max(e.last_seq);
        }
        while let Some(gap) = self.entries.front().filter(|e| !e.kept) {
            self.dropped_through = self.dropped_through.max(gap.last_seq);
            self.entries.pop_front();
        }
    }

    /// Gives the spool up after an I/O error (one warning per process): what it held is
    /// dropped, and retention is memory-only from now on.
    pub(super) fn fail(&mut self, error: &io::Error) {
        if !self.broken {
            log::warn!(
                pid = self.pid;
                "process {}: output spool in {} failed: {error}; keeping output in memory \
                 only, older output is dropped",
                self.pid,
                self.dir.display()
            );
        }
        self.broken = true;
        self.file = None;
        while !self.entries.is_empty() {
            self.drop_oldest();
        }
    }

    /// The first entry with chunks after `after_seq`, and the end of the gap in front of
    /// it (or of a trailing gap) when output after `after_seq` is gone there.
    fn locate(&self, after_seq: u64) -> (usize, Option<u64>) {
        let mut gap_through = (after_seq < self.dropped_through).then_some(self.dropped_through);
        let mut i = self.entries.partition_point(|e| e.last_seq <= after_seq);
        if let Some(gap) = self.entries.get(i).filter(|e| !e.kept) {
            gap_through = Some(gap.last_seq);
            i += 1;
        }
        (i, gap_through)
    }

    /// `droppedBeforeSeq` for a read after `after_seq`: present when output in the asked
    /// range is gone; every output chunk with `after_seq < seq < N` was not kept. The
    /// spool's gaps end where memory or the next kept entry begins, so a page that reports
    /// one starts right after it.
    pub(super) fn dropped_before(&self, after_seq: u64) -> Option<u64> {
        self.locate(after_seq).1.map(|through| through + 1)
    }

    /// What to read for a page after `after_seq`, if the spool keeps chunks beyond it: the
    /// kept entries from there up to the next gap.
    pub(super) fn plan(&self, after_seq: u64, max_bytes: Option<u64>) -> Option<Plan> {
        let (i, _) = self.locate(after_seq);
        let first = self.entries.get(i)?;
        let end = self.entries.range(i..).find(|e| !e.kept).map_or(self.head, |gap| gap.start);
        Some(Plan {
            file: self.file.clone()?,
            capacity: self.capacity,
            start: first.start,
            end,
            after_seq,
            budget: max_bytes.unwrap_or(PAGE_BYTES).min(PAGE_BYTES),
        })
    }

    /// True while nothing `plan` covers has been dropped (and so possibly overwritten).
    pub(super) fn holds(&self, plan: &Plan) -> bool {
        self.tail() <= plan.start
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        // The file, unlinked, goes with its last descriptor.
        release(self.head - self.tail());
    }
}

fn release(len: u64) {
    SPOOLED_BYTES.fetch_sub(len, Ordering::SeqCst);
}

/// Writes `parts` at logical offset `at` of a ring of `capacity` bytes: one `pwritev` per
/// contiguous stretch (two where the record wraps), retried on short writes.
fn write_at(file: &File, capacity: u64, mut at: u64, parts: &[&[u8]]) -> io::Result<()> {
    let mut part = 0;
    let mut done = 0;
    while part < parts.len() {
        let offset = at % capacity;
        let room = (capacity - offset) as usize;
        let mut iov = [libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 }; 4];
        let (mut count, mut len) = (0, 0);
        let (mut p, mut d) = (part, done);
        while p < parts.len() && len < room && count < iov.len() {
            let piece = &parts[p][d..];
            let take = piece.len().min(room - len);
            iov[count] = libc::iovec { iov_base: piece.as_ptr() as *mut _, iov_len: take };
            count += 1;
            len += take;
            if take == piece.len() {
                (p, d) = (p + 1, 0);
            } else {
                d += take;
            }
        }
        // SAFETY: `count` iovecs over live slices, on a descriptor we own.
        let wrote = unsafe {
            libc::pwritev(file.as_raw_fd(), iov.as_ptr(), count as libc::c_int, offset as i64)
        };
        if wrote < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if wrote == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        let mut wrote = wrote as usize;
        at += wrote as u64;
        while wrote > 0 {
            let left = parts[part].len() - done;
            if wrote >= left {
                wrote -= left;
                (part, done) = (part + 1, 0);
            } else {
                done += wrote;
                wrote = 0;
            }
        }
        while part < parts.len() && parts[part].len() == done {
            (part, done) = (part + 1, 0);
        }
    }
    Ok(())
}

/// Fills `buf` from logical offset `at` of a ring of `capacity` bytes.
/// Appends `len` bytes from logical offset `at` of a ring of `capacity` bytes to `buf`,
/// `pread` straight into its spare room (no zeroing first: pages are 4 MiB).
fn append_at(file: &File, capacity: u64, at: u64, len: usize, buf: &mut Vec<u8>) -> io::Result<()> {
    buf.reserve(len);
    let mut done = 0;
    while done < len {
        let offset = (at + done as u64) % capacity;
        let want = (len - done).min((capacity - offset) as usize);
        let room = &mut buf.spare_capacity_mut()[..want];
        // SAFETY: `room` is `want` writable bytes of `buf`'s spare capacity; pread writes at
        // most that many, on a descriptor we own.
        let got =
            unsafe { libc::pread(file.as_raw_fd(), room.as_mut_ptr().cast(), want, offset as i64) };
        if got < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if got == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        // SAFETY: pread initialized the `got` bytes after the current length.
        unsafe { buf.set_len(buf.len() + got as usize) };
        done += got as usize;
    }
    Ok(())
}

/// A page to read from the spool without the state lock; `Spool::holds` tells afterwards
/// whether what it read was still intact.
pub(super) struct Plan {
    file: Arc<File>,
    capacity: u64,
    /// Logical offsets of the first candidate block and of the spool's end.
    start: u64,
    end: u64,
    after_seq: u64,
    /// Payload budget under the §4.3 `maxBytes` rule, capped at `PAGE_BYTES`.
    budget: u64,
}

/// Chunks read from the spool: their payloads are ranges of `bytes`.
pub(super) struct Page {
    pub(super) bytes: Vec<u8>,
    pub(super) chunks: Vec<(u64, Stream, Range<usize>)>,
}

/// A page's buffer serves the next page (a fresh 4 MiB mapping per page cost a fault per
/// 4 KiB page).
impl Drop for Page {
    fn drop(&mut self) {
        recycle::give(std::mem::take(&mut self.bytes));
    }
}

impl Plan {
    /// The chunks after `after_seq` under the `maxBytes` rule (the first is always
    /// included), usually with one `pread` for the whole page.
    pub(super) fn read(&self) -> io::Result<Page> {
        let span = self.end - self.start;
        let first = span.min(self.budget + READ_SLACK_BYTES) as usize;
        let mut page = Page { bytes: recycle::buffer(first), chunks: Vec::new() };
        append_at(&self.file, self.capacity, self.start, first, &mut page.bytes)?;
        let (mut pos, mut total, mut last_seq) = (0usize, 0u64, 0u64);
        while self.start + (pos as u64) < self.end {
            self.fill(&mut page.bytes, pos + HEADER_BYTES)?;
            let header = &page.bytes[pos..pos + HEADER_BYTES];
            let seq = u64::from_le_bytes(header[..8].try_into().expect("8 bytes"));
            let len = u32::from_le_bytes(header[8..12].try_into().expect("4 bytes")) as usize;
            let stream = stream_of(header[12]);
            let (Some(stream), true) = (stream, seq > last_seq) else {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("corrupt spool record at offset {}", self.start + pos as u64),
                ));
            };
            last_seq = seq;
            let payload = pos + HEADER_BYTES..pos + HEADER_BYTES + len;
            pos = payload.end;
            if seq <= self.after_seq {
                continue;
            }
            let full = total >= self.budget
                || total + len as u64 > self.budget
                || page.chunks.len() == PAGE_CHUNKS
                || payload.end as u64 > self.budget + READ_SLACK_BYTES;
            if full && !page.chunks.is_empty() {
                break;
            }
            self.fill(&mut page.bytes, payload.end)?;
            total += len as u64;
            page.chunks.push((seq, stream, payload));
        }
        Ok(page)
    }

    /// Extends `buf` (which holds the spool from `start`) to at least `need` bytes.
    fn fill(&self, buf: &mut Vec<u8>, need: usize) -> io::Result<()> {
        if need <= buf.len() {
            return Ok(());
        }
        let span = (self.end - self.start) as usize;
        if need > span {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("spool record runs past the end at offset {}", self.end),
            ));
        }
        let have = buf.len();
        let want = need.max(have + self.budget as usize).min(span);
        append_at(&self.file, self.capacity, self.start + have as u64, want - have, buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("spool-unit-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    fn spool(dir: &Path, capacity: u64, total: u64) -> Spool {
        let config = Config {
            spool_dir: dir.to_path_buf(),
            spool_bytes_per_process: capacity,
            spool_bytes_total: total,
            ..Config::default()
        };
        Spool::new(&config, 0)
    }

    fn payload(seq: u64, len: usize) -> Vec<u8> {
        (0..len).map(|i| (seq as usize * 31 + i * 7) as u8).collect()
    }

    /// Every page from `after`, following `nextSeq` like a client: (seq, bytes) in order.
    fn read_all(s: &Spool, mut after: u64, max: Option<u64>) -> Vec<(u64, Vec<u8>)> {
        let mut out = Vec::new();
        while let Some(plan) = s.plan(after, max) {
            let page = plan.read().expect("spool reads");
            assert!(s.holds(&plan));
            assert!(!page.chunks.is_empty());
            for (seq, _, range) in &page.chunks {
                out.push((*seq, page.bytes[range.clone()].to_vec()));
                after = *seq;
            }
        }
        out
    }

    #[test]
    fn chunks_come_back_exact_across_the_wrap() {
        let dir = temp_dir("wrap");
        // Room for about four 100-byte records: the ring wraps many times.
        let mut s = spool(&dir, 500, u64::MAX / 2);
        for seq in 1..=40 {
            s.spill(
                seq,
                if seq % 3 == 0 { Stream::Stderr } else { Stream::Stdout },
                &payload(seq, 84 + (seq as usize % 5)),
                false,
            );
        }
        let kept = read_all(&s, 0, None);
        let seqs: Vec<u64> = kept.iter().map(|(seq, _)| *seq).collect();
        assert_eq!(*seqs.last().expect("some kept"), 40);
        for (seq, bytes) in &kept {
            assert_eq!(*bytes, payload(*seq, 84 + (*seq as usize % 5)), "seq {seq}");
        }
        // Whole blocks are dropped, the oldest first, and the loss is explicit.
        let first = seqs[0];
        assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1));
        assert_eq!(s.dropped_before(0), Some(first));
        assert_eq!(s.dropped_before(first - 1), None);
        assert_eq!(read_all(&s, 38, None).iter().map(|c| c.0).collect::<Vec<_>>(), [39, 40]);
        // maxBytes pages: the first chunk always, then stop before going over.
        let plan = s.plan(0, Some(1)).expect("plan");
        assert_eq!(plan.read().expect("reads").chunks.len(), 1);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn many_small_chunks_page_in_order() {
        let dir = temp_dir("small");
        let mut s = spool(&dir, 8 << 20, u64::MAX / 2);
        for seq in 1..=50_000u64 {
            s.spill(seq, Stream::Pty, &payload(seq, 1 + seq as usize % 40), false);
        }
        assert_eq!(s.dropped_before(0), None);
        // One index entry per 64 KiB block, not per chunk.
        assert!(s.entries.len() < 30, "{} entries", s.entries.len());
        let kept = read_all(&s, 0, Some(100_000));
        assert_eq!(kept.len(), 50_000);
        for (i, (seq, bytes)) in kept.iter().enumerate() {
            assert_eq!(*seq, i as u64 + 1);
            assert_eq!(*bytes, payload(*seq, 1 + *seq as usize % 40));
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn delivered_chunks_are_gaps_that_pages_stop_at() {
        let dir = temp_dir("gaps");
        let mut s = spool(&dir, 1 << 20, u64::MAX / 2);
        // 1-3 kept, 4-6 went out as notifications, 7-8 kept, 9 delivered, memory from 10.
        for seq in 1..=9 {
            s.spill(seq, Stream::Stdout, &payload(seq, 10), matches!(seq, 4..=6 | 9));
        }
        assert_eq!(s.entries.len(), 4);
        let page = |s: &Spool, after| {
            let plan = s.plan(after, None)?;
            Some(plan.read().expect("reads").chunks.iter().map(|c| c.0).collect::<Vec<_>>())
        };
        assert_eq!((page(&s, 0), s.dropped_before(0)), (Some(vec![1, 2, 3]), None));
        assert_eq!((page(&s, 3), s.dropped_before(3)), (Some(vec![7, 8]), Some(7)));
        assert_eq!((page(&s, 5), s.dropped_before(5)), (Some(vec![7, 8]), Some(7)));
        assert_eq!((page(&s, 6), s.dropped_before(6)), (Some(vec![7, 8]), None));
        assert_eq!((page(&s, 8), s.dropped_before(8)), (None, Some(10)));
        assert_eq!((page(&s, 9), s.dropped_before(9)), (None, None));
        // Dropping the oldest entry takes the gap behind it into the floor.
        s.drop_oldest();
        assert_eq!(s.dropped_through, 6);
        assert_eq!((page(&s, 0), s.dropped_before(0)), (Some(vec![7, 8]), Some(7)));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn off_or_over_budget_loses_and_says_so() {
        let dir = temp_dir("off");
        let mut off = spool(&dir, 0, u64::MAX / 2);
        off.spill(3, Stream::Stdout, b"abc", false);
        off.spill(4, Stream::Stdout, b"def", false);
        assert!(off.plan(0, None).is_none());
        assert_eq!(off.dropped_before(0), Some(5));
        assert_eq!(off.dropped_before(4), None);
        // A total budget below one record: nothing fits, every chunk is lost.
        let mut tight = spool(&dir, 1 << 20, 10);
        tight.spill(1, Stream::Stdout, b"abc", false);
        assert_eq!(tight.dropped_before(0), Some(2));
        assert!(!dir.exists(), "no file was needed");
    }

    #[test]
    fn an_unusable_directory_gives_up_once() {
        let base = temp_dir("broken");
        std::fs::create_dir_all(&base).expect("mkdir");
        let file = base.join("file");
        std::fs::write(&file, b"x").expect("write");
        let mut s = spool(&file.join("spool"), 1 << 20, u64::MAX / 2);
        s.spill(1, Stream::Stdout, b"abc", false);
        assert!(s.broken);
        s.spill(2, Stream::Stdout, b"def", false);
        assert_eq!(s.dropped_before(0), Some(3));
        assert!(s.plan(0, None).is_none());
        let _ = std::fs::remove_dir_all(&base);
    }

    #[test]
    fn the_directory_is_private_and_stale_files_go() {
        let dir = temp_dir("stale");
        prepare_dir(&dir).expect("created");
        assert_eq!(std::fs::metadata(&dir).expect("exists").mode() & 0o777, 0o700);
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        prepare_dir(&dir).expect("tightened");
        assert_eq!(std::fs::metadata(&dir).expect("exists").mode() & 0o777, 0o700);
        // pid_max is at most 2^22: this daemon is gone.
        let stale = dir.join("exec-server-99999999-3.spool");
        let ours = dir.join(format!("exec-server-{}-1.spool", std::process::id()));
        let other = dir.join("exec-server-notes.txt");
        for path in [&stale, &ours, &other] {
            std::fs::write(path, b"x").expect("write");
        }
        assert_eq!(remove_stale(&dir).expect("scans"), 1);
        assert!(!stale.exists() && ours.exists() && other.exists());
        assert_eq!(spool_file_pid("exec-server-12-3.spool"), Some(12));
        assert_eq!(spool_file_pid("exec-server-12-.spool"), None);
        assert_eq!(spool_file_pid("exec-server-x-1.spool"), None);
        let link = temp_dir("link");
        std::os::unix::fs::symlink(&dir, &link).expect("symlink");
        assert!(prepare_dir(&link).is_err(), "a symlink is not our directory");
        let _ = std::fs::remove_file(&link);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn vectored_writes_wrap_exactly() {
        let dir = temp_dir("pwritev");
        prepare_dir(&dir).expect("created");
        let file = create_file(&dir).expect("file");
        assert_eq!(std::fs::read_dir(&dir).expect("lists").count(), 0, "the file has no name");
        let capacity = 37;
        // 7 bytes before the end of the ring, 23 from its start; the wrap falls inside `a`.
        let a: Vec<u8> = (0..12).collect();
        let b: Vec<u8> = (100..118).collect();
        write_at(&file, capacity, 30, &[&a, &b]).expect("writes");
        let mut back = Vec::new();
        append_at(&file, capacity, 30, 30, &mut back).expect("reads");
        assert_eq!(back, [a, b].concat());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
