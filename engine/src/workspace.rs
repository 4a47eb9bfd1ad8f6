//! Confinement of engine-side file actions (`read`, `write`, `patch`) to the workspace: no
//! absolute paths, no `..` escapes, no symlink that leads outside, the user's `.git` is never
//! written, and the engine's state dir (the vault) is never reached, by any spelling or through
//! any symlink, including symlinks an earlier step of the same run created.

use std::path::{Component, Path, PathBuf};

/// The default state dir's name inside a workspace; refused as a path by every engine-side
/// action, whichever state dir the run really uses.
pub const STATE_DIR_NAME: &str = ".secureclaw";

/// Where engine-side actions may go: the canonical workspace, minus the canonical state dir.
#[derive(Debug, Clone)]
pub struct Confinement {
    root: PathBuf,
    state_dir: Option<PathBuf>,
}

impl Confinement {
    /// Canonicalise both once; a state dir that does not exist yet is kept as given under the
    /// canonical workspace when it is the default one.
    pub fn new(root: &Path, state_dir: Option<&Path>) -> Result<Self, PathError> {
        let root = root.canonicalize().map_err(|e| PathError::Io {
            path: root.display().to_string(),
            message: e.to_string(),
        })?;
        let state_dir = state_dir.map(|s| s.canonicalize().unwrap_or_else(|_| s.to_path_buf()));
        Ok(Confinement { root, state_dir })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn state_dir(&self) -> Option<&Path> {
        self.state_dir.as_deref()
    }

    /// Whether a canonical path is the state dir or inside it.
    fn hides(&self, canonical: &Path) -> bool {
        self.state_dir
            .as_deref()
            .is_some_and(|s| canonical.starts_with(s))
            || canonical
                .strip_prefix(&self.root)
                .is_ok_and(|r| r.starts_with(STATE_DIR_NAME))
    }
}

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
    #[error(
        "`{0}` is inside the engine's state dir (`{STATE_DIR_NAME}`), which steps may not touch"
    )]
    StateDir(String),
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
            PathError::StateDir(_) => {
                "the state dir holds the vault (run records, ledger); steps can neither read nor write it"
            }
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
    let out = lexical_parts(rel)?;
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
    if out
        .components()
        .next()
        .is_some_and(|c| c.as_os_str() == STATE_DIR_NAME)
    {
        return Err(PathError::StateDir(rel.to_string()));
    }
    Ok(out)
}

/// Resolve a relative path inside the confinement for reading or writing, on the real
/// filesystem as it is now: every existing component is checked, a symlink anywhere on the way
/// must resolve inside the workspace, and no step of the walk may enter the state dir.
pub fn resolve(jail: &Confinement, rel: &str) -> Result<PathBuf, PathError> {
    walk(jail, rel, &lexical(rel)?, false)
}

fn walk(
    jail: &Confinement,
    rel: &str,
    normal: &Path,
    allow_git: bool,
) -> Result<PathBuf, PathError> {
    let io = |e: std::io::Error| PathError::Io {
        path: rel.to_string(),
        message: e.to_string(),
    };
    let root = &jail.root;
    let mut current = root.clone();
    for c in normal.components() {
        current.push(c);
        if jail.hides(&current) {
            return Err(PathError::StateDir(rel.to_string()));
        }
        match std::fs::symlink_metadata(&current) {
            Ok(meta) if meta.file_type().is_symlink() => {
                let escape = || PathError::SymlinkEscape {
                    path: rel.to_string(),
                    link: current
                        .strip_prefix(root)
                        .unwrap_or(&current)
                        .display()
                        .to_string(),
                };
                let target = current.canonicalize().map_err(|_| escape())?;
                if jail.hides(&target) {
                    return Err(PathError::StateDir(rel.to_string()));
                }
                let inside = target
                    .strip_prefix(root)
                    .is_ok_and(|t| allow_git || !t.starts_with(".git"));
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
pub fn resolve_read(jail: &Confinement, rel: &str) -> Result<PathBuf, PathError> {
    match lexical(rel) {
        Err(PathError::GitDir(_)) => {
            let normal = lexical_parts(rel)?;
            walk(jail, rel, &normal, true)
        }
        other => walk(jail, rel, &other?, false),
    }
}

/// The normalised path without the `.git` rule (for reading).
fn lexical_parts(rel: &str) -> Result<PathBuf, PathError> {
    let mut out = PathBuf::new();
    for c in Path::new(rel).components() {
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
    Ok(out)
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
        let jail = Confinement::new(ws.path(), None).unwrap();
        assert!(matches!(
            resolve(&jail, "out/x"),
            Err(PathError::SymlinkEscape { .. })
        ));
        assert!(matches!(
            resolve(&jail, "pw"),
            Err(PathError::SymlinkEscape { .. })
        ));
        let ok = resolve(&jail, "inlink/x").unwrap();
        assert!(ok.starts_with(ws.path().canonicalize().unwrap()));
    }

    #[test]
    fn symlink_into_git_is_refused() {
        let ws = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(ws.path().join(".git/hooks")).unwrap();
        std::os::unix::fs::symlink(ws.path().join(".git/hooks"), ws.path().join("hooks")).unwrap();
        let jail = Confinement::new(ws.path(), None).unwrap();
        assert!(resolve(&jail, "hooks/pre-commit").is_err());
        assert!(resolve_read(&jail, ".git/hooks/x").is_ok());
    }

    #[test]
    fn the_state_dir_is_refused_by_every_spelling() {
        let ws = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(ws.path().join(".secureclaw/blobs")).unwrap();
        std::fs::create_dir(ws.path().join("a")).unwrap();
        let jail = Confinement::new(ws.path(), Some(&ws.path().join(".secureclaw"))).unwrap();
        for rel in [
            ".secureclaw/vault.header.json",
            "./.secureclaw/vault.header.json",
            "a/../.secureclaw/vault.header.json",
            ".secureclaw",
            ".secureclaw/",
            ".secureclaw/.",
            "./.secureclaw//blobs/x",
        ] {
            assert!(
                matches!(resolve(&jail, rel), Err(PathError::StateDir(_))),
                "{rel}"
            );
            assert!(
                matches!(resolve_read(&jail, rel), Err(PathError::StateDir(_))),
                "{rel}"
            );
        }
        std::os::unix::fs::symlink(".secureclaw", ws.path().join("st")).unwrap();
        std::os::unix::fs::symlink("../.secureclaw/blobs", ws.path().join("a/deep")).unwrap();
        std::os::unix::fs::symlink(ws.path().join(".secureclaw"), ws.path().join("abs")).unwrap();
        for rel in [
            "st/vault.header.json",
            "st",
            "a/deep/x",
            "abs/vault.header.json",
        ] {
            assert!(
                matches!(resolve(&jail, rel), Err(PathError::StateDir(_))),
                "{rel}"
            );
        }
    }

    #[test]
    fn a_state_dir_elsewhere_in_the_workspace_is_refused_through_symlinks() {
        let ws = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(ws.path().join("var/state")).unwrap();
        let jail = Confinement::new(ws.path(), Some(&ws.path().join("var/state"))).unwrap();
        std::os::unix::fs::symlink("var", ws.path().join("v")).unwrap();
        for rel in ["var/state/x", "var/./state", "v/state/vault.header.json"] {
            assert!(
                matches!(resolve(&jail, rel), Err(PathError::StateDir(_))),
                "{rel}"
            );
        }
        assert!(resolve(&jail, "var/other").is_ok());
    }
}
