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
    if !canonical.is_dir() {
        return Err(err(
            entry,
            format!(
                "{} is not a directory (grant the directory that holds it)",
                canonical.display()
            ),
        ));
    }
    if is_home_like(&canonical, home) {
        return Err(err(
            entry,
            format!(
                "{} is a home directory or one of their parents, too broad to grant; grant the toolchain directories in it (e.g. ~/.cargo, ~/.rustup)",
                canonical.display()
            ),
        ));
    }
    // The sandbox makes these itself (or shows them read-only already); a grant there would
    // be refused when the step starts.
    for (dir, why) in [
        ("/tmp", "the sandbox has its own private /tmp"),
        ("/workspace", "the sandbox's own workspace mount"),
        ("/proc", "kernel interfaces are never granted"),
        ("/sys", "kernel interfaces are never granted"),
        ("/dev", "kernel interfaces are never granted"),
        ("/etc", "the sandbox shows a reviewed part of /etc only"),
        ("/usr", "already visible read-only"),
        ("/bin", "already visible read-only"),
        ("/sbin", "already visible read-only"),
        ("/lib", "already visible read-only"),
        ("/lib64", "already visible read-only"),
        ("/lib32", "already visible read-only"),
        ("/libx32", "already visible read-only"),
    ] {
        if canonical.starts_with(dir) {
            return Err(err(
                entry,
                format!("{} is under {dir}: {why}", canonical.display()),
            ));
        }
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

/// Variables that tell a toolchain where its home is, by the name of the granted directory:
/// with `HOME` pointing at a writable scratch place inside, rustup, cargo, pyenv and nvm would
/// otherwise look for themselves under it.
const TOOL_HOMES: &[(&str, &str)] = &[
    (".rustup", "RUSTUP_HOME"),
    (".cargo", "CARGO_HOME"),
    (".pyenv", "PYENV_ROOT"),
    (".nvm", "NVM_DIR"),
];

/// The environment a step needs to use the granted toolchains: `PATH` with the grants' `bin`
/// (and pyenv `shims`) directories first, then `base_path`; and the toolchains' home variables.
pub fn toolchain_env(grants: &[PathBuf], base_path: &str) -> Vec<(String, String)> {
    let mut bins: Vec<String> = Vec::new();
    let mut out = Vec::new();
    for g in grants {
        let mut candidates = Vec::new();
        if g.file_name().is_some_and(|n| n == "bin" || n == "shims") {
            candidates.push(g.clone());
        }
        candidates.push(g.join("shims"));
        candidates.push(g.join("bin"));
        for c in candidates {
            let text = c.display().to_string();
            if c.is_dir() && !bins.contains(&text) {
                bins.push(text);
            }
        }
        if let Some(name) = g.file_name().and_then(|n| n.to_str())
            && let Some((_, var)) = TOOL_HOMES.iter().find(|(dir, _)| *dir == name)
        {
            out.push((var.to_string(), g.display().to_string()));
        }
    }
    bins.push(base_path.to_string());
    out.push(("PATH".to_string(), bins.join(":")));
    out
}

/// When a step failed with "not found" (exit 127) for a command that exists on the host in a
/// place the sandbox does not show, what to grant. `host_path` is the engine's own `PATH`.
pub fn missing_command_hint(
    stderr: &str,
    host_path: &str,
    granted: &[PathBuf],
    home: Option<&Path>,
) -> Option<String> {
    let name = missing_command(stderr)?;
    let found = host_path
        .split(':')
        .filter(|d| d.starts_with('/'))
        .map(|d| Path::new(d).join(&name))
        .find(|p| p.is_file())?;
    let real = std::fs::canonicalize(&found).unwrap_or_else(|_| found.clone());
    // Visible inside anyway (system directories) or already granted: nothing to suggest.
    let system = ["/usr/", "/bin/", "/sbin/", "/lib"];
    let shown = |p: &Path| {
        system.iter().any(|s| p.starts_with(s)) || granted.iter().any(|g| p.starts_with(g))
    };
    if shown(&found) && shown(&real) {
        return None;
    }
    // The directory to grant: the top directory under the home that holds it (~/.cargo for
    // ~/.cargo/bin/cargo), or its own directory elsewhere.
    let mut grants = Vec::new();
    let spell = |p: &Path| match home.and_then(|h| p.strip_prefix(h).ok()) {
        Some(rest) => format!("~/{}", rest.display()),
        None => p.display().to_string(),
    };
    let top = match home.and_then(|h| found.strip_prefix(h).ok().map(|r| (h, r))) {
        Some((h, rest)) => match rest.components().next() {
            Some(first) if rest.components().count() > 1 => h.join(first),
            _ => found.parent()?.to_path_buf(),
        },
        None => found.parent()?.to_path_buf(),
    };
    grants.push(spell(&top));
    // rustup's proxies (~/.cargo/bin/cargo) need the toolchains in ~/.rustup as well.
    if top.file_name().is_some_and(|n| n == ".cargo")
        && let Some(rustup) = top.parent().map(|p| p.join(".rustup"))
        && rustup.is_dir()
    {
        grants.push(spell(&rustup));
    }
    let list = grants
        .iter()
        .map(|g| format!("\"{g}\""))
        .collect::<Vec<_>>()
        .join(", ");
    Some(format!(
        "`{name}` is {} on the host, which the sandbox does not show: grant it read-only with `sandbox: {{ read_only: [{list}] }}` in the workflow, or `--read-only {}` when running",
        found.display(),
        grants.join(" --read-only ")
    ))
}

/// The command a shell or our helper said it could not find.
fn missing_command(stderr: &str) -> Option<String> {
    for line in stderr.lines().rev() {
        let line = line.trim();
        // dash: `sh: 1: cargo: not found`; bash: `bash: line 1: cargo: command not found`.
        let cut = line
            .strip_suffix(": not found")
            .or_else(|| line.strip_suffix(": command not found"));
        if let Some(head) = cut {
            let name = head.rsplit(": ").next()?.trim();
            if !name.is_empty() && !name.contains('/') && !name.contains(' ') {
                return Some(name.to_string());
            }
        }
        // Our helper: "secureclaw: step: `cargo` not found in PATH".
        if let Some(rest) = line.split('`').nth(1)
            && line.ends_with("not found in PATH")
            && !rest.contains('/')
        {
            return Some(rest.to_string());
        }
    }
    None
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
