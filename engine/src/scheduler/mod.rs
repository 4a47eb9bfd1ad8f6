//! The scheduler: runs a validated workflow's DAG on tokio with bounded concurrency.
//!
//! - at most `jobs` steps at once; steps that may write the workspace never overlap;
//! - `if` conditions, per-step timeout, retry with exponential backoff;
//! - a failed step skips its dependents while independent branches finish (`fail_fast`
//!   cancels everything instead); `if: failure()` / `if: always()` steps run after it, and a
//!   failure of a `continue_on_error` step lets its dependents run as after a success;
//! - a step needing approval that nobody gives stops the run: nothing starts after it;
//! - cancellation (Ctrl-C) kills running steps and marks the run cancelled.

mod capture;
mod render;
mod step;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use minijinja::value::{Object, Value as JinjaValue};
use secureclaw_sandbox::{Limits, Sandbox};
use secureclaw_vault::kind;
use serde_json::{Value, json};
use tokio::sync::{Mutex, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::events::{EventSink, RunEvent};
use crate::model::{ActionKind, SandboxSettings, Step, Tier};
use crate::park::{ParkState, PendingApproval, StepDecision, request_hash};
use crate::policy::{ApprovalRequest, Approver, Decision, Policy};
use crate::record::{
    ApprovedNode, PlanApproval, RunRecord, RunState, RunStore, StepRecord, StepState, new_run_id,
    now_rfc3339,
};
use crate::snapshot::{ChangeSet, SnapshotError, Snapshotter};
use crate::storage::{Batch, Table};
use crate::template::{StepView, Templates, UpstreamStatus};
use crate::validate::{NodeRisk, Validated};
use crate::workspace::Confinement;

use capture::{SnapCtx, blocking};
use render::{effective_risk, env_for, render_step};
use step::{Finished, StepJob, egress_summary, execute};

/// Run records are rewritten at most this often while a run is in progress.
const SAVE_INTERVAL: Duration = Duration::from_millis(200);

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Store(#[from] crate::record::StoreError),
    #[error("{0}")]
    Policy(String),
    #[error("workspace {path}: {message}")]
    Workspace { path: PathBuf, message: String },
    #[error("capturing the workspace before the run: {0}")]
    Snapshot(#[from] SnapshotError),
}

#[derive(Debug, Clone)]
pub struct RunOptions {
    pub workspace: PathBuf,
    /// State dir; hidden from steps when it lies inside the workspace.
    pub state_dir: PathBuf,
    pub inputs: BTreeMap<String, Value>,
    pub jobs: usize,
    pub fail_fast: bool,
    /// Step limits before the workflow's `sandbox:` settings (the built-in defaults, or the
    /// `DOCKER_*` variables: `Limits::from_env`).
    pub base_limits: Limits,
    /// Extra read-only paths the operator grants every isolated step (canonical; see
    /// `secureclaw_sandbox::grants`), before the workflow's own `sandbox.read_only`.
    pub read_only: Vec<PathBuf>,
    /// The optional command risk model (feature `ml`): it may raise a shell step's tier, never
    /// lower it. `None`: the heuristics stand alone, and `risk_model_status` says why.
    pub risk_model: Option<Arc<secureclaw_llm::CommandRiskModel>>,
    /// What the run record says about the risk model.
    pub risk_model_status: String,
    /// The run id (the session picks it so a handle exists before the run starts); a new
    /// one when `None`.
    pub run_id: Option<String>,
    /// Continue a parked run instead of starting one.
    pub resume: Option<Resume>,
    /// How the run was submitted, saved with the run if it parks.
    pub request: Value,
    /// Who or what started the run, when not the session's actor (`trigger:NAME`, ...).
    pub started_by: Option<String>,
}

/// A parked run to continue.
#[derive(Debug, Clone)]
pub struct Resume {
    pub record: RunRecord,
    pub views: BTreeMap<String, StepView>,
    /// Decisions given while the run was parked, by step.
    pub decisions: BTreeMap<String, StepDecision>,
    pub write_seq: u32,
    /// Who resumed it.
    pub by: String,
    /// The steps a retry runs again (their record already reset to pending); empty when a
    /// parked run resumes.
    pub retried: Vec<String>,
}

pub struct Engine {
    pub sandbox: Arc<dyn Sandbox>,
    pub approver: Arc<dyn Approver>,
    pub policy: Policy,
    pub events: EventSink,
    pub store: Arc<RunStore>,
}

/// What a resumed run brings besides its record.
struct Resumed {
    views: BTreeMap<String, StepView>,
    decisions: BTreeMap<String, StepDecision>,
    write_seq: u32,
    by: String,
    retried: Vec<String>,
}

/// A parked record going on: finished steps stay finished, gates and what never started
/// become pending again.
fn reopened(mut record: RunRecord, node: Option<&str>) -> RunRecord {
    record.state = RunState::Running;
    record.message = None;
    record.finished_at = None;
    record.pid = std::process::id();
    record.node = node.map(str::to_owned);
    for s in &mut record.steps {
        if matches!(s.state, StepState::WaitingApproval | StepState::Pending) {
            s.state = StepState::Pending;
            s.reason = None;
        }
    }
    record
}

/// What came of an approval gate.
enum Approval {
    Given(String),
    Denied {
        by: String,
        why: String,
        /// Denied at a prompt: the run stops. Denied while parked: only the step is skipped.
        stop_run: bool,
    },
    /// Nobody can answer now: the run parks.
    Parked {
        why: String,
        request: ApprovalRequest,
    },
}

/// Results of finished steps, as templates see them.
#[derive(Debug, Default)]
struct Results(RwLock<HashMap<String, StepView>>, Taint);

/// Which steps' output the detector flagged, and which of their text fields templates read
/// since the last [`Taint::take`]. The scheduler renders one step at a time, so what was read
/// between two takes is what that step's condition, env and action took.
#[derive(Debug, Default)]
struct Taint {
    flagged: RwLock<HashSet<String>>,
    read: std::sync::Mutex<BTreeSet<String>>,
}

impl Taint {
    fn flag(&self, step: &str) {
        if let Ok(mut f) = self.flagged.write() {
            f.insert(step.to_string());
        }
    }

    fn is_flagged(&self, step: &str) -> bool {
        self.flagged.read().is_ok_and(|f| f.contains(step))
    }

    /// `steps.X.FIELD` read from flagged output since the last call.
    fn take(&self) -> Vec<String> {
        self.read
            .lock()
            .map(|mut r| std::mem::take(&mut *r).into_iter().collect())
            .unwrap_or_default()
    }
}

impl Object for Results {
    fn get_value(self: &Arc<Self>, key: &JinjaValue) -> Option<JinjaValue> {
        let id = key.as_str()?;
        let map = self.0.read().ok()?;
        let view = map.get(id)?;
        if self.1.is_flagged(id) {
            return Some(JinjaValue::from_object(TaintedView {
                id: id.to_string(),
                view: view.clone(),
                results: self.clone(),
            }));
        }
        Some(JinjaValue::from_serialize(view))
    }
}

/// A flagged step's results: reading a text field marks the step rendering now as taking
/// untrusted content. `exit_code` carries no text and is read freely.
#[derive(Debug)]
struct TaintedView {
    id: String,
    view: StepView,
    results: Arc<Results>,
}

impl Object for TaintedView {
    fn get_value(self: &Arc<Self>, key: &JinjaValue) -> Option<JinjaValue> {
        let field = key.as_str()?;
        let text = match field {
            "output" => &self.view.output,
            "stdout" => &self.view.stdout,
            "stderr" => &self.view.stderr,
            "exit_code" => return Some(JinjaValue::from(self.view.exit_code)),
            _ => return None,
        };
        if let Ok(mut r) = self.results.1.read.lock() {
            r.insert(format!("steps.{}.{field}", self.id));
        }
        Some(JinjaValue::from(text.as_str()))
    }

    fn enumerate(self: &Arc<Self>) -> minijinja::value::Enumerator {
        minijinja::value::Enumerator::Str(&crate::template::STEP_FIELDS)
    }
}

fn merged_limits(
    base: &Limits,
    wf: &SandboxSettings,
    step: &Step,
) -> (Limits, bool, Option<String>) {
    let mut limits = base.clone();
    let mut allow_degraded = false;
    let mut image = None;
    for s in std::iter::once(wf).chain(step.sandbox.as_ref()) {
        if let Some(m) = s.memory.as_ref().and_then(|m| m.parse().ok()) {
            limits.memory_bytes = m;
        }
        if let Some(c) = s.cpus {
            limits.cpus = c;
        }
        if let Some(p) = s.pids {
            limits.pids = p;
        }
        if let Some(t) = s.timeout.as_ref().and_then(|t| t.parse().ok()) {
            limits.timeout = t;
        }
        if let Some(o) = s.output_cap.as_ref().and_then(|o| o.parse().ok()) {
            limits.output_cap = usize::try_from(o).unwrap_or(usize::MAX);
        }
        if let Some(d) = s.disk.as_ref().and_then(|d| d.parse().ok()) {
            limits.disk_bytes = d;
        }
        if let Some(a) = s.allow_degraded {
            allow_degraded = a;
        }
        if let Some(i) = &s.image {
            image = Some(i.clone());
        }
    }
    if let Some(t) = step.timeout.as_ref().and_then(|t| t.parse().ok()) {
        limits.timeout = t;
    }
    // The operator's write budget is also the ceiling: a workflow may lower it, not raise it.
    limits.disk_bytes = limits.disk_bytes.min(base.disk_bytes);
    (limits, allow_degraded, image)
}

/// Every step's read-only grants (operator's, then the workflow's, then its own), resolved and
/// checked before anything runs: a grant that does not exist, is a home directory or overlaps
/// the state dir stops the run with the reason. The `host` backend shows everything anyway.
/// `state_dir` is canonical, like the grants it is kept away from.
fn resolve_grants(
    wf: &Validated,
    opts: &RunOptions,
    state_dir: &Path,
    isolated: bool,
) -> Result<Vec<Vec<PathBuf>>, EngineError> {
    let n = wf.workflow.steps.len();
    if !isolated {
        return Ok(vec![Vec::new(); n]);
    }
    let home = std::env::var_os("HOME").map(PathBuf::from);
    let resolve = |list: &[String]| -> Result<Vec<PathBuf>, EngineError> {
        list.iter()
            .map(|e| {
                secureclaw_sandbox::grants::resolve(e, home.as_deref(), Some(state_dir))
                    .map_err(|e| EngineError::Policy(e.to_string()))
            })
            .collect()
    };
    let mut base = opts.read_only.clone();
    base.extend(resolve(&wf.workflow.sandbox.read_only)?);
    let mut out = Vec::with_capacity(n);
    for step in &wf.workflow.steps {
        let mut grants = base.clone();
        if let Some(s) = &step.sandbox {
            grants.extend(resolve(&s.read_only)?);
        }
        grants.dedup();
        out.push(grants);
    }
    Ok(out)
}

impl Engine {
    /// Run a validated workflow to completion (or stop, or cancellation).
    pub async fn run(
        &self,
        wf: &Validated,
        mut opts: RunOptions,
        cancel: CancellationToken,
    ) -> Result<RunRecord, EngineError> {
        let workspace = opts
            .workspace
            .canonicalize()
            .map_err(|e| EngineError::Workspace {
                path: opts.workspace.clone(),
                message: e.to_string(),
            })?;
        // Both paths are compared component by component from here on (masking the state dir
        // from shell steps, refusing it to engine-side actions): canonicalise once, so `-w .`,
        // a relative `-w` or a symlinked workspace cannot make them differ by spelling.
        let state_dir = canonical_state_dir(&opts.state_dir);
        let jail = Arc::new(Confinement::new(&workspace, Some(&state_dir)).map_err(|e| {
            EngineError::Workspace {
                path: opts.workspace.clone(),
                message: e.to_string(),
            }
        })?);
        if !self.sandbox.isolated() && !self.policy.allow_host {
            return Err(EngineError::Policy(
                "policy forbids the unisolated `host` backend".into(),
            ));
        }
        let step_grants = resolve_grants(wf, &opts, &state_dir, self.sandbox.isolated())?;
        let templates = Arc::new(Templates::new());
        // Values of `secret: true` inputs never reach the record, the ledger or the events.
        let secrets = Arc::new(crate::inputs::Secrets::new(&wf.workflow, &opts.inputs));
        let n = wf.workflow.steps.len();
        let source = wf.source.as_bytes();
        let (mut record, mut resumed) = match opts.resume.take() {
            Some(Resume {
                record,
                views,
                decisions,
                write_seq,
                by,
                retried,
            }) => (
                reopened(record, self.store.node()),
                Some(Resumed {
                    views,
                    decisions,
                    write_seq,
                    by,
                    retried,
                }),
            ),
            None => (self.new_record(wf, &opts, &workspace, &secrets), None),
        };
        // Capture the workspace before anything runs, when anything may write to it.
        let snap = if wf.workflow.steps.iter().any(|s| s.kind().may_write()) {
            let snap = Snapshotter::new(self.store.vault().clone(), &workspace, &state_dir)?;
            let s2 = snap.clone();
            let first = blocking(move || {
                let cache = s2.load_cache();
                let m = s2.scan(cache.as_ref())?;
                m.require_captured(s2.root())?;
                Ok(m)
            })
            .await?;
            if record.pre_manifest.is_none() {
                record.pre_manifest = Some(first.hash());
            }
            Some(Arc::new(SnapCtx {
                snap,
                run_id: record.run_id.clone(),
                last: std::sync::Mutex::new(Arc::new(first)),
            }))
        } else {
            None
        };
        let mut write_seq = resumed.as_ref().map(|r| r.write_seq).unwrap_or(0);
        if let Some(r) = &resumed {
            let entry = if r.retried.is_empty() {
                self.store.entry(kind::RUN_RESUMED).result(
                    json!({"by": r.by, "workflow_hmac": self.store.digest("workflow", source)}),
                )
            } else {
                self.store.entry(kind::RUN_RETRIED).result(json!({
                    "by": r.by,
                    "steps": r.retried,
                    "workflow_hmac": self.store.digest("workflow", source),
                }))
            };
            self.store.record(entry.run(record.run_id.clone()));
        } else {
            self.store.record(
            self.store
                .entry(kind::RUN_STARTED)
                .run(record.run_id.clone())
                .result(json!({
                    "workflow": record.workflow,
                    "workflow_file": record.workflow_file,
                    "workflow_hmac": self.store.digest("workflow", source),
                    "workspace": record.workspace,
                    "backend": record.backend,
                    "isolated": record.isolated,
                    "inputs_hmac": self.store.digest("inputs", &serde_json::to_vec(&record.inputs).unwrap_or_default()),
                    "provenance": record.provenance,
                    "started_by": record.started_by,
                })),
        );
            if !record.approval.nodes.is_empty() {
                self.store.record(
                self.store
                    .entry(kind::APPROVAL_GIVEN)
                    .run(record.run_id.clone())
                    .result(json!({"scope": "plan", "by": record.approval.by, "tiers": record.approval.tiers, "nodes": record.approval.nodes})),
            );
            }
        }
        self.store.save_async(&record).await?;
        match &resumed {
            Some(r) if r.retried.is_empty() => {
                (self.events)(&RunEvent::RunResumed { by: r.by.clone() })
            }
            Some(r) => (self.events)(&RunEvent::RunRetried {
                by: r.by.clone(),
                steps: r.retried.clone(),
            }),
            None => (self.events)(&RunEvent::RunStarted {
                workflow: record.workflow.clone(),
                steps: n,
                backend: record.backend.clone(),
                isolated: record.isolated,
            }),
        }
        if !record.isolated {
            (self.events)(&RunEvent::Warning {
                message: "running on the `host` backend: steps are NOT isolated from this machine"
                    .into(),
            });
        }

        let inputs = JinjaValue::from_serialize(&opts.inputs);
        let results = Arc::new(Results::default());
        if let Some(r) = &mut resumed
            && let Ok(mut m) = results.0.write()
        {
            m.extend(std::mem::take(&mut r.views));
            // A retried step's results from its failed attempt are not its results any more.
            for id in &r.retried {
                m.remove(id);
            }
        }
        // What was flagged before the run parked stays flagged: its verdict is in the record.
        for s in &record.steps {
            if s.screening.as_ref().is_some_and(|sc| sc.flagged) {
                results.1.flag(&s.id);
            }
        }
        let steps_value = JinjaValue::from_dyn_object(results.clone());
        // Workflow env may use inputs only; render it once.
        let base_ctx = minijinja::context! { inputs => inputs.clone() };
        let mut wf_env = BTreeMap::new();
        for (k, v) in &wf.workflow.env {
            match templates.render(v, &base_ctx) {
                Ok(r) => {
                    wf_env.insert(k.clone(), r);
                }
                Err(e) => {
                    record.state = RunState::Failed;
                    record.message = Some(format!("workflow env `{k}`: {e}"));
                    return self.finish(record).await;
                }
            }
        }

        let mut remaining_deps: Vec<usize> = wf.deps.iter().map(Vec::len).collect();
        let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); n];
        for (i, ds) in wf.deps.iter().enumerate() {
            for &d in ds {
                dependents[d].push(i);
            }
        }
        let position: Vec<usize> = {
            let mut p = vec![0; n];
            for (k, &i) in wf.order.iter().enumerate() {
                p[i] = k;
            }
            p
        };
        // On resume, what already finished is not started again, but it still goes through the
        // queue in graph order: a step that ran after a failure and stays done on a retry
        // releases its dependents only once the retried steps it needs are final again.
        let mut ready: Vec<usize> = (0..n).filter(|&i| remaining_deps[i] == 0).collect();
        // What each step saw upstream when it was reached (for `success()`/`failure()`).
        let mut upstream: Vec<UpstreamStatus> = vec![
            UpstreamStatus {
                success: true,
                failure: false,
            };
            n
        ];
        let decisions = resumed
            .as_mut()
            .map(|r| std::mem::take(&mut r.decisions))
            .unwrap_or_default();
        let mut pending_gates: Vec<PendingApproval> = Vec::new();
        let mut denied: Option<String> = None;
        let jobs = Arc::new(Semaphore::new(opts.jobs.max(1)));
        let writer = Arc::new(Mutex::new(()));
        let run_cancel = cancel.child_token();
        let mut running: JoinSet<Finished> = JoinSet::new();
        let mut stop: Option<(RunState, String)> = None;
        // A parked run resumed after a failure (its failure path was waiting for approval)
        // still failed, whatever comes next.
        let mut failed_any = record.steps.iter().any(failed_the_run);
        let mut last_save = Instant::now();
        // The first save that failed mid-run: the run stops and ends with it.
        let mut halted: Option<crate::record::StoreError> = None;

        loop {
            // Start everything that is ready, in topological order, unless the run is stopping.
            ready.sort_by_key(|&i| std::cmp::Reverse(position[i]));
            while stop.is_none() && !run_cancel.is_cancelled() {
                let Some(i) = ready.pop() else { break };
                let step = &wf.workflow.steps[i];
                upstream[i] = upstream_status(&record, &wf.deps[i], &upstream);
                if record.steps[i].state.is_final() {
                    release(i, &mut ready, &mut remaining_deps, &dependents);
                    continue;
                }
                // By default (`success()`) a step runs only when everything upstream succeeded;
                // a condition that calls a status function decides for itself.
                let decides = step
                    .condition
                    .as_deref()
                    .is_some_and(|c| !templates.status_functions(c).is_empty());
                if !upstream[i].success && !decides {
                    let why = skip_reason(&record, &wf.deps[i], &upstream);
                    self.settle(
                        &mut record,
                        StepState::Skipped,
                        i,
                        why,
                        &mut ready,
                        &mut remaining_deps,
                        &dependents,
                    );
                    continue;
                }
                // What this step reads of flagged output, from here to its rendered action.
                results.1.take();
                let ctx = minijinja::context! {
                    inputs => inputs.clone(),
                    steps => steps_value.clone(),
                    env => JinjaValue::from_serialize(env_for(&wf_env, step, &templates, &inputs, &steps_value).unwrap_or_default()),
                };
                if let Some(cond) = &step.condition {
                    match templates.eval_condition_after(cond, &ctx, Some(upstream[i])) {
                        Ok(true) => {}
                        Ok(false) => {
                            self.settle(
                                &mut record,
                                StepState::Skipped,
                                i,
                                format!("condition `{cond}` is false"),
                                &mut ready,
                                &mut remaining_deps,
                                &dependents,
                            );
                            continue;
                        }
                        Err(e) => {
                            failed_any |= self.settle_failed(
                                &mut record,
                                step,
                                i,
                                format!("`if` condition: {e}"),
                                &mut ready,
                                &mut remaining_deps,
                                &dependents,
                            );
                            continue;
                        }
                    }
                }
                let rendered =
                    match render_step(step, &templates, &ctx, &wf_env, &inputs, &steps_value) {
                        Ok(r) => r,
                        Err(e) => {
                            let fails_run = self.settle_failed(
                                &mut record,
                                step,
                                i,
                                format!("template error in step `{}`: {e}", step.id),
                                &mut ready,
                                &mut remaining_deps,
                                &dependents,
                            );
                            failed_any |= fails_run;
                            if opts.fail_fast && fails_run {
                                stop = Some((
                                    RunState::Failed,
                                    format!("step `{}` failed (--fail-fast)", step.id),
                                ));
                            }
                            continue;
                        }
                    };
                record.steps[i].rendered = Some(secrets.scrub_json(&rendered.to_json(step)));
                // The tier of what will really run: templating can make a command more dangerous.
                let risk = effective_risk(&wf.risk[i], &rendered, opts.risk_model.as_deref());
                record.steps[i].tier = risk.tier;
                record.steps[i].rule = risk.rule.clone();
                // What the approval prompt and the events show: secrets already scrubbed.
                let summary = secrets.scrub(&rendered.summary());
                let untrusted = results.1.take();
                let taint = (!untrusted.is_empty()).then(|| taint_reason(&record, &untrusted));
                record.steps[i].untrusted_inputs = untrusted;
                if risk.needs_approval() || taint.is_some() {
                    let decision = self
                        .approve(
                            &record,
                            &risk,
                            step,
                            &summary,
                            decisions.get(&step.id),
                            taint.as_deref(),
                        )
                        .await;
                    let entry = self
                        .store
                        .entry(kind::APPROVAL_GIVEN)
                        .run(record.run_id.clone())
                        .step(step.id.clone())
                        .tier(json!(risk.tier));
                    match decision {
                        Approval::Given(by) => {
                            self.store
                                .record(entry.result(json!({"approved": true, "by": by, "rule": risk.rule, "untrusted_inputs": record.steps[i].untrusted_inputs})));
                            (self.events)(&RunEvent::ApprovalDecided {
                                step: step.id.clone(),
                                approved: true,
                                by: by.clone(),
                            });
                            record.steps[i].approval = Some(by);
                        }
                        Approval::Denied { by, why, stop_run } => {
                            self.store.record(
                                entry.result(json!({"approved": false, "by": by, "reason": why})),
                            );
                            (self.events)(&RunEvent::ApprovalDecided {
                                step: step.id.clone(),
                                approved: false,
                                by,
                            });
                            if stop_run {
                                record.steps[i].state = StepState::Skipped;
                                record.steps[i].reason = Some(why.clone());
                                stop = Some((RunState::AwaitingApproval, why));
                                break;
                            }
                            // A decision given to a parked run: the step and what needs it
                            // are skipped, independent branches go on.
                            denied.get_or_insert(why.clone());
                            self.settle(
                                &mut record,
                                StepState::Skipped,
                                i,
                                why,
                                &mut ready,
                                &mut remaining_deps,
                                &dependents,
                            );
                            continue;
                        }
                        Approval::Parked { why, request } => {
                            self.store.record(
                                entry.result(
                                    json!({"approved": false, "reason": why, "parked": true}),
                                ),
                            );
                            record.steps[i].state = StepState::WaitingApproval;
                            record.steps[i].reason = Some(why.clone());
                            pending_gates.push(PendingApproval {
                                hash: request_hash(&request),
                                request,
                            });
                            stop = Some((RunState::AwaitingApproval, why));
                            break;
                        }
                    }
                    // An approval is worth persisting at once.
                    if let Err(e) = self.store.save_async(&record).await {
                        halt(&mut halted, &mut stop, &run_cancel, e);
                        break;
                    }
                    last_save = Instant::now();
                }
                let (limits, allow_degraded, image) =
                    merged_limits(&opts.base_limits, &wf.workflow.sandbox, step);
                record.steps[i].state = StepState::Running;
                record.steps[i].started_at = Some(now_rfc3339());
                self.store.record(
                    self.store
                        .entry(kind::STEP_STARTED)
                        .run(record.run_id.clone())
                        .step(step.id.clone())
                        .tier(json!(risk.tier))
                        .result(json!({"rule": risk.rule, "action": record.steps[i].rendered})),
                );
                // A run executed under a lease (a shared store's work queue) stores each step's
                // start, checking the lease in the same commit, before the step runs: a node
                // cut off from the cluster starts nothing the cluster does not know about, and
                // the node that rolls the run back sees every step that may have changed files.
                if self.store.lease_of(&record.run_id).is_some() {
                    if let Err(e) = self.store.save_async(&record).await {
                        record.steps[i].state = StepState::Pending;
                        record.steps[i].started_at = None;
                        halt(&mut halted, &mut stop, &run_cancel, e);
                        break;
                    }
                    last_save = Instant::now();
                }
                (self.events)(&RunEvent::StepStarted {
                    step: step.id.clone(),
                    attempt: 1,
                    tier: risk.tier,
                    summary,
                });
                let kind = step.kind();
                let job = StepJob {
                    index: i,
                    step: step.clone(),
                    rendered,
                    limits,
                    allow_degraded,
                    image,
                    jail: jail.clone(),
                    read_only: step_grants[i].clone(),
                    sandbox: self.sandbox.clone(),
                    events: self.events.clone(),
                    cancel: run_cancel.child_token(),
                    snap: snap.clone(),
                };
                let (jobs, writer, secrets) = (jobs.clone(), writer.clone(), secrets.clone());
                running.spawn(async move {
                    let _permit = jobs.acquire_owned().await;
                    let _write_guard = if job.step.kind().may_write() {
                        Some(writer.lock_owned().await)
                    } else {
                        None
                    };
                    let mut f = execute(job).await;
                    // Screened here, beside the other steps, not in the scheduler loop: with the
                    // semantic layer a long output takes a noticeable time.
                    if matches!(f.state, StepState::Succeeded | StepState::Failed) {
                        let streams = recorded_streams(kind, &f.view, &secrets);
                        f.screening = blocking_screen(streams).await;
                    }
                    f
                });
            }
            if last_save.elapsed() >= SAVE_INTERVAL {
                if let Err(e) = self.store.save_async(&record).await {
                    halt(&mut halted, &mut stop, &run_cancel, e);
                }
                last_save = Instant::now();
            }
            if running.is_empty() {
                break;
            }
            let done = tokio::select! {
                d = running.join_next() => d,
                _ = cancel.cancelled(), if !run_cancel.is_cancelled() => {
                    run_cancel.cancel();
                    stop.get_or_insert((RunState::Cancelled, "cancelled".into()));
                    continue;
                }
            };
            let Some(Ok(mut f)) = done else { continue };
            let i = f.index;
            let rec = &mut record.steps[i];
            rec.state = f.state;
            rec.finished_at = Some(now_rfc3339());
            rec.duration_ms = Some(f.duration.as_millis() as u64);
            rec.output = secrets.scrub(&f.view.output);
            rec.stdout = secrets.scrub(&f.view.stdout);
            rec.stderr = secrets.scrub(&f.view.stderr);
            rec.output_cut = f.output_cut;
            rec.exit_code = f.exit_code;
            rec.reason = f.reason.as_deref().map(|r| secrets.scrub(r));
            if f.state == StepState::Failed && wf.workflow.steps[i].continue_on_error {
                rec.continued = true;
                rec.reason = Some(continued_reason(rec.reason.take(), f.exit_code));
            }
            rec.enforcement = f.enforcement;
            rec.egress = f.egress;
            rec.attempts = f.attempts;
            // What the step brought back is untrusted: screened once, as recorded (scrubbed).
            rec.screening = f.screening.take();
            let flagged = rec.screening.as_ref().filter(|sc| sc.flagged);
            if let Some(sc) = flagged {
                results.1.flag(&rec.id);
                if let Some(top) = sc.top() {
                    (self.events)(&RunEvent::UntrustedContentFlagged {
                        step: rec.id.clone(),
                        stream: top.stream.clone(),
                        layer: top.layer.clone(),
                        pattern: top.pattern_id.clone(),
                        score: sc.score,
                    });
                }
            }
            let mut inverse = json!({"class": rec.inverse});
            if let Some(c) = f.capture {
                write_seq += 1;
                rec.write_seq = Some(write_seq);
                rec.pre_manifest = Some(c.pre_hash);
                rec.post_manifest = Some(c.post_hash);
                inverse = crate::revert::inverse_json(
                    rec.inverse,
                    &c.changes,
                    wf.workflow.steps[i].compensate.as_deref(),
                    &|what, data| self.store.digest(what, data),
                );
                rec.changes = Some(c.changes);
            } else if rec.kind == ActionKind::Http {
                inverse = crate::revert::inverse_json(
                    rec.inverse,
                    &ChangeSet::default(),
                    wf.workflow.steps[i].compensate.as_deref(),
                    &|what, data| self.store.digest(what, data),
                );
            }
            let wrote = rec.changes.as_ref().is_some_and(|c| !c.is_empty());
            let ledger_kind = if f.refused {
                kind::SANDBOX_REFUSED
            } else if f.state == StepState::Failed {
                kind::STEP_FAILED
            } else {
                kind::STEP_FINISHED
            };
            self.store.record(
                self.store
                    .entry(ledger_kind)
                    .run(record.run_id.clone())
                    .step(rec.id.clone())
                    .tier(json!(rec.tier))
                    .enforcement(rec.enforcement.as_ref().map(|e| json!(e)).unwrap_or(Value::Null))
                    .manifests(rec.pre_manifest.clone(), rec.post_manifest.clone())
                    .inverse(inverse)
                    .result(json!({"state": rec.state, "exit_code": rec.exit_code, "reason": rec.reason, "duration_ms": rec.duration_ms, "attempts": rec.attempts, "egress": egress_summary(&rec.egress), "screening": screening_summary(rec.screening.as_ref())})),
            );
            for (stream, text) in [
                ("output", &rec.output),
                ("stdout", &rec.stdout),
                ("stderr", &rec.stderr),
            ] {
                // A shell step's `output` is its stdout: sent once.
                if stream == "output" && rec.kind == ActionKind::Shell {
                    continue;
                }
                for ev in crate::events::output_events(&rec.id, stream, text) {
                    (self.events)(&ev);
                }
            }
            for e in &rec.egress {
                // `{"verdict": "refused", "reason": ...}` or `{"verdict": "allowed", ...}`.
                let decision = serde_json::to_value(&e.decision).unwrap_or_default();
                let allowed = decision.get("verdict").and_then(Value::as_str) == Some("allowed");
                let reason = (!allowed).then(|| {
                    decision
                        .get("reason")
                        .map(Value::to_string)
                        .unwrap_or_default()
                });
                (self.events)(&RunEvent::Egress {
                    step: rec.id.clone(),
                    host: e.host.clone(),
                    port: e.port,
                    allowed,
                    reason,
                });
            }
            (self.events)(&RunEvent::StepFinished {
                step: rec.id.clone(),
                state: f.state,
                duration_ms: f.duration.as_millis() as u64,
                exit_code: f.exit_code,
                reason: rec.reason.clone(),
            });
            // A failed step's results are there for the steps that run after it (a failure
            // path reporting its stderr, the dependents of a continued step).
            if matches!(f.state, StepState::Succeeded | StepState::Failed)
                && let Ok(mut m) = results.0.write()
            {
                m.insert(rec.id.clone(), f.view);
            }
            if f.state == StepState::Failed && !rec.continued {
                failed_any = true;
                if opts.fail_fast && stop.is_none() {
                    stop = Some((
                        RunState::Failed,
                        format!("step `{}` failed (--fail-fast)", rec.id),
                    ));
                    run_cancel.cancel();
                }
            }
            release(i, &mut ready, &mut remaining_deps, &dependents);
            if wrote {
                // A change set is what revert needs: make it durable now, not at the next tick.
                if let Err(e) = self.store.save_async(&record).await {
                    halt(&mut halted, &mut stop, &run_cancel, e);
                }
                last_save = Instant::now();
            }
        }

        // Whatever never started stays pending under an approval stop, and is cancelled otherwise.
        let (state, message) = match stop {
            Some((RunState::AwaitingApproval, m)) => (RunState::AwaitingApproval, Some(m)),
            Some((s, m)) => {
                for rec in record
                    .steps
                    .iter_mut()
                    .filter(|r| r.state == StepState::Pending)
                {
                    rec.state = StepState::Cancelled;
                }
                (s, Some(m))
            }
            None if failed_any => (RunState::Failed, None),
            None if denied.is_some() => (RunState::Failed, denied.clone()),
            None => (RunState::Succeeded, None),
        };
        record.state = state;
        record.message = message;
        // Backend cleanup still in flight (docker removes containers off the critical path).
        self.sandbox.flush().await;
        if let Some(e) = halted {
            return Err(e.into());
        }
        if let Some(ctx) = &snap {
            // The last manifest becomes the stat cache of the next run; the in-flight record is
            // no longer needed once the step results are saved with the run.
            let ctx = ctx.clone();
            blocking(move || ctx.snap.save_cache(&ctx.last())).await?;
        }
        let parked = state == RunState::AwaitingApproval && !pending_gates.is_empty();
        // What the run leaves to go on from later: a parked run its gates, a failed one what a
        // retry from the failed step needs. Both hold unscrubbed inputs and step views, so they
        // live in sealed rows, never in the record.
        let keep = |pending: Vec<PendingApproval>| ParkState {
            run_id: record.run_id.clone(),
            workflow_source: wf.source.to_string(),
            workflow_file: wf.file.clone(),
            inputs: opts.inputs.clone(),
            views: results
                .0
                .read()
                .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
                .unwrap_or_default(),
            pending,
            manifest: snap.as_ref().map(|c| (*c.last()).clone()),
            write_seq,
            request: opts.request.clone(),
            parked_at: now_rfc3339(),
        };
        let mut extra = Batch::default();
        if state == RunState::Failed {
            extra
                .put_json(Table::Retries, record.run_id.clone(), &keep(Vec::new()))
                .map_err(crate::record::StoreError::from)?;
        } else if resumed.as_ref().is_some_and(|r| !r.retried.is_empty()) {
            // A retried run that got past its failure needs no retry state any more. Only a
            // retry has such a row to drop: other runs never touch the table.
            extra.deletes.push((Table::Retries, record.run_id.clone()));
        }
        if parked {
            let park = keep(pending_gates.clone());
            extra
                .put_json(Table::Parked, record.run_id.clone(), &park)
                .map_err(crate::record::StoreError::from)?;
            self.store.record(
                self.store
                    .entry(kind::RUN_PARKED)
                    .run(record.run_id.clone())
                    .result(json!({"steps": pending_gates.iter().map(|p| &p.request.step).collect::<Vec<_>>()})),
            );
            (self.events)(&RunEvent::RunParked {
                steps: pending_gates
                    .iter()
                    .map(|p| p.request.step.clone())
                    .collect(),
            });
        } else if resumed.is_some() {
            extra.deletes.push((Table::Parked, record.run_id.clone()));
        }
        let out = self.finish_with(record, extra).await?;
        if snap.is_some() {
            crate::snapshot::clear_inflight(
                self.store.vault(),
                &out.run_id,
                out.steps.iter().map(|s| s.id.as_str()),
            )?;
        }
        Ok(out)
    }

    /// The record of a run about to start: every step pending.
    fn new_record(
        &self,
        wf: &Validated,
        opts: &RunOptions,
        workspace: &Path,
        secrets: &crate::inputs::Secrets,
    ) -> RunRecord {
        RunRecord {
            run_id: opts.run_id.clone().unwrap_or_else(new_run_id),
            workflow: wf.workflow.name.clone(),
            workflow_file: wf.file.clone(),
            workflow_sha256: wf.sha256.clone(),
            workspace: workspace.to_path_buf(),
            backend: self.sandbox.name().to_string(),
            isolated: self.sandbox.isolated(),
            started_at: now_rfc3339(),
            finished_at: None,
            state: RunState::Running,
            message: None,
            pid: std::process::id(),
            node: self.store.node().map(str::to_owned),
            inputs: secrets.recorded_inputs(&opts.inputs),
            approval: self.plan_approval(wf),
            risk_model: Some(opts.risk_model_status.clone()),
            screening: Some(crate::screen::Screener::shared().status().to_string()),
            provenance: wf.provenance.clone(),
            started_by: opts.started_by.clone(),
            steps: wf
                .workflow
                .steps
                .iter()
                .enumerate()
                .map(|(i, s)| StepRecord {
                    needs: s.needs.clone(),
                    compensate: s.compensate.as_deref().cloned(),
                    network: s.network.clone(),
                    ..StepRecord::pending(
                        s.id.clone(),
                        s.kind(),
                        wf.risk[i].tier,
                        wf.risk[i].rule.clone(),
                        wf.inverse[i],
                    )
                })
                .collect(),
            pre_manifest: None,
            reverts: Vec::new(),
        }
    }

    async fn finish(&self, record: RunRecord) -> Result<RunRecord, EngineError> {
        self.finish_with(record, Batch::default()).await
    }

    /// Close the run: the record, its last ledger entries and `extra` rows in one commit.
    async fn finish_with(
        &self,
        mut record: RunRecord,
        extra: Batch,
    ) -> Result<RunRecord, EngineError> {
        record.finished_at = Some(now_rfc3339());
        self.store.record(
            self.store
                .entry(kind::RUN_FINISHED)
                .run(record.run_id.clone())
                .result(json!({"state": record.state, "message": record.message})),
        );
        self.store.save_with(&record, extra).await?;
        (self.events)(&RunEvent::RunFinished {
            state: record.state,
            message: record.message.clone(),
        });
        Ok(record)
    }

    /// The up-front approval: exactly the nodes the pre-approved tiers cover.
    fn plan_approval(&self, wf: &Validated) -> PlanApproval {
        let tiers: Vec<Tier> = self
            .policy
            .pre_approved
            .iter()
            .copied()
            .filter(|t| t.needs_approval())
            .collect();
        let nodes = wf
            .workflow
            .steps
            .iter()
            .zip(&wf.risk)
            .filter(|(_, r)| r.needs_approval() && self.policy.covers(r.tier, r.forced_approval))
            .map(|(s, r)| ApprovedNode {
                id: s.id.clone(),
                tier: r.tier,
                domains: s.network.clone(),
            })
            .collect::<Vec<_>>();
        PlanApproval {
            by: if nodes.is_empty() {
                String::new()
            } else {
                "command line (--approve/--yes)".into()
            },
            tiers,
            nodes,
        }
    }

    async fn approve(
        &self,
        record: &RunRecord,
        risk: &NodeRisk,
        step: &Step,
        summary: &str,
        given: Option<&StepDecision>,
        taint: Option<&str>,
    ) -> Approval {
        // Untrusted content is not a tier an up-front `--approve TIER` covers: only `--yes`
        // (which also covers `approve: true`) or a decision lets it through.
        let covered = match taint {
            Some(_) => self.policy.approve_forced,
            None => record
                .approval
                .nodes
                .iter()
                .any(|n| n.id == step.id && n.tier >= risk.tier),
        };
        if covered {
            return Approval::Given(if taint.is_some() {
                "command line (--yes)".into()
            } else {
                record.approval.by.clone()
            });
        }
        let risk = &match taint {
            Some(why) => NodeRisk {
                tier: risk.tier,
                rule: UNTRUSTED_RULE.into(),
                reason: if risk.needs_approval() {
                    format!("{why}; and {}: {}", risk.rule, risk.reason)
                } else {
                    why.to_string()
                },
                forced_approval: true,
            },
            None => risk.clone(),
        };
        let request = ApprovalRequest {
            step: step.id.clone(),
            tier: risk.tier,
            rule: risk.rule.clone(),
            reason: if taint.is_none() && risk.forced_approval && !risk.tier.needs_approval() {
                "the step is marked `approve: true`".into()
            } else {
                risk.reason.clone()
            },
            summary: summary.to_string(),
            network: step.network.clone(),
        };
        if let Some(d) = given {
            if d.hash == request_hash(&request) {
                return if d.approved {
                    Approval::Given(d.by.clone())
                } else {
                    Approval::Denied {
                        why: format!(
                            "approval for step `{}` ({}) was denied by {}{}",
                            step.id,
                            risk.tier,
                            d.by,
                            d.reason
                                .as_deref()
                                .map(|r| format!(": {r}"))
                                .unwrap_or_default()
                        ),
                        by: d.by.clone(),
                        stop_run: false,
                    }
                };
            }
            (self.events)(&RunEvent::Warning {
                message: format!(
                    "step `{}` changed since {} {} it (its command, tier or reason differs): asking again",
                    step.id,
                    d.by,
                    if d.approved { "approved" } else { "denied" }
                ),
            });
        }
        (self.events)(&RunEvent::ApprovalNeeded {
            step: request.step.clone(),
            tier: request.tier,
            rule: request.rule.clone(),
            reason: request.reason.clone(),
            summary: request.summary.clone(),
        });
        match self.approver.decide(&request).await {
            Decision::Approved { by } => Approval::Given(by),
            Decision::Denied { by } => Approval::Denied {
                why: format!(
                    "approval for step `{}` ({}) was denied by {by}; the run stopped here",
                    step.id, risk.tier
                ),
                by,
                stop_run: true,
            },
            Decision::Unavailable => Approval::Parked {
                why: format!(
                    "step `{}` is {} ({}: {}) and needs approval; the run is parked: `secureclaw approve {} --step {}` then `secureclaw resume {}` (or re-run with {})",
                    step.id,
                    risk.tier,
                    risk.rule,
                    risk.reason,
                    record.run_id,
                    step.id,
                    record.run_id,
                    if taint.is_some() {
                        "--yes".to_string()
                    } else if risk.tier.needs_approval() {
                        format!("--approve {}", risk.tier.as_str())
                    } else {
                        "--approve <tier> --yes".to_string()
                    }
                ),
                request,
            },
        }
    }

    #[allow(clippy::too_many_arguments)]
    /// Give a step that will not run its final state (skipped or failed before starting) and
    /// release its dependents.
    fn settle(
        &self,
        record: &mut RunRecord,
        state: StepState,
        i: usize,
        why: String,
        ready: &mut Vec<usize>,
        remaining: &mut [usize],
        dependents: &[Vec<usize>],
    ) {
        let rec = &mut record.steps[i];
        rec.state = state;
        rec.reason = Some(why.clone());
        self.store.record(
            self.store
                .entry(if state == StepState::Failed {
                    kind::STEP_FAILED
                } else {
                    kind::STEP_FINISHED
                })
                .run(record.run_id.clone())
                .step(rec.id.clone())
                .result(json!({"state": state, "reason": why})),
        );
        (self.events)(&RunEvent::StepFinished {
            step: rec.id.clone(),
            state,
            duration_ms: 0,
            exit_code: None,
            reason: Some(why),
        });
        release(i, ready, remaining, dependents);
    }

    /// Fail a step before it starts (its condition or its templates). Returns whether the
    /// failure counts against the run: not when the step has `continue_on_error`.
    #[allow(clippy::too_many_arguments)]
    fn settle_failed(
        &self,
        record: &mut RunRecord,
        step: &Step,
        i: usize,
        why: String,
        ready: &mut Vec<usize>,
        remaining: &mut [usize],
        dependents: &[Vec<usize>],
    ) -> bool {
        let why = if step.continue_on_error {
            record.steps[i].continued = true;
            continued_reason(Some(why), None)
        } else {
            why
        };
        self.settle(
            record,
            StepState::Failed,
            i,
            why,
            ready,
            remaining,
            dependents,
        );
        !step.continue_on_error
    }
}

/// What a finished step brought back, as it will be recorded (secret inputs scrubbed), by
/// stream: a shell step's stdout and stderr, another action's output (a file read, an HTTP
/// response body), its stdout when that differs, and its stderr.
fn recorded_streams(
    kind: ActionKind,
    view: &StepView,
    secrets: &crate::inputs::Secrets,
) -> Vec<(&'static str, String)> {
    let mut streams = Vec::with_capacity(3);
    if kind != ActionKind::Shell {
        streams.push(("output", secrets.scrub(&view.output)));
    }
    if kind == ActionKind::Shell || view.stdout != view.output {
        streams.push(("stdout", secrets.scrub(&view.stdout)));
    }
    streams.push(("stderr", secrets.scrub(&view.stderr)));
    streams
}

/// Screen the streams once each, off the async threads.
/// A save failed in the middle of a run: nothing more may run unrecorded, so the run stops
/// (its running steps are cancelled, which rolls them back) and ends with the first such error
/// once they have.
fn halt(
    halted: &mut Option<crate::record::StoreError>,
    stop: &mut Option<(RunState, String)>,
    run_cancel: &CancellationToken,
    e: crate::record::StoreError,
) {
    stop.get_or_insert((RunState::Failed, e.to_string()));
    run_cancel.cancel();
    halted.get_or_insert(e);
}

async fn blocking_screen(streams: Vec<(&'static str, String)>) -> Option<crate::screen::Screening> {
    tokio::task::spawn_blocking(move || {
        let refs: Vec<(&str, &str)> = streams.iter().map(|(n, t)| (*n, t.as_str())).collect();
        crate::screen::Screener::shared().screen_streams(&refs)
    })
    .await
    .ok()
    .flatten()
}

/// What the ledger keeps of a screening: the verdict and the pattern ids, no text; the score
/// in thousandths (ledger entries carry integers only).
fn screening_summary(sc: Option<&crate::screen::Screening>) -> Value {
    match sc {
        None => Value::Null,
        Some(sc) => json!({
            "flagged": sc.flagged,
            "score_permille": crate::screen::permille(sc.score),
            "patterns": sc.findings.iter().map(|f| format!("{}:{}", f.stream, f.pattern_id)).collect::<Vec<_>>(),
        }),
    }
}

/// The rule an approval gate names when a step takes a value from flagged output.
const UNTRUSTED_RULE: &str = "untrusted-content";

/// Why a step that reads flagged output waits: each source and the finding that flagged it.
fn taint_reason(record: &RunRecord, read: &[String]) -> String {
    let sources: Vec<String> = read
        .iter()
        .map(|r| {
            let step = r
                .strip_prefix("steps.")
                .and_then(|rest| rest.rsplit_once('.'))
                .map(|(id, _)| id)
                .unwrap_or_default();
            let finding = record
                .step(step)
                .and_then(|s| s.screening.as_ref())
                .map(|sc| sc.headline())
                .unwrap_or_else(|| "flagged".into());
            format!("`{r}` ({finding})")
        })
        .collect();
    format!(
        "takes untrusted content the prompt-injection detector flagged: {}",
        sources.join(", ")
    )
}

/// A final step lets its dependents go once their other needs are final too.
fn release(i: usize, ready: &mut Vec<usize>, remaining: &mut [usize], dependents: &[Vec<usize>]) {
    for &d in &dependents[i] {
        remaining[d] -= 1;
        if remaining[d] == 0 {
            ready.push(d);
        }
    }
}

/// A step counts as having succeeded for what comes after it when it succeeded, or failed
/// with `continue_on_error`.
fn went_through(s: &StepRecord) -> bool {
    s.state == StepState::Succeeded || (s.state == StepState::Failed && s.continued)
}

/// A step failed and `continue_on_error` did not let it through: the run fails because of it.
fn failed_the_run(s: &StepRecord) -> bool {
    s.state == StepState::Failed && !s.continued
}

/// What the steps upstream of a step (its `needs`, transitively) came to, from the status each
/// of its needs saw when it was reached: every step's own outcome folds in what was above it.
fn upstream_status(record: &RunRecord, deps: &[usize], seen: &[UpstreamStatus]) -> UpstreamStatus {
    let mut status = UpstreamStatus {
        success: true,
        failure: false,
    };
    for &d in deps {
        let s = &record.steps[d];
        status.success &= went_through(s) && seen[d].success;
        status.failure |= failed_the_run(s) || seen[d].failure;
    }
    status
}

/// Why a step with the default `success()` does not run: the first need that did not go
/// through, or the step upstream of a need that did.
fn skip_reason(record: &RunRecord, deps: &[usize], seen: &[UpstreamStatus]) -> String {
    if let Some(&d) = deps.iter().find(|&&d| !went_through(&record.steps[d])) {
        let b = &record.steps[d];
        return match b.state {
            StepState::Skipped => format!("needs `{}`, which was skipped", b.id),
            StepState::Cancelled => format!("needs `{}`, which was cancelled", b.id),
            _ => format!("needs `{}`, which failed", b.id),
        };
    }
    let via = deps
        .iter()
        .find(|&&d| !seen[d].success)
        .map(|&d| record.steps[d].id.as_str())
        .unwrap_or_default();
    let what = if deps.iter().any(|&d| seen[d].failure) {
        "failed"
    } else {
        "did not succeed"
    };
    format!(
        "a step upstream of `{via}` {what} (only `if: failure()` or `if: always()` steps run after that)"
    )
}

/// A failed step's reason once `continue_on_error` let the run go on.
fn continued_reason(reason: Option<String>, exit_code: Option<i32>) -> String {
    let note = "continued (`continue_on_error: true`): the run goes on as if it had succeeded";
    match (reason, exit_code) {
        (Some(r), _) => format!("{r}; {note}"),
        (None, Some(c)) => format!("exit {c}; {note}"),
        (None, None) => note.to_string(),
    }
}

/// The state dir's canonical path; one that does not exist yet is its canonical parent joined
/// with its name.
fn canonical_state_dir(state_dir: &Path) -> PathBuf {
    if let Ok(c) = state_dir.canonicalize() {
        return c;
    }
    match (state_dir.parent(), state_dir.file_name()) {
        (Some(parent), Some(name)) => parent
            .canonicalize()
            .map(|p| p.join(name))
            .unwrap_or_else(|_| state_dir.to_path_buf()),
        _ => state_dir.to_path_buf(),
    }
}
