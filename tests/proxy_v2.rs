//! Cloud mode v2 (Noise relay) behind an authenticated HTTP CONNECT proxy (issue 16): the
//! environment registry request and the relay websocket both go through the test proxy,
//! chosen by `HTTP_PROXY` as for v1, and the proxy password never reaches the log.

mod common;
#[path = "support/fake_cloud.rs"]
mod fake_cloud;
mod netfakes;

use std::time::Duration;

use fake_cloud::{registration, FakeRegistry, FakeRelay, Reply, Seen};
use netfakes::{ConnectProxy, Daemon};

const WAIT: Duration = Duration::from_secs(15);
const PASSWORD: &str = "v2-proxy-pw-do-not-log";

#[test]
fn registry_and_relay_go_through_an_authenticated_proxy() {
    let relay = FakeRelay::start("/relay/exec");
    let relay_url = relay.url.clone();
    let registry = FakeRegistry::start(move |seen: &Seen| -> Reply {
        let body = if seen.path.ends_with("/register") {
            registration(&relay_url)
        } else {
            serde_json::json!({"valid": true})
        };
        (200, vec![], body.to_string())
    });
    let proxy = ConnectProxy::start(Some(("v2", PASSWORD)));
    let proxy_url = format!("http://v2:{PASSWORD}@127.0.0.1:{}", proxy.port);
    let daemon = Daemon::spawn(
        &["--remote", &registry.base, "--environment-id", "env-1"],
        &[("HTTP_PROXY", &proxy_url), ("CODEX_EXEC_SERVER_NOISE_AUTH_TOKEN", "tok-v2")],
    );
    let register = registry.next(WAIT);
    assert_eq!(register.path, "/cloud/environment/env-1/register");
    let (upgrade, _ws) = relay.next(WAIT);
    assert_eq!(upgrade.path, "/relay/exec");
    let base_authority = registry.base.trim_start_matches("http://").to_owned();
    let relay_authority =
        relay.url.trim_start_matches("ws://").split('/').next().unwrap().to_owned();
    assert_eq!(proxy.tunnels(), vec![base_authority, relay_authority]);
    let log = daemon.stderr();
    assert!(!log.contains(PASSWORD) && !log.contains("tok-v2"), "{log}");
}

#[test]
fn doctor_checks_cloud_mode_v2_through_the_proxy() {
    let relay = FakeRelay::start("/relay/exec");
    let relay_url = relay.url.clone();
    let registry = FakeRegistry::start(move |_: &Seen| -> Reply {
        let body = registration(&relay_url);
        (200, vec![], body.to_string())
    });
    let proxy = ConnectProxy::start(Some(("v2", PASSWORD)));
    let proxy_url = format!("http://v2:{PASSWORD}@127.0.0.1:{}", proxy.port);
    let closer = std::thread::spawn(move || {
        let (_, mut ws) = relay.next(WAIT);
        ws.get_ref().set_read_timeout(Some(WAIT)).unwrap();
        while ws.read().is_ok() {}
    });
    let daemon = Daemon::spawn(
        &["doctor", "--remote", &registry.base, "--environment-id", "env-1"],
        &[("HTTP_PROXY", &proxy_url), ("CODEX_EXEC_SERVER_NOISE_AUTH_TOKEN", "tok-v2")],
    );
    let code = daemon.wait_exit();
    let out = daemon.stdout();
    assert_eq!(code, 0, "{out}{}", daemon.stderr());
    // This fake registry sends no Date header: the clock check warns, which passes.
    assert_eq!(out.lines().filter(|l| l.starts_with("ok ")).count(), 8, "{out}");
    assert!(out.contains("warn  clock      registry sent no Date header"), "{out}");
    assert!(out.contains("environment id env-1 (v2)"), "{out}");
    assert!(out.contains("6 bytes from environment CODEX_EXEC_SERVER_NOISE_AUTH_TOKEN"), "{out}");
    assert!(out.contains("via proxy 127.0.0.1 and closed cleanly"), "{out}");
    assert!(!out.contains(PASSWORD) && !out.contains("tok-v2"), "{out}");
    assert_eq!(registry.next(WAIT).path, "/cloud/environment/env-1/register");
    closer.join().unwrap();
}
