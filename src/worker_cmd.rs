//! `secureclaw worker`: runs the work servers queue on a shared store (docs/scaling.md).
//!
//! A worker claims one queued run at a time per free slot (`FOR UPDATE SKIP LOCKED`: no two
//! workers get the same run), runs it in its own workspace under the run id the server gave
//! the task, and renews its lease while it runs. A worker that cannot renew its lease (its
//! lease lapsed and another node marked the run interrupted, or it cannot reach the database
//! for a whole lease) cancels the run, which rolls its running steps back. Every save of the
//! run carries the lease and is refused once it lapsed, so a worker cut off and back cannot
//! overwrite what the cluster recorded meanwhile. Every worker also marks the runs of workers
//! whose leases lapsed as interrupted, and rolls back its own runs that the cluster holds
//! interrupted (at start and every few seconds).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Args;
use console::style;
use secureclaw_engine::record::{RunRecord, RunState};
use secureclaw_engine::session::{
    PassphraseSource, RevertOptions, RunRequest, Session, SessionError,
};
use secureclaw_engine::validate::validate_bytes;
use secureclaw_server::dispatch::{ContinueAnswer, QueuedRun, RoutedContinue, RoutedProblem};
use secureclaw_server::lost_worker;
use secureclaw_server::tasks::model::TaskStore;
use secureclaw_store_pg::{Claimed, Expired, JobKind, LeaseKeeper, Queue};

use crate::exit;

#[derive(Args)]
pub struct WorkerArgs {
    #[command(flatten)]
    pub store: crate::shared_store::StoreArgs,
    /// This worker's own files: its state directory (the pre-images of the runs it executes)
    /// and the tasks' workspaces [default: $XDG_DATA_HOME/secureclaw].
    #[arg(long, env = "SECURECLAW_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// A workspace queued runs may name: NAME=/absolute/path (repeatable).
    #[arg(long = "workspace", value_name = "NAME=PATH")]
    pub workspaces: Vec<String>,
    /// Runs at once.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub jobs: u16,
    /// How long a claim holds without a heartbeat: a worker silent for longer loses its runs
    /// (they are marked interrupted). Renewed every third of it.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub lease: Duration,
    /// Look for work at least this often, even without a notification.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub poll: Duration,
    #[command(flatten)]
    pub pass: crate::vault_cmds::PassphraseArgs,
}

struct Worker {
    session: Session,
    queue: Queue,
    data_dir: PathBuf,
    workspaces: BTreeMap<String, PathBuf>,
    lease: Duration,
    /// Failed attempts at rolling back an interrupted run of this node, by run: the worker
    /// gives up after [`ROLLBACK_TRIES`] and leaves the run to an operator.
    rollback_failures: std::sync::Mutex<BTreeMap<String, u8>>,
    /// Runs of this node the recovery pass looks at ([`Worker::recover`]).
    suspects: std::sync::Mutex<BTreeSet<String>>,
}

/// How often a worker looks at its suspect runs, to roll back those the cluster interrupted.
const RECOVER_EVERY: Duration = Duration::from_secs(5);
/// How often it reads every run instead (a safety net: the suspects should hold them all).
const RECOVER_ALL_EVERY: Duration = Duration::from_secs(600);
/// The least time a job whose lease lapsed stays with the node that expired it before another
/// node records its run interrupted in its place (at least one lease).
const MIN_RECORD_WAIT: Duration = Duration::from_secs(5);
/// How long a finished job is kept (its dedup key with it: a redelivered webhook or a schedule
/// time is recognised for this long, as long as the servers remember delivery ids).
const KEEP_FINISHED_JOBS: Duration = secureclaw_server::retention::KEEP_FOR;
/// How often a worker deletes older finished jobs.
const SWEEP_JOBS_EVERY: Duration = Duration::from_secs(3600);
/// Attempts at rolling a run back before the worker leaves it to an operator.
const ROLLBACK_TRIES: u8 = 5;

pub fn worker_cmd(args: WorkerArgs, pass: &PassphraseSource) -> anyhow::Result<u8> {
    let Some(url) = args.store.url()?.map(str::to_owned) else {
        anyhow::bail!(
            "a worker needs the shared store: pass --store postgres://USER:PASSWORD@HOST:PORT/DB \
             (or set SECURECLAW_STORE), the same one the servers use"
        );
    };
    let data_dir = args
        .data_dir
        .clone()
        .unwrap_or_else(secureclaw_server::config::default_data_dir);
    let mut workspaces = BTreeMap::new();
    for spec in &args.workspaces {
        let (name, path) = spec
            .split_once('=')
            .filter(|(n, p)| !n.is_empty() && std::path::Path::new(p).is_absolute())
            .with_context(|| format!("--workspace {spec}: expected NAME=/absolute/path"))?;
        workspaces.insert(name.to_string(), PathBuf::from(path));
    }
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    let rt = crate::serve_cmd::runtime()?;
    // The session's background work (the store writer, runs) needs the runtime's context.
    let _guard = rt.enter();
    let node =
        crate::shared_store::open_node(&url, &data_dir.join("state"), pass, "worker".into())?;
    let worker = Arc::new(Worker {
        queue: node.store.queue_as(node.vault.clone(), node.id.clone()),
        session: node.session,
        data_dir,
        workspaces,
        lease: args.lease,
        rollback_failures: std::sync::Mutex::new(BTreeMap::new()),
        suspects: std::sync::Mutex::new(BTreeSet::new()),
    });
    eprintln!(
        "{} {} on {} ({} at once, lease {})",
        style("worker").cyan().bold(),
        node.id,
        node.store.url(),
        args.jobs,
        humantime::format_duration(args.lease)
    );
    rt.block_on(worker.clone().serve(usize::from(args.jobs), args.poll))?;
    eprintln!("{} stopped", style("worker").cyan().bold());
    Ok(exit::OK)
}

impl Worker {
    async fn serve(self: Arc<Self>, slots: usize, poll: Duration) -> anyhow::Result<()> {
        self.recover(true).await;
        self.queue.listen().await?;
        // Told each time a run of this worker ends: a slot is free.
        let freed = Arc::new(tokio::sync::Notify::new());
        let running = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let stop = tokio_util::sync::CancellationToken::new();
        let signal = stop.clone();
        tokio::spawn(async move {
            crate::serve_cmd::stop_signal().await;
            signal.cancel();
        });
        let (mut recovered, mut recovered_all) = (Instant::now(), Instant::now());
        let mut swept: Option<Instant> = None;
        while !stop.is_cancelled() {
            if swept.is_none_or(|at| at.elapsed() >= SWEEP_JOBS_EVERY) {
                // Any worker may: a job deleted twice is deleted once.
                if let Err(e) = self.queue.sweep_finished(KEEP_FINISHED_JOBS).await {
                    eprintln!("{} sweeping finished jobs: {e}", style("worker").yellow());
                }
                swept = Some(Instant::now());
            }
            if recovered.elapsed() >= RECOVER_EVERY {
                let full = recovered_all.elapsed() >= RECOVER_ALL_EVERY;
                self.recover(full).await;
                recovered = Instant::now();
                if full {
                    recovered_all = recovered;
                }
            }
            self.expire_others().await;
            let mut claimed_any = false;
            while running.load(std::sync::atomic::Ordering::SeqCst) < slots {
                let job = match self.queue.claim(self.lease).await {
                    Ok(Some(job)) => job,
                    Ok(None) => break,
                    Err(e) => {
                        eprintln!("{} claiming work: {e}", style("worker").yellow());
                        break;
                    }
                };
                claimed_any = true;
                // From the claim on, before anything else: a slow start must not cost the lease.
                let lease = self.queue.keep_lease(&job, self.lease);
                running.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let (me, freed, running) = (self.clone(), freed.clone(), running.clone());
                tokio::spawn(async move {
                    if job.kind == JobKind::Revert.as_str() {
                        me.revert(job, lease).await;
                    } else if job.kind == JobKind::Continue.as_str() {
                        me.go_on(job, lease).await;
                    } else {
                        me.execute(job, lease).await;
                    }
                    running.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                    freed.notify_one();
                });
            }
            if claimed_any {
                continue;
            }
            tokio::select! {
                () = self.queue.wait_for_work(poll) => {}
                () = freed.notified() => {}
                () = stop.cancelled() => {}
            }
        }
        eprintln!(
            "{} stopping: running steps are cancelled and rolled back",
            style("worker").cyan().bold()
        );
        self.session.shutdown().await;
        Ok(())
    }

    /// Marks the runs whose workers' leases lapsed interrupted: those this node just expired,
    /// and those another node expired but did not get to record (it failed or died between
    /// the two writes).
    async fn expire_others(&self) {
        let mut expired = match self.queue.expire_leases().await {
            Ok(e) => e,
            Err(e) => {
                eprintln!("{} expiring leases: {e}", style("worker").yellow());
                Vec::new()
            }
        };
        match self.queue.unrecorded(self.lease.max(MIN_RECORD_WAIT)).await {
            Ok(left) => {
                let left: Vec<_> = left.into_iter().filter(|l| !expired.contains(l)).collect();
                expired.extend(left);
            }
            Err(e) => eprintln!("{} listing unrecorded jobs: {e}", style("worker").yellow()),
        }
        for job in expired {
            // The run the job was executing: a queued run, or one resumed or retried here.
            let queued = (job.kind == JobKind::Run.as_str())
                .then(|| serde_json::from_slice::<QueuedRun>(&job.payload).ok())
                .flatten();
            let run = if let Some(q) = &queued {
                Some((q.run_id.clone(), Some(q.workflow.as_str())))
            } else if job.kind == JobKind::Continue.as_str() {
                serde_json::from_slice::<RoutedContinue>(&job.payload)
                    .ok()
                    .map(|c| (c.run_id, None))
            } else {
                None
            };
            let recorded = match run {
                Some((run, workflow)) => {
                    self.record_interrupted(&job, &run, workflow).await
                        && match &queued {
                            Some(q) => self.rerun_if_asked(q).await,
                            None => true,
                        }
                }
                // No run to record: a routed revert (its replica reports it), or a payload no
                // run can come of.
                None => true,
            };
            if recorded && let Err(e) = self.queue.recorded(job.id).await {
                eprintln!("{} noting job {}: {e}", style("worker").yellow(), job.id);
            }
        }
    }

    /// Queues the rerun of `lost`, a run its worker lost and the cluster holds interrupted, when
    /// its workflow asks for one (`on_worker_lost: rerun`), as a new task of its owner; false
    /// when the store failed (the job stays unrecorded and the next pass tries again). Queued
    /// once however many nodes get here: the queue drops a second rerun of the same run.
    async fn rerun_if_asked(&self, lost: &QueuedRun) -> bool {
        let tasks = TaskStore::new(self.session.clone());
        let node = self.session.node().unwrap_or("worker").to_string();
        let rerun = match lost_worker::rerun_of(&tasks, lost, &node) {
            Ok(r) => r,
            Err(lost_worker::NoRerun::NotAsked) => return true,
            Err(why) => {
                eprintln!(
                    "{} run {} is not run again: {why}",
                    style("worker").yellow(),
                    lost.run_id
                );
                return true;
            }
        };
        // Only a run the cluster holds interrupted: one that ended before its lease lapsed
        // (its worker was cut off before finishing the job) is not run again.
        match self.session.run_record(&lost.run_id) {
            Ok(Some(r)) if r.state == RunState::Interrupted => {}
            Ok(_) => return true,
            Err(e) => {
                eprintln!("{} reading {}: {e}", style("worker").yellow(), lost.run_id);
                return false;
            }
        }
        let payload = match serde_json::to_vec(&rerun.run) {
            Ok(p) => p,
            Err(e) => {
                eprintln!("{} rerun of {}: {e}", style("worker").red(), lost.run_id);
                return true;
            }
        };
        // Queued before the task is stored, as a replica does: a second node's rerun of the
        // same run is dropped here, and leaves no task behind.
        let key = lost_worker::dedup_key(&lost.run_id);
        match self.queue.enqueue(JobKind::Run, &payload, Some(&key)).await {
            Ok(Some(_)) => {}
            Ok(None) => return true,
            Err(e) => {
                eprintln!(
                    "{} queueing the rerun of {}: {e}",
                    style("worker").yellow(),
                    lost.run_id
                );
                return false;
            }
        }
        match tasks.save(&rerun.task, vec![rerun.audit]).await {
            Ok(()) => {
                eprintln!(
                    "{} run {} runs again as task {} (run {}, attempt {}): its workflow asks \
                     for a rerun when its worker is lost",
                    style("worker").cyan(),
                    lost.run_id,
                    rerun.task.id,
                    rerun.run.run_id,
                    rerun.run.attempt
                );
                true
            }
            Err(e) => {
                // Its run is queued and will run; only the task that lists it is missing.
                eprintln!(
                    "{} storing task {} for the rerun of {}: {e}",
                    style("worker").red(),
                    rerun.task.id,
                    lost.run_id
                );
                true
            }
        }
    }

    /// Records `run`, whose job's lease lapsed, interrupted (`workflow`: the queued text, when
    /// the job was to start it); false when that failed (the job stays unrecorded, and the
    /// next pass of any node tries again).
    async fn record_interrupted(&self, job: &Expired, run: &str, workflow: Option<&str>) -> bool {
        // No record: its worker lost the lease before the run's start was stored, and no step
        // runs before that. It is not run elsewhere: that worker may still be starting it
        // (its late start is refused, which stops it), and a step must not run on two workers.
        if let Ok(None) = self.session.run_record(run) {
            let name = workflow
                .and_then(|w| validate_bytes(std::path::Path::new("(queued)"), w.as_bytes()).ok())
                .map(|w| w.workflow.name.clone())
                .unwrap_or_default();
            match self.session.mark_lost_before_start(run, &name, &job.owner) {
                Ok(true) => {
                    eprintln!(
                        "{} run {} of {} interrupted before it started: its lease lapsed",
                        style("worker").yellow(),
                        run,
                        job.owner
                    );
                    return true;
                }
                // Its start was stored in between (before the lease was taken away).
                Ok(false) => {}
                Err(e) => {
                    eprintln!("{} marking {}: {e}", style("worker").yellow(), run);
                    return false;
                }
            }
        }
        match self.session.mark_lease_lost(run, &job.owner) {
            Ok(Some(steps)) => {
                eprintln!(
                    "{} run {} of {} interrupted: its lease lapsed (in flight: {})",
                    style("worker").yellow(),
                    run,
                    job.owner,
                    if steps.is_empty() {
                        "none".into()
                    } else {
                        steps.join(", ")
                    }
                );
                true
            }
            // Already interrupted (a pass that did not get to note it), or it ended before its
            // lease lapsed (its worker was cut off before finishing the job): then the job
            // ends as the run did.
            Ok(None) => {
                let ended = matches!(
                    self.session.run_record(run),
                    Ok(Some(r)) if r.state != RunState::Interrupted && r.state != RunState::Running
                );
                if ended && let Err(e) = self.queue.settle_interrupted(job.id).await {
                    eprintln!("{} settling job {}: {e}", style("worker").yellow(), job.id);
                }
                true
            }
            Err(e) => {
                eprintln!("{} marking {}: {e}", style("worker").yellow(), run);
                false
            }
        }
    }

    /// Rolls back this node's runs that the cluster holds interrupted: those interrupted while
    /// it was away (crash recovery: their pre-images are on this node's disk), and those whose
    /// lease it lost while running them (their saves failed from then on, so the record shows
    /// the steps as the cluster last knew them, every started step included). Each is rolled
    /// back once; a run still going on here waits for its end. `full` reads every run (at
    /// start, and now and then); otherwise only the suspects: runs that ended here, and runs
    /// of this node still `running` in the store that no process here is running (the
    /// cluster has yet to mark them).
    async fn recover(&self, full: bool) {
        let runs: Vec<(String, Option<RunRecord>)> = if full {
            match self.session.runs() {
                Ok(runs) => runs
                    .into_iter()
                    .map(|r| (r.run_id.clone(), Some(r)))
                    .collect(),
                Err(_) => return,
            }
        } else {
            let ids: Vec<String> = match self.suspects.lock() {
                Ok(s) => s.iter().cloned().collect(),
                Err(_) => return,
            };
            ids.into_iter()
                .filter_map(|id| match self.session.run_record(&id) {
                    Ok(rec) => Some((id, rec)),
                    // Unreadable for now: looked at again next time.
                    Err(_) => None,
                })
                .collect()
        };
        let mine = self.session.node().map(str::to_owned);
        for (id, run) in runs {
            let again = match &run {
                Some(run) if run.node == mine => self.recover_one(run).await,
                // Another node's, or never stored (lost before it started: nothing ran).
                _ => false,
            };
            if let Ok(mut s) = self.suspects.lock() {
                if again {
                    s.insert(id);
                } else {
                    s.remove(&id);
                }
            }
        }
    }

    /// Rolls back `run`, one of this node's, if the cluster holds it interrupted; true while it
    /// must be looked at again (the cluster has yet to mark it, or a rollback may still work).
    async fn recover_one(&self, run: &RunRecord) -> bool {
        if self.session.is_live(&run.run_id) {
            // Going on here: its end makes it a suspect again.
            return false;
        }
        if run.state == RunState::Running {
            return true;
        }
        if run.state != RunState::Interrupted
            // Interrupted before it started: nothing ran. Reverted: done.
            || run.steps.is_empty()
            || !run.reverts.is_empty()
        {
            return false;
        }
        let failed = self.failed_rollbacks(&run.run_id);
        if failed >= ROLLBACK_TRIES {
            return false;
        }
        let outcome = self
            .session
            .revert(
                &run.run_id,
                RevertOptions {
                    step: None,
                    cascade: true,
                    force: false,
                    dry_run: false,
                },
            )
            .await;
        match outcome {
            Ok(_) => {
                eprintln!(
                    "{} rolled back run {} (the cluster holds it interrupted)",
                    style("worker").cyan(),
                    run.run_id
                );
                false
            }
            Err(e) if failed + 1 >= ROLLBACK_TRIES => {
                self.count_failed_rollback(&run.run_id);
                eprintln!(
                    "{} gave up rolling back run {}: {e} (revert it on this node by hand)",
                    style("worker").red(),
                    run.run_id
                );
                false
            }
            Err(e) => {
                self.count_failed_rollback(&run.run_id);
                eprintln!(
                    "{} could not roll back run {} yet: {e}",
                    style("worker").yellow(),
                    run.run_id
                );
                true
            }
        }
    }

    fn failed_rollbacks(&self, run: &str) -> u8 {
        self.rollback_failures
            .lock()
            .ok()
            .and_then(|f| f.get(run).copied())
            .unwrap_or(0)
    }

    fn count_failed_rollback(&self, run: &str) {
        if let Ok(mut f) = self.rollback_failures.lock() {
            *f.entry(run.to_string()).or_default() += 1;
        }
    }

    /// Performs a revert a replica routed to this node (the run ran here: its workspace and
    /// pre-images are on this disk) and hands the answer back through the queue.
    /// The lease is held (renewed) until the answer is stored.
    async fn revert(&self, job: Claimed, _lease: LeaseKeeper) {
        use secureclaw_server::dispatch::{RoutedRevert, revert_here};
        let answer = match serde_json::from_slice::<RoutedRevert>(&job.payload) {
            Ok(revert) => {
                let answer = revert_here(&self.session, &revert).await;
                eprintln!(
                    "{} revert of run {}{}: {}",
                    style("worker").cyan(),
                    revert.run_id,
                    if revert.dry_run { " (dry run)" } else { "" },
                    match &answer {
                        Ok(reply) => reply.outcome.clone(),
                        Err(p) => format!("refused ({})", p.code),
                    }
                );
                answer
            }
            Err(e) => Err(RoutedProblem::unreadable(e)),
        };
        self.answer(&job, &answer, true).await;
    }

    /// Resumes or retries a run of this node that a replica routed here, answers whether it
    /// started, and follows it to its end under `lease` as a run of its own.
    async fn go_on(self: Arc<Self>, job: Claimed, lease: LeaseKeeper) {
        let cont: RoutedContinue = match serde_json::from_slice(&job.payload) {
            Ok(c) => c,
            Err(e) => {
                let problem = RoutedProblem::unreadable(e);
                self.answer(&job, &ContinueAnswer::Err(problem), true).await;
                return;
            }
        };
        let me = self.clone();
        let (token, run) = (self.queue.lease_token(&job), cont.run_id.clone());
        let started = if cont.retry {
            self.session.retry_leased(&run, cont.force, token).await
        } else {
            // Resuming checks the workspace against the parked manifest: blocking work.
            tokio::task::spawn_blocking(move || me.session.resume_leased(&run, cont.force, token))
                .await
                .unwrap_or_else(|e| Err(SessionError::Task(e.to_string())))
        };
        let verb = if cont.retry { "retry" } else { "resume" };
        match started {
            Ok(handle) => {
                eprintln!(
                    "{} {verb} of run {}: started",
                    style("worker").cyan(),
                    cont.run_id
                );
                self.answer(&job, &ContinueAnswer::Ok(()), false).await;
                self.follow(&job, &cont.run_id, handle, &lease).await;
            }
            Err(e) => {
                let problem = RoutedProblem::from(secureclaw_server::error::ApiError::from(e));
                eprintln!(
                    "{} {verb} of run {}: refused ({})",
                    style("worker").yellow(),
                    cont.run_id,
                    problem.code
                );
                self.answer(&job, &ContinueAnswer::Err(problem), true).await;
            }
        }
    }

    /// Stores `answer` for the replica that routed `job` here; `finish`: the job ends with it.
    async fn answer(&self, job: &Claimed, answer: &impl serde::Serialize, finish: bool) {
        let bytes = match serde_json::to_vec(answer) {
            Ok(b) => b,
            Err(e) => {
                eprintln!("{} job {}: {e}", style("worker").red(), job.id);
                return;
            }
        };
        let stored = if finish {
            self.queue.finish_with(job.id, &bytes).await
        } else {
            self.queue.answer(job.id, &bytes).await
        };
        match stored {
            Ok(Ok(())) => {}
            Ok(Err(_lost)) => eprintln!(
                "{} job {}: the lease lapsed before the answer was stored",
                style("worker").yellow(),
                job.id
            ),
            Err(e) => eprintln!("{} job {}: {e}", style("worker").yellow(), job.id),
        }
    }

    /// Runs one claimed job to its end under `lease` (renewed since the claim); finishes the
    /// job unless the lease was lost.
    async fn execute(self: Arc<Self>, job: Claimed, lease: LeaseKeeper) {
        let run: QueuedRun = match serde_json::from_slice(&job.payload) {
            Ok(r) => r,
            Err(e) => {
                eprintln!(
                    "{} job {}: unreadable payload: {e}",
                    style("worker").red(),
                    job.id
                );
                let _ = self.queue.finish(job.id).await;
                return;
            }
        };
        // Starting saves the run's first record and makes its workspace: blocking work, kept
        // off the threads that run the steps.
        let me = self.clone();
        let (claimed, queued) = (job.clone(), run.clone());
        let started = tokio::task::spawn_blocking(move || me.start(&claimed, &queued))
            .await
            .unwrap_or_else(|e| Err(anyhow::anyhow!("starting the run: {e}")));
        match started {
            Ok(handle) => self.follow(&job, &run.run_id, handle, &lease).await,
            Err(e) => {
                eprintln!("{} run {}: {e}", style("worker").red(), run.run_id);
                let _ = self.queue.finish(job.id).await;
            }
        }
    }

    fn start(
        &self,
        job: &Claimed,
        run: &QueuedRun,
    ) -> anyhow::Result<secureclaw_engine::session::RunHandle> {
        let mut workflow =
            validate_bytes(std::path::Path::new("(queued)"), run.workflow.as_bytes())
                .map_err(|d| anyhow::anyhow!("the queued workflow does not validate: {d}"))?;
        workflow.provenance = run.provenance.clone();
        let workspace = match &run.workspace_name {
            Some(name) => self.workspaces.get(name).cloned().with_context(|| {
                format!("no workspace named `{name}` on this worker (start it with --workspace {name}=PATH)")
            })?,
            None => self.data_dir.join("workspaces").join(&run.task_id),
        };
        std::fs::create_dir_all(&workspace)
            .with_context(|| format!("creating {}", workspace.display()))?;
        Ok(self.session.submit_leased(
            RunRequest {
                workflow,
                inputs: run.inputs.clone(),
                workspace,
                settings: run.settings.clone(),
                approver: None,
            },
            run.run_id.clone(),
            self.queue.lease_token(job),
        )?)
    }

    async fn follow(
        &self,
        job: &Claimed,
        run: &str,
        handle: secureclaw_engine::session::RunHandle,
        lease: &LeaseKeeper,
    ) {
        let cancel = handle.cancel_token();
        let mut done = std::pin::pin!(handle.wait());
        let result = tokio::select! {
            r = &mut done => r,
            () = lease.lost() => {
                cancel.cancel();
                done.await
            }
        };
        let lost = lease.is_lost();
        match &result {
            Ok(rec) => eprintln!(
                "{} run {} {}",
                style("worker").cyan(),
                run,
                crate::output::state_label(&rec.state)
            ),
            Err(e) => eprintln!("{} run {}: {e}", style("worker").red(), run),
        }
        if lost {
            eprintln!(
                "{} run {}: stopped, its lease is lost; once the cluster holds it interrupted, \
                 the next recovery pass rolls back what its steps did",
                style("worker").yellow(),
                run
            );
        }
        // Refused (the lease is gone) when another node took the job away: the run is then the
        // cluster's to mark interrupted, and this node's to roll back.
        let _ = self.queue.finish(job.id).await;
        // Ended here: the recovery pass looks at it until the store shows it final.
        if let Ok(mut s) = self.suspects.lock() {
            s.insert(run.to_string());
        }
    }
}
