//! `exec-server doctor`: walks cloud mode's path one link at a time with the same flags and
//! environment as cloud mode — configuration, token, DNS, proxy and CONNECT, TCP, TLS (chain
//! and trust source), clock skew, one registration request, the rendezvous websocket — and
//! reports one line (or one JSON object) per check. It owns only that walk and its report;
//! the pieces are cloud mode's own (validation, proxy selection, tunnel, dial). It never
//! prints the token, a proxy password or the rendezvous URL's query string.

use std::io::Write;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use serde_json::json;

use super::registry::{without_query, Registry};
use super::registry_v2::{self, Bearer};
use super::CloudArgs;
use crate::net;
use crate::net::dial::Dialer;
use crate::net::http1::{self, Target};
use crate::net::proxy;
use crate::net::tls::{self, Stream, TlsStream, CA_DIR_ENV, CA_FILE_ENV};

/// Each check's deadline unless `--timeout` says otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Clock skew from the registry's `Date` beyond this is a warning.
const SKEW_WARN_SECS: i64 = 60;
/// Largest registration response read, in bytes.
const RESPONSE_LIMIT_BYTES: u64 = 1 << 20;

/// `doctor`'s options.
#[derive(Clone, Debug, Default)]
pub struct DoctorArgs {
    pub cloud: CloudArgs,
    /// Set for cloud mode v2 (`--remote` with `--environment-id`).
    pub v2: Option<super::noise::V2Args>,
    pub timeout: Option<Duration>,
    pub json: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Status {
    Ok,
    Warn,
    Fail,
    Skip,
}

impl Status {
    fn word(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Fail => "FAIL",
            Status::Skip => "skip",
        }
    }
}

struct Report {
    checks: Vec<(&'static str, Status, String)>,
}

impl Report {
    fn add(&mut self, name: &'static str, status: Status, detail: impl Into<String>) {
        self.checks.push((name, status, detail.into()));
    }

    /// Records `result` as ok or FAIL and returns its value when ok.
    fn check<T>(&mut self, name: &'static str, result: Result<(T, String), String>) -> Option<T> {
        match result {
            Ok((value, detail)) => {
                self.add(name, Status::Ok, detail);
                Some(value)
            }
            Err(reason) => {
                self.add(name, Status::Fail, reason);
                None
            }
        }
    }

    fn skip_rest(&mut self, names: &[&'static str], failed: &str) {
        for name in names {
            if !self.checks.iter().any(|(n, _, _)| n == name) {
                self.add(name, Status::Skip, format!("not run: {failed} failed"));
            }
        }
    }
}

const ALL_CHECKS: &[&str] =
    &["config", "token", "dns", "tcp", "proxy", "tls", "clock", "register", "websocket"];

/// Runs every check, prints the report to stdout and returns the exit code: 0 when none
/// failed, 1 otherwise.
pub fn run(args: &DoctorArgs, env: &dyn Fn(&str) -> Option<String>) -> i32 {
    let timeout = args.timeout.unwrap_or(DEFAULT_TIMEOUT);
    let mut report = Report { checks: Vec::new() };
    walk(args, env, timeout, &mut report);
    let ok = report.checks.iter().all(|(_, s, _)| matches!(s, Status::Ok | Status::Warn));
    let mut out = String::new();
    if args.json {
        let checks: Vec<_> = report
            .checks
            .iter()
            .map(|(name, status, detail)| {
                json!({"name": name, "status": status.word().to_ascii_lowercase(), "detail": detail})
            })
            .collect();
        out.push_str(&json!({"ok": ok, "checks": checks}).to_string());
        out.push('\n');
    } else {
        for (name, status, detail) in &report.checks {
            out.push_str(&format!("{:<4}  {name:<9}  {detail}\n", status.word()));
        }
    }
    let mut stdout = std::io::stdout();
    let _ = stdout.write_all(out.as_bytes()).and_then(|()| stdout.flush());
    i32::from(!ok)
}

/// What the checks after `token` need, from either cloud mode.
struct Plan {
    /// The registration URL, its JSON body and the `Authorization` value.
    endpoint: String,
    body: String,
    authorization: String,
    dialer: Dialer,
    /// `--ca-file` or `SSL_CERT_FILE`, to name the trust source.
    ca_file: Option<String>,
    /// v2 dials the relay with its own header; v1 the rendezvous as given.
    v2: bool,
}

/// config and token for legacy cloud mode (`--cloud-base-url`).
fn plan_v1(
    args: &DoctorArgs,
    env: &dyn Fn(&str) -> Option<String>,
    report: &mut Report,
) -> Option<Plan> {
    let mut cloud = args.cloud.clone();
    cloud.cloud = true;
    let cfg = match cloud.validate(env) {
        Ok(cfg) => cfg,
        Err(reason) => {
            report.add("config", Status::Fail, reason);
            return None;
        }
    };
    report.add(
        "config",
        Status::Ok,
        format!("registry {}, executor id {}", cfg.base_url, cfg.executor_id),
    );
    let token = match cfg.token.read() {
        Ok(token) => {
            let source = match &cfg.token {
                super::registry::TokenSource::File(path) => format!("file {}", path.display()),
                super::registry::TokenSource::Env => {
                    format!("environment {}", super::registry::TOKEN_ENV)
                }
            };
            report.add("token", Status::Ok, format!("{} bytes from {source}", token.byte_len()));
            token
        }
        Err(reason) => {
            report.add("token", Status::Fail, reason);
            return None;
        }
    };
    let registry = Registry::new(
        &cfg.base_url,
        &cfg.executor_id,
        &cfg.name,
        cfg.token.clone(),
        cfg.dialer.clone(),
    );
    let (endpoint, body) = registry.request();
    let ca_file = cloud.ca_file.clone().or_else(|| env(CA_FILE_ENV));
    Some(Plan {
        endpoint: endpoint.to_owned(),
        body: body.to_owned(),
        authorization: token.header_value(),
        dialer: cfg.dialer,
        ca_file: ca_file.filter(|p| !p.trim().is_empty()),
        v2: false,
    })
}

/// config and token for cloud mode v2 (`--remote` with `--environment-id`). The
/// registration sends a throwaway Noise key.
fn plan_v2(
    v2: &super::noise::V2Args,
    env: &dyn Fn(&str) -> Option<String>,
    report: &mut Report,
) -> Option<Plan> {
    let cfg = match super::noise::validate(v2, env, &mut || None) {
        Ok(cfg) => cfg,
        Err(e) => {
            report.add("config", Status::Fail, e.message);
            return None;
        }
    };
    report.add(
        "config",
        Status::Ok,
        format!("registry {}, environment id {} (v2)", cfg.base_url, cfg.environment_id),
    );
    let token = match cfg.bearer.read() {
        Ok(token) => {
            let source = match &cfg.bearer {
                Bearer::File(path) => format!("file {}", path.display()),
                Bearer::Fixed(_) if env(registry_v2::NOISE_TOKEN_ENV).is_some() => {
                    format!("environment {}", registry_v2::NOISE_TOKEN_ENV)
                }
                Bearer::Fixed(_) => format!("environment {}", registry_v2::V1_TOKEN_ENV),
            };
            report.add("token", Status::Ok, format!("{} bytes from {source}", token.len()));
            token
        }
        Err(reason) => {
            report.add("token", Status::Fail, reason);
            return None;
        }
    };
    let identity = match super::noise::channel::Identity::generate() {
        Ok(identity) => identity,
        Err(e) => {
            report.add("register", Status::Fail, format!("cannot generate a Noise key: {e}"));
            return None;
        }
    };
    let ca_file = v2.ca_file.clone().or_else(|| env(CA_FILE_ENV));
    Some(Plan {
        endpoint: format!("{}/cloud/environment/{}/register", cfg.base_url, cfg.environment_id),
        body: registry_v2::register_body(&identity.public_key()),
        authorization: format!("Bearer {token}"),
        dialer: cfg.dialer,
        ca_file: ca_file.filter(|p| !p.trim().is_empty()),
        v2: true,
    })
}

fn walk(
    args: &DoctorArgs,
    env: &dyn Fn(&str) -> Option<String>,
    timeout: Duration,
    report: &mut Report,
) {
    let plan = match &args.v2 {
        Some(v2) => plan_v2(v2, env, report),
        None => plan_v1(args, env, report),
    };
    let Some(plan) = plan else {
        let failed = report.checks.last().map_or("config", |(name, _, _)| *name);
        return report.skip_rest(ALL_CHECKS, failed);
    };
    let (endpoint, body) = (plan.endpoint.as_str(), plan.body.as_str());
    let Ok(target) = Target::parse(endpoint) else {
        report.add("dns", Status::Fail, "registry URL has no host");
        return report.skip_rest(ALL_CHECKS, "dns");
    };

    // DNS: the registry host, or the proxy's when one is in use (the proxy resolves the
    // registry host itself).
    let via = plan.dialer.proxies.select(target.secure, &target.host, target.port).cloned();
    let (dns_host, dns_port) = match &via {
        Some(p) => (p.host.clone(), p.port),
        None => (target.host.clone(), target.port),
    };
    let started = Instant::now();
    let addrs = report.check(
        "dns",
        net::dial::resolve(&dns_host, dns_port, Instant::now() + timeout).map(|addrs| {
            let shown = addrs.iter().map(|a| a.ip().to_string()).collect::<Vec<_>>().join(", ");
            let what = if via.is_some() { "proxy host" } else { "registry host" };
            (addrs, format!("{what} {dns_host} -> {shown} ({} ms)", started.elapsed().as_millis()))
        }),
    );
    let Some(addrs) = addrs else { return report.skip_rest(ALL_CHECKS, "dns") };

    let started = Instant::now();
    let tcp = report.check(
        "tcp",
        net::dial::connect_any(&addrs, Instant::now() + timeout).map(|tcp| {
            let peer = tcp.peer_addr().map(|a| a.to_string()).unwrap_or_default();
            (tcp, format!("connected to {peer} in {} ms", started.elapsed().as_millis()))
        }),
    );
    let Some(tcp) = tcp else { return report.skip_rest(ALL_CHECKS, "tcp") };

    let tcp = match &via {
        None => {
            report.add("proxy", Status::Ok, "none (direct connection)");
            tcp
        }
        Some(p) => {
            let result =
                proxy::connect_over(tcp, p, &target.host, target.port, Instant::now() + timeout);
            match report.check(
                "proxy",
                result.map(|tcp| {
                    (tcp, format!("{} (host only): CONNECT {} ok", p.host, target.authority()))
                }),
            ) {
                Some(tcp) => tcp,
                None => return report.skip_rest(ALL_CHECKS, "proxy"),
            }
        }
    };

    let stream = if target.secure {
        let result = TlsStream::connect(
            tcp,
            &target.host,
            plan.dialer.tls.clone(),
            Instant::now() + timeout,
        )
        .map_err(|e| format!("handshake with {}: {e}", target.host))
        .map(|tls| {
            let detail = describe_chain(&tls.peer_certificates(), plan.ca_file.clone(), env);
            (Stream::Tls(Box::new(tls)), detail)
        });
        match report.check("tls", result) {
            Some(stream) => stream,
            None => return report.skip_rest(ALL_CHECKS, "tls"),
        }
    } else {
        report.add("tls", Status::Ok, "not used (http:// registry)");
        Stream::Plain(tcp)
    };

    let response = exchange(stream, &target, body, &plan.authorization, timeout);
    let response = match response {
        Ok(r) => r,
        Err(reason) => {
            report.add("register", Status::Fail, reason);
            return report.skip_rest(ALL_CHECKS, "register");
        }
    };
    match response.date.as_deref().and_then(parse_http_date) {
        Some(theirs) => {
            let ours =
                SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
            let skew = ours - theirs;
            let status = if skew.abs() > SKEW_WARN_SECS { Status::Warn } else { Status::Ok };
            report.add("clock", status, format!("{skew:+} s against the registry's Date header"));
        }
        None => report.add("clock", Status::Warn, "registry sent no Date header"),
    }
    let url = if (200..300).contains(&response.status) {
        let value: Option<serde_json::Value> = serde_json::from_slice(&response.body).ok();
        let url = value
            .as_ref()
            .and_then(|v| v.get("url"))
            .and_then(|u| u.as_str())
            .filter(|u| u.starts_with("ws://") || u.starts_with("wss://"))
            .map(str::to_owned);
        match url {
            Some(url) => {
                report.add(
                    "register",
                    Status::Ok,
                    format!("HTTP {}, rendezvous {}", response.status, without_query(&url)),
                );
                url
            }
            None => {
                report.add(
                    "register",
                    Status::Fail,
                    format!("HTTP {} without a ws:// or wss:// url", response.status),
                );
                return report.skip_rest(ALL_CHECKS, "register");
            }
        }
    } else {
        let text = String::from_utf8_lossy(&response.body);
        let value: Option<serde_json::Value> = serde_json::from_str(text.trim()).ok();
        let message = value
            .as_ref()
            .and_then(|v| v.pointer("/error/message").or_else(|| v.get("message")))
            .and_then(|m| m.as_str())
            .map(str::to_owned)
            .unwrap_or_else(|| text.trim().chars().take(200).collect());
        report.add("register", Status::Fail, format!("HTTP {}: {message}", response.status));
        return report.skip_rest(ALL_CHECKS, "register");
    };

    let result = websocket(&url, &plan, timeout);
    report.check("websocket", result.map(|detail| ((), detail)));
}

struct Response {
    status: u16,
    date: Option<String>,
    body: Vec<u8>,
}

/// One registration POST on `stream`, its body read whole (at most 1 MiB).
fn exchange(
    stream: Stream,
    target: &Target,
    body: &str,
    authorization: &str,
    timeout: Duration,
) -> Result<Response, String> {
    let headers: [(&str, &[u8]); 3] = [
        ("authorization", authorization.as_bytes()),
        ("content-type", b"application/json"),
        ("user-agent", b"exec-server-doctor"),
    ];
    let host = target.host_header();
    let request = http1::Request {
        method: "POST",
        authority: &host,
        target: &target.path,
        headers: &headers,
        body: Some(body.as_bytes()),
    };
    let mut response = http1::send(stream, &request, Some(Instant::now() + timeout))
        .map_err(|e| format!("sending the request or reading the answer: {e}"))?;
    let body = response
        .body
        .read_to_vec(RESPONSE_LIMIT_BYTES)
        .map_err(|e| format!("reading the response body: {e}"))?;
    let date = response.header("date").map(str::to_owned);
    Ok(Response { status: response.status, date, body })
}

/// Dials the rendezvous as cloud mode does, then closes it and waits for the close reply.
fn websocket(url: &str, plan: &Plan, timeout: Duration) -> Result<String, String> {
    let shown = without_query(url);
    let started = Instant::now();
    let dialed = if plan.v2 {
        super::noise::dial::dial(url, &plan.dialer, timeout).map_err(|e| e.to_string())
    } else {
        super::dial::dial(url, &plan.dialer, timeout)
    };
    let mut ws = dialed.map_err(|e| format!("dial {shown}: {e}"))?;
    let upgraded = started.elapsed().as_millis();
    let deadline = Instant::now() + timeout;
    net::dial::set_deadline(ws.get_ref().tcp(), deadline)?;
    ws.close(None).map_err(|e| format!("close {shown}: {e}"))?;
    loop {
        match ws.read() {
            Ok(_) => {}
            Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => break,
            Err(e) => {
                return Err(format!("{shown} upgraded in {upgraded} ms, then close failed: {e}"))
            }
        }
    }
    let via = plan
        .dialer
        .proxies
        .for_url(url)
        .map(|p| format!(" via proxy {}", p.host))
        .unwrap_or_default();
    Ok(format!("{shown} upgraded in {upgraded} ms{via} and closed cleanly"))
}

/// `subject CN <- issuer CN` for each certificate, and which trust source holds the root.
fn describe_chain(
    chain: &[CertificateDer<'static>],
    ca_file: Option<String>,
    env: &dyn Fn(&str) -> Option<String>,
) -> String {
    let chain_names: Vec<(Vec<u8>, Vec<u8>)> = chain.iter().filter_map(|c| names(c)).collect();
    let shown = chain_names
        .iter()
        .map(|(subject, issuer)| {
            format!("subject {} issuer {}", common_name(subject), common_name(issuer))
        })
        .collect::<Vec<_>>()
        .join("; ");
    let top_issuer = chain_names.last().map(|(_, issuer)| issuer.clone()).unwrap_or_default();
    let holds = |certs: &[CertificateDer<'static>]| {
        certs.iter().filter_map(|c| names(c)).any(|(subject, _)| subject == top_issuer)
    };
    let mut source = "the bundled or system roots".to_owned();
    if let Some(path) = ca_file {
        let certs = std::fs::read(&path).map(|bytes| {
            CertificateDer::pem_slice_iter(&bytes).filter_map(Result::ok).collect::<Vec<_>>()
        });
        if certs.is_ok_and(|certs| holds(&certs)) {
            source = format!("CA file {path}");
        }
    }
    if let Some(dirs) = env(CA_DIR_ENV) {
        if tls::cert_dirs(&dirs).is_ok_and(|r| holds(&r)) {
            source = format!("{CA_DIR_ENV} {dirs}");
        }
    }
    format!("{shown}; trusted via {source}")
}

/// The issuer and subject `Name`s (whole DER elements) of a certificate.
fn names(cert: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
    let (_, certificate, _) = der(cert)?;
    let (_, tbs, _) = der(certificate)?;
    let mut rest = tbs;
    let mut items = Vec::new();
    while !rest.is_empty() && items.len() < 7 {
        let (tag, _, next) = der(rest)?;
        let whole = &rest[..rest.len() - next.len()];
        if !(items.is_empty() && tag == 0xa0) {
            items.push(whole);
        }
        rest = next;
    }
    // serial, signature algorithm, issuer, validity, subject
    Some((items.get(4)?.to_vec(), items.get(2)?.to_vec()))
}

/// One DER element: tag, contents, what follows.
fn der(bytes: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let tag = *bytes.first()?;
    let first = *bytes.get(1)?;
    let (len, header) = if first < 0x80 {
        (usize::from(first), 2)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 {
            return None;
        }
        let len = bytes.get(2..2 + n)?.iter().fold(0usize, |acc, b| acc << 8 | usize::from(*b));
        (len, 2 + n)
    };
    let contents = bytes.get(header..header + len)?;
    Some((tag, contents, &bytes[header + len..]))
}

/// The `CN` of a `Name`, or `(no CN)`.
fn common_name(name: &[u8]) -> String {
    const CN_OID: &[u8] = &[0x06, 0x03, 0x55, 0x04, 0x03];
    name.windows(CN_OID.len())
        .position(|w| w == CN_OID)
        .and_then(|at| der(&name[at + CN_OID.len()..]))
        .map(|(_, value, _)| String::from_utf8_lossy(value).into_owned())
        .unwrap_or_else(|| "(no CN)".to_owned())
}

/// Seconds since the epoch of an IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`).
fn parse_http_date(text: &str) -> Option<i64> {
    let parts: Vec<&str> = text.split_whitespace().collect();
    let [_, day, month, year, time, "GMT"] = parts.as_slice() else { return None };
    let month = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
        .iter()
        .position(|m| m == month)? as i64
        + 1;
    let (day, year): (i64, i64) = (day.parse().ok()?, year.parse().ok()?);
    let hms: Vec<i64> = time.split(':').map(|p| p.parse().ok()).collect::<Option<_>>()?;
    let [h, m, s] = hms.as_slice() else { return None };
    // Days from civil (proleptic Gregorian), H. Hinnant's algorithm.
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + h * 3600 + m * 60 + s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_dates_parse() {
        assert_eq!(parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT"), Some(784_111_777));
        assert_eq!(parse_http_date("Thu, 01 Jan 1970 00:00:00 GMT"), Some(0));
        assert_eq!(parse_http_date("yesterday"), None);
    }
}
