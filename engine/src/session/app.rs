//! Data a front end keeps beside the runs: accounts, tasks, settings, per-user secrets.
//!
//! The server stores its own records through the session, never through the vault directly:
//! rows live in the same sealed store as the runs (so one passphrase protects everything and
//! one commit can hold a row and its ledger entry), and rows that belong to one user can be
//! sealed again under that user's own key, derived from the vault's root key.

use secureclaw_vault::{NewEntry, crypto};
use serde_json::Value;

use super::{Session, SessionError};
use crate::record::StoreError;
use crate::storage::{Batch, Table};

/// A front-end table. The engine never reads these; it only stores them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AppTable {
    /// User accounts, by user id.
    Accounts,
    /// Tasks (a plan or a workflow, its owner, its run), by task id.
    Tasks,
    /// Server settings that must survive a restart (e.g. a generated signing secret).
    Settings,
    /// Secrets a user stored (provider API keys), by `USER/NAME`; sealed under the user's key.
    UserSecrets,
    /// Anything else a front end indexes, by its own keys.
    Index,
    /// Webhook trigger bindings, by trigger name; each holds its secrets sealed.
    Triggers,
    /// Webhook deliveries: ids already seen (`seen/NAME/ID`) and each trigger's recent
    /// deliveries (`log/NAME`).
    TriggerDeliveries,
    /// Stored responses of requests sent with an `Idempotency-Key`, by caller and key.
    Idempotency,
    /// Sign-in sessions, by `USER/SESSION`, kept only on a store several server replicas share
    /// (one server holds them in memory).
    SignIns,
}

impl AppTable {
    pub fn name(self) -> &'static str {
        match self {
            AppTable::Accounts => "app_accounts",
            AppTable::Tasks => "app_tasks",
            AppTable::Settings => "app_settings",
            AppTable::UserSecrets => "app_user_secrets",
            AppTable::Index => "app_index",
            AppTable::Triggers => "app_triggers",
            AppTable::TriggerDeliveries => "app_trigger_deliveries",
            AppTable::Idempotency => "app_idempotency",
            AppTable::SignIns => "app_sign_ins",
        }
    }
}

/// Something that happened outside a run that the ledger must hold (a login, a lockout, a
/// 2FA change, an account created).
#[derive(Debug, Clone)]
pub struct Audit {
    /// Ledger entry kind, e.g. `auth_login` (see `secureclaw_vault::kind`).
    pub kind: String,
    /// Who acted (`user:ID`, `anonymous`, `addr:1.2.3.4`).
    pub actor: String,
    /// The run it concerns, if any.
    pub run: Option<String>,
    /// What happened; never a password, a code or a token.
    pub detail: Value,
}

impl Audit {
    pub fn new(kind: &str, actor: impl Into<String>, detail: Value) -> Self {
        Audit {
            kind: kind.to_string(),
            actor: actor.into(),
            run: None,
            detail,
        }
    }

    fn into_entry(self) -> NewEntry {
        let mut e = NewEntry::new(self.actor, self.kind).result(self.detail);
        if let Some(r) = self.run {
            e = e.run(r);
        }
        e
    }
}

/// Rows written or removed and ledger entries appended, all in one commit.
#[derive(Debug, Default)]
pub struct AppBatch {
    puts: Vec<(AppTable, String, Vec<u8>)>,
    deletes: Vec<(AppTable, String)>,
    audits: Vec<Audit>,
}

impl AppBatch {
    pub fn put(&mut self, table: AppTable, key: impl Into<String>, bytes: Vec<u8>) -> &mut Self {
        self.puts.push((table, key.into(), bytes));
        self
    }

    pub fn put_json<T: serde::Serialize + ?Sized>(
        &mut self,
        table: AppTable,
        key: impl Into<String>,
        value: &T,
    ) -> Result<&mut Self, SessionError> {
        let key = key.into();
        let bytes = serde_json::to_vec(value).map_err(|e| StoreError::Decode {
            what: format!("{}/{key}", table.name()),
            message: e.to_string(),
        })?;
        Ok(self.put(table, key, bytes))
    }

    pub fn delete(&mut self, table: AppTable, key: impl Into<String>) -> &mut Self {
        self.deletes.push((table, key.into()));
        self
    }

    pub fn audit(&mut self, audit: Audit) -> &mut Self {
        self.audits.push(audit);
        self
    }

    pub fn is_empty(&self) -> bool {
        self.puts.is_empty() && self.deletes.is_empty() && self.audits.is_empty()
    }
}

/// The AAD that binds a user-sealed value to its user and its purpose.
fn user_aad(user_id: &str, purpose: &str) -> Vec<u8> {
    format!("secureclaw/v1/user-sealed/{purpose}/{user_id}").into_bytes()
}

impl Session {
    /// One front-end row as stored.
    pub fn app_get(&self, table: AppTable, key: &str) -> Result<Option<Vec<u8>>, SessionError> {
        Ok(self.inner.store.get_raw(Table::App(table), key)?)
    }

    /// One front-end row as JSON.
    pub fn app_get_json<T: serde::de::DeserializeOwned>(
        &self,
        table: AppTable,
        key: &str,
    ) -> Result<Option<T>, SessionError> {
        Ok(self.inner.store.get_json(Table::App(table), key)?)
    }

    /// Every key of a front-end table.
    pub fn app_keys(&self, table: AppTable) -> Result<Vec<String>, SessionError> {
        Ok(self.inner.store.keys(Table::App(table))?)
    }

    /// Commit rows and ledger entries together, and wait until they are durable.
    pub async fn app_commit(&self, batch: AppBatch) -> Result<(), SessionError> {
        let out = Batch {
            puts: batch
                .puts
                .into_iter()
                .map(|(t, k, v)| (Table::App(t), k, v))
                .collect(),
            deletes: batch
                .deletes
                .into_iter()
                .map(|(t, k)| (Table::App(t), k))
                .collect(),
            entries: batch.audits.into_iter().map(Audit::into_entry).collect(),
            ..Batch::default()
        };
        self.inner.store.commit(out).await?;
        Ok(())
    }

    /// Writes `bytes` at `key` unless a row is there already, and returns the row as stored:
    /// of several nodes of a shared store creating it at once, every one gets the same value.
    pub async fn app_create(
        &self,
        table: AppTable,
        key: &str,
        bytes: Vec<u8>,
    ) -> Result<Vec<u8>, SessionError> {
        let batch = Batch {
            creates: vec![(Table::App(table), key.to_string(), bytes)],
            ..Batch::default()
        };
        self.inner.store.commit(batch).await?;
        self.app_get(table, key)?.ok_or_else(|| {
            SessionError::Store(crate::record::StoreError::NotFound(format!(
                "{}/{key}",
                table.name()
            )))
        })
    }

    /// Append one ledger entry (an auth event, say) and wait until it is durable.
    pub async fn audit(&self, audit: Audit) -> Result<(), SessionError> {
        let mut b = AppBatch::default();
        b.audit(audit);
        self.app_commit(b).await
    }

    /// Seal `plaintext` under `user_id`'s own key (derived from the vault's root key), bound to
    /// `purpose`: a row sealed for one user or purpose does not open as another's.
    pub fn seal_for_user(
        &self,
        user_id: &str,
        purpose: &str,
        plaintext: &[u8],
    ) -> Result<Vec<u8>, SessionError> {
        let key = self.user_key(user_id)?;
        let nonce = crypto::random_nonce().map_err(|source| self.vault_error(source))?;
        let sealed = crypto::Cipher::new(&key)
            .seal(&nonce, &user_aad(user_id, purpose), plaintext)
            .map_err(|source| self.vault_error(source))?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    /// Open what [`Session::seal_for_user`] sealed; `None` when it was sealed for another user
    /// or purpose, or was altered.
    pub fn open_for_user(
        &self,
        user_id: &str,
        purpose: &str,
        sealed: &[u8],
    ) -> Result<Option<Vec<u8>>, SessionError> {
        let key = self.user_key(user_id)?;
        let Some((nonce, body)) = sealed.split_first_chunk::<{ crypto::NONCE_LEN }>() else {
            return Ok(None);
        };
        Ok(crypto::Cipher::new(&key).open(nonce, &user_aad(user_id, purpose), body))
    }

    fn user_key(&self, user_id: &str) -> Result<crypto::SecretKey, SessionError> {
        self.inner
            .store
            .vault()
            .user_key(user_id)
            .map_err(|source| self.vault_error(source))
    }

    pub(super) fn vault_error(&self, source: secureclaw_vault::VaultError) -> SessionError {
        SessionError::Vault {
            dir: self.inner.state_dir.clone(),
            cause: source,
        }
    }

    /// The ledger (or one run's entries) as signed JSONL, and the head to check it against.
    pub fn ledger_export(
        &self,
        run: Option<&str>,
    ) -> Result<(Vec<u8>, secureclaw_vault::ExportHead), SessionError> {
        let run = match run {
            Some(r) => Some(self.inner.store.resolve(r)?),
            None => None,
        };
        let mut out = Vec::new();
        let head = self
            .ledger()
            .export(run.as_deref(), &mut out)
            .map_err(|source| self.vault_error(source))?;
        Ok((out, head))
    }

    /// The ledger's entries (or one run's), oldest first. The chain is checked while it is
    /// read, so a tampered ledger is an error rather than a partial list.
    pub fn ledger_entries(
        &self,
        run: Option<&str>,
    ) -> Result<Vec<secureclaw_vault::LedgerEntry>, SessionError> {
        let run = match run {
            Some(r) => Some(self.inner.store.resolve(r)?),
            None => None,
        };
        let records = self
            .ledger()
            .entries(run.as_deref())
            .map_err(|source| self.vault_error(source))?;
        Ok(records.into_iter().map(|r| r.entry).collect())
    }

    /// One run by its exact id (no prefixes, no `last`); `None` when it has no record yet.
    /// Cheap enough to call once per row of a list, unlike [`Session::show`].
    pub fn run_record(
        &self,
        run_id: &str,
    ) -> Result<Option<crate::record::RunRecord>, SessionError> {
        Ok(self.inner.store.get(run_id)?)
    }

    /// Ids of the runs parked at approval gates. A listing of many tasks asks this first, so
    /// it opens only the runs that wait rather than every run record.
    pub fn parked_runs(&self) -> Result<Vec<String>, SessionError> {
        Ok(self.inner.store.keys(Table::Parked)?)
    }
}
