//! The module tree's one-way rule: handler modules (src/process, src/fs, src/sandbox,
//! src/http) never import the request layer (`rpc`), so the circle `rpc` <-> handlers cannot
//! come back silently. Reads the source tree; starts nothing.

use std::fs;
use std::path::{Path, PathBuf};

/// Folders whose files are handlers: `rpc` calls into them, never the other way round.
const HANDLER_DIRS: [&str; 4] = ["src/process", "src/fs", "src/sandbox", "src/http"];

/// Handlers that are one file beside main.rs, and the ground floor, which imports nothing
/// above it: none of these may import `rpc` either.
const HANDLER_FILES: [&str; 9] = [
    "src/environment.rs",
    "src/envconfig.rs",
    "src/uri.rs",
    "src/error.rs",
    "src/outbound.rs",
    "src/config.rs",
    "src/limits.rs",
    "src/audit.rs",
    "src/wire.rs",
];

/// The request layer's module name, as a path segment.
const REQUEST_LAYER: &str = "rpc";

#[test]
fn handlers_never_import_the_request_layer() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    for dir in HANDLER_DIRS {
        collect_rust_files(&root.join(dir), &mut files);
    }
    for file in HANDLER_FILES {
        let path = root.join(file);
        assert!(path.is_file(), "{} is gone; update HANDLER_FILES", path.display());
        files.push(path);
    }
    assert!(
        files.iter().any(|f| f.starts_with(root.join("src/process"))),
        "no handler sources found under {}; did the tree move?",
        root.display()
    );
    let mut offences = Vec::new();
    for file in &files {
        let text = fs::read_to_string(file)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", file.display()));
        for number in request_layer_imports(&text) {
            let shown = file.strip_prefix(root).unwrap_or(file);
            let line = text.lines().nth(number - 1).unwrap_or("").trim();
            offences.push(format!("{}:{number}: {line}", shown.display()));
        }
    }
    assert!(
        offences.is_empty(),
        "handler modules must not import `{REQUEST_LAYER}` (rpc imports handlers, never the \
         reverse; shared types belong on the ground floor, e.g. src/error.rs or \
         src/outbound.rs):\n{}",
        offences.join("\n")
    );
}

#[test]
fn the_check_recognizes_every_spelling() {
    for text in [
        "use crate::rpc::Server;",
        "use crate::rpc;",
        "    let s: crate::rpc::Flow = todo!();",
        "use super::super::rpc::Connection;",
        "use super::rpc::Connection;",
        "use crate::{config::Config, rpc::Server};",
        "use crate::{rpc, fs};",
        "use crate::{\n    config::Config,\n    rpc::{Flow, Server},\n};",
    ] {
        assert!(!request_layer_imports(text).is_empty(), "missed: {text}");
    }
    assert_eq!(request_layer_imports("use a::b;\nuse crate::{\n    x,\n    rpc,\n};"), vec![4]);
    for text in [
        "use crate::error::RpcError;",
        "use crate::rpcish::X;",
        "// crate::rpc is mentioned in a comment",
        "//! rpc imports this module; it never imports `crate::rpc`.",
        "use super::wire::Stream;",
        "use crate::{\n    config::Config,\n    error::RpcError,\n};",
    ] {
        assert_eq!(request_layer_imports(text), Vec::<usize>::new(), "false alarm: {text}");
    }
}

/// The (1-based) lines of `text` that name the request layer through `crate::` or `super::`,
/// directly or as an item of a `crate::{…}` group (which may span lines). Comments are skipped.
fn request_layer_imports(text: &str) -> Vec<usize> {
    let names_module = |rest: &str| {
        rest.strip_prefix(REQUEST_LAYER)
            .is_some_and(|after| !after.starts_with(|c: char| c.is_alphanumeric() || c == '_'))
    };
    let mut found = Vec::new();
    // Depth of an open `crate::{` / `super::{` group carried over from earlier lines.
    let mut group_depth = 0usize;
    for (index, line) in text.lines().enumerate() {
        let code = line.split("//").next().unwrap_or("");
        let mut hit = false;
        if group_depth > 0 && code.trim_start().split(',').any(|item| names_module(item.trim())) {
            hit = group_depth == 1;
        }
        for prefix in ["crate::", "super::"] {
            for (at, _) in code.match_indices(prefix) {
                let rest = &code[at + prefix.len()..];
                if names_module(rest) {
                    hit = true;
                }
                if let Some(group) = rest.strip_prefix('{') {
                    let first_level = group.split('}').next().unwrap_or("");
                    if first_level.split(',').any(|item| names_module(item.trim())) {
                        hit = true;
                    }
                }
            }
        }
        for c in code.chars() {
            match c {
                '{' if group_depth > 0 => group_depth += 1,
                '}' if group_depth > 0 => group_depth -= 1,
                _ => {}
            }
        }
        if group_depth == 0 && (code.contains("crate::{") || code.contains("super::{")) {
            let opened = code.matches('{').count();
            let closed = code.matches('}').count();
            group_depth = opened.saturating_sub(closed);
        }
        if hit {
            found.push(index + 1);
        }
    }
    found
}

fn collect_rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return; // A handler folder that does not exist yet (sandbox, http) has nothing to check.
    };
    for entry in entries {
        let path = entry.expect("a directory entry is readable").path();
        if path.is_dir() {
            collect_rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}
