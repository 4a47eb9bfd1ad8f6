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

pub use capture::{CappedOutput, read_capped};
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
