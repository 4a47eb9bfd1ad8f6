use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Resource limits for one execution. Defaults are the seed's hardening table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Limits {
    pub memory_bytes: u64,
    pub cpus: f64,
    pub pids: u32,
    pub timeout: Duration,
    /// Bytes kept per stream (stdout, stderr); the rest is drained and counted, never buffered.
    pub output_cap: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory_bytes: 512 * 1024 * 1024,
            cpus: 1.0,
            pids: 128,
            timeout: Duration::from_secs(300),
            output_cap: 1024 * 1024,
        }
    }
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
        }
    }
}

/// Why the process ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum ExitReason {
    Exited { code: i32 },
    Signaled { signal: i32 },
    TimedOut,
    OutOfMemory,
    PidsLimit,
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
}
