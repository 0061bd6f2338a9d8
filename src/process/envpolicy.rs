//! The child environment of `process/start` (PROTOCOL.md §4.1.1): either exactly the request's
//! `env`, or the server's own environment filtered by an `envPolicy` and overlaid with `env`.
//! It owns the wire type `EnvPolicy` and the glob matching of variable names; it spawns
//! nothing and reads the server environment only through what its caller hands it.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;

use serde::Deserialize;

/// The variables `inherit: "core"` keeps, those of them that are present.
const CORE_VARS: [&str; 9] =
    ["HOME", "LOGNAME", "PATH", "SHELL", "USER", "USERNAME", "TMPDIR", "TEMP", "TMP"];

/// Names dropped unless `ignoreDefaultExcludes` is true: they usually hold credentials.
const DEFAULT_EXCLUDES: [&str; 3] = ["*KEY*", "*SECRET*", "*TOKEN*"];

/// Where the environment starts from before filtering.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Inherit {
    Core,
    All,
    None,
}

/// `envPolicy` of `process/start`; all five fields are required on the wire.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EnvPolicy {
    pub inherit: Inherit,
    pub ignore_default_excludes: bool,
    pub exclude: Vec<String>,
    pub set: HashMap<String, String>,
    pub include_only: Vec<String>,
}

/// The child environment: exactly `env` without a policy; with one, `server` (the daemon's own
/// environment) filtered in the order inherit → default excludes → exclude → set →
/// includeOnly, then overlaid with `env`, whose keys win.
pub fn build(
    policy: Option<&EnvPolicy>,
    env: &HashMap<String, String>,
    server: impl IntoIterator<Item = (OsString, OsString)>,
) -> BTreeMap<OsString, OsString> {
    let mut vars = BTreeMap::new();
    if let Some(policy) = policy {
        vars = server
            .into_iter()
            .filter(|(name, _)| match policy.inherit {
                Inherit::All => true,
                Inherit::None => false,
                Inherit::Core => CORE_VARS.iter().any(|core| name == core),
            })
            .collect();
        if !policy.ignore_default_excludes {
            vars.retain(|name, _| !matches_any(&DEFAULT_EXCLUDES, name));
        }
        vars.retain(|name, _| !matches_any(&policy.exclude, name));
        for (name, value) in &policy.set {
            vars.insert(name.into(), value.into());
        }
        if !policy.include_only.is_empty() {
            vars.retain(|name, _| matches_any(&policy.include_only, name));
        }
    }
    for (name, value) in env {
        vars.insert(name.into(), value.into());
    }
    vars
}

fn matches_any<P: AsRef<str>>(patterns: &[P], name: &OsString) -> bool {
    let name = name.to_string_lossy();
    patterns.iter().any(|pattern| glob_matches(pattern.as_ref(), &name))
}

/// Whole-name glob match, case-insensitive: `*` is any run of characters, `?` exactly one.
pub fn glob_matches(pattern: &str, name: &str) -> bool {
    let pattern: Vec<char> = pattern.chars().flat_map(char::to_lowercase).collect();
    let name: Vec<char> = name.chars().flat_map(char::to_lowercase).collect();
    // Iterative matcher with single-star backtracking: linear in practice, no recursion.
    let (mut p, mut n) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        match pattern.get(p) {
            Some('*') => {
                star = Some((p, n));
                p += 1;
            }
            Some(&c) if c == '?' || c == name[n] => {
                p += 1;
                n += 1;
            }
            _ => match star {
                Some((star_p, star_n)) => {
                    p = star_p + 1;
                    n = star_n + 1;
                    star = Some((star_p, star_n + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server() -> Vec<(OsString, OsString)> {
        [
            ("HOME", "/home/u"),
            ("PATH", "/usr/bin"),
            ("USER", "u"),
            ("API_KEY", "k"),
            ("my_secret_thing", "s"),
            ("GH_Token", "t"),
            ("EDITOR", "vi"),
            ("LANG", "C"),
        ]
        .iter()
        .map(|(k, v)| (k.into(), v.into()))
        .collect()
    }

    fn policy(inherit: Inherit) -> EnvPolicy {
        EnvPolicy {
            inherit,
            ignore_default_excludes: false,
            exclude: vec![],
            set: HashMap::new(),
            include_only: vec![],
        }
    }

    fn names(vars: &BTreeMap<OsString, OsString>) -> Vec<String> {
        vars.keys().map(|k| k.to_string_lossy().into_owned()).collect()
    }

    fn map(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn globs_are_whole_name_and_case_insensitive() {
        assert!(glob_matches("*KEY*", "api_key"));
        assert!(glob_matches("*key*", "KEYRING"));
        assert!(glob_matches("a?c", "ABC"));
        assert!(!glob_matches("a?c", "abbc"));
        assert!(!glob_matches("PATH", "PATHS"));
        assert!(glob_matches("P*H", "PATH"));
        assert!(glob_matches("*", ""));
        assert!(!glob_matches("?", ""));
        assert!(glob_matches("*a*b*c", "xxaxxbxxbc"));
    }

    #[test]
    fn without_policy_env_is_exact() {
        let env = map(&[("A", "1")]);
        let vars = build(None, &env, server());
        assert_eq!(names(&vars), ["A"]);
    }

    #[test]
    fn inherit_core_all_none() {
        let none = HashMap::new();
        assert_eq!(
            names(&build(Some(&policy(Inherit::Core)), &none, server())),
            ["HOME", "PATH", "USER"]
        );
        assert_eq!(
            names(&build(Some(&policy(Inherit::All)), &none, server())),
            ["EDITOR", "HOME", "LANG", "PATH", "USER"]
        );
        assert!(build(Some(&policy(Inherit::None)), &none, server()).is_empty());
        let mut keep = policy(Inherit::All);
        keep.ignore_default_excludes = true;
        assert_eq!(build(Some(&keep), &none, server()).len(), 8);
    }

    #[test]
    fn steps_apply_in_order() {
        let mut p = policy(Inherit::All);
        p.exclude = vec!["editor".into(), "L?NG".into()];
        // `set` comes after the excludes, so an excluded-looking name set here survives them…
        p.set = map(&[("MY_TOKEN", "set"), ("HOME", "/set")]);
        // …but includeOnly comes after `set` and can still drop it.
        p.include_only = vec!["home".into(), "*token".into(), "path".into()];
        let env = map(&[("HOME", "/env"), ("EXTRA", "x")]);
        let vars = build(Some(&p), &env, server());
        assert_eq!(names(&vars), ["EXTRA", "HOME", "MY_TOKEN", "PATH"]);
        // The overlay wins and is not filtered.
        assert_eq!(vars[&OsString::from("HOME")], "/env");
        assert_eq!(vars[&OsString::from("MY_TOKEN")], "set");
    }

    #[test]
    fn policy_decodes_and_requires_all_fields() {
        let full = r#"{"inherit":"core","ignoreDefaultExcludes":true,"exclude":[],"set":{},"includeOnly":[]}"#;
        let p: EnvPolicy = serde_json::from_str(full).expect("valid policy");
        assert_eq!(p.inherit, Inherit::Core);
        let missing = r#"{"inherit":"core","exclude":[],"set":{},"includeOnly":[]}"#;
        let err = serde_json::from_str::<EnvPolicy>(missing).expect_err("field missing");
        assert!(err.to_string().contains("ignoreDefaultExcludes"), "{err}");
    }
}
