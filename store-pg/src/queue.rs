//! The work queue: runs submitted on any server replica, claimed by any worker.
//!
//! A claim is one statement (`UPDATE ... WHERE id = (SELECT ... FOR UPDATE SKIP LOCKED LIMIT
//! 1)`): concurrent workers never claim the same job, and never wait on each other's locks. The
//! claim is a lease that the worker renews with heartbeats; a lease that lapses makes the job
//! `interrupted` ([`Queue::expire_leases`], run by every node), and a worker that finds its
//! lease gone ([`Lost`]) stops. Enqueueing notifies `sc_jobs`, so idle workers wake at once
//! rather than at their next poll.

use std::sync::Arc;
use std::time::{Duration, Instant};

use secureclaw_vault::Vault;
use uuid::Uuid;

use crate::error::PgError;
use crate::store::PgStore;

/// The notification channel enqueueing signals.
const CHANNEL: &str = "sc_jobs";

/// What a job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobKind {
    /// A workflow run to execute.
    Run,
    /// A run to roll back on the worker that holds its workspace.
    Revert,
    /// A stopped run to go on (resumed after its approvals, or retried) on the worker that
    /// holds its workspace.
    Continue,
}

impl JobKind {
    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Run => "run",
            JobKind::Revert => "revert",
            JobKind::Continue => "continue",
        }
    }
}

/// Where a job stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobState {
    Queued,
    Running,
    Done,
    /// Its worker's lease lapsed while it ran.
    Interrupted,
}

impl JobState {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "queued" => JobState::Queued,
            "running" => JobState::Running,
            "done" => JobState::Done,
            "interrupted" => JobState::Interrupted,
            _ => return None,
        })
    }
}

/// A job this worker holds the lease of.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub id: Uuid,
    /// When the claim was sent: the lease runs from the database's clock a moment later, so
    /// a deadline counted from here is never later than the database's.
    pub sent: Instant,
    pub kind: String,
    /// The payload as submitted (opened: the database holds it sealed).
    pub payload: Vec<u8>,
    /// Claims so far, this one included.
    pub attempts: i32,
}

/// A job whose lease lapsed, now `interrupted`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expired {
    pub id: Uuid,
    /// What the job was ([`JobKind`]'s name).
    pub kind: String,
    /// The worker that held the lease.
    pub owner: String,
    /// The payload as submitted (opened).
    pub payload: Vec<u8>,
}

/// The lease on a job is no longer this worker's: it lapsed (the job was marked interrupted)
/// or the job finished elsewhere. The worker must stop working on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lost;

/// A claimed job's lease, renewed in the background ([`Queue::keep_lease`]) until dropped.
#[derive(Debug)]
pub struct LeaseKeeper {
    lost: tokio::sync::watch::Receiver<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl LeaseKeeper {
    /// Returns once the lease is lost; never while it is held.
    pub async fn lost(&self) {
        let mut lost = self.lost.clone();
        if lost.wait_for(|l| *l).await.is_err() {
            // The heartbeats stopped without losing the lease: the store's runtime is gone,
            // and with it every save, which then fails the run by itself.
            std::future::pending::<()>().await;
        }
    }

    pub fn is_lost(&self) -> bool {
        *self.lost.borrow()
    }
}

impl Drop for LeaseKeeper {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The queue as one worker (or server replica) sees it.
#[derive(Clone)]
pub struct Queue {
    store: PgStore,
    vault: Vault,
    owner: String,
    wake: Arc<tokio::sync::Notify>,
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue")
            .field("owner", &self.owner)
            .finish_non_exhaustive()
    }
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

impl Queue {
    pub(crate) fn new(store: PgStore, vault: Vault, owner: Option<String>) -> Self {
        Self {
            store,
            vault,
            // Random when not given: the database learns nothing about the machine from it.
            owner: owner.unwrap_or_else(|| format!("w-{}", Uuid::new_v4().simple())),
            wake: Arc::new(tokio::sync::Notify::new()),
        }
    }

    /// This queue handle's worker id, as lease owner.
    pub fn worker_id(&self) -> &str {
        &self.owner
    }

    /// Runs `fut` on the store's runtime (where the pool's connections live) and awaits it
    /// from any runtime.
    async fn on_store<T: Send + 'static>(
        &self,
        fut: impl std::future::Future<Output = Result<T, PgError>> + Send + 'static,
    ) -> Result<T, PgError> {
        self.store
            .bridge
            .handle()
            .spawn(fut)
            .await
            .map_err(|_| PgError::RuntimeGone)?
    }

    /// Queues `payload`; with a `dedup` key, the same key queued before (by any replica) makes
    /// this a no-op that returns `None`. The key is stored as a keyed hash.
    pub async fn enqueue(
        &self,
        kind: JobKind,
        payload: &[u8],
        dedup: Option<&str>,
    ) -> Result<Option<Uuid>, PgError> {
        self.insert(kind, payload, dedup, None).await
    }

    /// The payload queued under `dedup` by any replica, while its job is kept: what a start
    /// whose answer was lost had queued. `None` when nothing was queued under it.
    pub async fn queued_under(&self, dedup: &str) -> Result<Option<Vec<u8>>, PgError> {
        let key = self.dedup_key(dedup);
        let store = self.store.clone();
        let row: Option<(Uuid, Vec<u8>)> = self
            .on_store(async move {
                Ok(
                    sqlx::query_as("SELECT id, payload FROM sc_jobs WHERE dedup = $1")
                        .bind(key)
                        .fetch_optional(&store.pool)
                        .await?,
                )
            })
            .await?;
        Ok(row
            .map(|(id, sealed)| self.vault.open_shared("jobs", &id.to_string(), &sealed))
            .transpose()?)
    }

    /// Queues `payload` for the workers of `node` alone (a revert needs the disk of the node
    /// that ran the run); [`Queue::outcome`] reads its answer.
    pub async fn enqueue_on(
        &self,
        kind: JobKind,
        payload: &[u8],
        node: &str,
    ) -> Result<Uuid, PgError> {
        self.insert(kind, payload, None, Some(node.to_string()))
            .await?
            .ok_or(PgError::Unexpected(
                "a job with no dedup key was not inserted",
            ))
    }

    /// A dedup key as the table stores it: a keyed hash, so the database never sees the key.
    fn dedup_key(&self, dedup: &str) -> Vec<u8> {
        self.vault
            .keyed_digest("job-dedup", dedup.as_bytes())
            .into_bytes()
    }

    async fn insert(
        &self,
        kind: JobKind,
        payload: &[u8],
        dedup: Option<&str>,
        target: Option<String>,
    ) -> Result<Option<Uuid>, PgError> {
        let id = Uuid::now_v7();
        let sealed = self.vault.seal_shared("jobs", &id.to_string(), payload)?;
        let dedup = dedup.map(|d| self.dedup_key(d));
        let (store, vault) = (self.store.clone(), self.vault.clone());
        self.on_store(async move {
            let mut tx = store.pool.begin().await?;
            crate::backend::lock_counter(&mut tx, &store, &vault).await?;
            let inserted: Option<(Uuid,)> = sqlx::query_as(
                "INSERT INTO sc_jobs (id, kind, payload, dedup, target) \
                 VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (dedup) DO NOTHING RETURNING id",
            )
            .bind(id)
            .bind(kind.as_str())
            .bind(sealed)
            .bind(dedup)
            .bind(target)
            .fetch_optional(&mut *tx)
            .await?;
            sqlx::query("SELECT pg_notify($1, '')")
                .bind(CHANNEL)
                .execute(&mut *tx)
                .await?;
            let written = crate::backend::store_counter(&mut tx, &vault).await?;
            tx.commit().await?;
            crate::backend::counted(&store, written);
            Ok(inserted.map(|r| r.0))
        })
        .await
    }

    /// Claims the oldest queued job this worker may do (any node's, or one for its node), with
    /// a lease of `lease`; `None` when none is queued.
    pub async fn claim(&self, lease: Duration) -> Result<Option<Claimed>, PgError> {
        let (store, owner) = (self.store.clone(), self.owner.clone());
        let sent = Instant::now();
        let row: Option<(Uuid, String, Vec<u8>, i32)> = self
            .on_store(async move {
                Ok(sqlx::query_as(
                    "UPDATE sc_jobs SET state = 'running', owner = $1, attempts = attempts + 1, \
                     lease_until = now() + make_interval(secs => $2), claimed_at = now() \
                     WHERE id = (SELECT id FROM sc_jobs WHERE state = 'queued' \
                                 AND (target IS NULL OR target = $1) \
                                 ORDER BY created_at, id FOR UPDATE SKIP LOCKED LIMIT 1) \
                     RETURNING id, kind, payload, attempts",
                )
                .bind(owner)
                .bind(secs(lease))
                .fetch_optional(&store.pool)
                .await?)
            })
            .await?;
        let Some((id, kind, sealed, attempts)) = row else {
            return Ok(None);
        };
        let payload = self.vault.open_shared("jobs", &id.to_string(), &sealed)?;
        Ok(Some(Claimed {
            id,
            sent,
            kind,
            payload,
            attempts,
        }))
    }

    /// Renews the lease on `id` for `lease` from now. [`Lost`] when it already lapsed or is
    /// not this worker's: the worker must stop, another node may be rolling the job back.
    pub async fn heartbeat(&self, id: Uuid, lease: Duration) -> Result<Result<(), Lost>, PgError> {
        let (store, owner) = (self.store.clone(), self.owner.clone());
        let renewed: Option<(Uuid,)> = self
            .on_store(async move {
                Ok(sqlx::query_as(
                    "UPDATE sc_jobs SET lease_until = now() + make_interval(secs => $3) \
                     WHERE id = $1 AND owner = $2 AND state = 'running' AND lease_until > now() \
                     RETURNING id",
                )
                .bind(id)
                .bind(owner)
                .bind(secs(lease))
                .fetch_optional(&store.pool)
                .await?)
            })
            .await?;
        Ok(renewed.map(|_| ()).ok_or(Lost))
    }

    /// Renews `job`'s lease every third of `lease` until the returned keeper is dropped. The
    /// heartbeats run on the store's own runtime, so engine work that holds up the caller's
    /// threads (a slow start, a blocking save) cannot let the lease lapse. The keeper reports
    /// the lease lost when a heartbeat finds it taken away, or when none got through for a
    /// whole lease (the database out of reach: another node may already have taken it).
    pub fn keep_lease(&self, job: &Claimed, lease: Duration) -> LeaseKeeper {
        let (lost_tx, lost) = tokio::sync::watch::channel(false);
        let (me, id, mut confirmed) = (self.clone(), job.id, job.sent);
        let beat = lease / 3;
        let task = self.store.bridge.handle().spawn(async move {
            loop {
                tokio::time::sleep(beat).await;
                let sent = Instant::now();
                // Bounded by the beat: a database out of reach must not hold the loop past
                // the lease in the pool's connect timeout.
                match tokio::time::timeout(beat, me.heartbeat(id, lease)).await {
                    Ok(Ok(Ok(()))) => confirmed = sent,
                    Ok(Ok(Err(Lost))) => break,
                    _ if confirmed.elapsed() >= lease => break,
                    _ => {}
                }
            }
            let _ = lost_tx.send(true);
        });
        LeaseKeeper { lost, task }
    }

    /// The token a run executed under `job`'s lease carries in its saves
    /// (`secureclaw_engine::storage::Batch::lease`): each commit checks, under a row lock, that
    /// this worker still holds the job, so a save made after the lease lapsed (a worker cut
    /// off and back) fails instead of overwriting what another node recorded meanwhile.
    pub fn lease_token(&self, job: &Claimed) -> String {
        format!("{}/{}", job.id, self.owner)
    }

    /// Marks an interrupted job done: its run had ended before its lease lapsed (its worker was
    /// cut off between the run's last save and finishing the job).
    pub async fn settle_interrupted(&self, id: Uuid) -> Result<bool, PgError> {
        let store = self.store.clone();
        self.on_store(async move {
            let r = sqlx::query(
                "UPDATE sc_jobs SET state = 'done', recorded = true \
                 WHERE id = $1 AND state = 'interrupted'",
            )
            .bind(id)
            .execute(&store.pool)
            .await?;
            Ok(r.rows_affected() == 1)
        })
        .await
    }

    /// Marks `id` done. [`Lost`] when the job is no longer this worker's (its lease lapsed
    /// and it was marked interrupted first).
    pub async fn finish(&self, id: Uuid) -> Result<Result<(), Lost>, PgError> {
        let (store, owner) = (self.store.clone(), self.owner.clone());
        let done: Option<(Uuid,)> = self
            .on_store(async move {
                Ok(sqlx::query_as(
                    "UPDATE sc_jobs SET state = 'done', finished_at = now(), lease_until = NULL \
                     WHERE id = $1 AND owner = $2 AND state = 'running' RETURNING id",
                )
                .bind(id)
                .bind(owner)
                .fetch_optional(&store.pool)
                .await?)
            })
            .await?;
        Ok(done.map(|_| ()).ok_or(Lost))
    }

    /// Marks `id` done with `answer` (sealed), for the replica waiting on [`Queue::outcome`].
    /// [`Lost`] when the job is no longer this worker's.
    pub async fn finish_with(&self, id: Uuid, answer: &[u8]) -> Result<Result<(), Lost>, PgError> {
        self.store_answer(id, answer, true).await
    }

    /// Stores `answer` for the replica waiting on [`Queue::outcome`] while the job goes on (a
    /// resumed run: the answer is that it started). [`Lost`] when the job is no longer this
    /// worker's.
    pub async fn answer(&self, id: Uuid, answer: &[u8]) -> Result<Result<(), Lost>, PgError> {
        self.store_answer(id, answer, false).await
    }

    async fn store_answer(
        &self,
        id: Uuid,
        answer: &[u8],
        finish: bool,
    ) -> Result<Result<(), Lost>, PgError> {
        let sealed = self
            .vault
            .seal_shared("job-results", &id.to_string(), answer)?;
        let (store, vault, owner) = (self.store.clone(), self.vault.clone(), self.owner.clone());
        let sql = if finish {
            "UPDATE sc_jobs SET state = 'done', finished_at = now(), lease_until = NULL, \
             result = $3 WHERE id = $1 AND owner = $2 AND state = 'running' RETURNING id"
        } else {
            "UPDATE sc_jobs SET result = $3 \
             WHERE id = $1 AND owner = $2 AND state = 'running' RETURNING id"
        };
        let stored: Option<(Uuid,)> = self
            .on_store(async move {
                // Sealing counted an encryption: the shared count takes it in this transaction.
                let mut tx = store.pool.begin().await?;
                crate::backend::lock_counter(&mut tx, &store, &vault).await?;
                let stored = sqlx::query_as(sql)
                    .bind(id)
                    .bind(owner)
                    .bind(sealed)
                    .fetch_optional(&mut *tx)
                    .await?;
                let written = crate::backend::store_counter(&mut tx, &vault).await?;
                tx.commit().await?;
                crate::backend::counted(&store, written);
                Ok(stored)
            })
            .await?;
        Ok(stored.map(|_| ()).ok_or(Lost))
    }

    /// Where job `id` stands, with its answer once a worker finished it with one
    /// ([`Queue::finish_with`]); `None` when there is no such job.
    pub async fn outcome(&self, id: Uuid) -> Result<Option<(JobState, Option<Vec<u8>>)>, PgError> {
        let store = self.store.clone();
        let row: Option<(String, Option<Vec<u8>>)> = self
            .on_store(async move {
                Ok(
                    sqlx::query_as("SELECT state, result FROM sc_jobs WHERE id = $1")
                        .bind(id)
                        .fetch_optional(&store.pool)
                        .await?,
                )
            })
            .await?;
        let Some((state, sealed)) = row else {
            return Ok(None);
        };
        let state = JobState::parse(&state).ok_or(PgError::Unexpected("an unknown job state"))?;
        let answer = sealed
            .map(|s| self.vault.open_shared("job-results", &id.to_string(), &s))
            .transpose()?;
        Ok(Some((state, answer)))
    }

    /// Takes back job `id` if no worker claimed it yet (it ends `done` with no answer); false
    /// when a worker already has it.
    pub async fn withdraw(&self, id: Uuid) -> Result<bool, PgError> {
        let store = self.store.clone();
        self.on_store(async move {
            let r = sqlx::query(
                "UPDATE sc_jobs SET state = 'done', finished_at = now() \
                 WHERE id = $1 AND state = 'queued'",
            )
            .bind(id)
            .execute(&store.pool)
            .await?;
            Ok(r.rows_affected() == 1)
        })
        .await
    }

    /// Marks every job whose lease lapsed `interrupted`; returns each with the worker that held
    /// it (whose disk holds what crash recovery needs to roll the job's step back). The caller
    /// records each run interrupted, then calls [`Queue::recorded`]; what it leaves unrecorded
    /// (it failed or died in between), [`Queue::unrecorded`] hands to the next node.
    pub async fn expire_leases(&self) -> Result<Vec<Expired>, PgError> {
        let store = self.store.clone();
        let rows: Vec<(Uuid, String, Option<String>, Vec<u8>)> = self
            .on_store(async move {
                Ok(sqlx::query_as(
                    "UPDATE sc_jobs SET state = 'interrupted', finished_at = now(), \
                     recorded = false \
                     WHERE state = 'running' AND lease_until < now() \
                     RETURNING id, kind, owner, payload",
                )
                .fetch_all(&store.pool)
                .await?)
            })
            .await?;
        self.opened(rows)
    }

    /// Interrupted jobs whose runs no node recorded interrupted although their leases lapsed
    /// more than `after` ago: the node that expired them failed or died before it did.
    pub async fn unrecorded(&self, after: Duration) -> Result<Vec<Expired>, PgError> {
        let store = self.store.clone();
        let rows: Vec<(Uuid, String, Option<String>, Vec<u8>)> = self
            .on_store(async move {
                Ok(sqlx::query_as(
                    "SELECT id, kind, owner, payload FROM sc_jobs \
                     WHERE state = 'interrupted' AND NOT recorded \
                     AND finished_at < now() - make_interval(secs => $1) \
                     ORDER BY finished_at LIMIT 100",
                )
                .bind(secs(after))
                .fetch_all(&store.pool)
                .await?)
            })
            .await?;
        self.opened(rows)
    }

    /// Notes that the run of interrupted job `id` is recorded interrupted (or had ended).
    pub async fn recorded(&self, id: Uuid) -> Result<(), PgError> {
        let store = self.store.clone();
        self.on_store(async move {
            sqlx::query("UPDATE sc_jobs SET recorded = true WHERE id = $1")
                .bind(id)
                .execute(&store.pool)
                .await?;
            Ok(())
        })
        .await
    }

    #[allow(clippy::type_complexity)] // one row as sqlx reads it
    fn opened(
        &self,
        rows: Vec<(Uuid, String, Option<String>, Vec<u8>)>,
    ) -> Result<Vec<Expired>, PgError> {
        rows.into_iter()
            .map(|(id, kind, owner, sealed)| {
                Ok(Expired {
                    id,
                    kind,
                    owner: owner.unwrap_or_default(),
                    payload: self.vault.open_shared("jobs", &id.to_string(), &sealed)?,
                })
            })
            .collect()
    }

    /// Deletes the jobs that ended more than `older_than` ago and need nothing more (done, or
    /// interrupted with their run recorded); how many. Their dedup keys go with them: a
    /// delivery id or a schedule time older than that is not recognised again.
    pub async fn sweep_finished(&self, older_than: Duration) -> Result<u64, PgError> {
        let store = self.store.clone();
        self.on_store(async move {
            let r = sqlx::query(
                "DELETE FROM sc_jobs WHERE state IN ('done', 'interrupted') AND recorded \
                 AND finished_at < now() - make_interval(secs => $1)",
            )
            .bind(secs(older_than))
            .execute(&store.pool)
            .await?;
            Ok(r.rows_affected())
        })
        .await
    }

    /// Where `id` stands, its lease owner and its claims so far.
    pub async fn state(
        &self,
        id: Uuid,
    ) -> Result<Option<(JobState, Option<String>, i32)>, PgError> {
        let store = self.store.clone();
        let row: Option<(String, Option<String>, i32)> = self
            .on_store(async move {
                Ok(
                    sqlx::query_as("SELECT state, owner, attempts FROM sc_jobs WHERE id = $1")
                        .bind(id)
                        .fetch_optional(&store.pool)
                        .await?,
                )
            })
            .await?;
        Ok(row.and_then(|(s, owner, attempts)| {
            JobState::parse(&s).map(|state| (state, owner, attempts))
        }))
    }

    /// Starts following `sc_jobs` notifications: after this, [`Queue::wait_for_work`] returns
    /// as soon as any replica queues a job.
    pub async fn listen(&self) -> Result<(), PgError> {
        let pool = self.store.pool.clone();
        let mut listener = self
            .on_store(async move {
                let mut l = sqlx::postgres::PgListener::connect_with(&pool).await?;
                l.listen(CHANNEL).await?;
                Ok(l)
            })
            .await?;
        let wake = Arc::downgrade(&self.wake);
        self.store.bridge.handle().spawn(async move {
            // `recv` reconnects by itself after a lost connection; it errs only when it cannot.
            while let Ok(_note) = listener.recv().await {
                match wake.upgrade() {
                    Some(w) => w.notify_one(),
                    None => break,
                }
            }
        });
        Ok(())
    }

    /// Waits until a job may be queued: a notification, or `poll` elapsed (a missed
    /// notification costs at most one poll interval).
    pub async fn wait_for_work(&self, poll: Duration) {
        let _ = tokio::time::timeout(poll, self.wake.notified()).await;
    }
}

/// Fails the transaction with [`PgError::LeaseLost`] unless the lease `token`
/// ([`Queue::lease_token`]) is still held. The job's row stays share-locked until the commit
/// ends, so [`Queue::expire_leases`] cannot mark it interrupted in between: a commit either
/// lands before the lease is taken away or not at all.
pub(crate) async fn check_lease(
    tx: &mut sqlx::Transaction<'static, sqlx::Postgres>,
    token: &str,
) -> Result<(), PgError> {
    let (id, owner) = token
        .split_once('/')
        .and_then(|(id, owner)| Some((Uuid::parse_str(id).ok()?, owner)))
        .ok_or_else(|| PgError::BadLease(token.to_string()))?;
    let held: Option<(Uuid,)> = sqlx::query_as(
        "SELECT id FROM sc_jobs WHERE id = $1 AND owner = $2 AND state = 'running' FOR SHARE",
    )
    .bind(id)
    .bind(owner)
    .fetch_optional(&mut **tx)
    .await?;
    held.map(|_| ()).ok_or(PgError::LeaseLost)
}
