//! `plan`: an instruction → a validated workflow through the LLM planner, shown with each step's
//! tier and undo class, recorded with its provenance in the ledger. `run --instruction` reuses it.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::Args;
use console::style;
use secureclaw_engine::planner::{Plan, PlanError, Planner};
use secureclaw_llm::{FallbackChain, Guards, LlmConfig};
use secureclaw_vault::{NewEntry, PassphraseSource, Vault};

use crate::{exit, output};

/// Ledger kind of the provenance entry.
pub const PLAN_CREATED: &str = "plan_created";

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
}

/// Plan with the configured providers. `Ok(Err(code))` is a failure already reported.
pub async fn make_plan(instruction: &str, max_repairs: u32) -> anyhow::Result<Result<Plan, u8>> {
    let cfg = LlmConfig::from_env().context("reading the LLM configuration")?;
    let chain = FallbackChain::from_config(&cfg).context("setting up the LLM providers")?;
    let guards = Guards::from_config(&cfg).context("loading the prompt guards")?;
    // The semantic injection layer (feature `ml`) screens the instruction too when its model
    // files are installed; a build without the feature has the unicode and regex layers.
    let (guards, semantic) = guards.with_semantic();
    if cfg!(feature = "ml") {
        eprintln!("{}", style(semantic.summary()).dim());
    }
    let planner = Planner::new(chain, guards);
    eprintln!("{} planning…", style("plan").cyan().bold());
    match planner.plan(instruction, max_repairs).await {
        Ok(p) => Ok(Ok(p)),
        Err(e) => {
            eprintln!("{} {e}", style("error:").red().bold());
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

/// Append the `plan_created` entry (no workflow text: hashes only).
pub fn record(vault: &Vault, plan: &Plan, run: Option<&str>) -> anyhow::Result<()> {
    // The ledger gets exported: the prompt and YAML hashes are keyed, so an export cannot
    // confirm a guessed instruction.
    let mut provenance = plan.provenance();
    if let Some(p) = provenance.as_object_mut() {
        for (plain, keyed, what) in [
            ("prompt_sha256", "prompt_hmac", "prompt"),
            ("yaml_sha256", "yaml_hmac", "plan-yaml"),
        ] {
            if let Some(h) = p.remove(plain) {
                let h = h.as_str().unwrap_or_default().to_owned();
                p.insert(keyed.into(), vault.keyed_digest(what, h.as_bytes()).into());
            }
        }
    }
    let mut entry = NewEntry::new(crate::run_cmd::actor(), PLAN_CREATED).result(provenance);
    if let Some(r) = run {
        entry = entry.run(r);
    }
    vault
        .ledger()
        .append(entry)
        .context("recording the plan in the ledger")?;
    Ok(())
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
    let vault = crate::unlock::open(&state, pass, true)?;
    record(&vault, &plan, None)?;
    drop(vault);

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

/// For `run --instruction`: plan, show, record, and write the plan under the state dir so the
/// run path (validation, run record, revert) has a file. `Ok(Err(code))`: reported failure.
pub async fn plan_for_run(
    instruction: &str,
    workspace: Option<&PathBuf>,
    state_dir: Option<&PathBuf>,
    pass: &PassphraseSource,
    show: bool,
) -> anyhow::Result<Result<PathBuf, u8>> {
    let plan = match make_plan(instruction, DEFAULT_REPAIRS).await? {
        Ok(p) => p,
        Err(code) => return Ok(Err(code)),
    };
    let workspace = match workspace {
        Some(w) => w.clone(),
        None => std::env::current_dir()?,
    };
    let state = crate::state_dir(state_dir, &workspace);
    // Opened (or created) here so the state dir gets the vault's permissions before the plan
    // file lands in it; the run opens it again.
    let vault = crate::unlock::open(&state, pass, true)?;
    record(&vault, &plan, None)?;
    drop(vault);
    let sha = plan.yaml_sha256();
    let path = state
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
    Ok(Ok(path))
}

/// Repair rounds for `run --instruction` (same as `plan`'s default).
const DEFAULT_REPAIRS: u32 = 2;
