//! The `host` backend: a plain child process with no isolation at all.
//!
//! It exists for users who opt in explicitly (`--sandbox host`) and as the control group of the
//! escape battery: attacks that the isolated backends stop must succeed here.

use std::process::Stdio;
use std::time::Instant;

use async_trait::async_trait;
use rustix::process::{Pid, Signal, kill_process_group};
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

use crate::capture::{capture_in_background, collect};
use crate::{EnforcementReport, ExecOutcome, ExecSpec, ExitReason, Sandbox, SandboxError};

/// How long to wait for output pipes after the process tree was killed.

#[derive(Debug, Default, Clone)]
pub struct HostSandbox;

impl HostSandbox {
    pub fn report() -> EnforcementReport {
        EnforcementReport {
            backend: "host".into(),
            isolated: false,
            layers: Vec::new(),
            missing: Vec::new(),
        }
    }
}

fn kill_group(pid: Option<u32>) {
    if let Some(pgid) = pid
        .and_then(|p| i32::try_from(p).ok())
        .and_then(Pid::from_raw)
    {
        // The child leads its own process group, so this reaches every descendant that did not
        // deliberately leave it (on `host` nothing can stop one that does: that is the point).
        let _ = kill_process_group(pgid, Signal::KILL);
    }
}

#[async_trait]
impl Sandbox for HostSandbox {
    fn name(&self) -> &'static str {
        "host"
    }

    fn isolated(&self) -> bool {
        false
    }

    async fn run(
        &self,
        spec: &ExecSpec,
        cancel: CancellationToken,
    ) -> Result<ExecOutcome, SandboxError> {
        // `host` restricts nothing, the network included: that is what choosing it means.
        let Some((program, args)) = spec.argv.split_first() else {
            return Err(SandboxError::Spawn {
                program: String::new(),
                source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "empty argv"),
            });
        };
        let start = Instant::now();
        let mut child = Command::new(program)
            .args(args)
            .current_dir(&spec.workspace)
            .env_clear()
            .envs(&spec.env)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| SandboxError::Spawn {
                program: program.clone(),
                source,
            })?;
        let pid = child.id();
        let cap = spec.limits.output_cap;
        let stdout = child.stdout.take().map(|s| capture_in_background(s, cap));
        let stderr = child.stderr.take().map(|s| capture_in_background(s, cap));

        let exit = tokio::select! {
            status = child.wait() => {
                let status = status?;
                use std::os::unix::process::ExitStatusExt;
                match (status.code(), status.signal()) {
                    (Some(code), _) => ExitReason::Exited { code },
                    (None, Some(signal)) => ExitReason::Signaled { signal },
                    (None, None) => ExitReason::Exited { code: -1 },
                }
            }
            _ = tokio::time::sleep(spec.limits.timeout) => ExitReason::TimedOut,
            _ = cancel.cancelled() => ExitReason::Cancelled,
        };
        // Whatever ended the step, nothing it started in its group may outlive it.
        kill_group(pid);
        let _ = child.wait().await;

        let (stdout, stderr) = (collect(stdout).await, collect(stderr).await);
        Ok(ExecOutcome::new(
            exit,
            stdout,
            stderr,
            start.elapsed(),
            Self::report(),
        ))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn captures_output_and_exit_code() {
        let dir = tempfile::tempdir().unwrap();
        let mut spec = ExecSpec::shell("echo out; echo err >&2; exit 3", dir.path().into());
        spec.env.insert("PATH".into(), "/usr/bin:/bin".into());
        let out = HostSandbox
            .run(&spec, CancellationToken::new())
            .await
            .unwrap();
        assert_eq!(out.exit, ExitReason::Exited { code: 3 });
        assert_eq!(out.stdout, b"out\n");
        assert_eq!(out.stderr, b"err\n");
        assert!(!out.enforcement.isolated);
    }

    #[tokio::test]
    async fn output_is_capped_but_counted() {
        let dir = tempfile::tempdir().unwrap();
        let mut spec = ExecSpec::shell("head -c 100000 /dev/zero", dir.path().into());
        spec.env.insert("PATH".into(), "/usr/bin:/bin".into());
        spec.limits.output_cap = 1000;
        let out = HostSandbox
            .run(&spec, CancellationToken::new())
            .await
            .unwrap();
        assert_eq!(out.stdout.len(), 1000);
        assert_eq!(out.stdout_total, 100_000);
    }

    #[tokio::test]
    async fn timeout_kills_the_process_tree() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("survived");
        let mut spec = ExecSpec::shell(
            &format!("(sleep 2; touch {}) & sleep 30", marker.display()),
            dir.path().into(),
        );
        spec.env.insert("PATH".into(), "/usr/bin:/bin".into());
        spec.limits.timeout = Duration::from_millis(200);
        let out = HostSandbox
            .run(&spec, CancellationToken::new())
            .await
            .unwrap();
        assert_eq!(out.exit, ExitReason::TimedOut);
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert!(!marker.exists(), "a background child outlived the timeout");
    }
}
