//! The URLs of `http/request`: parsing an `http:`/`https:` URL the way upstream's WHATWG
//! parser reads it, far enough to give the same errors and to print the same normalized
//! text in error messages (lowercase scheme and host, default port dropped, empty path
//! as `/`, credentials never printed, unsafe characters percent-encoded), and resolving a
//! redirect's `Location` against the URL it came from. It owns no I/O and knows nothing
//! of JSON-RPC.
//!
//! Not covered (upstream accepts them; here they fail with upstream's error for the class):
//! non-ASCII host names (IDNA), and IPv4 addresses in hex, octal or fewer than four parts.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

/// A parsed `http:` or `https:` URL, normalized.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Url {
    pub scheme: Scheme,
    /// Lowercase; an IPv6 literal keeps its brackets.
    pub host: String,
    /// None for the scheme's default port.
    pub port: Option<u16>,
    /// The path, starting with `/`, percent-encoded.
    pub path: String,
    /// The query without its `?`, percent-encoded.
    pub query: Option<String>,
    /// The fragment without its `#`; printed, never sent.
    pub fragment: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

impl Scheme {
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }

    fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }
}

/// Why a URL was refused. `Display` gives upstream's wording.
#[derive(Debug, PartialEq, Eq)]
pub enum UrlError {
    /// The text parses, but its scheme is not `http` or `https`; carries the scheme.
    Scheme(String),
    /// The text is not a URL (upstream's parser messages).
    Invalid(&'static str),
}

const RELATIVE: &str = "relative URL without a base";
const EMPTY_HOST: &str = "empty host";
const BAD_PORT: &str = "invalid port number";
const BAD_IPV4: &str = "invalid IPv4 address";
const BAD_IPV6: &str = "invalid IPv6 address";
const BAD_DOMAIN_CHAR: &str = "invalid domain character";
const BAD_IDNA: &str = "invalid international domain name";

impl Url {
    /// Parses an absolute URL. A scheme other than http/https is `UrlError::Scheme`.
    pub fn parse(input: &str) -> Result<Url, UrlError> {
        let text = clean(input);
        let (scheme, rest) = split_scheme(&text).ok_or(UrlError::Invalid(RELATIVE))?;
        let scheme = match scheme.as_str() {
            "http" => Scheme::Http,
            "https" => Scheme::Https,
            _ => return Err(UrlError::Scheme(scheme)),
        };
        // Special schemes ignore any run of slashes (and backslashes) before the authority.
        let rest = rest.trim_start_matches(['/', '\\']);
        let end = rest.find(['/', '\\', '?', '#']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(end);
        let (host, port) = parse_authority(authority, scheme)?;
        let (path, query, fragment) = split_tail(tail);
        Ok(Url { scheme, host, port, path: normalize_path(path), query, fragment })
    }

    /// Resolves a redirect's `Location` against this URL (RFC 3986 reference resolution,
    /// as browsers do it). A scheme other than http/https is `UrlError::Scheme`.
    pub fn join(&self, location: &str) -> Result<Url, UrlError> {
        let text = clean(location);
        if split_scheme(&text).is_some() {
            return Url::parse(&text);
        }
        if text.starts_with("//") || text.starts_with("\\\\") {
            return Url::parse(&format!("{}:{text}", self.scheme.as_str()));
        }
        let (path, query, fragment) = split_tail(&text);
        let mut next = self.clone();
        next.fragment = fragment;
        if path.starts_with('/') || path.starts_with('\\') {
            next.path = normalize_path(path);
            next.query = query;
        } else if !path.is_empty() {
            let dir = &self.path[..self.path.rfind('/').map_or(0, |i| i + 1)];
            next.path = normalize_path(&format!("{dir}{path}"));
            next.query = query;
        } else if query.is_some() {
            next.query = query;
        }
        Ok(next)
    }

    /// `scheme://host[:port]`, for same-origin checks and referers.
    pub fn origin(&self) -> String {
        match self.port {
            Some(port) => format!("{}://{}:{port}", self.scheme.as_str(), self.host),
            None => format!("{}://{}", self.scheme.as_str(), self.host),
        }
    }

    /// What goes on the wire: the URL without its fragment.
    pub fn without_fragment(&self) -> String {
        let mut text = format!("{}{}", self.origin(), self.path);
        if let Some(query) = &self.query {
            text.push('?');
            text.push_str(query);
        }
        text
    }
}

impl fmt::Display for Url {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.without_fragment())?;
        if let Some(fragment) = &self.fragment {
            write!(f, "#{fragment}")?;
        }
        Ok(())
    }
}

impl fmt::Display for UrlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UrlError::Scheme(scheme) => write!(f, "unsupported scheme {scheme}"),
            UrlError::Invalid(message) => f.write_str(message),
        }
    }
}

/// Leading and trailing C0 controls and spaces go; tabs and newlines go everywhere.
fn clean(input: &str) -> String {
    input
        .trim_matches(|c: char| c <= ' ')
        .chars()
        .filter(|c| !matches!(c, '\t' | '\n' | '\r'))
        .collect()
}

/// The lowercase scheme and what follows its `:`, if the text starts with a scheme.
fn split_scheme(text: &str) -> Option<(String, &str)> {
    let colon = text.find(':')?;
    let scheme = &text[..colon];
    let mut chars = scheme.chars();
    let first = chars.next()?;
    let valid = first.is_ascii_alphabetic()
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    valid.then(|| (scheme.to_ascii_lowercase(), &text[colon + 1..]))
}

/// The host (normalized) and port of an authority; credentials are dropped.
fn parse_authority(authority: &str, scheme: Scheme) -> Result<(String, Option<u16>), UrlError> {
    let hostport = authority.rfind('@').map_or(authority, |at| &authority[at + 1..]);
    let (host, port) = if hostport.starts_with('[') {
        let close = hostport.find(']').ok_or(UrlError::Invalid(BAD_IPV6))?;
        let rest = &hostport[close + 1..];
        let port = match rest.strip_prefix(':') {
            Some(port) => Some(port),
            None if rest.is_empty() => None,
            None => return Err(UrlError::Invalid(BAD_IPV6)),
        };
        let ip: Ipv6Addr = hostport[1..close].parse().map_err(|_| UrlError::Invalid(BAD_IPV6))?;
        (format!("[{ip}]"), port)
    } else {
        let (host, port) = match hostport.rfind(':') {
            Some(colon) => (&hostport[..colon], Some(&hostport[colon + 1..])),
            None => (hostport, None),
        };
        (parse_host(host)?, port)
    };
    let port = match port {
        None | Some("") => None,
        Some(digits) => {
            if !digits.bytes().all(|b| b.is_ascii_digit()) {
                return Err(UrlError::Invalid(BAD_PORT));
            }
            let port: u16 = digits.parse().map_err(|_| UrlError::Invalid(BAD_PORT))?;
            (port != scheme.default_port()).then_some(port)
        }
    };
    Ok((host, port))
}

/// A domain or IPv4 host, lowercased and checked.
fn parse_host(host: &str) -> Result<String, UrlError> {
    if host.is_empty() {
        return Err(UrlError::Invalid(EMPTY_HOST));
    }
    let decoded = percent_decode(host);
    let host = String::from_utf8(decoded).map_err(|_| UrlError::Invalid(BAD_IDNA))?;
    if !host.is_ascii() {
        return Err(UrlError::Invalid(BAD_IDNA));
    }
    let host = host.to_ascii_lowercase();
    const FORBIDDEN: &[char] =
        &[' ', '#', '%', '/', ':', '<', '>', '?', '@', '[', '\\', ']', '^', '|'];
    if host.chars().any(|c| c <= ' ' || c == '\x7f' || FORBIDDEN.contains(&c)) {
        return Err(UrlError::Invalid(BAD_DOMAIN_CHAR));
    }
    // A host whose last label is numeric is an IPv4 address (WHATWG "ends in a number").
    let last = host.trim_end_matches('.').rsplit('.').next().unwrap_or("");
    if !last.is_empty() && last.bytes().all(|b| b.is_ascii_digit()) {
        let ip: Ipv4Addr =
            host.trim_end_matches('.').parse().map_err(|_| UrlError::Invalid(BAD_IPV4))?;
        return Ok(ip.to_string());
    }
    Ok(host)
}

/// Splits `path?query#fragment`, percent-encoding query and fragment.
fn split_tail(tail: &str) -> (&str, Option<String>, Option<String>) {
    let (rest, fragment) = match tail.find('#') {
        Some(hash) => (&tail[..hash], Some(encode(&tail[hash + 1..], FRAGMENT_SET))),
        None => (tail, None),
    };
    let (path, query) = match rest.find('?') {
        Some(q) => (&rest[..q], Some(encode(&rest[q + 1..], QUERY_SET))),
        None => (rest, None),
    };
    (path, query, fragment)
}

/// Backslashes become slashes, `.` and `..` segments are resolved, the rest is
/// percent-encoded; an empty path is `/`.
fn normalize_path(path: &str) -> String {
    let path = path.replace('\\', "/");
    let mut segments: Vec<String> = Vec::new();
    let parts: Vec<&str> = path.split('/').skip(1).collect();
    for (index, part) in parts.iter().enumerate() {
        let last = index + 1 == parts.len();
        match part.to_ascii_lowercase().as_str() {
            "." | "%2e" => {
                if last {
                    segments.push(String::new());
                }
            }
            ".." | ".%2e" | "%2e." | "%2e%2e" => {
                segments.pop();
                if last {
                    segments.push(String::new());
                }
            }
            _ => segments.push(encode(part, PATH_SET)),
        }
    }
    format!("/{}", segments.join("/"))
}

const FRAGMENT_SET: &[u8] = b" \"<>`";
const QUERY_SET: &[u8] = b" \"#<>'";
const PATH_SET: &[u8] = b" \"#<>?`{}";

/// Percent-encodes C0 controls, DEL, non-ASCII bytes and `set`; keeps existing escapes.
fn encode(text: &str, set: &[u8]) -> String {
    let mut out = String::with_capacity(text.len());
    for &byte in text.as_bytes() {
        if !(0x20..0x7f).contains(&byte) || set.contains(&byte) {
            out.push_str(&format!("%{byte:02X}"));
        } else {
            out.push(byte as char);
        }
    }
    out
}

fn percent_decode(text: &str) -> Vec<u8> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
        match (bytes[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(value)) => {
                out.push(value);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shown(input: &str) -> String {
        Url::parse(input).map(|u| u.to_string()).unwrap_or_else(|e| format!("error: {e}"))
    }

    #[test]
    fn normalizes_like_upstream() {
        // Each pair was observed on the 0.171 binary's error messages.
        assert_eq!(shown("http://127.0.0.1:1"), "http://127.0.0.1:1/");
        assert_eq!(shown("http://LOCALHOST:80"), "http://localhost/");
        assert_eq!(
            shown("http://127.0.0.1:1/a b?q=1 2#frag"),
            "http://127.0.0.1:1/a%20b?q=1%202#frag"
        );
        assert_eq!(shown("http:/x"), "http://x/");
        assert_eq!(shown("https://user:pw@127.0.0.1:1/"), "https://127.0.0.1:1/");
        assert_eq!(shown("HTTP://127.0.0.1:18765/hello"), "http://127.0.0.1:18765/hello");
        assert_eq!(shown("https://h:443/a/./b/../c"), "https://h/a/c");
        assert_eq!(shown("http://[::1]:8080/"), "http://[::1]:8080/");
    }

    #[test]
    fn refuses_like_upstream() {
        assert_eq!(shown("not a url"), "error: relative URL without a base");
        assert_eq!(shown("/relative"), "error: relative URL without a base");
        assert_eq!(shown("http://"), "error: empty host");
        assert_eq!(shown("http://h:99999/"), "error: invalid port number");
        assert_eq!(shown("http://h:8x/"), "error: invalid port number");
        assert_eq!(shown("http://1.2.3.999/"), "error: invalid IPv4 address");
        assert_eq!(shown("http://a b/"), "error: invalid domain character");
        assert_eq!(Url::parse("ftp://x/"), Err(UrlError::Scheme("ftp".into())));
        assert_eq!(Url::parse("file:///etc/passwd"), Err(UrlError::Scheme("file".into())));
    }

    #[test]
    fn joins_locations() {
        let base = Url::parse("http://h:8/a/b?x#f").unwrap();
        let join = |l: &str| base.join(l).map(|u| u.to_string()).unwrap();
        assert_eq!(join("/hello"), "http://h:8/hello");
        assert_eq!(join("c"), "http://h:8/a/c");
        assert_eq!(join("../c?y"), "http://h:8/c?y");
        assert_eq!(join("?z"), "http://h:8/a/b?z");
        assert_eq!(join("//other/p"), "http://other/p");
        assert_eq!(join("https://s/"), "https://s/");
        assert_eq!(base.join("ftp://x/"), Err(UrlError::Scheme("ftp".into())));
    }
}
