//! Cloud mode behind an HTTP CONNECT proxy and with a private CA (issue 16): both legs
//! (registry HTTPS and the wss:// rendezvous) tunnel through the test proxy, `NO_PROXY`
//! bypasses it, 407s are logged with their status and retried, malformed proxy URLs exit 2,
//! `SSL_CERT_DIR` alone makes the private CA trusted, and no log line shows the token, the
//! proxy password or the rendezvous signature.

mod common;
mod netfakes;

use netfakes::*;

const USER: &str = "proxy-user";
/// Percent-encoded as `p%40ss%3Aword-do-not-log` in the proxy URL.
const PASSWORD: &str = "p@ss:word-do-not-log";
const PASSWORD_ENCODED: &str = "p%40ss%3Aword-do-not-log";

fn assert_no_secrets(log: &str) {
    for secret in [TOKEN, SIGNATURE, PASSWORD, PASSWORD_ENCODED] {
        assert!(!log.contains(secret), "log shows {secret:?}:\n{log}");
    }
}

#[test]
fn both_legs_go_through_an_authenticated_proxy_with_a_private_ca() {
    let pki = pki();
    let (_dir, token_file, ca_file) = token_and_ca_file(&pki);
    let rendezvous = FakeRendezvous::start(Some(pki.server.clone()));
    let registry = FakeRegistry::start(Some(pki.server.clone()), 200, registered(&rendezvous.url));
    let proxy = ConnectProxy::start(Some((USER, PASSWORD)));
    let proxy_url = format!("http://{USER}:{PASSWORD_ENCODED}@127.0.0.1:{}", proxy.port);
    let daemon = Daemon::spawn(
        &cloud_args(&registry.base, &token_file),
        &[("HTTPS_PROXY", &proxy_url), ("SSL_CERT_FILE", &ca_file)],
    );
    registry.next_request();
    rendezvous.accept_and_initialize();
    let rv_port = rendezvous.url.split(':').nth(2).unwrap().split('/').next().unwrap();
    // Later entries would be redials after the test's socket closed.
    assert!(
        proxy
            .tunnels()
            .starts_with(&[format!("localhost:{}", registry.port), format!("localhost:{rv_port}")]),
        "{:?}",
        proxy.tunnels()
    );
    daemon.wait_line("connected to rendezvous");
    let log = daemon.stderr();
    assert!(log.contains(&format!("through proxy 127.0.0.1:{}", proxy.port)), "{log}");
    assert_no_secrets(&log);
}

#[test]
fn the_proxy_flag_overrides_the_environment_and_http_proxy_covers_ws() {
    let (_dir, token_file) = token_file();
    let rendezvous = FakeRendezvous::start(None);
    let registry = FakeRegistry::start(None, 200, registered(&rendezvous.url));
    let proxy = ConnectProxy::start(None);
    let flag = format!("http://127.0.0.1:{}", proxy.port);
    let mut args = cloud_args(&registry.base, &token_file);
    args.extend(["--proxy", &flag]);
    // The environment points at a port nothing listens on; the flag wins.
    let daemon = Daemon::spawn(&args, &[("http_proxy", "http://127.0.0.1:9")]);
    registry.next_request();
    rendezvous.accept_and_initialize();
    assert!(proxy.tunnels().len() >= 2, "{:?}", proxy.tunnels());
    drop(daemon);

    let rendezvous = FakeRendezvous::start(None);
    let registry = FakeRegistry::start(None, 200, registered(&rendezvous.url));
    let proxy = ConnectProxy::start(None);
    let env_proxy = format!("127.0.0.1:{}", proxy.port);
    let _daemon =
        Daemon::spawn(&cloud_args(&registry.base, &token_file), &[("HTTP_PROXY", &env_proxy)]);
    registry.next_request();
    rendezvous.accept_and_initialize();
    assert!(proxy.tunnels().len() >= 2, "{:?}", proxy.tunnels());
}

#[test]
fn no_proxy_bypasses_the_proxy() {
    let (_dir, token_file) = token_file();
    let rendezvous = FakeRendezvous::start(None);
    let registry = FakeRegistry::start(None, 200, registered(&rendezvous.url));
    let proxy = ConnectProxy::start(None);
    let proxy_url = format!("http://127.0.0.1:{}", proxy.port);
    let _daemon = Daemon::spawn(
        &cloud_args(&registry.base, &token_file),
        &[("ALL_PROXY", &proxy_url), ("NO_PROXY", "example.com, 127.0.0.0/8")],
    );
    registry.next_request();
    rendezvous.accept_and_initialize();
    assert!(proxy.tunnels().is_empty(), "{:?}", proxy.tunnels());
}

/// The registry is reached directly (NO_PROXY), the rendezvous only through the proxy,
/// which refuses the tunnel with 407: logged with the status, registration retried.
fn refused_tunnel(proxy_url: impl Fn(u16) -> String, hint: &str) {
    let pki = pki();
    let (_dir, token_file, ca_file) = token_and_ca_file(&pki);
    let rendezvous = FakeRendezvous::start(Some(pki.server.clone()));
    let registry = FakeRegistry::start(None, 200, registered(&rendezvous.url));
    let proxy = ConnectProxy::start(Some((USER, PASSWORD)));
    let url = proxy_url(proxy.port);
    let daemon = Daemon::spawn(
        &cloud_args(&registry.base, &token_file),
        &[("HTTPS_PROXY", &url), ("NO_PROXY", "127.0.0.1"), ("SSL_CERT_FILE", &ca_file)],
    );
    registry.next_request();
    let line = daemon.wait_line("answered CONNECT");
    assert!(line.contains("with HTTP 407") && line.contains(hint), "{line}");
    println!("{line}");
    registry.next_request();
    assert!(daemon.is_running());
    assert!(!rendezvous.accepted_any());
    assert!(proxy.refused.load(std::sync::atomic::Ordering::SeqCst) >= 1);
    assert_no_secrets(&daemon.stderr());
}

#[test]
fn a_407_without_credentials_is_logged_and_retried() {
    refused_tunnel(|port| format!("http://127.0.0.1:{port}"), "the proxy URL has no credentials");
}

#[test]
fn a_407_with_wrong_credentials_is_logged_and_retried() {
    refused_tunnel(
        |port| format!("http://{USER}:wrong-{PASSWORD_ENCODED}@127.0.0.1:{port}"),
        "the proxy refused the credentials",
    );
}

#[test]
fn a_407_on_the_registry_leg_is_logged_with_its_status_and_retried() {
    let pki = pki();
    let (_dir, token_file, ca_file) = token_and_ca_file(&pki);
    let registry = FakeRegistry::start(Some(pki.server.clone()), 500, String::new());
    let proxy = ConnectProxy::start(Some((USER, PASSWORD)));
    let url = format!("http://127.0.0.1:{}", proxy.port);
    let daemon = Daemon::spawn(
        &cloud_args(&registry.base, &token_file),
        &[("HTTPS_PROXY", &url), ("SSL_CERT_FILE", &ca_file)],
    );
    let line = daemon.wait_line("HTTP 407");
    assert!(line.contains("proxy"), "{line}");
    println!("{line}");
    daemon.wait_line("registering again in");
    assert!(daemon.is_running());
    assert_no_secrets(&daemon.stderr());
}

#[test]
fn a_malformed_proxy_url_exits_2_without_showing_the_password() {
    let (_dir, token_file) = token_file();
    let args = cloud_args("http://127.0.0.1:9", &token_file);
    let daemon = Daemon::spawn(&args, &[("HTTPS_PROXY", "http://u:s3cret-pw@proxy:notaport")]);
    assert_eq!(daemon.wait_exit(), 2);
    let log = daemon.stderr();
    assert!(log.contains("invalid proxy URL in HTTPS_PROXY"), "{log}");
    assert!(!log.contains("s3cret-pw"), "{log}");

    let mut args = cloud_args("http://127.0.0.1:9", &token_file);
    args.extend(["--proxy", "socks5://proxy:1080"]);
    let daemon = Daemon::spawn(&args, &[]);
    assert_eq!(daemon.wait_exit(), 2);
    assert!(daemon.stderr().contains("invalid proxy URL in --proxy"), "{}", daemon.stderr());
}

#[test]
fn ssl_cert_dir_alone_makes_the_private_ca_trusted_on_both_legs() {
    let pki = pki();
    let (dir, token_file) = token_file();
    dir.file("certs/5ed36f99.0", &pki.ca_pem);
    dir.file("certs/README", "not a certificate");
    let cert_dir = format!("{}:{}", dir.s("empty-is-fine-when-not-last-missing"), dir.s("certs"));
    let rendezvous = FakeRendezvous::start(Some(pki.server.clone()));
    let registry = FakeRegistry::start(Some(pki.server.clone()), 200, registered(&rendezvous.url));
    // A directory that does not exist is a startup error naming it.
    let daemon =
        Daemon::spawn(&cloud_args(&registry.base, &token_file), &[("SSL_CERT_DIR", &cert_dir)]);
    assert_eq!(daemon.wait_exit(), 2);
    assert!(daemon.stderr().contains("empty-is-fine-when-not-last-missing"), "{}", daemon.stderr());
    // An empty one too.
    std::fs::create_dir_all(dir.s("empty")).unwrap();
    let daemon = Daemon::spawn(
        &cloud_args(&registry.base, &token_file),
        &[("SSL_CERT_DIR", &dir.s("empty"))],
    );
    assert_eq!(daemon.wait_exit(), 2);
    assert!(daemon.stderr().contains("holds no PEM certificate"), "{}", daemon.stderr());

    let _daemon = Daemon::spawn(
        &cloud_args(&registry.base, &token_file),
        &[("SSL_CERT_DIR", &dir.s("certs"))],
    );
    registry.next_request();
    rendezvous.accept_and_initialize();
}

#[test]
fn json_logs_carry_ts_level_target_msg_and_no_secrets() {
    let (_dir, token_file) = token_file();
    let rendezvous = FakeRendezvous::start(None);
    let registry = FakeRegistry::start(None, 200, registered(&rendezvous.url));
    let proxy = ConnectProxy::start(Some((USER, PASSWORD)));
    let proxy_url = format!("http://{USER}:{PASSWORD_ENCODED}@127.0.0.1:{}", proxy.port);
    let mut args = cloud_args(&registry.base, &token_file);
    args.extend(["--log-format", "json", "--proxy", &proxy_url]);
    let daemon = Daemon::spawn(&args, &[("RUST_LOG", "trace")]);
    registry.next_request();
    rendezvous.accept_and_initialize();
    daemon.wait_line("connected to rendezvous");
    // The per-request line is written once the response is out, so after the client saw it.
    daemon.wait_line(r#""method":"initialize""#);
    let log = daemon.stderr();
    assert_no_secrets(&log);
    let mut requests = Vec::new();
    for line in log.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort_unstable();
        // The four fixed keys, then only structured fields the daemon names.
        let fields = ["connection", "elapsedUs", "error", "method", "pid", "processId"];
        let fields = [&fields[..], &["requestId", "session"]].concat();
        for key in &keys {
            assert!(
                ["level", "msg", "target", "ts"].contains(key) || fields.contains(key),
                "{line}"
            );
        }
        assert!(line.starts_with(r#"{"ts":""#), "{line}");
        assert!(line.contains(r#"","level":""#) && line.contains(r#","target":""#), "{line}");
        if v["msg"].as_str().unwrap().starts_with("request ") {
            requests.push(v.clone());
        }
        let ts = v["ts"].as_str().unwrap();
        assert!(
            ts.len() == 24 && ts.ends_with('Z') && &ts[10..11] == "T" && &ts[19..20] == ".",
            "{ts}"
        );
    }
    // The per-request debug line carries its facts as fields.
    let initialize = requests.iter().find(|v| v["method"] == "initialize").expect("request line");
    assert_eq!(initialize["requestId"], "1", "{initialize}");
    assert_eq!(initialize["error"], false, "{initialize}");
    assert!(initialize["elapsedUs"].is_u64(), "{initialize}");
    assert_eq!(initialize["session"].as_str().map(str::len), Some(36), "{initialize}");

    let daemon = Daemon::spawn(&cloud_args(&registry.base, &token_file), &[]);
    daemon.wait_line("connected to rendezvous");
    for line in daemon.stderr().lines() {
        let (ts, rest) = line.split_once(' ').unwrap();
        assert!(ts.len() == 24 && ts.ends_with('Z'), "{line}");
        assert!(
            ["ERROR", "WARN", "INFO", "DEBUG", "TRACE"].iter().any(|l| rest.starts_with(l)),
            "{line}"
        );
    }
}
