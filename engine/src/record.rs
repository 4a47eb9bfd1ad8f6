//! Run records: what happened in a run, per step, kept in the state dir so `runs` and `show`
//! can list them and a crash leaves the last known state behind.
//!
//! Records are sealed in the vault (AES-256-GCM, bound to their table and run id) and saved in
//! the same transaction as the ledger entries describing them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use secureclaw_sandbox::EnforcementReport;
use secureclaw_vault::{NewEntry, Vault, VaultError, kind};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::model::Tier;
use crate::storage::{Batch, Done, StateBackend, StorageError, Table, VaultBackend, Writer};
use crate::validate::InverseClass;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    Running,
    Succeeded,
    Failed,
    /// Stopped before a step that needed an approval nobody gave.
    AwaitingApproval,
    Cancelled,
    /// The engine died while the run was in progress (found on the next start).
    Interrupted,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepState {
    Pending,
    WaitingApproval,
    Running,
    Succeeded,
    Failed,
    Skipped,
    Cancelled,
    Reverted,
}

impl StepState {
    pub fn is_final(self) -> bool {
        !matches!(
            self,
            StepState::Pending | StepState::WaitingApproval | StepState::Running
        )
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepRecord {
    pub id: String,
    pub kind: crate::model::ActionKind,
    pub state: StepState,
    pub tier: Tier,
    pub rule: String,
    pub inverse: InverseClass,
    #[serde(default)]
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// The action after templating (command, path, URL...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rendered: Option<Value>,
    #[serde(default)]
    pub output: String,
    #[serde(default)]
    pub stdout: String,
    #[serde(default)]
    pub stderr: String,
    /// Set when the output cap (`sandbox.output_cap`) cut the output: `stdout` and `stderr`
    /// hold the first bytes of each, and this says how many bytes the step really wrote.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_cut: Option<OutputCut>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// Why it failed or was skipped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// It failed and the run went on as if it had succeeded (`continue_on_error: true`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub continued: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enforcement: Option<EnforcementReport>,
    /// Every connection attempt the step made through the egress proxy, allowed or refused.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress: Vec<secureclaw_sandbox::EgressEvent>,
    /// Who or what approved it, if it needed approval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<String>,
    /// The steps it depends on (for `revert --cascade`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub needs: Vec<String>,
    /// What it changed in the workspace (steps that may write), with pre/post hashes and blobs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changes: Option<crate::snapshot::ChangeSet>,
    /// Workspace manifest hashes around the step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pre_manifest: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub post_manifest: Option<String>,
    /// Order among the run's writing steps (they never overlap): revert goes backwards.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write_seq: Option<u32>,
    /// The declared `compensate` action (templates rendered at revert time) and the step's
    /// network allowlist it runs under.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compensate: Option<crate::model::Compensate>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub network: Vec<String>,
    /// The injection detector's verdict on what the step brought back (its recorded stdout,
    /// stderr, an action's output such as an HTTP response body), screened once when it
    /// finished. Absent: nothing to screen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub screening: Option<crate::screen::Screening>,
    /// Values the step took from flagged output (`steps.fetch.stdout`): it waited for approval
    /// before it ran.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub untrusted_inputs: Vec<String>,
}

/// How much a step wrote when the output cap kept less (kept: the length of the recorded text).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputCut {
    pub stdout_total: u64,
    pub stderr_total: u64,
}

impl StepRecord {
    /// A step that has not run: what the plan says of it, and nothing of a run. Its `needs`,
    /// `compensate` and `network` start empty; callers fill them in.
    pub fn pending(
        id: String,
        kind: crate::model::ActionKind,
        tier: Tier,
        rule: String,
        inverse: InverseClass,
    ) -> StepRecord {
        StepRecord {
            id,
            kind,
            state: StepState::Pending,
            tier,
            rule,
            inverse,
            attempts: 0,
            started_at: None,
            finished_at: None,
            duration_ms: None,
            rendered: None,
            output: String::new(),
            stdout: String::new(),
            stderr: String::new(),
            output_cut: None,
            exit_code: None,
            reason: None,
            continued: false,
            enforcement: None,
            egress: Vec::new(),
            approval: None,
            needs: Vec::new(),
            changes: None,
            pre_manifest: None,
            post_manifest: None,
            write_seq: None,
            compensate: None,
            network: Vec::new(),
            screening: None,
            untrusted_inputs: Vec::new(),
        }
    }
}

/// Exactly which nodes an up-front approval covers.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct PlanApproval {
    pub by: String,
    pub tiers: Vec<Tier>,
    pub nodes: Vec<ApprovedNode>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ApprovedNode {
    pub id: String,
    pub tier: Tier,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub domains: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunRecord {
    pub run_id: String,
    pub workflow: String,
    pub workflow_file: PathBuf,
    /// SHA-256 of the workflow file as run.
    pub workflow_sha256: String,
    pub workspace: PathBuf,
    pub backend: String,
    pub isolated: bool,
    pub started_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    pub state: RunState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    pub pid: u32,
    /// The node that ran it, when the state is shared by several machines (`pid` means
    /// something only there); `None` on one machine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    pub inputs: BTreeMap<String, Value>,
    #[serde(default)]
    pub approval: PlanApproval,
    pub steps: Vec<StepRecord>,
    /// Whether the optional command risk model could raise tiers in this run, or why not
    /// ("heuristic tiers only").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub risk_model: Option<String>,
    /// The detector layers that screened the steps' output in this run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub screening: Option<String>,
    /// Workspace manifest hash before the run (set when a step may write).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pre_manifest: Option<String>,
    /// Reverts of this run, oldest first; the last one may be in progress.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reverts: Vec<RevertSummary>,
    /// Where the workflow came from in git, when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provenance: Option<Provenance>,
    /// Who or what started the run, when the session's actor does not say it all: `user:NAME`,
    /// `rerun:TASK`, `trigger:NAME`, `schedule:SOURCE/PATH`, `watch:SOURCE/PATH`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_by: Option<String>,
}

/// The git origin of a workflow: enough to fetch exactly the text that ran.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Provenance {
    /// The repository as registered or found: a URL, or the path of its work tree.
    pub repository: String,
    /// The registered source's name, for a workflow the server took from a source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// The branch the commit was taken from, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branch: Option<String>,
    /// Full commit SHA.
    pub commit: String,
    /// The workflow file's path in the repository, `/`-separated.
    pub path: String,
    /// Git blob SHA of the file at that commit.
    pub blob: String,
    /// The file ran from a work tree whose content differs from the commit (the run's text is
    /// then not exactly the blob's; `workflow_sha256` names what ran).
    #[serde(default)]
    pub dirty: bool,
}

/// One revert of a run, kept in the run record.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RevertSummary {
    pub started_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    #[serde(default)]
    pub cascade: bool,
    #[serde(default)]
    pub force: bool,
    /// `in_progress`, `completed`, `conflict`, `failed`.
    pub state: String,
    #[serde(default)]
    pub reverted: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub manual_review: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failures: Vec<String>,
    /// Whole-run revert: the workspace manifest hash equals the pre-run hash.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verified: Option<bool>,
}

impl RunRecord {
    pub fn step(&self, id: &str) -> Option<&StepRecord> {
        self.steps.iter().find(|s| s.id == id)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("run `{0}` not found (see `secureclaw runs`)")]
    NotFound(String),
    #[error("run id `{0}` matches several runs; give more characters")]
    Ambiguous(String),
    #[error(transparent)]
    Vault(#[from] VaultError),
    /// Not `#[from]`: that would make the storage error the source as well as the message.
    #[error("saving run state: {0}")]
    Storage(StorageError),
    #[error("reading {what}: {message}")]
    Decode { what: String, message: String },
}

impl From<StorageError> for StoreError {
    fn from(e: StorageError) -> Self {
        StoreError::Storage(e)
    }
}

/// Run records, events, parked runs and the ledger, behind a [`StateBackend`] (sealed in the
/// vault by default). Ledger entries are queued and committed in the same transaction as the
/// next record save, so a record and the entries that explain it land together (or, after a
/// crash, not at all). Every commit goes through one writer thread (group commit).
pub struct RunStore {
    vault: Vault,
    backend: Arc<dyn StateBackend>,
    writer: Option<Writer>,
    actor: String,
    /// This node's id when the state is shared: only this node's dead runs are its to mark.
    node: Option<String>,
    /// Queued ledger entries by run (`None`: entries of no run): a run's record save takes
    /// its own, so concurrent runs never commit each other's entries ahead of their records.
    pending: Mutex<BTreeMap<Option<String>, Vec<NewEntry>>>,
    /// The leases runs executed here hold, by run id (a shared store's work queue): every
    /// save of such a run carries its lease, and fails once the lease is gone.
    leases: Mutex<BTreeMap<String, String>>,
}

impl std::fmt::Debug for RunStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunStore")
            .field("vault", &self.vault)
            .field("actor", &self.actor)
            .finish_non_exhaustive()
    }
}

impl RunStore {
    /// Run state sealed in `vault` (the embedded default).
    pub fn new(vault: Vault, actor: impl Into<String>) -> Self {
        let backend: Arc<dyn StateBackend> = Arc::new(VaultBackend(vault.clone()));
        Self::with_backend(vault, backend, actor)
    }

    /// Run state in `backend`; `vault` still holds the keys and the workspace pre-images.
    pub fn with_backend(
        vault: Vault,
        backend: Arc<dyn StateBackend>,
        actor: impl Into<String>,
    ) -> Self {
        // A read-only store has no writer; a writer that cannot start leaves saves failing
        // with `WriterGone`, which every caller reports.
        let writer = if backend.is_read_only() {
            None
        } else {
            Writer::start(backend.clone()).ok()
        };
        RunStore {
            vault,
            backend,
            writer,
            actor: actor.into(),
            node: None,
            pending: Mutex::new(BTreeMap::new()),
            leases: Mutex::new(BTreeMap::new()),
        }
    }

    pub fn vault(&self) -> &Vault {
        &self.vault
    }

    /// Runs started here are recorded as `node`'s, and [`RunStore::mark_interrupted`] looks
    /// only at those: on a shared store another node's run is not this node's to judge.
    pub fn with_node(mut self, node: impl Into<String>) -> Self {
        self.node = Some(node.into());
        self
    }

    pub fn node(&self) -> Option<&str> {
        self.node.as_deref()
    }

    pub fn actor(&self) -> &str {
        &self.actor
    }

    pub fn is_read_only(&self) -> bool {
        self.backend.is_read_only()
    }

    /// See [`crate::storage::StateBackend::event_commits`].
    pub fn event_commits(&self, run: &str) -> Option<tokio::sync::watch::Receiver<u64>> {
        self.backend.event_commits(run)
    }

    /// Queue a ledger entry; it is committed with the next [`RunStore::save`]. Manifest hashes
    /// (plain SHA-256 over paths and contents) are replaced by keyed digests here, so no entry,
    /// and no export of one, can be used to confirm a guessed workspace.
    pub fn record(&self, mut entry: NewEntry) {
        let key = |m: Option<String>| m.map(|m| self.digest("manifest", m.as_bytes()));
        entry.pre_manifest = key(entry.pre_manifest.take());
        entry.post_manifest = key(entry.post_manifest.take());
        if let Ok(mut p) = self.pending.lock() {
            p.entry(entry.run.clone()).or_default().push(entry);
        }
    }

    /// A keyed digest of user data for a ledger entry (see `Vault::keyed_digest`): never put a
    /// plain hash of inputs, file contents or workflow text in the ledger, which gets exported.
    pub fn digest(&self, what: &str, data: &[u8]) -> String {
        self.vault.keyed_digest(what, data)
    }

    /// A new ledger entry with this store's actor.
    pub fn entry(&self, kind: &str) -> NewEntry {
        NewEntry::new(self.actor.clone(), kind)
    }

    /// The queued entries of no run, with those of `run` if given.
    fn take_pending(&self, run: Option<&str>) -> Vec<NewEntry> {
        let Ok(mut p) = self.pending.lock() else {
            return Vec::new();
        };
        match run {
            None => p.remove(&None).unwrap_or_default(),
            Some(run) => {
                let mut out = p.remove(&None).unwrap_or_default();
                out.extend(p.remove(&Some(run.to_string())).unwrap_or_default());
                out
            }
        }
    }

    fn writer(&self) -> Result<&Writer, StoreError> {
        match &self.writer {
            Some(w) => Ok(w),
            None if self.backend.is_read_only() => Err(StorageError::ReadOnly.into()),
            None => Err(StorageError::WriterGone.into()),
        }
    }

    /// From now until [`RunStore::release_lease`], every save of `run_id` (its record, its
    /// ledger entries, its events) carries `lease` and fails once the backend finds it lapsed.
    pub fn hold_lease(&self, run_id: &str, lease: String) {
        if let Ok(mut l) = self.leases.lock() {
            l.insert(run_id.to_string(), lease);
        }
    }

    pub fn release_lease(&self, run_id: &str) {
        if let Ok(mut l) = self.leases.lock() {
            l.remove(run_id);
        }
    }

    /// The lease `run_id` is executed under here, if any.
    pub fn lease_of(&self, run_id: &str) -> Option<String> {
        self.leases.lock().ok()?.get(run_id).cloned()
    }

    /// A batch with the record and every queued ledger entry.
    fn record_batch(&self, record: &RunRecord) -> Result<Batch, StoreError> {
        let mut batch = Batch {
            entries: self.take_pending(Some(&record.run_id)),
            lease: self.lease_of(&record.run_id),
            ..Batch::default()
        };
        batch.put_json(Table::Runs, record.run_id.clone(), record)?;
        Ok(batch)
    }

    /// Save the record and every queued ledger entry in one durable transaction.
    pub fn save(&self, record: &RunRecord) -> Result<(), StoreError> {
        let batch = self.record_batch(record)?;
        self.writer()?.commit_blocking(batch)?;
        Ok(())
    }

    /// [`RunStore::save`] for async code: the commit happens on the writer thread.
    pub async fn save_async(&self, record: &RunRecord) -> Result<(), StoreError> {
        self.save_with(record, Batch::default()).await
    }

    /// Save the record, queued ledger entries and `extra` rows in one durable transaction.
    pub async fn save_with(&self, record: &RunRecord, extra: Batch) -> Result<(), StoreError> {
        let mut batch = self.record_batch(record)?;
        batch.absorb(extra);
        self.writer()?.commit(batch).await?;
        Ok(())
    }

    /// `batch` after the queued ledger entries of no run.
    fn with_queued(&self, batch: Batch) -> Batch {
        let mut out = Batch {
            entries: self.take_pending(None),
            ..Batch::default()
        };
        out.absorb(batch);
        out
    }

    /// Commit `batch` after the queued ledger entries of no run, and wait.
    pub async fn commit(&self, batch: Batch) -> Result<(), StoreError> {
        let batch = self.with_queued(batch);
        self.writer()?.commit(batch).await?;
        Ok(())
    }

    /// Queue `batch` without waiting; `done` is told when it is durable.
    pub fn submit(&self, batch: Batch, done: Option<Done>) {
        match self.writer() {
            Ok(w) => w.submit(batch, done),
            Err(_) => {
                if let Some(d) = done {
                    d(Err(StorageError::ReadOnly));
                }
            }
        }
    }

    /// A JSON row of `table`.
    pub fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        table: Table,
        key: &str,
    ) -> Result<Option<T>, StoreError> {
        match self.backend.get(table, key)? {
            None => Ok(None),
            Some(bytes) => {
                let bytes = zeroize::Zeroizing::new(bytes);
                serde_json::from_slice(&bytes)
                    .map(Some)
                    .map_err(|e| StoreError::Decode {
                        what: format!("{}/{key}", table.name()),
                        message: e.to_string(),
                    })
            }
        }
    }

    /// A row of `table` as stored.
    pub fn get_raw(&self, table: Table, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.backend.get(table, key)?)
    }

    pub fn keys(&self, table: Table) -> Result<Vec<String>, StoreError> {
        Ok(self.backend.keys(table)?)
    }

    pub fn load(&self, run_id: &str) -> Result<RunRecord, StoreError> {
        let id = self.resolve(run_id)?;
        let mut rec: RunRecord = self
            .get_json(Table::Runs, &id)?
            .ok_or(StoreError::NotFound(id))?;
        // A read-only store cannot record the interruption; show it as it would be recorded.
        if self.is_read_only() {
            mark_dead_run(&mut rec);
        }
        Ok(rec)
    }

    /// One run by its exact id, without resolving prefixes: `resolve` lists (and so opens)
    /// every run, which a page of many runs cannot afford once per row.
    pub fn get(&self, run_id: &str) -> Result<Option<RunRecord>, StoreError> {
        let Some(mut rec) = self.get_json::<RunRecord>(Table::Runs, run_id)? else {
            return Ok(None);
        };
        if self.is_read_only() {
            mark_dead_run(&mut rec);
        }
        Ok(Some(rec))
    }

    /// Accept a unique prefix of a run id, or `last` for the newest run.
    pub fn resolve(&self, run_id: &str) -> Result<String, StoreError> {
        let ids = self.ids()?;
        if run_id == "last" {
            return ids
                .last()
                .cloned()
                .ok_or_else(|| StoreError::NotFound(run_id.into()));
        }
        if ids.iter().any(|i| i == run_id) {
            return Ok(run_id.to_string());
        }
        let matches: Vec<&String> = ids.iter().filter(|i| i.starts_with(run_id)).collect();
        match matches.as_slice() {
            [one] => Ok((*one).clone()),
            [] => Err(StoreError::NotFound(run_id.into())),
            _ => Err(StoreError::Ambiguous(run_id.into())),
        }
    }

    /// Run ids, oldest first (ids sort by start time).
    pub fn ids(&self) -> Result<Vec<String>, StoreError> {
        let mut ids = self.keys(Table::Runs)?;
        ids.sort();
        Ok(ids)
    }

    pub fn list(&self) -> Result<Vec<RunRecord>, StoreError> {
        // Exact ids: resolving each would list every run again, once per run.
        Ok(self
            .ids()?
            .iter()
            .map(|id| self.get(id))
            .collect::<Result<Vec<_>, _>>()?
            .into_iter()
            .flatten()
            .collect())
    }

    /// Mark runs whose engine process is gone as interrupted. Returns their ids.
    pub fn mark_interrupted(&self) -> Result<Vec<String>, StoreError> {
        let mut marked = Vec::new();
        if self.is_read_only() {
            // Nothing can be written; `load` shows such runs as interrupted instead.
            return Ok(marked);
        }
        for mut rec in self.list()? {
            if rec.node != self.node {
                continue;
            }
            let running = running_steps(&rec);
            if mark_dead_run(&mut rec) {
                self.record_steps_interrupted(&rec, &running);
                self.record(
                    self.entry(kind::RUN_FINISHED)
                        .run(rec.run_id.clone())
                        .result(serde_json::json!({"state": "interrupted", "found_by_pid": std::process::id()})),
                );
                self.save(&rec)?;
                marked.push(rec.run_id);
            }
        }
        Ok(marked)
    }
}

impl RunStore {
    /// On a shared store: records `run_id` interrupted when `node` lost the lease on it before
    /// the run's start was stored (no step runs before that), so its task ends. Nothing when a
    /// record exists. That node's late start carries the lapsed lease and is refused, which
    /// stops its run before any step.
    pub fn mark_lost_before_start(
        &self,
        run_id: &str,
        workflow: &str,
        node: &str,
    ) -> Result<bool, StoreError> {
        if self.get(run_id)?.is_some() {
            return Ok(false);
        }
        let now = now_rfc3339();
        let rec = RunRecord {
            run_id: run_id.to_string(),
            workflow: workflow.to_string(),
            workflow_file: PathBuf::new(),
            workflow_sha256: String::new(),
            workspace: PathBuf::new(),
            backend: String::new(),
            isolated: true,
            started_at: now.clone(),
            finished_at: Some(now),
            state: RunState::Interrupted,
            message: Some(format!(
                "node {node} lost its lease on this run before it started (it stopped or was cut off); no step ran"
            )),
            pid: 0,
            node: Some(node.to_string()),
            inputs: BTreeMap::new(),
            approval: PlanApproval::default(),
            steps: Vec::new(),
            risk_model: None,
            screening: None,
            pre_manifest: None,
            reverts: Vec::new(),
            provenance: None,
            started_by: None,
        };
        let finished = self
            .entry(kind::RUN_FINISHED)
            .run(run_id.to_string())
            .result(serde_json::json!({
                "state": "interrupted",
                "lease_lost_by": node,
                "in_flight": [],
                "started": false,
            }));
        self.save_for_cluster(&rec, vec![finished])?;
        Ok(true)
    }

    /// On a shared store: marks `run_id` interrupted when its node lost the lease on it (the
    /// node died or was cut off). Returns the steps that were in flight; `None` when the run
    /// was no longer running (it finished first) or has no record yet.
    pub fn mark_lease_lost(
        &self,
        run_id: &str,
        node: &str,
    ) -> Result<Option<Vec<String>>, StoreError> {
        let Some(mut rec) = self.get(run_id)? else {
            return Ok(None);
        };
        if rec.state != RunState::Running {
            return Ok(None);
        }
        let running = running_steps(&rec);
        let in_flight: Vec<String> = running.iter().map(|&i| rec.steps[i].id.clone()).collect();
        interrupt(
            &mut rec,
            &format!("node {node} lost its lease on this run (it stopped or was cut off)"),
        );
        let mut entries = self.steps_interrupted(&rec, &running);
        entries.push(
            self.entry(kind::RUN_FINISHED)
                .run(rec.run_id.clone())
                .result(serde_json::json!({
                    "state": "interrupted",
                    "lease_lost_by": node,
                    "in_flight": in_flight,
                })),
        );
        self.save_for_cluster(&rec, entries)?;
        Ok(Some(in_flight))
    }

    /// Saves what the cluster records about a run whose lease lapsed, with `entries` and under
    /// no lease: the node marking it may be the one that lost the lease (its own lease would
    /// refuse the mark, and the run would stay `running` with no node left to end it). The
    /// run's own queued entries stay for its next save, which its lost lease refuses.
    fn save_for_cluster(&self, rec: &RunRecord, entries: Vec<NewEntry>) -> Result<(), StoreError> {
        let mut batch = Batch {
            entries,
            lease: None,
            ..Batch::default()
        };
        batch.put_json(Table::Runs, rec.run_id.clone(), rec)?;
        self.writer()?.commit_blocking(batch)?;
        Ok(())
    }
}

impl RunStore {
    /// Queues ledger entries for the steps an interruption failed (`steps`: their indexes in
    /// `rec`, already marked): every `step_started` in the ledger is followed by its end.
    fn record_steps_interrupted(&self, rec: &RunRecord, steps: &[usize]) {
        for entry in self.steps_interrupted(rec, steps) {
            self.record(entry);
        }
    }

    /// The ledger entries of [`RunStore::record_steps_interrupted`].
    fn steps_interrupted(&self, rec: &RunRecord, steps: &[usize]) -> Vec<NewEntry> {
        steps
            .iter()
            .map(|&i| {
                let step = &rec.steps[i];
                self.entry(kind::STEP_FAILED)
                    .run(rec.run_id.clone())
                    .step(step.id.clone())
                    .tier(serde_json::json!(step.tier))
                    .result(serde_json::json!({
                        "state": step.state,
                        "reason": step.reason,
                        "message": rec.message,
                    }))
            })
            .collect()
    }
}

/// The indexes of the steps `rec` records as running.
fn running_steps(rec: &RunRecord) -> Vec<usize> {
    rec.steps
        .iter()
        .enumerate()
        .filter(|(_, s)| s.state == StepState::Running)
        .map(|(i, _)| i)
        .collect()
}

/// Marks a run whose engine is gone as interrupted; true if it was one.
fn mark_dead_run(rec: &mut RunRecord) -> bool {
    if rec.state != RunState::Running || process_alive(rec.pid) {
        return false;
    }
    interrupt(rec, "the engine stopped while this run was in progress");
    true
}

/// Marks `rec` interrupted, and the steps it was running failed (their pre-state is kept on
/// the disk of the node that ran them, which rolls them back).
fn interrupt(rec: &mut RunRecord, why: &str) {
    rec.state = RunState::Interrupted;
    rec.message = Some(why.to_string());
    for s in &mut rec.steps {
        if s.state == StepState::Running {
            s.state = StepState::Failed;
            s.reason = Some("interrupted: the engine stopped during this step".into());
        }
    }
}

fn process_alive(pid: u32) -> bool {
    pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists()
}

pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// A new run id: a UUIDv7, so ids sort by start time (millisecond first, then a counter the
/// uuid crate keeps monotonic within the process) and stay unique without coordination.
pub fn new_run_id() -> String {
    uuid::Uuid::now_v7().to_string()
}
