//! Connecting, the schema, and the vault every node shares.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use secureclaw_vault::Vault;
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use crate::backend::PgBackend;
use crate::bridge::Bridge;
use crate::error::PgError;
use crate::queue::Queue;

/// The schema version this build writes and reads (`sc_schema.version`).
pub const SCHEMA_VERSION: i32 = 2;

/// How long the server keeps a session that stopped talking inside a transaction (a node cut
/// off mid-commit) before ending it and releasing its locks. A commit's statements follow each
/// other in milliseconds; this only ends sessions whose node is gone.
const IDLE_IN_TRANSACTION_TIMEOUT: &str = "10s";

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Whether `s` names a PostgreSQL store rather than a state directory.
pub fn is_postgres_url(s: &str) -> bool {
    s.starts_with("postgres://") || s.starts_with("postgresql://")
}

/// `url` with the password of its user info replaced, for messages and logs.
fn redacted(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_string();
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return url.to_string();
    };
    match rest[..at].find(':') {
        Some(colon) => format!(
            "{}{}:***{}",
            &url[..scheme_end + 3],
            &rest[..colon],
            &rest[at..]
        ),
        None => url.to_string(),
    }
}

/// A connection pool on the shared store, migrated and checked.
#[derive(Clone)]
pub struct PgStore {
    pub(crate) bridge: Arc<Bridge>,
    pub(crate) pool: PgPool,
    url: String,
    /// The encryption count this node last wrote to the shared counter (see
    /// `backend::lock_counter`).
    pub(crate) synced: Arc<std::sync::Mutex<Option<(u32, u64)>>>,
    /// Followers of runs' events, woken by `NOTIFY` (any node committed run events); the
    /// listener starts with the first follower ([`PgStore::event_commits`]).
    events: Arc<std::sync::OnceLock<Arc<crate::notify::Followers>>>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl PgStore {
    /// Connects to `url` (`postgres://user:password@host:port/db`, or with `?host=/socket/dir`),
    /// refuses a schema newer than [`SCHEMA_VERSION`] and applies the migrations an older one
    /// lacks (several nodes starting at once: sqlx migrates under an advisory lock).
    pub fn connect(url: &str) -> Result<Self, PgError> {
        let bridge = Arc::new(Bridge::start()?);
        let shown = redacted(url);
        let options = url
            .parse::<PgConnectOptions>()
            .map_err(|source| PgError::Connect {
                url: shown.clone(),
                source,
            })?
            // A node cut off in the middle of a commit holds the lock every commit takes: the
            // server ends such a session once it has been idle in its transaction this long,
            // so one lost node stalls the others for seconds, not until TCP gives up.
            .options([(
                "idle_in_transaction_session_timeout",
                IDLE_IN_TRANSACTION_TIMEOUT,
            )]);
        let pool = bridge
            .wait(async move {
                PgPoolOptions::new()
                    .max_connections(8)
                    .acquire_timeout(Duration::from_secs(15))
                    .connect_with(options)
                    .await
            })?
            .map_err(|source| PgError::Connect {
                url: shown.clone(),
                source,
            })?;
        let p = pool.clone();
        bridge.wait(async move { migrate(&p).await })??;
        Ok(Self {
            bridge,
            pool,
            url: shown,
            synced: Arc::default(),
            events: Arc::default(),
        })
    }

    /// Changes each time any node commits events of the run tagged `tag` (see
    /// [`PgBackend`]'s `event_commits`), so a stream of a run another node executes reads them
    /// at once rather than at its next poll. Listening has started when this returns: a commit
    /// made after it is seen. A lost connection is re-made (a notification sent meanwhile is
    /// lost: followers still poll, more slowly).
    pub(crate) fn event_commits(&self, tag: String) -> tokio::sync::watch::Receiver<u64> {
        self.events
            .get_or_init(|| {
                let followers = Arc::new(crate::notify::Followers::default());
                let pool = self.pool.clone();
                let first = self
                    .bridge
                    .wait(crate::notify::listen(pool.clone()))
                    .ok()
                    .and_then(Result::ok);
                self.bridge
                    .handle()
                    .spawn(crate::notify::follow(pool, first, followers.clone()));
                followers
            })
            .follow(tag)
    }

    /// The URL with its password hidden.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Opens this node's state directory for the vault the database keeps; when it keeps
    /// none, the node's own vault (which must exist) is published and becomes the shared one.
    pub fn join_vault(&self, state_dir: &Path, passphrase: &str) -> Result<Vault, PgError> {
        if let Some(shared) = self.vault_header()? {
            return Ok(Vault::join(state_dir, &shared, passphrase)?);
        }
        if !Vault::exists(state_dir) {
            return Err(PgError::NoVault);
        }
        let local = Vault::open(state_dir, passphrase)?;
        let ours = local.header_bytes()?;
        let pool = self.pool.clone();
        let offered = ours.clone();
        self.bridge.wait(async move {
            sqlx::query("INSERT INTO sc_vault (header) VALUES ($1) ON CONFLICT (id) DO NOTHING")
                .bind(offered)
                .execute(&pool)
                .await
        })??;
        // Another node may have published first: its header wins.
        let stored = self.vault_header()?.ok_or(PgError::NoVault)?;
        if stored == ours {
            return Ok(local);
        }
        drop(local);
        Ok(Vault::join(state_dir, &stored, passphrase)?)
    }

    /// The shared vault header, if one was published.
    pub fn vault_header(&self) -> Result<Option<Vec<u8>>, PgError> {
        let pool = self.pool.clone();
        let row: Option<(Vec<u8>,)> = self.bridge.wait(async move {
            sqlx::query_as("SELECT header FROM sc_vault")
                .fetch_optional(&pool)
                .await
        })??;
        Ok(row.map(|r| r.0))
    }

    /// Publishes `vault`'s header (after `vault rekey` on a node): the other nodes take it at
    /// their next start. Refused unless the database already keeps this vault's header.
    pub fn publish_rekeyed_header(&self, vault: &Vault) -> Result<(), PgError> {
        let stored = self.vault_header()?.ok_or(PgError::NoVault)?;
        let stored_id = serde_json::from_slice::<serde_json::Value>(&stored)
            .ok()
            .and_then(|h| {
                h.get("vault_id")
                    .and_then(|v| v.as_str())
                    .map(str::to_owned)
            })
            .unwrap_or_default();
        if stored_id != vault.vault_id() {
            return Err(secureclaw_vault::VaultError::OtherVault {
                dir: vault.state_dir().to_path_buf(),
                local: vault.vault_id(),
                shared: stored_id,
            }
            .into());
        }
        let header = vault.header_bytes()?;
        let pool = self.pool.clone();
        self.bridge.wait(async move {
            sqlx::query("UPDATE sc_vault SET header = $1, updated_at = now()")
                .bind(header)
                .execute(&pool)
                .await
        })??;
        Ok(())
    }

    /// The engine's storage backend on this store, sealing with `vault`.
    pub fn backend(&self, vault: Vault) -> PgBackend {
        PgBackend::new(self.clone(), vault)
    }

    /// The work queue on this store, sealing payloads with `vault`, as a worker with a random
    /// id.
    pub fn queue(&self, vault: Vault) -> Queue {
        Queue::new(self.clone(), vault, None)
    }

    /// The work queue as the worker `owner` (a node's stable id: after a restart it knows
    /// which interrupted jobs were its own).
    pub fn queue_as(&self, vault: Vault, owner: impl Into<String>) -> Queue {
        Queue::new(self.clone(), vault, Some(owner.into()))
    }
}

async fn migrate(pool: &PgPool) -> Result<(), PgError> {
    let found: Option<(i32,)> = match sqlx::query_as("SELECT version FROM sc_schema")
        .fetch_optional(pool)
        .await
    {
        Ok(v) => v,
        // A new database: no schema yet.
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P01") => None,
        Err(e) => return Err(e.into()),
    };
    if let Some((found,)) = found
        && found > SCHEMA_VERSION
    {
        return Err(PgError::SchemaTooNew {
            found,
            supported: SCHEMA_VERSION,
        });
    }
    MIGRATOR.run(pool).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::redacted;

    #[test]
    fn passwords_never_reach_messages() {
        assert_eq!(
            redacted("postgres://sc:hunter2@db:5432/sc"),
            "postgres://sc:***@db:5432/sc"
        );
        assert_eq!(
            redacted("postgresql://sc@db/sc?sslmode=require"),
            "postgresql://sc@db/sc?sslmode=require"
        );
        assert_eq!(
            redacted("postgres://sc:p%40ss@db/x"),
            "postgres://sc:***@db/x"
        );
        assert_eq!(
            redacted("postgres:///sc?host=/tmp"),
            "postgres:///sc?host=/tmp"
        );
    }
}
