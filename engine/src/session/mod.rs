//! The session: the one door into the engine, for the CLI and the server alike.
//!
//! A [`Session`] is opened once on a state dir with the passphrase (or a key the unlock agent
//! holds). It owns the store, picks sandbox backends, loads the risk model and the planner,
//! and runs any number of runs at once:
//!
//! ```text
//! Session::open ─┬─ validate / plan                 → Validated (carries its bytes + sha256)
//!                ├─ submit(RunRequest)              → RunHandle { id, events(after), cancel, wait }
//!                ├─ approve / deny(run, step, by)   → decisions bound to what was shown
//!                ├─ resume(run)                     → RunHandle (same id, events go on)
//!                ├─ revert(run, ...) / diff(run)    → plan or report; revert events
//!                ├─ runs / show / events(run, after)
//!                └─ ledger_verify / ledger_export
//! ```
//!
//! Libraries never print: what a front end should tell its user (a vault was created, a run
//! was found interrupted, leftovers were cleaned up) comes back as [`Notice`]s.

mod app;
mod layout;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use secureclaw_vault::{KdfParams, PassphraseError, Vault, VaultError};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::events::{EventEnvelope, EventLog, EventStream, RunEvent, event_key};
use crate::model::{Backend, Tier};
use crate::park::{ParkState, PendingApproval, StepDecision, decision_key};
use crate::policy::{Approver, NoApprover, Policy};
use crate::record::{RunRecord, RunState, RunStore, StepRecord, StepState, StoreError};
use crate::revert::{RevertError, RevertPlan, RevertReport, RevertRequest};
use crate::scheduler::{Engine, EngineError, Resume, RunOptions};
use crate::snapshot::{ChangeSet, SnapshotError, Snapshotter};
use crate::storage::{Batch, Table};
use crate::validate::Validated;

pub use app::{AppBatch, AppTable, Audit};
pub use layout::check_state_layout;
/// A ledger entry as [`Session::ledger_entries`] returns it.
pub use secureclaw_vault::LedgerEntry;
pub use secureclaw_vault::PassphraseSource;

/// The default state dir of a workspace: `WORKSPACE/.secureclaw`, hidden from steps.
pub fn default_state_dir(workspace: &Path) -> PathBuf {
    workspace.join(crate::workspace::STATE_DIR_NAME)
}

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error(
        "no vault in {} yet (run a workflow there first, or `secureclaw vault init --state-dir {}`)",
        dir.display(),
        dir.display()
    )]
    NoVault { dir: PathBuf },
    #[error("wrong passphrase for the vault in {} (nothing was read or written)", dir.display())]
    WrongPassphrase { dir: PathBuf },
    #[error(transparent)]
    Passphrase(#[from] PassphraseError),
    /// The message names the vault error itself, so it is not also given as the source (a
    /// report that prints causes would say it twice).
    #[error("the vault in {}: {cause}", dir.display())]
    Vault { dir: PathBuf, cause: VaultError },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Revert(#[from] RevertError),
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    /// The request cannot run as given; `hint` says what to do instead.
    #[error("{message}")]
    Invalid {
        message: String,
        hint: Option<String>,
    },
    #[error(
        "run `{run}` is not parked (state: {state}); only a run stopped at an approval gate can be approved, denied or resumed"
    )]
    NotParked { run: String, state: String },
    #[error("step `{step}` of run `{run}` is not waiting for approval (waiting: {})", waiting.join(", "))]
    NotWaiting {
        run: String,
        step: String,
        waiting: Vec<String>,
    },
    #[error("the workspace changed since run `{run}` {stopped} ({} path(s): {}); {verb} with --force to go on anyway", paths.len(), paths.iter().take(5).cloned().collect::<Vec<_>>().join(", "))]
    Drift {
        run: String,
        paths: Vec<String>,
        /// How the run stopped: `parked` or `failed`.
        stopped: &'static str,
        /// What goes on with it: `resume` or `retry`.
        verb: &'static str,
    },
    #[error("only a failed run can be retried; run `{run}` is {state}")]
    NotFailed { run: String, state: String },
    #[error("run `{0}` is already running in this process")]
    Busy(String),
    /// On a shared store: the run's workspace and pre-images are on the node that ran it.
    #[error(
        "run `{run}` ran on node {node}, whose disk holds its workspace and the pre-images that \
         undo it; this is node {here}"
    )]
    OtherNode {
        run: String,
        node: String,
        here: String,
    },
    #[error("the run task failed: {0}")]
    Task(String),
}

impl SessionError {
    fn invalid(message: impl Into<String>, hint: Option<&str>) -> Self {
        SessionError::Invalid {
            message: message.into(),
            hint: hint.map(str::to_string),
        }
    }

    /// The kind of failure, for machine-readable error reports (`no_vault`, `invalid`…).
    pub fn kind(&self) -> &'static str {
        match self {
            SessionError::NoVault { .. } => "no_vault",
            SessionError::WrongPassphrase { .. } => "wrong_passphrase",
            SessionError::Passphrase(_) => "passphrase",
            SessionError::Vault { .. } => "vault",
            SessionError::Store(StoreError::NotFound(_)) => "run_not_found",
            SessionError::Store(_) => "store",
            SessionError::Engine(EngineError::Policy(_)) => "policy",
            SessionError::Engine(_) => "engine",
            SessionError::Revert(_) => "revert",
            SessionError::Snapshot(_) => "snapshot",
            SessionError::Invalid { .. } => "invalid",
            SessionError::NotParked { .. } => "not_parked",
            SessionError::NotWaiting { .. } => "not_waiting",
            SessionError::Drift { .. } => "drift",
            SessionError::NotFailed { .. } => "not_failed",
            SessionError::Busy(_) => "busy",
            SessionError::OtherNode { .. } => "other_node",
            SessionError::Task(_) => "task",
        }
    }

    /// What to do about it, when the message alone does not say.
    pub fn hint(&self) -> Option<String> {
        match self {
            SessionError::Invalid { hint, .. } => hint.clone(),
            SessionError::OtherNode { node, .. } => Some(format!(
                "ask a server replica with --workers (`POST /api/v1/tasks/ID/revert`, `/retry`, or the approval): it has a worker of node {node} do it"
            )),
            SessionError::NoVault { .. } => Some(
                "runs started with `--workspace DIR` are recorded in DIR/.secureclaw: pass the same `--workspace DIR` (or `--state-dir DIR/.secureclaw`)"
                    .into(),
            ),
            _ => None,
        }
    }

    /// True when the caller's input was at fault (exit 2), not the run.
    pub fn is_invalid_request(&self) -> bool {
        matches!(
            self,
            SessionError::Invalid { .. }
                | SessionError::Engine(EngineError::Policy(_))
                | SessionError::NotParked { .. }
                | SessionError::NotWaiting { .. }
                | SessionError::NotFailed { .. }
        )
    }
}

/// Something a front end should tell its user.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "notice", rename_all = "snake_case")]
pub enum Notice {
    VaultCreated {
        state_dir: PathBuf,
        memory_kib: u32,
        iterations: u32,
    },
    Interrupted {
        run_id: String,
    },
    CleanedUp {
        what: String,
    },
    WorkspaceCreated {
        path: PathBuf,
    },
    RiskModel {
        status: String,
    },
}

impl std::fmt::Display for Notice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Notice::VaultCreated {
                state_dir,
                memory_kib,
                iterations,
            } => write!(
                f,
                "created an encrypted vault in {} (Argon2id {memory_kib} KiB, t={iterations}); the passphrase cannot be recovered: keep it safe",
                state_dir.display()
            ),
            Notice::Interrupted { run_id } => write!(
                f,
                "run {run_id} was interrupted (the engine stopped during it)"
            ),
            Notice::CleanedUp { what } => write!(f, "cleaned up after an earlier crash: {what}"),
            Notice::WorkspaceCreated { path } => {
                write!(f, "created empty workspace {}", path.display())
            }
            Notice::RiskModel { status } => write!(f, "{status}"),
        }
    }
}

/// How a session reaches its state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Read and write; with `create`, make the vault on first use.
    Write { create: bool },
    /// Only read: nothing in the state dir is created, changed or locked for writing.
    Read,
}

pub struct SessionOptions {
    pub state_dir: PathBuf,
    pub passphrase: PassphraseSource,
    pub access: Access,
    /// Who the ledger says acted (e.g. `cli:alice`, `user:bob`).
    pub actor: String,
}

/// Run state kept in a store several machines share (docs/scaling.md), ready to use: this
/// node's vault opened for that store, the store's backend and ledger, and this node's id.
pub struct SharedState {
    pub vault: Vault,
    pub backend: Arc<dyn crate::storage::StateBackend>,
    pub ledger: Arc<dyn secureclaw_vault::LedgerSource>,
    /// A stable id of this node (kept in its state directory): runs it starts carry it, and
    /// only its own runs are its to mark interrupted after a crash.
    pub node: String,
}

/// An open session. Cheap to clone; every clone is the same session.
#[derive(Clone)]
pub struct Session {
    inner: Arc<Inner>,
}

struct Inner {
    state_dir: PathBuf,
    store: Arc<RunStore>,
    /// Where the ledger lives when the state is shared; `None`: the vault's own database.
    shared_ledger: Option<Arc<dyn secureclaw_vault::LedgerSource>>,
    actor: String,
    notices: Mutex<Vec<Notice>>,
    /// Runs going on in this process, by id.
    live: Mutex<HashMap<String, LiveRun>>,
    /// Told each time a run starts or ends here.
    live_changed: tokio::sync::watch::Sender<u64>,
    risk_model: OnceLock<RiskModel>,
}

struct RiskModel {
    model: Option<Arc<secureclaw_llm::CommandRiskModel>>,
    status: String,
    active: bool,
}

/// A run to start.
pub struct RunRequest {
    pub workflow: Validated,
    pub inputs: BTreeMap<String, Value>,
    pub workspace: PathBuf,
    pub settings: RunSettings,
    /// Asks a person at a gate; without one, a gate parks the run.
    pub approver: Option<Arc<dyn Approver>>,
}

/// How a run is executed: kept with a parked run, so it resumes the same way.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RunSettings {
    /// Overrides the file's `sandbox.backend` (default `native`).
    pub backend: Option<Backend>,
    /// Tiers approved up front.
    pub approve: Vec<Tier>,
    /// Approve everything, including steps marked `approve: true`.
    pub yes: bool,
    /// Refuse the unisolated `host` backend.
    pub forbid_host: bool,
    /// Steps at once (0: 4).
    pub jobs: usize,
    pub fail_fast: bool,
    /// Write budget of isolated steps (`1Gi`); `None`: the default.
    pub disk_limit: Option<String>,
    /// Host paths every isolated step may read.
    pub read_only: Vec<String>,
    /// Who or what started the run, when the session's actor does not say it all: `user:NAME`,
    /// `rerun:TASK`, `trigger:NAME`, `schedule:SOURCE/PATH`, `watch:SOURCE/PATH`. Recorded in
    /// the run and the ledger.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_by: Option<String>,
}

/// A run going on: its id, its events, and a way to stop it.
pub struct RunHandle {
    run_id: String,
    log: EventLog,
    cancel: CancellationToken,
    join: JoinHandle<Result<RunRecord, EngineError>>,
}

impl RunHandle {
    pub fn id(&self) -> &str {
        &self.run_id
    }

    /// Events after sequence number `after` (0: all), then live ones until the run ends.
    pub fn events(&self, after: u64) -> EventStream {
        self.log.subscribe(after)
    }

    /// Stop the run: running steps are killed and rolled back, the run is marked cancelled.
    pub fn cancel(&self) {
        self.cancel.cancel();
    }

    pub fn cancel_token(&self) -> CancellationToken {
        self.cancel.clone()
    }

    /// The run's record once it finished or parked.
    pub async fn wait(self) -> Result<RunRecord, SessionError> {
        match self.join.await {
            Ok(r) => Ok(r?),
            Err(e) => Err(SessionError::Task(e.to_string())),
        }
    }
}

/// What a revert did, or would do.
#[derive(Debug)]
pub enum RevertOutcome {
    Planned(RevertPlan),
    Applied(RevertReport),
}

pub struct RevertOptions {
    pub step: Option<String>,
    pub cascade: bool,
    pub force: bool,
    pub dry_run: bool,
}

impl Session {
    /// Open the state in `opts.state_dir` (creating the vault if asked and missing).
    pub fn open(opts: SessionOptions) -> Result<Session, SessionError> {
        let dir = opts.state_dir.clone();
        let mut notices = Vec::new();
        let vault_err = |source: VaultError| match source {
            VaultError::WrongPassphrase => SessionError::WrongPassphrase { dir: dir.clone() },
            cause => SessionError::Vault {
                dir: dir.clone(),
                cause,
            },
        };
        let vault = if Vault::exists(&dir) {
            // A key `secureclaw unlock` left in the agent first (no passphrase, no Argon2id);
            // the passphrase when there is none.
            let from_agent = match opts.access {
                Access::Write { .. } => Vault::open_with_agent(&dir),
                Access::Read => Vault::open_for_reading_with_agent(&dir),
            }
            .map_err(vault_err)?;
            match from_agent {
                Some(v) => v,
                None => {
                    let secret = opts.passphrase.resolve()?;
                    match opts.access {
                        Access::Write { .. } => Vault::open(&dir, &secret),
                        Access::Read => Vault::open_for_reading(&dir, &secret),
                    }
                    .map_err(vault_err)?
                }
            }
        } else if opts.access == (Access::Write { create: true }) {
            let secret = opts.passphrase.resolve_new()?;
            let params = KdfParams::from_env().map_err(vault_err)?;
            let v = Vault::create(&dir, &secret, &params).map_err(vault_err)?;
            notices.push(Notice::VaultCreated {
                state_dir: dir.clone(),
                memory_kib: params.memory_kib,
                iterations: params.iterations,
            });
            v
        } else {
            return Err(SessionError::NoVault { dir });
        };
        let store = Arc::new(RunStore::new(vault, opts.actor.clone()));
        Self::start(dir, store, None, opts.actor, notices)
    }

    /// A session on state shared by several machines: `opts.state_dir` is this node's own
    /// directory (its blobs), `shared` the store every node reads and writes.
    pub fn open_shared(opts: SessionOptions, shared: SharedState) -> Result<Session, SessionError> {
        let store = Arc::new(
            RunStore::with_backend(shared.vault, shared.backend, opts.actor.clone())
                .with_node(shared.node),
        );
        Self::start(
            opts.state_dir,
            store,
            Some(shared.ledger),
            opts.actor,
            Vec::new(),
        )
    }

    /// The session over `store`, after marking the runs its node left running as interrupted.
    fn start(
        state_dir: PathBuf,
        store: Arc<RunStore>,
        shared_ledger: Option<Arc<dyn secureclaw_vault::LedgerSource>>,
        actor: String,
        mut notices: Vec<Notice>,
    ) -> Result<Session, SessionError> {
        for run_id in store.mark_interrupted()? {
            notices.push(Notice::Interrupted { run_id });
        }
        Ok(Session {
            inner: Arc::new(Inner {
                state_dir,
                store,
                shared_ledger,
                actor,
                notices: Mutex::new(notices),
                live: Mutex::new(HashMap::new()),
                live_changed: tokio::sync::watch::channel(0).0,
                risk_model: OnceLock::new(),
            }),
        })
    }

    /// On a shared store, refuses a run another node ran: only that node's disk has its
    /// workspace and the pre-images that undo it (docs/scaling.md, placement).
    fn require_here(&self, record: &RunRecord) -> Result<(), SessionError> {
        match (self.inner.store.node(), &record.node) {
            (Some(here), Some(node)) if here != node => Err(SessionError::OtherNode {
                run: record.run_id.clone(),
                node: node.clone(),
                here: here.to_string(),
            }),
            _ => Ok(()),
        }
    }

    /// On a shared store: `run` was being run by `node`, whose lease on it lapsed. Marks it
    /// interrupted (the steps in flight are rolled back when that node is back); returns
    /// them, or `None` when the run was no longer running.
    pub fn mark_lease_lost(
        &self,
        run: &str,
        node: &str,
    ) -> Result<Option<Vec<String>>, SessionError> {
        Ok(self.inner.store.mark_lease_lost(run, node)?)
    }

    /// On a shared store: `node` lost the lease on `run` before its start was stored; records
    /// it interrupted (see [`crate::record::RunStore::mark_lost_before_start`]).
    pub fn mark_lost_before_start(
        &self,
        run: &str,
        workflow: &str,
        node: &str,
    ) -> Result<bool, SessionError> {
        Ok(self
            .inner
            .store
            .mark_lost_before_start(run, workflow, node)?)
    }

    /// This node's id on a shared store.
    pub fn node(&self) -> Option<&str> {
        self.inner.store.node()
    }

    /// The ledger, wherever this session's state keeps it.
    fn ledger(&self) -> secureclaw_vault::Ledger<'_> {
        let vault = self.inner.store.vault();
        match &self.inner.shared_ledger {
            Some(source) => vault.ledger_in(&**source),
            None => vault.ledger(),
        }
    }

    pub fn state_dir(&self) -> &Path {
        &self.inner.state_dir
    }

    /// A new read-only session on the same state with the keys this one holds: what a reader
    /// following runs of another process opens again to see what that process stored since.
    pub fn reopened_for_reading(&self) -> Result<Session, SessionError> {
        if self.inner.shared_ledger.is_some() {
            // A shared store has no snapshot to renew: every read sees the latest commit.
            return Ok(self.clone());
        }
        let vault = self
            .inner
            .store
            .vault()
            .reopen_for_reading()
            .map_err(|cause| SessionError::Vault {
                dir: self.inner.state_dir.clone(),
                cause,
            })?;
        Ok(Session {
            inner: Arc::new(Inner {
                state_dir: self.inner.state_dir.clone(),
                store: Arc::new(RunStore::new(vault, self.inner.actor.clone())),
                shared_ledger: None,
                actor: self.inner.actor.clone(),
                notices: Mutex::new(Vec::new()),
                live: Mutex::new(HashMap::new()),
                live_changed: tokio::sync::watch::channel(0).0,
                risk_model: OnceLock::new(),
            }),
        })
    }

    pub fn actor(&self) -> &str {
        &self.inner.actor
    }

    /// Notices gathered since the last call.
    pub fn take_notices(&self) -> Vec<Notice> {
        self.inner
            .notices
            .lock()
            .map(|mut n| std::mem::take(&mut *n))
            .unwrap_or_default()
    }

    fn notice(&self, n: Notice) {
        if let Ok(mut v) = self.inner.notices.lock() {
            v.push(n);
        }
    }

    fn risk_model(&self) -> &RiskModel {
        self.inner.risk_model.get_or_init(|| {
            let (model, status) = secureclaw_llm::load_risk_model();
            RiskModel {
                model: model.map(Arc::new),
                status: status.to_string(),
                active: status.active,
            }
        })
    }

    // ---- runs -------------------------------------------------------------------------

    /// Start a run. It goes on in the background; the handle gives its events and record.
    pub fn submit(&self, req: RunRequest) -> Result<RunHandle, SessionError> {
        self.submit_as(req, crate::record::new_run_id())
    }

    /// [`Session::submit`] under a given run id: a worker running a run a server queued,
    /// under the id the server already gave the task.
    pub fn submit_as(&self, req: RunRequest, run_id: String) -> Result<RunHandle, SessionError> {
        if self.is_live(&run_id) || self.inner.store.get(&run_id)?.is_some() {
            return Err(SessionError::Busy(run_id));
        }
        let workspace = prepare_workspace(self, &req.workspace)?;
        let request = serde_json::to_value(&req.settings).unwrap_or_default();
        let prepared = self.prepare(&req.workflow, &req.settings, &workspace)?;
        let log = EventLog::new(run_id.clone(), 0, Some(self.inner.store.clone()));
        Ok(self.spawn(
            prepared,
            Launch {
                run_id,
                log,
                workflow: req.workflow,
                workspace,
                inputs: req.inputs,
                fail_fast: req.settings.fail_fast,
                started_by: req.settings.started_by.clone(),
                resume: None,
                request,
                approver: req.approver,
            },
        ))
    }

    /// [`Session::submit_as`] for a run handed out by a shared store's work queue under
    /// `lease` (the queue's token): every save of the run carries the lease and fails once it
    /// lapsed, which stops the run (its running steps are rolled back) with
    /// [`crate::storage::StorageError::LeaseLost`].
    pub fn submit_leased(
        &self,
        req: RunRequest,
        run_id: String,
        lease: String,
    ) -> Result<RunHandle, SessionError> {
        if self.is_live(&run_id) {
            return Err(SessionError::Busy(run_id));
        }
        self.inner.store.hold_lease(&run_id, lease);
        let handle = self.submit_as(req, run_id.clone());
        if handle.is_err() {
            self.inner.store.release_lease(&run_id);
        }
        handle
    }

    /// [`Session::resume`] for a run handed out by a shared store's work queue under `lease`
    /// (as [`Session::submit_leased`]): the parked run goes on here, its saves fenced by the
    /// lease.
    pub fn resume_leased(
        &self,
        run: &str,
        force: bool,
        lease: String,
    ) -> Result<RunHandle, SessionError> {
        let run = self.leasable(run)?;
        self.inner.store.hold_lease(&run, lease);
        let handle = self.resume(&run, force, None);
        if handle.is_err() {
            self.inner.store.release_lease(&run);
        }
        handle
    }

    /// [`Session::retry`] under `lease` (see [`Session::resume_leased`]).
    pub async fn retry_leased(
        &self,
        run: &str,
        force: bool,
        lease: String,
    ) -> Result<RunHandle, SessionError> {
        let run = self.leasable(run)?;
        self.inner.store.hold_lease(&run, lease);
        let handle = self.retry(&run, force, None).await;
        if handle.is_err() {
            self.inner.store.release_lease(&run);
        }
        handle
    }

    /// `run`'s full id, when no run of that id is going on here (its lease must stay its own).
    fn leasable(&self, run: &str) -> Result<String, SessionError> {
        let id = self.inner.store.resolve(run)?;
        if self.is_live(&id) {
            return Err(SessionError::Busy(id));
        }
        Ok(id)
    }

    /// Start a run (new or resumed) on a task of its own, registered as live until it ends.
    fn spawn(&self, prepared: Prepared, launch: Launch) -> RunHandle {
        let Launch {
            run_id,
            log,
            workflow,
            workspace,
            inputs,
            fail_fast,
            started_by,
            resume,
            request,
            approver,
        } = launch;
        let risk = self.risk_model();
        let opts = RunOptions {
            workspace,
            state_dir: self.inner.state_dir.clone(),
            inputs,
            jobs: prepared.jobs,
            fail_fast,
            base_limits: prepared.limits,
            read_only: prepared.read_only,
            risk_model: risk.model.clone(),
            risk_model_status: risk.status.clone(),
            run_id: Some(run_id.clone()),
            resume,
            request,
            started_by,
        };
        let secrets = Arc::new(crate::inputs::Secrets::new(
            &workflow.workflow,
            &opts.inputs,
        ));
        let engine = Engine {
            sandbox: prepared.sandbox,
            approver: approver.unwrap_or_else(|| Arc::new(NoApprover)),
            policy: prepared.policy,
            events: secrets.wrap(log.sink()),
            store: self.inner.store.clone(),
        };
        let cancel = CancellationToken::new();
        if let Ok(mut live) = self.inner.live.lock() {
            live.insert(
                run_id.clone(),
                LiveRun {
                    log: log.clone(),
                    cancel: cancel.clone(),
                },
            );
        }
        self.inner.live_changed.send_modify(|n| *n += 1);
        let (me, log2, c2, id2) = (self.clone(), log.clone(), cancel.clone(), run_id.clone());
        let join = tokio::spawn(async move {
            let out = engine.run(&workflow, opts, c2).await;
            // Before the run stops being live: what comes after it (a revert) holds no lease.
            me.inner.store.release_lease(&id2);
            if let Err(e) = &out {
                // A run that could not start still ends its event stream.
                log2.emit(RunEvent::RunFinished {
                    state: RunState::Failed,
                    message: Some(e.to_string()),
                });
            }
            log2.close();
            // The run's last events were only handed to the store's writer: a caller told the
            // run ended (a worker that then gives its job back, which ends the lease those
            // events are committed under) must find them durable. (It fails only when the
            // store does, and then there is nothing left to wait for.)
            let _ = me.sync().await;
            if let Ok(mut live) = me.inner.live.lock() {
                live.remove(&id2);
            }
            me.inner.live_changed.send_modify(|n| *n += 1);
            out
        });
        RunHandle {
            run_id,
            log,
            cancel,
            join,
        }
    }

    /// Sandbox, policy, limits and grants for a run.
    fn prepare(
        &self,
        wf: &Validated,
        settings: &RunSettings,
        workspace: &Path,
    ) -> Result<Prepared, SessionError> {
        check_state_layout(workspace, &self.inner.state_dir).map_err(|why| {
            SessionError::invalid(
                why,
                Some("leave --state-dir out (the default `WORKSPACE/.secureclaw` is hidden from steps), or put it outside the workspace"),
            )
        })?;
        let backend = settings
            .backend
            .or(wf.workflow.sandbox.backend)
            .unwrap_or(Backend::Native);
        if backend == Backend::Host && settings.forbid_host {
            return Err(SessionError::invalid(
                "policy forbids the unisolated `host` backend (--forbid-host / SECURECLAW_FORBID_HOST)",
                None,
            ));
        }
        let sandbox = secureclaw_sandbox::by_name(backend.as_str()).map_err(|e| {
            SessionError::invalid(
                e.to_string(),
                (backend != Backend::Host)
                    .then_some("`--sandbox host` runs without isolation, if you accept that"),
            )
        })?;
        for what in secureclaw_sandbox::sweep_leftovers() {
            self.notice(Notice::CleanedUp { what });
        }
        let mut policy = if settings.yes {
            Policy::yes()
        } else {
            Policy::default()
        };
        policy.pre_approved.extend(settings.approve.iter().copied());
        policy.allow_host = !settings.forbid_host;
        let mut limits = secureclaw_sandbox::Limits::from_env()
            .map_err(|e| SessionError::invalid(e.to_string(), None))?;
        if let Some(text) = &settings.disk_limit {
            match crate::units::SizeText(text.clone()).parse() {
                Ok(bytes) if bytes > 0 => limits.disk_bytes = bytes,
                _ => {
                    return Err(SessionError::invalid(
                        format!(
                            "--disk-limit / SECURECLAW_DISK_LIMIT {text:?}: expected a positive size such as 1Gi or 500Mi"
                        ),
                        None,
                    ));
                }
            }
        }
        let home = std::env::var_os("HOME").map(PathBuf::from);
        let mut read_only = Vec::new();
        for entry in &settings.read_only {
            let p = secureclaw_sandbox::grants::resolve(
                entry,
                home.as_deref(),
                Some(&self.inner.state_dir),
            )
            .map_err(|e| SessionError::invalid(format!("--read-only: {e}"), None))?;
            read_only.push(p);
        }
        let rm = self.risk_model();
        if rm.active {
            self.notice(Notice::RiskModel {
                status: rm.status.clone(),
            });
        }
        Ok(Prepared {
            sandbox,
            policy,
            limits,
            read_only,
            jobs: if settings.jobs == 0 { 4 } else { settings.jobs },
        })
    }

    /// Events of a run after `after`: live if it runs in this process, else as stored.
    pub fn events(&self, run: &str, after: u64) -> Result<EventStream, SessionError> {
        // A run that just started may have no stored record to resolve yet: its full id is
        // enough while it is live.
        let id = match self.is_live(run) {
            true => run.to_string(),
            false => self.inner.store.resolve(run)?,
        };
        if let Ok(live) = self.inner.live.lock()
            && let Some(run) = live.get(&id)
        {
            return Ok(run.log.subscribe(after));
        }
        Ok(EventStream::stored(self.inner.store.clone(), &id, after))
    }

    /// The number of the last event a run has stored (0: none yet); events after it are new.
    pub fn last_event_seq(&self, run: &str) -> Result<u64, SessionError> {
        let id = self.inner.store.resolve(run)?;
        Ok(last_stored_seq(&self.inner.store, &id))
    }

    /// Wait until everything handed to the store before this call (events included) is
    /// durable: the writer commits in order, so an empty commit returns once they are.
    pub async fn sync(&self) -> Result<(), SessionError> {
        self.inner.store.commit(Batch::default()).await?;
        Ok(())
    }

    /// True when `run` is going on in this process now.
    pub fn is_live(&self, run: &str) -> bool {
        self.inner
            .live
            .lock()
            .map(|l| l.contains_key(run))
            .unwrap_or(false)
    }

    /// How many runs are going on in this process.
    pub fn live_count(&self) -> usize {
        self.inner.live.lock().map(|l| l.len()).unwrap_or(0)
    }

    /// A receiver told each time a run starts or ends in this process (e.g. to pick up a
    /// parked run's events again once it resumes).
    pub fn live_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.live_changed.subscribe()
    }

    /// On a shared store: a receiver told each time any node commits events of `run` (a run
    /// another node executes has new events to read). `None` where this process alone writes.
    pub fn event_commits(&self, run: &str) -> Option<tokio::sync::watch::Receiver<u64>> {
        self.inner.store.event_commits(run)
    }

    /// Cancel a run going on in this process: running steps are killed and rolled back, the
    /// run is marked cancelled. False when it is not running here.
    pub fn cancel(&self, run: &str) -> Result<bool, SessionError> {
        let id = match self.is_live(run) {
            true => run.to_string(),
            false => self.inner.store.resolve(run)?,
        };
        let token = self
            .inner
            .live
            .lock()
            .ok()
            .and_then(|l| l.get(&id).map(|r| r.cancel.clone()));
        Ok(match token {
            Some(t) => {
                t.cancel();
                true
            }
            None => false,
        })
    }

    /// Cancel every run going on here and wait until each has ended (rolled back and
    /// recorded). Parked runs are not running and stay parked.
    pub async fn shutdown(&self) {
        let mut changes = self.live_changes();
        let tokens: Vec<CancellationToken> = self
            .inner
            .live
            .lock()
            .map(|l| l.values().map(|r| r.cancel.clone()).collect())
            .unwrap_or_default();
        for t in tokens {
            t.cancel();
        }
        while self.live_count() > 0 {
            if changes.changed().await.is_err() {
                break;
            }
        }
    }

    /// Every recorded run, oldest first.
    pub fn runs(&self) -> Result<Vec<RunRecord>, SessionError> {
        Ok(self.inner.store.list()?)
    }

    /// One run: an id, a unique prefix, or `last`.
    pub fn show(&self, run: &str) -> Result<RunRecord, SessionError> {
        Ok(self.inner.store.load(run)?)
    }

    // ---- approvals and resume --------------------------------------------------------

    /// The saved state of a parked run.
    pub fn parked(&self, run: &str) -> Result<(RunRecord, ParkState), SessionError> {
        let record = self.inner.store.load(run)?;
        let park: Option<ParkState> = self.inner.store.get_json(Table::Parked, &record.run_id)?;
        match park {
            Some(p) if record.state == RunState::AwaitingApproval => Ok((record, p)),
            _ => Err(SessionError::NotParked {
                run: record.run_id.clone(),
                state: label(&record.state),
            }),
        }
    }

    /// The gates a parked run waits at, each with the decision already given for it, if any
    /// (a decision counts only while its hash is the gate's).
    pub fn gates(
        &self,
        run: &str,
    ) -> Result<Vec<(PendingApproval, Option<StepDecision>)>, SessionError> {
        let (record, park) = self.parked(run)?;
        park.pending
            .into_iter()
            .map(|p| {
                let d: Option<StepDecision> = self.inner.store.get_json(
                    Table::Approvals,
                    &decision_key(&record.run_id, &p.request.step),
                )?;
                Ok((p, d))
            })
            .collect()
    }

    /// Approve the gates of a parked run (`step`: one of them; `None`: all it waits at).
    pub async fn approve(
        &self,
        run: &str,
        step: Option<&str>,
        by: &str,
    ) -> Result<Vec<StepDecision>, SessionError> {
        self.decide(run, step, by, true, None).await
    }

    /// Deny a gate of a parked run: on resume the step is skipped with what needs it.
    pub async fn deny(
        &self,
        run: &str,
        step: &str,
        by: &str,
        reason: Option<String>,
    ) -> Result<Vec<StepDecision>, SessionError> {
        self.decide(run, Some(step), by, false, reason).await
    }

    async fn decide(
        &self,
        run: &str,
        step: Option<&str>,
        by: &str,
        approved: bool,
        reason: Option<String>,
    ) -> Result<Vec<StepDecision>, SessionError> {
        let (record, park) = self.parked(run)?;
        let waiting: Vec<String> = park
            .pending
            .iter()
            .map(|p| p.request.step.clone())
            .collect();
        let chosen: Vec<_> = park
            .pending
            .iter()
            .filter(|p| step.is_none_or(|s| s == p.request.step))
            .collect();
        if let (Some(s), true) = (step, chosen.is_empty()) {
            return Err(SessionError::NotWaiting {
                run: record.run_id.clone(),
                step: s.to_string(),
                waiting,
            });
        }
        let store = &self.inner.store;
        let mut batch = Batch::default();
        let mut out = Vec::new();
        let mut events = Vec::new();
        for p in chosen {
            let d = StepDecision {
                step: p.request.step.clone(),
                approved,
                by: by.to_string(),
                hash: p.hash.clone(),
                at: crate::record::now_rfc3339(),
                reason: reason.clone(),
            };
            batch
                .put_json(Table::Approvals, decision_key(&record.run_id, &d.step), &d)
                .map_err(StoreError::from)?;
            batch.entries.push(
                store
                    .entry(secureclaw_vault::kind::APPROVAL_GIVEN)
                    .run(record.run_id.clone())
                    .step(d.step.clone())
                    .tier(serde_json::json!(p.request.tier))
                    .result(serde_json::json!({
                        "scope": "parked",
                        "approved": approved,
                        "by": by,
                        "request_hash": d.hash,
                        "reason": reason,
                    })),
            );
            events.push(RunEvent::ApprovalDecided {
                step: d.step.clone(),
                approved,
                by: by.to_string(),
            });
            out.push(d);
        }
        store.commit(batch).await?;
        self.append_events(&record.run_id, events).await?;
        // The events above are queued, not yet stored; a resume right after numbers its events
        // from what is stored.
        self.sync().await?;
        Ok(out)
    }

    /// Continue a parked run. Refuses when the workspace changed since it parked, unless
    /// `force`.
    pub fn resume(
        &self,
        run: &str,
        force: bool,
        approver: Option<Arc<dyn Approver>>,
    ) -> Result<RunHandle, SessionError> {
        let (record, park) = self.parked(run)?;
        let (workflow, settings) = self.reopen_checks(&record, &park, force, "parked", "resume")?;
        self.relaunch(record, park, workflow, settings, Vec::new(), approver)
    }

    /// Continue a failed run from its failed step: the steps that succeeded stay done (their
    /// changes are in the workspace and their outputs feed later templates), the failed step
    /// and everything that did not run because of it run again, in the same run; conditions
    /// are evaluated again on what the retried steps now come to. Refuses when
    /// the workspace changed since the failure, unless `force`.
    pub async fn retry(
        &self,
        run: &str,
        force: bool,
        approver: Option<Arc<dyn Approver>>,
    ) -> Result<RunHandle, SessionError> {
        // The failure's last events may still be on their way to the store; the retry numbers
        // its events after the stored ones, so they must all be there first.
        self.sync().await?;
        let mut record = self.inner.store.load(run)?;
        if record.state != RunState::Failed {
            return Err(SessionError::NotFailed {
                run: record.run_id.clone(),
                state: label(&record.state),
            });
        }
        let kept: Option<ParkState> = self.inner.store.get_json(Table::Retries, &record.run_id)?;
        let Some(kept) = kept else {
            return Err(SessionError::invalid(
                format!(
                    "run `{}` failed before any step ran, or before this version kept what a retry needs; it cannot be retried",
                    record.run_id
                ),
                Some("run the workflow again as a new run"),
            ));
        };
        // The steps that succeeded are what a retry builds on; once undone, there is nothing
        // to go on from.
        if !record.reverts.is_empty() {
            return Err(SessionError::invalid(
                format!(
                    "run `{}` was reverted since it failed; a retry would build on steps whose changes were undone",
                    record.run_id
                ),
                Some("run the workflow again as a new run"),
            ));
        }
        let (workflow, settings) = self.reopen_checks(&record, &kept, force, "failed", "retry")?;
        // A step that ran stays done, whatever it ran after: a failure path that already ran
        // (`if: failure()`, `if: always()`) is not run again nor undone, and a failure that
        // `continue_on_error` let through was already accounted for.
        let again: Vec<usize> = record
            .steps
            .iter()
            .enumerate()
            .filter(|(_, s)| s.state != StepState::Succeeded && !s.continued)
            .map(|(i, _)| i)
            .collect();
        // A failed step that kept changes (`keep_on_failure: true`, or a rollback that failed)
        // holds the only change set revert can undo them with; running it again would replace
        // that change set, so the run could no longer be reverted whole.
        if let Some(s) = again
            .iter()
            .map(|&i| &record.steps[i])
            .find(|s| s.changes.as_ref().is_some_and(|c| !c.is_empty()))
        {
            return Err(SessionError::invalid(
                format!(
                    "step `{}` of run `{}` kept workspace changes when it failed; running it again would lose what undoes them",
                    s.id, record.run_id
                ),
                Some("revert the run, then run the workflow again as a new run"),
            ));
        }
        let mut retried = Vec::with_capacity(again.len());
        for i in again {
            let step = &mut record.steps[i];
            retried.push(step.id.clone());
            *step = StepRecord {
                needs: std::mem::take(&mut step.needs),
                compensate: step.compensate.take(),
                network: std::mem::take(&mut step.network),
                ..StepRecord::pending(
                    step.id.clone(),
                    step.kind,
                    step.tier,
                    std::mem::take(&mut step.rule),
                    step.inverse,
                )
            };
        }
        self.relaunch(record, kept, workflow, settings, retried, approver)
    }

    /// What resume and retry check before a stopped run goes on: it is not running here, its
    /// workflow text is the one it ran, and (unless `force`) the workspace is as it left it.
    fn reopen_checks(
        &self,
        record: &RunRecord,
        park: &ParkState,
        force: bool,
        stopped: &'static str,
        verb: &'static str,
    ) -> Result<(Validated, RunSettings), SessionError> {
        self.require_here(record)?;
        if let Ok(live) = self.inner.live.lock()
            && live.contains_key(&record.run_id)
        {
            return Err(SessionError::Busy(record.run_id.clone()));
        }
        let settings: RunSettings =
            serde_json::from_value(park.request.clone()).unwrap_or_default();
        let workflow =
            crate::validate::validate_bytes(&park.workflow_file, park.workflow_source.as_bytes())
                .map_err(|d| {
                SessionError::invalid(
                    format!("the {stopped} run's workflow no longer validates: {d}"),
                    None,
                )
            })?;
        if workflow.sha256 != record.workflow_sha256 {
            return Err(SessionError::invalid(
                format!("the {stopped} run's workflow text does not match its recorded hash"),
                None,
            ));
        }
        if let Some(before) = &park.manifest
            && !force
        {
            let snap = Snapshotter::new(
                self.inner.store.vault().clone(),
                &record.workspace,
                &self.inner.state_dir,
            )?;
            let now = snap.scan_hash_only(Some(before))?;
            let drift = crate::snapshot::diff(before, &now);
            if !drift.is_empty() {
                return Err(SessionError::Drift {
                    run: record.run_id.clone(),
                    paths: drift.changes.iter().map(|c| c.path.display()).collect(),
                    stopped,
                    verb,
                });
            }
        }
        Ok((workflow, settings))
    }

    /// Start a stopped run again on its saved state (`retried`: the steps a retry runs again).
    fn relaunch(
        &self,
        record: RunRecord,
        park: ParkState,
        workflow: Validated,
        settings: RunSettings,
        retried: Vec<String>,
        approver: Option<Arc<dyn Approver>>,
    ) -> Result<RunHandle, SessionError> {
        let mut decisions = BTreeMap::new();
        for s in &workflow.workflow.steps {
            let d: Option<StepDecision> = self
                .inner
                .store
                .get_json(Table::Approvals, &decision_key(&record.run_id, &s.id))?;
            if let Some(d) = d {
                decisions.insert(s.id.clone(), d);
            }
        }
        let workspace = record.workspace.clone();
        let prepared = self.prepare(&workflow, &settings, &workspace)?;
        let last = last_stored_seq(&self.inner.store, &record.run_id);
        let log = EventLog::new(record.run_id.clone(), last, Some(self.inner.store.clone()));
        Ok(self.spawn(
            prepared,
            Launch {
                run_id: record.run_id.clone(),
                log,
                workflow,
                workspace,
                inputs: park.inputs,
                fail_fast: settings.fail_fast,
                started_by: settings.started_by.clone(),
                resume: Some(Resume {
                    record,
                    views: park.views,
                    decisions,
                    write_seq: park.write_seq,
                    by: self.inner.actor.clone(),
                    retried,
                }),
                request: park.request,
                approver,
            },
        ))
    }

    /// Append events to a run's stored log (a run not going on here).
    async fn append_events(&self, run_id: &str, events: Vec<RunEvent>) -> Result<(), SessionError> {
        let live = self
            .inner
            .live
            .lock()
            .ok()
            .and_then(|l| l.get(run_id).map(|r| r.log.clone()));
        let log = match live {
            Some(log) => log,
            None => {
                // The run's last events (a stretch that just parked or ended, or an earlier
                // append) are handed to the store before it stops being live, but may not be
                // stored yet: numbering from what is stored before they are would reuse
                // their numbers.
                self.sync().await?;
                EventLog::new(
                    run_id,
                    last_stored_seq(&self.inner.store, run_id),
                    Some(self.inner.store.clone()),
                )
            }
        };
        for e in events {
            log.emit(e);
        }
        log.flush();
        Ok(())
    }

    // ---- revert and diff -------------------------------------------------------------

    /// Undo a run or one step; with `dry_run`, only say what would happen.
    pub async fn revert(
        &self,
        run: &str,
        opts: RevertOptions,
    ) -> Result<RevertOutcome, SessionError> {
        let store = &self.inner.store;
        let mut record = store.load(run)?;
        self.require_here(&record)?;
        let snap = Snapshotter::new(
            store.vault().clone(),
            &record.workspace,
            &self.inner.state_dir,
        )?;
        let req = RevertRequest {
            step: opts.step.clone(),
            cascade: opts.cascade,
            force: opts.force,
        };
        let plan = crate::revert::plan(&snap, &record, &req)?;
        if opts.dry_run {
            return Ok(RevertOutcome::Planned(plan));
        }
        let run_id = record.run_id.clone();
        self.append_events(
            &run_id,
            vec![RunEvent::RevertStarted {
                steps: plan.steps.iter().map(|s| s.id.clone()).collect(),
                dry_run: false,
            }],
        )
        .await?;
        let report = crate::revert::apply(store, &snap, &mut record, &plan, &req).await?;
        let mut events: Vec<RunEvent> = plan
            .steps
            .iter()
            .map(|s| RunEvent::RevertStep {
                step: s.id.clone(),
                action: s.action.label().to_string(),
                ok: report.summary.reverted.contains(&s.id),
                detail: None,
            })
            .collect();
        events.push(RunEvent::RevertFinished {
            state: report.summary.state.clone(),
        });
        self.append_events(&run_id, events).await?;
        Ok(RevertOutcome::Applied(report))
    }

    /// What a run (or one step) changed, in write order: (step id, changes).
    pub fn changes(
        &self,
        run: &str,
        step: Option<&str>,
    ) -> Result<(RunRecord, Vec<(String, ChangeSet)>), SessionError> {
        let record = self.inner.store.load(run)?;
        if let Some(id) = step
            && record.step(id).is_none()
        {
            return Err(SessionError::invalid(
                format!("run `{}` has no step `{id}`", record.run_id),
                None,
            ));
        }
        let mut steps: Vec<_> = record
            .steps
            .iter()
            .filter(|s| step.is_none_or(|id| id == s.id))
            .filter_map(|s| {
                s.changes
                    .as_ref()
                    .map(|c| (s.write_seq, s.id.clone(), c.clone()))
            })
            .collect();
        steps.sort_by_key(|(seq, _, _)| *seq);
        let out = steps.into_iter().map(|(_, id, c)| (id, c)).collect();
        Ok((record, out))
    }

    /// A change set as a unified diff (contents from the encrypted pre-/post-images).
    pub fn render_diff(&self, changes: &ChangeSet, color: bool) -> Result<String, SessionError> {
        Ok(crate::revert::render_diff(
            self.inner.store.vault(),
            changes,
            color,
        )?)
    }

    // ---- planning ---------------------------------------------------------------------

    /// Record a plan's provenance in the ledger (hashes only, keyed).
    pub async fn record_plan(
        &self,
        plan: &crate::planner::Plan,
        run: Option<&str>,
    ) -> Result<(), SessionError> {
        let store = &self.inner.store;
        let mut provenance = plan.provenance();
        if let Some(p) = provenance.as_object_mut() {
            for (plain, keyed, what) in [
                ("prompt_sha256", "prompt_hmac", "prompt"),
                ("yaml_sha256", "yaml_hmac", "plan-yaml"),
            ] {
                if let Some(h) = p.remove(plain) {
                    let h = h.as_str().unwrap_or_default().to_owned();
                    p.insert(keyed.into(), store.digest(what, h.as_bytes()).into());
                }
            }
        }
        let mut entry = store
            .entry(secureclaw_vault::kind::PLAN_CREATED)
            .result(provenance);
        if let Some(r) = run {
            entry = entry.run(r);
        }
        store
            .commit(Batch {
                entries: vec![entry],
                ..Batch::default()
            })
            .await?;
        Ok(())
    }

    // ---- ledger -------------------------------------------------------------------------

    /// Check the whole ledger chain in place.
    pub fn ledger_verify(&self) -> Result<secureclaw_vault::VerifyReport, SessionError> {
        self.ledger().verify().map_err(|cause| SessionError::Vault {
            dir: self.inner.state_dir.clone(),
            cause,
        })
    }
}

/// A run going on in this process.
struct LiveRun {
    log: EventLog,
    cancel: CancellationToken,
}

/// What starts one run, besides what [`Session::prepare`] made for it.
struct Launch {
    run_id: String,
    log: EventLog,
    workflow: Validated,
    workspace: PathBuf,
    inputs: BTreeMap<String, Value>,
    fail_fast: bool,
    started_by: Option<String>,
    resume: Option<Resume>,
    request: Value,
    approver: Option<Arc<dyn Approver>>,
}

struct Prepared {
    sandbox: Arc<dyn secureclaw_sandbox::Sandbox>,
    policy: Policy,
    limits: secureclaw_sandbox::Limits,
    read_only: Vec<PathBuf>,
    jobs: usize,
}

/// The workspace, created when missing; must be a directory.
fn prepare_workspace(session: &Session, workspace: &Path) -> Result<PathBuf, SessionError> {
    if !workspace.exists() {
        std::fs::create_dir_all(workspace).map_err(|e| {
            SessionError::invalid(
                format!("creating workspace {}: {e}", workspace.display()),
                None,
            )
        })?;
        session.notice(Notice::WorkspaceCreated {
            path: workspace.to_path_buf(),
        });
    }
    if !workspace.is_dir() {
        return Err(SessionError::invalid(
            format!("workspace {} is not a directory", workspace.display()),
            None,
        ));
    }
    Ok(workspace.to_path_buf())
}

/// The highest event number stored for a run (0: none), by probing: events are numbered
/// without gaps from 1.
pub fn last_stored_seq(store: &RunStore, run_id: &str) -> u64 {
    let has = |seq: u64| {
        matches!(
            store.get_json::<EventEnvelope>(Table::Events, &event_key(run_id, seq)),
            Ok(Some(_))
        )
    };
    if !has(1) {
        return 0;
    }
    let mut hi = 1u64;
    while has(hi * 2) {
        hi *= 2;
    }
    // has(hi) and !has(hi * 2): the last one is in [hi, hi * 2).
    let (mut lo, mut top) = (hi, hi * 2);
    while top - lo > 1 {
        let mid = lo + (top - lo) / 2;
        if has(mid) {
            lo = mid;
        } else {
            top = mid;
        }
    }
    lo
}

fn label<T: Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}
