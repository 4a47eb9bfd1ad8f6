// A library reports through return values (errors, warnings, traces); the caller decides what
// reaches the terminal. Unit tests may print.
#![cfg_attr(not(test), deny(clippy::print_stdout, clippy::print_stderr))]

//! The `Sandbox` contract every step execution goes through, and its backends.
//!
//! The engine hands a backend an [`ExecSpec`] (argv, workspace, env, limits, network policy) and
//! gets back an [`ExecOutcome`] that always carries an [`EnforcementReport`] saying which
//! isolation layers were really in force. Backends never decide policy; they enforce it or refuse.

pub mod budget;
mod capture;
#[cfg(target_os = "linux")]
pub mod docker;
#[cfg(target_os = "linux")]
pub mod egress;
pub mod grants;
#[cfg(target_os = "linux")]
pub mod gvisor;
mod host;
#[cfg(target_os = "linux")]
pub mod native;
mod spec;

pub use capture::CappedOutput;
#[cfg(target_os = "linux")]
pub use docker::DockerSandbox;
#[cfg(target_os = "linux")]
pub use gvisor::GvisorSandbox;
pub use host::HostSandbox;
#[cfg(target_os = "linux")]
pub use native::NativeSandbox;
pub use secureclaw_egress::EgressEvent;
pub use spec::{
    EnforcementReport, ExecOutcome, ExecSpec, ExitReason, Layer, Limits, NetworkPolicy,
};

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

/// Errors a backend reports instead of an outcome: the step never ran (or its result is unknown).
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("sandbox backend `{backend}` is not available: {reason}")]
    Unavailable { backend: String, reason: String },
    #[error(
        "sandbox backend `{backend}` refused to run: missing isolation layers {missing:?} (accept degraded mode explicitly to run anyway)"
    )]
    Degraded {
        backend: String,
        missing: Vec<String>,
        report: Box<EnforcementReport>,
    },
    #[error("sandbox backend `{backend}` does not support {feature}")]
    Unsupported { backend: String, feature: String },
    #[error("failed to start `{program}`: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("sandbox I/O error: {0}")]
    Io(#[from] std::io::Error),
}

impl SandboxError {
    /// An isolating backend refusing to run without the layers in `missing`.
    pub fn degraded(backend: &str, missing: Vec<String>, layers: Vec<Layer>) -> Self {
        SandboxError::Degraded {
            backend: backend.into(),
            missing: missing.clone(),
            report: Box::new(EnforcementReport::isolated(backend, layers, missing)),
        }
    }
}

/// One execution backend. Implementations must kill the whole process tree on timeout or
/// cancellation before returning.
#[async_trait]
pub trait Sandbox: Send + Sync {
    /// Short stable name used in workflow files and run records (`host`, `native`, `docker`,
    /// `gvisor`).
    fn name(&self) -> &'static str;

    /// Whether this backend isolates the step at all (`host` does not).
    fn isolated(&self) -> bool;

    /// Run one command to completion (or until timeout/cancellation).
    async fn run(
        &self,
        spec: &ExecSpec,
        cancel: CancellationToken,
    ) -> Result<ExecOutcome, SandboxError>;

    /// Wait for cleanup a backend finishes in the background after `run` returned (the
    /// docker backend removes containers off the step's critical path). The engine calls it
    /// before a run ends; a crash in between is covered by `sweep_leftovers`.
    async fn flush(&self) {}
}

/// Backend names accepted by [`by_name`], in the order `sandbox check` lists them.
pub const BACKENDS: &[&str] = &["native", "docker", "gvisor", "host"];

/// PATH of a step whose environment does not set one.
pub const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin";

/// The backend a workflow gets when it names none.
pub const DEFAULT_BACKEND: &str = "native";

/// Construct a backend from its workflow/CLI name.
pub fn by_name(name: &str) -> Result<std::sync::Arc<dyn Sandbox>, SandboxError> {
    match name {
        "host" => Ok(std::sync::Arc::new(HostSandbox)),
        #[cfg(target_os = "linux")]
        "native" => Ok(std::sync::Arc::new(
            NativeSandbox::new()?.with_egress_pins(egress::pins_from_env()?),
        )),
        #[cfg(target_os = "linux")]
        "docker" => Ok(std::sync::Arc::new(
            DockerSandbox::new().with_egress_pins(egress::pins_from_env()?),
        )),
        #[cfg(target_os = "linux")]
        "gvisor" => Ok(std::sync::Arc::new(GvisorSandbox::new()?)),
        #[cfg(not(target_os = "linux"))]
        "native" | "docker" | "gvisor" => Err(SandboxError::Unavailable {
            backend: name.into(),
            reason: "this backend needs Linux".into(),
        }),
        other => Err(SandboxError::Unavailable {
            backend: other.to_string(),
            reason: format!("unknown backend (known: {})", BACKENDS.join(", ")),
        }),
    }
}

/// Entry point for the re-executed sandbox helper. The binary calls this first thing in `main`:
/// it returns at once when this process is not a helper, and never returns when it is.
pub fn run_helper_if_requested() {
    #[cfg(target_os = "linux")]
    native::run_helper_if_requested();
}

/// Remove what a killed engine may have left behind (mounts, cgroups, processes, containers).
/// Called once at engine start; best effort, reports what it removed.
pub fn sweep_leftovers() -> Vec<String> {
    #[cfg(target_os = "linux")]
    return native::sweep_leftovers()
        .into_iter()
        .chain(gvisor::sweep_leftovers())
        .collect();
    #[cfg(not(target_os = "linux"))]
    Vec::new()
}

/// The masked paths of `spec` relative to `workspace` (canonical), for isolated backends to
/// hide. Paths outside the workspace or with `..` are dropped: a mask must stay inside.
pub(crate) fn masked_relative(
    spec: &ExecSpec,
    workspace: &std::path::Path,
) -> Vec<std::path::PathBuf> {
    use std::path::{Component, PathBuf};
    spec.masked
        .iter()
        .filter_map(|m| {
            let m = std::fs::canonicalize(m).ok()?;
            let rel = m.strip_prefix(workspace).ok()?;
            let mut out = PathBuf::new();
            for c in rel.components() {
                match c {
                    Component::Normal(n) => out.push(n),
                    Component::CurDir => {}
                    _ => return None,
                }
            }
            (!out.as_os_str().is_empty()).then_some(out)
        })
        .collect()
}

/// How a step whose init is the step itself ended, from its exit status as a container runtime
/// reports it (docker, runsc): a signal death shows as 128+n.
#[cfg(target_os = "linux")]
pub(crate) fn container_exit(code: i32, oom: bool, over_budget: bool) -> ExitReason {
    if oom {
        ExitReason::OutOfMemory
    } else if code == 128 + libc::SIGXFSZ || (code != 0 && over_budget) {
        // A process killed at RLIMIT_FSIZE (the budget), or a step that failed after filling
        // its budget (a step that is pid 1 gets EFBIG instead of SIGXFSZ).
        ExitReason::DiskBudget
    } else if code > 128 && code < 128 + 65 {
        ExitReason::Signaled { signal: code - 128 }
    } else if over_budget {
        ExitReason::DiskBudget
    } else {
        ExitReason::Exited { code }
    }
}

/// The step's environment as `KEY=value` lines, with `PATH` and `HOME` (`/tmp`) when it sets
/// none, for backends that start the step through a runtime.
#[cfg(target_os = "linux")]
pub(crate) fn step_env(spec: &ExecSpec) -> Vec<String> {
    let mut env: Vec<String> = spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    for (k, v) in [("PATH", DEFAULT_PATH), ("HOME", "/tmp")] {
        if !spec.env.contains_key(k) {
            env.push(format!("{k}={v}"));
        }
    }
    env
}

/// Every backend refuses an empty command the same way.
pub(crate) fn require_argv(spec: &ExecSpec) -> Result<(), SandboxError> {
    if spec.argv.is_empty() {
        return Err(SandboxError::Spawn {
            program: String::new(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "empty argv"),
        });
    }
    Ok(())
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn a_runtimes_exit_status_says_how_the_step_ended() {
        assert_eq!(
            container_exit(0, false, false),
            ExitReason::Exited { code: 0 }
        );
        assert_eq!(
            container_exit(3, false, false),
            ExitReason::Exited { code: 3 }
        );
        assert_eq!(
            container_exit(137, false, false),
            ExitReason::Signaled { signal: 9 }
        );
        // The memory cgroup's OOM counter outranks the SIGKILL it caused.
        assert_eq!(container_exit(137, true, false), ExitReason::OutOfMemory);
        assert_eq!(
            container_exit(128 + libc::SIGXFSZ, false, false),
            ExitReason::DiskBudget
        );
        assert_eq!(container_exit(1, false, true), ExitReason::DiskBudget);
        assert_eq!(container_exit(0, false, true), ExitReason::DiskBudget);
    }

    #[test]
    fn a_steps_environment_gets_path_and_home_only_where_it_sets_none() {
        let mut spec = ExecSpec::shell("true", "/tmp".into());
        assert!(step_env(&spec).contains(&format!("PATH={DEFAULT_PATH}")));
        spec.env.insert("HOME".into(), "/workspace".into());
        let env = step_env(&spec);
        assert!(env.contains(&"HOME=/workspace".to_string()));
        assert!(!env.contains(&"HOME=/tmp".to_string()));
    }
}
