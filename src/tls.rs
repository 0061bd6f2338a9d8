//! TLS for the cloud legs (PROTOCOL.md §8.7): the one trust list shared by registry HTTPS
//! and rendezvous `wss://`, the rustls client configuration built from it (ring provider,
//! verification always on), and the byte streams every websocket runs over — `Stream::Plain`
//! for local and `ws://` sockets, `Stream::Tls` for `wss://`. It owns no websocket or
//! protocol logic and never logs certificate contents.
//!
//! `TlsStream` exists because `rustls::StreamOwned` may read from the socket inside `write`,
//! which would consume input that the reader thread is waiting for in `poll(2)` (STYLE.md).
//! Here `write` and `flush` only ever write to the socket; `read` may write (to answer a
//! key update), which is harmless because the reader holds the same lock as writers.

use std::fs;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore};

/// System CA bundles, most common first; the first one that exists is added to the trust
/// list. They hold the same roots on every distribution that ships one, so one is enough.
const SYSTEM_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",
    "/etc/ssl/ca-bundle.pem",
    "/etc/pki/tls/cacert.pem",
    "/etc/ssl/cert.pem",
];

/// Builds the trust list of §8.7: the bundled Mozilla roots, the system bundle when one
/// exists, and every certificate of `ca_file` (the `--ca-file` or `SSL_CERT_FILE` bundle).
/// A `ca_file` that cannot be read or holds no valid PEM certificate is a startup error
/// (exit 2); a broken system bundle is skipped, since the operator did not name it.
pub fn trust_roots(ca_file: Option<&Path>) -> Result<Vec<CertificateDer<'static>>, String> {
    let mut roots: Vec<CertificateDer<'static>> = webpki_root_certs::TLS_SERVER_ROOT_CERTS.to_vec();
    if let Some(path) = SYSTEM_BUNDLES.iter().map(Path::new).find(|p| p.is_file()) {
        match read_pem_bundle(path) {
            Ok(certs) => {
                log::debug!("added {} certificates from {}", certs.len(), path.display());
                roots.extend(certs);
            }
            Err(err) => log::debug!("ignoring system CA bundle {}: {err}", path.display()),
        }
    }
    if let Some(path) = ca_file {
        let certs = read_pem_bundle(path).map_err(|err| {
            format!(
                "executor registry configuration error: CA file `{}` {err}",
                path.display()
            )
        })?;
        roots.extend(certs);
    }
    Ok(roots)
}

/// Reads every `CERTIFICATE` block of a PEM file; the error text continues a sentence that
/// starts with the file name.
fn read_pem_bundle(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let bytes = fs::read(path).map_err(|err| format!("could not be read: {err}"))?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| format!("is not a valid PEM certificate bundle: {err}"))?;
    if certs.is_empty() {
        return Err("is not a valid PEM certificate bundle: no CERTIFICATE block".to_owned());
    }
    Ok(certs)
}

/// The rustls client configuration for `wss://`: ring provider, the given roots, full
/// certificate and hostname verification. Roots rustls cannot parse are skipped (one odd
/// certificate in a system bundle must not disable TLS).
pub fn client_config(roots: &[CertificateDer<'static>]) -> Arc<ClientConfig> {
    let mut store = RootCertStore::empty();
    let (added, ignored) = store.add_parsable_certificates(roots.iter().cloned());
    log::debug!("trust list: {added} roots, {ignored} unparsable skipped");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("the ring provider supports the default TLS versions")
        .with_root_certificates(store)
        .with_no_client_auth();
    Arc::new(config)
}

/// A client TLS session over a TCP socket that works on a non-blocking socket: `read`
/// returns `WouldBlock` when neither decrypted bytes nor socket bytes are available, and
/// `write`/`flush` return `WouldBlock` when the socket cannot take more. Callers read until
/// `WouldBlock` before polling the socket again, so no plaintext is left buffered unseen.
pub struct TlsStream {
    conn: ClientConnection,
    sock: TcpStream,
}

impl TlsStream {
    /// Runs the TLS handshake with `host` (a DNS name or IP literal, without brackets) on a
    /// blocking socket, giving up at `deadline`. The socket is left blocking with its
    /// timeouts set; callers switch it to non-blocking once the websocket is up.
    pub fn connect(
        sock: TcpStream,
        host: &str,
        config: Arc<ClientConfig>,
        deadline: Instant,
    ) -> io::Result<TlsStream> {
        let name = ServerName::try_from(host.to_owned())
            .map_err(|err| io::Error::new(io::ErrorKind::InvalidInput, err))?;
        let conn = ClientConnection::new(config, name).map_err(io::Error::other)?;
        let mut stream = TlsStream { conn, sock };
        while stream.conn.is_handshaking() {
            set_timeouts(&stream.sock, deadline)?;
            match stream.conn.complete_io(&mut stream.sock) {
                Ok(_) => {}
                Err(err) if is_timeout(&err) => {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "TLS handshake timed out",
                    ));
                }
                Err(err) => return Err(err),
            }
        }
        Ok(stream)
    }

    /// The TCP socket, for `set_nonblocking`, timeouts, `shutdown` and `poll`.
    pub fn tcp(&self) -> &TcpStream {
        &self.sock
    }

    /// Writes queued TLS records to the socket until none are left or it would block.
    fn write_pending(&mut self) -> io::Result<()> {
        while self.conn.wants_write() {
            self.conn.write_tls(&mut self.sock)?;
        }
        Ok(())
    }
}

impl Read for TlsStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            match self.conn.reader().read(buf) {
                Ok(n) => return Ok(n),
                // A peer that closes TCP without close_notify ends the stream like a plain
                // socket does: websocket framing already detects truncated messages.
                Err(err) if err.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
                Err(err) => return Err(err),
            }
            // No plaintext buffered: fetch more records. `read_tls` returning 0 is TCP EOF;
            // the next `reader().read` then reports the clean or unclean close.
            self.conn.read_tls(&mut self.sock)?;
            self.conn
                .process_new_packets()
                .map_err(|err| io::Error::new(io::ErrorKind::InvalidData, err))?;
            // Records such as a key update need an answer; a full socket just means it goes
            // out with the next write or flush.
            match self.write_pending() {
                Err(err) if err.kind() != io::ErrorKind::WouldBlock => return Err(err),
                _ => {}
            }
        }
    }
}

impl Write for TlsStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        // rustls takes at most its buffer limit; 0 means its outgoing buffer is full.
        let accepted = self.conn.writer().write(buf)?;
        match self.write_pending() {
            // The outgoing buffer drained: now rustls has room for this write.
            Ok(()) if accepted == 0 => {
                return match self.conn.writer().write(buf)? {
                    0 => Err(io::ErrorKind::WouldBlock.into()),
                    n => Ok(n),
                };
            }
            Ok(()) => return Ok(accepted),
            // Bytes rustls accepted are ours to deliver: report them and let the next
            // `write`/`flush` surface the socket's state.
            Err(_) if accepted > 0 => return Ok(accepted),
            Err(err) => return Err(err),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        self.conn.writer().flush()?;
        self.write_pending()?;
        self.sock.flush()
    }
}

fn set_timeouts(sock: &TcpStream, deadline: Instant) -> io::Result<()> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(io::Error::new(io::ErrorKind::TimedOut, "deadline passed"));
    }
    sock.set_read_timeout(Some(left))?;
    sock.set_write_timeout(Some(left))
}

/// A socket timeout shows up as `WouldBlock` on Unix and `TimedOut` elsewhere.
pub fn is_timeout(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// The byte stream under every websocket: plain TCP for local and `ws://` connections,
/// TLS for `wss://`.
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream>),
}

impl Stream {
    /// The TCP socket underneath, for `set_nonblocking`, timeouts, `shutdown` and `poll`.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(sock) => sock,
            Stream::Tls(tls) => tls.tcp(),
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(sock) => sock.read(buf),
            Stream::Tls(tls) => tls.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(sock) => sock.write(buf),
            Stream::Tls(tls) => tls.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(sock) => sock.flush(),
            Stream::Tls(tls) => tls.flush(),
        }
    }
}

impl AsRawFd for Stream {
    fn as_raw_fd(&self) -> RawFd {
        self.tcp().as_raw_fd()
    }
}
