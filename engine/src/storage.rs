//! Where run state lives, behind a trait: run records, events, parked runs and approval
//! decisions as rows, and the ledger entries that explain them, committed together.
//!
//! [`VaultBackend`] (the embedded default) keeps them sealed in the vault's redb file. Another
//! implementation (a database shared by several machines) implements [`StateBackend`] and
//! nothing in the scheduler or the session changes. Workspace pre-images stay in the local
//! blob store either way: they belong to the machine whose workspace they restore.
//!
//! Commits go through one [`Writer`] thread per store: whatever several runs ask to commit
//! while a commit is in flight goes into the next one (group commit), so twenty runs do not
//! mean twenty fsyncs per step, and no durable write ever blocks an async runtime thread.

use std::sync::mpsc;
use std::thread::JoinHandle;

use secureclaw_vault::{NewEntry, Vault, VaultError};

/// The tables of run state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Table {
    /// Run records, by run id.
    Runs,
    /// Run events, by `RUN/SEQ` (zero-padded sequence number).
    Events,
    /// What a parked run needs to resume, by run id.
    Parked,
    /// What a failed run needs to be retried from its failed step, by run id (the same
    /// [`crate::park::ParkState`] a parked run keeps, with no gates).
    Retries,
    /// Approval decisions given while a run was parked, by `RUN/STEP`.
    Approvals,
    /// Front-end data kept beside the runs (accounts, tasks, settings), by the front end's
    /// own keys; see [`crate::session::AppTable`].
    App(crate::session::AppTable),
}

impl Table {
    pub fn name(self) -> &'static str {
        match self {
            Table::Runs => "runs",
            Table::Events => "events",
            Table::Parked => "parked",
            Table::Retries => "retries",
            Table::Approvals => "approvals",
            Table::App(t) => t.name(),
        }
    }
}

/// One atomic commit: rows written or removed, and ledger entries appended, all or nothing.
#[derive(Debug, Default)]
pub struct Batch {
    pub puts: Vec<(Table, String, Vec<u8>)>,
    /// Rows written only where none exists yet: of several nodes creating one row at once
    /// (a generated secret), one wins and every node reads the winner's value back.
    pub creates: Vec<(Table, String, Vec<u8>)>,
    pub deletes: Vec<(Table, String)>,
    pub entries: Vec<NewEntry>,
    /// The lease the batch's run is executed under, when a work queue hands runs out (an
    /// opaque token of the backend's queue): the commit fails with
    /// [`StorageError::LeaseLost`] once that lease is no longer held, so a node cut off from
    /// the cluster cannot overwrite what another node recorded after the lease lapsed.
    pub lease: Option<String>,
}

impl Batch {
    pub fn put_json<T: serde::Serialize + ?Sized>(
        &mut self,
        table: Table,
        key: impl Into<String>,
        value: &T,
    ) -> Result<(), StorageError> {
        let key = key.into();
        let bytes = serde_json::to_vec(value).map_err(|e| StorageError::Encode {
            what: format!("{}/{key}", table.name()),
            message: e.to_string(),
        })?;
        self.puts.push((table, key, bytes));
        Ok(())
    }

    /// Add `other`'s rows and entries after this batch's own.
    pub fn absorb(&mut self, other: Batch) {
        self.puts.extend(other.puts);
        self.creates.extend(other.creates);
        self.deletes.extend(other.deletes);
        self.entries.extend(other.entries);
        if self.lease.is_none() {
            self.lease = other.lease;
        }
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum StorageError {
    #[error("{0}")]
    Backend(String),
    #[error("encoding {what}: {message}")]
    Encode { what: String, message: String },
    #[error("the state is open read-only here: nothing can be written")]
    ReadOnly,
    #[error("the store's writer stopped; nothing more can be saved in this process")]
    WriterGone,
    #[error(
        "this node no longer holds the lease on the run: the cluster holds it interrupted, so \
         nothing more of it is saved here (its steps are rolled back on this node)"
    )]
    LeaseLost,
}

impl From<VaultError> for StorageError {
    fn from(e: VaultError) -> Self {
        match e {
            VaultError::ReadOnly { .. } => StorageError::ReadOnly,
            other => StorageError::Backend(other.to_string()),
        }
    }
}

/// A place to keep run state. Implementations must make [`StateBackend::commit`] atomic and
/// durable when it returns, and keep ledger entries in commit order.
pub trait StateBackend: Send + Sync + 'static {
    /// Commit `batches`, in order, as one transaction: all of them or none. A batch with a
    /// [`Batch::lease`] the backend finds lapsed fails the commit with
    /// [`StorageError::LeaseLost`]; a backend without a work queue (one machine) has no leases
    /// and ignores them.
    fn commit(&self, batches: &[Batch]) -> Result<(), StorageError>;
    fn get(&self, table: Table, key: &str) -> Result<Option<Vec<u8>>, StorageError>;
    /// All keys of a table (small tables only: runs, parked runs).
    fn keys(&self, table: Table) -> Result<Vec<String>, StorageError>;
    fn is_read_only(&self) -> bool;
    /// Changes each time some process commits events of `run` to this store, for followers
    /// of a run another process executes; `None` (the default) where this process alone
    /// writes.
    fn event_commits(&self, _run: &str) -> Option<tokio::sync::watch::Receiver<u64>> {
        None
    }
}

/// Run state sealed in the vault's redb file.
#[derive(Debug, Clone)]
pub struct VaultBackend(pub Vault);

impl StateBackend for VaultBackend {
    fn commit(&self, batches: &[Batch]) -> Result<(), StorageError> {
        self.0.write(|tx| {
            for batch in batches {
                for (table, key, bytes) in &batch.puts {
                    tx.put(table.name(), key, bytes)?;
                }
                for (table, key, bytes) in &batch.creates {
                    if tx.get(table.name(), key)?.is_none() {
                        tx.put(table.name(), key, bytes)?;
                    }
                }
                for (table, key) in &batch.deletes {
                    tx.delete(table.name(), key)?;
                }
            }
            let entries: Vec<NewEntry> = batches
                .iter()
                .flat_map(|b| b.entries.iter().cloned())
                .collect();
            if !entries.is_empty() {
                tx.append_batch(entries)?;
            }
            Ok(())
        })?;
        Ok(())
    }

    fn get(&self, table: Table, key: &str) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.0.get(table.name(), key)?)
    }

    fn keys(&self, table: Table) -> Result<Vec<String>, StorageError> {
        Ok(self.0.keys(table.name())?)
    }

    fn is_read_only(&self) -> bool {
        self.0.is_read_only()
    }
}

/// Told once the commit carrying a batch landed (or failed).
pub type Done = Box<dyn FnOnce(Result<(), StorageError>) + Send>;

struct Job {
    batch: Batch,
    done: Option<Done>,
}

/// Most batches folded into one commit.
const MAX_GROUP: usize = 256;

/// The one thread that commits to a backend.
pub struct Writer {
    tx: Option<mpsc::Sender<Job>>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer").finish_non_exhaustive()
    }
}

impl Writer {
    pub fn start(backend: std::sync::Arc<dyn StateBackend>) -> Result<Self, StorageError> {
        let (tx, rx) = mpsc::channel::<Job>();
        let thread = std::thread::Builder::new()
            .name("secureclaw-store-writer".into())
            .spawn(move || write_loop(&*backend, &rx))
            .map_err(|e| StorageError::Backend(format!("starting the store writer: {e}")))?;
        Ok(Writer {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    /// Queue a batch; `done` is told when it is durable.
    pub fn submit(&self, batch: Batch, done: Option<Done>) {
        let job = Job { batch, done };
        let Some(tx) = &self.tx else {
            if let Some(d) = job.done {
                d(Err(StorageError::WriterGone));
            }
            return;
        };
        if let Err(mpsc::SendError(job)) = tx.send(job)
            && let Some(d) = job.done
        {
            d(Err(StorageError::WriterGone));
        }
    }

    /// Commit and wait, from synchronous code.
    pub fn commit_blocking(&self, batch: Batch) -> Result<(), StorageError> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.submit(
            batch,
            Some(Box::new(move |r| {
                let _ = tx.send(r);
            })),
        );
        rx.recv().unwrap_or(Err(StorageError::WriterGone))
    }

    /// Commit and wait, from async code, without blocking the runtime's thread.
    pub async fn commit(&self, batch: Batch) -> Result<(), StorageError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.submit(
            batch,
            Some(Box::new(move |r| {
                let _ = tx.send(r);
            })),
        );
        rx.await.unwrap_or(Err(StorageError::WriterGone))
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        // Closing the channel ends the loop after what is queued has been committed.
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn write_loop(backend: &dyn StateBackend, rx: &mpsc::Receiver<Job>) {
    while let Ok(first) = rx.recv() {
        let mut jobs = vec![first];
        while jobs.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(j) => jobs.push(j),
                Err(_) => break,
            }
        }
        let (batches, dones): (Vec<Batch>, Vec<Option<Done>>) =
            jobs.into_iter().map(|j| (j.batch, j.done)).unzip();
        let results: Vec<Result<(), StorageError>> = match backend.commit(&batches) {
            Ok(()) => vec![Ok(()); batches.len()],
            // One commit for several batches failed: each is committed alone, so one bad
            // batch fails only its own caller.
            Err(e) if batches.len() == 1 => vec![Err(e)],
            Err(_) => batches
                .iter()
                .map(|b| backend.commit(std::slice::from_ref(b)))
                .collect(),
        };
        for (done, r) in dones.into_iter().zip(results) {
            if let Some(d) = done {
                d(r);
            }
        }
    }
}
