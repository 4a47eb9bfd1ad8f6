//! `run` and `watch`: build the engine from flags, show progress, ask for approvals.

use std::collections::{BTreeMap, HashMap};
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
    Access, PassphraseSource, RunHandle, RunRequest, RunSettings, Session, SessionError,
    check_state_layout,
};
use secureclaw_engine::validate::{self, Validated};
use tokio_util::sync::CancellationToken;

use crate::{exit, output, state_dir};

#[derive(Args, Clone)]
pub struct RunArgs {
    /// The workflow file. Inside a git work tree, the run records its repository, commit,
    /// path, blob and whether the tree had uncommitted changes (`show`, `rerun`).
    #[arg(required_unless_present = "instruction")]
    pub file: Option<PathBuf>,
    /// Plan the workflow from this instruction with the LLM planner, show it, then run it.
    #[arg(long, conflicts_with = "file")]
    pub instruction: Option<String>,
    #[command(flatten)]
    pub opts: RunOptions,
}

/// How to run a workflow, whichever way it was found (`run`, `watch`, `rerun`).
#[derive(Args, Clone)]
pub struct RunOptions {
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
    /// `host` runs steps with NO isolation and must be chosen explicitly; `gvisor` runs each
    /// step under gVisor's user-space kernel (`runsc`, root engine) for the least trusted code.
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
    #[command(flatten)]
    pub pass: crate::vault_cmds::PassphraseArgs,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum BackendArg {
    Native,
    Host,
    Docker,
    Gvisor,
}

/// `watch` takes a workflow file only: a planned workflow is saved first (`plan -o`), so that
/// what is re-run is a file that can be read, edited and watched.
#[derive(Args)]
#[command(after_help = WATCH_AFTER_HELP)]
pub struct WatchArgs {
    /// The workflow file. Saving it always starts a run.
    pub file: PathBuf,
    #[command(flatten)]
    pub opts: RunOptions,
    /// Watch files matching this glob (relative to the workspace) instead of the workflow's
    /// declared inputs (repeatable).
    #[arg(long = "path", short = 'p', value_name = "GLOB")]
    pub paths: Vec<String>,
    /// Quiet period before a burst of changes triggers a run.
    #[arg(long, default_value = "50ms", value_parser = parse_duration)]
    pub debounce: Duration,
    /// Stop after this many runs (for scripts and tests).
    #[arg(long, hide = true)]
    pub max_runs: Option<usize>,
}

const WATCH_AFTER_HELP: &str = "\
What is watched, besides the workflow file: the paths given with --path, or else the inputs the
workflow declares (its `on.watch` globs, the paths and globs of its `read` steps, the files its
`patch` steps patch). A workflow with a shell step and no `on.watch`, or a templated path, is
watched across the whole workspace. The list is printed at start.

Never a change: paths .gitignore or .ignore ignore, .git, the state dir, editor swap and backup
files (.x.swp, x~, 4913, .#x, #x#, x___jb_tmp___, ...), and the run's own writes.

Ctrl-C cancels a run in progress (its changes are rolled back, as with `run`) and exits 130.

To watch a workflow planned from an instruction, save it first:
  secureclaw plan \"...\" -o workflow.yaml && secureclaw watch workflow.yaml";

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
    cancellable(|cancel| async move { run_once(&args, pass, cancel).await })
}

/// Run `body` on a fresh runtime; Ctrl-C cancels the token it is given.
pub fn cancellable<F, Fut>(body: F) -> anyhow::Result<u8>
where
    F: FnOnce(CancellationToken) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<u8>>,
{
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
        body(cancel).await
    })
}

fn load(file: &Path) -> Option<Validated> {
    match validate::validate_file(file) {
        Ok(v) => Some(v),
        Err(diags) => {
            let summary = format!("{} error(s): nothing was run", diags.len());
            if output::json_errors() {
                output::report_error_with(
                    "invalid_workflow",
                    &summary,
                    None,
                    Some(("diagnostics", serde_json::json!(diags.0))),
                );
                return None;
            }
            for d in diags.iter() {
                output::print_diagnostic(d);
            }
            eprintln!("{}", style(summary).red().bold());
            None
        }
    }
}

async fn run_once(
    args: &RunArgs,
    pass: &PassphraseSource,
    cancel: CancellationToken,
) -> anyhow::Result<u8> {
    let workspace = workspace_of(&args.opts)?;
    let state = state_dir(args.opts.state_dir.as_ref(), &workspace);
    if !state_layout_ok(&workspace, &state) {
        return Ok(exit::INVALID);
    }
    let (workflow, session) = match (&args.file, &args.instruction) {
        (Some(f), _) => {
            let Some(mut wf) = load(f) else {
                return Ok(exit::INVALID);
            };
            wf.provenance = provenance(f, &wf)
                .with_context(|| format!("reading the git provenance of {}", f.display()))?;
            (wf, None)
        }
        (None, Some(instruction)) => {
            let session = crate::state::open(&state, pass, Access::Write { create: true })?;
            match crate::plan_cmd::plan_for_run(&session, instruction, !args.opts.json).await? {
                Ok(wf) => (wf, Some(session)),
                Err(code) => return Ok(code),
            }
        }
        (None, None) => anyhow::bail!("give a workflow file or --instruction"),
    };
    let start = Start {
        workflow,
        recorded_inputs: BTreeMap::new(),
        workspace,
        state,
        started_by: None,
    };
    start_run(start, &args.opts, pass, session, cancel).await
}

/// Where `file` comes from in git, if it is in a work tree. Dirty when the work tree has
/// uncommitted changes, and also whenever the text validated is not exactly the committed blob
/// (git's status was read after the text, or checkout filters such as `core.autocrlf` changed
/// it): a re-run of the commit would not run the same text.
fn provenance(
    file: &Path,
    wf: &Validated,
) -> anyhow::Result<Option<secureclaw_engine::record::Provenance>> {
    use secureclaw_engine::git;
    let Some(mut p) = git::provenance_of_file(file)? else {
        return Ok(None);
    };
    let committed = git::read_blob(Path::new(&p.repository), &p.commit, &p.path)?;
    if sha256_hex(&committed.bytes) != wf.sha256 {
        p.dirty = true;
    }
    Ok(Some(p))
}

/// SHA-256 as a workflow's identity is written: lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// The workspace the flags name, or the current directory.
pub fn workspace_of(opts: &RunOptions) -> anyhow::Result<PathBuf> {
    match &opts.workspace {
        Some(w) => Ok(w.clone()),
        None => Ok(std::env::current_dir()?),
    }
}

/// Checked before anything is created: a vault must never land where steps can reach it.
pub fn state_layout_ok(workspace: &Path, state: &Path) -> bool {
    match check_state_layout(workspace, state) {
        Ok(()) => true,
        Err(why) => {
            output::report_error(
                "invalid",
                &why.to_string(),
                Some(
                    "leave --state-dir out (the default `WORKSPACE/.secureclaw` is hidden from steps), or put it outside the workspace",
                ),
            );
            false
        }
    }
}

/// A validated workflow ready to run, and where.
pub struct Start {
    pub workflow: Validated,
    /// Values used where no `--input`/`--input-file` gives one, before the file's defaults
    /// (a re-run's recorded inputs).
    pub recorded_inputs: BTreeMap<String, serde_json::Value>,
    pub workspace: PathBuf,
    pub state: PathBuf,
    pub started_by: Option<String>,
}

/// Resolve the inputs, submit the run and follow it to its end: the exit code says how it
/// ended. `session` is an already open one on `start.state`, if the caller has it.
pub async fn start_run(
    start: Start,
    opts: &RunOptions,
    pass: &PassphraseSource,
    session: Option<Session>,
    cancel: CancellationToken,
) -> anyhow::Result<u8> {
    let with_recorded = with_defaults(&start.workflow.workflow, &start.recorded_inputs);
    let inputs = match resolve_inputs(&with_recorded, opts) {
        Ok(i) => i,
        Err(errs) => {
            let messages: Vec<String> = errs.iter().map(ToString::to_string).collect();
            if output::json_errors() {
                output::report_error("invalid_input", &messages.join("; "), None);
            } else {
                for m in &messages {
                    output::report_error("invalid_input", m, None);
                }
            }
            return Ok(exit::INVALID);
        }
    };
    let session = match session {
        Some(s) => s,
        None => crate::state::open(&start.state, pass, Access::Write { create: true })?,
    };
    if let Some(p) = &start.workflow.provenance
        && !opts.json
    {
        eprintln!(
            "{} {} at {} in {}{}",
            style("git").dim(),
            p.path,
            &p.commit[..p.commit.len().min(12)],
            p.repository,
            if p.dirty {
                " (uncommitted changes)"
            } else {
                ""
            }
        );
    }
    let interactive =
        !opts.json && std::io::stdin().is_terminal() && std::io::stderr().is_terminal();
    let display = Display::new(
        opts.json,
        std::io::stderr().is_terminal(),
        crate::state::locate_flags(&start.state, &start.workspace),
    );
    let approver: Option<Arc<dyn Approver>> = interactive.then(|| {
        Arc::new(TtyApprover {
            display: display.clone(),
        }) as Arc<dyn Approver>
    });
    let request = RunRequest {
        workflow: start.workflow,
        inputs,
        workspace: start.workspace,
        settings: RunSettings {
            started_by: start.started_by,
            ..settings(opts)
        },
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
    follow(handle, display, cancel, opts.json, session.state_dir()).await
}

/// The workflow with `values` as the defaults of the inputs they name (values of the wrong
/// type are left out: the file's own default, or the requirement, stays).
fn with_defaults(
    wf: &secureclaw_engine::model::Workflow,
    values: &BTreeMap<String, serde_json::Value>,
) -> secureclaw_engine::model::Workflow {
    let mut wf = wf.clone();
    for (name, spec) in wf.inputs.iter_mut() {
        if let Some(v) = values.get(name)
            && spec.kind.accepts(v)
        {
            spec.default = Some(v.clone());
        }
    }
    wf
}

/// The run options the flags give.
fn settings(args: &RunOptions) -> RunSettings {
    RunSettings {
        backend: args.sandbox.map(|b| match b {
            BackendArg::Native => Backend::Native,
            BackendArg::Host => Backend::Host,
            BackendArg::Docker => Backend::Docker,
            BackendArg::Gvisor => Backend::Gvisor,
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
/// `state` is the state dir the run is recorded in (for the follow-up commands printed).
pub async fn follow(
    handle: RunHandle,
    display: Display,
    cancel: CancellationToken,
    json: bool,
    state: &Path,
) -> anyhow::Result<u8> {
    follow_after(handle, display, cancel, json, 0, state).await
}

/// [`follow`] from the events after `after`: a run that goes on again (a retry) shows what
/// happens now, not its earlier stretch, which ended with its own `run_finished`.
pub async fn follow_after(
    handle: RunHandle,
    display: Display,
    cancel: CancellationToken,
    json: bool,
    after: u64,
    state: &Path,
) -> anyhow::Result<u8> {
    let mut events = handle.events(after);
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
            output::report_error("policy", &msg, None);
            return Ok(exit::INVALID);
        }
        Err(e) => return Err(e.into()),
    };
    relay.abort();
    let _ = printer.await;
    display.finish();
    if !json {
        // What a follow-up command typed here needs to find this run.
        let run = crate::state::run_ref(state, &record);
        let failed: Vec<_> = record
            .steps
            .iter()
            .filter(|s| s.state == StepState::Failed)
            .collect();
        for s in &failed {
            // A failure `continue_on_error` let through did not fail the run: not marked as one.
            let mark = if s.continued {
                style("!").yellow()
            } else {
                style("✗").red()
            };
            eprintln!(
                "{mark} step `{}` failed: {}",
                s.id,
                s.reason.as_deref().unwrap_or("unknown reason")
            );
            print_output_tail(&run, s);
        }
        let summary = match record.state {
            RunState::Succeeded => style("succeeded".to_string()).green().bold(),
            RunState::AwaitingApproval => style("stopped: awaiting approval (parked)".to_string())
                .yellow()
                .bold(),
            _ => style(crate::output::state_label(&record.state))
                .red()
                .bold(),
        };
        eprintln!("run {} {summary}  (secureclaw show {run})", record.run_id);
        if let Some(m) = &record.message {
            eprintln!("  {m}");
        }
        if record.state == RunState::Failed && !failed.is_empty() {
            eprintln!(
                "  {} fix what failed, then `secureclaw retry {run}` goes on from the failed step",
                style("next:").cyan(),
            );
        }
    }
    Ok(match record.state {
        RunState::Succeeded => exit::OK,
        RunState::AwaitingApproval => exit::NEEDS_APPROVAL,
        RunState::Cancelled => exit::CANCELLED,
        _ => exit::FAILED,
    })
}

/// Lines of a failed step's output shown under its failure line; `logs` has the rest.
const FAILURE_TAIL_LINES: usize = 20;

/// The last lines of a failed step's output, each stream it wrote under its name, with how
/// many earlier lines were left out and the command that shows them. `run` is the run id with
/// the flags that find it.
fn print_output_tail(run: &str, s: &secureclaw_engine::record::StepRecord) {
    let streams = crate::park_cmd::step_streams(s);
    if streams.is_empty() {
        return;
    }
    let lines: Vec<Vec<&str>> = streams.iter().map(|(_, t)| t.lines().collect()).collect();
    // The budget goes to the last stream first (stderr: usually where the failure is said),
    // never less than an even share for each stream, and what a stream leaves to the others.
    let mut shown = vec![0; lines.len()];
    let mut left = FAILURE_TAIL_LINES;
    for i in (0..lines.len()).rev() {
        let needed_before: usize = lines[..i].iter().map(Vec::len).sum();
        let allowed = left.saturating_sub(needed_before).max(left / (i + 1));
        shown[i] = lines[i].len().min(allowed);
        left -= shown[i];
    }
    for (((name, _), lines), shown) in streams.iter().zip(&lines).zip(shown) {
        let earlier = lines.len() - shown;
        eprintln!("    {}", style(format!("{name}:")).dim());
        if earlier > 0 {
            eprintln!(
                "    {}",
                style(format!(
                    "… {earlier} earlier line{} (secureclaw logs {run} --step {})",
                    if earlier == 1 { "" } else { "s" },
                    s.id
                ))
                .dim()
            );
        }
        for line in &lines[earlier..] {
            eprintln!("    | {line}");
        }
    }
    if let Some(note) = crate::park_cmd::cut_note(s) {
        eprintln!("    {}", style(format!("({note})")).dim());
    }
}

/// The run's inputs from `--input-file`, `--input` (with `@-` and `@env:`) and the defaults.
fn resolve_inputs(
    wf: &secureclaw_engine::model::Workflow,
    args: &RunOptions,
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
        // In place before anything else: from here on Ctrl-C is answered with 130, whether a
        // run is going or the watch is idle, never with the signal's default death.
        let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
            .context("handling Ctrl-C")?;
        let interrupted = CancellationToken::new();
        let on_sigint = interrupted.clone();
        tokio::spawn(async move {
            if sigint.recv().await.is_some() {
                on_sigint.cancel();
            }
        });
        watch_until_interrupted(&args, pass, &interrupted).await
    })
}

async fn watch_until_interrupted(
    args: &WatchArgs,
    pass: &PassphraseSource,
    interrupted: &CancellationToken,
) -> anyhow::Result<u8> {
    use secureclaw_engine::watch::ChangeWatcher;
    let heading = || style("watch").cyan().bold();
    let workspace = workspace_of(&args.opts)?;
    let state = state_dir(args.opts.state_dir.as_ref(), &workspace);
    if !state_layout_ok(&workspace, &state) {
        return Ok(exit::INVALID);
    }
    let file = &args.file;
    let mut workflow = load(file);
    let mut scope = watch_scope(args, workflow.as_ref());
    let mut watcher = ChangeWatcher::new(file, &workspace, &scope.globs, vec![state.clone()])?;
    eprintln!("{} watching: {}{}", heading(), file.display(), scope.shown);
    let mut runs = 0usize;
    let mut trigger = "start".to_string();
    loop {
        eprintln!(
            "{} [{}] running {} ({trigger})",
            heading(),
            runs + 1,
            file.display()
        );
        let last = match workflow.take() {
            Some(wf) => {
                let run = run_watched(wf, file, &workspace, &state, &args.opts, pass, interrupted);
                tokio::pin!(run);
                tokio::select! {
                    code = &mut run => code?,
                    () = interrupted.cancelled() => {
                        eprintln!(
                            "\n{} cancelling: stopping running steps…",
                            style("^C").yellow()
                        );
                        // The run saw the same token: it ends cancelled, its changes rolled back.
                        if let Err(e) = run.await {
                            eprintln!("{} {e:#}", style("error:").red().bold());
                        }
                        return Ok(exit::CANCELLED);
                    }
                }
            }
            None => exit::INVALID,
        };
        if interrupted.is_cancelled() {
            return Ok(exit::CANCELLED);
        }
        runs += 1;
        if args.max_runs.is_some_and(|m| runs >= m) {
            return Ok(last);
        }
        let workflow_changed = tokio::select! {
            changed = watcher.drain_after_run() => changed,
            () = interrupted.cancelled() => return Ok(stopped()),
        };
        if workflow_changed {
            trigger = "the workflow file changed during the last run".into();
        } else {
            eprintln!("{} waiting for changes (Ctrl-C to stop)", heading());
            let batch = tokio::select! {
                batch = watcher.next_batch(args.debounce) => batch,
                () = interrupted.cancelled() => return Ok(stopped()),
            };
            let Some(batch) = batch else { return Ok(last) };
            trigger = changed_paths(&batch, watcher.workspace());
        }
        // The workflow as it is now decides both the run and what is watched next.
        workflow = load(file);
        let now = watch_scope(args, workflow.as_ref());
        if now.shown != scope.shown {
            match watcher.set_globs(&now.globs) {
                Ok(()) => {
                    scope = now;
                    eprintln!("{} watching: {}{}", heading(), file.display(), scope.shown);
                }
                Err(e) => eprintln!(
                    "{} {e}: still watching {}{}",
                    style("warning:").yellow().bold(),
                    file.display(),
                    scope.shown
                ),
            }
        }
    }
}

/// Ctrl-C while waiting for changes: nothing to cancel.
fn stopped() -> u8 {
    eprintln!("\n{} stopped watching", style("^C").yellow());
    exit::CANCELLED
}

/// What a watch matches under the workspace, and how that is shown after the workflow file.
struct WatchedPaths {
    globs: Vec<String>,
    shown: String,
}

/// `--path` globs when given, else what the workflow declares; only the workflow file while it
/// does not validate.
fn watch_scope(args: &WatchArgs, workflow: Option<&Validated>) -> WatchedPaths {
    use secureclaw_engine::watch::{WatchScope, declared_scope};
    if !args.paths.is_empty() {
        return WatchedPaths {
            globs: args.paths.clone(),
            shown: format!(", {}", args.paths.join(", ")),
        };
    }
    let Some(wf) = workflow else {
        return WatchedPaths {
            globs: Vec::new(),
            shown: " (its inputs are watched once it validates)".into(),
        };
    };
    let scope = declared_scope(&wf.workflow);
    let shown = match &scope {
        WatchScope::Declared(paths) if paths.is_empty() => {
            " (the workflow declares no workspace inputs)".to_string()
        }
        WatchScope::Declared(paths) => paths.iter().map(|p| format!(", {p}")).collect(),
        WatchScope::Workspace { reason } => format!(", the whole workspace ({reason})"),
    };
    WatchedPaths {
        globs: scope.globs(),
        shown,
    }
}

/// One run of a watched workflow, cancelled with `interrupted`.
async fn run_watched(
    mut workflow: Validated,
    file: &Path,
    workspace: &Path,
    state: &Path,
    opts: &RunOptions,
    pass: &PassphraseSource,
    interrupted: &CancellationToken,
) -> anyhow::Result<u8> {
    workflow.provenance = provenance(file, &workflow)
        .with_context(|| format!("reading the git provenance of {}", file.display()))?;
    let start = Start {
        workflow,
        recorded_inputs: BTreeMap::new(),
        workspace: workspace.to_path_buf(),
        state: state.to_path_buf(),
        started_by: None,
    };
    start_run(start, opts, pass, None, interrupted.child_token()).await
}

/// A trigger's changed paths, relative to the workspace, the first three by name.
fn changed_paths(batch: &[PathBuf], workspace: &Path) -> String {
    let names: Vec<String> = batch
        .iter()
        .take(3)
        .map(|p| p.strip_prefix(workspace).unwrap_or(p).display().to_string())
        .collect();
    format!(
        "changed: {}{}",
        names.join(", "),
        if batch.len() > 3 {
            format!(" and {} more", batch.len() - 3)
        } else {
            String::new()
        }
    )
}

/// Progress: a live line per running step on a terminal, plain lines otherwise, JSON on request.
#[derive(Clone)]
pub struct Display {
    inner: Arc<DisplayInner>,
}

struct DisplayInner {
    json: bool,
    /// The flags a follow-up command typed here needs to find the run (`--workspace DIR`).
    locate: String,
    multi: Option<MultiProgress>,
    bars: Mutex<HashMap<String, ProgressBar>>,
}

impl Display {
    pub fn new(json: bool, tty: bool, locate: String) -> Self {
        Display {
            inner: Arc::new(DisplayInner {
                json,
                locate,
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
                    crate::output::state_label(state)
                ));
            }
            RunEvent::RunResumed { by } => self.line(format!(
                "{} run {run_id} resumed by {by}",
                style("▶").cyan()
            )),
            RunEvent::RunRetried { by, steps } => self.line(format!(
                "{} run {run_id} retried by {by}: running again {}",
                style("▶").cyan(),
                steps.join(", ")
            )),
            RunEvent::ApprovalDecided { step, approved, by } if !approved => {
                self.line(format!("  {} {step}: denied by {by}", style("✗").red()))
            }
            RunEvent::RunParked { steps } => {
                let run = format!("{run_id}{}", self.inner.locate);
                self.line(format!(
                    "{} parked at {}: `secureclaw approve {run}` then `secureclaw resume {run}`",
                    style("⏸").yellow(),
                    steps.join(", ")
                ))
            }
            RunEvent::UntrustedContentFlagged {
                step,
                stream,
                layer,
                pattern,
                score,
            } => self.line(format!(
                "  {} {step}: its {stream} looks like a prompt injection ({pattern}, {layer}, score {score:.2}); steps that use it wait for approval",
                style("warning:").yellow().bold()
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
