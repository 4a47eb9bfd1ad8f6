//! Confinement of engine-side file actions (`read`, `write`, `patch`) to the workspace: no
//! absolute paths, no `..` escapes, no symlink that leads outside, and the user's `.git` is
//! never written.

use std::path::{Component, Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("path is empty")]
    Empty,
    #[error("`{0}` is absolute; paths are relative to the workspace")]
    Absolute(String),
    #[error("`{0}` leaves the workspace through `..`")]
    Escapes(String),
    #[error("`{0}` contains a NUL byte")]
    Nul(String),
    #[error("`{0}` is inside `.git`, which steps may not modify")]
    GitDir(String),
    #[error("`{path}` goes through the symlink `{link}`, which points outside the workspace")]
    SymlinkEscape { path: String, link: String },
    #[error("`{path}`: {message}")]
    Io { path: String, message: String },
}

impl PathError {
    pub fn hint(&self) -> &'static str {
        match self {
            PathError::Absolute(_) => {
                "write the path relative to the workspace, e.g. `notes/today.md`"
            }
            PathError::Escapes(_) => "keep paths inside the workspace; remove the `..`",
            PathError::GitDir(_) => "the repository's `.git` is read-only to workflows",
            PathError::SymlinkEscape { .. } => {
                "write to the real path inside the workspace instead"
            }
            _ => "use a plain relative path inside the workspace",
        }
    }
}

/// Check a workspace-relative path without touching the disk; returns its normalised form.
pub fn lexical(rel: &str) -> Result<PathBuf, PathError> {
    if rel.is_empty() {
        return Err(PathError::Empty);
    }
    if rel.contains('\0') {
        return Err(PathError::Nul(rel.to_string()));
    }
    let p = Path::new(rel);
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Prefix(_) | Component::RootDir => {
                return Err(PathError::Absolute(rel.to_string()));
            }
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    return Err(PathError::Escapes(rel.to_string()));
                }
            }
            Component::Normal(n) => out.push(n),
        }
    }
    if out.as_os_str().is_empty() {
        return Err(PathError::Empty);
    }
    if out
        .components()
        .next()
        .is_some_and(|c| c.as_os_str() == ".git")
    {
        return Err(PathError::GitDir(rel.to_string()));
    }
    Ok(out)
}

/// Resolve a relative path under `root` for reading or writing: every existing component is
/// checked, and a symlink anywhere on the way must resolve inside the workspace.
pub fn resolve(root: &Path, rel: &str) -> Result<PathBuf, PathError> {
    let normal = lexical(rel)?;
    let io = |e: std::io::Error| PathError::Io {
        path: rel.to_string(),
        message: e.to_string(),
    };
    let root = root.canonicalize().map_err(io)?;
    let mut current = root.clone();
    for c in normal.components() {
        current.push(c);
        match std::fs::symlink_metadata(&current) {
            Ok(meta) if meta.file_type().is_symlink() => {
                let escape = || PathError::SymlinkEscape {
                    path: rel.to_string(),
                    link: current
                        .strip_prefix(&root)
                        .unwrap_or(&current)
                        .display()
                        .to_string(),
                };
                let target = current.canonicalize().map_err(|_| escape())?;
                let inside = target
                    .strip_prefix(&root)
                    .is_ok_and(|t| !t.starts_with(".git"));
                if !inside {
                    return Err(escape());
                }
                current = target;
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(e)),
        }
    }
    Ok(current)
}

/// Like [`resolve`], but reading inside `.git` is allowed (it is only writing that is refused).
pub fn resolve_read(root: &Path, rel: &str) -> Result<PathBuf, PathError> {
    match lexical(rel) {
        Err(PathError::GitDir(_)) => {
            let canonical_root = root.canonicalize().map_err(|e| PathError::Io {
                path: rel.into(),
                message: e.to_string(),
            })?;
            let target = canonical_root
                .join(rel)
                .canonicalize()
                .map_err(|e| PathError::Io {
                    path: rel.into(),
                    message: e.to_string(),
                })?;
            if target.starts_with(&canonical_root) {
                Ok(target)
            } else {
                Err(PathError::SymlinkEscape {
                    path: rel.into(),
                    link: rel.into(),
                })
            }
        }
        _ => resolve(root, rel),
    }
}

/// The uid and gid owning `path` (not following a final symlink), if it exists.
pub fn owner_of(path: &Path) -> Option<(u32, u32)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path)
        .ok()
        .map(|m| (m.uid(), m.gid()))
}

/// Files the engine creates in a workspace belong to the workspace's owner, not to the
/// engine's uid: a root engine would otherwise leave root-owned files that the user, or a
/// container step running as the user, cannot change. Best effort by design: only a root
/// engine can give files away, and an unprivileged engine already creates them as the owner.
pub fn give_to(owner: (u32, u32), path: &Path) {
    if owner_of(path) != Some(owner) {
        let _ = std::os::unix::fs::lchown(path, Some(owner.0), Some(owner.1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lexical_rules() {
        assert_eq!(lexical("a/./b/../c").unwrap(), PathBuf::from("a/c"));
        assert!(matches!(
            lexical("/etc/passwd"),
            Err(PathError::Absolute(_))
        ));
        assert!(matches!(lexical("../x"), Err(PathError::Escapes(_))));
        assert!(matches!(lexical("a/../../x"), Err(PathError::Escapes(_))));
        assert!(matches!(
            lexical(".git/hooks/pre-commit"),
            Err(PathError::GitDir(_))
        ));
        assert!(matches!(
            lexical("a/../.git/config"),
            Err(PathError::GitDir(_))
        ));
        assert!(matches!(lexical(""), Err(PathError::Empty)));
        assert!(matches!(lexical("."), Err(PathError::Empty)));
    }

    #[test]
    fn symlinks_out_of_the_workspace_are_refused() {
        let ws = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), ws.path().join("out")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", ws.path().join("pw")).unwrap();
        std::fs::create_dir(ws.path().join("in")).unwrap();
        std::os::unix::fs::symlink(ws.path().join("in"), ws.path().join("inlink")).unwrap();
        assert!(matches!(
            resolve(ws.path(), "out/x"),
            Err(PathError::SymlinkEscape { .. })
        ));
        assert!(matches!(
            resolve(ws.path(), "pw"),
            Err(PathError::SymlinkEscape { .. })
        ));
        let ok = resolve(ws.path(), "inlink/x").unwrap();
        assert!(ok.starts_with(ws.path().canonicalize().unwrap()));
    }

    #[test]
    fn symlink_into_git_is_refused() {
        let ws = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(ws.path().join(".git/hooks")).unwrap();
        std::os::unix::fs::symlink(ws.path().join(".git/hooks"), ws.path().join("hooks")).unwrap();
        assert!(resolve(ws.path(), "hooks/pre-commit").is_err());
    }
}
