//! The scheduler: runs a validated workflow's DAG on tokio with bounded concurrency.
//!
//! - at most `jobs` steps at once; steps that may write the workspace never overlap;
//! - `if` conditions, per-step timeout, retry with exponential backoff;
//! - a failed step skips its dependents while independent branches finish (`fail_fast`
//!   cancels everything instead);
//! - a step needing approval that nobody gives stops the run: nothing starts after it;
//! - cancellation (Ctrl-C) kills running steps and marks the run cancelled.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use minijinja::value::{Object, Value as JinjaValue};
use secureclaw_sandbox::{ExecSpec, Limits, NetworkPolicy, Sandbox, SandboxError};
use secureclaw_vault::kind;
use serde_json::{Value, json};
use tokio::sync::{Mutex, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::actions;
use crate::events::{EventSink, RunEvent};
use crate::model::{ActionKind, RetrySpec, SandboxSettings, Step, Tier};
use crate::policy::{ApprovalRequest, Approver, Decision, Policy};
use crate::record::{
    ApprovedNode, PlanApproval, RunRecord, RunState, RunStore, StepRecord, StepState, new_run_id,
    now_rfc3339,
};
use crate::snapshot::{ChangeSet, Manifest, SnapshotError, Snapshotter};
use crate::template::{StepView, Templates};
use crate::validate::{NodeRisk, Validated};
use crate::workspace::Confinement;

/// The environment every step starts from; nothing is inherited from the engine.
const BASE_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
const DEFAULT_READ_LIMIT: u64 = 16 * 1024 * 1024;
const DEFAULT_HTTP_LIMIT: u64 = 4 * 1024 * 1024;
const DEFAULT_HTTP_TIMEOUT: Duration = Duration::from_secs(30);
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
}

pub struct Engine {
    pub sandbox: Arc<dyn Sandbox>,
    pub approver: Arc<dyn Approver>,
    pub policy: Policy,
    pub events: EventSink,
    pub store: RunStore,
}

/// Results of finished steps, as templates see them.
#[derive(Debug, Default)]
struct Results(RwLock<HashMap<String, StepView>>);

impl Object for Results {
    fn get_value(self: &Arc<Self>, key: &JinjaValue) -> Option<JinjaValue> {
        let map = self.0.read().ok()?;
        map.get(key.as_str()?).map(JinjaValue::from_serialize)
    }
}

/// What a step task reports back.
struct Finished {
    index: usize,
    state: StepState,
    view: StepView,
    exit_code: Option<i32>,
    reason: Option<String>,
    enforcement: Option<secureclaw_sandbox::EnforcementReport>,
    /// Connection attempts through the egress proxy.
    egress: Vec<secureclaw_sandbox::EgressEvent>,
    attempts: u32,
    duration: Duration,
    /// The backend refused to run the step (missing isolation layer, unavailable, unsupported).
    refused: bool,
    /// What the step changed in the workspace (steps that may write).
    capture: Option<Capture>,
}

/// A writing step's effect on the workspace.
struct Capture {
    changes: ChangeSet,
    pre_hash: String,
    post_hash: String,
}

/// Snapshots for one run: the capturer and the latest manifest (the in-memory stat cache).
struct SnapCtx {
    snap: Snapshotter,
    run_id: String,
    last: std::sync::Mutex<Arc<Manifest>>,
}

impl SnapCtx {
    fn last(&self) -> Arc<Manifest> {
        self.last
            .lock()
            .map(|m| m.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    fn set_last(&self, m: Arc<Manifest>) {
        match self.last.lock() {
            Ok(mut g) => *g = m,
            Err(p) => *p.into_inner() = m,
        }
    }

    /// Scan before a step and persist the result for crash recovery.
    async fn pre(self: &Arc<Self>, step: &str) -> Result<Arc<Manifest>, SnapshotError> {
        let (me, step) = (self.clone(), step.to_string());
        blocking(move || {
            let m = Arc::new(me.snap.scan(Some(&me.last()))?);
            // A path whose pre-image is missing could not be put back: the step does not run.
            m.require_captured(me.snap.root())?;
            me.snap.save_inflight(&me.run_id, &step, &m)?;
            me.set_last(m.clone());
            Ok(m)
        })
        .await
    }

    /// Scan after a step (hashing only what moved since `pre`). When storing the post-images
    /// fails (a full vault), a scan that only hashes still tells what to roll back: the
    /// error is returned with it.
    async fn post(
        self: &Arc<Self>,
        pre: Arc<Manifest>,
    ) -> Result<(Arc<Manifest>, Option<SnapshotError>), SnapshotError> {
        let me = self.clone();
        blocking(move || {
            let (m, stored) = match me.snap.scan(Some(&pre)) {
                Ok(m) => (m, None),
                Err(e) => (me.snap.scan_hash_only(Some(&pre))?, Some(e)),
            };
            let m = Arc::new(m);
            me.set_last(m.clone());
            Ok((m, stored))
        })
        .await
    }

    async fn save_changes(
        self: &Arc<Self>,
        step: &str,
        changes: ChangeSet,
    ) -> Result<(), SnapshotError> {
        let (me, step) = (self.clone(), step.to_string());
        blocking(move || me.snap.save_step_changes(&me.run_id, &step, &changes)).await
    }

    /// Put the workspace back to `pre`, then look again: what the first scan could not see (a
    /// directory it could not list until its mode was restored, a file a straggling process
    /// made after it) is undone too, until the workspace matches `pre` or passes run out.
    async fn rollback(
        self: &Arc<Self>,
        pre: Arc<Manifest>,
        changes: ChangeSet,
    ) -> Result<usize, SnapshotError> {
        const PASSES: usize = 3;
        let me = self.clone();
        blocking(move || {
            // A path that cannot be put back is reported after every other path was.
            let mut failed = None;
            let mut restore = |changes: &[crate::snapshot::Change]| {
                me.snap
                    .restore(changes)
                    .map_err(|e| failed = Some(e))
                    .unwrap_or(0)
            };
            let mut restored = restore(&changes.changes);
            for pass in 1..=PASSES {
                let now = me.snap.scan_hash_only(Some(&pre))?;
                let rest = crate::snapshot::diff(&pre, &now);
                if rest.is_empty() {
                    me.set_last(Arc::new(now));
                    return Ok(restored);
                }
                if pass == PASSES {
                    return Err(failed.unwrap_or_else(|| SnapshotError::Io {
                        path: me.snap.abs(&rest.changes[0].path),
                        source: std::io::Error::other(format!(
                            "the workspace still differs from before the step at {} path(s) after {PASSES} restores (is a process the step started still writing?)",
                            rest.len()
                        )),
                    }));
                }
                restored += restore(&rest.changes);
            }
            Ok(restored)
        })
        .await
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, SnapshotError> + Send + 'static,
) -> Result<T, SnapshotError> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| {
        Err(SnapshotError::Io {
            path: PathBuf::new(),
            source: std::io::Error::other(format!("snapshot task failed: {e}")),
        })
    })
}

/// Everything a step task needs, owned.
struct StepJob {
    index: usize,
    step: Step,
    rendered: Rendered,
    limits: Limits,
    allow_degraded: bool,
    image: Option<String>,
    /// The canonical workspace and state dir, built once per run.
    jail: Arc<Confinement>,
    /// Host paths the step may read (operator, workflow and step grants, resolved).
    read_only: Vec<PathBuf>,
    sandbox: Arc<dyn Sandbox>,
    events: EventSink,
    cancel: CancellationToken,
    snap: Option<Arc<SnapCtx>>,
}

/// A step's action after templating.
#[derive(Debug, Clone)]
enum Rendered {
    Read {
        path: Option<String>,
        glob: Option<String>,
        limit: u64,
    },
    Write {
        path: String,
        content: String,
        append: bool,
        mode: Option<String>,
    },
    Patch {
        path: String,
        diff: String,
    },
    Shell {
        command: String,
        env: BTreeMap<String, String>,
    },
    Http {
        url: String,
        headers: Vec<(String, String)>,
        body: Option<String>,
        json: Option<Value>,
        timeout: Duration,
        limit: u64,
    },
}

impl Rendered {
    fn summary(&self) -> String {
        match self {
            Rendered::Read { path: Some(p), .. } => format!("read {p}"),
            Rendered::Read { glob, .. } => {
                format!("read glob {}", glob.as_deref().unwrap_or_default())
            }
            Rendered::Write { path, append, .. } => {
                format!("{} {path}", if *append { "append to" } else { "write" })
            }
            Rendered::Patch { path, .. } => format!("patch {path}"),
            Rendered::Shell { command, .. } => command.clone(),
            Rendered::Http { url, .. } => format!("HTTP {url}"),
        }
    }

    fn to_json(&self, step: &Step) -> Value {
        match self {
            Rendered::Read { path, glob, .. } => json!({"read": {"path": path, "glob": glob}}),
            Rendered::Write {
                path,
                content,
                append,
                mode,
            } => {
                json!({"write": {"path": path, "bytes": content.len(), "append": append, "mode": mode}})
            }
            Rendered::Patch { path, diff } => json!({"patch": {"path": path, "diff": diff}}),
            Rendered::Shell { command, .. } => json!({"shell": command}),
            Rendered::Http { url, .. } => {
                json!({"http": {"method": step.http.as_ref().map(|h| h.method.as_str()), "url": url}})
            }
        }
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

impl Engine {
    /// Run a validated workflow to completion (or stop, or cancellation).
    pub async fn run(
        &self,
        wf: &Validated,
        opts: RunOptions,
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
        let secrets = crate::inputs::Secrets::new(&wf.workflow, &opts.inputs);
        let n = wf.workflow.steps.len();
        let source = std::fs::read(&wf.file).unwrap_or_default();
        let mut record = RunRecord {
            run_id: new_run_id(),
            workflow: wf.workflow.name.clone(),
            workflow_file: wf.file.clone(),
            workflow_sha256: sha256_hex(&source),
            workspace: workspace.clone(),
            backend: self.sandbox.name().to_string(),
            isolated: self.sandbox.isolated(),
            started_at: now_rfc3339(),
            finished_at: None,
            state: RunState::Running,
            message: None,
            pid: std::process::id(),
            inputs: secrets.recorded_inputs(&opts.inputs),
            approval: self.plan_approval(wf),
            risk_model: Some(opts.risk_model_status.clone()),
            steps: wf
                .workflow
                .steps
                .iter()
                .enumerate()
                .map(|(i, s)| StepRecord {
                    id: s.id.clone(),
                    kind: s.kind(),
                    state: StepState::Pending,
                    tier: wf.risk[i].tier,
                    rule: wf.risk[i].rule.clone(),
                    inverse: wf.inverse[i],
                    attempts: 0,
                    started_at: None,
                    finished_at: None,
                    duration_ms: None,
                    rendered: None,
                    output: String::new(),
                    stdout: String::new(),
                    stderr: String::new(),
                    exit_code: None,
                    reason: None,
                    enforcement: None,
                    egress: Vec::new(),
                    approval: None,
                    needs: s.needs.clone(),
                    changes: None,
                    pre_manifest: None,
                    post_manifest: None,
                    write_seq: None,
                    compensate: s.compensate.as_deref().cloned(),
                    network: s.network.clone(),
                })
                .collect(),
            pre_manifest: None,
            reverts: Vec::new(),
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
            record.pre_manifest = Some(first.hash());
            Some(Arc::new(SnapCtx {
                snap,
                run_id: record.run_id.clone(),
                last: std::sync::Mutex::new(Arc::new(first)),
            }))
        } else {
            None
        };
        let mut write_seq = 0u32;
        self.store.record(
            self.store
                .entry(kind::RUN_STARTED)
                .run(record.run_id.clone())
                .result(json!({
                    "workflow": record.workflow,
                    "workflow_file": record.workflow_file,
                    "workflow_hmac": self.store.digest("workflow", &source),
                    "workspace": record.workspace,
                    "backend": record.backend,
                    "isolated": record.isolated,
                    "inputs_hmac": self.store.digest("inputs", &serde_json::to_vec(&record.inputs).unwrap_or_default()),
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
        self.store.save(&record)?;
        (self.events)(&RunEvent::RunStarted {
            run_id: record.run_id.clone(),
            workflow: record.workflow.clone(),
            steps: n,
            backend: record.backend.clone(),
            isolated: record.isolated,
        });
        if !record.isolated {
            (self.events)(&RunEvent::Warning {
                message: "running on the `host` backend: steps are NOT isolated from this machine"
                    .into(),
            });
        }

        let inputs = JinjaValue::from_serialize(&opts.inputs);
        let results = Arc::new(Results::default());
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
                    return self.finish(record);
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
        let mut ready: Vec<usize> = (0..n).filter(|&i| remaining_deps[i] == 0).collect();
        let jobs = Arc::new(Semaphore::new(opts.jobs.max(1)));
        let writer = Arc::new(Mutex::new(()));
        let run_cancel = cancel.child_token();
        let mut running: JoinSet<Finished> = JoinSet::new();
        let mut stop: Option<(RunState, String)> = None;
        let mut failed_any = false;
        let mut last_save = Instant::now();

        loop {
            // Start everything that is ready, in topological order, unless the run is stopping.
            ready.sort_by_key(|&i| std::cmp::Reverse(position[i]));
            while stop.is_none() && !run_cancel.is_cancelled() {
                let Some(i) = ready.pop() else { break };
                let step = &wf.workflow.steps[i];
                // Dependencies that did not succeed skip this step.
                if let Some(blocker) = wf.deps[i]
                    .iter()
                    .find(|&&d| record.steps[d].state != StepState::Succeeded)
                {
                    let b = &record.steps[*blocker];
                    let why = match b.state {
                        StepState::Skipped => format!("needs `{}`, which was skipped", b.id),
                        StepState::Cancelled => format!("needs `{}`, which was cancelled", b.id),
                        _ => format!("needs `{}`, which failed", b.id),
                    };
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
                let ctx = minijinja::context! {
                    inputs => inputs.clone(),
                    steps => steps_value.clone(),
                    env => JinjaValue::from_serialize(env_for(&wf_env, step, &templates, &inputs, &steps_value).unwrap_or_default()),
                };
                if let Some(cond) = &step.condition {
                    match templates.eval_condition(cond, &ctx) {
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
                            failed_any = true;
                            self.settle(
                                &mut record,
                                StepState::Failed,
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
                            failed_any = true;
                            self.settle(
                                &mut record,
                                StepState::Failed,
                                i,
                                format!("template error in step `{}`: {e}", step.id),
                                &mut ready,
                                &mut remaining_deps,
                                &dependents,
                            );
                            if opts.fail_fast {
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
                if risk.needs_approval() {
                    let decision = self.approve(&record, &risk, step, &summary).await;
                    let entry = self
                        .store
                        .entry(kind::APPROVAL_GIVEN)
                        .run(record.run_id.clone())
                        .step(step.id.clone())
                        .tier(json!(risk.tier));
                    match decision {
                        Ok(by) => {
                            self.store
                                .record(entry.result(
                                    json!({"approved": true, "by": by, "rule": risk.rule}),
                                ));
                            record.steps[i].approval = Some(by);
                        }
                        Err((state, why)) => {
                            self.store
                                .record(entry.result(json!({"approved": false, "reason": why})));
                            record.steps[i].state = state;
                            record.steps[i].reason = Some(why.clone());
                            stop = Some((RunState::AwaitingApproval, why));
                            break;
                        }
                    }
                    // An approval is worth persisting at once.
                    self.store.save(&record)?;
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
                (self.events)(&RunEvent::StepStarted {
                    step: step.id.clone(),
                    attempt: 1,
                    tier: risk.tier,
                    summary,
                });
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
                let (jobs, writer) = (jobs.clone(), writer.clone());
                running.spawn(async move {
                    let _permit = jobs.acquire_owned().await;
                    let _write_guard = if job.step.kind().may_write() {
                        Some(writer.lock_owned().await)
                    } else {
                        None
                    };
                    execute(job).await
                });
            }
            if last_save.elapsed() >= SAVE_INTERVAL {
                self.store.save(&record)?;
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
            let Some(Ok(f)) = done else { continue };
            let i = f.index;
            let rec = &mut record.steps[i];
            rec.state = f.state;
            rec.finished_at = Some(now_rfc3339());
            rec.duration_ms = Some(f.duration.as_millis() as u64);
            rec.output = secrets.scrub(&f.view.output);
            rec.stdout = secrets.scrub(&f.view.stdout);
            rec.stderr = secrets.scrub(&f.view.stderr);
            rec.exit_code = f.exit_code;
            rec.reason = f.reason.as_deref().map(|r| secrets.scrub(r));
            rec.enforcement = f.enforcement;
            rec.egress = f.egress;
            rec.attempts = f.attempts;
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
                    .result(json!({"state": rec.state, "exit_code": rec.exit_code, "reason": rec.reason, "duration_ms": rec.duration_ms, "attempts": rec.attempts, "egress": egress_summary(&rec.egress)})),
            );
            (self.events)(&RunEvent::StepFinished {
                step: rec.id.clone(),
                state: f.state,
                duration_ms: f.duration.as_millis() as u64,
                exit_code: f.exit_code,
                reason: rec.reason.clone(),
            });
            if f.state == StepState::Succeeded {
                if let Ok(mut m) = results.0.write() {
                    m.insert(rec.id.clone(), f.view);
                }
            } else if f.state == StepState::Failed {
                failed_any = true;
                if opts.fail_fast && stop.is_none() {
                    stop = Some((
                        RunState::Failed,
                        format!("step `{}` failed (--fail-fast)", rec.id),
                    ));
                    run_cancel.cancel();
                }
            }
            for &d in &dependents[i] {
                remaining_deps[d] -= 1;
                if remaining_deps[d] == 0 {
                    ready.push(d);
                }
            }
            if wrote {
                // A change set is what revert needs: make it durable now, not at the next tick.
                self.store.save(&record)?;
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
            None => (RunState::Succeeded, None),
        };
        record.state = state;
        record.message = message;
        // Backend cleanup still in flight (docker removes containers off the critical path).
        self.sandbox.flush().await;
        if let Some(ctx) = &snap {
            // The last manifest becomes the stat cache of the next run; the in-flight record is
            // no longer needed once the step results are saved with the run.
            let ctx = ctx.clone();
            blocking(move || ctx.snap.save_cache(&ctx.last())).await?;
        }
        let out = self.finish(record)?;
        if snap.is_some() {
            crate::snapshot::clear_inflight(
                self.store.vault(),
                &out.run_id,
                out.steps.iter().map(|s| s.id.as_str()),
            )?;
        }
        Ok(out)
    }

    fn finish(&self, mut record: RunRecord) -> Result<RunRecord, EngineError> {
        record.finished_at = Some(now_rfc3339());
        self.store.record(
            self.store
                .entry(kind::RUN_FINISHED)
                .run(record.run_id.clone())
                .result(json!({"state": record.state, "message": record.message})),
        );
        self.store.save(&record)?;
        (self.events)(&RunEvent::RunFinished {
            run_id: record.run_id.clone(),
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
    ) -> Result<String, (StepState, String)> {
        let covered = record
            .approval
            .nodes
            .iter()
            .any(|n| n.id == step.id && n.tier >= risk.tier);
        if covered {
            return Ok(record.approval.by.clone());
        }
        let request = ApprovalRequest {
            step: step.id.clone(),
            tier: risk.tier,
            rule: risk.rule.clone(),
            reason: if risk.forced_approval && !risk.tier.needs_approval() {
                "the step is marked `approve: true`".into()
            } else {
                risk.reason.clone()
            },
            summary: summary.to_string(),
            network: step.network.clone(),
        };
        (self.events)(&RunEvent::ApprovalNeeded {
            step: request.step.clone(),
            tier: request.tier,
            rule: request.rule.clone(),
            reason: request.reason.clone(),
            summary: request.summary.clone(),
        });
        match self.approver.decide(&request).await {
            Decision::Approved { by } => Ok(by),
            Decision::Denied { by } => Err((
                StepState::Skipped,
                format!(
                    "approval for step `{}` ({}) was denied by {by}; the run stopped here",
                    step.id, risk.tier
                ),
            )),
            Decision::Unavailable => Err((
                StepState::WaitingApproval,
                format!(
                    "step `{}` is {} ({}: {}) and needs approval; no terminal to ask. Re-run with --approve {} (or --yes) to allow it",
                    step.id,
                    risk.tier,
                    risk.rule,
                    risk.reason,
                    if risk.tier.needs_approval() {
                        risk.tier.as_str()
                    } else {
                        "<tier> --yes"
                    }
                ),
            )),
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
        for &d in &dependents[i] {
            remaining[d] -= 1;
            if remaining[d] == 0 {
                ready.push(d);
            }
        }
    }
}

fn env_for(
    wf_env: &BTreeMap<String, String>,
    step: &Step,
    templates: &Templates,
    inputs: &JinjaValue,
    steps: &JinjaValue,
) -> Result<BTreeMap<String, String>, crate::template::TemplateError> {
    let mut env = wf_env.clone();
    let ctx = minijinja::context! { inputs => inputs.clone(), steps => steps.clone(), env => JinjaValue::from_serialize(wf_env) };
    for (k, v) in &step.env {
        env.insert(k.clone(), templates.render(v, &ctx)?);
    }
    Ok(env)
}

fn render_step(
    step: &Step,
    t: &Templates,
    ctx: &JinjaValue,
    wf_env: &BTreeMap<String, String>,
    inputs: &JinjaValue,
    steps: &JinjaValue,
) -> Result<Rendered, crate::template::TemplateError> {
    let r = |s: &str| t.render(s, ctx);
    Ok(if let Some(a) = &step.read {
        Rendered::Read {
            path: a.path.as_deref().map(r).transpose()?,
            glob: a.glob.as_deref().map(r).transpose()?,
            limit: a
                .max_bytes
                .as_ref()
                .and_then(|m| m.parse().ok())
                .unwrap_or(DEFAULT_READ_LIMIT),
        }
    } else if let Some(a) = &step.write {
        Rendered::Write {
            path: r(&a.path)?,
            content: r(&a.content)?,
            append: a.append,
            mode: a.mode.clone(),
        }
    } else if let Some(a) = &step.patch {
        Rendered::Patch {
            path: r(&a.path)?,
            diff: r(&a.diff)?,
        }
    } else if let Some(a) = &step.http {
        Rendered::Http {
            url: r(&a.url)?,
            headers: a
                .headers
                .iter()
                .map(|(k, v)| Ok((k.clone(), r(v)?)))
                .collect::<Result<_, crate::template::TemplateError>>()?,
            body: a.body.as_deref().map(r).transpose()?,
            json: a
                .json
                .as_ref()
                .map(|j| render_json(j, t, ctx))
                .transpose()?,
            timeout: a
                .timeout
                .as_ref()
                .and_then(|d| d.parse().ok())
                .unwrap_or(DEFAULT_HTTP_TIMEOUT),
            limit: a
                .max_response
                .as_ref()
                .and_then(|m| m.parse().ok())
                .unwrap_or(DEFAULT_HTTP_LIMIT),
        }
    } else {
        Rendered::Shell {
            command: t.render_shell(step.shell.as_deref().unwrap_or_default(), ctx)?,
            env: env_for(wf_env, step, t, inputs, steps)?,
        }
    })
}

fn render_json(
    v: &Value,
    t: &Templates,
    ctx: &JinjaValue,
) -> Result<Value, crate::template::TemplateError> {
    Ok(match v {
        Value::String(s) => Value::String(t.render(s, ctx)?),
        Value::Array(a) => Value::Array(
            a.iter()
                .map(|x| render_json(x, t, ctx))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, x)| Ok((k.clone(), render_json(x, t, ctx)?)))
                .collect::<Result<_, crate::template::TemplateError>>()?,
        ),
        other => other.clone(),
    })
}

fn effective_risk(
    static_risk: &NodeRisk,
    rendered: &Rendered,
    model: Option<&secureclaw_llm::CommandRiskModel>,
) -> NodeRisk {
    let mut risk = static_risk.clone();
    if let Rendered::Shell { command, .. } = rendered {
        let a = secureclaw_risk::classify_shell(command);
        if a.tier > risk.tier {
            risk = NodeRisk {
                tier: a.tier,
                rule: a.rule,
                reason: format!("{} (after templating)", a.reason),
                forced_approval: static_risk.forced_approval,
            };
        }
        // The model only ever raises. A model failure leaves the heuristic tier standing.
        let heuristic = secureclaw_llm::ModelTier::parse(risk.tier.as_str());
        if let (Some(model), Some(heuristic)) = (model, heuristic)
            && let Ok(Some(raise)) = model.assess(command, heuristic)
            && let Some(tier) = Tier::parse(raise.tier.as_str())
            && tier > risk.tier
        {
            risk = NodeRisk {
                tier,
                rule: "risk-model".into(),
                reason: format!(
                    "the risk model finds it close to `{}` (similarity {:.2}, margin {:.2})",
                    raise.exemplar_text, raise.score, raise.margin
                ),
                forced_approval: static_risk.forced_approval,
            };
        }
    }
    risk
}

async fn execute(job: StepJob) -> Finished {
    let start = Instant::now();
    let snap = job.snap.clone().filter(|_| job.step.kind().may_write());
    let pre = match &snap {
        Some(ctx) => match ctx.pre(&job.step.id).await {
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
            capture_after(ctx, pre.clone(), &job, &mut f).await;
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

/// How many hazards a failure reason names before it says how many more there are.
const HAZARDS_NAMED: usize = 5;

/// After an attempt of a writing step: what it changed, and a rollback if it failed or left
/// what no step may leave (see [`crate::snapshot::hazards`]). Whatever goes wrong here, the
/// pre-images already taken are used: the step is rolled back with everything that could be
/// captured, or its change set is kept for `secureclaw revert`.
async fn capture_after(ctx: &Arc<SnapCtx>, pre: Arc<Manifest>, job: &StepJob, f: &mut Finished) {
    let add_reason = |f: &mut Finished, note: String| {
        f.reason = Some(match f.reason.take() {
            Some(r) => format!("{r}; {note}"),
            None => note,
        });
    };
    let (post, store_error) = match ctx.post(pre.clone()).await {
        Ok(m) => m,
        Err(e) => {
            // Only the workspace root itself could not be read: there is nothing to compare.
            f.state = StepState::Failed;
            add_reason(
                f,
                format!(
                    "capturing the workspace after the step failed: {e}; its changes could not be determined"
                ),
            );
            return;
        }
    };
    let changes = crate::snapshot::diff(&pre, &post);
    let hazards = crate::snapshot::hazards(&post, &changes);
    if let Some(e) = &store_error {
        f.state = StepState::Failed;
        add_reason(
            f,
            format!("storing its post-images failed ({e}), so its changes cannot be kept"),
        );
    }
    if !hazards.is_empty() {
        f.state = StepState::Failed;
        let mut named: Vec<String> = hazards
            .iter()
            .take(HAZARDS_NAMED)
            .map(ToString::to_string)
            .collect();
        if hazards.len() > HAZARDS_NAMED {
            named.push(format!("and {} more", hazards.len() - HAZARDS_NAMED));
        }
        add_reason(
            f,
            format!(
                "it left what no step may leave in the workspace: {}",
                named.join("; ")
            ),
        );
    }
    // Hazards and uncapturable changes are never kept, `keep_on_failure` or not.
    let forced = !hazards.is_empty() || store_error.is_some();
    let roll_back = f.state == StepState::Failed
        && (forced || !job.step.keep_on_failure)
        && !changes.is_empty();
    if roll_back {
        let n = changes.len();
        match ctx.rollback(pre.clone(), changes.clone()).await {
            Ok(_) => {
                add_reason(
                    f,
                    if forced {
                        format!("its workspace changes were rolled back ({n} path(s))")
                    } else {
                        format!(
                            "its workspace changes were rolled back ({n} path(s); `keep_on_failure: true` keeps them)"
                        )
                    },
                );
                f.capture = Some(Capture {
                    changes: ChangeSet::default(),
                    pre_hash: pre.hash(),
                    post_hash: pre.hash(),
                });
            }
            Err(e) => {
                add_reason(
                    f,
                    format!(
                        "rolling back its workspace changes FAILED: {e}; `secureclaw revert` can retry"
                    ),
                );
                // The change set (with every pre-image) outlives the run record's saves.
                if let Err(e) = ctx.save_changes(&job.step.id, changes.clone()).await {
                    add_reason(f, format!("saving its change set failed too: {e}"));
                }
                f.capture = Some(Capture {
                    changes,
                    pre_hash: pre.hash(),
                    post_hash: post.hash(),
                });
            }
        }
        return;
    }
    if let Err(e) = ctx.save_changes(&job.step.id, changes.clone()).await {
        f.state = StepState::Failed;
        add_reason(f, format!("saving its change set failed: {e}"));
    }
    f.capture = Some(Capture {
        changes,
        pre_hash: pre.hash(),
        post_hash: post.hash(),
    });
}

fn finished(
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
        exit_code,
        reason,
        enforcement: None,
        egress: Vec::new(),
        attempts: 0,
        duration: Duration::ZERO,
        refused: false,
        capture: None,
    }
}

/// Every decision of the egress proxy goes into the ledger with the step (null when none).
fn egress_summary(events: &[secureclaw_sandbox::EgressEvent]) -> Value {
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
            if out.stdout_total > out.stdout.len() as u64
                || out.stderr_total > out.stderr.len() as u64
            {
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
                exit_code: Some(code),
                reason,
                enforcement: Some(out.enforcement),
                egress: out.egress,
                attempts: 0,
                duration: out.duration,
                refused: false,
                capture: None,
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

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}
