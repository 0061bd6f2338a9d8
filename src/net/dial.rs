//! Opening an outbound connection before a deadline: name resolution (on a helper thread the
//! deadline can abandon), TCP connect to the first address that answers, a CONNECT tunnel
//! when proxy.rs selects a proxy for the target, and TLS to the target inside it. Every leg
//! (registries, rendezvous, relay, `http/request`, `doctor`) dials through here, so one
//! proxy and one TLS path serve them all. Errors name the host or proxy, never a query
//! string or a proxy password.

use std::fmt;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::Path;
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::Instant;

use rustls::ClientConfig;

use super::proxy::{self, Proxies};
use crate::net::tls::{self, Stream, TlsStream};

/// How the daemon reaches servers: the run's proxies and TLS trust list. Cheap to clone.
#[derive(Clone)]
pub struct Dialer {
    pub proxies: Proxies,
    pub tls: Arc<ClientConfig>,
}

impl fmt::Debug for Dialer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dialer").field("proxies", &self.proxies).finish_non_exhaustive()
    }
}

impl Dialer {
    /// The dialer of a run: the §8.7 trust list (bundled and system roots, `ca_file` or else
    /// `SSL_CERT_FILE`, and every certificate under `SSL_CERT_DIR`) and the proxies (`proxy`
    /// over the variables, proxy.rs). A CA file or directory that cannot be used and a
    /// malformed proxy URL are errors naming them.
    pub fn from_env(
        ca_file: Option<&str>,
        proxy: Option<&str>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Dialer, String> {
        let ca_file = ca_file.map(str::to_owned).or_else(|| env(tls::CA_FILE_ENV));
        let ca_file = ca_file.filter(|p| !p.trim().is_empty());
        let mut roots = tls::trust_roots(ca_file.as_deref().map(Path::new))?;
        if let Some(dirs) = env(tls::CA_DIR_ENV) {
            roots.extend(tls::cert_dirs(&dirs)?);
        }
        let proxies = Proxies::from_env(proxy, env)?;
        Ok(Dialer { proxies, tls: tls::client_config(&roots) })
    }

    /// A connection to `host:port` (`secure`: TLS to it, verified against the trust list),
    /// direct or through the proxy selected for it, with `TCP_NODELAY`. The socket keeps
    /// read/write timeouts for `deadline`; the caller sets its own afterwards.
    pub fn connect(
        &self,
        secure: bool,
        host: &str,
        port: u16,
        deadline: Instant,
    ) -> Result<Stream, String> {
        let tcp = open(&self.proxies, secure, host, port, deadline)?;
        tcp.set_nodelay(true).map_err(|err| format!("TCP_NODELAY: {err}"))?;
        if !secure {
            return Ok(Stream::Plain(tcp));
        }
        let tls = TlsStream::connect(tcp, host, self.tls.clone(), deadline)
            .map_err(|err| format!("TLS: {err}"))?;
        Ok(Stream::Tls(Box::new(tls)))
    }
}

/// A TCP connection to `host:port`: direct, or a CONNECT tunnel through the proxy
/// `proxies` selects for it. TLS to the target, if any, is the caller's, inside it.
pub fn open(
    proxies: &Proxies,
    secure: bool,
    host: &str,
    port: u16,
    deadline: Instant,
) -> Result<TcpStream, String> {
    match proxies.select(secure, host, port) {
        Some(via) => {
            let addrs =
                resolve(&via.host, via.port, deadline).map_err(|e| format!("proxy {via}: {e}"))?;
            let tcp = connect_any(&addrs, deadline).map_err(|e| format!("proxy {via}: {e}"))?;
            proxy::connect_over(tcp, via, host, port, deadline)
        }
        None => connect_any(&resolve(host, port, deadline)?, deadline),
    }
}

/// Read and write timeouts on `tcp` for the time left until `deadline`; an error once it
/// has passed.
pub fn set_deadline(tcp: &TcpStream, deadline: Instant) -> Result<(), String> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err("timed out".to_owned());
    }
    tcp.set_read_timeout(Some(left))
        .and_then(|()| tcp.set_write_timeout(Some(left)))
        .map_err(|err| err.to_string())
}

/// Name resolution has no timeout of its own, so it runs on a helper thread that the
/// deadline abandons; the resolver's own timeouts end that thread.
pub fn resolve(host: &str, port: u16, deadline: Instant) -> Result<Vec<SocketAddr>, String> {
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    let (tx, rx) = mpsc::channel();
    let target = (host.to_owned(), port);
    thread::Builder::new()
        .name("resolve".to_owned())
        .spawn(move || {
            let result = target.to_socket_addrs().map(Iterator::collect::<Vec<_>>);
            // The receiver may have given up; nothing to do then.
            let _ = tx.send(result);
        })
        .map_err(|err| format!("resolving {host}: {err}"))?;
    match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        Ok(Ok(addrs)) if !addrs.is_empty() => Ok(addrs),
        Ok(Ok(_)) => Err(format!("resolving {host}: no addresses")),
        Ok(Err(err)) => Err(format!("resolving {host}: {err}")),
        Err(_) => Err(format!("resolving {host}: timed out")),
    }
}

/// The first of `addrs` that accepts a TCP connection before `deadline`.
pub fn connect_any(addrs: &[SocketAddr], deadline: Instant) -> Result<TcpStream, String> {
    let mut last = String::from("no address");
    for addr in addrs {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err("connect timed out".to_owned());
        }
        match TcpStream::connect_timeout(addr, left) {
            Ok(tcp) => return Ok(tcp),
            Err(err) => last = format!("connect {addr}: {err}"),
        }
    }
    Err(last)
}
