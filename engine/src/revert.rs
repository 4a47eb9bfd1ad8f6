//! Revert: undo what a recorded run did, newest effect first, refusing to clobber newer work.
//!
//! A plan lists, per step, what undoing it means (restore pre-images, run a compensation, flag
//! for manual review, or nothing) and every path whose current state is neither the state the
//! run left nor the state it found (drift: someone edited it since). Applying a plan restores
//! step by step, saving the run record after each (the step becomes `reverted`), so a revert
//! that crashes resumes where it stopped; restoring a path already in its pre state is a no-op.

use std::collections::{BTreeMap, BTreeSet};

use secureclaw_vault::kind;
use serde::Serialize;
use serde_json::{Value, json};

use crate::model::{ActionKind, Compensate};
use crate::record::{RunRecord, RunStore, StepState, StoreError, now_rfc3339};
use crate::snapshot::{ChangeSet, EntryKind, RelPath, SETID_BITS, SnapshotError, Snapshotter};
use crate::validate::InverseClass;

/// How many changes the ledger entry lists in full; the digest covers all of them.
const LEDGER_CHANGES: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum RevertError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error("run `{run}` has no step `{step}`")]
    NoStep { run: String, step: String },
    #[error(
        "reverting `{step}` alone would break later steps that touched the same paths ({later}); add --cascade to revert them too"
    )]
    NeedsCascade { step: String, later: String },
    #[error("run `{0}` is still running; wait for it (or for the engine to be found dead) first")]
    Running(String),
}

/// The inverse stored with a step's ledger entry. Content and change-set hashes go through
/// `digest` (the run store's keyed digest): a plain SHA-256 of a file in an export would confirm
/// a guessed content.
pub fn inverse_json(
    class: InverseClass,
    changes: &ChangeSet,
    compensate: Option<&Compensate>,
    digest: &dyn Fn(&str, &[u8]) -> String,
) -> Value {
    let content = |h: &Option<String>| h.as_ref().map(|h| digest("content", h.as_bytes()));
    match class {
        InverseClass::Restore => json!({
            "class": class,
            "restore": changes.changes.iter().take(LEDGER_CHANGES).map(|c| json!({
                "path": c.path, "what": c.what(),
                "pre": c.pre.as_ref().map(|e| json!({"kind": e.kind, "mode": e.mode, "content_hmac": content(&e.sha256), "blob": e.blob, "target": e.target})),
                "post": c.post.as_ref().map(|e| json!({"kind": e.kind, "mode": e.mode, "content_hmac": content(&e.sha256), "target": e.target})),
            })).collect::<Vec<_>>(),
            "paths": changes.len(),
            "changes_hmac": digest("changes", changes.digest().as_bytes()),
        }),
        InverseClass::Compensate => json!({"class": class, "compensate": compensate}),
        InverseClass::Pivot => json!({"class": class, "manual_review": true}),
        InverseClass::None => json!({"class": class}),
    }
}

#[derive(Debug, Clone, Default)]
pub struct RevertRequest {
    /// Revert this step only (with `cascade`, also what consumed its effects).
    pub step: Option<String>,
    pub cascade: bool,
    /// Overwrite paths edited since the run.
    pub force: bool,
}

/// What undoing one step means.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "snake_case", tag = "action")]
pub enum StepAction {
    Restore {
        changes: ChangeSet,
    },
    /// Call the step's declared `compensate` http action (retried, with a timeout).
    Compensate {
        compensate: Box<Compensate>,
    },
    /// Irreversible (a pivot), or a compensation this version does not run: a person has to look.
    ManualReview {
        reason: String,
    },
}

impl StepAction {
    /// A word for events and logs: `restore`, `compensate` or `manual_review`.
    pub fn label(&self) -> &'static str {
        match self {
            StepAction::Restore { .. } => "restore",
            StepAction::Compensate { .. } => "compensate",
            StepAction::ManualReview { .. } => "manual_review",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct PlannedStep {
    pub id: String,
    #[serde(flatten)]
    pub action: StepAction,
}

/// A path that no longer holds what the run left there.
#[derive(Debug, Clone, Serialize)]
pub struct Conflict {
    pub step: String,
    pub path: RelPath,
    pub expected: String,
    pub found: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct RevertPlan {
    pub run_id: String,
    pub whole_run: bool,
    /// In the order they will be undone.
    pub steps: Vec<PlannedStep>,
    /// Steps a previous, interrupted revert already undid.
    pub already_reverted: Vec<String>,
    pub conflicts: Vec<Conflict>,
}

pub use crate::record::RevertSummary;

/// The outcome of [`apply`].
#[derive(Debug, Clone, Serialize)]
pub struct RevertReport {
    pub run_id: String,
    pub summary: RevertSummary,
    pub conflicts: Vec<Conflict>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pre_run_manifest: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub manifest_now: Option<String>,
}

/// The change set of each step that has one; the step the engine died in is recovered from
/// its in-flight pre-manifest and the workspace as it is now.
pub fn step_changes(
    snap: &Snapshotter,
    record: &RunRecord,
) -> Result<BTreeMap<String, ChangeSet>, RevertError> {
    let mut out = BTreeMap::new();
    for s in &record.steps {
        if let Some(c) = &s.changes {
            out.insert(s.id.clone(), c.clone());
        } else if s.state != StepState::Reverted
            && s.kind.may_write()
            && let Some(c) =
                crate::snapshot::load_step_changes(snap.vault(), &record.run_id, &s.id)?
        {
            out.insert(s.id.clone(), c);
        }
    }
    // The in-flight record only outlives a run whose engine died during a writing step.
    if let Some(inflight) = crate::snapshot::load_inflight(snap.vault(), &record.run_id)?
        && !out.contains_key(&inflight.step)
        && record
            .step(&inflight.step)
            .is_some_and(|s| s.state != StepState::Reverted)
    {
        let now = snap.scan(Some(&inflight.pre))?;
        out.insert(
            inflight.step.clone(),
            crate::snapshot::diff(&inflight.pre, &now),
        );
    }
    Ok(out)
}

/// Steps in the order they are undone: last finished first (writers never overlap, and a step
/// finishes after everything it needs, so this is a reverse topological order of the DAG).
fn undo_order(record: &RunRecord) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..record.steps.len()).collect();
    idx.sort_by(|&a, &b| {
        let key = |i: usize| {
            let s = &record.steps[i];
            (
                s.finished_at.clone().or_else(|| s.started_at.clone()),
                s.write_seq,
                i,
            )
        };
        key(b).cmp(&key(a))
    });
    idx
}

/// A revert restores set-user-ID and set-group-ID bits only onto a file that had them, with
/// the same content, before the run (`executed`: the steps in the order they ran). Every step's result is swept for such bits, so a step's
/// pre-state holds them only when the run found them; this also holds for records written
/// before the sweep existed, where a step could have planted one that a later step's
/// pre-image now carries.
fn strip_planted_setid(changes: &mut BTreeMap<String, ChangeSet>, executed: &[&str]) {
    let mut before_run: BTreeMap<RelPath, Option<crate::snapshot::Entry>> = BTreeMap::new();
    for id in executed {
        if let Some(set) = changes.get(*id) {
            for c in &set.changes {
                before_run
                    .entry(c.path.clone())
                    .or_insert_with(|| c.pre.clone());
            }
        }
    }
    for set in changes.values_mut() {
        for c in &mut set.changes {
            let Some(pre) = c.pre.as_mut() else { continue };
            if pre.kind != EntryKind::File || pre.mode & SETID_BITS == 0 {
                continue;
            }
            let allowed = before_run
                .get(&c.path)
                .and_then(Option::as_ref)
                .filter(|orig| orig.kind == EntryKind::File && orig.sha256 == pre.sha256)
                .map_or(0, |orig| orig.mode & SETID_BITS);
            pre.mode &= !(SETID_BITS & !allowed);
        }
    }
}

pub fn plan(
    snap: &Snapshotter,
    record: &RunRecord,
    req: &RevertRequest,
) -> Result<RevertPlan, RevertError> {
    let mut changes = step_changes(snap, record)?;
    let order = undo_order(record);
    let executed: Vec<&str> = order
        .iter()
        .rev()
        .map(|&i| record.steps[i].id.as_str())
        .collect();
    strip_planted_setid(&mut changes, &executed);
    let paths_of = |id: &str| -> BTreeSet<RelPath> {
        changes
            .get(id)
            .map(|c| c.changes.iter().map(|c| c.path.clone()).collect())
            .unwrap_or_default()
    };
    let selected: BTreeSet<String> = match &req.step {
        None => record.steps.iter().map(|s| s.id.clone()).collect(),
        Some(id) => {
            if record.step(id).is_none() {
                return Err(RevertError::NoStep {
                    run: record.run_id.clone(),
                    step: id.clone(),
                });
            }
            let pos = |id: &str| {
                order
                    .iter()
                    .position(|&i| record.steps[i].id == id)
                    .unwrap_or(0)
            };
            // Later steps (earlier in undo order) that touched the same paths, or consumed the
            // step's effects through `needs`, transitively.
            let mut sel: BTreeSet<String> = BTreeSet::from([id.clone()]);
            let mut touched = paths_of(id);
            let mut later = Vec::new();
            loop {
                let mut grew = false;
                for &i in &order {
                    let s = &record.steps[i];
                    if sel.contains(&s.id) {
                        continue;
                    }
                    let after_some = sel.iter().any(|x| pos(&s.id) < pos(x));
                    let overlaps =
                        after_some && paths_of(&s.id).iter().any(|p| touched.contains(p));
                    let depends = req.cascade && s.needs.iter().any(|n| sel.contains(n));
                    if overlaps || depends {
                        if overlaps && !req.cascade {
                            later.push(s.id.clone());
                            continue;
                        }
                        sel.insert(s.id.clone());
                        touched.extend(paths_of(&s.id));
                        grew = true;
                    }
                }
                if !grew || !req.cascade {
                    break;
                }
            }
            if !later.is_empty() {
                later.sort();
                later.dedup();
                return Err(RevertError::NeedsCascade {
                    step: id.clone(),
                    later: later.join(", "),
                });
            }
            sel
        }
    };
    let mut steps = Vec::new();
    let mut already = Vec::new();
    for &i in &order {
        let s = &record.steps[i];
        if !selected.contains(&s.id) {
            continue;
        }
        if s.state == StepState::Reverted {
            already.push(s.id.clone());
            continue;
        }
        let action = if let Some(c) = changes.get(&s.id) {
            if c.is_empty() {
                continue;
            }
            StepAction::Restore { changes: c.clone() }
        } else if s.kind == ActionKind::Http && s.state == StepState::Succeeded {
            match &s.compensate {
                Some(c) if c.http.is_some() => StepAction::Compensate { compensate: Box::new(c.clone()) },
                Some(_) => StepAction::ManualReview {
                    reason: "its `compensate` is a shell command, which revert does not run: run it by hand (it is in the step's ledger entry)".into(),
                },
                None if s.inverse == InverseClass::Compensate => StepAction::ManualReview {
                    reason: "its `compensate` action was not recorded with the run: run it by hand (it is in the step's ledger entry)".into(),
                },
                None => StepAction::ManualReview {
                    reason: "an http call with no `compensate` action (a pivot): it cannot be undone automatically".into(),
                },
            }
        } else if s.kind.may_write() && s.state == StepState::Succeeded {
            StepAction::ManualReview {
                reason: "it may have written but no change set was recorded".into(),
            }
        } else {
            continue;
        };
        steps.push(PlannedStep {
            id: s.id.clone(),
            action,
        });
    }
    let conflicts = drift(snap, &steps)?;
    Ok(RevertPlan {
        run_id: record.run_id.clone(),
        whole_run: req.step.is_none(),
        steps,
        already_reverted: already,
        conflicts,
    })
}

fn state_text(e: Option<&crate::snapshot::Entry>) -> String {
    match e {
        None => "absent".into(),
        Some(e) => match &e.sha256 {
            Some(h) => format!("{} (sha256 {})", e.describe(), &h[..12.min(h.len())]),
            None => e.describe(),
        },
    }
}

fn same(a: Option<&crate::snapshot::Entry>, b: Option<&crate::snapshot::Entry>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => a.same_state(b),
        _ => false,
    }
}

/// Paths whose current state is neither what the newest step touching them left nor what it
/// found (the latter: already reverted by an interrupted revert).
fn drift(snap: &Snapshotter, steps: &[PlannedStep]) -> Result<Vec<Conflict>, RevertError> {
    let mut seen = BTreeSet::new();
    let mut all_paths = BTreeSet::new();
    for s in steps {
        if let StepAction::Restore { changes } = &s.action {
            all_paths.extend(changes.changes.iter().map(|c| c.path.clone()));
        }
    }
    let mut out = Vec::new();
    for s in steps {
        let StepAction::Restore { changes } = &s.action else {
            continue;
        };
        for c in &changes.changes {
            if !seen.insert(c.path.clone()) {
                continue;
            }
            let now = snap.current(&c.path, c.post.as_ref())?;
            if !same(now.as_ref(), c.post.as_ref()) && !same(now.as_ref(), c.pre.as_ref()) {
                out.push(Conflict {
                    step: s.id.clone(),
                    path: c.path.clone(),
                    expected: state_text(c.post.as_ref()),
                    found: state_text(now.as_ref()),
                });
                continue;
            }
            // A directory the revert removes must not hold anything the run did not create.
            let removes_dir = c.post.as_ref().is_some_and(|e| e.kind == EntryKind::Dir)
                && c.pre.as_ref().is_none_or(|e| e.kind != EntryKind::Dir);
            if removes_dir && let Ok(rd) = std::fs::read_dir(snap.abs(&c.path)) {
                for de in rd.flatten() {
                    let mut p = c.path.0.clone();
                    p.push(b'/');
                    p.extend_from_slice(std::os::unix::ffi::OsStrExt::as_bytes(
                        de.file_name().as_os_str(),
                    ));
                    let p = RelPath(p);
                    if !all_paths.contains(&p) {
                        out.push(Conflict {
                            step: s.id.clone(),
                            path: p,
                            expected: "absent (inside a directory the run created)".into(),
                            found: "present (added since the run)".into(),
                        });
                    }
                }
            }
        }
    }
    Ok(out)
}

/// Carry out a plan (refusing on conflicts unless forced), recording progress and the ledger.
pub async fn apply(
    store: &RunStore,
    snap: &Snapshotter,
    record: &mut RunRecord,
    plan: &RevertPlan,
    req: &RevertRequest,
) -> Result<RevertReport, RevertError> {
    if record.state == crate::record::RunState::Running {
        return Err(RevertError::Running(record.run_id.clone()));
    }
    let resuming = record
        .reverts
        .last()
        .is_some_and(|r| r.state == "in_progress");
    if !resuming {
        record.reverts.push(RevertSummary {
            started_at: now_rfc3339(),
            finished_at: None,
            step: req.step.clone(),
            cascade: req.cascade,
            force: req.force,
            state: "in_progress".into(),
            reverted: Vec::new(),
            manual_review: Vec::new(),
            failures: Vec::new(),
            verified: None,
        });
    }
    let run = record.run_id.clone();
    store.record(
        store
            .entry(kind::REVERT_STARTED)
            .run(run.clone())
            .result(json!({
                "step": req.step, "cascade": req.cascade, "force": req.force, "resumed": resuming,
                "plan": plan.steps.iter().map(|s| &s.id).collect::<Vec<_>>(),
                "conflicts": plan.conflicts.len(),
            })),
    );
    let mut summary = record
        .reverts
        .last()
        .cloned()
        .unwrap_or_else(|| RevertSummary {
            started_at: now_rfc3339(),
            finished_at: None,
            step: None,
            cascade: false,
            force: false,
            state: String::new(),
            reverted: Vec::new(),
            manual_review: Vec::new(),
            failures: Vec::new(),
            verified: None,
        });
    let finish = |record: &mut RunRecord,
                  summary: RevertSummary,
                  now: Option<String>|
     -> Result<RevertReport, RevertError> {
        store.record(
            store
                .entry(kind::REVERT_FINISHED)
                .run(run.clone())
                .manifests(now.clone(), record.pre_manifest.clone())
                .result(json!(summary)),
        );
        if let Some(last) = record.reverts.last_mut() {
            *last = summary.clone();
        }
        store.save(record)?;
        Ok(RevertReport {
            run_id: run.clone(),
            summary,
            conflicts: plan.conflicts.clone(),
            pre_run_manifest: record.pre_manifest.clone(),
            manifest_now: now,
        })
    };
    if !plan.conflicts.is_empty() && !req.force {
        summary.state = "conflict".into();
        summary.finished_at = Some(now_rfc3339());
        return finish(record, summary, None);
    }
    store.save_async(record).await?;
    for p in &plan.steps {
        let Some(i) = record.steps.iter().position(|s| s.id == p.id) else {
            continue;
        };
        match &p.action {
            StepAction::Restore { changes } => {
                let rec = &record.steps[i];
                let entry = store
                    .entry(kind::ACTION_REVERTED)
                    .run(run.clone())
                    .step(p.id.clone())
                    .manifests(rec.post_manifest.clone(), rec.pre_manifest.clone());
                match snap.restore(&changes.changes) {
                    Ok(n) => {
                        store.record(entry.result(json!({"ok": true, "paths": changes.len(), "written": n, "changes_hmac": store.digest("changes", changes.digest().as_bytes())})));
                        record.steps[i].state = StepState::Reverted;
                        summary.reverted.push(p.id.clone());
                    }
                    Err(e) => {
                        store.record(entry.result(json!({"ok": false, "error": e.to_string()})));
                        summary.failures.push(format!("{}: {e}", p.id));
                        summary.state = "failed".into();
                        summary.finished_at = Some(now_rfc3339());
                        // Restores depend on each other (older steps expect newer ones undone).
                        return finish(record, summary, None);
                    }
                }
            }
            StepAction::Compensate { compensate } => {
                let entry = store
                    .entry(kind::ACTION_REVERTED)
                    .run(run.clone())
                    .step(p.id.clone());
                match compensate_http(record, &record.steps[i], compensate).await {
                    Ok(r) => {
                        store.record(entry.result(json!({"ok": true, "compensation": "http", "status": r.status, "attempts": r.attempts})));
                        record.steps[i].state = StepState::Reverted;
                        summary.reverted.push(p.id.clone());
                    }
                    // Reported on its own; the other steps are still undone.
                    Err(e) => {
                        store.record(
                            entry.result(json!({"ok": false, "compensation": "http", "error": e})),
                        );
                        summary
                            .failures
                            .push(format!("{}: compensation failed: {e}", p.id));
                    }
                }
            }
            StepAction::ManualReview { reason } => {
                store.record(
                    store
                        .entry(kind::ACTION_REVERTED)
                        .run(run.clone())
                        .step(p.id.clone())
                        .result(json!({"ok": false, "manual_review": true, "reason": reason})),
                );
                summary.manual_review.push(format!("{}: {reason}", p.id));
            }
        }
        if let Some(last) = record.reverts.last_mut() {
            *last = summary.clone();
        }
        // Progress is durable per step: a crash from here resumes after this step.
        store.save_async(record).await?;
    }
    let mut now = None;
    if plan.whole_run && record.pre_manifest.is_some() {
        let m = snap.scan(snap.load_cache().as_ref())?;
        let h = m.hash();
        summary.verified = Some(record.pre_manifest.as_deref() == Some(h.as_str()));
        snap.save_cache(&m)?;
        now = Some(h);
    }
    if summary.failures.is_empty() && plan.whole_run {
        crate::snapshot::clear_inflight(
            snap.vault(),
            &run,
            record.steps.iter().map(|s| s.id.as_str()),
        )?;
    }
    summary.state = if summary.failures.is_empty() {
        "completed".into()
    } else {
        "failed".into()
    };
    summary.finished_at = Some(now_rfc3339());
    finish(record, summary, now)
}

/// A unified diff of a change set (content from the vault's pre- and post-images); binary files
/// and non-content changes are summarised in one line each.
pub fn render_diff(
    vault: &secureclaw_vault::Vault,
    changes: &ChangeSet,
    color: bool,
) -> Result<String, RevertError> {
    use std::fmt::Write as _;
    let mut out = String::new();
    let content = |e: Option<&crate::snapshot::Entry>| -> Result<Option<Vec<u8>>, RevertError> {
        match e {
            Some(e) if e.kind == EntryKind::File => match e.blob {
                Some(b) => Ok(Some(vault.blobs().get(&b).map_err(SnapshotError::from)?)),
                None => Ok(None),
            },
            _ => Ok(None),
        }
    };
    let fmt = if color {
        diffy::PatchFormatter::new().with_color()
    } else {
        diffy::PatchFormatter::new()
    };
    for c in &changes.changes {
        let path = c.path.display();
        let (pre, post) = (c.pre.as_ref(), c.post.as_ref());
        let _ = writeln!(out, "diff {path} ({})", c.what());
        let kinds = (pre.map(|e| e.kind), post.map(|e| e.kind));
        if let (Some(a), Some(b)) = (pre, post)
            && a.mode != b.mode
            && a.kind == b.kind
        {
            let _ = writeln!(out, "old mode {:o}\nnew mode {:o}", a.mode, b.mode);
        }
        if kinds.0 != Some(EntryKind::File) && kinds.1 != Some(EntryKind::File) {
            if kinds != (Some(EntryKind::Dir), Some(EntryKind::Dir)) {
                let _ = writeln!(out, "- {}\n+ {}", state_text(pre), state_text(post));
            }
            continue;
        }
        if pre.and_then(|e| e.sha256.as_ref()) == post.and_then(|e| e.sha256.as_ref()) {
            continue;
        }
        let (a, b) = (content(pre)?, content(post)?);
        let text = |v: &Option<Vec<u8>>| match v {
            None => Some(String::new()),
            Some(v) if v.contains(&0) => None,
            Some(v) => String::from_utf8(v.clone()).ok(),
        };
        match (text(&a), text(&b)) {
            (Some(ta), Some(tb)) => {
                let _ = writeln!(
                    out,
                    "--- {}\n+++ {}",
                    if pre.is_some() {
                        format!("a/{path}")
                    } else {
                        "/dev/null".into()
                    },
                    if post.is_some() {
                        format!("b/{path}")
                    } else {
                        "/dev/null".into()
                    }
                );
                let patch = diffy::create_patch(&ta, &tb);
                let rendered = fmt.fmt_patch(&patch).to_string();
                // diffy's own header names the sides "original"/"modified": keep ours.
                for line in rendered.lines().skip_while(|l| !l.contains("@@")) {
                    let _ = writeln!(out, "{line}");
                }
            }
            _ => {
                let len = |v: &Option<Vec<u8>>| v.as_ref().map_or(0, Vec::len);
                let _ = writeln!(
                    out,
                    "Binary files differ ({} -> {} bytes)",
                    len(&a),
                    len(&b)
                );
            }
        }
    }
    Ok(out)
}

/// Attempts and backoff for a compensation call.
const COMPENSATE_ATTEMPTS: u32 = 3;
const COMPENSATE_BACKOFF: std::time::Duration = std::time::Duration::from_millis(250);
const COMPENSATE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

struct Compensated {
    status: u16,
    attempts: u32,
}

/// Render the compensation with the run's inputs and step results, then call it, retrying.
async fn compensate_http(
    record: &RunRecord,
    step: &crate::record::StepRecord,
    c: &Compensate,
) -> Result<Compensated, String> {
    let Some(action) = &c.http else {
        return Err("no http compensation".into());
    };
    let t = crate::template::Templates::new();
    let steps: BTreeMap<&str, crate::template::StepView> = record
        .steps
        .iter()
        .map(|s| {
            (
                s.id.as_str(),
                crate::template::StepView {
                    output: s.output.clone(),
                    stdout: s.stdout.clone(),
                    stderr: s.stderr.clone(),
                    exit_code: s.exit_code.unwrap_or_default(),
                },
            )
        })
        .collect();
    let ctx = minijinja::context! {
        inputs => minijinja::Value::from_serialize(&record.inputs),
        steps => minijinja::Value::from_serialize(&steps),
    };
    let r = |s: &str| {
        t.render(s, &ctx)
            .map_err(|e| format!("rendering the compensation: {e}"))
    };
    let url = r(&action.url)?;
    let headers = action
        .headers
        .iter()
        .map(|(k, v)| Ok((k.clone(), r(v)?)))
        .collect::<Result<Vec<_>, String>>()?;
    let body = action.body.as_deref().map(r).transpose()?;
    let json = match &action.json {
        Some(v) => Some(render_json(v, &r)?),
        None => None,
    };
    let timeout = action
        .timeout
        .as_ref()
        .and_then(|d| d.parse().ok())
        .unwrap_or(COMPENSATE_TIMEOUT);
    let limit = action
        .max_response
        .as_ref()
        .and_then(|m| m.parse().ok())
        .unwrap_or(1024 * 1024);
    let mut last = String::new();
    for attempt in 1..=COMPENSATE_ATTEMPTS {
        let call = crate::actions::http(crate::actions::HttpCall {
            action,
            url: &url,
            headers: &headers,
            body: body.clone(),
            json: json.clone(),
            allowed: &step.network,
            timeout,
            limit,
        });
        match tokio::time::timeout(timeout, call).await {
            Ok(Ok(res)) => {
                return Ok(Compensated {
                    status: res.status,
                    attempts: attempt,
                });
            }
            Ok(Err(e)) => last = e.to_string(),
            Err(_) => last = format!("timed out after {}", humantime::format_duration(timeout)),
        }
        if attempt < COMPENSATE_ATTEMPTS {
            tokio::time::sleep(COMPENSATE_BACKOFF * 2u32.pow(attempt - 1)).await;
        }
    }
    Err(format!("{last} (after {COMPENSATE_ATTEMPTS} attempts)"))
}

fn render_json(v: &Value, r: &dyn Fn(&str) -> Result<String, String>) -> Result<Value, String> {
    Ok(match v {
        Value::String(s) => Value::String(r(s)?),
        Value::Array(a) => Value::Array(
            a.iter()
                .map(|x| render_json(x, r))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, x)| Ok((k.clone(), render_json(x, r)?)))
                .collect::<Result<_, String>>()?,
        ),
        other => other.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::{Change, Entry};

    fn file(mode: u32, sha: &str) -> Entry {
        Entry {
            kind: EntryKind::File,
            mode,
            size: 1,
            sha256: Some(sha.into()),
            blob: None,
            target: None,
            ino: 0,
            mtime_ns: 0,
            ctime_ns: 0,
            file_caps: false,
            uncaptured: None,
        }
    }

    fn change(path: &str, pre: Option<Entry>, post: Option<Entry>) -> Change {
        Change {
            path: RelPath(path.as_bytes().to_vec()),
            pre,
            post,
        }
    }

    /// A record from before the sweep: `plant` made a set-uid file, `edit` changed it. Undoing
    /// `edit` alone must not put the planted bit back; the user's own set-uid file keeps its bit.
    #[test]
    fn a_revert_never_restores_a_setid_bit_the_run_did_not_find() {
        let mut changes = BTreeMap::from([
            (
                "plant".to_string(),
                ChangeSet {
                    changes: vec![
                        change("rootsh", None, Some(file(0o4755, "sh"))),
                        change("theirs", Some(file(0o4755, "t")), Some(file(0o4755, "t2"))),
                    ],
                },
            ),
            (
                "edit".to_string(),
                ChangeSet {
                    changes: vec![
                        change("rootsh", Some(file(0o4755, "sh")), Some(file(0o755, "x"))),
                        change("theirs", Some(file(0o4755, "t2")), Some(file(0o755, "t"))),
                    ],
                },
            ),
        ]);
        strip_planted_setid(&mut changes, &["plant", "edit"]);
        let pre_mode = |step: &str, i: usize| changes[step].changes[i].pre.as_ref().unwrap().mode;
        // Planted by the run: never restored with its bit.
        assert_eq!(pre_mode("edit", 0), 0o755);
        // The user's file with other content than they had: not with the bit either.
        assert_eq!(pre_mode("edit", 1), 0o755);
        // What the run found is restored as it was.
        assert_eq!(pre_mode("plant", 1), 0o4755);
    }
}
