//! `plan`: an instruction → a validated workflow through the LLM planner, shown with each step's
//! tier and undo class, recorded with its provenance in the ledger. `run --instruction` reuses it.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::Args;
use console::style;
use secureclaw_engine::planner::{Plan, PlanError, Planner};
use secureclaw_engine::session::{Access, PassphraseSource, Session};
use secureclaw_engine::validate::Validated;

use crate::{exit, output};

#[derive(Args)]
pub struct PlanArgs {
    /// What the workflow should do, in plain words.
    pub instruction: String,
    /// Write the workflow here instead of printing it.
    #[arg(short, long)]
    pub out: Option<PathBuf>,
    /// Repair rounds after an invalid answer (each quotes the located errors back).
    #[arg(long, default_value_t = 2)]
    pub max_repairs: u32,
    /// Machine-readable output: one JSON document with the YAML, the table and the provenance.
    #[arg(long)]
    pub json: bool,
    /// Where the vault (ledger) lives [default: ./.secureclaw].
    #[arg(long, env = "SECURECLAW_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    #[command(flatten)]
    pub pass: crate::vault_cmds::PassphraseArgs,
}

/// Plan with the configured providers. `Ok(Err(code))` is a failure already reported.
pub async fn make_plan(instruction: &str, max_repairs: u32) -> anyhow::Result<Result<Plan, u8>> {
    // The semantic injection layer (feature `ml`) screens the instruction too when its model
    // files are installed; a build without the feature has the unicode and regex layers.
    let (planner, semantic) = Planner::from_env()?;
    if cfg!(feature = "ml") {
        eprintln!("{}", style(semantic).dim());
    }
    eprintln!("{} planning…", style("plan").cyan().bold());
    match planner.plan(instruction, max_repairs).await {
        Ok(p) => Ok(Ok(p)),
        Err(e) => {
            let kind = match e {
                PlanError::Injection { .. } => "injection",
                PlanError::EmptyInstruction => "invalid",
                PlanError::Invalid { .. } => "invalid_plan",
                PlanError::Llm { .. } => "llm",
            };
            // With no provider configured, the failure names the variables that would set one.
            let hint = matches!(e, PlanError::Llm { .. })
                .then(secureclaw_engine::planner::provider_setup_hint)
                .flatten();
            output::report_error(kind, &e.to_string(), hint.as_deref());
            Ok(Err(match e {
                PlanError::Injection { .. } | PlanError::EmptyInstruction => exit::INVALID,
                PlanError::Invalid { .. } | PlanError::Llm { .. } => exit::FAILED,
            }))
        }
    }
}

/// Provenance on stderr: who planned it, how many rounds, what it cost.
pub fn print_provenance(plan: &Plan) {
    eprintln!(
        "{} {} / {}, {} round(s), {} tokens ({} in, {} out), prompt sha256 {}",
        style("planned by").dim(),
        plan.provider,
        plan.model,
        plan.rounds,
        plan.usage.total(),
        plan.usage.input_tokens,
        plan.usage.output_tokens,
        &plan.prompt_sha256[..12.min(plan.prompt_sha256.len())]
    );
}

/// Write the plan's YAML to `path` (parents created).
pub fn write_yaml(path: &Path, plan: &Plan) -> anyhow::Result<()> {
    if let Some(parent) = path.parent()
        && !parent.as_os_str().is_empty()
    {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    std::fs::write(path, &plan.yaml).with_context(|| format!("writing {}", path.display()))
}

pub fn plan(args: PlanArgs, pass: &PassphraseSource) -> anyhow::Result<u8> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let plan = match rt.block_on(make_plan(&args.instruction, args.max_repairs))? {
        Ok(p) => p,
        Err(code) => return Ok(code),
    };
    let state = crate::cwd_state(args.state_dir.as_ref())?;
    let session = crate::state::open(&state, pass, Access::Write { create: true })?;
    rt.block_on(session.record_plan(&plan, None))
        .context("recording the plan in the ledger")?;
    drop(session);

    if let Some(out) = &args.out {
        write_yaml(out, &plan)?;
    }
    if args.json {
        let doc = serde_json::json!({
            "yaml": plan.yaml,
            "written_to": args.out,
            "provenance": plan.provenance(),
            "steps": plan.validated.order.iter().map(|&i| {
                let s = &plan.validated.workflow.steps[i];
                let r = &plan.validated.risk[i];
                serde_json::json!({
                    "id": s.id,
                    "action": s.kind().as_str(),
                    "tier": r.tier.as_str(),
                    "rule": r.rule,
                    "reason": r.reason,
                    "needs_approval": r.needs_approval(),
                    "undo": plan.validated.inverse[i],
                })
            }).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        match &args.out {
            Some(out) => {
                eprintln!("{} wrote {}", style("✓").green(), out.display());
                output::print_explain(&plan.validated);
            }
            None => {
                // Only the workflow on stdout, so `secureclaw plan "…" > f.yaml` works.
                print!("{}", plan.yaml);
                eprintln!();
                output::print_explain_to(&plan.validated, &mut std::io::stderr().lock());
            }
        }
    }
    print_provenance(&plan);
    Ok(exit::OK)
}

/// For `run --instruction`: plan, show, record, and keep a copy of the plan under the state
/// dir for the user; the run itself goes on from the validated text, not the file.
/// `Ok(Err(code))`: a failure already reported.
pub async fn plan_for_run(
    session: &Session,
    instruction: &str,
    show: bool,
) -> anyhow::Result<Result<Validated, u8>> {
    let plan = match make_plan(instruction, DEFAULT_REPAIRS).await? {
        Ok(p) => p,
        Err(code) => return Ok(Err(code)),
    };
    session
        .record_plan(&plan, None)
        .await
        .context("recording the plan in the ledger")?;
    let sha = plan.yaml_sha256();
    let path = session
        .state_dir()
        .join("plans")
        .join(format!("plan-{}.yaml", &sha[..16.min(sha.len())]));
    write_yaml(&path, &plan)?;
    if show {
        print!("{}", plan.yaml);
        println!();
        output::print_explain(&plan.validated);
    }
    print_provenance(&plan);
    eprintln!("{} plan saved to {}", style("note:").dim(), path.display());
    // The planner validated exactly these bytes; the run names the saved copy.
    let mut workflow = plan.validated;
    workflow.file = path;
    Ok(Ok(workflow))
}

/// Repair rounds for `run --instruction` (same as `plan`'s default).
const DEFAULT_REPAIRS: u32 = 2;
