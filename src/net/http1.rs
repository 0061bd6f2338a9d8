//! One HTTP/1.1 request and its response, for the registries, `http/request` and `doctor`:
//! the request head and a `Content-Length` body go out on a connection dial.rs opened, the
//! response head is read (interim 1xx answers skipped), and the body comes back as a
//! reader framed by `Content-Length`, the chunked transfer coding or the end of the
//! connection, so nothing past the response is ever read. One request per connection;
//! every read and write before the caller's deadline, if it gives one. It never logs, and
//! its errors carry no header value.

use std::fmt;
use std::io::{self, Read, Write};
use std::time::Instant;

use super::dial::Dialer;
use crate::net::tls::{self, Stream};

/// Longest response head accepted (status line and headers).
const MAX_HEAD_BYTES: usize = 64 << 10;
/// Most response headers accepted.
const MAX_HEADERS: usize = 128;
/// Longest chunk-size line (with extensions) or trailer line accepted.
const MAX_LINE_BYTES: usize = 8 << 10;
/// Most trailer bytes accepted after the last chunk (they are read and dropped).
const MAX_TRAILER_BYTES: usize = 64 << 10;
/// Bytes asked of the socket per read while buffering.
const READ_BYTES: usize = 16 << 10;

/// An `http(s)://` or `ws(s)://` URL split for a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub secure: bool,
    /// Without the brackets of an IPv6 literal.
    pub host: String,
    pub port: u16,
    /// Origin form: the path and query (`/` when the URL has no path).
    pub path: String,
}

impl Target {
    /// An `http://` or `https://` URL.
    pub fn parse(url: &str) -> Result<Target, String> {
        Target::parse_as(url, "https", "http")
    }

    /// A `ws://` or `wss://` URL.
    pub fn parse_websocket(url: &str) -> Result<Target, String> {
        Target::parse_as(url, "wss", "ws")
    }

    fn parse_as(url: &str, secure: &str, plain: &str) -> Result<Target, String> {
        let uri: tungstenite::http::Uri = url.parse().map_err(|_| "not a URL".to_owned())?;
        let secure = match uri.scheme_str() {
            Some(s) if s == secure => true,
            Some(s) if s == plain => false,
            _ => return Err(format!("not a {plain}:// or {secure}:// URL")),
        };
        let host = uri.host().ok_or("the URL has no host")?;
        let host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
        let port = uri.port_u16().unwrap_or(if secure { 443 } else { 80 });
        let path = uri.path_and_query().map_or("/".to_owned(), |p| p.as_str().to_owned());
        Ok(Target { secure, host, port, path })
    }

    /// The `Host` header: the host, and the port unless it is the scheme's default.
    pub fn host_header(&self) -> String {
        let host = match self.host.contains(':') {
            true => format!("[{}]", self.host),
            false => self.host.clone(),
        };
        match (self.secure, self.port) {
            (true, 443) | (false, 80) => host,
            (_, port) => format!("{host}:{port}"),
        }
    }

    /// `host:port`, as a CONNECT request names it.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// Connects to `target` (through its proxy, with TLS for https) and sends `method`,
/// `headers` and `body` to it, all before `deadline`, which also bounds reading the
/// returned body.
pub fn request(
    dialer: &Dialer,
    target: &Target,
    method: &str,
    headers: &[(&str, &[u8])],
    body: Option<&[u8]>,
    deadline: Instant,
) -> Result<Response, String> {
    let stream = dialer.connect(target.secure, &target.host, target.port, deadline)?;
    let authority = target.host_header();
    let request = Request { method, authority: &authority, target: &target.path, headers, body };
    send(stream, &request, Some(deadline)).map_err(|e| e.to_string())
}

/// One request as it goes on the wire.
pub struct Request<'a> {
    pub method: &'a str,
    /// The `Host` header: `host:port`, an IPv6 literal in brackets.
    pub authority: &'a str,
    /// Origin form: path and query.
    pub target: &'a str,
    /// Written as given, in order. `host`, `accept` and `content-length` are added when
    /// absent (`accept: */*`; a length only with a body).
    pub headers: &'a [(&'a str, &'a [u8])],
    /// `None` sends no body and no `Content-Length`.
    pub body: Option<&'a [u8]>,
}

/// Response headers: names lowercase, in the order received; values as sent.
pub type Headers = Vec<(String, Vec<u8>)>;

/// A response head and its body, still to be read.
pub struct Response {
    pub status: u16,
    pub headers: Headers,
    pub body: Body,
}

impl Response {
    /// The first value of header `name` (lowercase), when it is UTF-8.
    pub fn header(&self, name: &str) -> Option<&str> {
        let (_, value) = self.headers.iter().find(|(n, _)| n == name)?;
        std::str::from_utf8(value).ok()
    }
}

/// Sends `request` on `stream` and reads the response head, before `deadline` if any.
pub fn send(stream: Stream, request: &Request, deadline: Option<Instant>) -> io::Result<Response> {
    let mut conn = Conn::new(stream, deadline)?;
    conn.write(&head(request))?;
    if let Some(body) = request.body.filter(|b| !b.is_empty()) {
        conn.write(body)?;
    }
    loop {
        let (status, headers) = conn.read_head()?;
        if (100..200).contains(&status) && status != 101 {
            continue;
        }
        let framing = framing(request.method, status, &headers)?;
        return Ok(Response { status, headers, body: Body { conn, framing } });
    }
}

fn head(request: &Request) -> Vec<u8> {
    let given = |name: &str| request.headers.iter().any(|(n, _)| n.eq_ignore_ascii_case(name));
    let mut head = Vec::with_capacity(256);
    head.extend_from_slice(
        format!("{} {} HTTP/1.1\r\n", request.method, request.target).as_bytes(),
    );
    let mut line = |name: &str, value: &[u8]| {
        head.extend_from_slice(name.as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value);
        head.extend_from_slice(b"\r\n");
    };
    if !given("host") {
        line("host", request.authority.as_bytes());
    }
    for (name, value) in request.headers {
        line(name, value);
    }
    if let Some(body) = request.body {
        if !given("content-length") {
            line("content-length", body.len().to_string().as_bytes());
        }
    }
    if !given("accept") {
        line("accept", b"*/*");
    }
    head.extend_from_slice(b"\r\n");
    head
}

/// How the end of a response body is found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// This many bytes are left.
    Length(u64),
    /// Inside the chunked coding: `left` bytes of the current chunk, then its CRLF
    /// (`first`: no chunk read yet, so no CRLF is due).
    Chunked {
        left: u64,
        first: bool,
    },
    /// Everything until the server closes the connection.
    Close,
    Done,
}

fn bad(message: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.into())
}

/// RFC 9112 §6.3, for a client: no body for HEAD, 1xx, 204 and 304; chunked when it is the
/// last transfer coding, other codings until close; else one agreed `Content-Length`, or
/// until close.
fn framing(method: &str, status: u16, headers: &Headers) -> io::Result<Framing> {
    if method.eq_ignore_ascii_case("HEAD") || status < 200 || status == 204 || status == 304 {
        return Ok(Framing::Length(0));
    }
    let values = |name: &'static str| {
        headers.iter().filter(move |(n, _)| n == name).map(|(_, v)| String::from_utf8_lossy(v))
    };
    if let Some(last) = values("transfer-encoding").next_back() {
        let chunked =
            last.rsplit(',').next().is_some_and(|c| c.trim().eq_ignore_ascii_case("chunked"));
        return Ok(if chunked {
            Framing::Chunked { left: 0, first: true }
        } else {
            Framing::Close
        });
    }
    let mut length = None;
    for value in values("content-length") {
        for part in value.split(',') {
            let part = part.trim();
            let n = part
                .parse::<u64>()
                .ok()
                .filter(|_| part.bytes().all(|b| b.is_ascii_digit()))
                .ok_or_else(|| bad("invalid content-length in the response"))?;
            if length.is_some_and(|l| l != n) {
                return Err(bad("conflicting content-length values in the response"));
            }
            length = Some(n);
        }
    }
    Ok(length.map_or(Framing::Close, Framing::Length))
}

/// The connection with what was read from it and not yet used.
struct Conn {
    stream: Stream,
    deadline: Option<Instant>,
    buf: Vec<u8>,
    pos: usize,
}

impl Conn {
    fn new(stream: Stream, deadline: Option<Instant>) -> io::Result<Conn> {
        if deadline.is_none() {
            let tcp = stream.tcp();
            tcp.set_read_timeout(None)?;
            tcp.set_write_timeout(None)?;
        }
        Ok(Conn { stream, deadline, buf: Vec::new(), pos: 0 })
    }

    /// Socket timeouts for what is left of the deadline, before each read and write.
    fn arm(&self) -> io::Result<()> {
        let Some(deadline) = self.deadline else { return Ok(()) };
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "timed out"));
        }
        let tcp = self.stream.tcp();
        tcp.set_read_timeout(Some(left))?;
        tcp.set_write_timeout(Some(left))
    }

    fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.arm()?;
        self.stream.write_all(bytes).and_then(|()| self.stream.flush()).map_err(timed_out)
    }

    /// Reads from the socket into `out`; 0 at the end of the stream.
    fn read_socket(&mut self, out: &mut [u8]) -> io::Result<usize> {
        self.arm()?;
        loop {
            match self.stream.read(out) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => return other.map_err(timed_out),
            }
        }
    }

    /// Appends what the socket has to the buffer; 0 at the end of the stream.
    fn fill(&mut self) -> io::Result<usize> {
        if self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        }
        let len = self.buf.len();
        self.buf.resize(len + READ_BYTES, 0);
        let mut spare = std::mem::take(&mut self.buf);
        let result = self.read_socket(&mut spare[len..]);
        spare.truncate(len + *result.as_ref().unwrap_or(&0));
        self.buf = spare;
        result
    }

    fn buffered(&self) -> &[u8] {
        &self.buf[self.pos..]
    }

    /// Up to `max` body bytes into `out`: buffered ones first, else straight from the
    /// socket. 0 at the end of the stream.
    fn read_some(&mut self, out: &mut [u8], max: u64) -> io::Result<usize> {
        let want = out.len().min(usize::try_from(max).unwrap_or(usize::MAX));
        if want == 0 {
            return Ok(0);
        }
        let buffered = self.buffered();
        if !buffered.is_empty() {
            let n = buffered.len().min(want);
            out[..n].copy_from_slice(&buffered[..n]);
            self.pos += n;
            return Ok(n);
        }
        self.read_socket(&mut out[..want])
    }

    /// The next response head: status and headers (names lowercased).
    fn read_head(&mut self) -> io::Result<(u16, Headers)> {
        loop {
            if let Some(end) = find(self.buffered(), b"\r\n\r\n") {
                let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
                let mut parsed = httparse::Response::new(&mut slots);
                let head = &self.buf[self.pos..self.pos + end + 4];
                match parsed.parse(head) {
                    Ok(httparse::Status::Complete(_)) => {}
                    Ok(httparse::Status::Partial) | Err(_) => {
                        return Err(bad("the server's answer is not an HTTP/1.1 response"))
                    }
                }
                let status = parsed.code.unwrap_or(0);
                let headers = parsed
                    .headers
                    .iter()
                    .map(|h| (h.name.to_ascii_lowercase(), h.value.to_vec()))
                    .collect();
                self.pos += end + 4;
                return Ok((status, headers));
            }
            if self.buffered().len() > MAX_HEAD_BYTES {
                return Err(bad("the response head is longer than 64 KiB"));
            }
            if self.fill()? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the server closed the connection before a complete response head",
                ));
            }
        }
    }

    /// One CRLF-terminated line, without its CRLF.
    fn read_line(&mut self) -> io::Result<Vec<u8>> {
        loop {
            if let Some(end) = find(self.buffered(), b"\r\n") {
                let line = self.buffered()[..end].to_vec();
                self.pos += end + 2;
                return Ok(line);
            }
            if self.buffered().len() > MAX_LINE_BYTES {
                return Err(bad("a chunk line of the response is too long"));
            }
            if self.fill()? == 0 {
                return Err(truncated());
            }
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// A socket timeout reads as `TimedOut`, whichever of the two kinds the OS gave.
fn timed_out(e: io::Error) -> io::Error {
    if tls::is_timeout(&e) {
        io::Error::new(io::ErrorKind::TimedOut, "timed out")
    } else {
        e
    }
}

fn truncated() -> io::Error {
    io::Error::new(io::ErrorKind::UnexpectedEof, "the connection ended inside the response body")
}

/// Why a body could not be read whole.
#[derive(Debug)]
pub enum BodyError {
    /// It is longer than the limit given.
    TooLarge(u64),
    Io(io::Error),
}

impl fmt::Display for BodyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BodyError::TooLarge(limit) => write!(f, "response body exceeds {limit} bytes"),
            BodyError::Io(e) => e.fmt(f),
        }
    }
}

/// A response body: `Read` gives exactly its bytes, decoded from the chunked coding, and
/// fails (`UnexpectedEof`) when the connection ends before the framing says it should.
pub struct Body {
    conn: Conn,
    framing: Framing,
}

impl Body {
    /// The whole body, or `TooLarge` as soon as it passes `limit` bytes.
    pub fn read_to_vec(&mut self, limit: u64) -> Result<Vec<u8>, BodyError> {
        if let Framing::Length(n) = self.framing {
            if n > limit {
                return Err(BodyError::TooLarge(limit));
            }
        }
        let mut out = Vec::new();
        let mut piece = [0u8; READ_BYTES];
        loop {
            match self.read(&mut piece) {
                Ok(0) => return Ok(out),
                Ok(n) if (out.len() + n) as u64 > limit => return Err(BodyError::TooLarge(limit)),
                Ok(n) => out.extend_from_slice(&piece[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(BodyError::Io(e)),
            }
        }
    }

    /// Reads past the end of the current chunk: its CRLF, the next size line, and after
    /// the last chunk the trailers. Leaves `framing` at the next chunk or `Done`.
    fn next_chunk(&mut self, first: bool) -> io::Result<()> {
        if !first && !self.conn.read_line()?.is_empty() {
            return Err(bad("a chunk of the response is longer than its size"));
        }
        let line = self.conn.read_line()?;
        let size = std::str::from_utf8(&line)
            .ok()
            .map(|l| l.split(';').next().unwrap_or("").trim())
            .filter(|s| !s.is_empty() && s.len() <= 16)
            .and_then(|s| u64::from_str_radix(s, 16).ok())
            .ok_or_else(|| bad("invalid chunk size in the response"))?;
        if size > 0 {
            self.framing = Framing::Chunked { left: size, first: false };
            return Ok(());
        }
        let mut trailers = 0;
        loop {
            let line = self.conn.read_line()?;
            if line.is_empty() {
                self.framing = Framing::Done;
                return Ok(());
            }
            trailers += line.len() + 2;
            if trailers > MAX_TRAILER_BYTES {
                return Err(bad("the response trailers are longer than 64 KiB"));
            }
        }
    }
}

impl Read for Body {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        loop {
            match self.framing {
                Framing::Done | Framing::Length(0) => {
                    self.framing = Framing::Done;
                    return Ok(0);
                }
                Framing::Length(left) => {
                    let n = self.conn.read_some(out, left)?;
                    if n == 0 {
                        return Err(truncated());
                    }
                    self.framing = Framing::Length(left - n as u64);
                    return Ok(n);
                }
                Framing::Chunked { left: 0, first } => self.next_chunk(first)?,
                Framing::Chunked { left, first } => {
                    let n = self.conn.read_some(out, left)?;
                    if n == 0 {
                        return Err(truncated());
                    }
                    self.framing = Framing::Chunked { left: left - n as u64, first };
                    return Ok(n);
                }
                Framing::Close => {
                    return match self.conn.read_some(out, u64::MAX) {
                        Ok(0) => {
                            self.framing = Framing::Done;
                            Ok(0)
                        }
                        // A TLS server that closes without close_notify: the body ends there.
                        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                            self.framing = Framing::Done;
                            Ok(0)
                        }
                        other => other,
                    };
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};
    use std::time::Duration;

    /// Serves `answer` (split into `pieces` writes) to one request and returns what the
    /// client sent; the response as the client read it.
    fn exchange(method: &str, answer: &[&[u8]]) -> (String, io::Result<(u16, Vec<u8>)>) {
        let answer: Vec<Vec<u8>> = answer.iter().map(|piece| piece.to_vec()).collect();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let (mut sock, _) = listener.accept().unwrap();
            sock.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut seen = Vec::new();
            let mut buf = [0u8; 4096];
            while find(&seen, b"\r\n\r\n").is_none() {
                let n = sock.read(&mut buf).unwrap();
                assert!(n > 0, "client closed early");
                seen.extend_from_slice(&buf[..n]);
            }
            for piece in &answer {
                sock.write_all(piece).unwrap();
                sock.flush().unwrap();
            }
            String::from_utf8(seen).unwrap()
        });
        let tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let request = Request {
            method,
            authority: "example.test:8080",
            target: "/a?b=c",
            headers: &[("x-one", b"1"), ("x-one", b"2")],
            body: None,
        };
        let deadline = Some(Instant::now() + Duration::from_secs(10));
        let result = send(Stream::Plain(tcp), &request, deadline).and_then(|mut r| {
            let mut body = Vec::new();
            r.body.read_to_end(&mut body)?;
            Ok((r.status, body))
        });
        (server.join().unwrap(), result)
    }

    #[test]
    fn the_request_head_carries_host_headers_in_order_and_accept() {
        let (seen, got) = exchange("GET", &[b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"]);
        assert_eq!(
            seen,
            "GET /a?b=c HTTP/1.1\r\nhost: example.test:8080\r\nx-one: 1\r\nx-one: 2\r\naccept: */*\r\n\r\n"
        );
        assert_eq!(got.unwrap(), (200, b"ok".to_vec()));
    }

    #[test]
    fn bodies_are_framed_by_length_chunks_or_close() {
        let (_, got) = exchange(
            "GET",
            &[b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n3;x=y\r\nabc\r\n", b"1\r\nd\r\n0\r\nT: 1\r\n\r\nJUNK"],
        );
        assert_eq!(got.unwrap(), (200, b"abcd".to_vec()));
        let (_, got) = exchange("GET", &[b"HTTP/1.1 200 OK\r\n\r\nuntil ", b"close"]);
        assert_eq!(got.unwrap(), (200, b"until close".to_vec()));
        let (_, got) = exchange("HEAD", &[b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\n"]);
        assert_eq!(got.unwrap(), (200, Vec::new()));
        let (_, got) = exchange("GET", &[b"HTTP/1.1 204 No Content\r\n\r\nJUNK"]);
        assert_eq!(got.unwrap(), (204, Vec::new()));
        let (_, got) = exchange("GET", &[b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nabcdEXTRA"]);
        assert_eq!(got.unwrap(), (200, b"abcd".to_vec()));
    }

    #[test]
    fn broken_responses_are_errors() {
        for (answer, kind) in [
            (
                &[&b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\nshort"[..]][..],
                io::ErrorKind::UnexpectedEof,
            ),
            (
                &[&b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nab"[..]][..],
                io::ErrorKind::UnexpectedEof,
            ),
            (
                &[&b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n"[..]][..],
                io::ErrorKind::InvalidData,
            ),
            (
                &[&b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\nab"[..]][..],
                io::ErrorKind::InvalidData,
            ),
            (
                &[&b"HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n"[..]][..],
                io::ErrorKind::InvalidData,
            ),
            (&[&b"SSH-2.0-OpenSSH\r\n\r\n"[..]][..], io::ErrorKind::InvalidData),
            (&[&b"HTTP/1.1 200 OK\r\n"[..]][..], io::ErrorKind::UnexpectedEof),
        ] {
            let (_, got) = exchange("GET", answer);
            assert_eq!(got.unwrap_err().kind(), kind, "{:?}", String::from_utf8_lossy(answer[0]));
        }
    }

    #[test]
    fn a_body_over_the_limit_is_refused() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let (mut sock, _) = listener.accept().unwrap();
            let mut buf = [0u8; 1024];
            let _ = sock.read(&mut buf).unwrap();
            sock.write_all(b"HTTP/1.1 200 OK\r\n\r\n0123456789").unwrap();
        });
        let tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let request =
            Request { method: "POST", authority: "h", target: "/", headers: &[], body: Some(b"x") };
        let deadline = Some(Instant::now() + Duration::from_secs(10));
        let mut response = send(Stream::Plain(tcp), &request, deadline).unwrap();
        assert!(matches!(response.body.read_to_vec(4), Err(BodyError::TooLarge(4))));
        server.join().unwrap();
    }

    #[test]
    fn targets_split_urls() {
        let t = Target::parse("https://[::1]:8443/cloud/x?y=1").unwrap();
        assert_eq!(
            (t.secure, t.host.as_str(), t.port, t.path.as_str()),
            (true, "::1", 8443, "/cloud/x?y=1")
        );
        assert_eq!(
            (t.authority().as_str(), t.host_header().as_str()),
            ("[::1]:8443", "[::1]:8443")
        );
        let t = Target::parse("http://h").unwrap();
        assert_eq!(
            (t.path.as_str(), t.authority().as_str(), t.host_header().as_str()),
            ("/", "h:80", "h")
        );
        assert_eq!(Target::parse("ftp://h/").unwrap_err(), "not a http:// or https:// URL");
        let t = Target::parse_websocket("wss://r.example/rv?sig=x").unwrap();
        assert_eq!((t.secure, t.port, t.path.as_str()), (true, 443, "/rv?sig=x"));
        assert!(Target::parse_websocket("https://r.example/").is_err());
    }
}
