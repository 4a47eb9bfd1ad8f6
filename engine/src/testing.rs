//! Helpers for benchmarks and tests: generated workflows of a given shape, and a sandbox that
//! does nothing (to measure the scheduler alone). Compiled only with the `testing` feature,
//! which the engine's own tests and benches turn on (a dev-dependency on itself): it is not
//! part of the engine's API.

use async_trait::async_trait;
use secureclaw_sandbox::{
    EnforcementReport, ExecOutcome, ExecSpec, ExitReason, Sandbox, SandboxError,
};
use tokio_util::sync::CancellationToken;

/// Completes every step at once with exit code 0, in-process, without running anything.
///
/// It confines nothing, so it says so: `isolated()` is false and so is its enforcement report,
/// like the `host` backend's. A run on it therefore needs a policy that allows unisolated
/// backends (`Policy::default()` does) and is recorded as unisolated.
pub struct NoopSandbox;

#[async_trait]
impl Sandbox for NoopSandbox {
    fn name(&self) -> &'static str {
        "noop"
    }
    fn isolated(&self) -> bool {
        false
    }
    async fn run(&self, _: &ExecSpec, _: CancellationToken) -> Result<ExecOutcome, SandboxError> {
        Ok(ExecOutcome::new(
            ExitReason::Exited { code: 0 },
            Default::default(),
            Default::default(),
            std::time::Duration::ZERO,
            EnforcementReport {
                backend: "noop".into(),
                isolated: false,
                layers: Vec::new(),
                missing: Vec::new(),
            },
        ))
    }
}

/// A workflow of `n` shell steps mixing chains, fan-out and fan-in: step i needs i-1 (chain),
/// every 10th step fans out to the next 9, and every 10th step fans in from the previous 9.
pub fn dag_workflow(n: usize) -> String {
    dag_of(n, |templated| match templated {
        Some(prev) => format!("shell: echo {{{{ inputs.tag }}}} {{{{ steps.s{prev}.output }}}}"),
        None => "shell: echo step".into(),
    })
}

/// The same graph of `read` steps (globs matching nothing): no sandbox, no workspace capture, so
/// a run measures the scheduler alone.
pub fn dag_workflow_of_reads(n: usize) -> String {
    dag_of(n, |templated| match templated {
        Some(prev) => format!(
            "read: {{ glob: \"none-{{{{ inputs.tag }}}}-{{{{ steps.s{prev}.exit_code }}}}/*\" }}"
        ),
        None => "read: { glob: \"none/*\" }".into(),
    })
}

fn dag_of(n: usize, action: impl Fn(Option<usize>) -> String) -> String {
    let mut s = String::from(
        "version: 1\nname: generated\ninputs:\n  tag: { type: string, default: x }\nsteps:\n",
    );
    for i in 0..n {
        let mut needs: Vec<String> = Vec::new();
        if i > 0 && i % 10 != 0 {
            needs.push(format!("s{}", i - i % 10));
        } else if i >= 10 {
            needs.extend((i - 9..i).map(|k| format!("s{k}")));
        }
        s.push_str(&format!("  - id: s{i}\n"));
        if !needs.is_empty() {
            s.push_str(&format!("    needs: [{}]\n", needs.join(", ")));
        }
        let templated = (i % 10 == 0 && i > 0).then(|| i - 1);
        s.push_str(&format!("    {}\n", action(templated)));
    }
    s
}
