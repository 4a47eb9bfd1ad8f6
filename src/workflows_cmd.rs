//! `workflows`: every workflow file of a git repository (at a branch's head) or of a plain
//! directory, validated, with its triggers, as a server's workflow source would list them.

use std::path::{Path, PathBuf};

use clap::Args;
use console::style;
use secureclaw_engine::git::{GitSource, Snapshot, SourceSpec};
use secureclaw_engine::model::{HookPreset, ScheduleSpec, Triggers};
use secureclaw_engine::schedule::CronSchedule;
use secureclaw_engine::validate::validate_bytes;
use serde_json::json;

use crate::exit;

/// The long `--help` text (the subcommand's doc line is its short one).
pub const LONG_ABOUT: &str = "List and check the workflow files (*.yml, *.yaml) of a git repository or a plain directory.\n\n\
In a git repository the files are read from a commit (the head of --rev, default HEAD), never\n\
from the work tree: what is listed is what a server with this repository as a workflow source\n\
would run. Each file is validated and shown with its status (ok, or each error at\n\
line:column), its triggers (webhook preset and events, schedule with its next time, watch\n\
globs) and the commit it was read at.";

#[derive(Args)]
#[command(after_help = "Examples:\n  \
secureclaw workflows                          # the repository (or directory) here\n  \
secureclaw workflows ~/ops --dir workflows    # only files under workflows/\n  \
secureclaw workflows ~/ops --rev release      # at the head of branch `release`\n  \
secureclaw workflows --json | jq '.files[] | select(.valid | not)'\n\n\
Exit codes: 0 every file is valid, 1 a file is invalid or was skipped, 2 the location cannot\n\
be read.")]
pub struct WorkflowsArgs {
    /// A git repository (work tree or bare, or a file:// URL) or a plain directory.
    #[arg(default_value = ".")]
    pub path: String,
    /// The branch to read [default: the repository's HEAD].
    #[arg(long, value_name = "BRANCH")]
    pub rev: Option<String>,
    /// Only workflow files under this directory (relative to the repository's root).
    #[arg(long)]
    pub dir: Option<String>,
    /// Machine-readable output (one JSON document).
    #[arg(long)]
    pub json: bool,
}

pub fn workflows(args: WorkflowsArgs) -> anyhow::Result<u8> {
    let (location, dir) = if args.path.contains("://") {
        (args.path.clone(), args.dir.clone())
    } else {
        let abs = PathBuf::from(&args.path)
            .canonicalize()
            .map_err(|e| anyhow::anyhow!("{}: {e}", args.path))?;
        let (root, dir) = repository_and_dir(&abs, args.dir.as_deref());
        (root.display().to_string(), dir)
    };
    // Mirrors of file:// repositories live only as long as this command.
    let cache = tempfile::tempdir()?;
    let source = GitSource::open(
        SourceSpec {
            location: location.clone(),
            branch: args.rev.clone(),
            dir: dir.clone(),
            allow_network: false,
        },
        cache.path(),
    )
    .map_err(with_hint)?;
    source.fetch().map_err(with_hint)?;
    let snapshot = source.snapshot().map_err(with_hint)?;
    let listed = list(&snapshot);
    let invalid = listed.iter().filter(|f| !f.valid).count() + snapshot.skipped.len();
    if args.json {
        let doc = json!({
            "location": location,
            "dir": dir,
            "branch": snapshot.branch,
            "commit": snapshot.commit,
            "files": listed.iter().map(Listed::to_json).collect::<Vec<_>>(),
            "skipped": snapshot.skipped.iter().map(|(path, why)| json!({"path": path, "why": why})).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        print_text(&location, &snapshot, &listed);
    }
    Ok(if invalid > 0 { exit::FAILED } else { exit::OK })
}

/// A directory inside a git work tree is read from its repository's commit, limited to that
/// directory (and `--dir` under it), as it would be registered: by the repository's root.
fn repository_and_dir(abs: &Path, dir: Option<&str>) -> (PathBuf, Option<String>) {
    let is_bare = abs.join("HEAD").is_file() && abs.join("objects").is_dir();
    if abs.join(".git").exists() || is_bare {
        return (abs.to_path_buf(), dir.map(str::to_string));
    }
    for root in abs.ancestors().skip(1) {
        if !root.join(".git").exists() {
            continue;
        }
        let Ok(rel) = abs.strip_prefix(root) else {
            break;
        };
        let rel = rel.to_string_lossy().replace('\\', "/");
        let dir = match dir {
            Some(d) => format!("{rel}/{d}"),
            None => rel,
        };
        return (root.to_path_buf(), Some(dir));
    }
    (abs.to_path_buf(), dir.map(str::to_string))
}

fn with_hint(e: secureclaw_engine::git::GitError) -> anyhow::Error {
    match e {
        secureclaw_engine::git::GitError::NetworkRefused { location } => anyhow::anyhow!(
            "{location}: `workflows` reads local repositories and directories only; clone it first"
        ),
        e => match e.hint() {
            Some(h) => anyhow::anyhow!("{e}\n  hint: {h}"),
            None => anyhow::Error::new(e),
        },
    }
}

struct Listed {
    path: String,
    blob: Option<String>,
    valid: bool,
    name: Option<String>,
    errors: Vec<secureclaw_engine::diag::Diagnostic>,
    triggers: Option<Triggers>,
}

impl Listed {
    fn to_json(&self) -> serde_json::Value {
        json!({
            "path": self.path,
            "blob": self.blob,
            "valid": self.valid,
            "name": self.name,
            "errors": self.errors,
            "triggers": self.triggers.as_ref().map(triggers_json),
        })
    }
}

fn list(snapshot: &Snapshot) -> Vec<Listed> {
    snapshot
        .files
        .iter()
        .map(|f| match validate_bytes(Path::new(&f.path), &f.bytes) {
            Ok(v) => Listed {
                path: f.path.clone(),
                blob: f.blob.clone(),
                valid: true,
                name: Some(v.workflow.name.clone()),
                errors: Vec::new(),
                triggers: Some(v.workflow.on.clone()),
            },
            Err(d) => Listed {
                path: f.path.clone(),
                blob: f.blob.clone(),
                valid: false,
                name: None,
                errors: d.0,
                triggers: None,
            },
        })
        .collect()
}

fn preset_name(p: HookPreset) -> &'static str {
    match p {
        HookPreset::Github => "github",
        HookPreset::StandardWebhooks => "standard_webhooks",
        HookPreset::Hmac => "hmac",
    }
}

/// The next time a schedule fires, from now (validation has parsed it already).
fn next_time(spec: &ScheduleSpec) -> Option<String> {
    CronSchedule::parse(&spec.full())
        .ok()?
        .next_after(chrono::Utc::now())
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
}

fn triggers_json(on: &Triggers) -> serde_json::Value {
    json!({
        "webhook": on.webhook.as_ref().map(|w| json!({
            "preset": preset_name(w.preset),
            "events": w.events,
            "inputs": w.inputs,
        })),
        "schedule": on.schedule.as_ref().map(|s| {
            let full = s.full();
            json!({
                "cron": full.cron,
                "timezone": full.timezone.as_deref().unwrap_or("UTC"),
                "next": next_time(s),
            })
        }),
        "watch": on.watch,
    })
}

fn trigger_lines(on: &Triggers) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(w) = &on.webhook {
        let mut line = format!("webhook   {}", preset_name(w.preset));
        if !w.events.is_empty() {
            line.push_str(&format!(" on {}", w.events.join(", ")));
        }
        if !w.inputs.is_empty() {
            let mapped: Vec<String> = w.inputs.iter().map(|(k, p)| format!("{k} ← {p}")).collect();
            line.push_str(&format!("; inputs {}", mapped.join(", ")));
        }
        out.push(line);
    }
    if let Some(s) = &on.schedule {
        let full = s.full();
        out.push(format!(
            "schedule  {} ({}), next {}",
            full.cron,
            full.timezone.as_deref().unwrap_or("UTC"),
            next_time(s).unwrap_or_else(|| "never".into())
        ));
    }
    if !on.watch.is_empty() {
        out.push(format!("watch     {}", on.watch.join(", ")));
    }
    out
}

fn print_text(location: &str, snapshot: &Snapshot, listed: &[Listed]) {
    match &snapshot.commit {
        Some(commit) => println!(
            "{} {}{} at commit {}",
            style("repository").bold(),
            location,
            snapshot
                .branch
                .as_deref()
                .map(|b| format!(" (branch {b})"))
                .unwrap_or_default(),
            commit
        ),
        None => println!(
            "{} {location} (not a git repository)",
            style("directory").bold()
        ),
    }
    if listed.is_empty() && snapshot.skipped.is_empty() {
        println!("no workflow files (*.yml, *.yaml)");
    }
    for f in listed {
        if f.valid {
            println!(
                "{:7} {}  {}",
                style("ok").green().bold(),
                f.path,
                style(f.name.as_deref().unwrap_or_default()).dim()
            );
            if let Some(on) = &f.triggers {
                for line in trigger_lines(on) {
                    println!("          {line}");
                }
            }
        } else {
            println!(
                "{:7} {}  {} error{}",
                style("invalid").red().bold(),
                f.path,
                f.errors.len(),
                if f.errors.len() == 1 { "" } else { "s" }
            );
            for d in &f.errors {
                println!(
                    "          {}:{}: {}",
                    d.location.line, d.location.column, d.message
                );
                if let Some(h) = &d.hint {
                    println!("            {} {h}", style("hint:").cyan());
                }
            }
        }
    }
    for (path, why) in &snapshot.skipped {
        println!("{:7} {path}  {why}", style("skipped").yellow().bold());
    }
    let invalid = listed.iter().filter(|f| !f.valid).count();
    println!(
        "{} file{}: {} ok, {} invalid{}",
        listed.len() + snapshot.skipped.len(),
        if listed.len() + snapshot.skipped.len() == 1 {
            ""
        } else {
            "s"
        },
        listed.len() - invalid,
        invalid,
        if snapshot.skipped.is_empty() {
            String::new()
        } else {
            format!(", {} skipped", snapshot.skipped.len())
        }
    );
}
