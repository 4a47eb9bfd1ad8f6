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
use secureclaw_engine::events::{EventSink, RunEvent};
use secureclaw_engine::model::{Backend, Tier};
use secureclaw_engine::policy::{ApprovalRequest, Approver, Decision, NoApprover, Policy};
use secureclaw_engine::record::{RunState, RunStore, StepState};
use secureclaw_engine::scheduler::{Engine, RunOptions};
use secureclaw_engine::validate::{self, Validated};
use secureclaw_vault::PassphraseSource;
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
    let file = match (&args.file, &args.instruction) {
        (Some(f), _) => f.clone(),
        (None, Some(instruction)) => {
            let planned = crate::plan_cmd::plan_for_run(
                instruction,
                args.workspace.as_ref(),
                args.state_dir.as_ref(),
                pass,
                !args.json,
            )
            .await?;
            match planned {
                Ok(f) => f,
                Err(code) => return Ok(code),
            }
        }
        (None, None) => anyhow::bail!("give a workflow file or --instruction"),
    };
    let Some(wf) = load(&file) else {
        return Ok(exit::INVALID);
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
    let workspace = match &args.workspace {
        Some(w) => w.clone(),
        None => std::env::current_dir()?,
    };
    if !workspace.exists() {
        std::fs::create_dir_all(&workspace)
            .with_context(|| format!("creating workspace {}", workspace.display()))?;
        eprintln!(
            "{} created empty workspace {}",
            style("note:").dim(),
            workspace.display()
        );
    }
    if !workspace.is_dir() {
        anyhow::bail!("workspace {} is not a directory", workspace.display());
    }
    let state = state_dir(args.state_dir.as_ref(), &workspace);
    if let Err(why) = check_state_layout(&workspace, &state) {
        eprintln!("{} {why}", style("error:").red().bold());
        eprintln!(
            "  {} leave --state-dir out (the default `WORKSPACE/.secureclaw` is hidden from steps), or put it outside the workspace",
            style("hint:").cyan()
        );
        return Ok(exit::INVALID);
    }
    let backend = match args.sandbox {
        Some(BackendArg::Native) => Backend::Native,
        Some(BackendArg::Host) => Backend::Host,
        Some(BackendArg::Docker) => Backend::Docker,
        None => wf.workflow.sandbox.backend.unwrap_or(Backend::Native),
    };
    if backend == Backend::Host && args.forbid_host {
        eprintln!(
            "{} policy forbids the unisolated `host` backend (--forbid-host / SECURECLAW_FORBID_HOST)",
            style("error:").red().bold()
        );
        return Ok(exit::INVALID);
    }
    let sandbox = match secureclaw_sandbox::by_name(backend.as_str()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{} {e}", style("error:").red().bold());
            if backend != Backend::Host {
                eprintln!(
                    "  {} `--sandbox host` runs without isolation, if you accept that",
                    style("hint:").cyan()
                );
            }
            return Ok(exit::INVALID);
        }
    };
    for swept in secureclaw_sandbox::sweep_leftovers() {
        eprintln!(
            "{} cleaned up after an earlier crash: {swept}",
            style("note:").dim()
        );
    }
    let vault = crate::unlock::open(&state, pass, true)?;
    let store = RunStore::new(vault, actor());
    for id in store.mark_interrupted()? {
        eprintln!(
            "{} run {id} was interrupted (the engine stopped during it)",
            style("note:").yellow()
        );
    }
    let mut policy = if args.yes {
        Policy::yes()
    } else {
        Policy::default()
    };
    policy.pre_approved.extend(args.approve.iter().copied());
    policy.allow_host = !args.forbid_host;

    let interactive =
        !args.json && std::io::stdin().is_terminal() && std::io::stderr().is_terminal();
    let display = Display::new(args.json, std::io::stderr().is_terminal());
    let approver: Arc<dyn Approver> = if interactive {
        Arc::new(TtyApprover {
            display: display.clone(),
        })
    } else {
        Arc::new(NoApprover)
    };
    let engine = Engine {
        sandbox,
        approver,
        policy,
        events: Arc::new(secureclaw_engine::inputs::Secrets::new(
            &wf.workflow,
            &inputs,
        ))
        .wrap(display.sink()),
        store,
    };
    let (risk_model, risk_status) = secureclaw_llm::load_risk_model();
    if risk_status.active {
        eprintln!("{}", style(&risk_status).dim());
    }
    let mut base_limits = secureclaw_sandbox::Limits::from_env().map_err(anyhow::Error::msg)?;
    if let Some(text) = &args.disk_limit {
        match secureclaw_engine::units::SizeText(text.clone()).parse() {
            Ok(bytes) if bytes > 0 => base_limits.disk_bytes = bytes,
            _ => {
                eprintln!(
                    "{} --disk-limit / SECURECLAW_DISK_LIMIT {text:?}: expected a positive size such as 1Gi or 500Mi",
                    style("error:").red().bold()
                );
                return Ok(exit::INVALID);
            }
        }
    }
    let home = std::env::var_os("HOME").map(PathBuf::from);
    let mut read_only = Vec::new();
    for entry in &args.read_only {
        match secureclaw_sandbox::grants::resolve(entry, home.as_deref(), Some(&state)) {
            Ok(p) => read_only.push(p),
            Err(e) => {
                eprintln!("{} --read-only: {e}", style("error:").red().bold());
                return Ok(exit::INVALID);
            }
        }
    }
    let opts = RunOptions {
        workspace,
        state_dir: state,
        inputs,
        jobs: args.jobs,
        fail_fast: args.fail_fast,
        base_limits,
        read_only,
        risk_model: risk_model.map(Arc::new),
        risk_model_status: risk_status.to_string(),
    };
    let record = match engine.run(&wf, opts, cancel).await {
        Ok(r) => r,
        Err(secureclaw_engine::scheduler::EngineError::Policy(msg)) => {
            eprintln!("{} {msg}", style("error:").red().bold());
            return Ok(exit::INVALID);
        }
        Err(e) => return Err(e.into()),
    };
    display.finish();
    if !args.json {
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
            RunState::AwaitingApproval => style("stopped: awaiting approval".to_string())
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

/// A path made absolute and free of symlinks and `..`, also when its tail does not exist yet:
/// the longest existing ancestor is canonicalised and the rest appended.
fn canonical_lenient(path: &Path) -> std::io::Result<PathBuf> {
    let absolute = std::path::absolute(path)?;
    let mut existing = absolute.as_path();
    let mut rest: Vec<&std::ffi::OsStr> = Vec::new();
    loop {
        if let Ok(c) = existing.canonicalize() {
            let mut out = c;
            for part in rest.iter().rev() {
                match *part {
                    p if p == ".." => {
                        out.pop();
                    }
                    p if p == "." => {}
                    p => out.push(p),
                }
            }
            return Ok(out);
        }
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name);
                existing = parent;
            }
            _ => return Ok(absolute),
        }
    }
}

/// Where the state dir may be: the default `WORKSPACE/.secureclaw` (hidden from steps) or
/// outside the workspace. Anywhere else inside it, a step could see or change the vault, and a
/// rollback of the step would treat the vault's own files as the step's changes; a workspace
/// inside the state dir would put the vault itself in the steps' reach.
pub fn check_state_layout(workspace: &Path, state: &Path) -> Result<(), String> {
    let ws = canonical_lenient(workspace)
        .map_err(|e| format!("workspace {}: {e}", workspace.display()))?;
    let st = canonical_lenient(state).map_err(|e| format!("state dir {}: {e}", state.display()))?;
    if st == ws.join(secureclaw_engine::workspace::STATE_DIR_NAME) {
        return Ok(());
    }
    if st == ws {
        return Err(format!(
            "the state dir {} is the workspace itself: steps would reach the vault and a rollback could delete it",
            state.display()
        ));
    }
    if st.starts_with(&ws) {
        return Err(format!(
            "the state dir {} is inside the workspace {} (only the default `{}` is hidden from steps)",
            state.display(),
            workspace.display(),
            secureclaw_engine::workspace::STATE_DIR_NAME
        ));
    }
    if ws.starts_with(&st) {
        return Err(format!(
            "the workspace {} is inside the state dir {}: steps would reach the vault",
            workspace.display(),
            state.display()
        ));
    }
    Ok(())
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

/// Who the ledger says acted.
pub fn actor() -> String {
    format!(
        "cli:{}",
        std::env::var("USER").unwrap_or_else(|_| "unknown".into())
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
            if watcher.drain_after_run() {
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
struct Display {
    inner: Arc<DisplayInner>,
}

struct DisplayInner {
    json: bool,
    multi: Option<MultiProgress>,
    bars: Mutex<HashMap<String, ProgressBar>>,
}

impl Display {
    fn new(json: bool, tty: bool) -> Self {
        Display {
            inner: Arc::new(DisplayInner {
                json,
                multi: (!json && tty).then(MultiProgress::new),
                bars: Mutex::new(HashMap::new()),
            }),
        }
    }

    fn sink(&self) -> EventSink {
        let me = self.clone();
        Arc::new(move |ev: &RunEvent| me.on_event(ev))
    }

    fn line(&self, text: String) {
        match &self.inner.multi {
            Some(m) => {
                let _ = m.println(text);
            }
            None => eprintln!("{text}"),
        }
    }

    fn on_event(&self, ev: &RunEvent) {
        if self.inner.json {
            if let Ok(s) = serde_json::to_string(ev) {
                println!("{s}");
            }
            return;
        }
        match ev {
            RunEvent::RunStarted {
                run_id,
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
            RunEvent::ApprovalNeeded { .. } | RunEvent::RunFinished { .. } => {}
        }
    }

    fn finish(&self) {
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
