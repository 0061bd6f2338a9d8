//! The audit log (issue 18, `--audit-log PATH`): one JSON line per event — connections and
//! sessions, processes started and ended, filesystem changes, the daemon starting and
//! stopping — chained so that removing or editing a line is detectable, and `verify`, which
//! checks a log. Ground floor: callers hand it plain JSON; it imports none of our modules.
//!
//! A line is `{"ts":…,"seq":N,"prev":P,"event":E,…fields…,"hash":H}` where `P` is the
//! SHA-256 (hex) of the previous line (64 zeros for a file's first line) and `H` the SHA-256
//! of the line's text up to `,"hash"` with `}` appended: an edited line fails its own hash,
//! a removed one the next line's `prev`. Appends are O_APPEND, one `write` per line; a
//! failed write is logged once and never stops the daemon (the next line that makes it says
//! how many were `lost`). Secrets: environment *values* are never recorded; argv is, as given.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::SystemTime;

use serde::Deserialize;
use serde_json::{json, Map, Value};

/// `prev` of a file's first line.
const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
/// What follows a line's body: `,"hash":"` + 64 hex digits + `"}`.
const HASH_PREFIX: &str = ",\"hash\":\"";
const HASH_SUFFIX_LEN: usize = HASH_PREFIX.len() + 64 + 2;

struct Log {
    file: File,
    seq: u64,
    prev: String,
    /// Lines that could not be written since the last one that was.
    lost: u64,
    /// A write error has been logged (only the first is).
    failed: bool,
}

static LOG: OnceLock<Mutex<Log>> = OnceLock::new();

fn sha256_hex(bytes: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// Opens the log at `path` (as `open`) and records `daemonStarted` with the daemon's
/// version, pid and operator `limits`.
pub fn start(path: &Path, limits: Value) -> io::Result<()> {
    open(path)?;
    record(
        "daemonStarted",
        json!({"version": env!("CARGO_PKG_VERSION"), "pid": std::process::id(), "limits": limits}),
    );
    Ok(())
}

/// `exec-server audit verify PATH` as text and exit code: the number of lines (0) or the
/// first broken one (1) on stdout, or why the file cannot be read (1) on stderr.
pub fn verify_report(path: &Path) -> (i32, String, String) {
    match verify(path) {
        Ok(Ok(count)) => (0, format!("ok: {count} lines\n"), String::new()),
        Ok(Err(broken)) => {
            (1, format!("broken at line {}: {}\n", broken.line, broken.why), String::new())
        }
        Err(e) => (1, String::new(), format!("cannot read `{}`: {e}", path.display())),
    }
}

/// Opens (creating, mode 0600) the log at `path` for appending, continuing the chain of
/// what it already holds. Called once at startup.
pub fn open(path: &Path) -> io::Result<()> {
    let (mut seq, mut prev) = (0, GENESIS.to_string());
    if let Ok(existing) = File::open(path) {
        // The chain continues from the last line; reading the file is a startup cost only.
        let mut last = None;
        for line in BufReader::new(existing).lines() {
            last = Some(line?);
        }
        if let Some(last) = last {
            prev = sha256_hex(last.as_bytes());
            seq = serde_json::from_str::<Value>(&last)
                .ok()
                .and_then(|v| v["seq"].as_u64())
                .unwrap_or(0);
        }
    }
    let file = OpenOptions::new().append(true).create(true).mode(0o600).open(path)?;
    let log = Mutex::new(Log { file, seq, prev, lost: 0, failed: false });
    if LOG.set(log).is_err() {
        return Err(io::Error::other("audit log already open"));
    }
    Ok(())
}

pub fn enabled() -> bool {
    LOG.get().is_some()
}

/// Appends one event with `fields` (a JSON object; anything else is recorded as `data`).
pub fn record(event: &str, fields: Value) {
    let Some(log) = LOG.get() else { return };
    let mut log = log.lock().unwrap_or_else(PoisonError::into_inner);
    let mut body = format!(
        "{{\"ts\":{},\"seq\":{},\"prev\":\"{}\",\"event\":{}",
        json!(crate::logfmt::timestamp(SystemTime::now())),
        log.seq + 1,
        log.prev,
        json!(event)
    );
    let mut fields = match fields {
        Value::Object(map) => map,
        other => Map::from_iter([("data".to_string(), other)]),
    };
    if log.lost > 0 {
        fields.insert("lost".into(), log.lost.into());
    }
    for (key, value) in fields {
        if matches!(key.as_str(), "ts" | "seq" | "prev" | "event" | "hash") {
            continue;
        }
        body.push(',');
        body.push_str(&json!(key).to_string());
        body.push(':');
        body.push_str(&value.to_string());
    }
    body.push('}');
    let hash = sha256_hex(body.as_bytes());
    body.pop();
    let mut line = format!("{body}{HASH_PREFIX}{hash}\"}}");
    let digest = sha256_hex(line.as_bytes());
    line.push('\n');
    // One write: with O_APPEND the line lands whole at the end, even beside other writers.
    match log.file.write(line.as_bytes()) {
        Ok(n) if n == line.len() => {
            log.seq += 1;
            log.prev = digest;
            log.lost = 0;
        }
        result => {
            log.lost += 1;
            if !log.failed {
                log.failed = true;
                match result {
                    Ok(n) => log::error!("audit log: short write ({n} of {} bytes)", line.len()),
                    Err(e) => {
                        log::error!("audit log: write failed: {e} (further errors not logged)")
                    }
                }
            }
        }
    }
}

/// Flushes the log to disk (at shutdown).
pub fn flush() {
    if let Some(log) = LOG.get() {
        let log = log.lock().unwrap_or_else(PoisonError::into_inner);
        if let Err(e) = log.file.sync_all() {
            log::warn!("audit log: flush failed: {e}");
        }
    }
}

/// What a filesystem-changing call's params name (the data itself is never recorded).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct FsParams<'a> {
    path: Option<Value>,
    source_path: Option<Value>,
    destination_path: Option<Value>,
    #[serde(borrow)]
    data_base64: Option<std::borrow::Cow<'a, str>>,
}

/// Records an `fs/writeFile`, `fs/remove`, `fs/copy` or `fs/createDirectory` call: its
/// session, paths, bytes written and result (`ok` or the error message).
pub fn fs_call(session: Option<&str>, method: &str, params: &str, error: Option<String>) {
    if !enabled() {
        return;
    }
    let mut fields = Map::new();
    fields.insert("sessionId".into(), json!(session));
    fields.insert("method".into(), json!(method));
    if let Ok(p) = serde_json::from_str::<FsParams>(params) {
        for (key, value) in [
            ("path", p.path),
            ("sourcePath", p.source_path),
            ("destinationPath", p.destination_path),
        ] {
            if let Some(value) = value {
                fields.insert(key.into(), value);
            }
        }
        if let Some(data) = p.data_base64 {
            let text = data.trim_end();
            let padding = text.bytes().rev().take_while(|&b| b == b'=').count();
            fields.insert("bytes".into(), json!((text.len() / 4 * 3).saturating_sub(padding)));
        }
    }
    fields.insert("result".into(), json!(error.as_deref().unwrap_or("ok")));
    record("fsChange", Value::Object(fields));
}

/// Where a log's chain breaks: the 1-based line and what is wrong there.
#[derive(Debug, PartialEq, Eq)]
pub struct Broken {
    pub line: u64,
    pub why: String,
}

/// Checks the chain of the log at `path`: the number of lines, or the first broken one.
pub fn verify(path: &Path) -> io::Result<Result<u64, Broken>> {
    let text = std::fs::read(path)?;
    Ok(verify_text(&text))
}

fn verify_text(text: &[u8]) -> Result<u64, Broken> {
    let text = text.strip_suffix(b"\n").unwrap_or(text);
    if text.is_empty() {
        return Ok(0);
    }
    let mut prev = GENESIS.to_string();
    let mut last_seq: Option<u64> = None;
    let mut count = 0;
    for (i, line) in text.split(|&b| b == b'\n').enumerate() {
        let number = i as u64 + 1;
        let broken = |why: &str| Broken { line: number, why: why.to_string() };
        let Ok(line) = std::str::from_utf8(line) else {
            return Err(broken("not UTF-8"));
        };
        if line.len() < HASH_SUFFIX_LEN
            || !line.is_char_boundary(line.len() - HASH_SUFFIX_LEN)
            || !line[line.len() - HASH_SUFFIX_LEN..].starts_with(HASH_PREFIX)
            || !line.ends_with("\"}")
        {
            return Err(broken("no hash member at the end"));
        }
        let (body, tail) = line.split_at(line.len() - HASH_SUFFIX_LEN);
        let hash = &tail[HASH_PREFIX.len()..HASH_PREFIX.len() + 64];
        if sha256_hex(format!("{body}}}").as_bytes()) != hash {
            return Err(broken("the line does not match its hash"));
        }
        let Ok(value) = serde_json::from_str::<Value>(line) else {
            return Err(broken("not a JSON object"));
        };
        if value["prev"].as_str() != Some(prev.as_str()) {
            return Err(broken("prev is not the hash of the line before"));
        }
        let Some(seq) = value["seq"].as_u64() else {
            return Err(broken("no seq"));
        };
        if last_seq.is_some_and(|last| seq != last + 1) {
            return Err(broken("seq does not follow the line before"));
        }
        last_seq = Some(seq);
        prev = sha256_hex(line.as_bytes());
        count += 1;
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    /// The audit log's `ts` is the log lines' timestamp (logfmt.rs).
    #[test]
    fn timestamps_are_rfc3339_utc() {
        let t = UNIX_EPOCH + std::time::Duration::from_millis(1_796_402_836_123);
        assert_eq!(crate::logfmt::timestamp(t), "2026-12-04T16:47:16.123Z");
        assert_eq!(crate::logfmt::timestamp(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let leap = UNIX_EPOCH + std::time::Duration::from_secs(951_782_400);
        assert_eq!(crate::logfmt::timestamp(leap), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn verify_finds_the_edited_and_the_missing_line() {
        // Lines built as `record` builds them.
        let mut prev = GENESIS.to_string();
        let mut lines = Vec::new();
        for seq in 1..=4 {
            let body = format!(r#"{{"ts":"x","seq":{seq},"prev":"{prev}","event":"e"}}"#);
            let hash = sha256_hex(body.as_bytes());
            let line = format!("{}{HASH_PREFIX}{hash}\"}}", &body[..body.len() - 1]);
            prev = sha256_hex(line.as_bytes());
            lines.push(line);
        }
        let text = |lines: &[String]| format!("{}\n", lines.join("\n"));
        assert_eq!(verify_text(text(&lines).as_bytes()), Ok(4));
        assert_eq!(verify_text(b""), Ok(0));
        let mut edited = lines.clone();
        edited[1] = edited[1].replace("\"e\"", "\"f\"");
        assert_eq!(verify_text(text(&edited).as_bytes()).map_err(|b| b.line), Err(2));
        let mut removed = lines.clone();
        removed.remove(2);
        assert_eq!(verify_text(text(&removed).as_bytes()).map_err(|b| b.line), Err(3));
        assert_eq!(verify_text(text(&lines[1..]).as_bytes()).map_err(|b| b.line), Err(1));
    }
}
