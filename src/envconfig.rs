//! `environmentConfig/read` (PROTOCOL v2): the codex config and requirements layers found
//! on this host, each cut down to the key paths the client asks for and written back as
//! TOML text, as the 0.171 server reads them. Layers, lowest precedence first:
//!
//! - config: `/etc/codex/config.toml` (system), `$CODEX_HOME/config.toml` (user; default
//!   `~/.codex`), `<cwd>/.codex/config.toml` when the user config trusts `cwd` (project),
//!   `/etc/codex/managed_config.toml` (legacy managed);
//! - requirements: `/etc/codex/requirements.toml`.
//!
//! A missing file, or a layer with none of the asked keys, is left out. A plain blocking
//! handler: it reads files and owns no state.

use std::path::{Path, PathBuf};

use crate::environment;
use crate::error::RpcError;
use crate::toml::{self, Table, Value};
use crate::uri::{AbsolutePath, Uri};
use serde::{Deserialize, Serialize};

/// Where system-wide codex files live on Linux.
const SYSTEM_DIR: &str = "/etc/codex";
const CONFIG_FILE: &str = "config.toml";
const MANAGED_FILE: &str = "managed_config.toml";
const REQUIREMENTS_FILE: &str = "requirements.toml";
/// The trust level that admits a project's own config layer.
const TRUSTED: &str = "trusted";

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReadParams {
    pub cwd: AbsolutePath,
    /// Key paths, each a list of key segments (`[["model"], ["features", "x"]]`).
    pub config_paths: Vec<Vec<String>>,
    pub requirements_paths: Vec<Vec<String>>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReadResponse {
    pub user_home_dir: Option<Uri>,
    pub codex_home_dir: Option<Uri>,
    pub hostname: String,
    pub config: Layers,
    pub requirements: Layers,
}

#[derive(Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Layers {
    pub layers: Vec<Layer>,
    /// How many of `layers` come before the place cloud-managed layers would go.
    pub cloud_insertion_index: usize,
}

#[derive(Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Layer {
    pub source: String,
    pub base_dir: Uri,
    pub toml: String,
}

/// One file that may contribute a layer.
struct Source {
    file: PathBuf,
    /// The `source` text.
    label: String,
    /// Counted into `cloudInsertionIndex` when it contributes.
    before_cloud: bool,
}

impl Source {
    fn new(file: PathBuf, label: String, before_cloud: bool) -> Source {
        Source { file, label, before_cloud }
    }
}

pub fn read(p: ReadParams) -> Result<ReadResponse, RpcError> {
    if p.config_paths.is_empty() && p.requirements_paths.is_empty() {
        return Err(RpcError::invalid_params(
            "at least one config or requirements path is required",
        ));
    }
    if p.config_paths.iter().chain(&p.requirements_paths).any(Vec::is_empty) {
        return Err(RpcError::invalid_params("TOML paths must contain at least one key segment"));
    }
    let cwd = p.cwd.to_local().map_err(RpcError::invalid_params)?;
    read_from(cwd, Path::new(SYSTEM_DIR), codex_home().as_deref(), &p)
}

/// `read` with the system directory and codex home given (tests point them elsewhere).
fn read_from(
    cwd: &Path,
    system: &Path,
    codex_home: Option<&Path>,
    p: &ReadParams,
) -> Result<ReadResponse, RpcError> {
    let system_config = system.join(CONFIG_FILE);
    let mut config_sources = vec![Source::new(
        system_config.clone(),
        format!("system ({})", system_config.display()),
        true,
    )];
    let mut trusted = false;
    if let Some(home) = codex_home {
        let user = home.join(CONFIG_FILE);
        trusted = trusts(&load(&user)?, cwd) || trusts(&load(&system_config)?, cwd);
        config_sources.push(Source::new(user.clone(), format!("user ({})", user.display()), false));
    }
    if trusted {
        let project = cwd.join(".codex").join(CONFIG_FILE);
        config_sources.push(Source::new(
            project.clone(),
            format!("project ({})", project.display()),
            false,
        ));
    }
    let managed = system.join(MANAGED_FILE);
    config_sources.push(Source::new(
        managed.clone(),
        format!("legacy managed_config.toml ({})", managed.display()),
        false,
    ));
    let requirements = system.join(REQUIREMENTS_FILE);
    let requirement_sources =
        [Source::new(requirements.clone(), requirements.display().to_string(), true)];
    Ok(ReadResponse {
        user_home_dir: environment::home_dir().map(Uri),
        codex_home_dir: codex_home.map(|h| Uri(h.to_path_buf())),
        hostname: String::from_utf8_lossy(&environment::hostname()).into_owned(),
        config: layers(&config_sources, &p.config_paths)?,
        requirements: layers(&requirement_sources, &p.requirements_paths)?,
    })
}

/// `$CODEX_HOME`, else `~/.codex`.
fn codex_home() -> Option<PathBuf> {
    std::env::var_os("CODEX_HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
        .or_else(|| environment::home_dir().map(|home| home.join(".codex")))
}

fn layers(sources: &[Source], paths: &[Vec<String>]) -> Result<Layers, RpcError> {
    let mut out = Layers::default();
    if paths.is_empty() {
        return Ok(out);
    }
    for source in sources {
        let table = load(&source.file)?;
        let selected = select(&table, &paths.iter().map(Vec::as_slice).collect::<Vec<_>>());
        if selected.is_empty() {
            continue;
        }
        let toml = toml::to_string(&selected);
        let base_dir = source.file.parent().unwrap_or(Path::new("/")).to_path_buf();
        out.layers.push(Layer { source: source.label.clone(), base_dir: Uri(base_dir), toml });
        if source.before_cloud {
            out.cloud_insertion_index = out.layers.len();
        }
    }
    Ok(out)
}

/// The file's table; an absent file is an empty table, a broken one upstream's -32603
/// (`failed to load executor-local config: <path>:<line>:<column>: <message>`).
fn load(file: &Path) -> Result<Table, RpcError> {
    let text = match std::fs::read_to_string(file) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Table::new()),
        Err(e) => {
            return Err(RpcError::internal(format!(
                "failed to load executor-local config: {}: {e}",
                file.display()
            )))
        }
    };
    toml::parse(&text).map_err(|e| {
        let (line, column) = line_column(&text, e.offset);
        RpcError::internal(format!(
            "failed to load executor-local config: {}:{line}:{column}: {}",
            file.display(),
            e.message
        ))
    })
}

/// 1-based line and column (in characters) of a byte offset.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// The parts of `table` the key paths select, in the table's own key order; a path that
/// ends at a key keeps its whole value.
fn select(table: &Table, paths: &[&[String]]) -> Table {
    let mut out = Table::new();
    for (key, value) in table {
        let here: Vec<&[String]> =
            paths.iter().filter(|p| p.first() == Some(key)).map(|p| &p[1..]).collect();
        if here.is_empty() {
            continue;
        }
        if here.iter().any(|rest| rest.is_empty()) {
            out.insert(key.clone(), value.clone());
        } else if let Value::Table(inner) = value {
            let inner = select(inner, &here);
            if !inner.is_empty() {
                out.insert(key.clone(), Value::Table(inner));
            }
        }
    }
    out
}

/// True when `config` marks `cwd` as a trusted project (`[projects."<cwd>"]
/// trust_level = "trusted"`).
fn trusts(config: &Table, cwd: &Path) -> bool {
    let Some(Value::Table(projects)) = config.get("projects") else {
        return false;
    };
    let real = std::fs::canonicalize(cwd).ok();
    [Some(cwd.to_path_buf()), real].into_iter().flatten().any(|dir| {
        let entry = dir.to_str().and_then(|key| projects.get(key));
        let level = entry.and_then(Value::as_table).and_then(|t| t.get("trust_level"));
        level.and_then(Value::as_str) == Some(TRUSTED)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Dirs {
        root: PathBuf,
    }

    impl Dirs {
        fn new(tag: &str) -> Dirs {
            let root = std::env::temp_dir()
                .join(format!("exec-server-envconfig-{}-{tag}", std::process::id()));
            let _ = std::fs::remove_dir_all(&root);
            for dir in ["etc", "home/.codex", "proj/.codex"] {
                std::fs::create_dir_all(root.join(dir)).unwrap();
            }
            Dirs { root }
        }
        fn write(&self, name: &str, text: &str) {
            std::fs::write(self.root.join(name), text).unwrap();
        }
        fn read(
            &self,
            config: &[&[&str]],
            requirements: &[&[&str]],
        ) -> Result<ReadResponse, RpcError> {
            let paths = |ps: &[&[&str]]| -> Vec<Vec<String>> {
                ps.iter().map(|p| p.iter().map(|s| s.to_string()).collect()).collect()
            };
            let cwd = self.root.join("proj");
            let p = ReadParams {
                cwd: AbsolutePath::from_path(cwd.clone()),
                config_paths: paths(config),
                requirements_paths: paths(requirements),
            };
            read_from(&cwd, &self.root.join("etc"), Some(&self.root.join("home/.codex")), &p)
        }
    }

    impl Drop for Dirs {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }

    #[test]
    fn user_layer_is_projected_and_written_as_upstream() {
        let d = Dirs::new("user");
        d.write(
            "home/.codex/config.toml",
            "model = \"gpt-x\"\nsandbox_mode = \"workspace-write\"\n[profiles.p]\nmodel=\"m2\"\n[features]\nfoo = true\n",
        );
        let r = d
            .read(&[&["model"], &["features"], &["profiles", "p", "model"], &["nope"]], &[&["x"]])
            .unwrap();
        assert_eq!(r.config.layers.len(), 1);
        let layer = &r.config.layers[0];
        let user = d.root.join("home/.codex/config.toml");
        assert_eq!(layer.source, format!("user ({})", user.display()));
        assert_eq!(layer.base_dir, Uri(d.root.join("home/.codex")));
        assert_eq!(
            layer.toml,
            "model = \"gpt-x\"\n\n[profiles.p]\nmodel = \"m2\"\n\n[features]\nfoo = true\n"
        );
        assert_eq!(r.config.cloud_insertion_index, 0);
        assert_eq!(r.requirements, Layers::default());
    }

    #[test]
    fn system_project_managed_and_requirements_layers_in_order() {
        let d = Dirs::new("all");
        let proj = d.root.join("proj");
        d.write("etc/config.toml", "model = \"sys\"\n");
        d.write(
            "home/.codex/config.toml",
            &format!(
                "model = \"user\"\n[projects.\"{}\"]\ntrust_level = \"trusted\"\n",
                proj.display()
            ),
        );
        d.write("proj/.codex/config.toml", "model = \"proj\"\n");
        d.write("etc/managed_config.toml", "model = \"managed\"\nother = 1\n");
        d.write("etc/requirements.toml", "allowed_sandbox_modes = [\"read-only\"]\n");
        let r = d.read(&[&["model"]], &[&["allowed_sandbox_modes"]]).unwrap();
        let sources: Vec<&str> = r.config.layers.iter().map(|l| l.source.as_str()).collect();
        let etc = d.root.join("etc");
        assert_eq!(
            sources,
            [
                format!("system ({})", etc.join("config.toml").display()),
                format!("user ({})", d.root.join("home/.codex/config.toml").display()),
                format!("project ({})", proj.join(".codex/config.toml").display()),
                format!(
                    "legacy managed_config.toml ({})",
                    etc.join("managed_config.toml").display()
                ),
            ]
        );
        assert_eq!(r.config.layers[3].toml, "model = \"managed\"\n");
        assert_eq!(r.config.cloud_insertion_index, 1);
        assert_eq!(r.requirements.layers.len(), 1);
        assert_eq!(
            r.requirements.layers[0].source,
            etc.join("requirements.toml").display().to_string()
        );
        assert_eq!(r.requirements.layers[0].toml, "allowed_sandbox_modes = [\"read-only\"]\n");
        assert_eq!(r.requirements.cloud_insertion_index, 1);
        // Untrusted: no project layer.
        d.write("home/.codex/config.toml", "model = \"user\"\n");
        let r = d.read(&[&["model"]], &[]).unwrap();
        assert_eq!(r.config.layers.len(), 3);
    }

    #[test]
    fn bad_params_and_broken_files() {
        let d = Dirs::new("errors");
        let p = |c: Vec<Vec<String>>, r: Vec<Vec<String>>, cwd: &str| ReadParams {
            cwd: AbsolutePath::parse(cwd).unwrap(),
            config_paths: c,
            requirements_paths: r,
        };
        let err = read(p(vec![], vec![], "file://other/x")).unwrap_err();
        assert_eq!(
            err,
            RpcError::invalid_params("at least one config or requirements path is required")
        );
        let err = read(p(vec![vec![]], vec![], "file://other/x")).unwrap_err();
        assert_eq!(
            err,
            RpcError::invalid_params("TOML paths must contain at least one key segment")
        );
        let err = read(p(vec![vec!["a".into()]], vec![], "file://other/x")).unwrap_err();
        assert_eq!(err, RpcError::invalid_params("'file://other/x' is invalid on 'linux'"));
        d.write("home/.codex/config.toml", "model = gpt\n");
        let err = d.read(&[&["model"]], &[]).unwrap_err();
        let user = d.root.join("home/.codex/config.toml");
        assert_eq!(err.code, -32603);
        assert!(
            err.message.starts_with(&format!(
                "failed to load executor-local config: {}:1:9: ",
                user.display()
            )),
            "{err}"
        );
    }
}
