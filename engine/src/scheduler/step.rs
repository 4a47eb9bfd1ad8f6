//! Executing one step: attempts, retries, the engine-side actions and the sandbox.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use secureclaw_sandbox::{ExecSpec, Limits, NetworkPolicy, Sandbox, SandboxError};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::actions;
use crate::events::{EventSink, RunEvent};
use crate::model::{RetrySpec, Step};
use crate::record::StepState;
use crate::template::StepView;
use crate::workspace::Confinement;

use super::capture::{Capture, SnapCtx, Targets, capture_after};
use super::render::Rendered;

/// The environment every step starts from; nothing is inherited from the engine.
const BASE_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What a step task reports back.
pub(super) struct Finished {
    pub(super) index: usize,
    pub(super) state: StepState,
    pub(super) view: StepView,
    /// How much the step wrote, when the output cap kept less.
    pub(super) output_cut: Option<crate::record::OutputCut>,
    pub(super) exit_code: Option<i32>,
    pub(super) reason: Option<String>,
    pub(super) enforcement: Option<secureclaw_sandbox::EnforcementReport>,
    /// Connection attempts through the egress proxy.
    pub(super) egress: Vec<secureclaw_sandbox::EgressEvent>,
    pub(super) attempts: u32,
    pub(super) duration: Duration,
    /// The backend refused to run the step (missing isolation layer, unavailable, unsupported).
    pub(super) refused: bool,
    /// What the step changed in the workspace (steps that may write).
    pub(super) capture: Option<Capture>,
    /// The injection detector's verdict on what it brought back (filled in by the task that
    /// ran it, once the step finished).
    pub(super) screening: Option<crate::screen::Screening>,
}

/// Everything a step task needs, owned.
pub(super) struct StepJob {
    pub(super) index: usize,
    pub(super) step: Step,
    pub(super) rendered: Rendered,
    pub(super) limits: Limits,
    pub(super) allow_degraded: bool,
    pub(super) image: Option<String>,
    /// The canonical workspace and state dir, built once per run.
    pub(super) jail: Arc<Confinement>,
    /// Host paths the step may read (operator, workflow and step grants, resolved).
    pub(super) read_only: Vec<PathBuf>,
    pub(super) sandbox: Arc<dyn Sandbox>,
    pub(super) events: EventSink,
    pub(super) cancel: CancellationToken,
    pub(super) snap: Option<Arc<SnapCtx>>,
}

/// Attempts, first delay and delay ceiling of a step's retry policy.
fn retry_plan(step: &Step) -> (u32, Duration, Duration) {
    match &step.retry {
        None => (1, Duration::from_secs(1), Duration::from_secs(30)),
        Some(RetrySpec::Attempts(n)) => {
            ((*n).max(1), Duration::from_secs(1), Duration::from_secs(30))
        }
        Some(RetrySpec::Detailed(r)) => (
            r.attempts.max(1),
            r.backoff
                .as_ref()
                .and_then(|b| b.parse().ok())
                .unwrap_or(Duration::from_secs(1)),
            r.max_backoff
                .as_ref()
                .and_then(|b| b.parse().ok())
                .unwrap_or(Duration::from_secs(30)),
        ),
    }
}

pub(super) async fn execute(job: StepJob) -> Finished {
    let start = Instant::now();
    let snap = job.snap.clone().filter(|_| job.step.kind().may_write());
    let targets = snap.as_ref().and_then(|ctx| Targets::of(ctx, &job));
    let pre = match &snap {
        Some(ctx) => match ctx.pre(&job.step.id, targets.clone()).await {
            Ok(m) => Some(m),
            Err(e) => {
                let mut f = finished(
                    &job,
                    StepState::Failed,
                    StepView::default(),
                    None,
                    Some(format!(
                        "capturing the workspace before the step failed, so it did not run: {e}"
                    )),
                );
                f.duration = start.elapsed();
                return f;
            }
        },
        None => None,
    };
    let (attempts, mut delay, max_delay) = retry_plan(&job.step);
    let mut attempt = 0;
    loop {
        attempt += 1;
        let mut f = attempt_once(&job).await;
        f.attempts = attempt;
        if let (Some(ctx), Some(pre)) = (&snap, &pre) {
            capture_after(ctx, pre.clone(), targets.clone(), &job, &mut f).await;
        }
        let retryable =
            f.state == StepState::Failed && attempt < attempts && !job.cancel.is_cancelled();
        if !retryable {
            f.duration = start.elapsed();
            return f;
        }
        (job.events)(&RunEvent::StepRetrying {
            step: job.step.id.clone(),
            attempt: attempt + 1,
            delay_ms: delay.as_millis() as u64,
            reason: f.reason.clone().unwrap_or_default(),
        });
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = job.cancel.cancelled() => {
                f.state = StepState::Cancelled;
                f.duration = start.elapsed();
                return f;
            }
        }
        delay = (delay * 2).min(max_delay);
    }
}

pub(super) fn finished(
    job: &StepJob,
    state: StepState,
    view: StepView,
    exit_code: Option<i32>,
    reason: Option<String>,
) -> Finished {
    Finished {
        index: job.index,
        state,
        view,
        output_cut: None,
        exit_code,
        reason,
        enforcement: None,
        egress: Vec::new(),
        attempts: 0,
        duration: Duration::ZERO,
        refused: false,
        capture: None,
        screening: None,
    }
}

/// Every decision of the egress proxy goes into the ledger with the step (null when none).
pub(super) fn egress_summary(events: &[secureclaw_sandbox::EgressEvent]) -> Value {
    if events.is_empty() {
        return Value::Null;
    }
    json!(events)
}

async fn attempt_once(job: &StepJob) -> Finished {
    let timeout = job.limits.timeout;
    let engine_side = async {
        let ws = &*job.jail;
        match &job.rendered {
            Rendered::Read {
                path: Some(p),
                limit,
                ..
            } => actions::read_file(ws, p, *limit),
            Rendered::Read { glob, .. } => {
                actions::glob(ws, glob.as_deref().unwrap_or("**")).map(|v| v.join("\n"))
            }
            Rendered::Write {
                path,
                content,
                append,
                mode,
            } => actions::write_file(ws, path, content, *append, mode.as_deref())
                .map(|_| path.clone()),
            Rendered::Patch { path, diff } => {
                actions::patch_file(ws, path, diff).map(|_| path.clone())
            }
            Rendered::Http {
                url,
                headers,
                body,
                json,
                timeout,
                limit,
            } => {
                let Some(action) = job.step.http.as_ref() else {
                    return Err(actions::ActionError::Invalid {
                        what: "step",
                        message: "not an http step".into(),
                    });
                };
                actions::http(actions::HttpCall {
                    action,
                    url,
                    headers,
                    body: body.clone(),
                    json: json.clone(),
                    allowed: &job.step.network,
                    timeout: *timeout,
                    limit: *limit,
                })
                .await
                .map(|r| r.body)
            }
            Rendered::Shell { .. } => Ok(String::new()),
        }
    };
    if let Rendered::Shell { command, env } = &job.rendered {
        return run_shell(job, command, env).await;
    }
    let result = tokio::select! {
        r = tokio::time::timeout(timeout, engine_side) => r,
        _ = job.cancel.cancelled() => return finished(job, StepState::Cancelled, StepView::default(), None, Some("cancelled".into())),
    };
    match result {
        Ok(Ok(output)) => finished(
            job,
            StepState::Succeeded,
            StepView {
                stdout: output.clone(),
                output,
                stderr: String::new(),
                exit_code: 0,
            },
            Some(0),
            None,
        ),
        Ok(Err(e)) => {
            let body = match &e {
                actions::ActionError::Status { body, .. } => body.clone(),
                _ => String::new(),
            };
            finished(
                job,
                StepState::Failed,
                StepView {
                    output: body,
                    stdout: String::new(),
                    stderr: e.to_string(),
                    exit_code: 1,
                },
                Some(1),
                Some(e.to_string()),
            )
        }
        Err(_) => finished(
            job,
            StepState::Failed,
            StepView::default(),
            None,
            Some(format!(
                "timed out after {}",
                humantime::format_duration(timeout)
            )),
        ),
    }
}

async fn run_shell(job: &StepJob, command: &str, env: &BTreeMap<String, String>) -> Finished {
    let mut spec = ExecSpec::shell(command, job.jail.root().to_path_buf());
    spec.env.insert("PATH".into(), BASE_PATH.into());
    spec.env.insert("LANG".into(), "C.UTF-8".into());
    // Isolated: a writable scratch home (tools' caches and dotfiles go to the step's tmpfs,
    // not into the workspace); the granted toolchains' bin dirs and home variables.
    spec.env.insert(
        "HOME".into(),
        if job.sandbox.isolated() {
            "/tmp".into()
        } else {
            job.jail.root().display().to_string()
        },
    );
    spec.read_only = job.read_only.clone();
    spec.env.extend(secureclaw_sandbox::grants::toolchain_env(
        &spec.read_only,
        BASE_PATH,
    ));
    spec.env
        .extend(env.iter().map(|(k, v)| (k.clone(), v.clone())));
    spec.limits = job.limits.clone();
    spec.allow_degraded = job.allow_degraded;
    spec.image = job.image.clone();
    spec.network = if job.step.network.is_empty() {
        NetworkPolicy::None
    } else {
        NetworkPolicy::Domains(job.step.network.clone())
    };
    if let Some(state_dir) = job.jail.state_dir()
        && state_dir.starts_with(job.jail.root())
    {
        spec.masked.push(state_dir.to_path_buf());
    }
    match job.sandbox.run(&spec, job.cancel.clone()).await {
        Ok(out) => {
            // Phase timings (`SECURECLAW_SANDBOX_TRACE=1`) go to subscribers, not a terminal.
            if let Some(trace) = &out.trace {
                (job.events)(&RunEvent::Output {
                    step: job.step.id.clone(),
                    stream: "trace".into(),
                    text: trace.clone(),
                });
            }
            let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
            let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
            let output = stdout.strip_suffix('\n').unwrap_or(&stdout).to_string();
            let code = out.exit.code();
            let state = if out.exit == secureclaw_sandbox::ExitReason::Cancelled {
                StepState::Cancelled
            } else if out.exit.success() {
                StepState::Succeeded
            } else {
                StepState::Failed
            };
            let mut reason = (state != StepState::Succeeded).then(|| out.exit.describe());
            // Limits the step ran into (a refused fork, the write budget) and, for a command
            // the sandbox could not find, what to grant: all into the step record.
            let mut notes = out.warnings.clone();
            if out.exit == (secureclaw_sandbox::ExitReason::Exited { code: 127 })
                && job.sandbox.isolated()
                && let Some(hint) = secureclaw_sandbox::grants::missing_command_hint(
                    &stderr,
                    &std::env::var("PATH").unwrap_or_default(),
                    &spec.read_only,
                    std::env::var_os("HOME").map(PathBuf::from).as_deref(),
                )
            {
                notes.push(hint);
            }
            for note in notes {
                reason = Some(match reason {
                    Some(r) => format!("{r}; {note}"),
                    None => note,
                });
            }
            let cut = out.stdout_total > out.stdout.len() as u64
                || out.stderr_total > out.stderr.len() as u64;
            if cut {
                let note = format!(
                    "output truncated: kept {} of {} stdout bytes, {} of {} stderr bytes",
                    out.stdout.len(),
                    out.stdout_total,
                    out.stderr.len(),
                    out.stderr_total
                );
                reason = Some(match reason {
                    Some(r) => format!("{r}; {note}"),
                    None => note,
                });
            }
            Finished {
                index: job.index,
                state,
                view: StepView {
                    output,
                    stdout,
                    stderr,
                    exit_code: code,
                },
                output_cut: cut.then_some(crate::record::OutputCut {
                    stdout_total: out.stdout_total,
                    stderr_total: out.stderr_total,
                }),
                exit_code: Some(code),
                reason,
                enforcement: Some(out.enforcement),
                egress: out.egress,
                attempts: 0,
                duration: out.duration,
                refused: false,
                capture: None,
                screening: None,
            }
        }
        Err(e) => {
            let refused = matches!(
                e,
                SandboxError::Degraded { .. }
                    | SandboxError::Unavailable { .. }
                    | SandboxError::Unsupported { .. }
            );
            Finished {
                refused,
                ..finished(
                    job,
                    StepState::Failed,
                    StepView::default(),
                    None,
                    Some(e.to_string()),
                )
            }
        }
    }
}
