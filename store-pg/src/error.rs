use secureclaw_vault::VaultError;

/// What can go wrong talking to the shared store.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    #[error("connecting to PostgreSQL at {url}: {source}")]
    Connect {
        /// The URL with any password removed.
        url: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("migrating the shared store's schema: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error(
        "the shared store's schema is version {found}, newer than this build understands \
         ({supported}): upgrade secureclaw on this node before starting it"
    )]
    SchemaTooNew { found: i32, supported: i32 },
    #[error("PostgreSQL: {0}")]
    Sql(#[from] sqlx::Error),
    #[error(transparent)]
    Vault(#[from] VaultError),
    #[error(
        "the shared store has no vault yet and this node has none to publish: create one with \
         `secureclaw init` (or start a node whose state directory holds one) first"
    )]
    NoVault,
    #[error("the shared store's background runtime stopped")]
    RuntimeGone,
    #[error("the shared store did not answer within {0:?}")]
    Timeout(std::time::Duration),
    #[error("starting the shared store's runtime: {0}")]
    Runtime(std::io::Error),
    /// A commit carried a lease this node no longer holds.
    #[error("this node no longer holds the lease on the run")]
    LeaseLost,
    #[error("not a lease of this store: {0:?}")]
    BadLease(String),
    /// A row the queue wrote reads back as nothing this build knows (a job state, an insert
    /// that returned no id).
    #[error("the work queue holds an unexpected row: {0}")]
    Unexpected(&'static str),
}

impl PgError {
    /// The shared store's errors as the engine's storage errors (the trait's error type).
    pub(crate) fn into_storage(self) -> secureclaw_engine::storage::StorageError {
        use secureclaw_engine::storage::StorageError;
        match self {
            PgError::LeaseLost => StorageError::LeaseLost,
            other => StorageError::Backend(other.to_string()),
        }
    }
}
