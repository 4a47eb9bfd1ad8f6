//! `approve`, `deny`, `resume`, `retry` and `logs`: parked and failed runs going on, and the
//! event log.

use std::io::{IsTerminal as _, Write as _};

use anyhow::Context as _;
use clap::Args;
use console::style;
use secureclaw_engine::events::{EventEnvelope, RunEvent};
use secureclaw_engine::model::ActionKind;
use secureclaw_engine::record::{RunRecord, RunState, StepRecord};
use secureclaw_engine::session::{Access, PassphraseSource, Session, SessionError};
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
    #[command(flatten)]
    pub locate: crate::state::Locate,
    #[command(flatten)]
    pub pass: crate::vault_cmds::PassphraseArgs,
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
    #[command(flatten)]
    pub locate: crate::state::Locate,
    #[command(flatten)]
    pub pass: crate::vault_cmds::PassphraseArgs,
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
    #[command(flatten)]
    pub locate: crate::state::Locate,
    #[command(flatten)]
    pub pass: crate::vault_cmds::PassphraseArgs,
}

#[derive(Args)]
#[command(
    after_help = "Output is as recorded: secret inputs scrubbed, each stream kept up to the \
step's output cap (sandbox.output_cap, 1Mi by default; what the cap cut is said).\n\
`--events` prints the run's events instead, one JSON object per line, numbered from 1."
)]
pub struct LogsArgs {
    /// Run id, unique prefix, or `last`.
    pub run: String,
    /// Only this step's output [default: every step that ran, in the order they started].
    #[arg(long)]
    pub step: Option<String>,
    /// Keep printing a running run's output (the run may go on in another process) until it
    /// ends or parks.
    #[arg(long, short = 'f')]
    pub follow: bool,
    /// The run's events as JSON lines (each with its sequence number and time), instead of
    /// the output.
    #[arg(long, visible_alias = "json")]
    pub events: bool,
    /// Only events after this sequence number (what a reconnecting client last saw); implies
    /// --events.
    #[arg(long, value_name = "N")]
    pub after: Option<u64>,
    #[command(flatten)]
    pub locate: crate::state::Locate,
    #[command(flatten)]
    pub pass: crate::vault_cmds::PassphraseArgs,
}

impl LogsArgs {
    /// Whether the events are printed as JSON lines rather than the output as text.
    pub fn json_events(&self) -> bool {
        self.events || self.after.is_some()
    }
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
        match &e {
            SessionError::Drift { paths, .. } if crate::output::json_errors() => {
                crate::output::report_error_with(
                    e.kind(),
                    &e.to_string(),
                    None,
                    Some(("paths", serde_json::json!(paths))),
                );
            }
            SessionError::Drift { paths, .. } => {
                crate::state::print_error(&e);
                for p in paths.iter().take(20) {
                    eprintln!("    changed: {p}");
                }
            }
            _ => crate::state::print_error(&e),
        }
        return Ok(exit::INVALID);
    }
    Err(e.into())
}

pub fn approve(args: ApproveArgs, pass: &PassphraseSource) -> anyhow::Result<u8> {
    let dir = args.common.locate.dir()?;
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
    let record = session.show(&args.run)?;
    if !args.resume {
        eprintln!(
            "  {} `secureclaw resume {}` runs it; the approval holds only while the step stays exactly as shown",
            style("next:").cyan(),
            crate::state::run_ref(&dir, &record)
        );
        return Ok(exit::OK);
    }
    resume_in(&session, &rt, &record.run_id, &args.common)
}

pub fn deny(args: DenyArgs, pass: &PassphraseSource) -> anyhow::Result<u8> {
    let dir = args.locate.dir()?;
    let session = crate::state::open(&dir, pass, Access::Write { create: false })?;
    let rt = runtime()?;
    let by = crate::state::actor();
    match rt.block_on(session.deny(&args.run, &args.step, &by, args.reason.clone())) {
        Ok(_) => {
            let run = session
                .show(&args.run)
                .map(|r| crate::state::run_ref(&dir, &r))
                .unwrap_or_else(|_| args.run.clone());
            eprintln!(
                "{} denied step `{}`; `secureclaw resume {run}` skips it and what needs it",
                style("✗").red(),
                args.step,
            );
            Ok(exit::OK)
        }
        Err(e) => report(e),
    }
}

pub fn resume(args: ResumeArgs, pass: &PassphraseSource) -> anyhow::Result<u8> {
    let dir = args.common.locate.dir()?;
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
    let dir = args.locate.dir()?;
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
    crate::state::print_notices(session);
    let cancel = CancellationToken::new();
    let c = cancel.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            c.cancel();
        }
    });
    let locate = session
        .show(handle.id())
        .map(|r| crate::state::locate_flags(session.state_dir(), &r.workspace))
        .unwrap_or_default();
    let display = crate::run_cmd::Display::new(json, std::io::stderr().is_terminal(), locate);
    crate::run_cmd::follow_after(handle, display, cancel, json, after, session.state_dir()).await
}

pub fn logs(args: LogsArgs, pass: &PassphraseSource) -> anyhow::Result<u8> {
    let dir = args.locate.dir()?;
    let session = crate::state::open(&dir, pass, Access::Read)?;
    let record = session.show(&args.run)?;
    if let Some(step) = &args.step
        && record.step(step).is_none()
    {
        return report(SessionError::Invalid {
            message: format!("run `{}` has no step `{step}`", record.run_id),
            hint: Some(format!(
                "its steps: {}",
                record
                    .steps
                    .iter()
                    .map(|s| s.id.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        });
    }
    let stdout = std::io::stdout();
    let mut out = OutputPrinter::new(stdout.lock(), args.step.is_none());
    let written = if args.json_events() {
        let mut w = std::io::stdout().lock();
        runtime()?.block_on(stream_events(
            session,
            &record.run_id,
            args.after.unwrap_or(0),
            args.follow,
            |e| writeln!(w, "{}", serde_json::to_string(e).unwrap_or_default()),
        ))
    } else if args.follow {
        let step = args.step.clone();
        runtime()?.block_on(stream_events(
            session,
            &record.run_id,
            0,
            true,
            |e| match &e.event {
                RunEvent::Output {
                    step: s,
                    stream,
                    text,
                } if stream != "trace" && step.as_ref().is_none_or(|only| only == s) => {
                    out.text(s, None, stream, text)
                }
                RunEvent::UntrustedContentFlagged {
                    step: s,
                    stream,
                    layer,
                    pattern,
                    score,
                } if step.as_ref().is_none_or(|only| only == s) => {
                    out.flush()?;
                    eprintln!(
                        "{}",
                        style(format!(
                            "warning: untrusted content: step `{s}` output looks like a prompt injection ({stream}: {pattern} ({layer}), score {score:.2}); steps that use it wait for approval"
                        ))
                        .yellow()
                        .bold()
                    );
                    Ok(())
                }
                RunEvent::RunParked { steps } => out.note(&format!(
                    "parked at {}: `secureclaw approve {}` then `secureclaw resume {}`",
                    steps.join(", "),
                    e.run_id,
                    e.run_id
                )),
                _ => Ok(()),
            },
        ))
    } else {
        print_recorded(&record, args.step.as_deref(), &mut out)
    };
    match written {
        // A reader that stopped reading (`| head`) ends the listing, not in a panic.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(exit::OK),
        other => other.map(|()| exit::OK).map_err(Into::into),
    }
}

/// The streams of a step's recorded output that have anything in them, by name: a shell
/// step's stdout and stderr; another action's output (what it read, the response body…).
pub fn step_streams(s: &StepRecord) -> Vec<(&'static str, &str)> {
    let mut streams = Vec::new();
    if s.kind != ActionKind::Shell && !s.output.is_empty() {
        streams.push(("output", s.output.as_str()));
    }
    for (name, text) in [("stdout", &s.stdout), ("stderr", &s.stderr)] {
        // Another action's stdout, when it has one, is usually its output again.
        let said_as_output = name == "stdout" && s.kind != ActionKind::Shell && *text == s.output;
        if !text.is_empty() && !said_as_output {
            streams.push((name, text.as_str()));
        }
    }
    streams
}

/// What the output cap cut from a step's output, in words, if it cut anything.
pub fn cut_note(s: &StepRecord) -> Option<String> {
    let cut = s.output_cut?;
    let mut parts = Vec::new();
    for (name, kept, total) in [
        ("stdout", s.stdout.len() as u64, cut.stdout_total),
        ("stderr", s.stderr.len() as u64, cut.stderr_total),
    ] {
        if total > kept {
            parts.push(format!("the first {kept} of {total} {name} bytes"));
        }
    }
    (!parts.is_empty()).then(|| {
        format!(
            "the output cap kept {} (raise `sandbox.output_cap` to keep more)",
            parts.join(" and ")
        )
    })
}

/// Every step that ran (or `only`), in the order they started, each under a header.
fn print_recorded(
    record: &RunRecord,
    only: Option<&str>,
    out: &mut OutputPrinter<impl std::io::Write>,
) -> std::io::Result<()> {
    let mut steps: Vec<&StepRecord> = record
        .steps
        .iter()
        .filter(|s| only.is_none_or(|id| id == s.id))
        .filter(|s| s.started_at.is_some() || only.is_some())
        .collect();
    steps.sort_by(|a, b| a.started_at.cmp(&b.started_at));
    if steps.is_empty() {
        return out.note("no step of this run has run yet");
    }
    for s in steps {
        let status = format!(
            "{}{}",
            crate::output::state_label(&s.state),
            s.exit_code
                .filter(|c| *c != 0)
                .map(|c| format!(", exit {c}"))
                .unwrap_or_default()
        );
        let streams = step_streams(s);
        out.header(&s.id, Some(&status))?;
        // On stderr: what `logs` prints on stdout stays exactly the step's output.
        if let Some(w) = crate::output::screening_warning(s) {
            out.flush()?;
            eprintln!("{}", style(w).yellow().bold());
        }
        if streams.is_empty() {
            out.note(if s.started_at.is_some() {
                "(no output)"
            } else {
                "(did not run)"
            })?;
        }
        for (name, text) in streams {
            out.text(&s.id, Some(&status), name, text)?;
        }
        if let Some(note) = cut_note(s) {
            out.note(&format!("({note})"))?;
        }
    }
    Ok(())
}

/// Prints step output: a `==> STEP (state) <==` header when the step changes (unless only one
/// step is shown) and `[stderr]`-style labels when a step wrote more than one stream.
struct OutputPrinter<W: std::io::Write> {
    w: W,
    headers: bool,
    step: Option<String>,
    stream: Option<String>,
    at_line_start: bool,
}

impl<W: std::io::Write> OutputPrinter<W> {
    fn new(w: W, headers: bool) -> Self {
        OutputPrinter {
            w,
            headers,
            step: None,
            stream: None,
            at_line_start: true,
        }
    }

    fn end_line(&mut self) -> std::io::Result<()> {
        if !self.at_line_start {
            writeln!(self.w)?;
            self.at_line_start = true;
        }
        Ok(())
    }

    fn header(&mut self, step: &str, status: Option<&str>) -> std::io::Result<()> {
        self.end_line()?;
        if self.headers {
            if self.step.is_some() {
                writeln!(self.w)?;
            }
            let status = status.map(|s| format!(" ({s})")).unwrap_or_default();
            writeln!(
                self.w,
                "{}",
                style(format!("==> {step}{status} <==")).bold()
            )?;
        }
        self.step = Some(step.to_string());
        self.stream = None;
        Ok(())
    }

    fn text(
        &mut self,
        step: &str,
        status: Option<&str>,
        stream: &str,
        text: &str,
    ) -> std::io::Result<()> {
        if self.step.as_deref() != Some(step) {
            self.header(step, status)?;
        }
        // The first stream of a step is labelled only when it is not the usual one.
        let first = self.stream.is_none();
        if self.stream.as_deref() != Some(stream) && (!first || stream == "stderr") {
            self.end_line()?;
            writeln!(self.w, "{}", style(format!("[{stream}]")).dim())?;
        }
        self.stream = Some(stream.to_string());
        if !text.is_empty() {
            write!(self.w, "{text}")?;
            self.at_line_start = text.ends_with('\n');
        }
        self.w.flush()
    }

    /// End the line and flush, before something else writes to the terminal.
    fn flush(&mut self) -> std::io::Result<()> {
        self.end_line()?;
        self.w.flush()
    }

    fn note(&mut self, text: &str) -> std::io::Result<()> {
        self.end_line()?;
        writeln!(self.w, "{}", style(text).dim())?;
        self.w.flush()
    }
}

/// How often `--follow` looks for what another process stored since.
const FOLLOW_POLL: std::time::Duration = std::time::Duration::from_millis(300);

/// A run's stored events after `after`, each handed to `each`; with `follow`, then the ones
/// stored later (by whichever process runs it) until the run ends or parks.
async fn stream_events(
    mut session: Session,
    run_id: &str,
    mut after: u64,
    follow: bool,
    mut each: impl FnMut(&EventEnvelope) -> std::io::Result<()>,
) -> std::io::Result<()> {
    // Whether the last look found the run stopped: one more read then catches any event
    // stored between that read and the look.
    let mut stopped = false;
    loop {
        let mut events = session
            .events(run_id, after)
            .map_err(std::io::Error::other)?;
        let mut ended = false;
        while let Some(e) = events.next().await {
            after = e.seq;
            each(&e)?;
            ended = match &e.event {
                RunEvent::RunFinished { state, .. } => *state != RunState::AwaitingApproval,
                RunEvent::RunParked { .. } => true,
                RunEvent::RunResumed { .. } | RunEvent::RunRetried { .. } => false,
                _ => ended,
            };
        }
        if !follow || ended || stopped {
            return Ok(());
        }
        let record = session.show(run_id).map_err(std::io::Error::other)?;
        stopped = record.state != RunState::Running;
        if !stopped {
            tokio::time::sleep(FOLLOW_POLL).await;
        }
        session = session
            .reopened_for_reading()
            .map_err(std::io::Error::other)?;
    }
}
