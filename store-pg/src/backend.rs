//! The engine's storage trait and the vault's ledger source on PostgreSQL.

use std::collections::HashMap;

use secureclaw_engine::storage::{Batch, StateBackend, StorageError, Table};
use secureclaw_vault::{LedgerSource, NewEntry, Vault, VaultError};
use sqlx::{Postgres, Transaction};

use crate::error::PgError;
use crate::store::PgStore;

/// Rows per page when the ledger is walked.
const LEDGER_PAGE: i64 = 512;

/// Run state sealed by the vault, stored in the shared database.
#[derive(Clone)]
pub struct PgBackend {
    store: PgStore,
    vault: Vault,
}

impl std::fmt::Debug for PgBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgBackend")
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

/// What one commit writes: each row's final state (a batch may put a row and later delete it),
/// and the ledger entries in order.
struct Commit {
    rows: Vec<(&'static str, String, Option<Vec<u8>>)>,
    /// Rows written only where none exists ([`Batch::creates`]).
    creates: Vec<(&'static str, String, Vec<u8>)>,
    entries: Vec<NewEntry>,
    /// The leases the batches were written under, each once.
    leases: Vec<String>,
}

impl Commit {
    fn of(batches: &[Batch]) -> Self {
        let mut order: Vec<(&'static str, String)> = Vec::new();
        let mut last: HashMap<(&'static str, String), Option<Vec<u8>>> = HashMap::new();
        for batch in batches {
            for (table, key, bytes) in &batch.puts {
                let k = (table.name(), key.clone());
                if last.insert(k.clone(), Some(bytes.clone())).is_none() {
                    order.push(k);
                }
            }
            for (table, key) in &batch.deletes {
                let k = (table.name(), key.clone());
                if last.insert(k.clone(), None).is_none() {
                    order.push(k);
                }
            }
        }
        let rows = order
            .into_iter()
            .map(|k| {
                let v = last.remove(&k).flatten();
                (k.0, k.1, v)
            })
            .collect();
        let entries = batches
            .iter()
            .flat_map(|b| b.entries.iter().cloned())
            .collect();
        let creates = batches
            .iter()
            .flat_map(|b| b.creates.iter())
            .map(|(t, k, v)| (t.name(), k.clone(), v.clone()))
            .collect();
        let mut leases: Vec<String> = batches.iter().filter_map(|b| b.lease.clone()).collect();
        leases.sort();
        leases.dedup();
        Commit {
            rows,
            creates,
            entries,
            leases,
        }
    }
}

impl PgBackend {
    pub(crate) fn new(store: PgStore, vault: Vault) -> Self {
        Self { store, vault }
    }

    pub fn vault(&self) -> &Vault {
        &self.vault
    }

    pub fn store(&self) -> &PgStore {
        &self.store
    }

    fn wait<T: Send + 'static>(
        &self,
        fut: impl std::future::Future<Output = Result<T, PgError>> + Send + 'static,
    ) -> Result<T, PgError> {
        self.store.bridge.wait(fut)?
    }
}

/// Locks the shared encryption counter for this transaction and brings the vault's up to it,
/// adding what this node encrypted since it last wrote the count (blob chunks, sealed on its own
/// disk between commits): the shared count is the sum over nodes, never just the largest.
/// [`store_counter`] writes the vault's back; [`counted`] records it once committed.
pub(crate) async fn lock_counter(
    tx: &mut Transaction<'static, Postgres>,
    store: &PgStore,
    vault: &Vault,
) -> Result<(), PgError> {
    let (epoch, used): (i64, i64) = sqlx::query_as("SELECT epoch, used FROM sc_counter FOR UPDATE")
        .fetch_one(&mut **tx)
        .await?;
    let shared = (
        u32::try_from(epoch).unwrap_or(u32::MAX),
        u64::try_from(used).unwrap_or(0),
    );
    let local = vault.encryption_counter();
    let synced = *store.synced.lock().unwrap_or_else(|p| p.into_inner());
    // Before the first commit nothing local was counted: counting it all over-counts, which
    // only rotates the data key sooner.
    let own = match synced {
        Some((e, u)) if e == local.0 => local.1.saturating_sub(u),
        _ => local.1,
    };
    let target = if local.0 > shared.0 {
        local
    } else {
        (shared.0, shared.1.saturating_add(own))
    };
    vault.raise_encryption_counter(target.0, target.1);
    Ok(())
}

/// Writes the vault's counter as the shared one, in the commit's transaction.
pub(crate) async fn store_counter(
    tx: &mut Transaction<'static, Postgres>,
    vault: &Vault,
) -> Result<(u32, u64), PgError> {
    let (epoch, used) = vault.encryption_counter();
    sqlx::query("UPDATE sc_counter SET epoch = $1, used = $2")
        .bind(i64::from(epoch))
        .bind(i64::try_from(used).unwrap_or(i64::MAX))
        .execute(&mut **tx)
        .await?;
    Ok((epoch, used))
}

/// The count written by a transaction that committed: this node's encryptions up to it are in
/// the shared count.
pub(crate) fn counted(store: &PgStore, written: (u32, u64)) {
    *store.synced.lock().unwrap_or_else(|p| p.into_inner()) = Some(written);
}

async fn commit(store: PgStore, vault: Vault, commit: Commit) -> Result<(), PgError> {
    let mut tx = store.pool.begin().await?;
    // Every commit of every node takes this lock first: sealing and appending are serialised
    // cluster-wide, so the counter is exact and the ledger head cannot be read twice.
    lock_counter(&mut tx, &store, &vault).await?;
    for lease in &commit.leases {
        crate::queue::check_lease(&mut tx, lease).await?;
    }
    let (mut put_t, mut put_r, mut put_v) = (Vec::new(), Vec::new(), Vec::new());
    let (mut del_t, mut del_r) = (Vec::new(), Vec::new());
    for (table, key, value) in &commit.rows {
        let name = vault.shared_name(table, key);
        match value {
            Some(v) => {
                put_v.push(vault.seal_shared(table, key, v)?);
                put_t.push(name.table);
                put_r.push(name.row.to_vec());
            }
            None => {
                del_t.push(name.table);
                del_r.push(name.row.to_vec());
            }
        }
    }
    if !put_t.is_empty() {
        sqlx::query(
            "INSERT INTO sc_rows (tbl, row_key, value) \
             SELECT * FROM UNNEST($1::text[], $2::bytea[], $3::bytea[]) \
             ON CONFLICT (tbl, row_key) DO UPDATE SET value = EXCLUDED.value",
        )
        .bind(put_t)
        .bind(put_r)
        .bind(put_v)
        .execute(&mut *tx)
        .await?;
    }
    if !commit.creates.is_empty() {
        let (mut new_t, mut new_r, mut new_v) = (Vec::new(), Vec::new(), Vec::new());
        for (table, key, value) in &commit.creates {
            let name = vault.shared_name(table, key);
            new_v.push(vault.seal_shared(table, key, value)?);
            new_t.push(name.table);
            new_r.push(name.row.to_vec());
        }
        sqlx::query(
            "INSERT INTO sc_rows (tbl, row_key, value) \
             SELECT * FROM UNNEST($1::text[], $2::bytea[], $3::bytea[]) \
             ON CONFLICT (tbl, row_key) DO NOTHING",
        )
        .bind(new_t)
        .bind(new_r)
        .bind(new_v)
        .execute(&mut *tx)
        .await?;
    }
    if !del_t.is_empty() {
        sqlx::query(
            "DELETE FROM sc_rows r USING UNNEST($1::text[], $2::bytea[]) AS d(tbl, row_key) \
             WHERE r.tbl = d.tbl AND r.row_key = d.row_key",
        )
        .bind(del_t)
        .bind(del_r)
        .execute(&mut *tx)
        .await?;
    }
    // Followers of a run on other nodes read its new events at once (delivered at commit).
    let runs: Vec<&str> = commit
        .rows
        .iter()
        .filter(|(table, _, value)| *table == Table::Events.name() && value.is_some())
        .filter_map(|(_, key, _)| key.split_once('/').map(|(run, _)| run))
        .collect();
    if !runs.is_empty() {
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(crate::notify::EVENTS_CHANNEL)
            .bind(crate::notify::payload(&vault, runs))
            .execute(&mut *tx)
            .await?;
    }
    if !commit.entries.is_empty() {
        let head: Option<(Vec<u8>,)> = sqlx::query_as("SELECT head FROM sc_ledger_head FOR UPDATE")
            .fetch_optional(&mut *tx)
            .await?;
        let chained = vault.chain_shared(head.as_ref().map(|h| h.0.as_slice()), commit.entries)?;
        let (seqs, records): (Vec<i64>, Vec<Vec<u8>>) = chained
            .sealed
            .into_iter()
            .map(|(seq, r)| (i64::try_from(seq).unwrap_or(i64::MAX), r))
            .unzip();
        // A plain INSERT: a seq already taken (a fork) fails the whole commit.
        sqlx::query(
            "INSERT INTO sc_ledger (seq, record) SELECT * FROM UNNEST($1::bigint[], $2::bytea[])",
        )
        .bind(seqs)
        .bind(records)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO sc_ledger_head (head) VALUES ($1) \
             ON CONFLICT (id) DO UPDATE SET head = EXCLUDED.head",
        )
        .bind(chained.sealed_head)
        .execute(&mut *tx)
        .await?;
    }
    let written = store_counter(&mut tx, &vault).await?;
    tx.commit().await?;
    counted(&store, written);
    Ok(())
}

impl StateBackend for PgBackend {
    fn commit(&self, batches: &[Batch]) -> Result<(), StorageError> {
        let c = Commit::of(batches);
        if c.rows.is_empty() && c.creates.is_empty() && c.entries.is_empty() {
            return Ok(());
        }
        let (store, vault) = (self.store.clone(), self.vault.clone());
        self.wait(commit(store, vault, c))
            .map_err(PgError::into_storage)
    }

    fn get(&self, table: Table, key: &str) -> Result<Option<Vec<u8>>, StorageError> {
        let name = self.vault.shared_name(table.name(), key);
        let pool = self.store.pool.clone();
        let row: Option<(Vec<u8>,)> = self
            .wait(async move {
                Ok(
                    sqlx::query_as("SELECT value FROM sc_rows WHERE tbl = $1 AND row_key = $2")
                        .bind(name.table)
                        .bind(name.row.to_vec())
                        .fetch_optional(&pool)
                        .await?,
                )
            })
            .map_err(PgError::into_storage)?;
        row.map(|(sealed,)| self.vault.open_shared(table.name(), key, &sealed))
            .transpose()
            .map_err(StorageError::from)
    }

    fn keys(&self, table: Table) -> Result<Vec<String>, StorageError> {
        let tbl = self.vault.shared_table(table.name());
        let pool = self.store.pool.clone();
        let rows: Vec<(Vec<u8>, Vec<u8>)> = self
            .wait(async move {
                Ok(
                    sqlx::query_as("SELECT row_key, value FROM sc_rows WHERE tbl = $1")
                        .bind(tbl)
                        .fetch_all(&pool)
                        .await?,
                )
            })
            .map_err(PgError::into_storage)?;
        let mut keys = rows
            .iter()
            .map(|(row, sealed)| self.vault.open_shared_key(table.name(), row, sealed))
            .collect::<Result<Vec<_>, _>>()?;
        keys.sort();
        Ok(keys)
    }

    fn is_read_only(&self) -> bool {
        false
    }

    fn event_commits(&self, run: &str) -> Option<tokio::sync::watch::Receiver<u64>> {
        Some(
            self.store
                .event_commits(crate::notify::run_tag(&self.vault, run)),
        )
    }
}

enum Page {
    Rows(Vec<(i64, Vec<u8>)>),
    Head(Option<Vec<u8>>),
}

fn ledger_error(e: impl std::fmt::Display) -> VaultError {
    VaultError::Io {
        context: "reading the shared ledger".into(),
        source: std::io::Error::other(e.to_string()),
    }
}

/// Streams the ledger, page by page, from one REPEATABLE READ snapshot (so the head matches
/// the records), to a bounded channel the walker drains.
async fn stream_ledger(
    store: PgStore,
    out: std::sync::mpsc::SyncSender<Result<Page, String>>,
) -> Result<(), PgError> {
    let mut tx = store.pool.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .execute(&mut *tx)
        .await?;
    let mut after = 0i64;
    loop {
        let rows: Vec<(i64, Vec<u8>)> = sqlx::query_as(
            "SELECT seq, record FROM sc_ledger WHERE seq > $1 ORDER BY seq LIMIT $2",
        )
        .bind(after)
        .bind(LEDGER_PAGE)
        .fetch_all(&mut *tx)
        .await?;
        let Some(last) = rows.last() else { break };
        after = last.0;
        let full = rows.len() as i64 == LEDGER_PAGE;
        if out.send(Ok(Page::Rows(rows))).is_err() {
            return Ok(()); // the walker stopped at a bad record
        }
        if !full {
            break;
        }
    }
    let head: Option<(Vec<u8>,)> = sqlx::query_as("SELECT head FROM sc_ledger_head")
        .fetch_optional(&mut *tx)
        .await?;
    let _ = out.send(Ok(Page::Head(head.map(|h| h.0))));
    tx.rollback().await?;
    Ok(())
}

impl LedgerSource for PgBackend {
    fn read_ledger(
        &self,
        visit: &mut secureclaw_vault::VisitRecord<'_>,
    ) -> Result<Option<Vec<u8>>, VaultError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(2);
        let store = self.store.clone();
        let errors = tx.clone();
        self.store.bridge.handle().spawn(async move {
            if let Err(e) = stream_ledger(store, tx).await {
                let _ = errors.send(Err(e.to_string()));
            }
        });
        loop {
            match rx.recv() {
                Ok(Ok(Page::Rows(rows))) => {
                    for (seq, record) in rows {
                        let seq = u64::try_from(seq).map_err(ledger_error)?;
                        visit(seq, &record)?;
                    }
                }
                Ok(Ok(Page::Head(head))) => return Ok(head),
                Ok(Err(e)) => return Err(ledger_error(e)),
                Err(_) => return Err(ledger_error(PgError::RuntimeGone)),
            }
        }
    }

    fn read_head(&self) -> Result<Option<Vec<u8>>, VaultError> {
        let pool = self.store.pool.clone();
        let head: Option<(Vec<u8>,)> = self
            .wait(async move {
                Ok(sqlx::query_as("SELECT head FROM sc_ledger_head")
                    .fetch_optional(&pool)
                    .await?)
            })
            .map_err(ledger_error)?;
        Ok(head.map(|h| h.0))
    }
}
