//! Paths on the wire (PROTOCOL.md §6): `AbsolutePath`, which decodes only absolute paths and
//! normalizes them lexically, and `normalize` itself (also used for the §1.5 ordering keys).
//! Pure: it never touches the disk.

use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Deserializer};

pub(super) const RELATIVE_PATH: &str = "AbsolutePathBuf deserialized without a base path";

/// An absolute path, lexically normalized when decoded. A relative path is a decode error
/// (-32602) with the exact text clients match on (§6).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AbsolutePath(pub(super) PathBuf);

impl AbsolutePath {
    pub fn as_path(&self) -> &Path {
        &self.0
    }
}

impl<'de> Deserialize<'de> for AbsolutePath {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        /// Names the expected type `path string`, as the reference's decoder does
        /// (``invalid type: integer `5`, expected path string``).
        struct PathVisitor;

        impl serde::de::Visitor<'_> for PathVisitor {
            type Value = AbsolutePath;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("path string")
            }

            fn visit_str<E: serde::de::Error>(self, raw: &str) -> Result<AbsolutePath, E> {
                normalize(raw).map(AbsolutePath).ok_or_else(|| E::custom(RELATIVE_PATH))
            }
        }

        deserializer.deserialize_str(PathVisitor)
    }
}

/// Lexical normalization: `.` and `..` are removed without touching the disk
/// (`/a/link/../x` → `/a/x`), repeated and trailing slashes dropped, and `..` at the root
/// stays at the root. `None` for a relative path.
pub fn normalize(path: &str) -> Option<PathBuf> {
    let path = Path::new(path);
    if !path.has_root() {
        return None;
    }
    let mut out = PathBuf::from("/");
    for component in path.components() {
        match component {
            Component::Normal(name) => out.push(name),
            // `pop` on "/" is a no-op, which is exactly "`..` of the root is the root".
            Component::ParentDir => {
                out.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    Some(out)
}
