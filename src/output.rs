//! `validate`, `runs` and `show`: reading and presenting, never running.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

use console::style;
use secureclaw_engine::record::{RunRecord, StepState};
use secureclaw_engine::session::{Access, PassphraseSource, Session};
use secureclaw_engine::validate::{self, Validated};
use serde_json::json;

use crate::{StateArgs, exit};

/// Set once in `main` when the command was given `--json`: failures are then reported as one
/// JSON object on stdout instead of text on stderr.
static JSON_ERRORS: AtomicBool = AtomicBool::new(false);

pub fn set_json_errors(on: bool) {
    JSON_ERRORS.store(on, Ordering::Relaxed);
}

pub fn json_errors() -> bool {
    JSON_ERRORS.load(Ordering::Relaxed)
}

/// The JSON error object every `--json` command prints on failure.
pub fn error_json(kind: &str, message: &str, hint: Option<&str>) -> serde_json::Value {
    json!({"error": {"message": message, "kind": kind, "hint": hint}})
}

/// Report a failure: `error: MESSAGE` (and `hint: …`) on stderr, or under `--json` one
/// [`error_json`] object on stdout. The exit code is the caller's.
pub fn report_error(kind: &str, message: &str, hint: Option<&str>) {
    report_error_with(kind, message, hint, None);
}

/// [`report_error`] with more detail for the JSON object (e.g. the located diagnostics of an
/// invalid workflow, which the text form prints on its own).
pub fn report_error_with(
    kind: &str,
    message: &str,
    hint: Option<&str>,
    detail: Option<(&str, serde_json::Value)>,
) {
    if json_errors() {
        let mut doc = error_json(kind, message, hint);
        if let (Some((key, value)), Some(err)) = (detail, doc.get_mut("error"))
            && let Some(obj) = err.as_object_mut()
        {
            obj.insert(key.to_string(), value);
        }
        println!("{doc}");
        return;
    }
    eprintln!("{} {message}", style("error:").red().bold());
    if let Some(hint) = hint {
        eprintln!("  {} {hint}", style("hint:").cyan());
    }
}

/// Report an error that ended a command: its whole chain, each cause once.
pub fn report_anyhow(e: &anyhow::Error) {
    use secureclaw_engine::session::SessionError;
    let session = e.chain().find_map(|c| c.downcast_ref::<SessionError>());
    let kind = session.map_or("error", SessionError::kind);
    let hint = session.and_then(SessionError::hint);
    report_error(kind, &chain_text(e), hint.as_deref());
}

/// An error and its causes on one line, `outer: inner`, each said once: many errors already
/// name their cause in their own message, and printing it again as a cause would repeat it.
pub fn chain_text(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain() {
        let message = cause.to_string();
        if text.contains(&message) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&message);
    }
    text
}

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
    use comfy_table::{Attribute, Cell, Color};
    let mut t = table(["STEP", "ACTION", "TIER", "UNDO", "RULE / WHY"]);
    for &i in &v.order {
        let s = &v.workflow.steps[i];
        let r = &v.risk[i];
        let tier = Cell::new(r.tier.as_str());
        let tier = if r.needs_approval() {
            tier.fg(Color::Yellow).add_attribute(Attribute::Bold)
        } else {
            tier.fg(Color::Green)
        };
        let pause = if r.needs_approval() {
            " (pauses for approval)"
        } else {
            ""
        };
        t.add_row(vec![
            Cell::new(&s.id),
            Cell::new(s.kind().as_str()),
            tier,
            Cell::new(state_label(&v.inverse[i])),
            Cell::new(format!("{}: {}{pause}", r.rule, r.reason)),
        ]);
    }
    write_table(t, "  ", w);
}

fn session(args: &StateArgs, pass: &PassphraseSource) -> anyhow::Result<Session> {
    crate::state::open(&args.locate.dir()?, pass, Access::Read)
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
        return Ok(exit::OK);
    }
    let mut table = table(["RUN", "STATE", "WORKFLOW", "STEPS", "SANDBOX", "STARTED"]);
    for r in &runs {
        let done = r
            .steps
            .iter()
            .filter(|s| s.state == StepState::Succeeded)
            .count();
        table.add_row([
            r.run_id.clone(),
            state_label(&r.state),
            r.workflow.clone(),
            format!("{done}/{}", r.steps.len()),
            r.backend.clone(),
            r.started_at.clone(),
        ]);
    }
    print_table(table);
    Ok(exit::OK)
}

/// A table for the terminal: borderless, columns aligned, fitted to the terminal's width when
/// there is one; no colours or styling when `NO_COLOR` is set or stdout is not a terminal.
pub fn table<const N: usize>(header: [&str; N]) -> comfy_table::Table {
    use comfy_table::{ContentArrangement, Table, presets};
    let mut t = Table::new();
    t.load_preset(presets::NOTHING)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_header(header);
    if console::colors_enabled() {
        t.enforce_styling();
    } else {
        t.force_no_tty();
    }
    t
}

/// Print a [`table`] on stdout.
pub fn print_table(t: comfy_table::Table) {
    write_table(t, "", &mut std::io::stdout().lock());
}

/// Write a [`table`]: each line after `indent`, two spaces between columns, none at the line
/// ends.
pub fn write_table(mut t: comfy_table::Table, indent: &str, w: &mut dyn std::io::Write) {
    for column in t.column_iter_mut() {
        column.set_padding((0, 2));
    }
    for line in t.lines() {
        // A reader that stopped reading (`| head`) ends the listing.
        if writeln!(w, "{indent}{}", line.trim_end()).is_err() {
            return;
        }
    }
}

/// A state (or any unit enum) as its serialised name: `succeeded`, `awaiting_approval`.
pub fn state_label<T: serde::Serialize>(s: &T) -> String {
    serde_json::to_value(s)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

pub fn show(run: &str, args: &StateArgs, pass: &PassphraseSource) -> anyhow::Result<u8> {
    let r: RunRecord = session(args, pass)?.show(run)?;
    let run_ref = crate::state::run_ref(&args.locate.dir()?, &r);
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
    if let Some(m) = &r.screening {
        println!("screening {m}");
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
        if let Some(w) = screening_warning(s) {
            println!("           {}", style(w).yellow().bold());
        }
        if !s.untrusted_inputs.is_empty() {
            println!(
                "           took flagged content: {}",
                s.untrusted_inputs.join(", ")
            );
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
        print_output_head(&run_ref, s, SHOW_LINES);
    }
    Ok(exit::OK)
}

/// The warning line for a step whose output the injection detector flagged: the step, the
/// strongest finding and the score.
pub fn screening_warning(s: &secureclaw_engine::record::StepRecord) -> Option<String> {
    let sc = s.screening.as_ref().filter(|sc| sc.flagged)?;
    Some(format!(
        "warning: untrusted content: step `{}` output looks like a prompt injection ({}, score {:.2}); steps that use it wait for approval",
        s.id,
        sc.headline(),
        sc.score
    ))
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

/// Lines of a step's output `show` prints; the rest is counted and `logs` has it all.
const SHOW_LINES: usize = 5;

/// The first `max` lines of a step's output, then how many more there are and where to read
/// them.
fn print_output_head(run: &str, s: &secureclaw_engine::record::StepRecord, max: usize) {
    let text = &s.output;
    let total = text.lines().count();
    for line in text.lines().take(max) {
        println!("           | {line}");
    }
    if total > max {
        println!(
            "           {}",
            style(format!(
                "… {} more line{} (secureclaw logs {run} --step {})",
                total - max,
                if total - max == 1 { "" } else { "s" },
                s.id
            ))
            .dim()
        );
    }
}
