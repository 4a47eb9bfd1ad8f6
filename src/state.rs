//! Opening the engine's session on a state dir, and telling the user what it noticed.

use std::io::IsTerminal as _;
use std::path::Path;

use console::style;
use secureclaw_engine::session::{
    Access, Notice, PassphraseSource, Session, SessionError, SessionOptions,
};

/// Who the ledger says acted.
pub fn actor() -> String {
    format!(
        "cli:{}",
        std::env::var("USER").unwrap_or_else(|_| "unknown".into())
    )
}

/// Open a session on `state_dir`. `Access::Read` takes no write lock and writes nothing (a
/// read-only backup works); `Access::Write { create: true }` makes the vault on first use.
pub fn open(state_dir: &Path, pass: &PassphraseSource, access: Access) -> anyhow::Result<Session> {
    open_as(state_dir, pass, access, actor())
}

/// [`open`] with the ledger's actor named.
pub fn open_as(
    state_dir: &Path,
    pass: &PassphraseSource,
    access: Access,
    actor: String,
) -> anyhow::Result<Session> {
    let session = Session::open(SessionOptions {
        state_dir: state_dir.to_path_buf(),
        passphrase: pass.clone(),
        access,
        actor,
    })
    .map_err(|e| match e {
        SessionError::Passphrase(_) if !std::io::stdin().is_terminal() => anyhow::Error::new(e)
            .context("no vault passphrase: set SECURECLAW_PASSPHRASE, or pass --passphrase-file PATH or --passphrase-fd N"),
        e => anyhow::Error::new(e),
    })?;
    print_notices(&session);
    Ok(session)
}

/// Print what the session noticed since the last call.
pub fn print_notices(session: &Session) {
    for n in session.take_notices() {
        let tag = match n {
            Notice::VaultCreated { .. } => style("note:").cyan(),
            Notice::Interrupted { .. } => style("note:").yellow(),
            _ => style("note:").dim(),
        };
        match n {
            Notice::RiskModel { .. } => eprintln!("{}", style(&n).dim()),
            _ => eprintln!("{tag} {n}"),
        }
    }
}

/// Print a session error the way the CLI prints errors: the message, then a hint.
pub fn print_error(e: &SessionError) {
    eprintln!("{} {e}", style("error:").red().bold());
    if let SessionError::Invalid {
        hint: Some(hint), ..
    } = e
    {
        eprintln!("  {} {hint}", style("hint:").cyan());
    }
}
