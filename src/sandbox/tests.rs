//! Unit tests of the policy rules and the enforcement plan (no confinement is applied here:
//! the integration tests in tests/sandbox.rs run the real binary for that).

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use super::landlock::Grant;
use super::mounts::Kind;
use super::policy::{self, glob_match, native_path, Effective, Env, Policy, PolicyError};
use super::*;

fn env() -> Env {
    Env { tmpdir: Some(PathBuf::from("/var/tmp-x")) }
}

fn parse(v: Value) -> Result<Policy, PolicyError> {
    policy::parse(Some(&v), &env())
}

fn entry(path: Value, access: &str) -> Value {
    json!({"path": path, "access": access})
}

fn special(kind: &str) -> Value {
    json!({"type":"special","value":{"kind": kind}})
}

fn managed(entries: Vec<Value>, network: &str) -> Value {
    json!({"type":"managed","file_system":{"type":"restricted","entries":entries},"network":network})
}

fn context(permissions: Value, cwd: &str) -> Value {
    json!({"permissions": permissions, "cwd": cwd, "windowsSandboxLevel":"disabled"})
}

fn fs_of(p: &Policy) -> &FsRules {
    p.fs.as_ref().expect("restricted file system")
}

/// A scratch directory (not under /tmp, which tests use as a writable root).
struct Dir(PathBuf);
impl Dir {
    fn new(name: &str) -> Dir {
        let dir = std::env::temp_dir().join(format!("sandbox-unit-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Dir(std::fs::canonicalize(&dir).unwrap())
    }
}
impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn absent_null_and_unrestricted_shapes_enforce_nothing() {
    assert!(policy::parse(None, &env()).unwrap().is_unrestricted());
    let unrestricted = [
        json!(null),
        json!({"permissions":{"type":"disabled"},"cwd":"/p","windowsSandboxLevel":"disabled"}),
        json!({"permissions":{"type":"external","network":"restricted"},"windowsSandboxLevel":"disabled"}),
        json!({"permissions":{"type":"managed","file_system":{"type":"unrestricted"},"network":"enabled"},"windowsSandboxLevel":"disabled"}),
        json!({"sandboxPolicy":{"type":"danger-full-access"},"windowsSandboxLevel":"disabled"}),
        json!({"sandboxPolicy":{"type":"external-sandbox","network_access":"restricted"}}),
        json!({"type":"danger-full-access"}),
        json!({"type":"external-sandbox","network_access":"enabled"}),
        // A `/` write with nothing narrower is full disk write: not sandboxed (A.2).
        context(managed(vec![entry(special("root"), "write")], "enabled"), "/p"),
        context(
            managed(
                vec![entry(special("root"), "write"), entry(special("project_roots"), "write")],
                "enabled",
            ),
            "/p",
        ),
    ];
    for v in unrestricted {
        assert!(parse(v.clone()).unwrap().is_unrestricted(), "{v}");
    }
}

#[test]
fn missing_fields_are_upstreams_decoder_errors() {
    let e = parse(json!({"cwd":"/p","windowsSandboxLevel":"disabled"})).unwrap_err();
    assert_eq!(e, PolicyError::Invalid("missing field `permissions`".into()));
    let e = parse(json!({"permissions":{"type":"disabled"}})).unwrap_err();
    assert_eq!(e, PolicyError::Invalid("missing field `windowsSandboxLevel`".into()));
    assert_eq!(
        parse(json!({})).unwrap_err(),
        PolicyError::Invalid("missing field `permissions`".into())
    );
    assert!(matches!(parse(json!(5)), Err(PolicyError::Invalid(_))));
    let e = parse(context(json!({"type":"managed","network":"enabled"}), "/p")).unwrap_err();
    assert_eq!(e, PolicyError::Invalid("missing field `file_system`".into()));
    assert!(matches!(
        parse(context(json!({"type":"DISABLED"}), "/p")),
        Err(PolicyError::Invalid(_))
    ));
}

#[test]
fn the_0171_workspace_write_example_resolves() {
    let ws = Dir::new("ws171");
    std::fs::create_dir(ws.0.join(".git")).unwrap();
    let uri = format!("file://{}", ws.0.display());
    let sandbox = json!({"permissions":{"type":"managed","file_system":{"type":"restricted","entries":[
        {"path":{"type":"special","value":{"kind":"root"}},"access":"read"},
        {"path":{"type":"special","value":{"kind":"project_roots"}},"access":"write"},
        {"path":{"type":"special","value":{"kind":"slash_tmp"}},"access":"write"},
        {"path":{"type":"special","value":{"kind":"tmpdir"}},"access":"write"},
        {"path":{"type":"special","value":{"kind":"project_roots","subpath":".git"}},"access":"read","missing_path_behavior":"skip"},
        {"path":{"type":"special","value":{"kind":"project_roots","subpath":".agents"}},"access":"read","missing_path_behavior":"skip"},
        {"path":{"type":"special","value":{"kind":"project_roots","subpath":".codex"}},"access":"read","missing_path_behavior":"skip"}]},
        "network":"restricted"},
     "cwd": "file:///elsewhere","policyContext":{"cwd":"file:///elsewhere","workspaceRoots":[uri.clone()]},
     "workspaceRoots":[uri],"userHomeDir":"file:///root",
     "windowsSandboxLevel":"disabled","windowsSandboxProxySettingsMode":"reconcile","useLegacyLandlock":false});
    let p = parse(sandbox).unwrap();
    assert!(p.network_restricted);
    let fs = fs_of(&p);
    // project_roots = workspaceRoots, not cwd.
    assert_eq!(fs.access_of(&ws.0.join("src/main.rs")), Effective::Write);
    assert_eq!(fs.access_of(Path::new("/elsewhere/x")), Effective::Read);
    assert_eq!(fs.access_of(&ws.0.join(".git/config")), Effective::Read);
    assert_eq!(fs.access_of(&ws.0.join(".codex")), Effective::Read);
    assert_eq!(fs.access_of(Path::new("/etc/passwd")), Effective::Read);
    assert_eq!(fs.access_of(Path::new("/tmp/x")), Effective::Write);
    assert_eq!(fs.access_of(Path::new("/var/tmp-x/y")), Effective::Write);
}

#[test]
fn longest_prefix_decides_and_deny_beats_write_beats_read() {
    let p = parse(context(
        managed(
            vec![
                entry(special("root"), "read"),
                entry(json!({"type":"path","path":"/a"}), "write"),
                entry(json!({"type":"path","path":"/a/b"}), "none"),
                entry(json!({"type":"path","path":"/a/b/c"}), "read"),
                entry(json!({"type":"path","path":"/d"}), "write"),
                entry(json!({"type":"path","path":"/d"}), "read"),
                entry(json!({"type":"path","path":"/e"}), "write"),
                entry(json!({"type":"path","path":"/e"}), "deny"),
            ],
            "enabled",
        ),
        "/",
    ))
    .unwrap();
    let fs = fs_of(&p);
    assert!(!p.network_restricted);
    assert_eq!(fs.access_of(Path::new("/a/x")), Effective::Write);
    assert_eq!(fs.access_of(Path::new("/a/b")), Effective::None);
    assert_eq!(fs.access_of(Path::new("/a/b/x")), Effective::None);
    assert_eq!(fs.access_of(Path::new("/a/b/c/x")), Effective::Read);
    assert_eq!(fs.access_of(Path::new("/d/x")), Effective::Write);
    assert_eq!(fs.access_of(Path::new("/e/x")), Effective::None);
    // Prefixes are whole components: /ab is not under /a.
    assert_eq!(fs.access_of(Path::new("/ab")), Effective::Read);
}

#[test]
fn uncovered_paths_have_no_access() {
    let p = parse(context(
        managed(vec![entry(json!({"type":"path","path":"/only"}), "write")], "restricted"),
        "/",
    ))
    .unwrap();
    let fs = fs_of(&p);
    assert_eq!(fs.access_of(Path::new("/etc/passwd")), Effective::None);
    assert_eq!(fs.access_of(Path::new("/only/x")), Effective::Write);
    assert_eq!(fs.access_of(Path::new("/")), Effective::None);
}

#[test]
fn protected_names_stay_read_only_unless_granted_explicitly() {
    let p = parse(context(
        managed(
            vec![
                entry(special("root"), "read"),
                entry(json!({"type":"path","path":"/w"}), "write"),
                entry(json!({"type":"path","path":"/w/.codex"}), "write"),
            ],
            "restricted",
        ),
        "/w",
    ))
    .unwrap();
    let fs = fs_of(&p);
    assert_eq!(fs.access_of(Path::new("/w/.git/HEAD")), Effective::Read);
    assert_eq!(fs.access_of(Path::new("/w/.agents")), Effective::Read);
    assert_eq!(fs.access_of(Path::new("/w/.codex/config.toml")), Effective::Write);
    assert_eq!(fs.access_of(Path::new("/w/.gitignore")), Effective::Write);
}

#[test]
fn deny_globs_match_anywhere_below_their_anchor() {
    let p = parse(context(
        managed(
            vec![
                entry(special("root"), "read"),
                entry(special("project_roots"), "write"),
                entry(json!({"type":"glob_pattern","pattern":"**/.env"}), "deny"),
                entry(json!({"type":"glob_pattern","pattern":"/srv/*.key"}), "deny"),
            ],
            "restricted",
        ),
        "/w",
    ))
    .unwrap();
    let fs = fs_of(&p);
    assert_eq!(fs.access_of(Path::new("/w/.env")), Effective::None);
    assert_eq!(fs.access_of(Path::new("/w/a/b/.env")), Effective::None);
    assert_eq!(fs.access_of(Path::new("/w/.env/inner")), Effective::None);
    assert_eq!(fs.access_of(Path::new("/w/.envrc")), Effective::Write);
    assert_eq!(fs.access_of(Path::new("/srv/a.key")), Effective::None);
    assert_eq!(fs.access_of(Path::new("/srv/sub/a.key")), Effective::Read);
    // Globs only deny.
    let read_glob = context(
        managed(vec![entry(json!({"type":"glob_pattern","pattern":"*.rs"}), "read")], "restricted"),
        "/w",
    );
    assert!(matches!(parse(read_glob), Err(PolicyError::Unsupported(_))));
}

#[test]
fn glob_syntax() {
    assert!(glob_match("/a/**/b", Path::new("/a/b")));
    assert!(glob_match("/a/**/b", Path::new("/a/x/y/b")));
    assert!(!glob_match("/a/*/b", Path::new("/a/x/y/b")));
    assert!(glob_match("/a/?.t[xy]t", Path::new("/a/1.txt")));
    assert!(!glob_match("/a/[!x]", Path::new("/a/x")));
    assert!(glob_match("/a/[a-c]", Path::new("/a/b")));
}

#[test]
fn symlinked_policy_paths_are_resolved() {
    let dir = Dir::new("links");
    std::fs::create_dir(dir.0.join("real")).unwrap();
    std::os::unix::fs::symlink(dir.0.join("real"), dir.0.join("link")).unwrap();
    let p = parse(context(
        managed(
            vec![entry(json!({"type":"path","path": dir.0.join("link")}), "write")],
            "restricted",
        ),
        "/",
    ))
    .unwrap();
    let fs = fs_of(&p);
    assert_eq!(fs.access_of(&dir.0.join("real/file")), Effective::Write);
    // The checked path is resolved by the caller; the link's own path is not a rule.
    assert_eq!(fs.access_of(&policy::resolve(&dir.0.join("link/new"))), Effective::Write);
}

#[test]
fn project_roots_need_a_cwd_or_workspace_roots() {
    let v = json!({"permissions": managed(vec![entry(special("project_roots"), "write")], "restricted"), "windowsSandboxLevel":"disabled"});
    assert!(matches!(parse(v), Err(PolicyError::Unsupported(_))));
    let v = context(
        managed(
            vec![entry(
                json!({"type":"special","value":{"kind":"project_roots","subpath":"../x"}}),
                "write",
            )],
            "restricted",
        ),
        "/w",
    );
    assert!(matches!(parse(v), Err(PolicyError::Invalid(_))));
    let v = context(
        managed(vec![entry(special("current_working_directory"), "write")], "restricted"),
        "file:///w%20x",
    );
    assert_eq!(fs_of(&parse(v).unwrap()).access_of(Path::new("/w x/f")), Effective::Write);
}

#[test]
fn minimal_reads_the_platform_and_unknown_kinds_are_ignored() {
    let v = context(
        managed(
            vec![
                entry(special("minimal"), "read"),
                entry(json!({"type":"special","value":{"kind":"unknown","path":"/zz"}}), "write"),
                entry(json!({"type":"special","value":{"kind":"future_token"}}), "write"),
            ],
            "restricted",
        ),
        "/w",
    );
    let p = parse(v).unwrap();
    let fs = fs_of(&p);
    assert_eq!(fs.access_of(Path::new("/usr/lib/libc.so")), Effective::Read);
    assert_eq!(fs.access_of(Path::new("/proc/self/status")), Effective::Read);
    assert_eq!(fs.access_of(Path::new("/home/u")), Effective::None);
    assert_eq!(fs.access_of(Path::new("/zz")), Effective::None);
}

#[test]
fn legacy_policies() {
    let ro = parse(json!({"sandboxPolicy":{"type":"read-only"},"sandboxPolicyCwd":"/w"})).unwrap();
    assert!(ro.network_restricted);
    assert_eq!(fs_of(&ro).access_of(Path::new("/w/x")), Effective::Read);
    let ro_net = parse(json!({"type":"read-only","network_access":true})).unwrap();
    assert!(!ro_net.network_restricted);
    let ww = parse(json!({"sandboxPolicy":{"type":"workspace-write","writable_roots":["/data"],"exclude_slash_tmp":true},"sandboxPolicyCwd":"/w"})).unwrap();
    let fs = fs_of(&ww);
    assert_eq!(fs.access_of(Path::new("/w/x")), Effective::Write);
    assert_eq!(fs.access_of(Path::new("/w/.git/x")), Effective::Read);
    assert_eq!(fs.access_of(Path::new("/data/x")), Effective::Write);
    assert_eq!(fs.access_of(Path::new("/tmp/x")), Effective::Read);
    assert_eq!(fs.access_of(Path::new("/var/tmp-x/x")), Effective::Write);
    let restricted_read = parse(json!({"sandboxPolicy":{"type":"read-only","access":{"type":"restricted","readable_roots":["/r"]}},"sandboxPolicyCwd":"/w"})).unwrap();
    let fs = fs_of(&restricted_read);
    assert_eq!(fs.access_of(Path::new("/r/x")), Effective::Read);
    assert_eq!(fs.access_of(Path::new("/usr/bin/sh")), Effective::Read);
    assert_eq!(fs.access_of(Path::new("/home")), Effective::None);
    // The untagged older profile.
    let untagged = parse(context(
        json!({"network":{"enabled":true},"file_system":{"read":["/"],"write":["/w"]}}),
        "/w",
    ))
    .unwrap();
    assert!(!untagged.network_restricted);
    assert_eq!(fs_of(&untagged).access_of(Path::new("/w/x")), Effective::Write);
}

#[test]
fn file_uris_decode() {
    assert_eq!(native_path("file:///a%20b/c"), Some(PathBuf::from("/a b/c")));
    assert_eq!(native_path("file://localhost/x/../y"), Some(PathBuf::from("/y")));
    assert_eq!(native_path("/plain"), Some(PathBuf::from("/plain")));
    assert_eq!(native_path("relative"), None);
    assert_eq!(native_path("file://host/x"), None);
}

#[test]
fn plan_carves_read_only_and_denied_paths_out_of_grants() {
    let ws = Dir::new("plan");
    std::fs::create_dir(ws.0.join(".git")).unwrap();
    std::fs::create_dir(ws.0.join("secret")).unwrap();
    std::fs::write(ws.0.join("a.env"), "x").unwrap();
    std::fs::write(ws.0.join("keep"), "x").unwrap();
    let v = context(
        managed(
            vec![
                entry(special("root"), "read"),
                entry(special("project_roots"), "write"),
                entry(special("project_roots"), "write"),
                entry(
                    json!({"type":"special","value":{"kind":"project_roots","subpath":"secret"}}),
                    "deny",
                ),
                entry(json!({"type":"glob_pattern","pattern":"**/*.env"}), "deny"),
            ],
            "restricted",
        ),
        ws.0.to_str().unwrap(),
    );
    let p = parse(v).unwrap();
    let (grants, mounts) = plan(fs_of(&p), true);
    assert!(grants.contains(&(ws.0.clone(), Grant::Write)));
    assert!(grants.contains(&(PathBuf::from("/"), Grant::Read)));
    assert!(grants.contains(&(PathBuf::from("/dev/null"), Grant::Write)));
    let ops: Vec<(Kind, String)> =
        mounts.ops.iter().map(|o| (o.kind, o.path.to_str().unwrap().to_string())).collect();
    let at = |name: &str| ws.0.join(name).to_str().unwrap().to_string();
    assert!(ops.contains(&(Kind::ReadOnly, at(".git"))), "{ops:?}");
    assert!(ops.contains(&(Kind::MaskDir, at("secret"))), "{ops:?}");
    assert!(ops.contains(&(Kind::MaskFile, at("a.env"))), "{ops:?}");
    assert_eq!(ops.len(), 3, "missing .agents/.codex need nothing: {ops:?}");

    // Without mount namespaces the write grant is split: siblings keep it, the carve-outs
    // and the root directory itself lose it.
    let (grants, mounts) = plan(fs_of(&p), false);
    assert!(mounts.is_empty());
    assert!(grants.contains(&(ws.0.join("keep"), Grant::Write)));
    assert!(!grants.contains(&(ws.0.clone(), Grant::Write)));
    assert!(grants.contains(&(ws.0.join(".git"), Grant::Read)));
    assert!(!grants.iter().any(|(p, _)| p == &ws.0.join("secret")));
    assert!(!grants.iter().any(|(p, _)| p == &ws.0.join("a.env")));
}

#[test]
fn denial_heuristic() {
    assert!(mentions_denial(b"touch: cannot touch '/etc/x': Permission denied\n"));
    assert!(mentions_denial(b"OSError: [Errno 1] OPERATION NOT PERMITTED"));
    assert!(!mentions_denial(b"all good"));
    // Upstream's own cases: keywords needed; a keyword wins even over a quick-reject code;
    // 127 without one is rejected; exit 0 never; SIGSYS (159) always.
    assert!(!is_likely_denied(1, false, false));
    assert!(is_likely_denied(1, false, true));
    assert!(is_likely_denied(101, false, true));
    assert!(is_likely_denied(2, false, true));
    assert!(!is_likely_denied(127, false, false));
    assert!(!is_likely_denied(0, false, true));
    assert!(is_likely_denied(159, true, false));
    assert!(is_likely_denied(159, false, false));
}

#[test]
fn seccomp_program_shape() {
    let p = seccomp::program();
    assert!(p.len() > 10);
    assert_eq!(p.last().unwrap().k, 0x7fff_0000, "default allow");
}
