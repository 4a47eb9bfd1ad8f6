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

/// Print a session error the way the CLI prints errors: the message, then a hint (one JSON
/// error object under `--json`).
pub fn print_error(e: &SessionError) {
    crate::output::report_error(e.kind(), &e.to_string(), e.hint().as_deref());
}

/// Where a command that reads recorded runs finds them: `--state-dir`, or the state dir of
/// `--workspace`, or `./.secureclaw`.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct Locate {
    /// Where run records live [default: WORKSPACE/.secureclaw with --workspace, else
    /// ./.secureclaw].
    #[arg(long, env = "SECURECLAW_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<std::path::PathBuf>,
    /// The workspace the runs worked in (`run --workspace DIR`): its runs are recorded in
    /// DIR/.secureclaw. `--state-dir` wins when both are given.
    #[arg(long, short = 'w', value_name = "DIR")]
    pub workspace: Option<std::path::PathBuf>,
}

impl Locate {
    /// The state dir these flags name.
    pub fn dir(&self) -> anyhow::Result<std::path::PathBuf> {
        match (&self.state_dir, &self.workspace) {
            (Some(dir), _) => Ok(dir.clone()),
            (None, Some(ws)) => Ok(crate::state_dir(None, ws)),
            (None, None) => crate::cwd_state(None),
        }
    }
}

/// The flags that make a follow-up command (`show`, `logs`, `revert`…) typed in the current
/// directory find the runs in `state`: none when it is `./.secureclaw`, `--workspace WS` when
/// it is the default one of `workspace`, else `--state-dir STATE`. Starts with a space when
/// not empty; paths are quoted for a POSIX shell.
pub fn locate_flags(state: &Path, workspace: &Path) -> String {
    let same = |a: &Path, b: &Path| match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    };
    if let Ok(cwd) = std::env::current_dir()
        && same(state, &crate::state_dir(None, &cwd))
    {
        return String::new();
    }
    if same(state, &crate::state_dir(None, workspace)) {
        format!(" --workspace {}", shell_quote(workspace))
    } else {
        format!(" --state-dir {}", shell_quote(state))
    }
}

/// A recorded run as a follow-up command names it: its id, then the [`locate_flags`] that find
/// it from the current directory.
pub fn run_ref(state: &Path, record: &secureclaw_engine::record::RunRecord) -> String {
    format!(
        "{}{}",
        record.run_id,
        locate_flags(state, &record.workspace)
    )
}

/// A path as a POSIX shell word (quoted only when it needs to be).
pub fn shell_quote(path: &Path) -> String {
    let text = path.to_string_lossy();
    shlex::try_quote(&text)
        .map(|q| q.into_owned())
        .unwrap_or_else(|_| format!("'{}'", text.replace('\'', r"'\''")))
}
