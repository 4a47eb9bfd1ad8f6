//! `run` and `watch`: build the engine from flags, show progress, ask for approvals.

use std::collections::HashMap;
use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use console::style;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use secureclaw_engine::events::{EventEnvelope, RunEvent};
use secureclaw_engine::model::{Backend, Tier};
use secureclaw_engine::policy::{ApprovalRequest, Approver, Decision};
use secureclaw_engine::record::{RunState, StepState};
use secureclaw_engine::scheduler::EngineError;
use secureclaw_engine::session::{
    Access, PassphraseSource, RunHandle, RunRequest, RunSettings, SessionError, check_state_layout,
};
use secureclaw_engine::validate::{self, Validated};
use tokio_util::sync::CancellationToken;

use crate::{exit, output, state_dir};

#[derive(Args, Clone)]
pub struct RunArgs {
    /// The workflow file.
    #[arg(required_unless_present = "instruction")]
    pub file: Option<PathBuf>,
    /// Plan the workflow from this instruction with the LLM planner, show it, then run it.
    #[arg(long, conflicts_with = "file")]
    pub instruction: Option<String>,
    /// Set an input: `--input days=7` (repeatable). Values are parsed to the declared type.
    /// `NAME=@env:VAR` takes the value from the environment variable VAR, `NAME=@-` from stdin
    /// (keep secrets out of `ps`); `NAME=@@x` is the literal `@x`.
    #[arg(long = "input", short = 'i', value_name = "NAME=VALUE")]
    pub inputs: Vec<String>,
    /// Read inputs from a YAML or JSON mapping of name to value (`-`: stdin); `--input` wins.
    #[arg(long, value_name = "FILE")]
    pub input_file: Option<PathBuf>,
    /// Directory the steps work in [default: current directory].
    #[arg(long, short = 'w')]
    pub workspace: Option<PathBuf>,
    /// Where run records live [default: WORKSPACE/.secureclaw, hidden from steps].
    #[arg(long, env = "SECURECLAW_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// Sandbox backend, overriding the file's `sandbox.backend` [default: native].
    /// `host` runs steps with NO isolation and must be chosen explicitly.
    #[arg(long, value_enum)]
    pub sandbox: Option<BackendArg>,
    /// Pre-approve these tiers for the whole run (comma-separated): destructive, network_egress.
    #[arg(long, value_delimiter = ',', value_name = "TIERS")]
    pub approve: Vec<Tier>,
    /// Pre-approve everything, including steps marked `approve: true`.
    #[arg(long, short = 'y')]
    pub yes: bool,
    /// Refuse the unisolated `host` backend even if the file asks for it.
    #[arg(long, env = "SECURECLAW_FORBID_HOST")]
    pub forbid_host: bool,
    /// Maximum steps running at once (writing steps never overlap regardless).
    #[arg(long, short = 'j', default_value_t = 4)]
    pub jobs: usize,
    /// Cancel everything as soon as one step fails.
    #[arg(long)]
    pub fail_fast: bool,
    /// Print events as JSON lines instead of the progress display.
    #[arg(long)]
    pub json: bool,
    /// Write budget of every isolated step [default: 1Gi]: the most a workflow's
    /// `sandbox.disk` may ask for.
    #[arg(long, env = "SECURECLAW_DISK_LIMIT", value_name = "SIZE")]
    pub disk_limit: Option<String>,
    /// Let every isolated step read this host path, mounted read-only at the same path
    /// (repeatable; absolute or `~/...`): toolchains such as `~/.cargo` and `~/.rustup`.
    #[arg(long = "read-only", value_name = "PATH")]
    pub read_only: Vec<String>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum BackendArg {
    Native,
    Host,
    Docker,
}

#[derive(Args)]
pub struct WatchArgs {
    #[command(flatten)]
    pub run: RunArgs,
    /// Also re-run when files matching this glob (relative to the workspace) change (repeatable).
    #[arg(long = "path", short = 'p', value_name = "GLOB")]
    pub paths: Vec<String>,
    /// Quiet period before a burst of changes triggers a run.
    #[arg(long, default_value = "300ms", value_parser = parse_duration)]
    pub debounce: Duration,
    /// Stop after this many runs (for scripts and tests).
    #[arg(long, hide = true)]
    pub max_runs: Option<usize>,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    secureclaw_engine::units::parse_duration(s).map_err(|e| e.to_string())
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

pub fn run(args: RunArgs, pass: &PassphraseSource) -> anyhow::Result<u8> {
    let rt = runtime()?;
    rt.block_on(async move {
        let cancel = CancellationToken::new();
        let c = cancel.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!(
                    "\n{} cancelling: stopping running steps…",
                    style("^C").yellow()
                );
                c.cancel();
            }
        });
        run_once(&args, pass, cancel).await
    })
}

fn load(file: &Path) -> Option<Validated> {
    match validate::validate_file(file) {
        Ok(v) => Some(v),
        Err(diags) => {
            for d in diags.iter() {
                output::print_diagnostic(d);
            }
            eprintln!(
                "{}",
                style(format!("{} error(s): nothing was run", diags.len()))
                    .red()
                    .bold()
            );
            None
        }
    }
}

async fn run_once(
    args: &RunArgs,
    pass: &PassphraseSource,
    cancel: CancellationToken,
) -> anyhow::Result<u8> {
    let workspace = match &args.workspace {
        Some(w) => w.clone(),
        None => std::env::current_dir()?,
    };
    let state = state_dir(args.state_dir.as_ref(), &workspace);
    // Checked before anything is created: a vault must never land where steps can reach it.
    if let Err(why) = check_state_layout(&workspace, &state) {
        eprintln!("{} {why}", style("error:").red().bold());
        eprintln!(
            "  {} leave --state-dir out (the default `WORKSPACE/.secureclaw` is hidden from steps), or put it outside the workspace",
            style("hint:").cyan()
        );
        return Ok(exit::INVALID);
    }
    let (wf, session) = match (&args.file, &args.instruction) {
        (Some(f), _) => {
            let Some(wf) = load(f) else {
                return Ok(exit::INVALID);
            };
            (wf, None)
        }
        (None, Some(instruction)) => {
            let session = crate::state::open(&state, pass, Access::Write { create: true })?;
            match crate::plan_cmd::plan_for_run(&session, instruction, !args.json).await? {
                Ok(wf) => (wf, Some(session)),
                Err(code) => return Ok(code),
            }
        }
        (None, None) => anyhow::bail!("give a workflow file or --instruction"),
    };
    let inputs = match resolve_inputs(&wf.workflow, args) {
        Ok(i) => i,
        Err(errs) => {
            for e in errs {
                eprintln!("{} {e}", style("error:").red().bold());
            }
            return Ok(exit::INVALID);
        }
    };
    let session = match session {
        Some(s) => s,
        None => crate::state::open(&state, pass, Access::Write { create: true })?,
    };
    let interactive =
        !args.json && std::io::stdin().is_terminal() && std::io::stderr().is_terminal();
    let display = Display::new(args.json, std::io::stderr().is_terminal());
    let approver: Option<Arc<dyn Approver>> = interactive.then(|| {
        Arc::new(TtyApprover {
            display: display.clone(),
        }) as Arc<dyn Approver>
    });
    let request = RunRequest {
        workflow: wf,
        inputs,
        workspace,
        settings: settings(args),
        approver,
    };
    let handle = match session.submit(request) {
        Ok(h) => h,
        Err(e) if e.is_invalid_request() => {
            crate::state::print_error(&e);
            return Ok(exit::INVALID);
        }
        Err(e) => return Err(e.into()),
    };
    crate::state::print_notices(&session);
    follow(handle, display, cancel, args.json).await
}

/// The run options the flags give.
fn settings(args: &RunArgs) -> RunSettings {
    RunSettings {
        backend: args.sandbox.map(|b| match b {
            BackendArg::Native => Backend::Native,
            BackendArg::Host => Backend::Host,
            BackendArg::Docker => Backend::Docker,
        }),
        approve: args.approve.clone(),
        yes: args.yes,
        forbid_host: args.forbid_host,
        jobs: args.jobs,
        fail_fast: args.fail_fast,
        disk_limit: args.disk_limit.clone(),
        read_only: args.read_only.clone(),
        started_by: None,
    }
}

/// Show a run's events as they come, then its outcome; the exit code says how it ended.
pub async fn follow(
    handle: RunHandle,
    display: Display,
    cancel: CancellationToken,
    json: bool,
) -> anyhow::Result<u8> {
    let mut events = handle.events(0);
    let shown = display.clone();
    let printer = tokio::spawn(async move {
        while let Some(ev) = events.next().await {
            shown.on_event(&ev);
        }
    });
    let stop = handle.cancel_token();
    let relay = tokio::spawn(async move {
        cancel.cancelled().await;
        stop.cancel();
    });
    let record = match handle.wait().await {
        Ok(r) => r,
        Err(SessionError::Engine(EngineError::Policy(msg))) => {
            relay.abort();
            let _ = printer.await;
            display.finish();
            eprintln!("{} {msg}", style("error:").red().bold());
            return Ok(exit::INVALID);
        }
        Err(e) => return Err(e.into()),
    };
    relay.abort();
    let _ = printer.await;
    display.finish();
    if !json {
        let failed: Vec<_> = record
            .steps
            .iter()
            .filter(|s| s.state == StepState::Failed)
            .collect();
        for s in &failed {
            eprintln!(
                "{} step `{}` failed: {}",
                style("✗").red(),
                s.id,
                s.reason.as_deref().unwrap_or("unknown reason")
            );
            let tail: Vec<&str> = s.stderr.lines().rev().take(10).collect();
            for line in tail.into_iter().rev() {
                eprintln!("    {}", style(line).dim());
            }
        }
        let summary = match record.state {
            RunState::Succeeded => style("succeeded".to_string()).green().bold(),
            RunState::AwaitingApproval => style("stopped: awaiting approval (parked)".to_string())
                .yellow()
                .bold(),
            _ => style(label(&record.state)).red().bold(),
        };
        eprintln!(
            "run {} {summary}  (secureclaw show {})",
            record.run_id, record.run_id
        );
        if let Some(m) = &record.message {
            eprintln!("  {m}");
        }
    }
    Ok(match record.state {
        RunState::Succeeded => exit::OK,
        RunState::AwaitingApproval => exit::NEEDS_APPROVAL,
        RunState::Cancelled => exit::CANCELLED,
        _ => exit::FAILED,
    })
}

fn label<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// The run's inputs from `--input-file`, `--input` (with `@-` and `@env:`) and the defaults.
fn resolve_inputs(
    wf: &secureclaw_engine::model::Workflow,
    args: &RunArgs,
) -> Result<
    std::collections::BTreeMap<String, serde_json::Value>,
    Vec<secureclaw_engine::inputs::InputError>,
> {
    use secureclaw_engine::inputs::{InputError, InputSources};
    use std::io::Read as _;
    let read_stdin = || {
        let mut text = String::new();
        std::io::stdin().read_to_string(&mut text).map(|_| text)
    };
    let from_stdin = args.input_file.as_deref() == Some(Path::new("-"));
    let file = match &args.input_file {
        None => None,
        Some(_) if from_stdin => {
            Some(read_stdin().map_err(|e| vec![InputError::File(format!("reading stdin: {e}"))])?)
        }
        Some(path) => Some(
            std::fs::read_to_string(path)
                .map_err(|e| vec![InputError::File(format!("{}: {e}", path.display()))])?,
        ),
    };
    let mut stdin = move || {
        if from_stdin {
            Err(std::io::Error::other("stdin already feeds --input-file -"))
        } else {
            read_stdin()
        }
    };
    secureclaw_engine::inputs::resolve_sources(
        wf,
        InputSources {
            file,
            pairs: &args.inputs,
            stdin: Some(&mut stdin),
        },
    )
}

pub fn watch(args: WatchArgs, pass: &PassphraseSource) -> anyhow::Result<u8> {
    let rt = runtime()?;
    rt.block_on(async move {
        let workspace = match &args.run.workspace {
            Some(w) => w.clone(),
            None => std::env::current_dir()?,
        };
        let state = state_dir(args.run.state_dir.as_ref(), &workspace);
        check_state_layout(&workspace, &state).map_err(anyhow::Error::msg)?;
        let Some(file) = args.run.file.clone() else {
            anyhow::bail!("watch needs a workflow file (plan one first with `secureclaw plan -o`)");
        };
        let mut watcher = secureclaw_engine::watch::ChangeWatcher::new(
            &file,
            &workspace,
            &args.paths,
            vec![state],
        )?;
        let mut runs = 0usize;
        let mut trigger = "start".to_string();
        loop {
            let cancel = CancellationToken::new();
            eprintln!(
                "{} [{}] running {} ({trigger})",
                style("watch").cyan().bold(),
                runs + 1,
                file.display()
            );
            let run = run_once(&args.run, pass, cancel.clone());
            tokio::pin!(run);
            let last = tokio::select! {
                r = &mut run => r?,
                _ = tokio::signal::ctrl_c() => {
                    cancel.cancel();
                    let _ = run.await;
                    return Ok(exit::CANCELLED);
                }
            };
            runs += 1;
            if args.max_runs.is_some_and(|m| runs >= m) {
                return Ok(last);
            }
            if watcher.drain_after_run().await {
                trigger = "the workflow file changed during the last run".into();
                continue;
            }
            eprintln!(
                "{} waiting for changes (Ctrl-C to stop)",
                style("watch").cyan().bold()
            );
            let batch = tokio::select! {
                b = watcher.next_batch(args.debounce) => b,
                _ = tokio::signal::ctrl_c() => return Ok(last),
            };
            let Some(batch) = batch else { return Ok(last) };
            let names: Vec<String> = batch
                .iter()
                .take(3)
                .map(|p| p.display().to_string())
                .collect();
            trigger = format!(
                "changed: {}{}",
                names.join(", "),
                if batch.len() > 3 {
                    format!(" and {} more", batch.len() - 3)
                } else {
                    String::new()
                }
            );
        }
    })
}

/// Progress: a live line per running step on a terminal, plain lines otherwise, JSON on request.
#[derive(Clone)]
pub struct Display {
    inner: Arc<DisplayInner>,
}

struct DisplayInner {
    json: bool,
    multi: Option<MultiProgress>,
    bars: Mutex<HashMap<String, ProgressBar>>,
}

impl Display {
    pub fn new(json: bool, tty: bool) -> Self {
        Display {
            inner: Arc::new(DisplayInner {
                json,
                multi: (!json && tty).then(MultiProgress::new),
                bars: Mutex::new(HashMap::new()),
            }),
        }
    }

    fn line(&self, text: String) {
        match &self.inner.multi {
            Some(m) => {
                let _ = m.println(text);
            }
            None => eprintln!("{text}"),
        }
    }

    fn on_event(&self, env: &EventEnvelope) {
        if self.inner.json {
            if let Ok(s) = serde_json::to_string(env) {
                println!("{s}");
            }
            return;
        }
        let run_id = &env.run_id;
        match &env.event {
            RunEvent::RunStarted {
                workflow,
                steps,
                backend,
                isolated,
            } => {
                self.line(format!(
                    "{} {workflow}: {steps} steps, run {run_id}, sandbox {backend}{}",
                    style("▶").cyan(),
                    if *isolated { "" } else { " (unisolated)" }
                ));
            }
            RunEvent::Warning { message } => {
                self.line(format!("{} {message}", style("warning:").yellow().bold()))
            }
            RunEvent::StepStarted {
                step,
                attempt,
                tier,
                summary,
            } => {
                let text = format!("{step} [{tier}] {}", first_line(summary));
                match &self.inner.multi {
                    Some(m) => {
                        let bar = m.add(ProgressBar::new_spinner());
                        bar.set_style(
                            ProgressStyle::with_template("{spinner:.cyan} {msg} {elapsed:.dim}")
                                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                        );
                        bar.set_message(text);
                        bar.enable_steady_tick(Duration::from_millis(100));
                        if let Ok(mut b) = self.inner.bars.lock() {
                            b.insert(step.clone(), bar);
                        }
                    }
                    None => eprintln!(
                        "  started  {text}{}",
                        if *attempt > 1 {
                            format!(" (attempt {attempt})")
                        } else {
                            String::new()
                        }
                    ),
                }
            }
            RunEvent::StepRetrying {
                step,
                attempt,
                delay_ms,
                reason,
            } => {
                self.line(format!(
                    "  {} {step}: {reason}; attempt {attempt} in {delay_ms} ms",
                    style("retry").yellow()
                ));
            }
            RunEvent::StepFinished {
                step,
                state,
                duration_ms,
                exit_code,
                reason,
            } => {
                if let Ok(mut b) = self.inner.bars.lock()
                    && let Some(bar) = b.remove(step)
                {
                    bar.finish_and_clear();
                }
                let mark = match state {
                    StepState::Succeeded => style("✓").green(),
                    StepState::Skipped => style("-").dim(),
                    StepState::Cancelled => style("⊘").yellow(),
                    _ => style("✗").red(),
                };
                let extra = match (exit_code, reason) {
                    (_, Some(r)) => format!("  {}", style(r).dim()),
                    (Some(c), None) if *c != 0 => format!("  exit {c}"),
                    _ => String::new(),
                };
                self.line(format!(
                    "  {mark} {step}  {}  {duration_ms} ms{extra}",
                    label(state)
                ));
            }
            RunEvent::RunResumed { by } => self.line(format!(
                "{} run {run_id} resumed by {by}",
                style("▶").cyan()
            )),
            RunEvent::ApprovalDecided { step, approved, by } if !approved => {
                self.line(format!("  {} {step}: denied by {by}", style("✗").red()))
            }
            RunEvent::RunParked { steps } => self.line(format!(
                "{} parked at {}: `secureclaw approve {run_id}` then `secureclaw resume {run_id}`",
                style("⏸").yellow(),
                steps.join(", ")
            )),
            RunEvent::Output { step, stream, text } if stream == "trace" => {
                self.line(format!("  {} {step}: {text}", style("trace").dim()))
            }
            RunEvent::ApprovalNeeded { .. }
            | RunEvent::ApprovalDecided { .. }
            | RunEvent::Output { .. }
            | RunEvent::Egress { .. }
            | RunEvent::RunFinished { .. }
            | RunEvent::RevertStarted { .. }
            | RunEvent::RevertStep { .. }
            | RunEvent::RevertFinished { .. } => {}
        }
    }

    pub fn finish(&self) {
        if let Ok(mut b) = self.inner.bars.lock() {
            for (_, bar) in b.drain() {
                bar.finish_and_clear();
            }
        }
    }
}

fn first_line(s: &str) -> String {
    let line = s.lines().next().unwrap_or_default();
    let short: String = line.chars().take(80).collect();
    if short.len() < s.len() {
        format!("{short}…")
    } else {
        short
    }
}

/// Asks on the terminal, one approval at a time, with the progress display paused.
struct TtyApprover {
    display: Display,
}

#[async_trait::async_trait]
impl Approver for TtyApprover {
    async fn decide(&self, req: &ApprovalRequest) -> Decision {
        let req = req.clone();
        let display = self.display.clone();
        let answer = tokio::task::spawn_blocking(move || {
            let ask = || {
                eprintln!();
                eprintln!(
                    "{} step `{}` needs approval",
                    style("?").yellow().bold(),
                    req.step
                );
                eprintln!(
                    "  tier:   {} (rule `{}`)",
                    style(req.tier).yellow().bold(),
                    req.rule
                );
                eprintln!("  why:    {}", req.reason);
                if !req.network.is_empty() {
                    eprintln!("  network: {}", req.network.join(", "));
                }
                eprintln!("  action:");
                for line in req.summary.lines() {
                    eprintln!("    {line}");
                }
                eprint!("  run it? [y/N] ");
                let mut line = String::new();
                let _ = std::io::stdin().read_line(&mut line);
                matches!(line.trim().to_ascii_lowercase().as_str(), "y" | "yes")
            };
            match &display.inner.multi {
                Some(m) => m.suspend(ask),
                None => ask(),
            }
        })
        .await
        .unwrap_or(false);
        let who = std::env::var("USER").unwrap_or_else(|_| "terminal user".into());
        if answer {
            Decision::Approved {
                by: format!("{who} (terminal)"),
            }
        } else {
            Decision::Denied {
                by: format!("{who} (terminal)"),
            }
        }
    }
}
