//! The unlock agent, for the CLI: `secureclaw unlock` hands a vault's key to a long-lived agent
//! process so that later commands open the vault without the passphrase or the Argon2id work;
//! `secureclaw lock` drops it. The agent itself lives in the vault crate (see docs/vault.md).

use std::path::Path;
use std::time::Duration;

use secureclaw_vault::Vault;
pub use secureclaw_vault::agent::{
    AgentError, AgentStatus, DEFAULT_TIMEOUT, ENV_AGENT, HeldKey, Unlocked, enabled, lock,
    socket_path, status,
};
pub use secureclaw_vault::{PassphraseSource, READ_SOCKET_FILE, VaultError};

/// The hidden subcommand of the `secureclaw` binary that runs the agent.
pub const AGENT_SUBCOMMAND: &str = "__agent";

/// Checks `passphrase` against the vault in `state_dir` and gives the vault's key to the agent
/// (started from this executable, `secureclaw __agent`, when none runs), to be dropped after
/// `timeout` without use.
pub fn unlock(
    state_dir: &Path,
    passphrase: &str,
    timeout: Duration,
) -> Result<Unlocked, AgentError> {
    let exe = std::env::current_exe().map_err(|source| AgentError::Io {
        context: "locating the secureclaw executable".into(),
        source,
    })?;
    secureclaw_vault::agent::unlock(state_dir, passphrase, timeout, move || {
        let mut cmd = std::process::Command::new(exe);
        cmd.arg(AGENT_SUBCOMMAND);
        cmd
    })
}

/// Runs the agent in this process (the hidden subcommand); returns only on a setup failure.
pub fn serve_agent() -> Result<std::convert::Infallible, AgentError> {
    secureclaw_vault::agent::serve()
}

/// Opens the vault in `state_dir` writable with the agent's key; `Ok(None)` when the agent
/// cannot unlock it (off, absent, no key for this vault, or a key from before a passphrase
/// change): the caller then asks for the passphrase.
pub fn open_with_agent(state_dir: &Path) -> Result<Option<Vault>, VaultError> {
    Vault::open_with_agent(state_dir)
}

/// Like [`open_with_agent`] for commands that only read.
pub fn open_for_reading_with_agent(state_dir: &Path) -> Result<Option<Vault>, VaultError> {
    Vault::open_for_reading_with_agent(state_dir)
}
