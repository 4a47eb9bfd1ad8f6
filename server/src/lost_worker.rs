//! Runs whose worker was lost. Such a run stays interrupted: its pre-images are on that
//! worker's disk, and only that worker, when it returns, can roll it back. A workflow from a
//! registered git source that asks for it (`on_worker_lost: rerun`) is also started again,
//! from the same commit and with the same inputs, as a new task any worker may claim. The
//! rerun is a new run in a new workspace: nothing of the lost run is replayed or reused.

use secureclaw_engine::model::WorkerLost;
use secureclaw_engine::session::Audit;
use secureclaw_engine::tools::vault::kind;
use secureclaw_engine::validate::validate_bytes;
use serde_json::json;

use crate::dispatch::QueuedRun;
use crate::tasks::model::{Task, TaskStore};

/// Runs of one task in a row a lost worker may cost: the first and at most two reruns. A
/// workflow that kills its worker every time stops there.
pub const MAX_ATTEMPTS: u32 = 3;

/// Why a run interrupted by a lost worker is not started again.
#[derive(Debug, thiserror::Error)]
pub enum NoRerun {
    #[error("its workflow does not ask for it (`on_worker_lost: stay`)")]
    NotAsked,
    #[error("its workflow is not from a registered git source")]
    NotFromGit,
    #[error("its workflow ran from a work tree that differed from the commit")]
    Dirty,
    #[error("the queued text is not the blob its source recorded")]
    NotTheBlob,
    #[error("it was attempt {0} of at most {MAX_ATTEMPTS}")]
    Attempts(u32),
    #[error("its queued workflow does not validate: {0}")]
    Invalid(String),
    #[error("its task {0} is not in the store")]
    NoTask(String),
    #[error("its task {0} does not name it")]
    OtherRun(String),
}

/// What takes a lost run's place: a new task, its run as queued, and the ledger entry that
/// creates the task.
#[derive(Debug)]
pub struct Rerun {
    pub task: Task,
    pub run: QueuedRun,
    pub audit: Audit,
}

/// The dedup key of the rerun of `run`: whichever node records the run interrupted, and
/// however often, the rerun is queued once.
pub fn dedup_key(run: &str) -> String {
    format!("lost-worker/{run}")
}

/// Checks whether `lost` (the payload of a job whose lease lapsed) is to be started again,
/// without reading the store. [`NoRerun::NotAsked`] comes first: any other refusal is of a
/// workflow that asked.
fn rerun_wanted(lost: &QueuedRun) -> Result<(), NoRerun> {
    let validated = validate_bytes(std::path::Path::new("(queued)"), lost.workflow.as_bytes())
        .map_err(|d| NoRerun::Invalid(d.to_string()))?;
    if validated.workflow.on_worker_lost != WorkerLost::Rerun {
        return Err(NoRerun::NotAsked);
    }
    let git = match &lost.provenance {
        Some(p) if p.source.is_some() => p,
        _ => return Err(NoRerun::NotFromGit),
    };
    if git.dirty {
        return Err(NoRerun::Dirty);
    }
    // The text travelled in the job, sealed; it must still be the reviewed file at the commit.
    match secureclaw_engine::git::blob_id(lost.workflow.as_bytes()) {
        Ok(blob) if blob == git.blob => {}
        _ => return Err(NoRerun::NotTheBlob),
    }
    if lost.attempt >= MAX_ATTEMPTS {
        return Err(NoRerun::Attempts(lost.attempt));
    }
    Ok(())
}

/// The rerun of `lost`, whose worker was lost, as a task of the same owner; `node` is the
/// node that records it (the ledger names it as the actor).
pub fn rerun_of(tasks: &TaskStore, lost: &QueuedRun, node: &str) -> Result<Rerun, NoRerun> {
    rerun_wanted(lost)?;
    let old = tasks
        .load(&lost.task_id)
        .ok()
        .flatten()
        .ok_or_else(|| NoRerun::NoTask(lost.task_id.clone()))?;
    if old.run_id.as_deref() != Some(lost.run_id.as_str()) {
        return Err(NoRerun::OtherRun(old.id));
    }
    let id = TaskStore::new_id();
    let started_by = format!("lost-worker:{}", old.id);
    let mut settings = lost.settings.clone();
    settings.started_by = Some(started_by.clone());
    let run = QueuedRun {
        run_id: secureclaw_engine::record::new_run_id(),
        task_id: id.clone(),
        workflow: lost.workflow.clone(),
        inputs: lost.inputs.clone(),
        workspace_name: lost.workspace_name.clone(),
        settings,
        provenance: lost.provenance.clone(),
        attempt: lost.attempt + 1,
    };
    // A task's own directory is named after the task; a registered workspace is shared.
    let workspace = match &old.workspace_name {
        Some(_) => old.workspace.clone(),
        None => old.workspace.with_file_name(&id),
    };
    let task = Task {
        id: id.clone(),
        created: secureclaw_engine::record::now_rfc3339(),
        workspace,
        run_id: Some(run.run_id.clone()),
        started_by: Some(started_by.clone()),
        ..old
    };
    let audit = Audit::new(
        kind::TASK_CREATED,
        format!("node:{node}"),
        json!({
            "task": id,
            "origin": task.origin,
            "started_by": started_by,
            "rerun_of": lost.run_id,
            "attempt": run.attempt,
            "provenance": run.provenance,
        }),
    );
    Ok(Rerun { task, run, audit })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the failure report

    use super::*;
    use secureclaw_engine::record::Provenance;

    const ASKS: &str =
        "version: 1\nname: flaky\non_worker_lost: rerun\nsteps:\n  - id: a\n    shell: \"true\"\n";

    fn queued(text: &str, source: Option<&str>) -> QueuedRun {
        QueuedRun {
            run_id: "r1".into(),
            task_id: "t1".into(),
            workflow: text.into(),
            inputs: Default::default(),
            workspace_name: None,
            settings: Default::default(),
            provenance: Some(Provenance {
                repository: "/srv/flows".into(),
                source: source.map(str::to_string),
                branch: Some("main".into()),
                commit: "0".repeat(40),
                path: "flaky.yaml".into(),
                blob: secureclaw_engine::git::blob_id(text.as_bytes()).unwrap(),
                dirty: false,
            }),
            attempt: 1,
        }
    }

    #[test]
    fn a_git_sourced_workflow_that_asks_is_rerun_a_bounded_number_of_times() {
        let mut q = queued(ASKS, Some("flows"));
        assert!(rerun_wanted(&q).is_ok());
        q.attempt = MAX_ATTEMPTS - 1;
        assert!(rerun_wanted(&q).is_ok());
        q.attempt = MAX_ATTEMPTS;
        assert!(matches!(rerun_wanted(&q), Err(NoRerun::Attempts(_))));
    }

    #[test]
    fn only_a_workflow_from_a_registered_source_exactly_as_committed_is_rerun() {
        let stays = ASKS.replace("on_worker_lost: rerun\n", "");
        assert!(matches!(
            rerun_wanted(&queued(&stays, Some("flows"))),
            Err(NoRerun::NotAsked)
        ));
        // A file run from a work tree by the CLI has provenance but no registered source.
        assert!(matches!(
            rerun_wanted(&queued(ASKS, None)),
            Err(NoRerun::NotFromGit)
        ));
        let mut typed = queued(ASKS, Some("flows"));
        typed.provenance = None;
        assert!(matches!(rerun_wanted(&typed), Err(NoRerun::NotFromGit)));
        let mut dirty = queued(ASKS, Some("flows"));
        dirty.provenance.as_mut().unwrap().dirty = true;
        assert!(matches!(rerun_wanted(&dirty), Err(NoRerun::Dirty)));
        // Text changed after the source recorded its blob (a tampered or mixed-up payload).
        let mut swapped = queued(ASKS, Some("flows"));
        swapped.workflow = ASKS.replace("\"true\"", "\"rm -rf .\"");
        assert!(matches!(rerun_wanted(&swapped), Err(NoRerun::NotTheBlob)));
    }
}
