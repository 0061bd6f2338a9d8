//! The filesystem methods of PROTOCOL.md §6: the seven `fs/*` handlers, their wire types,
//! lexical path normalization, the §6.1 error mapping and the §6.9 sandbox gate. Each
//! handler is a plain blocking function run on a pool worker; this module owns no threads,
//! no sessions and no sockets, and never decides anything from an error's message text.

use std::borrow::Cow;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::{symlink, MetadataExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Deserializer, Serialize};

use crate::b64;
use crate::rpc::RpcError;

/// `fs/readFile` refuses files larger than this (§10): the file's base64 text and then the
/// response frame are held in memory whole.
pub const READ_LIMIT_BYTES: u64 = 512 << 20;

/// `fs/readFile` reads and encodes in chunks of this size: a multiple of 3 (so chunks
/// encode without padding) small enough to stay in cache between the read and the encode.
const READ_CHUNK_BYTES: usize = 3 << 16;

const RELATIVE_PATH: &str = "AbsolutePathBuf deserialized without a base path";
const SANDBOX_REFUSED: &str = "sandboxed filesystem operations are not supported by this executor";
const COPY_DIR_NEEDS_RECURSIVE: &str =
    "fs/copy requires recursive: true when sourcePath is a directory";
const COPY_INTO_ITSELF: &str =
    "fs/copy cannot copy a directory to itself or one of its descendants";
const COPY_UNSUPPORTED: &str = "fs/copy only supports regular files, directories, and symlinks";

/// An absolute path, lexically normalized when decoded. A relative path is a decode error
/// (-32602) with the exact text clients match on (§6).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AbsolutePath(PathBuf);

impl AbsolutePath {
    pub fn as_path(&self) -> &Path {
        &self.0
    }
}

impl<'de> Deserialize<'de> for AbsolutePath {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        /// Names the expected type `path string`, as the reference's decoder does
        /// (``invalid type: integer `5`, expected path string``).
        struct PathVisitor;

        impl serde::de::Visitor<'_> for PathVisitor {
            type Value = AbsolutePath;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("path string")
            }

            fn visit_str<E: serde::de::Error>(self, raw: &str) -> Result<AbsolutePath, E> {
                normalize(raw).map(AbsolutePath).ok_or_else(|| E::custom(RELATIVE_PATH))
            }
        }

        deserializer.deserialize_str(PathVisitor)
    }
}

/// Lexical normalization: `.` and `..` are removed without touching the disk
/// (`/a/link/../x` → `/a/x`), repeated and trailing slashes dropped, and `..` at the root
/// stays at the root. `None` for a relative path.
pub fn normalize(path: &str) -> Option<PathBuf> {
    let path = Path::new(path);
    if !path.has_root() {
        return None;
    }
    let mut out = PathBuf::from("/");
    for component in path.components() {
        match component {
            Component::Normal(name) => out.push(name),
            // `pop` on "/" is a no-op, which is exactly "`..` of the root is the root".
            Component::ParentDir => {
                out.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    Some(out)
}

/// `{}` on the wire.
#[derive(Debug, Default, PartialEq, Eq, Serialize)]
pub struct Empty {}

#[derive(Debug, Deserialize)]
pub struct ReadFileParams {
    pub path: AbsolutePath,
    #[serde(default)]
    pub sandbox: Option<serde_json::Value>,
}

/// `fs/readFile`'s result as a test sees it; the server writes it with `read_file_into`.
#[cfg(test)]
#[derive(Debug)]
pub struct ReadFileResponse {
    data_base64: String,
}

#[cfg(test)]
impl ReadFileResponse {
    /// The base64 text.
    pub fn data_base64(&self) -> &str {
        &self.data_base64
    }
}

/// Borrows `dataBase64` from the request frame when it has no JSON escapes, so a large
/// write holds the base64 text once (in the frame) plus the decoded bytes.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WriteFileParams<'a> {
    pub path: AbsolutePath,
    #[serde(borrow)]
    pub data_base64: Cow<'a, str>,
    #[serde(default)]
    pub sandbox: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
pub struct CreateDirectoryParams {
    pub path: AbsolutePath,
    #[serde(default)]
    pub recursive: Option<bool>,
    #[serde(default)]
    pub sandbox: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
pub struct GetMetadataParams {
    pub path: AbsolutePath,
    #[serde(default)]
    pub sandbox: Option<serde_json::Value>,
}

#[derive(Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GetMetadataResponse {
    pub is_directory: bool,
    pub is_file: bool,
    pub is_symlink: bool,
    pub created_at_ms: i64,
    pub modified_at_ms: i64,
}

#[derive(Debug, Deserialize)]
pub struct ReadDirectoryParams {
    pub path: AbsolutePath,
    #[serde(default)]
    pub sandbox: Option<serde_json::Value>,
}

#[derive(Debug, Serialize)]
pub struct ReadDirectoryResponse {
    pub entries: Vec<ReadDirectoryEntry>,
}

#[derive(Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReadDirectoryEntry {
    pub file_name: String,
    pub is_directory: bool,
    pub is_file: bool,
}

#[derive(Debug, Deserialize)]
pub struct RemoveParams {
    pub path: AbsolutePath,
    #[serde(default)]
    pub recursive: Option<bool>,
    #[serde(default)]
    pub force: Option<bool>,
    #[serde(default)]
    pub sandbox: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CopyParams {
    pub source_path: AbsolutePath,
    pub destination_path: AbsolutePath,
    /// Required, unlike the other methods' `recursive` (§6): a missing one is -32602.
    pub recursive: bool,
    #[serde(default)]
    pub sandbox: Option<serde_json::Value>,
}

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
/// runs; a restricted one is confined by `run_sandboxed` (routed there by rpc), so reaching
/// here with one is refused. A malformed sandbox is the decoder's -32602.
fn check_sandbox(sandbox: Option<&serde_json::Value>) -> Result<(), RpcError> {
    if crate::sandbox::parse(sandbox)?.fs.is_none() {
        Ok(())
    } else {
        Err(RpcError::invalid_request(SANDBOX_REFUSED))
    }
}

// ---------------------------------------------------------------------------------------------
// Issue 13: filesystem calls under a sandbox (the hunk the restructure ports)
// ---------------------------------------------------------------------------------------------

/// Just the `sandbox` member of any fs method's params.
#[derive(Debug, Deserialize)]
pub struct SandboxOnly {
    #[serde(default)]
    pub sandbox: Option<serde_json::Value>,
}

/// Whether `params` (an fs method's JSON) may carry a sandbox object, found without decoding:
/// `"sandbox"` followed by `:` and `{`. Base64 never holds a quote, so large writes scan fast.
pub fn carries_sandbox(params: &str) -> bool {
    let mut rest = params;
    while let Some(at) = rest.find("\"sandbox\"") {
        let after = rest[at + 9..].trim_start();
        if let Some(value) = after.strip_prefix(':') {
            if value.trim_start().starts_with('{') && !rest[..at].ends_with('\\') {
                return true;
            }
        }
        rest = &rest[at + 9..];
    }
    false
}

/// An fs call whose params carry a sandbox object: confined in the helper process when the
/// policy restricts the file system, else run here as usual.
pub fn run_sandboxed(
    method: &str,
    params: &str,
    p: SandboxOnly,
) -> Result<Box<serde_json::value::RawValue>, RpcError> {
    let text = match p.sandbox {
        Some(sandbox) if crate::sandbox::parse(Some(&sandbox))?.fs.is_some() => {
            crate::sandbox::run_fs(&sandbox, method, params)?
        }
        _ => run_unconfined(method, params)?,
    };
    serde_json::value::RawValue::from_string(text).map_err(|e| RpcError::internal(e.to_string()))
}

/// Runs one fs method on its JSON params without any sandbox check (the caller has confined
/// this process or found the sandbox unrestricted) and returns the result's JSON text.
pub fn run_unconfined(method: &str, params: &str) -> Result<String, RpcError> {
    fn decode<'a, P: Deserialize<'a>>(params: &'a str) -> Result<P, RpcError> {
        serde_json::from_str(params).map_err(|e| {
            let text = e.to_string();
            let position = format!(" at line {} column {}", e.line(), e.column());
            RpcError::invalid_params(text.strip_suffix(&position).unwrap_or(&text))
        })
    }
    fn json<R: Serialize>(r: Result<R, RpcError>) -> Result<String, RpcError> {
        serde_json::to_string(&r?).map_err(|e| RpcError::internal(e.to_string()))
    }
    match method {
        "fs/readFile" => {
            let mut p: ReadFileParams = decode(params)?;
            p.sandbox = None;
            let mut out = String::new();
            read_file_into(p, &mut out)?;
            Ok(out)
        }
        "fs/writeFile" => {
            let mut p: WriteFileParams<'_> = decode(params)?;
            p.sandbox = None;
            json(write_file(p))
        }
        "fs/createDirectory" => {
            let mut p: CreateDirectoryParams = decode(params)?;
            p.sandbox = None;
            json(create_directory(p))
        }
        "fs/getMetadata" => {
            let mut p: GetMetadataParams = decode(params)?;
            p.sandbox = None;
            json(get_metadata(p))
        }
        "fs/readDirectory" => {
            let mut p: ReadDirectoryParams = decode(params)?;
            p.sandbox = None;
            json(read_directory(p))
        }
        "fs/remove" => {
            let mut p: RemoveParams = decode(params)?;
            p.sandbox = None;
            json(remove(p))
        }
        "fs/copy" => {
            let mut p: CopyParams = decode(params)?;
            p.sandbox = None;
            json(copy(p))
        }
        other => Err(RpcError::method_not_found(other)),
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
        open_nonblocking(p.path.as_path(), File::options().read(true)).map_err(io_error)?;
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
    let mut data = Vec::new();
    b64::decode(p.data_base64.as_bytes(), &mut data).map_err(|err| {
        RpcError::invalid_request(format!("fs/writeFile requires valid base64 dataBase64: {err}"))
    })?;
    // The base64 text is no longer needed; release it before the write if it was copied.
    drop(p.data_base64);
    let mut file =
        open_nonblocking(p.path.as_path(), File::options().write(true).create(true).truncate(true))
            .map_err(io_error)?;
    file.write_all(&data).map_err(io_error)?;
    Ok(Empty {})
}

pub fn create_directory(p: CreateDirectoryParams) -> Result<Empty, RpcError> {
    check_sandbox(p.sandbox.as_ref())?;
    let path = p.path.as_path();
    if p.recursive.unwrap_or(true) {
        fs::create_dir_all(path).map_err(io_error)?;
    } else {
        fs::create_dir(path).map_err(io_error)?;
    }
    Ok(Empty {})
}

pub fn get_metadata(p: GetMetadataParams) -> Result<GetMetadataResponse, RpcError> {
    check_sandbox(p.sandbox.as_ref())?;
    let path = p.path.as_path();
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
    for entry in fs::read_dir(p.path.as_path()).map_err(io_error)? {
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
    let path = p.path.as_path();
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
    let source = p.source_path.as_path();
    let destination = p.destination_path.as_path();
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

/// The canonical form of `path`, or for a path that does not exist yet, the canonical form
/// of its nearest existing ancestor with the missing tail appended. `path` is already
/// lexically normalized, so the tail holds no `.` or `..`.
fn canonicalize_nearest(path: &Path) -> io::Result<PathBuf> {
    let mut missing = Vec::new();
    let mut current = path;
    loop {
        match fs::canonicalize(current) {
            Ok(mut real) => {
                real.extend(missing.iter().rev());
                return Ok(real);
            }
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                let (Some(parent), Some(name)) = (current.parent(), current.file_name()) else {
                    return Err(err);
                };
                missing.push(name);
                current = parent;
            }
            Err(err) => return Err(err),
        }
    }
}

/// Recreates the link with the same link text, relative or not; the target is not read.
fn copy_symlink(source: &Path, destination: &Path) -> io::Result<()> {
    symlink(fs::read_link(source)?, destination)
}

fn copy_file(source: &Path, destination: &Path) -> io::Result<()> {
    // Copying a file onto itself would truncate it before reading it; its content already
    // is the copy's content, so there is nothing to do.
    if let (Ok(from), Ok(to)) = (fs::metadata(source), fs::metadata(destination)) {
        if (from.dev(), from.ino()) == (to.dev(), to.ino()) {
            return Ok(());
        }
    }
    // `fs::copy` would block opening a FIFO destination; this opens it non-blocking and
    // otherwise does what `fs::copy` does (`io::copy` between files uses
    // `copy_file_range`, and the permission bits are copied).
    let mut from = File::open(source)?;
    let permissions = from.metadata()?.permissions();
    let mut to =
        open_nonblocking(destination, File::options().write(true).create(true).truncate(true))?;
    io::copy(&mut from, &mut to)?;
    to.set_permissions(permissions)
}

/// `mkdir -p` the destination, then copy regular files by content and recreate symlinks;
/// FIFOs, sockets and devices inside the tree are skipped (§6). Iterative, so a deep tree
/// cannot exhaust a worker's stack.
fn copy_tree(source: &Path, destination: &Path) -> io::Result<()> {
    let mut pending = vec![(source.to_path_buf(), destination.to_path_buf())];
    while let Some((from_dir, to_dir)) = pending.pop() {
        fs::create_dir_all(&to_dir)?;
        for entry in fs::read_dir(&from_dir)? {
            let entry = entry?;
            let kind = entry.file_type()?;
            let (from, to) = (entry.path(), to_dir.join(entry.file_name()));
            if kind.is_dir() {
                pending.push((from, to));
            } else if kind.is_symlink() {
                copy_symlink(&from, &to)?;
            } else if kind.is_file() {
                copy_file(&from, &to)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::PermissionsExt;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A fresh directory under the system temp dir, removed when dropped.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> Self {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let path = std::env::temp_dir().join(format!(
                "exec-server-fs-test-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ));
            fs::create_dir(&path).unwrap();
            TempDir(fs::canonicalize(path).unwrap())
        }
        fn join(&self, name: &str) -> PathBuf {
            self.0.join(name)
        }
        fn path(&self, name: &str) -> AbsolutePath {
            AbsolutePath(self.join(name))
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn abs(p: &Path) -> AbsolutePath {
        AbsolutePath(p.to_path_buf())
    }

    fn copy_params(source: &Path, destination: &Path, recursive: bool) -> CopyParams {
        CopyParams {
            source_path: abs(source),
            destination_path: abs(destination),
            recursive,
            sandbox: None,
        }
    }

    fn mkfifo(path: &Path) {
        let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
        // SAFETY: `c` is a valid NUL-terminated path for the duration of the call.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    }

    #[test]
    fn normalize_is_lexical() {
        let n = |s: &str| normalize(s).map(|p| p.to_string_lossy().into_owned());
        assert_eq!(n("/a/link/../x").as_deref(), Some("/a/x"));
        assert_eq!(n("/a/./b/").as_deref(), Some("/a/b"));
        assert_eq!(n("//a//b").as_deref(), Some("/a/b"));
        assert_eq!(n("/..").as_deref(), Some("/"));
        assert_eq!(n("/../../a/..").as_deref(), Some("/"));
        assert_eq!(n("/").as_deref(), Some("/"));
        assert_eq!(n("/a/b/../../c/./d/..").as_deref(), Some("/c"));
        assert_eq!(n("a/b"), None);
        assert_eq!(n("./a"), None);
        assert_eq!(n("../a"), None);
        assert_eq!(n(""), None);
    }

    #[test]
    fn relative_path_is_a_decode_error_with_the_exact_message() {
        let err = serde_json::from_str::<ReadFileParams>(r#"{"path":"tmp/x"}"#).unwrap_err();
        assert!(err.to_string().starts_with(RELATIVE_PATH), "{err}");
        let err = serde_json::from_str::<ReadFileParams>(r#"{"path":5}"#).unwrap_err();
        assert!(err.to_string().starts_with("invalid type: integer `5`, expected path string"));
        let p: ReadFileParams = serde_json::from_str(r#"{"path":"/a\/b\u0041"}"#).unwrap();
        assert_eq!(p.path.as_path(), Path::new("/a/bA"));
        let p: ReadFileParams = serde_json::from_str(r#"{"path":"/tmp/./a/../x"}"#).unwrap();
        assert_eq!(p.path.as_path(), Path::new("/tmp/x"));
        let err =
            serde_json::from_str::<CopyParams>(r#"{"sourcePath":"/a","destinationPath":"/b"}"#)
                .unwrap_err();
        assert!(err.to_string().starts_with("missing field `recursive`"), "{err}");
        let p: RemoveParams =
            serde_json::from_str(r#"{"path":"/a","recursive":null,"force":null,"sandbox":7}"#)
                .unwrap();
        assert_eq!((p.recursive, p.force, p.sandbox), (None, None, Some(json!(7))));
    }

    #[test]
    fn write_params_borrow_the_base64_text() {
        let frame = r#"{"path":"/x","dataBase64":"aGVsbG8="}"#;
        let p: WriteFileParams<'_> = serde_json::from_str(frame).unwrap();
        assert!(matches!(p.data_base64, Cow::Borrowed("aGVsbG8=")));
        // An escaped solidus cannot be borrowed but must still decode.
        let p: WriteFileParams<'_> =
            serde_json::from_str(r#"{"path":"/x","dataBase64":"a\/8="}"#).unwrap();
        assert_eq!(p.data_base64, "a/8=");
    }

    #[test]
    fn sandbox_table() {
        let runs = [
            json!(null),
            json!({"permissions":{"type":"disabled"},"cwd":"/p","windowsSandboxLevel":"disabled"}),
            json!({"permissions":{"type":"external","network":"restricted"},"windowsSandboxLevel":"disabled"}),
            json!({"permissions":{"type":"managed","file_system":{"type":"unrestricted"},"network":"enabled"},"windowsSandboxLevel":"disabled"}),
            json!({"sandboxPolicy":{"type":"danger-full-access"},"windowsSandboxLevel":"disabled"}),
            json!({"sandboxPolicy":{"type":"external-sandbox","network_access":"restricted"}}),
            json!({"type":"danger-full-access"}),
            json!({"type":"external-sandbox","network_access":"enabled"}),
        ];
        for sandbox in &runs {
            assert_eq!(check_sandbox(Some(sandbox)), Ok(()), "{sandbox}");
        }
        assert_eq!(check_sandbox(None), Ok(()));

        let read_only = json!({"type":"managed","file_system":{"type":"restricted","entries":[{"path":{"type":"special","value":{"kind":"root"}},"access":"read"}]},"network":"restricted"});
        let workspace_write = json!({"type":"managed","file_system":{"type":"restricted","entries":[
            {"path":{"type":"special","value":{"kind":"root"}},"access":"read"},
            {"path":{"type":"special","value":{"kind":"project_roots"}},"access":"write"},
            {"path":{"type":"special","value":{"kind":"slash_tmp"}},"access":"write"},
            {"path":{"type":"special","value":{"kind":"tmpdir"}},"access":"write"},
            {"path":{"type":"path","path":"/data/extra"},"access":"write"},
            {"path":{"type":"glob_pattern","pattern":"**/.env"},"access":"deny"}]},"network":"restricted"});
        // Restricted file systems never reach the handlers directly (rpc routes them to
        // `run_sandboxed`); if they do, they are refused.
        let level = |mut v: serde_json::Value| {
            v["windowsSandboxLevel"] = json!("disabled");
            v["cwd"] = json!("/p");
            v
        };
        let refused = [
            level(json!({"permissions": read_only.clone()})),
            level(json!({"permissions": workspace_write.clone()})),
            json!({"sandboxPolicy":{"type":"read-only"}}),
            json!({"sandboxPolicy":{"type":"workspace-write","writable_roots":["/abs"]},"sandboxPolicyCwd":"/p"}),
            json!({"type":"read-only"}),
        ];
        for sandbox in &refused {
            assert_eq!(
                check_sandbox(Some(sandbox)),
                Err(RpcError::invalid_request(SANDBOX_REFUSED)),
                "{sandbox}"
            );
        }
        // Malformed contexts are the decoder's -32602, as upstream answers them.
        let malformed = [
            read_only,
            workspace_write,
            json!({"permissions":{"type":"managed"},"windowsSandboxLevel":"disabled"}),
            json!({"permissions":{"type":"DISABLED"},"windowsSandboxLevel":"disabled"}),
            json!({"permissions":"disabled","windowsSandboxLevel":"disabled"}),
            json!({"permissions":{"type":"disabled"}}),
            json!({"type":"disabled"}),
            json!({}),
            json!([]),
            json!("danger-full-access"),
            json!(5),
            json!(true),
        ];
        for sandbox in &malformed {
            assert_eq!(check_sandbox(Some(sandbox)).unwrap_err().code, -32602, "{sandbox}");
        }
    }

    #[test]
    fn sandbox_is_checked_before_the_filesystem() {
        let sandbox = Some(json!({"sandboxPolicy":{"type":"read-only"}}));
        let missing = AbsolutePath(PathBuf::from("/nonexistent/exec-server/x"));
        let err = read_file(ReadFileParams { path: missing.clone(), sandbox: sandbox.clone() });
        assert_eq!(err.unwrap_err(), RpcError::invalid_request(SANDBOX_REFUSED));
        let err = write_file(WriteFileParams { path: missing, data_base64: "!!".into(), sandbox });
        assert_eq!(err.unwrap_err(), RpcError::invalid_request(SANDBOX_REFUSED));
    }

    #[test]
    fn errors_map_by_kind() {
        let e = |kind: io::ErrorKind| io_error(io::Error::new(kind, "text")).code;
        assert_eq!(e(io::ErrorKind::NotFound), -32004);
        assert_eq!(e(io::ErrorKind::InvalidInput), -32600);
        assert_eq!(e(io::ErrorKind::PermissionDenied), -32600);
        assert_eq!(e(io::ErrorKind::AlreadyExists), -32603);
        assert_eq!(e(io::ErrorKind::Other), -32603);
        let os = io_error(io::Error::from_raw_os_error(libc::ENOENT));
        assert_eq!(os, RpcError::not_found("No such file or directory (os error 2)"));
        let os = io_error(io::Error::from_raw_os_error(libc::EACCES));
        assert_eq!(os, RpcError::invalid_request("Permission denied (os error 13)"));
    }

    #[test]
    fn missing_paths_and_nul_bytes() {
        let dir = TempDir::new();
        let enoent = RpcError::not_found("No such file or directory (os error 2)");
        let read = read_file(ReadFileParams { path: dir.path("nope"), sandbox: None });
        assert_eq!(read.unwrap_err(), enoent);
        let write = write_file(WriteFileParams {
            path: dir.path("no/parent"),
            data_base64: "".into(),
            sandbox: None,
        });
        assert_eq!(write.unwrap_err(), enoent);
        assert!(!dir.join("no").exists());
        let meta = get_metadata(GetMetadataParams { path: dir.path("nope"), sandbox: None });
        assert_eq!(meta.unwrap_err(), enoent);
        let list = read_directory(ReadDirectoryParams { path: dir.path("nope"), sandbox: None });
        assert_eq!(list.unwrap_err(), enoent);

        let p: ReadFileParams = serde_json::from_str(r#"{"path":"/tmp/a\u0000b"}"#).unwrap();
        let err = read_file(p).unwrap_err();
        assert_eq!(err.code, -32600, "{err}");
        let p: RemoveParams = serde_json::from_str(r#"{"path":"/tmp/a\u0000b"}"#).unwrap();
        assert_eq!(remove(p).unwrap_err().code, -32600);
        let p: CopyParams = serde_json::from_str(
            r#"{"sourcePath":"/tmp","destinationPath":"/tmp/a\u0000b","recursive":true}"#,
        )
        .unwrap();
        assert_eq!(copy(p).unwrap_err().code, -32600);
    }

    #[test]
    fn write_read_round_trip_truncates_and_rejects_bad_base64() {
        let dir = TempDir::new();
        let write = |data: &str| {
            write_file(WriteFileParams {
                path: dir.path("f"),
                data_base64: data.into(),
                sandbox: None,
            })
        };
        write("aGVsbG8gd29ybGQ=").unwrap();
        write("aGk=").unwrap();
        assert_eq!(fs::read(dir.join("f")).unwrap(), b"hi");
        let read = read_file(ReadFileParams { path: dir.path("f"), sandbox: None }).unwrap();
        assert_eq!(read.data_base64(), "aGk=");
        let mut out = String::from("head:");
        read_file_into(ReadFileParams { path: dir.path("f"), sandbox: None }, &mut out).unwrap();
        assert_eq!(out, r#"head:{"dataBase64":"aGk="}"#);
        let err = write("not base64!").unwrap_err();
        assert_eq!(err.code, -32600);
        assert!(
            err.message.starts_with("fs/writeFile requires valid base64 dataBase64: "),
            "{err}"
        );
        assert_eq!(fs::read(dir.join("f")).unwrap(), b"hi");
        // A directory where a file is expected: EISDIR is "anything else".
        let err = read_file(ReadFileParams { path: abs(&dir.0), sandbox: None }).unwrap_err();
        assert_eq!(err, RpcError::internal("Is a directory (os error 21)"));
    }

    #[test]
    fn fifos_never_block() {
        let dir = TempDir::new();
        mkfifo(&dir.join("fifo"));
        fs::write(dir.join("f"), b"x").unwrap();
        let read = read_file(ReadFileParams { path: dir.path("fifo"), sandbox: None });
        assert_eq!(read.unwrap().data_base64(), "");
        let enxio = RpcError::internal("No such device or address (os error 6)");
        let write = write_file(WriteFileParams {
            path: dir.path("fifo"),
            data_base64: "aGk=".into(),
            sandbox: None,
        });
        assert_eq!(write.unwrap_err(), enxio);
        let err = copy(copy_params(&dir.join("f"), &dir.join("fifo"), false)).unwrap_err();
        assert_eq!(err, enxio);
    }

    #[test]
    fn read_refuses_files_over_the_limit() {
        let dir = TempDir::new();
        let file = File::create(dir.join("big")).unwrap();
        file.set_len(READ_LIMIT_BYTES + 1).unwrap();
        let err = read_file(ReadFileParams { path: dir.path("big"), sandbox: None }).unwrap_err();
        assert_eq!(
            err,
            RpcError::invalid_request("file is too large to read: limit is 536870912 bytes")
        );
    }

    #[test]
    fn create_directory_defaults_to_recursive() {
        let dir = TempDir::new();
        let mk = |name: &str, recursive: Option<bool>| {
            create_directory(CreateDirectoryParams {
                path: dir.path(name),
                recursive,
                sandbox: None,
            })
        };
        mk("a/b/c", None).unwrap();
        mk("a/b/c", None).unwrap();
        assert!(dir.join("a/b/c").is_dir());
        assert_eq!(
            mk("a/b/c", Some(false)).unwrap_err(),
            RpcError::internal("File exists (os error 17)")
        );
        assert_eq!(
            mk("x/y", Some(false)).unwrap_err(),
            RpcError::not_found("No such file or directory (os error 2)")
        );
        mk("a/d", Some(false)).unwrap();
    }

    #[test]
    fn metadata_follows_links_except_for_is_symlink() {
        let dir = TempDir::new();
        fs::write(dir.join("f"), b"x").unwrap();
        fs::create_dir(dir.join("d")).unwrap();
        symlink(dir.join("f"), dir.join("lf")).unwrap();
        symlink("d", dir.join("ld")).unwrap();
        let when = UNIX_EPOCH + std::time::Duration::from_millis(1_700_000_000_123);
        File::options().write(true).open(dir.join("f")).unwrap().set_modified(when).unwrap();
        let meta = |name: &str| {
            get_metadata(GetMetadataParams { path: dir.path(name), sandbox: None }).unwrap()
        };
        let f = meta("f");
        assert_eq!((f.is_directory, f.is_file, f.is_symlink), (false, true, false));
        assert_eq!(f.modified_at_ms, 1_700_000_000_123);
        let d = meta("d");
        assert_eq!((d.is_directory, d.is_file, d.is_symlink), (true, false, false));
        let lf = meta("lf");
        assert_eq!((lf.is_directory, lf.is_file, lf.is_symlink), (false, true, true));
        assert_eq!(lf.modified_at_ms, 1_700_000_000_123);
        let ld = meta("ld");
        assert_eq!((ld.is_directory, ld.is_file, ld.is_symlink), (true, false, true));
        assert_eq!(unix_ms(UNIX_EPOCH - std::time::Duration::from_micros(1500)), -2);
    }

    #[test]
    fn read_directory_skips_dangling_links_and_names_lossily() {
        let dir = TempDir::new();
        fs::write(dir.join("f"), b"x").unwrap();
        fs::create_dir(dir.join("d")).unwrap();
        symlink("d", dir.join("ld")).unwrap();
        symlink("missing", dir.join("dangling")).unwrap();
        let odd = std::ffi::OsStr::from_bytes(b"bad\xffname");
        fs::write(dir.0.join(odd), b"").unwrap();
        let mut entries = read_directory(ReadDirectoryParams { path: abs(&dir.0), sandbox: None })
            .unwrap()
            .entries;
        entries.sort_by(|a, b| a.file_name.cmp(&b.file_name));
        let entry = |name: &str, is_directory, is_file| ReadDirectoryEntry {
            file_name: name.into(),
            is_directory,
            is_file,
        };
        assert_eq!(
            entries,
            [
                entry("bad\u{fffd}name", false, true),
                entry("d", true, false),
                entry("f", false, true),
                entry("ld", true, false),
            ]
        );
    }

    #[test]
    fn remove_defaults_and_links() {
        let dir = TempDir::new();
        let rm = |name: &str, recursive, force| {
            remove(RemoveParams { path: dir.path(name), recursive, force, sandbox: None })
        };
        rm("missing", None, None).unwrap();
        assert_eq!(
            rm("missing", None, Some(false)).unwrap_err(),
            RpcError::not_found("No such file or directory (os error 2)")
        );
        fs::create_dir_all(dir.join("t/sub")).unwrap();
        fs::write(dir.join("t/sub/f"), b"x").unwrap();
        symlink(dir.join("t"), dir.join("lt")).unwrap();
        rm("lt", Some(false), None).unwrap();
        assert!(fs::symlink_metadata(dir.join("lt")).is_err());
        assert!(dir.join("t/sub/f").is_file());
        assert_eq!(
            rm("t", Some(false), None).unwrap_err(),
            RpcError::internal("Directory not empty (os error 39)")
        );
        rm("t", None, None).unwrap();
        assert!(!dir.join("t").exists());
        fs::create_dir(dir.join("empty")).unwrap();
        rm("empty", Some(false), Some(false)).unwrap();
        fs::write(dir.join("f"), b"x").unwrap();
        rm("f", Some(false), Some(false)).unwrap();
        assert!(!dir.join("f").exists());
    }

    #[test]
    fn copy_files_links_and_trees() {
        let dir = TempDir::new();
        fs::write(dir.join("f"), b"content").unwrap();
        fs::set_permissions(dir.join("f"), fs::Permissions::from_mode(0o640)).unwrap();
        fs::write(dir.join("g"), b"longer old content").unwrap();
        copy(copy_params(&dir.join("f"), &dir.join("g"), false)).unwrap();
        assert_eq!(fs::read(dir.join("g")).unwrap(), b"content");
        assert_eq!(fs::metadata(dir.join("g")).unwrap().permissions().mode() & 0o777, 0o640);
        // Onto itself: nothing is lost.
        copy(copy_params(&dir.join("f"), &dir.join("f"), false)).unwrap();
        assert_eq!(fs::read(dir.join("f")).unwrap(), b"content");

        symlink("../elsewhere", dir.join("link")).unwrap();
        copy(copy_params(&dir.join("link"), &dir.join("link2"), false)).unwrap();
        assert_eq!(fs::read_link(dir.join("link2")).unwrap(), Path::new("../elsewhere"));

        fs::create_dir_all(dir.join("src/deep/er")).unwrap();
        fs::write(dir.join("src/deep/er/file"), b"deep").unwrap();
        symlink("deep/er/file", dir.join("src/rel")).unwrap();
        symlink("/nonexistent", dir.join("src/dangling")).unwrap();
        mkfifo(&dir.join("src/fifo"));
        let err = copy(copy_params(&dir.join("src"), &dir.join("dst"), false)).unwrap_err();
        assert_eq!(err, RpcError::invalid_request(COPY_DIR_NEEDS_RECURSIVE));
        assert!(!dir.join("dst").exists());
        copy(copy_params(&dir.join("src"), &dir.join("dst/nested"), true)).unwrap();
        let dst = dir.join("dst/nested");
        assert_eq!(fs::read(dst.join("deep/er/file")).unwrap(), b"deep");
        assert_eq!(fs::read_link(dst.join("rel")).unwrap(), Path::new("deep/er/file"));
        assert_eq!(fs::read_link(dst.join("dangling")).unwrap(), Path::new("/nonexistent"));
        assert!(fs::symlink_metadata(dst.join("fifo")).is_err());

        let err = copy(copy_params(&dir.join("src/fifo"), &dir.join("fifo2"), false)).unwrap_err();
        assert_eq!(err, RpcError::invalid_request(COPY_UNSUPPORTED));
        let err = copy(copy_params(&dir.join("nope"), &dir.join("x"), true)).unwrap_err();
        assert_eq!(err, RpcError::not_found("No such file or directory (os error 2)"));
    }

    #[test]
    fn copy_refuses_a_directory_into_itself() {
        let dir = TempDir::new();
        fs::create_dir_all(dir.join("src/sub")).unwrap();
        symlink(dir.join("src/sub"), dir.join("alias")).unwrap();
        let refused = RpcError::invalid_request(COPY_INTO_ITSELF);
        for destination in ["src", "src/sub", "src/new/deeper", "alias/new", "alias"] {
            let err = copy(copy_params(&dir.join("src"), &dir.join(destination), true));
            assert_eq!(err.unwrap_err(), refused, "{destination}");
        }
        assert!(!dir.join("src/new").exists());
        // A sibling whose name merely starts with the source's name is fine.
        copy(copy_params(&dir.join("src"), &dir.join("src2"), true)).unwrap();
        assert!(dir.join("src2/sub").is_dir());
    }
}
