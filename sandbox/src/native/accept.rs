//! Layers an operator accepts missing for every step (`SECURECLAW_SANDBOX_ACCEPT_MISSING`), from
//! the reviewed list in `sandbox/policy/accept-missing.toml`: only layers an outer boundary (the
//! server's container) can stand in for. Anything else still needs the workflow's own
//! `allow_degraded`.

use serde::Deserialize;

/// The variable naming the accepted layers, comma-separated (`cgroups,proc`).
pub const ACCEPT_MISSING_VAR: &str = "SECURECLAW_SANDBOX_ACCEPT_MISSING";
/// Appended to a missing-layer line the operator accepted, in the step's enforcement report.
pub const ACCEPTED_MARK: &str = "(accepted by SECURECLAW_SANDBOX_ACCEPT_MISSING)";

const ACCEPTABLE_TOML: &str = include_str!("../../policy/accept-missing.toml");

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Acceptable {
    layer: Vec<Entry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    name: String,
    covers: Vec<String>,
    why: String,
}

/// What the operator accepted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Accepted {
    covers: Vec<String>,
}

impl Accepted {
    /// Parse the variable's value against the reviewed list; an unknown name is an error that
    /// lists the acceptable ones (a typo must not silently accept nothing, nor anything more).
    pub fn parse(value: &str) -> Result<Self, String> {
        Self::parse_with(value, ACCEPTABLE_TOML)
    }

    fn parse_with(value: &str, list: &str) -> Result<Self, String> {
        let list: Acceptable =
            toml::from_str(list).map_err(|e| format!("sandbox/policy/accept-missing.toml: {e}"))?;
        let mut covers = Vec::new();
        for name in value.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            let Some(entry) = list.layer.iter().find(|e| e.name == name) else {
                let known: Vec<&str> = list.layer.iter().map(|e| e.name.as_str()).collect();
                return Err(format!(
                    "{ACCEPT_MISSING_VAR}: `{name}` cannot be accepted missing (acceptable: {}; any other layer needs the workflow's `sandbox: {{ allow_degraded: true }}`)",
                    known.join(", ")
                ));
            };
            if entry.why.trim().is_empty() {
                return Err(format!("accept-missing.toml: `{name}` has no `why`"));
            }
            covers.extend(entry.covers.iter().cloned());
        }
        Ok(Accepted { covers })
    }

    /// From the environment (empty when the variable is unset).
    pub fn from_env() -> Result<Self, String> {
        match std::env::var(ACCEPT_MISSING_VAR) {
            Ok(v) => Self::parse(&v),
            Err(_) => Ok(Accepted::default()),
        }
    }

    /// Whether a missing-layer line (`cgroup-memory: cannot create ...`) is accepted.
    pub fn covers(&self, missing: &str) -> bool {
        let layer = missing.split(':').next().unwrap_or_default().trim();
        self.covers.iter().any(|c| c == layer)
    }

    /// Whether an empty /proc is accepted when a fresh one is refused.
    pub fn proc(&self) -> bool {
        self.covers("proc")
    }

    /// The lines that are not accepted.
    pub fn refused(&self, missing: &[String]) -> Vec<String> {
        missing
            .iter()
            .filter(|m| !self.covers(m))
            .cloned()
            .collect()
    }

    /// The report's lines, the accepted ones marked.
    pub fn mark(&self, missing: Vec<String>) -> Vec<String> {
        missing
            .into_iter()
            .map(|m| {
                if self.covers(&m) {
                    format!("{m} {ACCEPTED_MARK}")
                } else {
                    m
                }
            })
            .collect()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test
mod tests {
    use super::*;

    #[test]
    fn cgroups_and_proc_can_be_accepted() {
        let a = Accepted::parse(" cgroups , proc ").unwrap();
        assert!(a.covers("cgroup-memory: cannot create cgroups under /sys/fs/cgroup/memory"));
        assert!(a.covers("cgroups: cannot create the step's cgroup: EACCES"));
        assert!(a.proc());
        assert_eq!(
            a.refused(&["cgroup-pids: x".into(), "seccomp: off".into()]),
            vec!["seccomp: off".to_string()]
        );
    }

    /// The layers that are the isolation itself can never be waved through by the operator.
    #[test]
    fn the_isolation_layers_cannot_be_accepted() {
        for layer in [
            "seccomp",
            "landlock",
            "namespaces",
            "readonly-root",
            "unprivileged-uid",
            "no-new-privs",
            "workspace-nosuid",
            "all",
            "*",
            "cgroups,seccomp",
        ] {
            let err = Accepted::parse(layer).unwrap_err();
            assert!(err.contains("cannot be accepted missing"), "{layer}: {err}");
        }
        let a = Accepted::parse("cgroups").unwrap();
        assert!(!a.covers("seccomp: not supported"));
        assert!(!a.covers("landlock: not enabled in this kernel"));
        // A line that merely mentions an accepted name later on is not covered.
        assert!(!a.covers("seccomp: cgroups"));
        assert!(!a.proc());
    }

    #[test]
    fn nothing_is_accepted_by_default() {
        let a = Accepted::parse("").unwrap();
        assert!(!a.covers("cgroup-memory: x"));
        assert_eq!(a.mark(vec!["proc: x".into()]), vec!["proc: x".to_string()]);
    }

    #[test]
    fn an_entry_without_a_reason_is_rejected() {
        let list = ACCEPTABLE_TOML.replace(
            "why = \"Inside a container the server",
            "why = \"  \"\n# \"",
        );
        assert_ne!(list, ACCEPTABLE_TOML);
        let err = Accepted::parse_with("cgroups", &list).unwrap_err();
        assert!(err.contains("no `why`"), "{err}");
    }
}
