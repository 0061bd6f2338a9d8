//! The client's `sandbox` member (PROTOCOL.md Appendix A, UPSTREAM-0.171.md §5) turned into
//! one resolved policy: which paths may be read or written, which are denied, and whether
//! outbound network is allowed. Owns the wire shapes of the 0.130 and 0.171 clients and
//! upstream's decision rules (longest matching prefix decides; deny > write > read at equal
//! specificity; uncovered = no access). Touches the disk only to resolve symlinks of the
//! policy's own paths; never enforces anything (that is `landlock`, `mounts`, `seccomp`).

use std::path::{Component, Path, PathBuf};

use serde_json::Value;

/// Glob denies are expanded by scanning at most this deep below their literal prefix when no
/// `glob_scan_max_depth` is given.
pub const GLOB_SCAN_DEPTH_DEFAULT: usize = 8;

/// What the platform needs to run programs (`minimal`): upstream's Linux platform read roots.
pub const MINIMAL_READ_ROOTS: &[&str] = &[
    "/bin",
    "/sbin",
    "/usr",
    "/etc",
    "/lib",
    "/lib64",
    "/lib32",
    "/libx32",
    "/nix/store",
    "/run/current-system/sw",
    "/proc",
    "/sys/devices/system/cpu",
];

/// Device files every sandboxed program may read and write (shells redirect to `/dev/null`
/// all the time); granted with any restricted file-system policy.
pub const DEVICE_FILES: &[&str] =
    &["/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom", "/dev/tty", "/dev/pts"];

/// Names kept read-only under every writable root unless granted explicitly.
pub const PROTECTED_NAMES: &[&str] = &[".git", ".agents", ".codex"];

/// One rule's access. The derived order is the rank at equal specificity: deny > write > read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Access {
    Read,
    Write,
    Deny,
}

/// What a path may have, after all rules are weighed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Effective {
    None,
    Read,
    Write,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    /// Absolute, lexically normalized, symlinks of its existing part resolved.
    pub path: PathBuf,
    pub access: Access,
}

/// A restricted file system: the rules, plus deny globs (absolute patterns).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FsRules {
    pub rules: Vec<Rule>,
    pub deny_globs: Vec<String>,
    pub glob_scan_depth: usize,
}

/// The resolved policy of one request. `fs: None` is full disk access.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    pub fs: Option<FsRules>,
    pub network_restricted: bool,
}

impl Policy {
    /// Nothing to enforce: runs exactly as without a sandbox.
    pub fn is_unrestricted(&self) -> bool {
        self.fs.is_none() && !self.network_restricted
    }
}

/// Why a `sandbox` member cannot be used. `Invalid` is -32602 (upstream's decoder text),
/// `Unsupported` -32600.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PolicyError {
    Invalid(String),
    Unsupported(String),
}

fn missing(field: &str) -> PolicyError {
    PolicyError::Invalid(format!("missing field `{field}`"))
}

fn invalid(what: impl Into<String>) -> PolicyError {
    PolicyError::Invalid(what.into())
}

/// The daemon's environment as the policy needs it (`tmpdir`), injectable for tests.
pub struct Env {
    pub tmpdir: Option<PathBuf>,
}

impl Env {
    pub fn current() -> Env {
        Env { tmpdir: crate::config::tmpdir() }
    }
}

/// Parses a request's `sandbox` member. `None` (absent or null) is no sandbox.
pub fn parse(sandbox: Option<&Value>, env: &Env) -> Result<Policy, PolicyError> {
    let Some(sandbox) = sandbox.filter(|s| !s.is_null()) else {
        return Ok(Policy::default());
    };
    let Some(object) = sandbox.as_object() else {
        return Err(invalid(format!(
            "invalid type: {}, expected struct FileSystemSandboxContext",
            kind_of(sandbox)
        )));
    };
    if let Some(permissions) = object.get("permissions") {
        if !object.contains_key("windowsSandboxLevel") {
            return Err(missing("windowsSandboxLevel"));
        }
        let context = Context::of(object)?;
        return profile(permissions, &context, env);
    }
    // Before mid-April 2026: `{"sandboxPolicy": SandboxPolicy, "sandboxPolicyCwd"?: path, …}`.
    if let Some(legacy) = object.get("sandboxPolicy") {
        let mut context = Context::of(object)?;
        if let Some(cwd) = object.get("sandboxPolicyCwd").filter(|v| !v.is_null()) {
            context.cwd = Some(path_value(cwd)?);
        }
        return legacy_policy(legacy, &context, env);
    }
    // A bare legacy SandboxPolicy, as the v1 gate always accepted.
    if let Some(Value::String(kind)) = object.get("type") {
        if matches!(
            kind.as_str(),
            "danger-full-access" | "read-only" | "workspace-write" | "external-sandbox"
        ) {
            return legacy_policy(sandbox, &Context::default(), env);
        }
    }
    Err(missing("permissions"))
}

fn kind_of(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => format!("boolean `{b}`"),
        Value::Number(n) => format!("integer `{n}`"),
        Value::String(s) => format!("string {s:?}"),
        Value::Array(_) => "sequence".into(),
        Value::Object(_) => "map".into(),
    }
}

/// The context's paths: `cwd` and the project roots.
#[derive(Default)]
struct Context {
    cwd: Option<PathBuf>,
    workspace_roots: Vec<PathBuf>,
}

impl Context {
    fn of(object: &serde_json::Map<String, Value>) -> Result<Context, PolicyError> {
        let policy_context = object.get("policyContext").and_then(Value::as_object);
        let member = |name: &str| {
            object
                .get(name)
                .filter(|v| !v.is_null())
                .or_else(|| policy_context.and_then(|c| c.get(name)).filter(|v| !v.is_null()))
        };
        let cwd = member("cwd").map(path_value).transpose()?;
        let mut workspace_roots = Vec::new();
        if let Some(roots) = member("workspaceRoots") {
            let roots =
                roots.as_array().ok_or_else(|| invalid("workspaceRoots: expected a sequence"))?;
            for root in roots {
                workspace_roots.push(path_value(root)?);
            }
        }
        Ok(Context { cwd, workspace_roots })
    }

    /// `project_roots`: the workspace roots, else the cwd.
    fn project_roots(&self) -> Result<Vec<PathBuf>, PolicyError> {
        if !self.workspace_roots.is_empty() {
            return Ok(self.workspace_roots.clone());
        }
        match &self.cwd {
            Some(cwd) => Ok(vec![cwd.clone()]),
            None => Err(PolicyError::Unsupported(
                "sandbox policy refers to the project roots but the context has no cwd".into(),
            )),
        }
    }
}

fn path_value(v: &Value) -> Result<PathBuf, PolicyError> {
    let text = v
        .as_str()
        .ok_or_else(|| invalid(format!("invalid type: {}, expected path string", kind_of(v))))?;
    native_path(text).ok_or_else(|| invalid(format!("sandbox path is not absolute: {text}")))
}

/// A `file:` URI or a native absolute path, lexically normalized, as every handler decodes
/// paths (`crate::uri`); `None` for anything else, including a URI naming another host.
pub fn native_path(text: &str) -> Option<PathBuf> {
    crate::uri::AbsolutePath::parse(text).ok()?.local().map(Path::to_path_buf)
}

/// Lexical normalization of an absolute path (`.` and `..` removed); `None` if relative.
pub fn normalize(path: &Path) -> Option<PathBuf> {
    if !path.has_root() {
        return None;
    }
    let mut out = PathBuf::from("/");
    for component in path.components() {
        match component {
            Component::Normal(name) => out.push(name),
            Component::ParentDir => {
                out.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    Some(out)
}

/// Resolves symlinks in the existing part of `path` (the rest is appended as is), so a rule
/// and a checked path compare as the kernel sees them.
pub fn resolve(path: &Path) -> PathBuf {
    let mut existing = path.to_path_buf();
    let mut rest = Vec::new();
    loop {
        if let Ok(real) = std::fs::canonicalize(&existing) {
            let mut out = real;
            for name in rest.iter().rev() {
                out.push(name);
            }
            return out;
        }
        match (existing.file_name().map(|n| n.to_os_string()), existing.parent()) {
            (Some(name), Some(parent)) => {
                rest.push(name);
                existing = parent.to_path_buf();
            }
            _ => return path.to_path_buf(),
        }
    }
}

/// PermissionProfile (A.2).
fn profile(v: &Value, context: &Context, env: &Env) -> Result<Policy, PolicyError> {
    let Some(object) = v.as_object() else {
        return Err(invalid(format!(
            "invalid type: {}, expected internally tagged enum PermissionProfile",
            kind_of(v)
        )));
    };
    let Some(kind) = object.get("type") else {
        // The older untagged profile: `{"network":…, "file_system":…}`.
        if object.contains_key("network") || object.contains_key("file_system") {
            let network_restricted = !network_enabled(object.get("network"))?;
            let fs = match object.get("file_system").filter(|v| !v.is_null()) {
                None => None,
                Some(fs) => file_system(fs, context, env)?,
            };
            return Ok(finish(fs, network_restricted));
        }
        return Err(missing("type"));
    };
    match kind.as_str() {
        Some("disabled") => Ok(Policy::default()),
        // Isolation is the caller's: full disk, and the caller handles the network.
        Some("external") => Ok(Policy::default()),
        Some("managed") => {
            let fs = object.get("file_system").ok_or_else(|| missing("file_system"))?;
            let network = object.get("network").ok_or_else(|| missing("network"))?;
            let network_restricted = !network_enabled(Some(network))?;
            Ok(finish(file_system(fs, context, env)?, network_restricted))
        }
        Some(other) => Err(invalid(format!(
            "unknown variant `{other}`, expected one of `managed`, `disabled`, `external`"
        ))),
        None => Err(invalid("invalid type for `type`, expected a string")),
    }
}

fn network_enabled(v: Option<&Value>) -> Result<bool, PolicyError> {
    match v {
        None | Some(Value::Null) => Ok(false),
        Some(Value::String(s)) if s == "enabled" => Ok(true),
        Some(Value::String(s)) if s == "restricted" => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(Value::Object(o)) => Ok(o.get("enabled").and_then(Value::as_bool).unwrap_or(false)),
        Some(other) => Err(invalid(format!(
            "unknown variant {}, expected `restricted` or `enabled`",
            kind_of(other)
        ))),
    }
}

/// FS of A.2 (tagged or the older untagged `{read, write}` / `{entries}`). `None` = full disk.
fn file_system(v: &Value, context: &Context, env: &Env) -> Result<Option<FsRules>, PolicyError> {
    let object = v.as_object().ok_or_else(|| invalid("file_system: expected a map"))?;
    match object.get("type").and_then(Value::as_str) {
        Some("unrestricted") => return Ok(None),
        Some("restricted") | None => {}
        Some(other) => {
            return Err(invalid(format!(
                "unknown variant `{other}`, expected `restricted` or `unrestricted`"
            )))
        }
    }
    let mut raw = Vec::new();
    let mut deny_globs = Vec::new();
    if let Some(entries) = object.get("entries") {
        let entries = entries.as_array().ok_or_else(|| invalid("entries: expected a sequence"))?;
        for entry in entries {
            let access = match entry.get("access").and_then(Value::as_str) {
                Some("read") => Access::Read,
                Some("write") => Access::Write,
                Some("deny" | "none") => Access::Deny,
                Some(other) => {
                    return Err(invalid(format!(
                        "unknown variant `{other}`, expected one of `read`, `write`, `deny`"
                    )))
                }
                None => return Err(missing("access")),
            };
            let path = entry.get("path").ok_or_else(|| missing("path"))?;
            entry_paths(path, access, context, env, &mut raw, &mut deny_globs)?;
        }
    } else if object.contains_key("read") || object.contains_key("write") {
        for (key, access) in [("read", Access::Read), ("write", Access::Write)] {
            for path in object.get(key).and_then(Value::as_array).into_iter().flatten() {
                if path.is_string() {
                    raw.push(Rule { path: path_value(path)?, access });
                } else {
                    entry_paths(path, access, context, env, &mut raw, &mut deny_globs)?;
                }
            }
        }
    } else if object.get("type").is_some() {
        return Err(missing("entries"));
    }
    let glob_scan_depth = object
        .get("glob_scan_max_depth")
        .and_then(Value::as_u64)
        .map(|d| d as usize)
        .unwrap_or(GLOB_SCAN_DEPTH_DEFAULT);
    Ok(Some(FsRules { rules: raw, deny_globs, glob_scan_depth }))
}

/// One entry's `path` (A.2 `Path`), appended as rules or a deny glob.
fn entry_paths(
    path: &Value,
    access: Access,
    context: &Context,
    env: &Env,
    rules: &mut Vec<Rule>,
    deny_globs: &mut Vec<String>,
) -> Result<(), PolicyError> {
    let mut push = |p: PathBuf| rules.push(Rule { path: p, access });
    match path.get("type").and_then(Value::as_str) {
        Some("path") => push(path_value(path.get("path").ok_or_else(|| missing("path"))?)?),
        Some("glob_pattern") => {
            let pattern =
                path.get("pattern").and_then(Value::as_str).ok_or_else(|| missing("pattern"))?;
            if access != Access::Deny {
                return Err(PolicyError::Unsupported(format!(
                    "glob pattern `{pattern}` may only deny access"
                )));
            }
            let anchored = if pattern.starts_with('/') {
                pattern.to_string()
            } else if let Some(p) = pattern.strip_prefix("file://") {
                p.to_string()
            } else {
                let base = context.cwd.clone().unwrap_or_else(|| PathBuf::from("/"));
                format!("{}/{pattern}", base.display()).replace("//", "/")
            };
            deny_globs.push(anchored);
        }
        Some("special") => {
            let value = path.get("value").ok_or_else(|| missing("value"))?;
            let subpath = value.get("subpath").and_then(Value::as_str);
            let with_subpath = |base: PathBuf| -> Result<PathBuf, PolicyError> {
                match subpath {
                    None => Ok(base),
                    Some(sub) if Path::new(sub).is_absolute() => {
                        Err(invalid(format!("subpath must be relative: {sub}")))
                    }
                    Some(sub) => normalize(&base.join(sub))
                        .filter(|p| p.starts_with(&base))
                        .ok_or_else(|| invalid(format!("subpath escapes its root: {sub}"))),
                }
            };
            match value.get("kind").and_then(Value::as_str) {
                Some("root") => push(PathBuf::from("/")),
                Some("minimal") => {
                    for root in MINIMAL_READ_ROOTS {
                        // The platform minimum is read-only whatever the entry asks, unless denied.
                        let access =
                            if access == Access::Deny { Access::Deny } else { Access::Read };
                        rules.push(Rule { path: PathBuf::from(root), access });
                    }
                }
                Some("project_roots" | "current_working_directory") => {
                    for root in context.project_roots()? {
                        let p = with_subpath(root)?;
                        rules.push(Rule { path: p, access });
                    }
                }
                Some("tmpdir") => {
                    if let Some(tmp) = env.tmpdir.clone() {
                        push(tmp);
                    }
                }
                Some("slash_tmp") => push(PathBuf::from("/tmp")),
                // A token from a newer client: ignored, as upstream ignores it.
                Some(_) => {}
                None => return Err(missing("kind")),
            }
        }
        Some(other) => {
            return Err(invalid(format!(
                "unknown variant `{other}`, expected one of `path`, `glob_pattern`, `special`"
            )))
        }
        None => return Err(missing("type")),
    }
    Ok(())
}

/// Legacy SandboxPolicy (A.4).
fn legacy_policy(v: &Value, context: &Context, env: &Env) -> Result<Policy, PolicyError> {
    let kind = v.get("type").and_then(Value::as_str).ok_or_else(|| missing("type"))?;
    let flag = |name: &str| v.get(name).and_then(Value::as_bool).unwrap_or(false);
    let read_rules = |rules: &mut Vec<Rule>, key: &str| -> Result<(), PolicyError> {
        match v.get(key).filter(|a| !a.is_null()) {
            Some(access) if access.get("type").and_then(Value::as_str) == Some("restricted") => {
                if access.get("include_platform_defaults").and_then(Value::as_bool).unwrap_or(true)
                {
                    rules.extend(
                        MINIMAL_READ_ROOTS
                            .iter()
                            .map(|p| Rule { path: p.into(), access: Access::Read }),
                    );
                }
                for root in
                    access.get("readable_roots").and_then(Value::as_array).into_iter().flatten()
                {
                    rules.push(Rule { path: path_value(root)?, access: Access::Read });
                }
                if let Some(cwd) = &context.cwd {
                    rules.push(Rule { path: cwd.clone(), access: Access::Read });
                }
            }
            _ => rules.push(Rule { path: "/".into(), access: Access::Read }),
        }
        Ok(())
    };
    match kind {
        "danger-full-access" | "external-sandbox" => Ok(Policy::default()),
        "read-only" => {
            let mut rules = Vec::new();
            read_rules(&mut rules, "access")?;
            let fs = FsRules { rules, deny_globs: vec![], glob_scan_depth: GLOB_SCAN_DEPTH_DEFAULT };
            Ok(finish(Some(fs), !flag("network_access")))
        }
        "workspace-write" => {
            let mut rules = Vec::new();
            read_rules(&mut rules, "read_only_access")?;
            let cwd = context.cwd.clone().ok_or_else(|| {
                PolicyError::Unsupported("workspace-write sandbox policy needs a cwd".into())
            })?;
            rules.push(Rule { path: cwd, access: Access::Write });
            for root in v.get("writable_roots").and_then(Value::as_array).into_iter().flatten() {
                rules.push(Rule { path: path_value(root)?, access: Access::Write });
            }
            if !flag("exclude_slash_tmp") {
                rules.push(Rule { path: "/tmp".into(), access: Access::Write });
            }
            if !flag("exclude_tmpdir_env_var") {
                if let Some(tmp) = env.tmpdir.clone() {
                    rules.push(Rule { path: tmp, access: Access::Write });
                }
            }
            let fs = FsRules { rules, deny_globs: vec![], glob_scan_depth: GLOB_SCAN_DEPTH_DEFAULT };
            Ok(finish(Some(fs), !flag("network_access")))
        }
        other => Err(invalid(format!(
            "unknown variant `{other}`, expected one of `danger-full-access`, `read-only`, `external-sandbox`, `workspace-write`"
        ))),
    }
}

/// Upstream's finishing rules: symlinks resolved, protected names under writable roots,
/// duplicates dropped, and full-disk write (a `/` write with nothing narrower) = no fs sandbox.
fn finish(fs: Option<FsRules>, network_restricted: bool) -> Policy {
    let Some(mut fs) = fs else {
        return Policy { fs: None, network_restricted };
    };
    for rule in &mut fs.rules {
        rule.path = resolve(&rule.path);
    }
    // Full-disk write: a `/` write and nothing narrower (checked before the protected names
    // are added, which only narrow writable roots the client named).
    let root = Path::new("/");
    let full_write = fs.deny_globs.is_empty()
        && fs.rules.iter().any(|r| r.path == root && r.access == Access::Write)
        && fs.rules.iter().all(|r| r.access == Access::Write);
    if full_write {
        return Policy { fs: None, network_restricted };
    }
    let explicit: Vec<PathBuf> = fs.rules.iter().map(|r| r.path.clone()).collect();
    let writable: Vec<PathBuf> =
        fs.rules.iter().filter(|r| r.access == Access::Write).map(|r| r.path.clone()).collect();
    for root in writable {
        for name in PROTECTED_NAMES {
            let path = resolve(&root.join(name));
            if !explicit.contains(&path) {
                fs.rules.push(Rule { path, access: Access::Read });
            }
        }
    }
    fs.rules.sort_by(|a, b| a.path.cmp(&b.path).then(a.access.cmp(&b.access)));
    fs.rules.dedup();
    Policy { fs: Some(fs), network_restricted }
}

impl FsRules {
    /// The access `path` (absolute, symlinks already resolved by the caller) has: the rule
    /// with the longest matching prefix decides, deny > write > read among equals; a deny
    /// glob matching it or an ancestor denies; nothing matching = no access.
    pub fn access_of(&self, path: &Path) -> Effective {
        if self.denied_by_glob(path) {
            return Effective::None;
        }
        let best = self.rules.iter().filter(|r| path.starts_with(&r.path)).max_by(|a, b| {
            let depth = |r: &Rule| r.path.components().count();
            depth(a).cmp(&depth(b)).then(a.access.cmp(&b.access))
        });
        match best.map(|r| r.access) {
            Some(Access::Write) => Effective::Write,
            Some(Access::Read) => Effective::Read,
            Some(Access::Deny) | None => Effective::None,
        }
    }

    pub fn denied_by_glob(&self, path: &Path) -> bool {
        self.deny_globs.iter().any(|g| {
            let mut p = path.to_path_buf();
            loop {
                if glob_match(g, &p) {
                    return true;
                }
                if !p.pop() {
                    return false;
                }
            }
        })
    }
}

/// Glob match of an absolute pattern against an absolute path, component by component:
/// `**` spans any number of components, `*` and `?` stay within one, `[…]` is a class.
pub fn glob_match(pattern: &str, path: &Path) -> bool {
    let pat: Vec<&str> = pattern.split('/').filter(|s| !s.is_empty()).collect();
    let names: Vec<String> = path
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_string_lossy().into_owned()),
            _ => None,
        })
        .collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    match_components(&pat, &names)
}

fn match_components(pat: &[&str], names: &[&str]) -> bool {
    match pat.split_first() {
        None => names.is_empty(),
        Some((&"**", rest)) => (0..=names.len()).any(|i| match_components(rest, &names[i..])),
        Some((first, rest)) => match names.split_first() {
            Some((name, names_rest)) => {
                match_name(first.as_bytes(), name.as_bytes()) && match_components(rest, names_rest)
            }
            None => false,
        },
    }
}

fn match_name(pat: &[u8], name: &[u8]) -> bool {
    match pat.split_first() {
        None => name.is_empty(),
        Some((b'*', rest)) => (0..=name.len()).any(|i| match_name(rest, &name[i..])),
        Some((b'?', rest)) => !name.is_empty() && match_name(rest, &name[1..]),
        Some((b'[', rest)) => {
            let Some(end) = rest.iter().position(|&c| c == b']') else {
                return name.first() == Some(&b'[') && match_name(rest, &name[1..]);
            };
            let (class, after) = (&rest[..end], &rest[end + 1..]);
            let Some((&c, name_rest)) = name.split_first() else { return false };
            let (negate, class) = match class.split_first() {
                Some((b'!' | b'^', tail)) => (true, tail),
                _ => (false, class),
            };
            let mut hit = false;
            let mut i = 0;
            while i < class.len() {
                if i + 2 < class.len() && class[i + 1] == b'-' {
                    hit |= class[i] <= c && c <= class[i + 2];
                    i += 3;
                } else {
                    hit |= class[i] == c;
                    i += 1;
                }
            }
            hit != negate && match_name(after, name_rest)
        }
        Some((&p, rest)) => name.first() == Some(&p) && match_name(rest, &name[1..]),
    }
}

/// The literal directory a glob's matches all lie under (its components before the first
/// wildcard), where a scan for matches starts.
pub fn glob_base(pattern: &str) -> PathBuf {
    let mut base = PathBuf::from("/");
    for part in pattern.split('/').filter(|s| !s.is_empty()) {
        if part.contains(['*', '?', '[']) {
            break;
        }
        base.push(part);
    }
    base
}
