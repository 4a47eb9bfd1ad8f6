//! `rerun`: run a recorded run's workflow again, exactly as committed at the commit it ran
//! from, with its recorded inputs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use clap::Args;
use console::style;
use secureclaw_engine::git;
use secureclaw_engine::record::{Provenance, RunRecord};
use secureclaw_engine::session::{Access, PassphraseSource};
use secureclaw_engine::validate::{self, Validated};

use crate::exit;
use crate::run_cmd::{self, RunOptions, Start, sha256_hex};

/// The long `--help` text (the subcommand's doc line is its short one).
pub const LONG_ABOUT: &str = "Run a recorded run's workflow again, at exactly the commit it ran from.\n\n\
The run must have git provenance (its file was inside a git work tree). The file is read\n\
from the recorded commit, never from the work tree, and must be the recorded blob. The\n\
recorded inputs are used again, except secret ones (never recorded: give them again);\n\
`--input` and `--input-file` override them. The run happens in the recorded workspace unless\n\
`--workspace` says otherwise, and is recorded as started by `rerun:RUN`. The recorded run is\n\
looked up in --state-dir (default ./.secureclaw), and the new run is recorded there too.";

#[derive(Args)]
#[command(
    after_help = "If the recorded run's work tree had uncommitted changes, the text that ran may not be the\n\
committed one: rerun refuses, unless --allow-dirty and a text with the recorded SHA-256 is\n\
found (the committed file, or the current file in the work tree)."
)]
pub struct RerunArgs {
    /// Run id, a unique prefix of it, or `last`.
    pub run: String,
    /// Re-run a run whose work tree had uncommitted changes, if the exact text that ran (by its
    /// recorded SHA-256) is the committed file or the current one.
    #[arg(long)]
    pub allow_dirty: bool,
    #[command(flatten)]
    pub opts: RunOptions,
}

pub fn rerun(args: RerunArgs, pass: &PassphraseSource) -> anyhow::Result<u8> {
    run_cmd::cancellable(|cancel| async move {
        let cwd = std::env::current_dir()?;
        let state = crate::state_dir(args.opts.state_dir.as_ref(), &cwd);
        let session = crate::state::open(&state, pass, Access::Write { create: false })?;
        let record = session.show(&args.run)?;
        let workflow = match recorded_workflow(&record, args.allow_dirty) {
            Ok(Some(w)) => w,
            Ok(None) => return Ok(exit::INVALID),
            Err(refusal) => {
                refusal.print();
                return Ok(exit::INVALID);
            }
        };
        let secret_not_given = secrets_not_given(&workflow, &args.opts);
        if !secret_not_given.is_empty() {
            Refusal {
                why: format!(
                    "secret input{} {} of run {} {} not recorded",
                    if secret_not_given.len() == 1 { "" } else { "s" },
                    names(&secret_not_given),
                    record.run_id,
                    if secret_not_given.len() == 1 {
                        "was"
                    } else {
                        "were"
                    },
                ),
                hint: format!(
                    "give {} again, e.g. --input {}=@env:VAR (or --input-file, or NAME=@- for stdin)",
                    if secret_not_given.len() == 1 {
                        "it"
                    } else {
                        "them"
                    },
                    secret_not_given[0]
                ),
            }
            .print();
            return Ok(exit::INVALID);
        }
        let recorded_inputs: BTreeMap<String, serde_json::Value> = record
            .inputs
            .iter()
            .filter(|(name, _)| {
                workflow
                    .workflow
                    .inputs
                    .get(*name)
                    .is_some_and(|spec| !spec.secret)
            })
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let workspace = match &args.opts.workspace {
            Some(w) => w.clone(),
            None => record.workspace.clone(),
        };
        if !run_cmd::state_layout_ok(&workspace, &state) {
            return Ok(exit::INVALID);
        }
        let start = Start {
            workflow,
            recorded_inputs,
            workspace,
            state,
            started_by: Some(format!("rerun:{}", record.run_id)),
        };
        run_cmd::start_run(start, &args.opts, pass, Some(session), cancel).await
    })
}

/// Why a re-run is refused, and what to do instead.
struct Refusal {
    why: String,
    hint: String,
}

impl Refusal {
    fn print(&self) {
        crate::output::report_error("invalid", &self.why, Some(&self.hint));
    }
}

/// The workflow exactly as the recorded run had it, validated, with its provenance; `None`
/// when it does not validate (the diagnostics are printed).
fn recorded_workflow(record: &RunRecord, allow_dirty: bool) -> Result<Option<Validated>, Refusal> {
    let Some(prov) = &record.provenance else {
        return Err(Refusal {
            why: format!(
                "run {} has no git provenance: its workflow file {} was not committed in a git repository when it ran",
                record.run_id,
                record.workflow_file.display()
            ),
            hint: format!(
                "re-run it by file: secureclaw run {} --workspace {}",
                record.workflow_file.display(),
                record.workspace.display()
            ),
        });
    };
    let short = &prov.commit[..prov.commit.len().min(12)];
    let committed = git::read_blob(Path::new(&prov.repository), &prov.commit, &prov.path)
        .map_err(|e| Refusal {
            why: format!(
                "cannot read {} at commit {} in {}: {e}",
                prov.path, prov.commit, prov.repository
            ),
            hint: e.hint().map(str::to_string).unwrap_or_else(|| {
                "the commit must still exist in the repository the run recorded (a rewritten history or a moved repository loses it)".into()
            }),
        })?;
    let actual_blob = git::blob_id(&committed.bytes).map_err(|e| Refusal {
        why: format!("cannot hash {} at commit {short}: {e}", prov.path),
        hint: "check the repository".into(),
    })?;
    if actual_blob != prov.blob || committed.blob.as_deref() != Some(prov.blob.as_str()) {
        return Err(Refusal {
            why: format!(
                "{} at commit {short} is blob {actual_blob}, but run {} recorded blob {}: this is not the text that ran",
                prov.path, record.run_id, prov.blob
            ),
            hint: "the record and the repository disagree (a rewritten history, or a record for another repository); nothing was run".into(),
        });
    }
    let (bytes, dirty, shown_as) = if !prov.dirty {
        (
            committed.bytes,
            false,
            PathBuf::from(format!("{}@{short}", prov.path)),
        )
    } else {
        let current_path = Path::new(&prov.repository).join(&prov.path);
        let explain = format!(
            "run {} ran {} from a work tree with uncommitted changes: the text that ran may not be the one committed at {short} (its SHA-256 is recorded: {})",
            record.run_id, prov.path, record.workflow_sha256
        );
        if !allow_dirty {
            return Err(Refusal {
                why: explain,
                hint: format!(
                    "pass --allow-dirty to run the text with that SHA-256 if it is still there (the committed file, or {}); or re-run it by file",
                    current_path.display()
                ),
            });
        }
        if sha256_hex(&committed.bytes) == record.workflow_sha256 {
            (
                committed.bytes,
                false,
                PathBuf::from(format!("{}@{short}", prov.path)),
            )
        } else {
            match std::fs::read(&current_path) {
                Ok(now) if sha256_hex(&now) == record.workflow_sha256 => {
                    (now, true, current_path.clone())
                }
                _ => {
                    return Err(Refusal {
                        why: format!(
                            "{explain}; neither the committed file nor {} has that SHA-256 now",
                            current_path.display()
                        ),
                        hint: "the text that ran is gone; run the file as it is now with `secureclaw run`".into(),
                    });
                }
            }
        }
    };
    match validate::validate_bytes(&shown_as, &bytes) {
        Ok(mut v) => {
            v.provenance = Some(Provenance {
                dirty,
                ..prov.clone()
            });
            Ok(Some(v))
        }
        Err(diags) => {
            for d in diags.iter() {
                crate::output::print_diagnostic(d);
            }
            eprintln!(
                "{}",
                style(format!(
                    "{} error(s) in {} at {short}: nothing was run",
                    diags.len(),
                    prov.path
                ))
                .red()
                .bold()
            );
            Ok(None)
        }
    }
}

/// Secret inputs without a default that no flag gives again (an `--input-file` may give any,
/// so with one nothing is reported here: the input check after it names what is missing).
fn secrets_not_given(workflow: &Validated, opts: &RunOptions) -> Vec<String> {
    if opts.input_file.is_some() {
        return Vec::new();
    }
    let given: Vec<&str> = opts
        .inputs
        .iter()
        .filter_map(|pair| pair.split_once('=').map(|(name, _)| name))
        .collect();
    workflow
        .workflow
        .inputs
        .iter()
        .filter(|(name, spec)| {
            spec.secret && spec.default.is_none() && !given.contains(&name.as_str())
        })
        .map(|(name, _)| name.clone())
        .collect()
}

fn names(list: &[String]) -> String {
    list.iter()
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ")
}
