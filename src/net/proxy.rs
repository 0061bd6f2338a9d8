//! Egress proxies for every outbound connection, read as curl reads them: `--proxy` over the
//! environment (`https_proxy`/`HTTPS_PROXY` for https:// and wss://, `http_proxy`/
//! `HTTP_PROXY` for http:// and ws://, `all_proxy`/`ALL_PROXY` for both), and `no_proxy`/
//! `NO_PROXY` exceptions. It owns the one decision "direct or through which proxy" for a
//! target, and the HTTP CONNECT exchange every dial (dial.rs) runs on a socket it connected.
//! It opens no connection itself. It never shows a proxy password: `Debug`,
//! `Display` and every error carry the proxy's host and port only.

use std::fmt;
use std::io::{Read, Write};
use std::net::{IpAddr, TcpStream};
use std::time::Instant;

use base64::Engine;

/// curl's default port for a proxy URL without one.
const DEFAULT_PROXY_PORT: u16 = 1080;
/// Longest CONNECT response head accepted from a proxy, in bytes.
const MAX_CONNECT_HEAD_BYTES: usize = 16 * 1024;

/// One HTTP CONNECT proxy (`http://[user[:password]@]host[:port][/]`), credentials
/// percent-decoded.
#[derive(Clone, PartialEq, Eq)]
pub struct ProxyUrl {
    pub host: String,
    pub port: u16,
    user: Option<String>,
    password: Option<String>,
}

impl fmt::Debug for ProxyUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ProxyUrl({self})")
    }
}

/// `host:port`, never the credentials.
impl fmt::Display for ProxyUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl ProxyUrl {
    /// Parses a proxy URL; `from` names where it came from (`--proxy`, `HTTPS_PROXY`) for
    /// the error, which never repeats the URL (it may hold a password).
    pub fn parse(text: &str, from: &str) -> Result<ProxyUrl, String> {
        let bad = |why: &str| format!("invalid proxy URL in {from}: {why}");
        let text = text.trim();
        let rest = match text.split_once("://") {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => rest,
            Some((scheme, _)) => {
                return Err(bad(&format!(
                    "unsupported scheme `{scheme}` (only http:// CONNECT proxies)"
                )))
            }
            None => text,
        };
        let authority = match rest.split_once('/') {
            Some((authority, "")) => authority,
            Some(_) => return Err(bad("a proxy URL has no path")),
            None => rest,
        };
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((userinfo, hostport)) => (Some(userinfo), hostport),
            None => (None, authority),
        };
        let (user, password) = match userinfo {
            Some(info) => {
                let (user, password) = match info.split_once(':') {
                    Some((u, p)) => (u, Some(p)),
                    None => (info, None),
                };
                let decode = |s: &str| percent_decode(s).ok_or_else(|| bad("bad %-escape"));
                (Some(decode(user)?), password.map(decode).transpose()?)
            }
            None => (None, None),
        };
        let (host, port) = split_host_port(hostport).ok_or_else(|| bad("bad host or port"))?;
        let host_ok = !host.is_empty()
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':'));
        if !host_ok {
            return Err(bad("bad host"));
        }
        Ok(ProxyUrl { host, port: port.unwrap_or(DEFAULT_PROXY_PORT), user, password })
    }

    fn authorization(&self) -> Option<String> {
        if self.user.is_none() && self.password.is_none() {
            return None;
        }
        let pair = format!(
            "{}:{}",
            self.user.as_deref().unwrap_or(""),
            self.password.as_deref().unwrap_or("")
        );
        Some(base64::engine::general_purpose::STANDARD.encode(pair))
    }
}

/// `host[:port]` or `[v6][:port]`; `None` when the port is not a number in 1..=65535.
fn split_host_port(text: &str) -> Option<(String, Option<u16>)> {
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        match after {
            "" => (host, None),
            _ => (host, Some(after.strip_prefix(':')?)),
        }
    } else {
        match text.rsplit_once(':') {
            Some((host, port)) if !host.contains(':') => (host, Some(port)),
            _ => (text, None),
        }
    };
    let port = match port {
        Some(p) => Some(p.parse::<u16>().ok().filter(|p| *p != 0)?),
        None => None,
    };
    Some((host.to_ascii_lowercase(), port))
}

fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// One `NO_PROXY` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Exception {
    /// `*`: no proxy for anything.
    All,
    /// A domain (leading `.` or `*.` removed): the host itself and its subdomains.
    Domain(String, Option<u16>),
    /// An IP literal, or an IP network `addr/bits`.
    Ip(IpAddr, u8, Option<u16>),
}

impl Exception {
    fn parse(entry: &str) -> Option<Exception> {
        let entry = entry.trim();
        if entry.is_empty() {
            return None;
        }
        if entry == "*" {
            return Some(Exception::All);
        }
        if let Some((addr, bits)) = entry.split_once('/') {
            let ip: IpAddr = addr.trim_matches(|c| c == '[' || c == ']').parse().ok()?;
            let max = if ip.is_ipv4() { 32 } else { 128 };
            let bits = bits.parse::<u8>().ok().filter(|b| *b <= max)?;
            return Some(Exception::Ip(ip, bits, None));
        }
        if let Ok(ip) = entry.parse::<IpAddr>() {
            let bits = if ip.is_ipv4() { 32 } else { 128 };
            return Some(Exception::Ip(ip, bits, None));
        }
        let (host, port) = split_host_port(entry)?;
        if let Ok(ip) = host.parse::<IpAddr>() {
            let bits = if ip.is_ipv4() { 32 } else { 128 };
            return Some(Exception::Ip(ip, bits, port));
        }
        let host = host.trim_start_matches("*.").trim_start_matches('.').trim_end_matches('.');
        (!host.is_empty()).then(|| Exception::Domain(host.to_owned(), port))
    }

    fn matches(&self, host: &str, port: u16) -> bool {
        let port_ok = |p: &Option<u16>| p.is_none_or(|p| p == port);
        match self {
            Exception::All => true,
            Exception::Domain(domain, p) => {
                let host = host.trim_end_matches('.');
                port_ok(p)
                    && (host == domain
                        || host.strip_suffix(domain.as_str()).is_some_and(|h| h.ends_with('.')))
            }
            Exception::Ip(net, bits, p) => {
                let Ok(ip) = host.parse::<IpAddr>() else { return false };
                port_ok(p) && in_network(ip, *net, *bits)
            }
        }
    }
}

fn in_network(ip: IpAddr, net: IpAddr, bits: u8) -> bool {
    let (ip, net, width) = match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(b)) => (u32::from(a) as u128, u32::from(b) as u128, 32),
        (IpAddr::V6(a), IpAddr::V6(b)) => (u128::from(a), u128::from(b), 128),
        _ => return false,
    };
    if bits == 0 {
        return true;
    }
    let shift = width - u32::from(bits);
    (ip >> shift) == (net >> shift)
}

/// The proxy choice for every outbound connection of this run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Proxies {
    /// For https:// and wss:// targets.
    https: Option<ProxyUrl>,
    /// For http:// and ws:// targets.
    http: Option<ProxyUrl>,
    exceptions: Vec<Exception>,
}

impl Proxies {
    /// Reads `--proxy` (`flag`) and the environment (`env`). A malformed proxy URL is an
    /// error (a usage error at start-up), never a silent direct connection. An empty
    /// variable counts as unset.
    pub fn from_env(
        flag: Option<&str>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Proxies, String> {
        let var = |names: &[&'static str]| {
            names.iter().find_map(|n| env(n).filter(|v| !v.trim().is_empty()).map(|v| (*n, v)))
        };
        let parse = |found: Option<(&str, String)>| {
            found.map(|(name, value)| ProxyUrl::parse(&value, name)).transpose()
        };
        let exceptions = var(&["no_proxy", "NO_PROXY"])
            .map(|(_, v)| v.split([',', ' ']).filter_map(Exception::parse).collect())
            .unwrap_or_default();
        if let Some(flag) = flag {
            let proxy = ProxyUrl::parse(flag, "--proxy")?;
            return Ok(Proxies { https: Some(proxy.clone()), http: Some(proxy), exceptions });
        }
        let all = parse(var(&["all_proxy", "ALL_PROXY"]))?;
        let https = parse(var(&["https_proxy", "HTTPS_PROXY"]))?.or_else(|| all.clone());
        let http = parse(var(&["http_proxy", "HTTP_PROXY"]))?.or(all);
        Ok(Proxies { https, http, exceptions })
    }

    /// The proxy for `host:port` (`secure`: https:// or wss://), or `None` for direct.
    pub fn select(&self, secure: bool, host: &str, port: u16) -> Option<&ProxyUrl> {
        let host = host.trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase();
        if self.exceptions.iter().any(|e| e.matches(&host, port)) {
            return None;
        }
        if secure {
            self.https.as_ref()
        } else {
            self.http.as_ref()
        }
    }

    /// [`Proxies::select`] for a URL (http, https, ws or wss).
    pub fn for_url(&self, url: &str) -> Option<&ProxyUrl> {
        let (scheme, rest) = url.split_once("://")?;
        let secure = matches!(scheme, "https" | "wss");
        let authority = rest.split(['/', '?', '#']).next()?;
        let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
        let (host, port) = split_host_port(authority)?;
        self.select(secure, &host, port.unwrap_or(if secure { 443 } else { 80 }))
    }
}

/// Asks `proxy`, on `tcp` already connected to it, for a tunnel to `host:port` (HTTP
/// CONNECT, basic auth when the URL has credentials). Any answer but 2xx is an error with
/// the status. The socket keeps read/write timeouts for `deadline`.
pub fn connect_over(
    mut tcp: TcpStream,
    proxy: &ProxyUrl,
    host: &str,
    port: u16,
    deadline: Instant,
) -> Result<TcpStream, String> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(format!("proxy {proxy}: timed out"));
    }
    tcp.set_read_timeout(Some(left))
        .and_then(|()| tcp.set_write_timeout(Some(left)))
        .map_err(|e| format!("proxy {proxy}: {e}"))?;
    let target =
        if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") };
    let mut head = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
    if let Some(credentials) = proxy.authorization() {
        head.push_str(&format!("Proxy-Authorization: Basic {credentials}\r\n"));
    }
    head.push_str("\r\n");
    tcp.write_all(head.as_bytes()).map_err(|e| format!("proxy {proxy}: CONNECT: {e}"))?;
    let status = read_status(&mut tcp).map_err(|e| format!("proxy {proxy}: CONNECT: {e}"))?;
    if !(200..300).contains(&status) {
        let hint = match (status, proxy.authorization().is_some()) {
            (407, false) => " (proxy authentication required; the proxy URL has no credentials)",
            (407, true) => " (proxy authentication required; the proxy refused the credentials)",
            _ => "",
        };
        return Err(format!("proxy {proxy} answered CONNECT {target} with HTTP {status}{hint}"));
    }
    Ok(tcp)
}

/// Reads the proxy's response head byte by byte (nothing of the tunnel is consumed) and
/// returns its status code.
fn read_status(tcp: &mut TcpStream) -> Result<u16, String> {
    let mut head = Vec::with_capacity(256);
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() >= MAX_CONNECT_HEAD_BYTES {
            return Err("response head too long".to_owned());
        }
        match tcp.read(&mut byte) {
            Ok(0) => return Err("proxy closed the connection".to_owned()),
            Ok(_) => head.push(byte[0]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if crate::net::tls::is_timeout(&e) => return Err("timed out".to_owned()),
            Err(e) => return Err(e.to_string()),
        }
    }
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut response = httparse::Response::new(&mut headers);
    match response.parse(&head) {
        Ok(httparse::Status::Complete(_)) => {
            response.code.ok_or_else(|| "response without status".to_owned())
        }
        _ => Err("malformed response".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |k| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())
    }

    #[test]
    fn proxy_urls_parse_with_decoded_credentials_and_never_show_them() {
        let p = ProxyUrl::parse("http://us%40er:p%3Ass@Proxy.corp:3128/", "HTTPS_PROXY").unwrap();
        assert_eq!((p.host.as_str(), p.port), ("proxy.corp", 3128));
        assert_eq!(p.user.as_deref(), Some("us@er"));
        assert_eq!(p.password.as_deref(), Some("p:ss"));
        assert_eq!(format!("{p} {p:?}"), "proxy.corp:3128 ProxyUrl(proxy.corp:3128)");
        assert_eq!(ProxyUrl::parse("proxy", "x").unwrap().port, 1080);
        assert_eq!(ProxyUrl::parse("http://[::1]:8080", "x").unwrap().to_string(), "[::1]:8080");
        for bad in [
            "socks5://h:1",
            "http://h:0",
            "http://h:99999",
            "http://",
            "http://h/x",
            "http://u:%zz@h",
        ] {
            let err = ProxyUrl::parse(bad, "--proxy").unwrap_err();
            assert!(err.starts_with("invalid proxy URL in --proxy"), "{bad}: {err}");
        }
        let err = ProxyUrl::parse("http://u:s3cret@h:x", "ALL_PROXY").unwrap_err();
        assert!(!err.contains("s3cret"), "{err}");
    }

    #[test]
    fn selection_follows_curl() {
        let env = env_of(&[
            ("HTTPS_PROXY", "http://secure:1"),
            ("http_proxy", "http://plain:2"),
            ("NO_PROXY", "internal.corp, .svc,*.k8s, 10.0.0.0/8, 192.168.1.1, localhost:8080"),
        ]);
        let p = Proxies::from_env(None, &env).unwrap();
        let host = |secure, h: &str, port| p.select(secure, h, port).map(|p| p.host.clone());
        assert_eq!(host(true, "reg.example", 443).as_deref(), Some("secure"));
        assert_eq!(host(false, "reg.example", 80).as_deref(), Some("plain"));
        for direct in
            ["internal.corp", "a.internal.corp", "x.svc", "svc", "a.k8s", "10.1.2.3", "192.168.1.1"]
        {
            assert_eq!(host(true, direct, 443), None, "{direct}");
        }
        assert_eq!(host(true, "notinternal.corp", 443).as_deref(), Some("secure"));
        assert_eq!(host(true, "192.168.1.2", 443).as_deref(), Some("secure"));
        assert_eq!(host(false, "localhost", 8080), None);
        assert_eq!(host(false, "localhost", 80).as_deref(), Some("plain"));
        assert_eq!(p.for_url("wss://a.svc/x?sig=1"), None);
        assert_eq!(p.for_url("wss://u@reg.example:8443/").map(|p| p.port), Some(1));
        assert_eq!(p.for_url("ws://[::1]:9/").map(|p| p.port), Some(2));

        let all =
            Proxies::from_env(None, &env_of(&[("ALL_PROXY", "h:9"), ("no_proxy", "*")])).unwrap();
        assert_eq!(all.select(true, "x", 1), None);
        let all = Proxies::from_env(None, &env_of(&[("ALL_PROXY", "h:9")])).unwrap();
        assert_eq!(all.select(false, "x", 1).map(|p| p.port), Some(9));
        let flag = Proxies::from_env(Some("http://f:7"), &env).unwrap();
        assert_eq!(flag.select(false, "reg.example", 80).map(|p| p.port), Some(7));
        assert_eq!(flag.select(true, "x.svc", 443), None);
        assert!(Proxies::from_env(None, &env_of(&[("HTTPS_PROXY", "ftp://x")])).is_err());
        assert_eq!(
            Proxies::from_env(None, &env_of(&[("HTTPS_PROXY", " ")])).unwrap(),
            Proxies::default()
        );
    }
}
