//! TLS for outbound connections (PROTOCOL.md §8.7): the one trust list shared by registry
//! HTTPS, rendezvous `wss://` and `http/request`, the rustls client configuration built from
//! it (ring provider, verification always on), and the byte streams they run over —
//! `Stream::Plain` for `http://` and `ws://`, `Stream::Tls` for `https://` and `wss://`. It owns no websocket or
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

use rustls::crypto::{CryptoProvider, KeyProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::sign::SigningKey;
use rustls::{ClientConfig, ClientConnection, RootCertStore, SignatureScheme};

/// The PEM bundle the trust list adds when `--ca-file` is not given.
pub const CA_FILE_ENV: &str = "SSL_CERT_FILE";
/// Directories (`:`-separated) of PEM files the trust list adds.
pub const CA_DIR_ENV: &str = "SSL_CERT_DIR";

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
    let mut roots = bundled_roots();
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
            format!("executor registry configuration error: CA file `{}` {err}", path.display())
        })?;
        roots.extend(certs);
    }
    Ok(roots)
}

/// Every certificate in the PEM files of `dirs` (`SSL_CERT_DIR`: directories separated by
/// `:`, hashed names such as `5ed36f99.0` or any other; files that hold no certificate, e.g.
/// CRLs, are skipped). A directory that cannot be read or holds no certificate at all is a
/// startup error naming it (the operator named it).
pub fn cert_dirs(dirs: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let mut certs = Vec::new();
    for dir in dirs.split(':').map(str::trim).filter(|d| !d.is_empty()) {
        let bad = |why: String| {
            format!("executor registry configuration error: CA directory `{dir}` {why}")
        };
        let entries = fs::read_dir(dir).map_err(|err| bad(format!("could not be read: {err}")))?;
        let mut paths: Vec<_> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        paths.sort();
        let before = certs.len();
        for path in paths.iter().filter(|p| p.is_file()) {
            if let Ok(found) = read_pem_bundle(path) {
                certs.extend(found);
            }
        }
        if certs.len() == before {
            return Err(bad("holds no PEM certificate".to_owned()));
        }
        log::debug!("added {} certificates from {dir}", certs.len() - before);
    }
    Ok(certs)
}

/// Mozilla roots that webpki-roots 1.0.10 still lists but Mozilla has since removed (the
/// trust list of webpki-root-certs 1.0.11, which this one replaced); matched in the subject.
const REMOVED_ROOTS: &[&[u8]] = &[b"emSign ECC Root CA - C3", b"emSign Root CA - C1"];

/// The bundled Mozilla roots, each anchor wrapped in a minimal certificate: rustls needs
/// certificates, and reading one back yields exactly the anchor (subject, key, name
/// constraints; nothing else of a root certificate is used). The wrapper carries no
/// signature, validity or other extensions, so it is only ever meaningful as a root.
fn bundled_roots() -> Vec<CertificateDer<'static>> {
    webpki_roots::TLS_SERVER_ROOTS
        .iter()
        .filter(|a| !REMOVED_ROOTS.iter().any(|r| a.subject.windows(r.len()).any(|w| w == *r)))
        .map(|a| CertificateDer::from(anchor_certificate(a)))
        .collect()
}

/// `Certificate ::= SEQUENCE { tbs, algorithm, signature }` around one trust anchor.
fn anchor_certificate(anchor: &rustls::pki_types::TrustAnchor<'_>) -> Vec<u8> {
    // DER tags, and the ecdsa-with-SHA256 AlgorithmIdentifier (any algorithm would do: the
    // signature of a root is never checked).
    const SEQUENCE: u8 = 0x30;
    const OCTET_STRING: u8 = 0x04;
    const BIT_STRING: u8 = 0x03;
    const VERSION_3_SERIAL_1: &[u8] = &[0xa0, 0x03, 0x02, 0x01, 0x02, 0x02, 0x01, 0x01];
    const ALGORITHM: &[u8] =
        &[0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02];
    // The extension OID id-ce-nameConstraints (2.5.29.30) and `critical TRUE`.
    const NAME_CONSTRAINTS: &[u8] = &[0x06, 0x03, 0x55, 0x1d, 0x1e, 0x01, 0x01, 0xff];
    let subject = der(SEQUENCE, &anchor.subject);
    let mut tbs = [VERSION_3_SERIAL_1, ALGORITHM, &subject, &der(SEQUENCE, &[]), &subject].concat();
    tbs.extend(der(SEQUENCE, &anchor.subject_public_key_info));
    if let Some(nc) = &anchor.name_constraints {
        // The anchor holds the contents of the `NameConstraints` SEQUENCE.
        let value = der(OCTET_STRING, &der(SEQUENCE, nc));
        let extension = der(SEQUENCE, &[NAME_CONSTRAINTS, &value].concat());
        tbs.extend(der(0xa3, &der(SEQUENCE, &extension)));
    }
    let signed = [der(SEQUENCE, &tbs), ALGORITHM.to_vec(), der(BIT_STRING, &[0])].concat();
    der(SEQUENCE, &signed)
}

/// One DER element: `tag`, the definite length, `content`.
fn der(tag: u8, content: &[u8]) -> Vec<u8> {
    let len = content.len();
    let mut out = vec![tag];
    if len < 0x80 {
        out.push(len as u8);
    } else if len < 0x100 {
        out.extend([0x81, len as u8]);
    } else {
        out.extend([0x82, (len >> 8) as u8, len as u8]);
    }
    out.extend_from_slice(content);
    out
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
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("the ring provider supports the default TLS versions")
        .with_root_certificates(store)
        .with_no_client_auth();
    Arc::new(config)
}

/// The ring crypto provider, less its private-key loading: the daemon authenticates with a
/// bearer token and never presents a certificate, and leaving the signing code out saves
/// ~25 KB of the static binary.
///
/// Its cipher suites are the AES-GCM ones only: every TLS 1.3 server must offer
/// TLS_AES_128_GCM_SHA256 (RFC 8446 §9.1), and leaving ChaCha20-Poly1305 out drops ring's
/// ~52 KB of ChaCha code from the static binary. The provider is spelled out rather than
/// derived from `default_provider()`, whose suite list would keep that code linked.
pub fn provider() -> Arc<CryptoProvider> {
    use rustls::crypto::ring::{cipher_suite as suite, ALL_KX_GROUPS};
    Arc::new(CryptoProvider {
        cipher_suites: vec![
            suite::TLS13_AES_256_GCM_SHA384,
            suite::TLS13_AES_128_GCM_SHA256,
            suite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
            suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
            suite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
            suite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        ],
        kx_groups: ALL_KX_GROUPS.to_vec(),
        signature_verification_algorithms: SIGNATURE_ALGORITHMS,
        secure_random: &SystemRandom,
        key_provider: &NoPrivateKeys,
    })
}

/// The certificate signature algorithms of rustls's ring provider (its `SUPPORTED_SIG_ALGS`,
/// which is private), in its order.
const SIGNATURE_ALGORITHMS: WebPkiSupportedAlgorithms = {
    use webpki::ring as alg;
    WebPkiSupportedAlgorithms {
        all: &[
            alg::ECDSA_P256_SHA256,
            alg::ECDSA_P256_SHA384,
            alg::ECDSA_P384_SHA256,
            alg::ECDSA_P384_SHA384,
            alg::ED25519,
            alg::RSA_PSS_2048_8192_SHA256_LEGACY_KEY,
            alg::RSA_PSS_2048_8192_SHA384_LEGACY_KEY,
            alg::RSA_PSS_2048_8192_SHA512_LEGACY_KEY,
            alg::RSA_PKCS1_2048_8192_SHA256,
            alg::RSA_PKCS1_2048_8192_SHA384,
            alg::RSA_PKCS1_2048_8192_SHA512,
            alg::RSA_PKCS1_2048_8192_SHA256_ABSENT_PARAMS,
            alg::RSA_PKCS1_2048_8192_SHA384_ABSENT_PARAMS,
            alg::RSA_PKCS1_2048_8192_SHA512_ABSENT_PARAMS,
        ],
        mapping: &[
            (
                SignatureScheme::ECDSA_NISTP384_SHA384,
                &[alg::ECDSA_P384_SHA384, alg::ECDSA_P256_SHA384],
            ),
            (
                SignatureScheme::ECDSA_NISTP256_SHA256,
                &[alg::ECDSA_P256_SHA256, alg::ECDSA_P384_SHA256],
            ),
            (SignatureScheme::ED25519, &[alg::ED25519]),
            (SignatureScheme::RSA_PSS_SHA512, &[alg::RSA_PSS_2048_8192_SHA512_LEGACY_KEY]),
            (SignatureScheme::RSA_PSS_SHA384, &[alg::RSA_PSS_2048_8192_SHA384_LEGACY_KEY]),
            (SignatureScheme::RSA_PSS_SHA256, &[alg::RSA_PSS_2048_8192_SHA256_LEGACY_KEY]),
            (SignatureScheme::RSA_PKCS1_SHA512, &[alg::RSA_PKCS1_2048_8192_SHA512]),
            (SignatureScheme::RSA_PKCS1_SHA384, &[alg::RSA_PKCS1_2048_8192_SHA384]),
            (SignatureScheme::RSA_PKCS1_SHA256, &[alg::RSA_PKCS1_2048_8192_SHA256]),
        ],
    }
};

/// The system random source, through ring (as rustls's ring provider does).
#[derive(Debug)]
struct SystemRandom;

impl rustls::crypto::SecureRandom for SystemRandom {
    fn fill(&self, buf: &mut [u8]) -> Result<(), rustls::crypto::GetRandomFailed> {
        use ring::rand::SecureRandom;
        ring::rand::SystemRandom::new().fill(buf).map_err(|_| rustls::crypto::GetRandomFailed)
    }
}

#[derive(Debug)]
struct NoPrivateKeys;

impl KeyProvider for NoPrivateKeys {
    fn load_private_key(
        &self,
        _key: PrivateKeyDer<'static>,
    ) -> Result<Arc<dyn SigningKey>, rustls::Error> {
        Err(rustls::Error::General("this client presents no certificate".into()))
    }
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
                    return Err(io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"));
                }
                Err(err) => return Err(err),
            }
        }
        Ok(stream)
    }

    /// The certificate chain the server presented (leaf first), for `doctor`.
    pub fn peer_certificates(&self) -> Vec<CertificateDer<'static>> {
        self.conn
            .peer_certificates()
            .map(|certs| certs.iter().map(|c| c.clone().into_owned()).collect())
            .unwrap_or_default()
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

impl Drop for TlsStream {
    /// Best effort: tell the peer the stream ended on purpose. A full socket just means
    /// the peer sees a plain TCP close instead.
    fn drop(&mut self) {
        self.conn.send_close_notify();
        let _ = self.write_pending();
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
        // rustls takes at most its buffer limit; 0 means its outgoing buffer is full, so
        // drain it to the socket first and offer the bytes once more.
        let mut accepted = self.conn.writer().write(buf)?;
        if accepted == 0 {
            self.write_pending()?;
            accepted = self.conn.writer().write(buf)?;
            if accepted == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
        }
        // Bytes rustls accepted are ours to deliver: report them even if the socket is
        // full now; the next `write` or `flush` surfaces the socket's state.
        match self.write_pending() {
            Err(err) if err.kind() != io::ErrorKind::WouldBlock => Err(err),
            _ => Ok(accepted),
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
    matches!(err.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut)
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

/// A throwaway CA and a `localhost`/`127.0.0.1` server certificate for tests.
#[cfg(test)]
pub mod test_pki {
    use std::sync::Arc;

    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
    use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
    use rustls::ServerConfig;

    pub struct Pki {
        pub ca_pem: String,
        pub server: Arc<ServerConfig>,
    }

    pub fn generate() -> Pki {
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(DnType::CommonName, "exec-server test CA");
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
        let leaf_key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .unwrap()
            .signed_by(&leaf_key, &ca)
            .unwrap();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
        let server =
            ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(vec![leaf.der().clone()], key)
                .unwrap();
        Pki { ca_pem: ca.pem(), server: Arc::new(server) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::path::PathBuf;
    use std::thread;
    use std::time::Duration;

    use rustls::{ServerConnection, StreamOwned};

    const DEADLINE: Duration = Duration::from_secs(10);

    struct TempFile(PathBuf);
    impl TempFile {
        fn new(contents: &str) -> TempFile {
            let path =
                std::env::temp_dir().join(format!("exec-server-tls-{}.pem", uuid::Uuid::new_v4()));
            fs::write(&path, contents).unwrap();
            TempFile(path)
        }
    }
    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = fs::remove_file(&self.0);
        }
    }

    /// A TLS server on 127.0.0.1:0 for one connection: it sends `greeting`, then echoes
    /// everything until the client closes.
    fn echo_server(
        pki: &test_pki::Pki,
        greeting: &'static [u8],
    ) -> (std::net::SocketAddr, thread::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let config = pki.server.clone();
        let handle = thread::spawn(move || {
            let (sock, _) = listener.accept().unwrap();
            sock.set_read_timeout(Some(DEADLINE)).unwrap();
            let conn = ServerConnection::new(config).unwrap();
            let mut tls = StreamOwned::new(conn, sock);
            // A refused handshake ends here with an error; that is the client's business.
            if tls.write_all(greeting).and_then(|()| tls.flush()).is_err() {
                return;
            }
            let mut buf = [0u8; 16 * 1024];
            loop {
                match tls.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        if tls.write_all(&buf[..n]).and_then(|()| tls.flush()).is_err() {
                            return;
                        }
                    }
                }
            }
        });
        (addr, handle)
    }

    fn connect(
        addr: std::net::SocketAddr,
        roots: &[CertificateDer<'static>],
        host: &str,
    ) -> io::Result<TlsStream> {
        let tcp = TcpStream::connect_timeout(&addr, DEADLINE)?;
        TlsStream::connect(tcp, host, client_config(roots), Instant::now() + DEADLINE)
    }

    fn poll(fd: RawFd, events: libc::c_short, timeout: Duration) -> libc::c_short {
        let mut pfd = libc::pollfd { fd, events, revents: 0 };
        let ms = timeout.as_millis().min(i32::MAX as u128) as libc::c_int;
        // SAFETY: one valid pollfd for the duration of the call.
        let n = unsafe { libc::poll(&mut pfd, 1, ms) };
        assert!(n >= 0, "poll failed: {}", io::Error::last_os_error());
        pfd.revents
    }

    #[test]
    fn each_bundled_root_reads_back_as_its_trust_anchor() {
        let mut store = RootCertStore::empty();
        let (added, ignored) = store.add_parsable_certificates(bundled_roots());
        assert_eq!((added, ignored), (webpki_roots::TLS_SERVER_ROOTS.len() - 2, 0));
        let kept: Vec<_> = webpki_roots::TLS_SERVER_ROOTS
            .iter()
            .filter(|a| !REMOVED_ROOTS.iter().any(|r| a.subject.windows(r.len()).any(|w| w == *r)))
            .collect();
        assert_eq!(store.roots.len(), kept.len());
        for (read, anchor) in store.roots.iter().zip(kept) {
            assert_eq!(read.subject, anchor.subject);
            assert_eq!(read.subject_public_key_info, anchor.subject_public_key_info);
            assert_eq!(read.name_constraints, anchor.name_constraints);
        }
        assert!(store.roots.iter().any(|a| a.name_constraints.is_some()), "one constrained root");
    }

    #[test]
    fn the_ca_file_makes_a_private_server_trusted() {
        let pki = test_pki::generate();
        let ca = TempFile::new(&pki.ca_pem);
        let roots = trust_roots(Some(&ca.0)).unwrap();
        assert!(roots.len() > bundled_roots().len(), "bundled roots plus ours");
        let (addr, server) = echo_server(&pki, b"hello");
        let mut tls = connect(addr, &roots, "localhost").unwrap();
        let mut greeting = [0u8; 5];
        tls.read_exact(&mut greeting).unwrap();
        assert_eq!(&greeting, b"hello");
        tls.write_all(b"ping").unwrap();
        tls.flush().unwrap();
        let mut echo = [0u8; 4];
        tls.read_exact(&mut echo).unwrap();
        assert_eq!(&echo, b"ping");
        drop(tls);
        server.join().unwrap();
    }

    #[test]
    fn a_private_server_is_refused_without_its_ca() {
        let pki = test_pki::generate();
        let (addr, server) = echo_server(&pki, b"hello");
        let err = connect(addr, &trust_roots(None).unwrap(), "localhost")
            .err()
            .expect("handshake must fail");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
        assert!(err.to_string().contains("UnknownIssuer"), "{err}");
        server.join().unwrap();
    }

    #[test]
    fn the_hostname_is_verified() {
        let pki = test_pki::generate();
        let ca = TempFile::new(&pki.ca_pem);
        let (addr, server) = echo_server(&pki, b"hello");
        let err = connect(addr, &trust_roots(Some(&ca.0)).unwrap(), "example.com")
            .err()
            .expect("wrong name");
        assert!(err.to_string().contains("not valid for name"), "{err}");
        server.join().unwrap();
    }

    #[test]
    fn a_ca_file_that_is_not_pem_is_a_startup_error() {
        let junk = TempFile::new("this is not a certificate\n");
        assert_eq!(
            trust_roots(Some(&junk.0)).unwrap_err(),
            format!(
                "executor registry configuration error: CA file `{}` is not a valid PEM certificate bundle: no CERTIFICATE block",
                junk.0.display()
            )
        );
        let missing =
            std::env::temp_dir().join(format!("exec-server-missing-{}", uuid::Uuid::new_v4()));
        let err = trust_roots(Some(&missing)).unwrap_err();
        assert_eq!(
            err,
            format!(
                "executor registry configuration error: CA file `{}` could not be read: No such file or directory (os error 2)",
                missing.display()
            )
        );
    }

    #[test]
    fn write_never_reads_from_the_socket() {
        let pki = test_pki::generate();
        let ca = TempFile::new(&pki.ca_pem);
        let (addr, server) = echo_server(&pki, b"hello");
        let mut tls = connect(addr, &trust_roots(Some(&ca.0)).unwrap(), "127.0.0.1").unwrap();
        tls.tcp().set_nonblocking(true).unwrap();
        let fd = tls.tcp().as_raw_fd();
        assert_ne!(poll(fd, libc::POLLIN, DEADLINE) & libc::POLLIN, 0, "greeting arrives");
        tls.write_all(b"x").unwrap();
        tls.flush().unwrap();
        assert_ne!(
            poll(fd, libc::POLLIN, Duration::ZERO) & libc::POLLIN,
            0,
            "the greeting is still in the socket for the reader"
        );
        drop(tls);
        server.join().unwrap();
    }

    #[test]
    fn non_blocking_round_trip_of_four_mebibytes() {
        let pki = test_pki::generate();
        let ca = TempFile::new(&pki.ca_pem);
        let (addr, server) = echo_server(&pki, b"");
        let tls = connect(addr, &trust_roots(Some(&ca.0)).unwrap(), "localhost").unwrap();
        tls.tcp().set_nonblocking(true).unwrap();
        let mut stream = Stream::Tls(Box::new(tls));
        let mut scratch = [0u8; 64 * 1024];
        // Post-handshake records (session tickets) are consumed; no plaintext yet.
        match stream.read(&mut scratch) {
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
            other => panic!("unexpected read before any data: {other:?}"),
        }
        let payload: Vec<u8> = (0..4u32 << 20).map(|i| (i % 251) as u8).collect();
        let mut sent = 0;
        let mut flushed = false;
        let mut received = Vec::with_capacity(payload.len());
        let deadline = Instant::now() + DEADLINE;
        while received.len() < payload.len() {
            assert!(Instant::now() < deadline, "round trip timed out at {} bytes", received.len());
            let mut events = libc::POLLIN;
            if sent < payload.len() || !flushed {
                events |= libc::POLLOUT;
            }
            poll(stream.as_raw_fd(), events, deadline.saturating_duration_since(Instant::now()));
            loop {
                match stream.read(&mut scratch) {
                    Ok(0) => panic!("server closed early"),
                    Ok(n) => received.extend_from_slice(&scratch[..n]),
                    Err(err) if err.kind() == io::ErrorKind::WouldBlock => break,
                    Err(err) => panic!("read: {err}"),
                }
            }
            while sent < payload.len() {
                match stream.write(&payload[sent..]) {
                    Ok(n) => sent += n,
                    Err(err) if err.kind() == io::ErrorKind::WouldBlock => break,
                    Err(err) => panic!("write: {err}"),
                }
            }
            if sent == payload.len() {
                match stream.flush() {
                    Ok(()) => flushed = true,
                    Err(err) if err.kind() == io::ErrorKind::WouldBlock => flushed = false,
                    Err(err) => panic!("flush: {err}"),
                }
            }
        }
        assert!(received == payload, "echo differs");
        drop(stream);
        server.join().unwrap();
    }
}
