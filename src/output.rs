//! `validate`, `runs` and `show`: reading and presenting, never running.

use std::path::PathBuf;

use console::style;
use secureclaw_engine::record::{RunRecord, StepState};
use secureclaw_engine::session::{Access, PassphraseSource, Session};
use secureclaw_engine::validate::{self, Validated};
use serde_json::json;

use crate::{StateArgs, exit, state_dir};

pub fn validate(files: &[PathBuf], explain: bool, as_json: bool) -> anyhow::Result<u8> {
    let mut errors = 0;
    let mut reports = Vec::new();
    for file in files {
        match validate::validate_file(file) {
            Ok(v) => {
                if as_json {
                    reports.push(json!({"file": file, "valid": true, "steps": explain_json(&v)}));
                } else {
                    println!(
                        "{} {} ({} steps)",
                        style("ok").green().bold(),
                        file.display(),
                        v.workflow.steps.len()
                    );
                    if explain {
                        print_explain(&v);
                    }
                }
            }
            Err(diags) => {
                errors += diags.len();
                if as_json {
                    reports.push(json!({"file": file, "valid": false, "errors": diags.0}));
                } else {
                    let source = read_source(file);
                    eprintln!("{}\n", diags.render(&source, colors_on_stderr()));
                }
            }
        }
    }
    if as_json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
    } else if errors > 0 {
        eprintln!(
            "{}",
            style(format!(
                "{errors} error{} found",
                if errors == 1 { "" } else { "s" }
            ))
            .red()
            .bold()
        );
    }
    Ok(if errors > 0 { exit::FAILED } else { exit::OK })
}

/// ANSI styles only for a terminal, and never under `NO_COLOR`.
fn colors_on_stderr() -> bool {
    console::colors_enabled_stderr()
}

/// The text a diagnostic points into; a file that cannot be read shows no snippet.
fn read_source(file: &std::path::Path) -> String {
    std::fs::read(file)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// One diagnostic with the source line it points at.
pub fn print_diagnostic(d: &secureclaw_engine::diag::Diagnostic) {
    eprintln!("{}\n", d.render(&read_source(&d.file), colors_on_stderr()));
}

fn explain_json(v: &Validated) -> serde_json::Value {
    v.workflow
        .steps
        .iter()
        .enumerate()
        .map(|(i, s)| {
            json!({
                "id": s.id,
                "action": s.kind().as_str(),
                "needs": s.needs,
                "tier": v.risk[i].tier,
                "rule": v.risk[i].rule,
                "reason": v.risk[i].reason,
                "needs_approval": v.risk[i].needs_approval(),
                "inverse": v.inverse[i],
            })
        })
        .collect()
}

pub fn print_explain(v: &Validated) {
    print_explain_to(v, &mut std::io::stdout().lock());
}

/// The per-step table: tier, the rule that set it, and how the step is undone.
pub fn print_explain_to(v: &Validated, w: &mut dyn std::io::Write) {
    let width = v
        .workflow
        .steps
        .iter()
        .map(|s| s.id.len())
        .max()
        .unwrap_or(4)
        .max(4);
    let _ = writeln!(
        w,
        "  {:width$}  {:6}  {:14}  {:10}  RULE / WHY",
        "STEP", "ACTION", "TIER", "UNDO"
    );
    for &i in &v.order {
        let s = &v.workflow.steps[i];
        let r = &v.risk[i];
        let tier = format!("{:14}", r.tier.as_str());
        let tier = if r.needs_approval() {
            style(tier).yellow().bold()
        } else {
            style(tier).green()
        };
        let pause = if r.needs_approval() {
            " (pauses for approval)"
        } else {
            ""
        };
        let _ = writeln!(
            w,
            "  {:width$}  {:6}  {}  {:10}  {}: {}{pause}",
            s.id,
            s.kind().as_str(),
            tier,
            serde_json::to_value(v.inverse[i])
                .ok()
                .and_then(|x| x.as_str().map(str::to_string))
                .unwrap_or_default(),
            r.rule,
            r.reason
        );
    }
}

fn session(args: &StateArgs, pass: &PassphraseSource) -> anyhow::Result<Session> {
    let cwd = std::env::current_dir()?;
    let dir = state_dir(args.state_dir.as_ref(), &cwd);
    crate::state::open(&dir, pass, Access::Read)
}

pub fn runs(args: &StateArgs, pass: &PassphraseSource) -> anyhow::Result<u8> {
    let runs = session(args, pass)?.runs()?;
    if args.json {
        let rows: Vec<_> = runs
            .iter()
            .map(|r| json!({"run_id": r.run_id, "workflow": r.workflow, "state": r.state, "started_at": r.started_at, "finished_at": r.finished_at, "backend": r.backend}))
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(exit::OK);
    }
    if runs.is_empty() {
        println!("no runs yet");
    }
    for r in &runs {
        let done = r
            .steps
            .iter()
            .filter(|s| s.state == StepState::Succeeded)
            .count();
        println!(
            "{}  {:18}  {:22}  {}/{} steps  {}  {}",
            r.run_id,
            state_label(&r.state),
            r.workflow,
            done,
            r.steps.len(),
            r.backend,
            r.started_at
        );
    }
    Ok(exit::OK)
}

fn state_label<T: serde::Serialize>(s: &T) -> String {
    serde_json::to_value(s)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

pub fn show(run: &str, args: &StateArgs, pass: &PassphraseSource) -> anyhow::Result<u8> {
    let r: RunRecord = session(args, pass)?.show(run)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(exit::OK);
    }
    println!("run       {}", style(&r.run_id).bold());
    println!("workflow  {} ({})", r.workflow, r.workflow_file.display());
    println!("workspace {}", r.workspace.display());
    if let Some(p) = &r.provenance {
        print_provenance(p);
    }
    if let Some(by) = &r.started_by {
        println!("started by {by}");
    }
    println!(
        "backend   {}{}",
        r.backend,
        if r.isolated { "" } else { "  (UNISOLATED)" }
    );
    println!("state     {}", state_label(&r.state));
    if let Some(m) = &r.message {
        println!("message   {m}");
    }
    println!(
        "started   {}   finished {}",
        r.started_at,
        r.finished_at.as_deref().unwrap_or("-")
    );
    if let Some(m) = &r.risk_model {
        println!("risk      {m}");
    }
    if !r.approval.nodes.is_empty() {
        let nodes: Vec<String> = r
            .approval
            .nodes
            .iter()
            .map(|n| format!("{} ({})", n.id, n.tier))
            .collect();
        println!(
            "approved  up front by {}: {}",
            r.approval.by,
            nodes.join(", ")
        );
    }
    println!();
    for s in &r.steps {
        println!(
            "{:10} {}  [{}]  {}{}",
            state_label(&s.state),
            style(&s.id).bold(),
            s.tier,
            s.duration_ms.map(|d| format!("{d} ms")).unwrap_or_default(),
            s.exit_code
                .map(|c| format!("  exit {c}"))
                .unwrap_or_default()
        );
        if let Some(reason) = &s.reason {
            println!("           {}", style(reason).dim());
        }
        if let Some(a) = &s.approval {
            println!("           approved by {a}");
        }
        if let Some(e) = &s.enforcement {
            let active: Vec<&str> = e
                .layers
                .iter()
                .filter(|l| l.active)
                .map(|l| l.name.as_str())
                .collect();
            println!(
                "           sandbox {}: {}",
                e.backend,
                if e.isolated {
                    active.join(", ")
                } else {
                    "no isolation".into()
                }
            );
        }
        for e in &s.egress {
            use secureclaw_engine::tools::egress::Decision;
            let verdict = match &e.decision {
                Decision::Allowed { address } => {
                    format!("{} -> {address}", style("allowed").green())
                }
                Decision::Refused { reason } => format!("{}: {reason}", style("refused").red()),
            };
            println!(
                "           egress {} {}:{} {verdict}",
                e.method, e.host, e.port
            );
        }
        for line in s.output.lines().take(5) {
            println!("           | {line}");
        }
    }
    Ok(exit::OK)
}

/// Where the workflow that ran came from in git.
fn print_provenance(p: &secureclaw_engine::record::Provenance) {
    let source = p
        .source
        .as_deref()
        .map(|s| format!(" (source {s})"))
        .unwrap_or_default();
    println!("git       {}{source}", p.repository);
    println!(
        "          commit {}{}{}",
        p.commit,
        p.branch
            .as_deref()
            .map(|b| format!(" on {b}"))
            .unwrap_or_default(),
        if p.dirty {
            format!("  {}", style("(uncommitted changes)").yellow())
        } else {
            String::new()
        }
    );
    println!("          path {}  blob {}", p.path, p.blob);
}
