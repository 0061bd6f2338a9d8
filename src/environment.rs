//! The environment info object of PROTOCOL v2 (`initialize`'s `environmentInfo` and
//! `environment/info`) and `environment/status`: what shell, directories and capabilities
//! this executor offers. It reads the process environment and the passwd database; it owns
//! no state and never touches sessions or sockets.

use std::ffi::CStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer, Serialize};

use crate::error::RpcError;
use crate::uri::Uri;

/// Where a stable host identity is read from for `providerId`, first found wins.
const MACHINE_ID_FILES: [&str; 2] = ["/etc/machine-id", "/var/lib/dbus/machine-id"];
/// Prefix hashed with the host identity, so the id names this executor kind on this host
/// and reveals nothing reusable about the machine id.
const PROVIDER_ID_DOMAIN: &[u8] = b"exec-server local provider\0";

/// Shells upstream recognises by exact path or name (anything else, such as `nologin`, is
/// not a usable shell), with the name it reports.
const KNOWN_SHELLS: [(&str, &[&str]); 3] = [
    ("zsh", &["zsh", "/bin/zsh", "/usr/bin/zsh", "/usr/local/bin/zsh", "/opt/homebrew/bin/zsh"]),
    ("sh", &["sh", "/bin/sh", "/usr/bin/sh"]),
    (
        "bash",
        &["bash", "/bin/bash", "/usr/bin/bash", "/usr/local/bin/bash", "/opt/homebrew/bin/bash"],
    ),
];
/// Searched on `PATH`, in this order, when neither passwd nor `$SHELL` names a known shell.
const FALLBACK_SHELLS: [&str; 3] = ["bash", "zsh", "sh"];

/// Params of `environment/info` and `environment/status`: absent, `null` or `{}`; anything
/// else is upstream's -32602 (`invalid type: map, expected unit`).
#[derive(Debug)]
pub struct NoParams;

impl<'de> Deserialize<'de> for NoParams {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;

        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = NoParams;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("unit")
            }

            fn visit_unit<E: serde::de::Error>(self) -> Result<NoParams, E> {
                Ok(NoParams)
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<NoParams, A::Error> {
                match map.next_key::<serde::de::IgnoredAny>()? {
                    None => Ok(NoParams),
                    Some(_) => {
                        Err(serde::de::Error::invalid_type(serde::de::Unexpected::Map, &self))
                    }
                }
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, _: A) -> Result<NoParams, A::Error> {
                Err(serde::de::Error::invalid_type(serde::de::Unexpected::Seq, &self))
            }
        }

        deserializer.deserialize_any(Visitor)
    }
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EnvironmentInfo {
    pub shell: ShellInfo,
    pub executor_version: &'static str,
    pub provider_id: String,
    pub cwd: Option<Uri>,
    pub user_home_dir: Option<Uri>,
    pub platform_os: &'static str,
    /// Folders upstream prepends to a child's PATH (its bundled tools); exec-server bundles
    /// none, so always empty.
    pub prepend_path_dirs: Vec<Uri>,
    pub temporary_directories: Vec<Uri>,
    pub temp_dir: Uri,
    pub capabilities: Capabilities,
}

#[derive(Debug, PartialEq, Eq, Serialize)]
pub struct ShellInfo {
    pub name: String,
    pub path: String,
}

/// The client uses a feature only when its flag is true, so a flag is true only for what
/// this executor implements and tests.
#[derive(Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Capabilities {
    pub network_proxy_launch: bool,
    pub network_proxy_review_domains: bool,
    pub network_proxy_transparent_tcp: bool,
    pub credential_masking: bool,
    pub credential_masking_custom_providers: bool,
    pub capability_discovery_sandbox: bool,
    pub fs_watch_missing: bool,
    pub capability_discovery_v2: bool,
    pub environment_config_read: bool,
    pub http_header_env_vars: bool,
    pub sandboxed_file_streaming: bool,
    pub file_write_streaming: bool,
    pub shell_snapshot_v2: bool,
    pub windows_mxc: bool,
    pub linux_root_write_preserves_devices: bool,
    pub linux_approved_root_write_preserves_restrictions: bool,
}

impl Capabilities {
    /// What this build implements: `fs/watchMissing`, `environmentConfig/read` and the
    /// `fs/open` family (writes included). Not `sandboxedFileStreaming`: a restricted sandbox
    /// on `fs/open` is refused until sandboxes are enforced. `httpHeaderEnvVars`: `http/request`
    /// resolves `valueEnvVar` headers.
    pub const fn implemented() -> Capabilities {
        Capabilities {
            network_proxy_launch: false,
            network_proxy_review_domains: false,
            network_proxy_transparent_tcp: false,
            credential_masking: false,
            credential_masking_custom_providers: false,
            capability_discovery_sandbox: false,
            fs_watch_missing: true,
            capability_discovery_v2: false,
            environment_config_read: true,
            http_header_env_vars: true,
            sandboxed_file_streaming: false,
            file_write_streaming: true,
            shell_snapshot_v2: false,
            windows_mxc: false,
            linux_root_write_preserves_devices: false,
            linux_approved_root_write_preserves_restrictions: false,
        }
    }
}

#[derive(Debug, PartialEq, Eq, Serialize)]
pub struct StatusResponse {
    pub status: &'static str,
}

/// `environment/info`.
pub fn info(_: NoParams) -> Result<&'static EnvironmentInfo, RpcError> {
    Ok(cached())
}

/// The environment info, worked out once: nothing in it changes while the daemon runs,
/// and `initialize` (answered on a connection's reader thread) should not read passwd and
/// machine-id files each time.
pub fn cached() -> &'static EnvironmentInfo {
    static INFO: std::sync::OnceLock<EnvironmentInfo> = std::sync::OnceLock::new();
    INFO.get_or_init(current)
}

/// `environment/status`: a local executor is ready whenever it answers.
pub fn status(_: NoParams) -> Result<StatusResponse, RpcError> {
    Ok(StatusResponse { status: "ready" })
}

/// The environment info of this daemon now.
fn current() -> EnvironmentInfo {
    let tmpdir = crate::config::tmpdir();
    let temp_dir = tmpdir.clone().unwrap_or_else(|| PathBuf::from("/tmp"));
    EnvironmentInfo {
        shell: detect_shell(
            passwd_shell().as_deref(),
            std::env::var("SHELL").ok().as_deref(),
            std::env::var_os("PATH").as_deref().map(Path::new),
        ),
        executor_version: env!("CARGO_PKG_VERSION"),
        provider_id: provider_id(),
        cwd: std::env::current_dir().ok().map(Uri),
        user_home_dir: home_dir().map(Uri),
        platform_os: "linux",
        prepend_path_dirs: Vec::new(),
        // Upstream lists `$TMPDIR` here when it is set, and nothing otherwise.
        temporary_directories: tmpdir.into_iter().map(Uri).collect(),
        temp_dir: Uri(temp_dir),
        capabilities: Capabilities::implemented(),
    }
}

/// `sha256:<hex>` of this host's machine id (falling back to its hostname), so the id is
/// the same for every run on one host and differs between hosts. Upstream's derivation is
/// not documented; its id was observed not to depend on HOME, cwd, uid, hostname or the
/// binary's path.
pub fn provider_id() -> String {
    let identity = MACHINE_ID_FILES
        .iter()
        .find_map(|file| std::fs::read(file).ok().filter(|id| !id.trim_ascii().is_empty()))
        .unwrap_or_else(hostname);
    let mut hasher = ring::digest::Context::new(&ring::digest::SHA256);
    hasher.update(PROVIDER_ID_DOMAIN);
    hasher.update(identity.trim_ascii());
    let digest = hasher.finish();
    let mut out = String::from("sha256:");
    for byte in digest.as_ref() {
        out.push_str(&format!("{byte:02x}"));
    }
    out
}

/// `$HOME`, else the passwd entry's home directory.
pub fn home_dir() -> Option<PathBuf> {
    std::env::var_os("HOME")
        .filter(|h| Path::new(h).is_absolute())
        .map(PathBuf::from)
        .or_else(|| passwd_field(|pw| pw.pw_dir))
}

pub fn hostname() -> Vec<u8> {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates on success.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return Vec::new();
    }
    let len = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    buf[..len].to_vec()
}

/// The shell upstream reports: the passwd shell if it is a known one, else `$SHELL` if
/// known, else the first of bash, zsh, sh found on `PATH`, else `sh`.
fn detect_shell(passwd: Option<&Path>, env_shell: Option<&str>, path: Option<&Path>) -> ShellInfo {
    let known = |candidate: &str| {
        KNOWN_SHELLS
            .iter()
            .find(|(_, paths)| paths.contains(&candidate))
            .map(|(name, _)| ShellInfo { name: (*name).to_string(), path: candidate.to_string() })
    };
    if let Some(shell) = passwd.and_then(|p| p.to_str()).and_then(known) {
        return shell;
    }
    if let Some(shell) = env_shell.and_then(known) {
        return shell;
    }
    for name in FALLBACK_SHELLS {
        let found = path
            .map(std::env::split_paths)
            .into_iter()
            .flatten()
            .map(|dir| dir.join(name))
            .find(|candidate| candidate.is_file());
        if let Some(found) = found {
            return ShellInfo {
                name: name.to_string(),
                path: found.to_string_lossy().into_owned(),
            };
        }
    }
    ShellInfo { name: "sh".into(), path: "/bin/sh".into() }
}

fn passwd_shell() -> Option<PathBuf> {
    passwd_field(|pw| pw.pw_shell)
}

/// One string field of the current user's passwd entry.
fn passwd_field(field: impl Fn(&libc::passwd) -> *mut libc::c_char) -> Option<PathBuf> {
    let mut buf = vec![0u8; 16 * 1024];
    // SAFETY: an all-zero passwd is a valid value to be overwritten by getpwuid_r.
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call; the strings it fills point into `buf`,
    // which outlives their use below.
    let rc = unsafe {
        libc::getpwuid_r(libc::getuid(), &mut pw, buf.as_mut_ptr().cast(), buf.len(), &mut result)
    };
    if rc != 0 || result.is_null() {
        return None;
    }
    let ptr = field(&pw);
    if ptr.is_null() {
        return None;
    }
    // SAFETY: getpwuid_r succeeded, so the field is a NUL-terminated string inside `buf`.
    let value = unsafe { CStr::from_ptr(ptr) };
    let value = std::ffi::OsStr::from_bytes(value.to_bytes());
    (!value.is_empty()).then(|| PathBuf::from(value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_prefers_a_known_passwd_shell_then_shell_then_path() {
        let bash = ShellInfo { name: "bash".into(), path: "/bin/bash".into() };
        assert_eq!(detect_shell(Some(Path::new("/bin/bash")), Some("/bin/sh"), None), bash);
        let zsh = ShellInfo { name: "zsh".into(), path: "/usr/bin/zsh".into() };
        assert_eq!(
            detect_shell(Some(Path::new("/usr/sbin/nologin")), Some("/usr/bin/zsh"), None),
            zsh
        );
        // Look-alikes are not shells.
        let sh = ShellInfo { name: "sh".into(), path: "/bin/sh".into() };
        assert_eq!(detect_shell(Some(Path::new("/tmp/bash")), Some("/tmp/zsh"), None), sh);
        let dir = std::env::temp_dir().join(format!("exec-server-env-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("zsh"), b"").unwrap();
        let found = detect_shell(None, None, Some(&dir));
        assert_eq!(
            found,
            ShellInfo { name: "zsh".into(), path: dir.join("zsh").to_string_lossy().into() }
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn provider_id_is_stable_and_hex() {
        let id = provider_id();
        assert_eq!(id, provider_id());
        let hex = id.strip_prefix("sha256:").expect("prefix");
        assert_eq!(hex.len(), 64);
        assert!(hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
    }

    #[test]
    fn info_shape_matches_upstream_member_order() {
        let text = serde_json::to_string(&current()).unwrap();
        let order = [
            "\"shell\":{\"name\"",
            "\"executorVersion\":\"",
            "\"providerId\":\"sha256:",
            "\"cwd\":\"file:///",
            "\"userHomeDir\":",
            "\"platformOs\":\"linux\"",
            "\"prependPathDirs\":[]",
            "\"temporaryDirectories\":[",
            "\"tempDir\":\"file:///",
            "\"capabilities\":{\"networkProxyLaunch\":false",
            "\"fsWatchMissing\":true",
            "\"fileWriteStreaming\":true",
            "\"linuxApprovedRootWritePreservesRestrictions\":false}",
        ];
        let mut at = 0;
        for member in order {
            let found = text[at..].find(member).unwrap_or_else(|| panic!("{member} in {text}"));
            at += found;
        }
    }

    #[test]
    fn no_params_accepts_only_nothing() {
        let p =
            |s: &str| serde_json::from_str::<NoParams>(s).map(|_| ()).map_err(|e| e.to_string());
        assert_eq!(p("null"), Ok(()));
        assert_eq!(p("{}"), Ok(()));
        assert!(p(r#"{"a":1}"#).unwrap_err().starts_with("invalid type: map, expected unit"));
        assert!(p("[]").unwrap_err().starts_with("invalid type: sequence, expected unit"));
    }
}
