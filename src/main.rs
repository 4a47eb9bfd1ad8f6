//! The `secureclaw` command line: parses arguments and calls the engine. Nothing else lives here.

mod agent_cmd;
mod completions_cmd;
mod guard_cmd;
mod output;
mod park_cmd;
mod plan_cmd;
mod rerun_cmd;
mod revert_cmd;
mod run_cmd;
mod serve_cmd;
mod shared_store;
mod state;
mod vault_cmds;
mod worker_cmd;
mod workflows_cmd;

/// What `vault_cmds` uses of the vault, through the engine.
mod vault_api {
    pub use secureclaw_engine::tools::vault::*;
}

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

/// Exit codes, documented in `--help` and the README.
pub mod exit {
    pub const OK: u8 = 0;
    /// A step failed, or `validate` found errors.
    pub const FAILED: u8 = 1;
    /// The workflow or the command line is invalid.
    pub const INVALID: u8 = 2;
    /// The run parked before a step that needs approval nobody gave (`approve`, `resume`).
    pub const NEEDS_APPROVAL: u8 = 3;
    /// Cancelled with Ctrl-C.
    pub const CANCELLED: u8 = 130;
}

#[derive(Parser)]
#[command(
    name = "secureclaw",
    version,
    about = "Run typed YAML workflows for AI agents: validated, risk-tagged, sandboxed, recorded.",
    long_about = "secureclaw runs workflow files (a YAML DAG of read/write/patch/shell/http steps).\n\
Every file is validated before anything runs, every step gets a risk tier, destructive and\n\
network steps pause for approval, and shell steps run in a sandbox.\n\n\
Start with:  secureclaw validate --explain FILE   then   secureclaw run FILE",
    after_help = "Exit codes: 0 success, 1 a step failed (or validation errors), 2 invalid input,\n\
3 parked at an approval gate (approve, then resume), 130 cancelled.\n\n\
Everything the engine stores is encrypted under a passphrase-derived key that never touches\n\
disk: set SECURECLAW_PASSPHRASE, pass --passphrase-file/--passphrase-fd, or type it when asked.\n\n\
Docs: README.md and docs/workflow-format.md in the repository."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Validate and run a workflow (or plan one from `--instruction` first).
    Run(run_cmd::RunArgs),
    /// Turn an instruction into a validated workflow with the LLM planner; show its tiers.
    Plan(plan_cmd::PlanArgs),
    /// Run a recorded run's workflow again, exactly as committed at the commit it ran from.
    #[command(long_about = rerun_cmd::LONG_ABOUT)]
    Rerun(rerun_cmd::RerunArgs),
    /// Re-run a workflow whenever its file or its inputs change (watch mode).
    Watch(run_cmd::WatchArgs),
    /// Check workflow files without running them; report every error with file:line:column.
    Validate(ValidateArgs),
    /// List and check every workflow file of a git repository (at a commit) or a directory,
    /// with its triggers.
    #[command(long_about = workflows_cmd::LONG_ABOUT)]
    Workflows(workflows_cmd::WorkflowsArgs),
    /// Print the JSON Schema of the workflow format (for editors and CI).
    Schema,
    /// Classify shell commands: tier and the rule that set it (args, or one per line on stdin).
    Risk(risk_cmd::RiskArgs),
    /// List recorded runs, newest last.
    Runs(StateArgs),
    /// Show one run: its steps, states, outputs, enforcement, and where its workflow came from
    /// in git.
    Show(ShowArgs),
    /// Undo a run (or one step) from its recorded pre-images; stops on files edited since.
    Revert(revert_cmd::RevertArgs),
    /// Show what a run (or one step) changed in the workspace, as a unified diff.
    Diff(revert_cmd::DiffArgs),
    /// Approve the gates a parked run waits at (all, or `--step`); `--resume` goes on at once.
    Approve(park_cmd::ApproveArgs),
    /// Deny a parked run's gate: on resume the step and what needs it are skipped.
    Deny(park_cmd::DenyArgs),
    /// Continue a parked run (in this or any later process); refuses if the workspace changed.
    Resume(park_cmd::ResumeArgs),
    /// Continue a failed run from its failed step: what succeeded stays done, the rest runs.
    #[command(long_about = park_cmd::RETRY_LONG_ABOUT)]
    Retry(park_cmd::RetryArgs),
    /// A run's output: every step's, or one step's (`--step`); `--follow` streams a running
    /// run; `--events` prints its events as JSON lines instead.
    Logs(park_cmd::LogsArgs),
    /// Sandbox backends: which isolation layers are really in force here (`check`), and the
    /// offline build of the Docker sandbox image (`build-image`).
    #[command(subcommand)]
    Sandbox(sandbox_cmd::SandboxCommand),
    /// Screen untrusted text for prompt injection (`scan`), or scrub secrets from it (`scrub`).
    #[command(subcommand)]
    Guard(guard_cmd::GuardCommand),
    /// The encrypted vault holding run records, snapshots and the ledger: init, rekey, status.
    Vault {
        #[command(subcommand)]
        command: vault_cmds::VaultCommand,
        #[arg(long, env = "SECURECLAW_STATE_DIR", global = true)]
        state_dir: Option<PathBuf>,
        #[command(flatten)]
        pass: vault_cmds::PassphraseArgs,
        #[command(flatten)]
        store: shared_store::StoreArgs,
    },
    /// The tamper-evident action ledger: verify, export, verify an export offline.
    Ledger {
        #[command(subcommand)]
        command: vault_cmds::LedgerCommand,
        #[arg(long, env = "SECURECLAW_STATE_DIR", global = true)]
        state_dir: Option<PathBuf>,
        #[command(flatten)]
        pass: vault_cmds::PassphraseArgs,
        #[command(flatten)]
        store: shared_store::StoreArgs,
    },
    /// Serve the HTTP API: accounts, tasks, approvals, live streams, revert, API docs.
    Serve(serve_cmd::ServeArgs),
    /// Run the work that servers queue on a shared store (`serve --store URL --workers`);
    /// see docs/scaling.md.
    Worker(worker_cmd::WorkerArgs),
    /// Accounts of the server (`user add NAME [--admin]`).
    User {
        #[command(subcommand)]
        command: serve_cmd::UserCommand,
        #[command(flatten)]
        pass: vault_cmds::PassphraseArgs,
    },
    #[command(flatten)]
    Agent(agent_cmd::AgentCommand),
    /// Print a shell completion script (bash, zsh, fish, powershell, elvish).
    Completions(completions_cmd::CompletionsArgs),
    /// Print the manual page (roff), or write one page per subcommand with `--out DIR`.
    Man(completions_cmd::ManArgs),
}

mod risk_cmd;
mod sandbox_cmd;

#[derive(Args)]
struct ValidateArgs {
    /// Workflow files to check.
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// Also show each step's risk tier, the rule that set it, and how it is undone.
    #[arg(long)]
    explain: bool,
    /// Machine-readable output (one JSON document).
    #[arg(long)]
    json: bool,
}

#[derive(Args, Clone)]
pub struct StateArgs {
    #[command(flatten)]
    locate: state::Locate,
    /// Machine-readable output.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    pass: vault_cmds::PassphraseArgs,
}

#[derive(Args)]
struct ShowArgs {
    /// Run id, a unique prefix of it, or `last`.
    run: String,
    #[command(flatten)]
    state: StateArgs,
}

fn main() -> ExitCode {
    // When re-executed as the sandbox helper, this never returns.
    secureclaw_engine::tools::sandbox::run_helper_if_requested();
    let cli = Cli::parse();
    output::set_json_errors(cli.command.json());
    let result = match cli.command {
        Command::Run(args) => {
            let pass = args.opts.pass.source();
            run_cmd::run(args, &pass)
        }
        Command::Plan(args) => {
            let pass = args.pass.source();
            plan_cmd::plan(args, &pass)
        }
        Command::Rerun(args) => {
            let pass = args.opts.pass.source();
            rerun_cmd::rerun(args, &pass)
        }
        Command::Watch(args) => {
            let pass = args.opts.pass.source();
            run_cmd::watch(args, &pass)
        }
        Command::Workflows(args) => workflows_cmd::workflows(args),
        Command::Validate(args) => output::validate(&args.files, args.explain, args.json),
        Command::Schema => {
            print!("{}", secureclaw_engine::model::workflow_schema_text());
            Ok(exit::OK)
        }
        Command::Risk(args) => risk_cmd::run(args).map(|c| u8::try_from(c).unwrap_or(exit::FAILED)),
        Command::Guard(cmd) => guard_cmd::run(cmd),
        Command::Sandbox(cmd) => sandbox_cmd::run(cmd),
        Command::Runs(args) => output::runs(&args, &args.pass.source()),
        Command::Show(args) => output::show(&args.run, &args.state, &args.state.pass.source()),
        Command::Revert(args) => {
            let pass = args.pass.source();
            revert_cmd::revert(args, &pass)
        }
        Command::Diff(args) => {
            let pass = args.pass.source();
            revert_cmd::diff(args, &pass)
        }
        Command::Approve(args) => {
            let pass = args.common.pass.source();
            park_cmd::approve(args, &pass)
        }
        Command::Deny(args) => {
            let pass = args.pass.source();
            park_cmd::deny(args, &pass)
        }
        Command::Resume(args) => {
            let pass = args.common.pass.source();
            park_cmd::resume(args, &pass)
        }
        Command::Retry(args) => {
            let pass = args.pass.source();
            park_cmd::retry(args, &pass)
        }
        Command::Logs(args) => {
            let pass = args.pass.source();
            park_cmd::logs(args, &pass)
        }
        Command::Vault {
            command,
            state_dir,
            pass,
            store,
        } => cwd_state(state_dir.as_ref())
            .and_then(|dir| match store.url()? {
                Some(url) => shared_store::run_vault(command, &dir, &pass.source(), url),
                None => vault_cmds::run_vault(command, &dir, &pass.source()),
            })
            .map(exit_code),
        Command::Ledger {
            command,
            state_dir,
            pass,
            store,
        } => cwd_state(state_dir.as_ref())
            .and_then(|dir| match store.url()? {
                Some(url) => shared_store::run_ledger(command, &dir, &pass.source(), url),
                None => vault_cmds::run_ledger(command, &dir, &pass.source()),
            })
            .map(exit_code),
        Command::Serve(args) => {
            let pass = args.pass.source();
            serve_cmd::serve_cmd(args, &pass)
        }
        Command::Worker(args) => {
            let pass = args.pass.source();
            worker_cmd::worker_cmd(args, &pass)
        }
        Command::User { command, pass } => serve_cmd::user_cmd(command, &pass.source()),
        Command::Agent(cmd) => {
            let pass = cmd.passphrase();
            agent_cmd::run(cmd, &pass)
        }
        Command::Completions(args) => completions_cmd::completions(&args),
        Command::Man(args) => completions_cmd::man(&args),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            output::report_anyhow(&e);
            ExitCode::from(exit::INVALID)
        }
    }
}

impl Command {
    /// Whether the command was asked for machine-readable output: its failures are then
    /// reported as one JSON error object on stdout.
    fn json(&self) -> bool {
        match self {
            Command::Run(a) => a.opts.json,
            Command::Rerun(a) => a.opts.json,
            Command::Watch(a) => a.opts.json,
            Command::Plan(a) => a.json,
            Command::Validate(a) => a.json,
            Command::Workflows(a) => a.json,
            Command::Risk(a) => a.json,
            Command::Runs(a) => a.json,
            Command::Show(a) => a.state.json,
            Command::Revert(a) => a.json,
            Command::Approve(a) => a.common.json,
            Command::Resume(a) => a.common.json,
            Command::Retry(a) => a.json,
            Command::Logs(a) => a.json_events(),
            Command::Sandbox(c) => c.json(),
            Command::Guard(c) => c.json(),
            Command::Vault { command, .. } => command.json(),
            Command::Schema
            | Command::Diff(_)
            | Command::Deny(_)
            | Command::Ledger { .. }
            | Command::Serve(_)
            | Command::Worker(_)
            | Command::User { .. }
            | Command::Agent(_)
            | Command::Completions(_)
            | Command::Man(_) => false,
        }
    }
}

fn exit_code(code: i32) -> u8 {
    u8::try_from(code).unwrap_or(exit::FAILED)
}

fn cwd_state(explicit: Option<&PathBuf>) -> anyhow::Result<PathBuf> {
    Ok(state_dir(explicit, &std::env::current_dir()?))
}

/// The state dir: explicit, or `.secureclaw` in the workspace (hidden from steps).
pub fn state_dir(explicit: Option<&PathBuf>, workspace: &std::path::Path) -> PathBuf {
    explicit
        .cloned()
        .unwrap_or_else(|| workspace.join(".secureclaw"))
}
