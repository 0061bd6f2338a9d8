//! `exec-server doctor` (issue 16) against the fake registry, rendezvous and CONNECT proxy:
//! a healthy setup passes every check (exit 0), and each broken link — wrong CA, DNS
//! failure, refused port, 401, proxy 407 — fails with that check named (exit 1). The token
//! and the proxy password never appear in its output.

mod common;
mod netfakes;

use netfakes::*;
use serde_json::Value;

const PASSWORD: &str = "doctor-pw-do-not-show";

fn doctor(args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let mut all = vec!["doctor"];
    all.extend_from_slice(args);
    let daemon = Daemon::spawn(&all, env);
    let code = daemon.wait_exit();
    let out = daemon.stdout();
    let everything = format!("{out}{}", daemon.stderr());
    for secret in [TOKEN, SIGNATURE, PASSWORD] {
        assert!(!everything.contains(secret), "doctor shows {secret:?}:\n{everything}");
    }
    (code, out)
}

/// The line of check `name`, e.g. `FAIL  tls  …`.
fn line<'a>(out: &'a str, name: &str) -> &'a str {
    out.lines()
        .find(|l| l.split_whitespace().nth(1) == Some(name))
        .unwrap_or_else(|| panic!("no {name} line in:\n{out}"))
}

/// The registry flags of cloud mode, and a short timeout.
fn args<'a>(base: &'a str, token_file: &'a str) -> Vec<&'a str> {
    [registry_args(base, token_file), vec!["--timeout", "5"]].concat()
}

#[test]
fn a_healthy_setup_through_an_authenticated_proxy_passes_every_check() {
    let pki = pki();
    let (_dir, token_file, ca_file) = token_and_ca_file(&pki);
    let rendezvous = FakeRendezvous::start(Some(pki.server.clone()));
    let registry = FakeRegistry::start(Some(pki.server.clone()), 200, registered(&rendezvous.url));
    rendezvous.answer_closes();
    let proxy = ConnectProxy::start(Some(("doc", PASSWORD)));
    let proxy_url = format!("http://doc:{PASSWORD}@127.0.0.1:{}", proxy.port);
    let env = [("HTTPS_PROXY", proxy_url.as_str()), ("SSL_CERT_FILE", ca_file.as_str())];
    let (code, out) = doctor(&args(&registry.base, &token_file), &env);
    assert_eq!(code, 0, "{out}");
    for name in ["config", "token", "dns", "proxy", "tcp", "tls", "clock", "register", "websocket"]
    {
        assert!(line(&out, name).starts_with("ok "), "{out}");
    }
    assert!(line(&out, "token").contains(&format!("{} bytes from file", TOKEN.len())), "{out}");
    assert!(line(&out, "proxy").contains("127.0.0.1 (host only): CONNECT localhost:"), "{out}");
    assert!(
        line(&out, "tls").contains("subject localhost issuer exec-server proxy-test CA"),
        "{out}"
    );
    assert!(line(&out, "tls").contains(&format!("trusted via CA file {ca_file}")), "{out}");
    assert!(line(&out, "register").contains("HTTP 200, rendezvous wss://localhost:"), "{out}");
    assert!(line(&out, "websocket").contains("closed cleanly"), "{out}");
    assert_eq!(proxy.tunnels().len(), 2);
    println!("{out}");

    let mut json_args = args(&registry.base, &token_file);
    json_args.push("--json");
    let (code, out) = doctor(&json_args, &env);
    assert_eq!(code, 0, "{out}");
    let report: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(report["ok"], true);
    assert_eq!(report["checks"].as_array().unwrap().len(), 9);
    assert_eq!(report["checks"][5]["name"], "tls");
    assert_eq!(report["checks"][5]["status"], "ok");
}

#[test]
fn ssl_cert_dir_is_named_as_the_trust_source() {
    let pki = pki();
    let (dir, token_file) = token_file();
    dir.file("certs/ca.pem", &pki.ca_pem);
    let rendezvous = FakeRendezvous::start(Some(pki.server.clone()));
    let registry = FakeRegistry::start(Some(pki.server.clone()), 200, registered(&rendezvous.url));
    rendezvous.answer_closes();
    let certs = dir.s("certs");
    let (code, out) = doctor(&args(&registry.base, &token_file), &[("SSL_CERT_DIR", &certs)]);
    assert_eq!(code, 0, "{out}");
    assert!(line(&out, "tls").contains(&format!("trusted via SSL_CERT_DIR {certs}")), "{out}");
}

#[test]
fn a_wrong_ca_fails_the_tls_check() {
    let pki = pki();
    let other = netfakes::pki();
    let (dir, token_file) = token_file();
    let ca_file = dir.file("other-ca.pem", &other.ca_pem);
    let registry = FakeRegistry::start(Some(pki.server.clone()), 200, registered("wss://x/"));
    let (code, out) = doctor(&args(&registry.base, &token_file), &[("SSL_CERT_FILE", &ca_file)]);
    assert_eq!(code, 1, "{out}");
    assert!(line(&out, "tls").starts_with("FAIL"), "{out}");
    assert!(line(&out, "register").starts_with("skip"), "{out}");
    for name in ["config", "token", "dns", "proxy", "tcp"] {
        assert!(line(&out, name).starts_with("ok "), "{out}");
    }
}

#[test]
fn a_dns_failure_fails_the_dns_check() {
    let (_dir, token_file) = token_file();
    let (code, out) = doctor(&args("https://no-such-host.invalid", &token_file), &[]);
    assert_eq!(code, 1, "{out}");
    assert!(
        line(&out, "dns").starts_with("FAIL") && line(&out, "dns").contains("no-such-host.invalid"),
        "{out}"
    );
}

#[test]
fn a_refused_port_fails_the_tcp_check() {
    let (_dir, token_file) = token_file();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let base = format!("http://127.0.0.1:{port}");
    let (code, out) = doctor(&args(&base, &token_file), &[]);
    assert_eq!(code, 1, "{out}");
    assert!(
        line(&out, "tcp").starts_with("FAIL") && line(&out, "tcp").contains("refused"),
        "{out}"
    );
}

#[test]
fn a_401_fails_the_register_check_with_the_registry_message() {
    let (_dir, token_file) = token_file();
    let body = r#"{"error":{"code":"unauthorized","message":"token expired"}}"#.to_owned();
    let registry = FakeRegistry::start(None, 401, body);
    let (code, out) = doctor(&args(&registry.base, &token_file), &[]);
    assert_eq!(code, 1, "{out}");
    assert!(line(&out, "register").starts_with("FAIL"), "{out}");
    assert!(line(&out, "register").contains("HTTP 401: token expired"), "{out}");
    assert!(line(&out, "clock").starts_with("ok "), "{out}");
    assert!(registry.next_request().head.contains(&format!("Bearer {TOKEN}")));
}

#[test]
fn a_proxy_407_fails_the_proxy_check_and_a_bad_config_fails_first() {
    let (dir, token_file) = token_file();
    let registry = FakeRegistry::start(None, 200, registered("ws://127.0.0.1:9/"));
    let proxy = ConnectProxy::start(Some(("doc", PASSWORD)));
    let proxy_url = format!("http://doc:wrong@127.0.0.1:{}", proxy.port);
    let (code, out) = doctor(&args(&registry.base, &token_file), &[("HTTP_PROXY", &proxy_url)]);
    assert_eq!(code, 1, "{out}");
    assert!(
        line(&out, "proxy").starts_with("FAIL") && line(&out, "proxy").contains("HTTP 407"),
        "{out}"
    );

    let (code, out) = doctor(&args(&registry.base, &dir.s("missing-token")), &[]);
    assert_eq!(code, 1, "{out}");
    assert!(line(&out, "config").starts_with("FAIL"), "{out}");
    assert!(line(&out, "websocket").starts_with("skip"), "{out}");
}
