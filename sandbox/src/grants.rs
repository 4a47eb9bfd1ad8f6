//! Extra read-only paths a step may see ([`crate::ExecSpec::read_only`]): toolchains that live
//! in a home directory (`~/.cargo`, `~/.rustup`, `~/.pyenv`, `~/.nvm`, `~/.local/bin`).
//!
//! The rules, checked for the workflow's `sandbox.read_only` and the operator's grants alike:
//! - written as an absolute path or `~/…` (the engine user's home), without `..`;
//! - it must exist; it is canonicalised (symlinks resolved) before any other check;
//! - never `/`, `/home`, `/root` or a home directory itself (too broad: they hold secrets no
//!   list can name);
//! - never the state dir, a path inside it or a path that contains it;
//! - credentials inside a grant (`sandbox/policy/grants.toml`) are hidden unless the grant
//!   names them itself.

use std::path::{Component, Path, PathBuf};
use std::sync::OnceLock;

/// The reviewed list of credential paths (relative to a home directory).
pub const GRANTS_TOML: &str = include_str!("../policy/grants.toml");

#[derive(Debug, thiserror::Error)]
#[error("read-only path `{entry}`: {reason}")]
pub struct GrantError {
    pub entry: String,
    pub reason: String,
}

fn err(entry: &str, reason: impl Into<String>) -> GrantError {
    GrantError {
        entry: entry.to_string(),
        reason: reason.into(),
    }
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SecretList {
    #[allow(dead_code)] // documentation for reviewers, required so it is never dropped
    why: String,
    secrets: Vec<String>,
}

/// The credential paths of `grants.toml`, relative to a home directory.
pub fn secrets() -> &'static [PathBuf] {
    static CELL: OnceLock<Vec<PathBuf>> = OnceLock::new();
    CELL.get_or_init(|| match toml::from_str::<SecretList>(GRANTS_TOML) {
        Ok(list) => list.secrets.into_iter().map(PathBuf::from).collect(),
        // The file is compiled in and checked by the tests; an unreadable list must not
        // silently reveal anything, so it hides the most common ones at least.
        Err(_) => vec![PathBuf::from(".ssh"), PathBuf::from(".gnupg")],
    })
}

/// Check the spelling of a grant without touching the filesystem (for `validate`).
pub fn check_syntax(entry: &str) -> Result<(), GrantError> {
    let rest = if let Some(rest) = entry.strip_prefix("~/") {
        rest
    } else if entry == "~" {
        return Err(err(
            entry,
            "a home directory is too broad; grant the toolchain directories in it (e.g. ~/.cargo)",
        ));
    } else if entry.starts_with('/') {
        entry
    } else {
        return Err(err(entry, "must be an absolute path or start with `~/`"));
    };
    if Path::new(rest)
        .components()
        .any(|c| matches!(c, Component::ParentDir))
    {
        return Err(err(entry, "`..` is not allowed"));
    }
    Ok(())
}

/// `~/x` against `home`; absolute paths as they are.
pub fn expand(entry: &str, home: Option<&Path>) -> Result<PathBuf, GrantError> {
    check_syntax(entry)?;
    match entry.strip_prefix("~/") {
        Some(rest) => {
            let home = home.ok_or_else(|| err(entry, "`~` used but HOME is not set"))?;
            Ok(home.join(rest))
        }
        None => Ok(PathBuf::from(entry)),
    }
}

/// Home directories on this host: `home` itself and every directory under `/home`.
fn is_home_like(path: &Path, home: Option<&Path>) -> bool {
    let top = [Path::new("/"), Path::new("/home"), Path::new("/root")];
    top.contains(&path)
        || path.parent() == Some(Path::new("/home"))
        || home.is_some_and(|h| std::fs::canonicalize(h).is_ok_and(|h| h == path))
}

/// Resolve one grant to the canonical host path to mount, applying every rule above.
pub fn resolve(
    entry: &str,
    home: Option<&Path>,
    state_dir: Option<&Path>,
) -> Result<PathBuf, GrantError> {
    let path = expand(entry, home)?;
    let canonical = std::fs::canonicalize(&path).map_err(|e| {
        err(
            entry,
            format!("{}: {e} (a grant must exist on the host)", path.display()),
        )
    })?;
    if is_home_like(&canonical, home) {
        return Err(err(
            entry,
            format!(
                "{} is a home directory or one of their parents, too broad to grant; grant the toolchain directories in it (e.g. ~/.cargo, ~/.rustup)",
                canonical.display()
            ),
        ));
    }
    if let Some(state) = state_dir {
        let state = std::fs::canonicalize(state).unwrap_or_else(|_| state.to_path_buf());
        if canonical.starts_with(&state) || state.starts_with(&canonical) {
            return Err(err(
                entry,
                format!(
                    "{} overlaps the state dir {} (the vault is never shown to a step)",
                    canonical.display(),
                    state.display()
                ),
            ));
        }
    }
    Ok(canonical)
}

/// Credential paths that exist strictly inside `grant` (canonical): what the sandbox hides.
pub fn masks(grant: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for secret in secrets() {
        let parts: Vec<&std::ffi::OsStr> = secret.iter().collect();
        // `grant` as a home (grant/.ssh), or ending in the secret's leading components
        // (a grant of …/.cargo for .cargo/credentials.toml).
        for k in 0..parts.len() {
            let head: PathBuf = parts[..k].iter().collect();
            if k > 0 && !grant.ends_with(&head) {
                continue;
            }
            let candidate: PathBuf = parts[k..]
                .iter()
                .fold(grant.to_path_buf(), |p, c| p.join(c));
            if candidate != grant
                && std::fs::symlink_metadata(&candidate).is_ok()
                && !out.contains(&candidate)
            {
                out.push(candidate);
            }
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test
mod tests {
    use super::*;

    #[test]
    fn the_reviewed_list_parses_and_names_the_usual_credentials() {
        let list: SecretList = toml::from_str(GRANTS_TOML).unwrap();
        for s in [
            ".ssh",
            ".gnupg",
            ".aws",
            ".cargo/credentials.toml",
            ".git-credentials",
        ] {
            assert!(list.secrets.iter().any(|x| x == s), "{s}");
        }
        assert_eq!(secrets().len(), list.secrets.len());
    }

    #[test]
    fn spelling_rules() {
        for ok in ["~/.cargo", "/opt/tool", "~/.local/bin"] {
            check_syntax(ok).unwrap();
        }
        for bad in [
            "relative",
            "./x",
            "~",
            "~other/.cargo",
            "~/../etc",
            "/opt/../root",
            "",
        ] {
            assert!(check_syntax(bad).is_err(), "{bad}");
        }
    }
}
