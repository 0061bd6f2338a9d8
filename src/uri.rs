//! The one wire path type (PROTOCOL v2): every path a handler receives decodes through
//! `AbsolutePath`, which accepts a `file:` URI (what codex 0.171 sends) and, for 0.130-era
//! clients, a native absolute path; every path a handler returns is written as a `file:` URI
//! by `to_uri`/`Uri`. It owns URI parsing, percent-decoding and -encoding and lexical
//! normalization; it never touches the filesystem.
//!
//! The parser follows what the 0.171 server (a WHATWG URL parser underneath) was observed to
//! do with file URLs: leading and trailing spaces are trimmed and tabs and newlines dropped,
//! the scheme is case-insensitive, `\` is `/`, `.`/`..` segments (also as `%2e`) are resolved,
//! `file://localhost/` is local, a query or fragment is refused. Errors that upstream reports
//! while decoding are decode errors here (-32602); a URI that decodes but names another host
//! or a Windows drive is refused only when a handler asks for the local path (-32600), in the
//! order upstream does.

use std::ffi::OsString;
use std::fmt::Write as _;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::RpcError;

const RELATIVE: &str = "invalid URI: relative URL without a base";
const BAD_HOST: &str = "invalid URI: invalid international domain name";
const QUERY: &str = "query parameters are not allowed in path URIs";
const FRAGMENT: &str = "fragments are not allowed in path URIs";
/// The OS name upstream puts in "`'<uri>' is invalid on 'linux'`".
const PLATFORM: &str = "linux";

/// A path from the wire: absolute, lexically normalized, possibly not valid on this host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AbsolutePath {
    local: Result<PathBuf, Foreign>,
}

/// A well-formed URI that names another host or a Windows drive: its serialization.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Foreign(String);

impl AbsolutePath {
    /// A local path (tests and internal callers).
    pub fn from_path(path: impl Into<PathBuf>) -> Self {
        AbsolutePath { local: Ok(path.into()) }
    }

    /// The path on this host, or upstream's -32600 for a URI naming another host or a
    /// Windows drive (`'file://other/x' is invalid on 'linux'`).
    pub fn as_path(&self) -> Result<&Path, RpcError> {
        match &self.local {
            Ok(path) => Ok(path),
            Err(Foreign(uri)) => Err(RpcError::invalid_request(invalid_on_host(uri))),
        }
    }

    /// The path on this host, or the bare text upstream puts in other methods' errors
    /// (`'file://other/x' is invalid on 'linux'`) for callers that report it with their own
    /// code or wording (`process/start`'s cwd, `environmentConfig/read`'s cwd: -32602).
    pub fn to_local(&self) -> Result<&Path, String> {
        match &self.local {
            Ok(path) => Ok(path),
            Err(Foreign(uri)) => Err(invalid_on_host(uri)),
        }
    }

    /// The URI when it names another host or a Windows drive (for error texts).
    pub fn foreign(&self) -> Option<&str> {
        self.local.as_ref().err().map(|Foreign(uri)| uri.as_str())
    }

    /// The path when local, for ordering keys and other best-effort uses.
    pub fn local(&self) -> Option<&Path> {
        self.local.as_ref().ok().map(PathBuf::as_path)
    }

    /// Decodes a wire string: a `file:` URI or a native absolute path. The error is the
    /// decode error's text (reported as -32602).
    pub fn parse(raw: &str) -> Result<AbsolutePath, String> {
        if raw.starts_with('/') {
            // A 0.130-era native path: v1 rules (lexical normalization, bytes as given).
            let path = crate::uri::normalize(raw).ok_or_else(|| RELATIVE.to_string())?;
            return Ok(AbsolutePath::from_path(path));
        }
        parse_uri(raw)
    }
}

impl<'de> Deserialize<'de> for AbsolutePath {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;

        impl serde::de::Visitor<'_> for Visitor {
            type Value = AbsolutePath;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string")
            }

            fn visit_str<E: serde::de::Error>(self, raw: &str) -> Result<AbsolutePath, E> {
                AbsolutePath::parse(raw).map_err(E::custom)
            }
        }

        deserializer.deserialize_str(Visitor)
    }
}

/// A path written as a `file:` URI in a result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Uri(pub PathBuf);

impl Serialize for Uri {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&to_uri(&self.0))
    }
}

/// `file://` and the path's bytes, each byte outside the set upstream leaves alone written as
/// `%XX` (upper-case hex): controls, space, `"`, `#`, `%`, `<`, `>`, `?`, `` ` ``, `{`, `}`,
/// `\`, DEL and every non-ASCII byte (so non-UTF-8 names round-trip).
pub fn to_uri(path: &Path) -> String {
    let mut out = String::from("file://");
    for &byte in path.as_os_str().as_bytes() {
        if escaped_in_output(byte) {
            let _ = write!(out, "%{byte:02X}");
        } else {
            out.push(char::from(byte));
        }
    }
    out
}

fn escaped_in_output(byte: u8) -> bool {
    byte <= 0x20
        || byte >= 0x7f
        || matches!(byte, b'"' | b'#' | b'%' | b'<' | b'>' | b'?' | b'`' | b'{' | b'}' | b'\\')
}

/// Lexical normalization: `.` and `..` are removed without touching the disk
/// (`/a/link/../x` → `/a/x`), repeated and trailing slashes dropped, and `..` at the root
/// stays at the root. `None` for a relative path.
pub fn normalize(path: &str) -> Option<PathBuf> {
    normalize_path(Path::new(path))
}

fn normalize_path(path: &Path) -> Option<PathBuf> {
    if !path.has_root() {
        return None;
    }
    // Never longer than the input (plus the root), so one allocation.
    let mut out = PathBuf::with_capacity(path.as_os_str().len() + 1);
    out.push("/");
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

/// The path a request names, for ordering keys: the decoded local path, or `None`.
pub fn key_path(raw: &str) -> Option<PathBuf> {
    AbsolutePath::parse(raw).ok()?.local.ok()
}

fn invalid_on_host(uri: &str) -> String {
    format!("'{uri}' is invalid on '{PLATFORM}'")
}

fn parse_uri(raw: &str) -> Result<AbsolutePath, String> {
    // WHATWG: strip leading/trailing C0 controls and spaces, drop tabs and newlines.
    let trimmed = raw.trim_matches(|c: char| c <= ' ');
    let text: String = trimmed.chars().filter(|c| !matches!(c, '\t' | '\n' | '\r')).collect();
    let Some((scheme, rest)) = split_scheme(&text) else {
        return Err(RELATIVE.to_string());
    };
    if !scheme.eq_ignore_ascii_case("file") {
        return Err(format!("unsupported path URI scheme `{}`", scheme.to_ascii_lowercase()));
    }
    let rest = rest.replace('\\', "/");
    if let Some(at) = rest.find('?') {
        if rest.find('#').is_none_or(|hash| at < hash) {
            return Err(QUERY.to_string());
        }
    }
    if rest.contains('#') {
        return Err(FRAGMENT.to_string());
    }
    let (host, path) = match rest.strip_prefix("//") {
        Some(after) => {
            let end = after.find('/').unwrap_or(after.len());
            let (host, path) = after.split_at(end);
            if is_drive_letter(host) {
                // `file://C:/x` is the drive path `/C:/x`.
                (String::new(), format!("/{host}{path}"))
            } else {
                (parse_host(host)?, path.to_string())
            }
        }
        None => (String::new(), rest),
    };
    let segments = resolve_segments(&path);
    let mut serialized = format!("file://{host}");
    for (index, segment) in segments.iter().enumerate() {
        serialized.push('/');
        if index == 0 && is_drive_letter(segment) {
            serialized.push_str(&segment.to_ascii_uppercase());
        } else {
            encode_path_chars(segment, &mut serialized);
        }
    }
    if segments.is_empty() {
        serialized.push('/');
    }
    let mut bytes = Vec::new();
    for segment in &segments {
        bytes.push(b'/');
        percent_decode(segment, &mut bytes);
    }
    if bytes.contains(&0) {
        return Err(invalid_on_host(&serialized));
    }
    if !host.is_empty() || segments.first().is_some_and(|s| is_drive_letter(s)) {
        return Ok(AbsolutePath { local: Err(Foreign(serialized)) });
    }
    if bytes.is_empty() {
        bytes.push(b'/');
    }
    // A decoded `%2F` may have introduced new separators; normalize once more.
    let path = normalize_path(Path::new(&OsString::from_vec(bytes)))
        .ok_or_else(|| RELATIVE.to_string())?;
    Ok(AbsolutePath { local: Ok(path) })
}

/// `scheme:` and the rest, when the text starts with a valid scheme.
fn split_scheme(text: &str) -> Option<(&str, &str)> {
    let colon = text.find(':')?;
    let scheme = &text[..colon];
    let mut chars = scheme.chars();
    let first = chars.next()?;
    let valid = first.is_ascii_alphabetic()
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    valid.then(|| (scheme, &text[colon + 1..]))
}

fn is_drive_letter(segment: &str) -> bool {
    let bytes = segment.as_bytes();
    bytes.len() == 2 && bytes[0].is_ascii_alphabetic() && bytes[1] == b':'
}

/// The host as upstream serializes it: empty for none or `localhost`, else lower-cased.
fn parse_host(host: &str) -> Result<String, String> {
    if host.starts_with('[') && host.ends_with(']') {
        return Ok(host.to_ascii_lowercase());
    }
    let mut decoded = Vec::new();
    percent_decode(host, &mut decoded);
    let forbidden = |b: &u8| {
        *b <= 0x20
            || *b == 0x7f
            || matches!(
                b,
                b'#' | b'%'
                    | b'/'
                    | b':'
                    | b'<'
                    | b'>'
                    | b'?'
                    | b'@'
                    | b'['
                    | b'\\'
                    | b']'
                    | b'^'
                    | b'|'
            )
    };
    if decoded.iter().any(forbidden) || !decoded.is_ascii() {
        return Err(BAD_HOST.to_string());
    }
    let host = String::from_utf8_lossy(&decoded).to_ascii_lowercase();
    Ok(if host == "localhost" { String::new() } else { host })
}

/// The path's segments with `.` and `..` (also percent-encoded) resolved, as raw text.
fn resolve_segments(path: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let parts: Vec<&str> = path.split('/').collect();
    // The text before the first `/` (as in `file:tmp/x`) is a segment too.
    for part in parts {
        let lower = part.to_ascii_lowercase();
        match lower.as_str() {
            "" | "." | "%2e" => {}
            ".." | ".%2e" | "%2e." | "%2e%2e" => {
                out.pop();
            }
            _ => out.push(part.to_string()),
        }
    }
    out
}

/// Appends a raw segment with the characters WHATWG escapes in paths escaped; existing
/// `%XX` escapes stay as written.
fn encode_path_chars(segment: &str, out: &mut String) {
    for c in segment.chars() {
        let escape = c.is_ascii_control()
            || matches!(c, ' ' | '"' | '#' | '<' | '>' | '?' | '`' | '{' | '}')
            || !c.is_ascii();
        if escape {
            let mut buf = [0u8; 4];
            for byte in c.encode_utf8(&mut buf).bytes() {
                let _ = write!(out, "%{byte:02X}");
            }
        } else {
            out.push(c);
        }
    }
}

/// Percent-decodes `text` onto `out`; a `%` not followed by two hex digits stays literal.
fn percent_decode(text: &str, out: &mut Vec<u8>) {
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = |b: u8| char::from(b).to_digit(16);
            if let (Some(h), Some(l)) =
                (bytes.get(i + 1).and_then(|&b| hex(b)), bytes.get(i + 2).and_then(|&b| hex(b)))
            {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local(raw: &str) -> Vec<u8> {
        let p = AbsolutePath::parse(raw).unwrap_or_else(|e| panic!("{raw}: {e}"));
        p.as_path().unwrap_or_else(|e| panic!("{raw}: {e}")).as_os_str().as_bytes().to_vec()
    }

    fn decode_error(raw: &str) -> String {
        AbsolutePath::parse(raw).expect_err(raw)
    }

    fn use_error(raw: &str) -> RpcError {
        AbsolutePath::parse(raw).expect(raw).as_path().expect_err(raw).clone()
    }

    #[test]
    fn file_uris_decode_like_upstream() {
        assert_eq!(local("file:///tmp/a%20b/f.txt"), b"/tmp/a b/f.txt");
        assert_eq!(local("file://localhost/tmp/x"), b"/tmp/x");
        assert_eq!(local("file://LOCALHOST/tmp"), b"/tmp");
        assert_eq!(local("FILE:///tmp/x"), b"/tmp/x");
        assert_eq!(local("file:/tmp/x"), b"/tmp/x");
        assert_eq!(local("file:tmp/x"), b"/tmp/x");
        assert_eq!(local("file://"), b"/");
        assert_eq!(local("file://localhost"), b"/");
        assert_eq!(local("file:////tmp"), b"/tmp");
        assert_eq!(local("file:///"), b"/");
        assert_eq!(local("file:///tmp/d/bad%FFname"), b"/tmp/d/bad\xffname");
        assert_eq!(local("file:///tmp/d/bad%ffname"), b"/tmp/d/bad\xffname");
        assert_eq!(local("file:///tmp/d/a%2Fb"), b"/tmp/d/a/b");
        assert_eq!(local("file:///tmp/d/a%2"), b"/tmp/d/a%2");
        assert_eq!(local("file:///tmp/d/a b"), b"/tmp/d/a b");
        assert_eq!(local("file:///tmp/./sub/../x"), b"/tmp/x");
        assert_eq!(local("file:///tmp/a/%2e%2E/b/.%2e/c/%2e"), b"/tmp/c");
        assert_eq!(local("file:///../../tmp"), b"/tmp");
        assert_eq!(local("file:///tmp\\x"), b"/tmp/x");
        assert_eq!(local("file:///tmp/a..\tb"), b"/tmp/a..b");
        assert_eq!(local(" file:///tmp/x "), b"/tmp/x");
        assert_eq!(local("file:///tmp/sub/"), b"/tmp/sub");
        assert_eq!(local("file:///C|/x"), b"/C|/x");
        assert_eq!(local("file:///tmp/c:"), b"/tmp/c:");
    }

    #[test]
    fn native_paths_keep_the_v1_rules() {
        assert_eq!(local("/tmp/./a/../x"), b"/tmp/x");
        assert_eq!(local("/tmp/a%20b"), b"/tmp/a%20b");
        assert_eq!(local("//a//b/"), b"/a/b");
    }

    #[test]
    fn decode_errors_carry_upstream_text() {
        assert_eq!(decode_error(""), RELATIVE);
        assert_eq!(decode_error("relative"), RELATIVE);
        assert_eq!(decode_error("1abc:/x"), RELATIVE);
        assert_eq!(decode_error("http://x/tmp"), "unsupported path URI scheme `http`");
        assert_eq!(decode_error("mailto:x"), "unsupported path URI scheme `mailto`");
        assert_eq!(decode_error("file:///tmp?q=1"), QUERY);
        assert_eq!(decode_error("file:///tmp?"), QUERY);
        assert_eq!(decode_error("file:///tmp#frag"), FRAGMENT);
        assert_eq!(decode_error("file:///tmp#"), FRAGMENT);
        assert_eq!(decode_error("file:///tmp#a?b"), FRAGMENT);
        assert_eq!(decode_error("file://localhost:80/tmp"), BAD_HOST);
        assert_eq!(decode_error("file://user@localhost/tmp"), BAD_HOST);
        assert_eq!(decode_error("file://host%20x/tmp"), BAD_HOST);
        assert_eq!(decode_error("file://exa mple/tmp"), BAD_HOST);
        assert_eq!(
            decode_error("file:///tmp/d/a%00b"),
            "'file:///tmp/d/a%00b' is invalid on 'linux'"
        );
        assert_eq!(decode_error(" FILE:///a b/../c%00 "), "'file:///c%00' is invalid on 'linux'");
    }

    #[test]
    fn other_hosts_and_drives_fail_only_on_use() {
        let invalid =
            |uri: &str| RpcError::invalid_request(format!("'{uri}' is invalid on 'linux'"));
        assert_eq!(use_error("file://otherhost/tmp/a%20b"), invalid("file://otherhost/tmp/a%20b"));
        assert_eq!(use_error("FILE://Other/a b/../c"), invalid("file://other/c"));
        assert_eq!(use_error("file://127.0.0.1/tmp"), invalid("file://127.0.0.1/tmp"));
        assert_eq!(use_error("file://[::1]/tmp"), invalid("file://[::1]/tmp"));
        assert_eq!(use_error("file:///c:"), invalid("file:///C:"));
        assert_eq!(use_error("file:///C:/tmp"), invalid("file:///C:/tmp"));
        assert_eq!(use_error("file://C:/x"), invalid("file:///C:/x"));
        assert_eq!(use_error("file:C:/x"), invalid("file:///C:/x"));
        assert_eq!(use_error("file://localhost/C:/x"), invalid("file:///C:/x"));
        assert_eq!(use_error("file://a_b/x"), invalid("file://a_b/x"));
        assert_eq!(key_path("file://other/x"), None);
        let foreign = AbsolutePath::parse("file://other/x").unwrap();
        assert_eq!(foreign.to_local(), Err("'file://other/x' is invalid on 'linux'".to_string()));
        assert_eq!(key_path("file:///a/./b"), Some(PathBuf::from("/a/b")));
    }

    #[test]
    fn serde_names_the_expected_type() {
        #[derive(Deserialize)]
        struct P {
            #[allow(dead_code)]
            path: AbsolutePath,
        }
        let err = serde_json::from_str::<P>(r#"{"path":true}"#).err().expect("fails");
        assert!(err.to_string().starts_with("invalid type: boolean `true`, expected a string"));
        let err = serde_json::from_str::<P>(r#"{"path":"/a\u0000b"}"#).map(|p| p.path);
        assert_eq!(
            err.expect("v1 keeps NULs for the handler").local().map(|p| p.to_owned()),
            Some(PathBuf::from("/a\0b"))
        );
    }

    #[test]
    fn results_encode_like_upstream() {
        let uri = |bytes: &[u8]| to_uri(Path::new(std::ffi::OsStr::from_bytes(bytes)));
        assert_eq!(uri(b"/tmp/x"), "file:///tmp/x");
        assert_eq!(uri(b"/"), "file:///");
        assert_eq!(
            uri("/e/sp ace#?%[]@!$&'()*+,;=:~é".as_bytes()),
            "file:///e/sp%20ace%23%3F%25[]@!$&'()*+,;=:~%C3%A9"
        );
        assert_eq!(uri(b"/q\"<>{}`|^\\x"), "file:///q%22%3C%3E%7B%7D%60|^%5Cx");
        assert_eq!(uri(b"/t\tn\nd\x7fe"), "file:///t%09n%0Ad%7Fe");
        assert_eq!(uri(b"/p%2Fq"), "file:///p%252Fq");
        assert_eq!(uri(b"/bad\xffname"), "file:///bad%FFname");
        // Every encoded result decodes back to the same bytes.
        for bytes in [&b"/a b/%41/\xff\xfe/#?"[..], b"/x/\x01\x1f", b"/"] {
            assert_eq!(local(&uri(bytes)), bytes);
        }
        assert_eq!(
            serde_json::to_string(&Uri(PathBuf::from("/a b"))).unwrap(),
            r#""file:///a%20b""#
        );
    }

    #[test]
    fn normalize_is_lexical() {
        let n = |s: &str| normalize(s).map(|p| p.to_string_lossy().into_owned());
        assert_eq!(n("/a/link/../x").as_deref(), Some("/a/x"));
        assert_eq!(n("/../../a/..").as_deref(), Some("/"));
        assert_eq!(n("a/b"), None);
        assert_eq!(n(""), None);
    }
}
