//! `--store postgres://...`: state several servers and workers share (docs/scaling.md). Without
//! the flag every command keeps its state in its own state directory, as on one machine.

use std::path::Path;
use std::sync::Arc;

use crate::vault_api::{KdfParams, Vault};
use anyhow::Context as _;
use secureclaw_engine::session::{PassphraseSource, Session, SessionOptions, SharedState};
use secureclaw_server::dispatch::Routed;
use secureclaw_store_pg::{PgBackend, PgError, PgStore};

/// The flag, shared by the commands that can use a shared store.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct StoreArgs {
    /// Keep run state, accounts and the ledger in this PostgreSQL database, shared with other
    /// servers and workers (`postgres://USER:PASSWORD@HOST:PORT/DB`; see docs/scaling.md).
    /// The state directory then holds only this node's own files. Default: the state
    /// directory's embedded store.
    #[arg(long, env = "SECURECLAW_STORE", value_name = "URL", global = true)]
    pub store: Option<String>,
}

impl StoreArgs {
    /// The URL, checked to name PostgreSQL.
    pub fn url(&self) -> anyhow::Result<Option<&str>> {
        match self.store.as_deref() {
            None | Some("") => Ok(None),
            Some(url) if secureclaw_store_pg::is_postgres_url(url) => Ok(Some(url)),
            Some(other) => anyhow::bail!(
                "--store takes a PostgreSQL URL (postgres://USER:PASSWORD@HOST:PORT/DB), not \
                 {other:?}; leave it out to keep the state in the state directory"
            ),
        }
    }
}

/// This node's vault, opened for the shared store, and the store's backend.
pub struct Joined {
    pub vault: Vault,
    pub backend: Arc<PgBackend>,
}

/// Connects to `url` and opens this node's state directory for the vault it keeps. With
/// `create`, a store without a vault gets this node's (made first when the directory has none).
pub fn join(
    url: &str,
    state_dir: &Path,
    pass: &PassphraseSource,
    create: bool,
) -> anyhow::Result<Joined> {
    let store = PgStore::connect(url)?;
    let secret = pass.resolve()?;
    let vault = match store.join_vault(state_dir, &secret) {
        Err(PgError::NoVault) if create => {
            let params = KdfParams::from_env()?;
            Vault::create(state_dir, &secret, &params)
                .with_context(|| format!("creating the vault in {}", state_dir.display()))?;
            store.join_vault(state_dir, &secret)?
        }
        other => other?,
    };
    let backend = Arc::new(store.backend(vault.clone()));
    Ok(Joined { vault, backend })
}

/// A node of the shared store: its session, the store, its vault and its id.
pub struct Node {
    pub session: Session,
    pub store: PgStore,
    pub vault: Vault,
    pub id: String,
}

/// A session on the shared store for a node whose own files are in `state_dir`, with the
/// store and the vault (a worker also uses the queue).
pub fn open_node(
    url: &str,
    state_dir: &Path,
    pass: &PassphraseSource,
    actor: String,
) -> anyhow::Result<Node> {
    let joined = join(url, state_dir, pass, true)?;
    let id = node_id(state_dir)?;
    let session = Session::open_shared(
        SessionOptions {
            state_dir: state_dir.to_path_buf(),
            passphrase: pass.clone(),
            access: secureclaw_engine::session::Access::Write { create: false },
            actor,
        },
        SharedState {
            vault: joined.vault.clone(),
            backend: joined.backend.clone(),
            ledger: joined.backend.clone(),
            node: id.clone(),
        },
    )?;
    crate::state::print_notices(&session);
    Ok(Node {
        session,
        store: joined.backend.store().clone(),
        vault: joined.vault,
        id,
    })
}

/// Queues the runs a server starts for `secureclaw worker` processes.
pub struct QueueDispatch(pub secureclaw_store_pg::Queue);

#[async_trait::async_trait]
impl secureclaw_server::dispatch::Dispatch for QueueDispatch {
    async fn enqueue(
        &self,
        run: &secureclaw_server::dispatch::QueuedRun,
        dedup: Option<&str>,
    ) -> Result<bool, String> {
        let payload = serde_json::to_vec(run).map_err(|e| e.to_string())?;
        self.0
            .enqueue(secureclaw_store_pg::JobKind::Run, &payload, dedup)
            .await
            .map(|id| id.is_some())
            .map_err(|e| e.to_string())
    }

    async fn queued_under(
        &self,
        dedup: &str,
    ) -> Result<Option<secureclaw_server::dispatch::QueuedRun>, String> {
        let Some(payload) = self
            .0
            .queued_under(dedup)
            .await
            .map_err(|e| e.to_string())?
        else {
            return Ok(None);
        };
        serde_json::from_slice(&payload)
            .map(Some)
            .map_err(|e| format!("a queued run that does not read back: {e}"))
    }

    async fn revert_on(
        &self,
        node: &str,
        revert: &secureclaw_server::dispatch::RoutedRevert,
        wait: std::time::Duration,
    ) -> Result<Routed<secureclaw_server::dispatch::RevertAnswer>, String> {
        self.on_node(secureclaw_store_pg::JobKind::Revert, node, revert, wait)
            .await
    }

    async fn continue_on(
        &self,
        node: &str,
        cont: &secureclaw_server::dispatch::RoutedContinue,
        wait: std::time::Duration,
    ) -> Result<Routed<secureclaw_server::dispatch::ContinueAnswer>, String> {
        self.on_node(secureclaw_store_pg::JobKind::Continue, node, cont, wait)
            .await
    }
}

impl QueueDispatch {
    /// Queues `request` for the workers of `node` and waits for their answer, or until none
    /// took it within `wait` (it is taken back), or the one that took it lost its lease.
    async fn on_node<A: serde::de::DeserializeOwned>(
        &self,
        kind: secureclaw_store_pg::JobKind,
        node: &str,
        request: &impl serde::Serialize,
        wait: std::time::Duration,
    ) -> Result<Routed<A>, String> {
        use secureclaw_store_pg::JobState;
        let payload = serde_json::to_vec(request).map_err(|e| e.to_string())?;
        let queue = &self.0;
        let id = queue
            .enqueue_on(kind, &payload, node)
            .await
            .map_err(|e| e.to_string())?;
        let deadline = std::time::Instant::now() + wait;
        loop {
            match queue.outcome(id).await.map_err(|e| e.to_string())? {
                Some((_, Some(answer))) => {
                    return serde_json::from_slice(&answer)
                        .map(Routed::Answered)
                        .map_err(|e| format!("the node's answer does not read: {e}"));
                }
                Some((JobState::Done, None)) => {
                    return Err("the job ended with no answer".into());
                }
                Some((JobState::Interrupted, None)) => return Ok(Routed::Lost),
                None => return Err("the job is gone from the queue".into()),
                Some((JobState::Queued, None))
                    if std::time::Instant::now() >= deadline
                        && queue.withdraw(id).await.map_err(|e| e.to_string())? =>
                {
                    return Ok(Routed::NotTaken);
                }
                // Queued, or taken: a request a worker took is awaited to its answer.
                Some(_) => {}
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
}

/// This node's id: random, made once and kept in its state directory (`node-id`), so runs it
/// started are known as its own after a restart.
fn node_id(state_dir: &Path) -> anyhow::Result<String> {
    let path = state_dir.join("node-id");
    match std::fs::read_to_string(&path) {
        Ok(id) if !id.trim().is_empty() => return Ok(id.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    }
    let id = format!("node-{}", uuid::Uuid::new_v4().simple());
    std::fs::write(&path, format!("{id}\n"))
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(id)
}

/// `secureclaw vault ... --store URL`: `rekey` rotates the shared header; the others work on a
/// state directory and refuse the flag rather than ignore it.
pub fn run_vault(
    cmd: crate::vault_cmds::VaultCommand,
    state_dir: &Path,
    pass: &PassphraseSource,
    url: &str,
) -> anyhow::Result<i32> {
    let crate::vault_cmds::VaultCommand::Rekey {
        new_passphrase_file,
        new_passphrase_fd,
        update_kdf,
    } = cmd
    else {
        anyhow::bail!(
            "--store applies to `vault rekey` only: a node's vault comes from the shared store \
             when it first starts (`serve`/`worker --store`), and `vault status` shows a state \
             directory"
        );
    };
    let joined = join(url, state_dir, pass, false)?;
    let out = &mut std::io::stdout().lock();
    let code = crate::vault_cmds::rekey(
        &joined.vault,
        new_passphrase_file,
        new_passphrase_fd,
        update_kdf,
        out,
    )?;
    joined
        .backend
        .store()
        .publish_rekeyed_header(&joined.vault)?;
    use std::io::Write as _;
    writeln!(
        out,
        "the shared store holds the new header: every node takes it at its next start, with the \
         new passphrase"
    )?;
    Ok(code)
}

/// `secureclaw ledger verify|export --store URL`: the shared ledger, through this node's state
/// directory (made from the store's header when new). `verify-export` reads a file offline.
pub fn run_ledger(
    cmd: crate::vault_cmds::LedgerCommand,
    state_dir: &Path,
    pass: &PassphraseSource,
    url: &str,
) -> anyhow::Result<i32> {
    if matches!(cmd, crate::vault_cmds::LedgerCommand::VerifyExport { .. }) {
        return crate::vault_cmds::run_ledger(cmd, state_dir, pass);
    }
    let joined = join(url, state_dir, pass, false)?;
    let ledger = joined.vault.ledger_in(&*joined.backend);
    crate::vault_cmds::ledger_to(cmd, &ledger, &mut std::io::stdout().lock())
}
