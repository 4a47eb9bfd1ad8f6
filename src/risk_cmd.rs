//! `secureclaw risk [--json] [CMD...]`: rate shell commands before putting them in a workflow.
//!
//! Prints each command's tier, the rule that set it and why; other rules that also matched (a
//! `curl ... | sh` is network egress *and* destructive) are listed under it.

use std::io::{BufRead, Write};

use anyhow::Context as _;
use console::Style;
use secureclaw_engine::tools::risk::{Assessment, Tier, classify_shell};

#[derive(Debug, clap::Args)]
pub struct RiskArgs {
    /// Print one JSON object per command (JSON lines) instead of the aligned table.
    #[arg(long)]
    pub json: bool,
    /// Commands to rate, one shell command line per argument (quote them). With none, reads one
    /// command per line from standard input.
    pub commands: Vec<String>,
}

#[derive(serde::Serialize)]
struct JsonLine<'a> {
    command: &'a str,
    #[serde(flatten)]
    assessment: &'a Assessment,
    /// Set when the optional risk model (feature `ml`) raises the tier; it never lowers it.
    #[serde(skip_serializing_if = "Option::is_none")]
    model_raise: Option<&'a secureclaw_engine::tools::guard::RiskRaise>,
}

pub fn run(args: RiskArgs) -> anyhow::Result<i32> {
    let commands = if args.commands.is_empty() {
        let mut lines = Vec::new();
        for line in std::io::stdin().lock().lines() {
            let line = line.context("reading commands from standard input")?;
            if !line.trim().is_empty() {
                lines.push(line);
            }
        }
        lines
    } else {
        args.commands
    };
    let results: Vec<(String, Assessment)> = commands
        .into_iter()
        .map(|c| {
            let a = classify_shell(&c);
            (c, a)
        })
        .collect();

    // The optional model (feature `ml` and its files) may raise a tier, as in a run.
    let (model, _status) = secureclaw_engine::tools::guard::load_risk_model();
    let raises: Vec<Option<secureclaw_engine::tools::guard::RiskRaise>> = results
        .iter()
        .map(|(command, a)| {
            let model = model.as_ref()?;
            let heuristic = secureclaw_engine::tools::guard::ModelTier::parse(a.tier.as_str())?;
            model.assess(command, heuristic).ok().flatten()
        })
        .collect();

    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    if args.json {
        for ((command, assessment), raise) in results.iter().zip(&raises) {
            serde_json::to_writer(
                &mut out,
                &JsonLine {
                    command,
                    assessment,
                    model_raise: raise.as_ref(),
                },
            )
            .context("writing JSON")?;
            writeln!(out).context("writing to standard output")?;
        }
    } else {
        let color = console::Term::stdout().is_term() && console::colors_enabled();
        out.write_all(format_human(&results, color).as_bytes())
            .context("writing to standard output")?;
        for ((command, _), raise) in results.iter().zip(&raises) {
            if let Some(r) = raise {
                writeln!(
                    out,
                    "risk model raises `{command}` to {} (close to `{}`, similarity {:.2})",
                    r.tier, r.exemplar_text, r.score
                )
                .context("writing to standard output")?;
            }
        }
    }
    out.flush().context("writing to standard output")?;
    Ok(0)
}

fn tier_style(tier: Tier) -> Style {
    match tier {
        Tier::ReadOnly => Style::new().green(),
        Tier::LowWrite => Style::new().cyan(),
        Tier::Destructive => Style::new().red().bold(),
        Tier::NetworkEgress => Style::new().magenta().bold(),
    }
}

/// Width of the tier column: the longest tier name.
const TIER_WIDTH: usize = 14;

/// The human table: `TIER  RULE  COMMAND`, then the reason, then any other destructive or
/// network rule that also matched (`curl | sh` is both). Lesser matches are noise at a prompt;
/// `--json` has them all.
pub fn format_human(results: &[(String, Assessment)], color: bool) -> String {
    let rule_width = results
        .iter()
        .map(|(_, a)| a.rule.len())
        .chain(std::iter::once("RULE".len()))
        .max()
        .unwrap_or(4);
    let indent = " ".repeat(TIER_WIDTH + 2);
    let dim = Style::new().dim().force_styling(color);
    let mut out = String::new();
    out.push_str(&format!(
        "{}\n",
        dim.apply_to(format!(
            "{:<TIER_WIDTH$}  {:<rule_width$}  COMMAND",
            "TIER", "RULE"
        ))
    ));
    for (command, a) in results {
        let tier = tier_style(a.tier)
            .force_styling(color)
            .apply_to(format!("{:<TIER_WIDTH$}", a.tier.as_str()));
        let shown = command.replace('\n', "\\n");
        out.push_str(&format!("{tier}  {:<rule_width$}  {shown}\n", a.rule));
        out.push_str(&format!("{indent}{}\n", dim.apply_to(&a.reason)));
        let mut listed_top = false;
        for hit in &a.matched {
            if hit.tier < Tier::Destructive {
                continue;
            }
            // The headline rule is already shown once; list its other occurrences only.
            if !listed_top && hit.rule == a.rule && hit.tier == a.tier {
                listed_top = true;
                continue;
            }
            let t = tier_style(hit.tier)
                .force_styling(color)
                .apply_to(hit.tier.as_str());
            out.push_str(&format!(
                "{indent}+ {} ({t}) on `{}`: {}\n",
                hit.rule, hit.command, hit.reason
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate(cmds: &[&str]) -> Vec<(String, Assessment)> {
        cmds.iter()
            .map(|c| ((*c).to_string(), classify_shell(c)))
            .collect()
    }

    #[test]
    fn human_table_is_aligned_and_plain_without_color() {
        let text = format_human(&rate(&["ls -la", "rm -rf build"]), false);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("TIER            RULE"), "{text}");
        assert!(
            lines[1].starts_with("read_only       read-only     ls -la"),
            "{text}"
        );
        assert!(
            lines[3].starts_with("destructive     rm-recursive  rm -rf build"),
            "{text}"
        );
        assert!(!text.contains('\u{1b}'), "no escape codes without a TTY");
    }

    #[test]
    fn secondary_rules_are_listed() {
        let text = format_human(&rate(&["curl -fsSL https://sh.rustup.rs | sh"]), false);
        assert!(text.contains("network_egress  net-client"), "{text}");
        assert!(
            text.contains("+ pipe-to-shell (destructive) on `sh`"),
            "{text}"
        );
    }

    #[test]
    fn color_when_asked() {
        let text = format_human(&rate(&["rm -rf x"]), true);
        assert!(text.contains('\u{1b}'), "{text}");
    }

    #[test]
    fn json_line_shape() {
        let a = classify_shell("git push --force");
        let v = serde_json::to_value(JsonLine {
            command: "git push --force",
            assessment: &a,
            model_raise: None,
        })
        .unwrap_or_default();
        assert!(
            v.get("model_raise").is_none(),
            "absent unless the model raises"
        );
        assert_eq!(v["command"], "git push --force");
        assert_eq!(v["tier"], "network_egress");
        assert_eq!(v["rule"], "git-network");
        assert!(v["matched"].as_array().is_some_and(|m| m.len() >= 2));
    }
}
