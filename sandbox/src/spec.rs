use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Resource limits for one execution. Defaults are the default hardening table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Limits {
    pub memory_bytes: u64,
    pub cpus: f64,
    pub pids: u32,
    pub timeout: Duration,
    /// Bytes kept per stream (stdout, stderr); the rest is drained and counted, never buffered.
    pub output_cap: usize,
    /// Write budget: how many bytes the step may add to the host disk that holds its workspace.
    /// Past it the step is stopped and reported as [`ExitReason::DiskBudget`].
    #[serde(default = "default_disk_bytes")]
    pub disk_bytes: u64,
}

/// The default write budget of a step: 1 GiB.
pub const DEFAULT_DISK_BYTES: u64 = 1 << 30;

fn default_disk_bytes() -> u64 {
    DEFAULT_DISK_BYTES
}

impl Limits {
    /// The write budget as the size limit of any one file (`RLIMIT_FSIZE`): `None` for a budget
    /// of 0, which means none on every backend.
    pub fn file_size_limit(&self) -> Option<u64> {
        (self.disk_bytes > 0).then_some(self.disk_bytes)
    }

    /// Whether a write budget holds the step at all.
    pub fn has_write_budget(&self) -> bool {
        self.file_size_limit().is_some()
    }

    /// The write budget as a hardening report states it: its size and `how` it is enforced, or
    /// that there is none.
    pub fn write_budget_detail(&self, how: &str) -> String {
        match self.file_size_limit() {
            Some(bytes) => format!("{bytes} bytes: {how}"),
            None => "none: a write budget of 0 sets no limit".to_string(),
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory_bytes: 512 * 1024 * 1024,
            cpus: 1.0,
            pids: 128,
            timeout: Duration::from_secs(300),
            output_cap: 1024 * 1024,
            disk_bytes: DEFAULT_DISK_BYTES,
        }
    }
}

/// The configuration variables for step limits (named for Docker, applied to every
/// isolated backend): they replace the built-in defaults; a workflow's `sandbox:` settings
/// still override them per workflow and step.
pub const LIMIT_VARS: [&str; 3] = [
    "DOCKER_MEMORY_LIMIT",
    "DOCKER_CPU_LIMIT",
    "DOCKER_TIMEOUT_SECONDS",
];

impl Limits {
    /// The defaults with `DOCKER_MEMORY_LIMIT` (Docker syntax: `512m`, `1g`, `268435456`),
    /// `DOCKER_CPU_LIMIT` (`1.0`) and `DOCKER_TIMEOUT_SECONDS` (`300`) applied where set.
    pub fn from_env() -> Result<Limits, String> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Limits, String> {
        let mut limits = Limits::default();
        if let Some(v) = lookup(LIMIT_VARS[0]) {
            limits.memory_bytes = docker_size(&v).ok_or_else(|| {
                format!("DOCKER_MEMORY_LIMIT={v:?}: expected a size such as 512m or 1g")
            })?;
        }
        if let Some(v) = lookup(LIMIT_VARS[1]) {
            limits.cpus = v
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|c| c.is_finite() && *c > 0.0)
                .ok_or_else(|| {
                    format!("DOCKER_CPU_LIMIT={v:?}: expected a number of CPUs such as 1.0")
                })?;
        }
        if let Some(v) = lookup(LIMIT_VARS[2]) {
            let secs = v
                .trim()
                .parse::<u64>()
                .ok()
                .filter(|s| *s > 0)
                .ok_or_else(|| {
                    format!("DOCKER_TIMEOUT_SECONDS={v:?}: expected whole seconds such as 300")
                })?;
            limits.timeout = Duration::from_secs(secs);
        }
        Ok(limits)
    }
}

/// Docker's size syntax: a number with an optional `b`, `k`, `m` or `g` (binary multiples).
fn docker_size(text: &str) -> Option<u64> {
    let t = text.trim().to_ascii_lowercase();
    let (num, mult) = match t.chars().last()? {
        'b' => (&t[..t.len() - 1], 1u64),
        'k' => (&t[..t.len() - 1], 1 << 10),
        'm' => (&t[..t.len() - 1], 1 << 20),
        'g' => (&t[..t.len() - 1], 1 << 30),
        _ => (t.as_str(), 1),
    };
    num.parse::<u64>()
        .ok()?
        .checked_mul(mult)
        .filter(|b| *b > 0)
}

/// Outbound network a step may use. Only loopback exists inside a sandbox by default.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "mode", content = "domains")]
pub enum NetworkPolicy {
    #[default]
    None,
    /// Egress through the engine's proxy to exactly these domains.
    Domains(Vec<String>),
}

/// Everything a backend needs to run one step.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExecSpec {
    /// Program and arguments; a `shell` step is `["/bin/sh", "-c", command]`.
    pub argv: Vec<String>,
    /// Host directory that becomes the step's working directory (`/workspace` when isolated).
    pub workspace: PathBuf,
    /// The complete environment of the step: nothing is inherited implicitly.
    pub env: BTreeMap<String, String>,
    pub limits: Limits,
    pub network: NetworkPolicy,
    /// Run even if some isolation layer is unavailable (the report records what was missing).
    pub allow_degraded: bool,
    /// Container image, for backends that use one.
    pub image: Option<String>,
    /// Host paths inside the workspace the step must not see at all (the engine's state dir).
    /// Isolated backends mount an empty read-only directory over each.
    #[serde(default)]
    pub masked: Vec<PathBuf>,
    /// Extra host paths (absolute, canonical) the step may read: mounted read-only at the same
    /// path inside the sandbox (toolchains under a home directory, for example).
    #[serde(default)]
    pub read_only: Vec<PathBuf>,
}

impl ExecSpec {
    pub fn shell(command: &str, workspace: PathBuf) -> Self {
        ExecSpec {
            argv: vec!["/bin/sh".into(), "-c".into(), command.into()],
            workspace,
            env: BTreeMap::new(),
            limits: Limits::default(),
            network: NetworkPolicy::None,
            allow_degraded: false,
            image: None,
            masked: Vec::new(),
            read_only: Vec::new(),
        }
    }
}

/// Why the process ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum ExitReason {
    Exited {
        code: i32,
    },
    Signaled {
        signal: i32,
    },
    TimedOut,
    OutOfMemory,
    PidsLimit,
    /// The step wrote more than its write budget (`Limits::disk_bytes`) to the host disk.
    DiskBudget,
    Cancelled,
}

impl ExitReason {
    pub fn success(&self) -> bool {
        matches!(self, ExitReason::Exited { code: 0 })
    }

    /// The exit code templates see: the real code, or 128+signal, or -1 for engine-imposed ends.
    pub fn code(&self) -> i32 {
        match self {
            ExitReason::Exited { code } => *code,
            ExitReason::Signaled { signal } => 128 + signal,
            _ => -1,
        }
    }

    pub fn describe(&self) -> String {
        match self {
            ExitReason::Exited { code } => format!("exited with code {code}"),
            ExitReason::Signaled { signal } => format!("killed by signal {signal}"),
            ExitReason::TimedOut => "timed out; the whole process tree was killed".into(),
            ExitReason::OutOfMemory => "memory limit exceeded (OOM)".into(),
            ExitReason::PidsLimit => "process limit exceeded".into(),
            ExitReason::DiskBudget => {
                "write budget exceeded: the step wrote more than its `disk` limit".into()
            }
            ExitReason::Cancelled => "cancelled".into(),
        }
    }
}

/// One isolation layer and whether it was really in force for this execution.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layer {
    pub name: String,
    pub active: bool,
    pub detail: String,
}

/// Which isolation layers were active. Written to the run record and the ledger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnforcementReport {
    pub backend: String,
    pub isolated: bool,
    pub layers: Vec<Layer>,
    /// Layers the backend wanted but the kernel/engine could not provide.
    pub missing: Vec<String>,
}

impl EnforcementReport {
    /// The report of an isolating backend.
    pub fn isolated(backend: &str, layers: Vec<Layer>, missing: Vec<String>) -> Self {
        EnforcementReport {
            backend: backend.into(),
            isolated: true,
            layers,
            missing,
        }
    }
}

/// The result of one execution.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExecOutcome {
    pub exit: ExitReason,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// Total bytes the process wrote per stream, including what was dropped past the cap.
    pub stdout_total: u64,
    pub stderr_total: u64,
    pub duration: std::time::Duration,
    pub enforcement: EnforcementReport,
    /// Every outbound connection attempt through the egress proxy (allowed or refused).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress: Vec<crate::EgressEvent>,
    /// Limits the step ran into without being stopped by them (e.g. the pids limit refused
    /// forks but the step still exited 0). The engine writes them into the step record.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// Phase timings of this execution, one line, when `SECURECLAW_SANDBOX_TRACE` is set in the
    /// engine's environment; the library never prints it, the caller shows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<String>,
}

impl ExecOutcome {
    /// An outcome without egress events (the backend adds them when a proxy ran).
    pub fn new(
        exit: ExitReason,
        stdout: crate::CappedOutput,
        stderr: crate::CappedOutput,
        duration: std::time::Duration,
        enforcement: EnforcementReport,
    ) -> Self {
        ExecOutcome {
            exit,
            stdout_total: stdout.total,
            stderr_total: stderr.total,
            stdout: stdout.kept,
            stderr: stderr.kept,
            duration,
            enforcement,
            egress: Vec::new(),
            warnings: Vec::new(),
            trace: None,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test
mod tests {
    use super::*;

    #[test]
    fn docker_variables_set_the_default_limits() {
        let env = |k: &str| match k {
            "DOCKER_MEMORY_LIMIT" => Some("256m".to_string()),
            "DOCKER_CPU_LIMIT" => Some("0.5".to_string()),
            "DOCKER_TIMEOUT_SECONDS" => Some("60".to_string()),
            _ => None,
        };
        let l = Limits::from_lookup(env).unwrap();
        assert_eq!(l.memory_bytes, 256 << 20);
        assert_eq!(l.cpus, 0.5);
        assert_eq!(l.timeout, Duration::from_secs(60));
        assert_eq!(Limits::from_lookup(|_| None).unwrap(), Limits::default());
        assert_eq!(docker_size("1g"), Some(1 << 30));
        assert_eq!(docker_size("512"), Some(512));
    }

    #[test]
    fn nonsense_is_refused_not_ignored() {
        for (k, v) in [
            ("DOCKER_MEMORY_LIMIT", "lots"),
            ("DOCKER_MEMORY_LIMIT", "0"),
            ("DOCKER_CPU_LIMIT", "-1"),
            ("DOCKER_CPU_LIMIT", "NaN"),
            ("DOCKER_TIMEOUT_SECONDS", "5m"),
        ] {
            let err = Limits::from_lookup(|key| (key == k).then(|| v.to_string())).unwrap_err();
            assert!(err.starts_with(k), "{err}");
        }
    }
}
