//! `fs/open`, `fs/readBlock`, `fs/writeBlock` and `fs/close` (PROTOCOL v2): files opened by
//! a client-chosen handle id and read or written a block at a time at explicit offsets
//! (`pread`/`pwrite`, so blocks of one handle need no shared cursor). `Handles` is one
//! session's table; the session owns it and every file closes when the table is dropped or
//! `close_all` runs. It owns no threads and never touches sockets.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use serde::{Deserialize, Deserializer, Serialize};

use super::{check_sandbox, io_error, Empty};
use crate::b64;
use crate::error::RpcError;
use crate::uri::AbsolutePath;

/// Open handles one session may hold at once (upstream's limit).
pub const MAX_OPEN_HANDLES: usize = 128;
/// The largest block one `fs/readBlock` returns or one `fs/writeBlock` carries.
pub const MAX_BLOCK_BYTES: usize = 1 << 20;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OpenParams {
    pub handle_id: String,
    pub path: AbsolutePath,
    #[serde(default)]
    pub mode: Mode,
    #[serde(default)]
    pub sandbox: Option<serde_json::Value>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Mode {
    /// Read an existing regular file.
    #[default]
    Read,
    /// Create or truncate the file and write it.
    Replace,
}

#[derive(Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OpenResponse {
    pub handle_id: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReadBlockParams {
    pub handle_id: String,
    pub offset: u64,
    pub len: u64,
}

#[derive(Debug, PartialEq, Eq, Serialize)]
pub struct ReadBlockResponse {
    /// Base64 of the bytes read.
    pub chunk: String,
    /// Fewer bytes than asked for were there: the end of the file.
    pub eof: bool,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WriteBlockParams {
    pub handle_id: String,
    pub offset: u64,
    /// Decoded while the params decode, so bad base64 is -32602 with the decoder's text
    /// (`Invalid symbol 33, offset 0.`), as upstream.
    #[serde(deserialize_with = "base64_bytes")]
    pub chunk: Vec<u8>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CloseParams {
    pub handle_id: String,
}

fn base64_bytes<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    let text = std::borrow::Cow::<str>::deserialize(d)?;
    let mut out = Vec::new();
    b64::decode(text.as_bytes(), &mut out).map_err(serde::de::Error::custom)?;
    Ok(out)
}

/// One session's open files by handle id.
#[derive(Default)]
pub struct Handles {
    files: Mutex<HashMap<String, Arc<File>>>,
}

impl Handles {
    pub fn new() -> Handles {
        Handles::default()
    }

    /// Closes every file (the session ended).
    pub fn close_all(&self) {
        self.lock().clear();
    }

    /// Open handles now.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Arc<File>>> {
        self.files.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn get(&self, id: &str) -> Result<Arc<File>, RpcError> {
        self.lock()
            .get(id)
            .cloned()
            .ok_or_else(|| RpcError::not_found(format!("unknown file handle `{id}`")))
    }
}

pub fn open(p: OpenParams, handles: &Handles) -> Result<OpenResponse, RpcError> {
    check_sandbox(p.sandbox.as_ref())?;
    check_room(&handles.lock(), &p.handle_id)?;
    let path = p.path.as_path()?;
    let file = match p.mode {
        Mode::Read => {
            // Checked before opening, so a FIFO is refused instead of blocking the open.
            if !fs::metadata(path).map_err(io_error)?.is_file() {
                return Err(RpcError::invalid_request(format!(
                    "path `{}` is not a file",
                    path.display()
                )));
            }
            File::options().read(true).custom_flags(libc::O_NONBLOCK).open(path)
        }
        Mode::Replace => File::options()
            .write(true)
            .create(true)
            .truncate(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path),
    }
    .map_err(io_error)?;
    let mut files = handles.lock();
    // Checked again: another request may have taken the id or the last slot meanwhile.
    check_room(&files, &p.handle_id)?;
    files.insert(p.handle_id.clone(), Arc::new(file));
    Ok(OpenResponse { handle_id: p.handle_id })
}

fn check_room(files: &HashMap<String, Arc<File>>, id: &str) -> Result<(), RpcError> {
    if files.contains_key(id) {
        return Err(RpcError::invalid_request(format!("file handle `{id}` already exists")));
    }
    if files.len() >= MAX_OPEN_HANDLES {
        return Err(RpcError::invalid_request(format!(
            "at most {MAX_OPEN_HANDLES} file handles may be open per connection"
        )));
    }
    Ok(())
}

pub fn read_block(p: ReadBlockParams, handles: &Handles) -> Result<ReadBlockResponse, RpcError> {
    let len = usize::try_from(p.len).ok().filter(|len| (1..=MAX_BLOCK_BYTES).contains(len));
    let Some(len) = len else {
        return Err(RpcError::invalid_request(format!(
            "file read block length must be between 1 and {MAX_BLOCK_BYTES}"
        )));
    };
    let file = handles.get(&p.handle_id)?;
    let mut buf = vec![0u8; len];
    let mut filled = 0;
    while filled < len {
        match file.read_at(&mut buf[filled..], p.offset.saturating_add(filled as u64)) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(io_error(err)),
        }
    }
    let mut chunk = String::new();
    b64::encode_into(&buf[..filled], &mut chunk);
    Ok(ReadBlockResponse { chunk, eof: filled < len })
}

pub fn write_block(p: WriteBlockParams, handles: &Handles) -> Result<Empty, RpcError> {
    if p.chunk.is_empty() || p.chunk.len() > MAX_BLOCK_BYTES {
        return Err(RpcError::invalid_request(format!(
            "file write block length must be between 1 and {MAX_BLOCK_BYTES}"
        )));
    }
    let file = handles.get(&p.handle_id)?;
    file.write_all_at(&p.chunk, p.offset).map_err(io_error)?;
    Ok(Empty {})
}

/// Closing an unknown handle is fine, as upstream.
pub fn close(p: CloseParams, handles: &Handles) -> Result<Empty, RpcError> {
    handles.lock().remove(&p.handle_id);
    Ok(Empty {})
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::{Path, PathBuf};

    fn dir(tag: &str) -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("exec-server-handles-{}-{tag}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    fn open_params(id: &str, path: &Path, mode: Mode) -> OpenParams {
        OpenParams {
            handle_id: id.into(),
            path: AbsolutePath::from_path(path),
            mode,
            sandbox: None,
        }
    }

    fn read(h: &Handles, id: &str, offset: u64, len: u64) -> Result<ReadBlockResponse, RpcError> {
        read_block(ReadBlockParams { handle_id: id.into(), offset, len }, h)
    }

    fn write(h: &Handles, id: &str, offset: u64, data: &[u8]) -> Result<Empty, RpcError> {
        write_block(WriteBlockParams { handle_id: id.into(), offset, chunk: data.to_vec() }, h)
    }

    #[test]
    fn reads_blocks_at_offsets_with_eof() {
        let d = dir("read");
        fs::write(d.join("ten"), b"abcdefghij").unwrap();
        let h = Handles::new();
        let opened = open(open_params("h1", &d.join("ten"), Mode::Read), &h).unwrap();
        assert_eq!(opened.handle_id, "h1");
        let block = |o, l| read(&h, "h1", o, l).unwrap();
        assert_eq!(block(0, 4), ReadBlockResponse { chunk: "YWJjZA==".into(), eof: false });
        assert_eq!(block(8, 4), ReadBlockResponse { chunk: "aWo=".into(), eof: true });
        assert_eq!(
            block(0, 10),
            ReadBlockResponse { chunk: "YWJjZGVmZ2hpag==".into(), eof: false }
        );
        assert_eq!(block(100, 4), ReadBlockResponse { chunk: "".into(), eof: true });
        let bad_len =
            RpcError::invalid_request("file read block length must be between 1 and 1048576");
        assert_eq!(read(&h, "h1", 0, 0).unwrap_err(), bad_len);
        assert_eq!(read(&h, "h1", 0, 1_048_577).unwrap_err(), bad_len);
        assert_eq!(read(&h, "nope", 0, 0).unwrap_err(), bad_len);
        assert_eq!(
            read(&h, "nope", 0, 3).unwrap_err(),
            RpcError::not_found("unknown file handle `nope`")
        );
        // A read handle cannot write: the OS says so.
        assert_eq!(
            write(&h, "h1", 0, b"x").unwrap_err(),
            RpcError::internal("Bad file descriptor (os error 9)")
        );
        let dup = open(open_params("h1", &d.join("ten"), Mode::Read), &h).unwrap_err();
        assert_eq!(dup, RpcError::invalid_request("file handle `h1` already exists"));
        close(CloseParams { handle_id: "h1".into() }, &h).unwrap();
        close(CloseParams { handle_id: "h1".into() }, &h).unwrap();
        assert_eq!(h.len(), 0);
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn replace_truncates_and_writes_at_offsets() {
        let d = dir("write");
        fs::write(d.join("out"), b"old content that is long").unwrap();
        let h = Handles::new();
        open(open_params("w", &d.join("out"), Mode::Replace), &h).unwrap();
        assert_eq!(fs::read(d.join("out")).unwrap(), b"");
        write(&h, "w", 0, b"hello").unwrap();
        write(&h, "w", 5, b" world").unwrap();
        write(&h, "w", 0, b"x").unwrap();
        write(&h, "w", 20, b"!").unwrap();
        let mut want = b"xello world".to_vec();
        want.resize(20, 0);
        want.push(b'!');
        assert_eq!(fs::read(d.join("out")).unwrap(), want);
        let empty = write(&h, "w", 0, b"").unwrap_err();
        assert_eq!(
            empty,
            RpcError::invalid_request("file write block length must be between 1 and 1048576")
        );
        assert_eq!(write(&h, "w", 0, &vec![0; MAX_BLOCK_BYTES + 1]).unwrap_err().code, -32600);
        assert_eq!(
            read(&h, "w", 0, 4).unwrap_err(),
            RpcError::internal("Bad file descriptor (os error 9)")
        );
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn open_errors_and_the_handle_bound() {
        let d = dir("errors");
        fs::write(d.join("f"), b"x").unwrap();
        let h = Handles::new();
        let not_file = open(open_params("a", &d, Mode::Read), &h).unwrap_err();
        assert_eq!(
            not_file,
            RpcError::invalid_request(format!("path `{}` is not a file", d.display()))
        );
        let is_dir = open(open_params("a", &d, Mode::Replace), &h).unwrap_err();
        assert_eq!(is_dir, RpcError::internal("Is a directory (os error 21)"));
        let missing = open(open_params("a", &d.join("no/x"), Mode::Replace), &h).unwrap_err();
        assert_eq!(missing, RpcError::not_found("No such file or directory (os error 2)"));
        for i in 0..MAX_OPEN_HANDLES {
            open(open_params(&format!("k{i}"), &d.join("f"), Mode::Read), &h).unwrap();
        }
        let full = open(open_params("one-more", &d.join("f"), Mode::Read), &h).unwrap_err();
        assert_eq!(
            full,
            RpcError::invalid_request("at most 128 file handles may be open per connection")
        );
        h.close_all();
        assert_eq!(h.len(), 0);
        open(open_params("", &d.join("f"), Mode::Read), &h).unwrap();
        let sandboxed = OpenParams {
            sandbox: Some(serde_json::json!({"sandboxPolicy":{"type":"read-only"}})),
            ..open_params("s", &d.join("f"), Mode::Read)
        };
        assert_eq!(open(sandboxed, &h).unwrap_err().code, -32600);
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn params_decode_like_upstream() {
        let err = serde_json::from_str::<OpenParams>(
            r#"{"handleId":"h","path":"file:///x","mode":"append"}"#,
        )
        .unwrap_err();
        assert!(err
            .to_string()
            .starts_with("unknown variant `append`, expected `read` or `replace`"));
        let p: OpenParams = serde_json::from_str(r#"{"handleId":"h","path":"file:///x"}"#).unwrap();
        assert_eq!(p.mode, Mode::Read);
        let err =
            serde_json::from_str::<WriteBlockParams>(r#"{"handleId":"h","offset":0,"chunk":"!!"}"#)
                .unwrap_err();
        assert!(err.to_string().starts_with("Invalid symbol 33, offset 0."), "{err}");
        let err =
            serde_json::from_str::<ReadBlockParams>(r#"{"handleId":"h","offset":0}"#).unwrap_err();
        assert!(err.to_string().starts_with("missing field `len`"));
    }
}
