//! The filesystem methods of PROTOCOL.md §6: the seven `fs/*` handlers, the §6.1 error
//! mapping and the §6.9 sandbox gate; their wire types are in wire.rs (paths decode through
//! `crate::uri`, `file:` URIs or native absolute paths), `fs/copy`'s file work in copy.rs,
//! `fs/writeFile`'s atomic replacement in atomic.rs; the v2 methods each have a file:
//! canonicalize.rs, walk.rs, handles.rs (`fs/open` family), watch.rs (`fs/watchMissing`),
//! and confined.rs routes calls that carry a sandbox. Each handler is a plain
//! blocking function run on a pool worker; this module owns no threads, no sessions and no
//! sockets, imports nothing of `rpc`, and never decides anything from an error's message text.

mod atomic;
pub mod canonicalize;
pub mod confined;
mod copy;
pub mod handles;
pub mod walk;
pub mod watch;
mod wire;

use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::b64;
use crate::error::RpcError;
pub use atomic::set_fsync_writes;
use atomic::Content as _;
use copy::{canonicalize_nearest, copy_file, copy_symlink, copy_tree};
#[cfg(test)]
pub use wire::ReadFileResponse;
pub use wire::{
    CopyParams, CreateDirectoryParams, Empty, GetMetadataParams, GetMetadataResponse,
    ReadDirectoryEntry, ReadDirectoryParams, ReadDirectoryResponse, ReadFileParams, RemoveParams,
    WriteFileParams,
};

/// `fs/readFile` refuses files larger than this (§10): the file's base64 text and then the
/// response frame are held in memory whole.
pub const READ_LIMIT_BYTES: u64 = 512 << 20;

/// `fs/readFile` reads and encodes in chunks of this size: a multiple of 3 (so chunks
/// encode without padding) small enough to stay in cache between the read and the encode.
const READ_CHUNK_BYTES: usize = 3 << 16;
const SANDBOX_REFUSED: &str = "sandboxed filesystem operations are not supported by this executor";
const COPY_DIR_NEEDS_RECURSIVE: &str =
    "fs/copy requires recursive: true when sourcePath is a directory";
const COPY_INTO_ITSELF: &str =
    "fs/copy cannot copy a directory to itself or one of its descendants";
const COPY_UNSUPPORTED: &str = "fs/copy only supports regular files, directories, and symlinks";

/// §6.1: the code follows the error's kind, the message is the OS text as `io::Error`
/// displays it (`No such file or directory (os error 2)`).
fn io_error(err: io::Error) -> RpcError {
    let message = err.to_string();
    match err.kind() {
        io::ErrorKind::NotFound => RpcError::not_found(message),
        io::ErrorKind::InvalidInput | io::ErrorKind::PermissionDenied => {
            RpcError::invalid_request(message)
        }
        _ => RpcError::internal(message),
    }
}

/// §6.9 gate for calls that reach the handlers directly: an absent or unrestricted sandbox
/// runs; a restricted one is confined by `confined::run` (routed there by rpc), so reaching
/// here with one is refused. A malformed sandbox is the decoder's -32602.
fn check_sandbox(sandbox: Option<&serde_json::Value>) -> Result<(), RpcError> {
    if crate::sandbox::parse(sandbox)?.fs.is_none() {
        Ok(())
    } else {
        Err(RpcError::invalid_request(SANDBOX_REFUSED))
    }
}

#[cfg(test)]
pub fn read_file(p: ReadFileParams) -> Result<ReadFileResponse, RpcError> {
    let mut out = String::new();
    read_file_into(p, &mut out)?;
    let quoted = out.strip_prefix(r#"{"dataBase64":""#).and_then(|o| o.strip_suffix(r#""}"#));
    let data_base64 = quoted.expect("read_file_into writes one dataBase64 member").to_string();
    Ok(ReadFileResponse { data_base64 })
}

/// `fs/readFile`: appends the result, `{"dataBase64":"…"}`, to `out` (the response message
/// being built). The file is encoded as it is read, one cache-sized chunk at a time,
/// straight into the message after `out` has grown once to its final size: no buffer of
/// the whole file and no second copy of the text is ever made (a copy of a fresh buffer
/// costs a page fault per 4 KiB), and base64 needs no JSON escaping. On error `out` holds
/// a partial result and is to be dropped.
pub fn read_file_into(p: ReadFileParams, out: &mut String) -> Result<(), RpcError> {
    const HEAD: &str = r#"{"dataBase64":""#;
    const TAIL: &str = r#""}"#;
    check_sandbox(p.sandbox.as_ref())?;
    let mut file =
        open_nonblocking(p.path.as_path()?, File::options().read(true)).map_err(io_error)?;
    let len = file.metadata().map_err(io_error)?.len();
    if len > READ_LIMIT_BYTES {
        return Err(too_large());
    }
    // The limit also bounds files whose size says nothing (`/proc`, devices, a file
    // growing meanwhile): at most one chunk past it is read.
    let expected = usize::try_from(len).map_err(|_| too_large())?;
    let encoded = base64::encoded_len(expected, true).unwrap_or(0);
    // One byte more: the response's closing brace, which the caller appends.
    out.reserve(HEAD.len() + encoded + TAIL.len() + 1);
    out.push_str(HEAD);
    let mut chunk = vec![0; READ_CHUNK_BYTES];
    let mut total: u64 = 0;
    loop {
        let n = read_full(&mut file, &mut chunk).map_err(io_error)?;
        total += n as u64;
        if total > READ_LIMIT_BYTES {
            return Err(too_large());
        }
        // Every chunk but the last is full, and its length a multiple of 3, so the
        // encoded chunks concatenate to the encoding of the whole file.
        b64::encode_into(&chunk[..n], out);
        if n < chunk.len() {
            break;
        }
    }
    out.push_str(TAIL);
    Ok(())
}

/// Reads until `buf` is full or the end of the input; returns how much was read.
fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
    Ok(filled)
}

/// Opens with `O_NONBLOCK`, which regular files ignore, so that a FIFO or terminal at
/// `path` fails or reads what is there instead of holding a worker forever: opening a FIFO
/// for writing with no reader is `ENXIO`, reading one with no writer is end of file.
fn open_nonblocking(path: &Path, options: &mut fs::OpenOptions) -> io::Result<File> {
    options.custom_flags(libc::O_NONBLOCK).open(path)
}

fn too_large() -> RpcError {
    RpcError::invalid_request(format!(
        "file is too large to read: limit is {READ_LIMIT_BYTES} bytes"
    ))
}

pub fn write_file(p: WriteFileParams<'_>) -> Result<Empty, RpcError> {
    check_sandbox(p.sandbox.as_ref())?;
    let text = Base64Text(p.data_base64.as_bytes());
    let path = p.path.as_path();
    let written = path.and_then(|path| atomic::write_file(path, &text).map_err(io_error));
    // Bad base64 is the error, whatever else failed too (the text is checked before the
    // path, as before the write was streamed); only failures pay for the full check.
    written.map_err(|err| match text.check() {
        Err(bad) => RpcError::invalid_request(format!(
            "fs/writeFile requires valid base64 dataBase64: {bad}"
        )),
        Ok(()) => err,
    })?;
    Ok(Empty {})
}

/// `fs/writeFile`'s `dataBase64`, decoded one piece at a time as the file is written.
struct Base64Text<'a>(&'a [u8]);

impl Base64Text<'_> {
    /// Characters decoded per piece: a multiple of 4, so every piece but the last decodes
    /// on its own and only the last may hold padding (2 MiB of text, 1.5 MiB of bytes).
    const PIECE_CHARS: usize = 2 << 20;

    /// The whole text's verdict, with the base64 crate's error (offsets into the whole).
    fn check(&self) -> Result<(), base64::DecodeError> {
        self.pieces(&mut |_| Ok(())).or_else(|_| b64::decode(self.0, &mut Vec::new()))
    }
}

impl atomic::Content for Base64Text<'_> {
    fn pieces(&self, sink: &mut dyn FnMut(&[u8]) -> io::Result<()>) -> io::Result<()> {
        let mut bytes = Vec::with_capacity(Self::PIECE_CHARS / 4 * 3);
        for piece in self.0.chunks(Self::PIECE_CHARS) {
            bytes.clear();
            b64::decode(piece, &mut bytes)
                .map_err(|err| io::Error::new(io::ErrorKind::InvalidData, err))?;
            sink(&bytes)?;
        }
        Ok(())
    }
}

pub fn create_directory(p: CreateDirectoryParams) -> Result<Empty, RpcError> {
    check_sandbox(p.sandbox.as_ref())?;
    let path = p.path.as_path()?;
    if p.recursive.unwrap_or(true) {
        fs::create_dir_all(path).map_err(io_error)?;
    } else {
        fs::create_dir(path).map_err(io_error)?;
    }
    Ok(Empty {})
}

pub fn get_metadata(p: GetMetadataParams) -> Result<GetMetadataResponse, RpcError> {
    check_sandbox(p.sandbox.as_ref())?;
    let path = p.path.as_path()?;
    let link = fs::symlink_metadata(path).map_err(io_error)?;
    let meta = if link.file_type().is_symlink() {
        fs::metadata(path).map_err(io_error)?
    } else {
        link.clone()
    };
    Ok(GetMetadataResponse {
        is_directory: meta.is_dir(),
        is_file: meta.is_file(),
        is_symlink: link.file_type().is_symlink(),
        size: meta.len(),
        // Birth time is not recorded by every filesystem (nor returned by old kernels).
        created_at_ms: meta.created().map(unix_ms).unwrap_or(0),
        // `mtime_nsec` is never negative, so this floors times before the epoch too.
        modified_at_ms: meta.mtime() * 1000 + meta.mtime_nsec() / 1_000_000,
    })
}

/// Whole milliseconds since the Unix epoch, negative before it (floored, like `stat`'s seconds).
fn unix_ms(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_millis()).unwrap_or(i64::MAX),
        Err(before) => {
            let before = before.duration();
            let ms = i64::try_from(before.as_millis()).unwrap_or(i64::MAX);
            if before.as_nanos() % 1_000_000 == 0 {
                -ms
            } else {
                -ms - 1
            }
        }
    }
}

pub fn read_directory(p: ReadDirectoryParams) -> Result<ReadDirectoryResponse, RpcError> {
    check_sandbox(p.sandbox.as_ref())?;
    let mut entries = Vec::new();
    for entry in fs::read_dir(p.path.as_path()?).map_err(io_error)? {
        let entry = entry.map_err(io_error)?;
        // Follows symlinks; a dangling link (or an entry removed meanwhile) is skipped (§6).
        let Ok(meta) = fs::metadata(entry.path()) else {
            continue;
        };
        entries.push(ReadDirectoryEntry {
            file_name: entry.file_name().to_string_lossy().into_owned(),
            is_directory: meta.is_dir(),
            is_file: meta.is_file(),
        });
    }
    Ok(ReadDirectoryResponse { entries })
}

pub fn remove(p: RemoveParams) -> Result<Empty, RpcError> {
    check_sandbox(p.sandbox.as_ref())?;
    let path = p.path.as_path()?;
    let force = p.force.unwrap_or(true);
    let result = fs::symlink_metadata(path).and_then(|meta| {
        // `symlink_metadata` does not follow links, so a link to a directory is unlinked
        // here and its target is never touched.
        if !meta.file_type().is_dir() {
            fs::remove_file(path)
        } else if p.recursive.unwrap_or(true) {
            fs::remove_dir_all(path)
        } else {
            fs::remove_dir(path)
        }
    });
    match result {
        Err(err) if force && err.kind() == io::ErrorKind::NotFound => Ok(Empty {}),
        result => result.map(|()| Empty {}).map_err(io_error),
    }
}

pub fn copy(p: CopyParams) -> Result<Empty, RpcError> {
    check_sandbox(p.sandbox.as_ref())?;
    let source = p.source_path.as_path()?;
    let destination = p.destination_path.as_path()?;
    let kind = fs::symlink_metadata(source).map_err(io_error)?.file_type();
    if kind.is_dir() {
        if !p.recursive {
            return Err(RpcError::invalid_request(COPY_DIR_NEEDS_RECURSIVE));
        }
        let source_real = fs::canonicalize(source).map_err(io_error)?;
        let destination_real = canonicalize_nearest(destination).map_err(io_error)?;
        if destination_real.starts_with(&source_real) {
            return Err(RpcError::invalid_request(COPY_INTO_ITSELF));
        }
        copy_tree(source, destination).map_err(io_error)?;
    } else if kind.is_symlink() {
        copy_symlink(source, destination).map_err(io_error)?;
    } else if kind.is_file() {
        copy_file(source, destination).map_err(io_error)?;
    } else {
        return Err(RpcError::invalid_request(COPY_UNSUPPORTED));
    }
    Ok(Empty {})
}

#[cfg(test)]
mod tests;
