//! Unlocking the vault for commands that touch state.

use std::io::IsTerminal as _;
use std::path::Path;

use anyhow::Context as _;
use console::style;
use secureclaw_vault::{KdfParams, PassphraseSource, Vault, VaultError};

/// Open the vault in `state_dir`; with `create`, make one on first use.
pub fn open(state_dir: &Path, pass: &PassphraseSource, create: bool) -> anyhow::Result<Vault> {
    if Vault::exists(state_dir) {
        if let Some(v) = with_agent(state_dir, secureclaw_engine::keyring::open_with_agent)? {
            return Ok(v);
        }
        let secret = pass.resolve().map_err(|e| no_passphrase(e.into()))?;
        return match Vault::open(state_dir, &secret) {
            Err(VaultError::WrongPassphrase) => anyhow::bail!(
                "wrong passphrase for the vault in {} (nothing was read or written)",
                state_dir.display()
            ),
            other => other.with_context(|| format!("opening the vault in {}", state_dir.display())),
        };
    }
    if !create {
        anyhow::bail!(
            "no vault in {} yet (run a workflow there first, or `secureclaw vault init --state-dir {}`)",
            state_dir.display(),
            state_dir.display()
        );
    }
    let secret = pass.resolve_new().map_err(|e| no_passphrase(e.into()))?;
    let params = KdfParams::from_env().context("reading ARGON2_* settings")?;
    let vault = Vault::create(state_dir, &secret, &params)
        .with_context(|| format!("creating the vault in {}", state_dir.display()))?;
    eprintln!(
        "{} created an encrypted vault in {} (Argon2id {} KiB, t={}); the passphrase cannot be recovered: keep it safe",
        style("note:").cyan(),
        state_dir.display(),
        params.memory_kib,
        params.iterations
    );
    Ok(vault)
}

/// Open the vault in `state_dir` for a command that only reads (`runs`, `show`...): no write
/// lock is taken and nothing is written, so a read-only state dir (a backup being audited, a
/// read-only mount) works, for root too.
pub fn open_for_reading(state_dir: &Path, pass: &PassphraseSource) -> anyhow::Result<Vault> {
    if !Vault::exists(state_dir) {
        anyhow::bail!(
            "no vault in {} yet (run a workflow there first, or `secureclaw vault init --state-dir {}`)",
            state_dir.display(),
            state_dir.display()
        );
    }
    if let Some(v) = with_agent(
        state_dir,
        secureclaw_engine::keyring::open_for_reading_with_agent,
    )? {
        return Ok(v);
    }
    let secret = pass.resolve().map_err(|e| no_passphrase(e.into()))?;
    match Vault::open_for_reading(state_dir, &secret) {
        Err(VaultError::WrongPassphrase) => anyhow::bail!(
            "wrong passphrase for the vault in {} (nothing was read or written)",
            state_dir.display()
        ),
        other => other.with_context(|| format!("opening the vault in {}", state_dir.display())),
    }
}

/// The vault opened with the key `secureclaw unlock` left in the agent, if it has one.
fn with_agent(
    state_dir: &Path,
    open: fn(&Path) -> Result<Option<Vault>, VaultError>,
) -> anyhow::Result<Option<Vault>> {
    open(state_dir).with_context(|| format!("opening the vault in {}", state_dir.display()))
}

fn no_passphrase(e: anyhow::Error) -> anyhow::Error {
    if std::io::stdin().is_terminal() {
        e
    } else {
        e.context("no vault passphrase: set SECURECLAW_PASSPHRASE, or pass --passphrase-file PATH or --passphrase-fd N")
    }
}
