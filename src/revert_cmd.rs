//! `revert` and `diff`: undo a recorded run (or one step), and show what it changed.

use std::io::IsTerminal as _;

use anyhow::Context as _;
use clap::Args;
use console::style;
use secureclaw_engine::revert::{self, RevertError, StepAction};
use secureclaw_engine::session::{
    Access, PassphraseSource, RevertOptions, RevertOutcome, SessionError,
};

use crate::exit;

#[derive(Args)]
pub struct RevertArgs {
    /// Run id, a unique prefix of it, or `last`.
    pub run: String,
    /// Revert only this step.
    #[arg(long)]
    pub step: Option<String>,
    /// With --step: also revert the later steps that consumed its effects.
    #[arg(long, requires = "step")]
    pub cascade: bool,
    /// Show exactly which files would change and what would run; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Overwrite paths edited since the run (drift) instead of stopping.
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub locate: crate::state::Locate,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub pass: crate::vault_cmds::PassphraseArgs,
}

#[derive(Args)]
pub struct DiffArgs {
    /// Run id, a unique prefix of it, or `last`.
    pub run: String,
    /// Only this step's changes.
    #[arg(long)]
    pub step: Option<String>,
    #[command(flatten)]
    pub locate: crate::state::Locate,
    /// Colours: auto (on a terminal), always, never.
    #[arg(long, default_value = "auto")]
    pub color: String,
    #[command(flatten)]
    pub pass: crate::vault_cmds::PassphraseArgs,
}

pub fn revert(args: RevertArgs, pass: &PassphraseSource) -> anyhow::Result<u8> {
    let dir = args.locate.dir()?;
    let session = crate::state::open(&dir, pass, Access::Write { create: false })?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let opts = RevertOptions {
        step: args.step.clone(),
        cascade: args.cascade,
        force: args.force,
        dry_run: args.dry_run,
    };
    let report = match rt.block_on(session.revert(&args.run, opts)) {
        Ok(RevertOutcome::Applied(report)) => report,
        Ok(RevertOutcome::Planned(plan)) => {
            if args.json {
                println!("{}", serde_json::to_string_pretty(&plan)?);
            } else {
                println!(
                    "revert of run {} (dry run: nothing is changed)",
                    plan.run_id
                );
                print_plan(&plan);
            }
            return Ok(if plan.conflicts.is_empty() || args.force {
                exit::OK
            } else {
                exit::FAILED
            });
        }
        Err(SessionError::Revert(e @ RevertError::NeedsCascade { .. })) => {
            crate::output::report_error("needs_cascade", &e.to_string(), None);
            return Ok(exit::FAILED);
        }
        Err(e) => return Err(e.into()),
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        if !report.conflicts.is_empty() {
            let verb = if args.force {
                "overwritten (--force)"
            } else {
                "nothing was changed"
            };
            eprintln!(
                "{} {} path(s) changed since the run; {verb}:",
                style("conflict:").red().bold(),
                report.conflicts.len()
            );
            for c in &report.conflicts {
                eprintln!(
                    "  {} (step `{}`): expected {}, found {}",
                    c.path.display(),
                    c.step,
                    c.expected,
                    c.found
                );
            }
            if !args.force {
                eprintln!(
                    "  {} keep your edits and revert by hand, or re-run with --force to overwrite them",
                    style("hint:").cyan()
                );
            }
        }
        let s = &report.summary;
        for id in &s.reverted {
            println!("{} reverted step `{id}`", style("✓").green());
        }
        for m in &s.manual_review {
            println!("{} needs manual review: {m}", style("!").yellow());
        }
        for f in &s.failures {
            println!("{} failed: {f}", style("✗").red());
        }
        match s.verified {
            Some(true) => println!(
                "workspace matches the pre-run state (manifest {})",
                report.pre_run_manifest.as_deref().unwrap_or_default()
            ),
            Some(false) => println!(
                "{} the workspace does not match the pre-run state (pre-run manifest {}, now {}): paths the run did not touch changed since",
                style("warning:").yellow(),
                report.pre_run_manifest.as_deref().unwrap_or("unknown"),
                report.manifest_now.as_deref().unwrap_or("unknown")
            ),
            None => {}
        }
        println!("revert {}", s.state);
    }
    Ok(match report.summary.state.as_str() {
        "completed" if report.summary.verified != Some(false) => exit::OK,
        _ => exit::FAILED,
    })
}

fn print_plan(plan: &revert::RevertPlan) {
    for id in &plan.already_reverted {
        println!("  step `{id}`: already reverted");
    }
    if plan.steps.is_empty() {
        println!("  nothing to revert");
    }
    for s in &plan.steps {
        match &s.action {
            StepAction::Restore { changes } => {
                println!("  step `{}`: restore {} path(s)", s.id, changes.len());
                for c in &changes.changes {
                    let verb = match c.what() {
                        "created" => "remove",
                        "deleted" => "recreate",
                        "mode" => "chmod",
                        "replaced" => "replace",
                        _ => "restore",
                    };
                    println!("    {verb:<8} {}", c.path.display());
                }
            }
            StepAction::Compensate { compensate } => {
                let what = compensate
                    .http
                    .as_ref()
                    .map(|h| format!("{} {}", h.method.as_str(), h.url))
                    .unwrap_or_default();
                println!("  step `{}`: compensate: {what}", s.id);
            }
            StepAction::ManualReview { reason } => {
                println!("  step `{}`: manual review: {reason}", s.id)
            }
        }
    }
    for c in &plan.conflicts {
        println!(
            "  conflict: {} (step `{}`): expected {}, found {}",
            c.path.display(),
            c.step,
            c.expected,
            c.found
        );
    }
}

pub fn diff(args: DiffArgs, pass: &PassphraseSource) -> anyhow::Result<u8> {
    // Only reads: works on a read-only state dir (a backup being audited) like `show`.
    let dir = args.locate.dir()?;
    let session = crate::state::open(&dir, pass, Access::Read)?;
    let (_, steps) = session.changes(&args.run, args.step.as_deref())?;
    let color = match args.color.as_str() {
        "always" => true,
        "never" => false,
        _ => std::io::stdout().is_terminal(),
    };
    for (id, changes) in steps {
        if changes.is_empty() {
            continue;
        }
        let head = format!("# step `{id}`: {} path(s) changed", changes.len());
        println!(
            "{}",
            if color {
                style(head).bold().to_string()
            } else {
                head
            }
        );
        print!("{}", session.render_diff(&changes, color)?);
    }
    Ok(exit::OK)
}
