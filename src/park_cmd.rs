//! `approve`, `deny`, `resume`, `retry` and `logs`: parked and failed runs going on, and the
//! event log.

use std::io::{IsTerminal as _, Write as _};
use std::path::PathBuf;

use anyhow::Context as _;
use clap::Args;
use console::style;
use secureclaw_engine::session::{Access, PassphraseSource, SessionError};
use tokio_util::sync::CancellationToken;

use crate::exit;

#[derive(Args)]
pub struct ApproveArgs {
    /// The parked run: id, unique prefix, or `last`.
    pub run: String,
    /// Approve only this step's gate [default: every gate the run waits at].
    #[arg(long)]
    pub step: Option<String>,
    /// Resume the run right after approving.
    #[arg(long)]
    pub resume: bool,
    #[command(flatten)]
    pub common: ResumeFlags,
}

#[derive(Args)]
pub struct DenyArgs {
    /// The parked run: id, unique prefix, or `last`.
    pub run: String,
    /// The step whose gate is denied: on resume it is skipped with every step that needs it.
    #[arg(long)]
    pub step: String,
    /// Why (recorded in the ledger).
    #[arg(long)]
    pub reason: Option<String>,
    /// Where run records live [default: ./.secureclaw].
    #[arg(long, env = "SECURECLAW_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
}

#[derive(Args)]
pub struct ResumeArgs {
    /// The parked run: id, unique prefix, or `last`.
    pub run: String,
    #[command(flatten)]
    pub common: ResumeFlags,
}

#[derive(Args, Clone)]
pub struct ResumeFlags {
    /// Go on even though the workspace changed since the run parked.
    #[arg(long)]
    pub force: bool,
    /// Print events as JSON lines instead of the progress display.
    #[arg(long)]
    pub json: bool,
    /// Where run records live [default: ./.secureclaw].
    #[arg(long, env = "SECURECLAW_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
}

/// The long `--help` text of `retry` (the subcommand's doc line is its short one).
pub const RETRY_LONG_ABOUT: &str = "Continue a failed run from its failed step, as the same run.\n\n\
The steps that succeeded stay done: they are not run again, their changes stay in the\n\
workspace and their outputs still feed the templates of later steps. The failed step and\n\
every step that did not run because of it (skipped, cancelled, never started) run again.\n\
The run keeps its id, its events go on, and `secureclaw revert RUN` still undoes all of it,\n\
both attempts included.\n\n\
A failed step's changes were rolled back when it failed, so fix what made it fail (a missing\n\
file, a service that was down) and retry. Changing the workspace is drift, though: retry\n\
refuses and lists the changed paths, and `--force` goes on anyway. A run that fails again\n\
can be retried again. To start over from the first step instead, run the workflow again\n\
(`secureclaw rerun RUN`, or `secureclaw run FILE`).";

#[derive(Args)]
pub struct RetryArgs {
    /// The failed run: id, unique prefix, or `last`.
    pub run: String,
    /// Go on even though the workspace changed since the run failed (e.g. you created the
    /// file the failed step was missing).
    #[arg(long)]
    pub force: bool,
    /// Print events as JSON lines instead of the progress display.
    #[arg(long)]
    pub json: bool,
    /// Where run records live [default: ./.secureclaw].
    #[arg(long, env = "SECURECLAW_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
}

#[derive(Args)]
pub struct LogsArgs {
    /// Run id, unique prefix, or `last`.
    pub run: String,
    /// Only events after this sequence number (what a reconnecting client last saw).
    #[arg(long, default_value_t = 0)]
    pub after: u64,
    /// Where run records live [default: ./.secureclaw].
    #[arg(long, env = "SECURECLAW_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// Exit code of a session error: the caller's mistake (2) or a failure (reported as error).
fn report(e: SessionError) -> anyhow::Result<u8> {
    if e.is_invalid_request() || matches!(e, SessionError::Drift { .. }) {
        crate::state::print_error(&e);
        if let SessionError::Drift { paths, .. } = &e {
            for p in paths.iter().take(20) {
                eprintln!("    changed: {p}");
            }
        }
        return Ok(exit::INVALID);
    }
    Err(e.into())
}

pub fn approve(args: ApproveArgs, pass: &PassphraseSource) -> anyhow::Result<u8> {
    let dir = crate::cwd_state(args.common.state_dir.as_ref())?;
    let session = crate::state::open(&dir, pass, Access::Write { create: false })?;
    let rt = runtime()?;
    let by = crate::state::actor();
    let decided = match rt.block_on(session.approve(&args.run, args.step.as_deref(), &by)) {
        Ok(d) => d,
        Err(e) => return report(e),
    };
    for d in &decided {
        eprintln!(
            "{} approved step `{}` (as {by})",
            style("✓").green(),
            d.step
        );
    }
    let run = session.show(&args.run)?.run_id;
    if !args.resume {
        eprintln!(
            "  {} `secureclaw resume {run}` runs it; the approval holds only while the step stays exactly as shown",
            style("next:").cyan()
        );
        return Ok(exit::OK);
    }
    resume_in(&session, &rt, &run, &args.common)
}

pub fn deny(args: DenyArgs, pass: &PassphraseSource) -> anyhow::Result<u8> {
    let dir = crate::cwd_state(args.state_dir.as_ref())?;
    let session = crate::state::open(&dir, pass, Access::Write { create: false })?;
    let rt = runtime()?;
    let by = crate::state::actor();
    match rt.block_on(session.deny(&args.run, &args.step, &by, args.reason.clone())) {
        Ok(_) => {
            eprintln!(
                "{} denied step `{}`; `secureclaw resume {}` skips it and what needs it",
                style("✗").red(),
                args.step,
                args.run
            );
            Ok(exit::OK)
        }
        Err(e) => report(e),
    }
}

pub fn resume(args: ResumeArgs, pass: &PassphraseSource) -> anyhow::Result<u8> {
    let dir = crate::cwd_state(args.common.state_dir.as_ref())?;
    let session = crate::state::open(&dir, pass, Access::Write { create: false })?;
    let rt = runtime()?;
    resume_in(&session, &rt, &args.run, &args.common)
}

fn resume_in(
    session: &secureclaw_engine::session::Session,
    rt: &tokio::runtime::Runtime,
    run: &str,
    flags: &ResumeFlags,
) -> anyhow::Result<u8> {
    rt.block_on(async {
        let handle = match session.resume(run, flags.force, None) {
            Ok(h) => h,
            Err(e) => return report(e),
        };
        follow_here(session, handle, flags.json, 0).await
    })
}

pub fn retry(args: RetryArgs, pass: &PassphraseSource) -> anyhow::Result<u8> {
    let dir = crate::cwd_state(args.state_dir.as_ref())?;
    let session = crate::state::open(&dir, pass, Access::Write { create: false })?;
    let rt = runtime()?;
    rt.block_on(async {
        let after = match session.last_event_seq(&args.run) {
            Ok(n) => n,
            Err(e) => return report(e),
        };
        let handle = match session.retry(&args.run, args.force, None).await {
            Ok(h) => h,
            Err(e) => return report(e),
        };
        follow_here(&session, handle, args.json, after).await
    })
}

/// Show a run going on in this process (its events after `after`) until it ends; Ctrl-C
/// cancels it.
async fn follow_here(
    session: &secureclaw_engine::session::Session,
    handle: secureclaw_engine::session::RunHandle,
    json: bool,
    after: u64,
) -> anyhow::Result<u8> {
    {
        crate::state::print_notices(session);
        let cancel = CancellationToken::new();
        let c = cancel.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                c.cancel();
            }
        });
        let display = crate::run_cmd::Display::new(json, std::io::stderr().is_terminal());
        crate::run_cmd::follow_after(handle, display, cancel, json, after).await
    }
}

pub fn logs(args: LogsArgs, pass: &PassphraseSource) -> anyhow::Result<u8> {
    let dir = crate::cwd_state(args.state_dir.as_ref())?;
    let session = crate::state::open(&dir, pass, Access::Read)?;
    let rt = runtime()?;
    rt.block_on(async {
        let mut events = session.events(&args.run, args.after)?;
        let mut out = std::io::stdout().lock();
        while let Some(e) = events.next().await {
            // A reader that stopped reading (`| head`) ends the listing, not in a panic.
            match writeln!(out, "{}", serde_json::to_string(&e)?) {
                Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => break,
                other => other?,
            }
        }
        Ok(exit::OK)
    })
}
