//! The task record and where it is kept.
//!
//! A task row in `AppTable::Tasks` holds its owner in the clear (so an admin's listing knows
//! whose key opens it) and the task itself sealed under that owner's key, bound to the purpose
//! `task`. An index row `OWNER/TASK_ID` in `AppTable::Index` lists one user's tasks without
//! opening anyone else's. Task ids are UUID v7, so their order is their creation order.

use std::collections::BTreeMap;
use std::path::PathBuf;

use base64::Engine as _;
use secureclaw_engine::record::Provenance;
use secureclaw_engine::session::{AppBatch, AppTable, Audit, Session};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use crate::error::ApiError;

/// Seal purpose of task rows.
const SEAL_PURPOSE: &str = "task";
/// Index keys of the owner index start with this.
const INDEX_PREFIX: &str = "tasks/";

/// Where the workflow of a task came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// Planned by the LLM planner from a plain-language instruction.
    Instruction,
    /// Posted as workflow YAML.
    Workflow,
    /// Taken from a registered workflow source by a user.
    Source,
    /// Started by a signed webhook delivery.
    Trigger,
    /// Started by the workflow's schedule.
    Schedule,
    /// Started by a change to files the workflow watches.
    Watch,
}

/// A task as stored (sealed).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Task {
    pub id: String,
    /// The owner's user id.
    pub owner: String,
    /// RFC 3339, UTC.
    pub created: String,
    pub origin: Origin,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instruction: Option<String>,
    /// Who planned it (provider, model, rounds, tokens, hashes), for planned tasks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provenance: Option<Value>,
    /// The workflow YAML exactly as validated.
    pub workflow: String,
    /// Input values resolved against the workflow's declarations (defaults filled in).
    pub inputs: BTreeMap<String, Value>,
    /// The registered workspace's name, or `None` for the task's own directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace_name: Option<String>,
    pub workspace: PathBuf,
    /// The full run id once the task ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    /// Where the workflow came from in git (source, repository, commit, path, blob).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git: Option<Provenance>,
    /// Who or what started it, for tasks that start without a plan step: `user:NAME`,
    /// `rerun:TASK`, `lost-worker:TASK`, `trigger:NAME`, `schedule:SOURCE/PATH`,
    /// `watch:SOURCE/PATH`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_by: Option<String>,
}

/// The stored row: owner in the clear, the task sealed for that owner.
#[derive(Serialize, Deserialize)]
struct Row {
    owner: String,
    sealed: String,
}

/// A task id as the API takes it: the canonical hyphenated lower-case UUID form. Anything else
/// never reaches the store or the filesystem.
pub fn parse_task_id(text: &str) -> Result<String, ApiError> {
    let ok = text.len() == 36
        && uuid::Uuid::try_parse(text)
            .map(|u| u.hyphenated().to_string() == text)
            .unwrap_or(false);
    if ok {
        Ok(text.to_string())
    } else {
        Err(ApiError::not_found("task"))
    }
}

/// A step id as the API takes it: `[A-Za-z0-9_-]{1,64}`.
pub fn parse_step_id(text: &str) -> Result<String, ApiError> {
    let ok = (1..=64).contains(&text.len())
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(text.to_string())
    } else {
        Err(ApiError::not_found("step"))
    }
}

/// An action id `TASK_ID.STEP_ID`: one step of one task.
pub fn parse_action_id(text: &str) -> Result<(String, String), ApiError> {
    let (task, step) = text
        .split_once('.')
        .ok_or_else(|| ApiError::not_found("action"))?;
    let task = parse_task_id(task).map_err(|_| ApiError::not_found("action"))?;
    let step = parse_step_id(step).map_err(|_| ApiError::not_found("action"))?;
    Ok((task, step))
}

pub fn action_id(task: &str, step: &str) -> String {
    format!("{task}.{step}")
}

/// Task rows of the session.
#[derive(Clone)]
pub struct TaskStore {
    session: Session,
}

impl TaskStore {
    pub fn new(session: Session) -> Self {
        TaskStore { session }
    }

    /// A new task's id: UUID v7, ordered by creation time.
    pub fn new_id() -> String {
        uuid::Uuid::now_v7().hyphenated().to_string()
    }

    /// The task, whoever owns it (callers check access).
    pub fn load(&self, id: &str) -> Result<Option<Task>, ApiError> {
        let Some(row) = self.session.app_get_json::<Row>(AppTable::Tasks, id)? else {
            return Ok(None);
        };
        let sealed = base64::engine::general_purpose::STANDARD
            .decode(row.sealed.as_bytes())
            .map_err(|e| ApiError::internal(format!("task row {id}: {e}")))?;
        let Some(plain) = self
            .session
            .open_for_user(&row.owner, SEAL_PURPOSE, &sealed)?
        else {
            return Err(ApiError::internal(format!(
                "task row {id} does not open under its owner's key"
            )));
        };
        let task: Task = serde_json::from_slice(&plain)
            .map_err(|e| ApiError::internal(format!("task row {id}: {e}")))?;
        // The sealed copy is the authority: a clear owner that disagrees is tampering.
        if task.owner != row.owner || task.id != id {
            return Err(ApiError::internal(format!("task row {id} is inconsistent")));
        }
        Ok(Some(task))
    }

    /// Write the task (and its index row), with ledger entries in the same commit.
    pub async fn save(&self, task: &Task, audits: Vec<Audit>) -> Result<(), ApiError> {
        let plain =
            serde_json::to_vec(task).map_err(|e| ApiError::internal(format!("task: {e}")))?;
        let sealed = self
            .session
            .seal_for_user(&task.owner, SEAL_PURPOSE, &plain)?;
        let row = Row {
            owner: task.owner.clone(),
            sealed: base64::engine::general_purpose::STANDARD.encode(sealed),
        };
        let mut batch = AppBatch::default();
        batch.put_json(AppTable::Tasks, task.id.clone(), &row)?;
        batch.put(
            AppTable::Index,
            format!("{INDEX_PREFIX}{}/{}", task.owner, task.id),
            Vec::new(),
        );
        for a in audits {
            batch.audit(a);
        }
        self.session.app_commit(batch).await?;
        Ok(())
    }

    /// Task ids, newest first: one owner's, or everyone's.
    pub fn ids(&self, owner: Option<&str>) -> Result<Vec<String>, ApiError> {
        let mut ids: Vec<String> = match owner {
            Some(o) => {
                let prefix = format!("{INDEX_PREFIX}{o}/");
                self.session
                    .app_keys(AppTable::Index)?
                    .into_iter()
                    .filter_map(|k| k.strip_prefix(&prefix).map(str::to_string))
                    .collect()
            }
            None => self.session.app_keys(AppTable::Tasks)?,
        };
        ids.sort_unstable_by(|a, b| b.cmp(a));
        Ok(ids)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_canonical_uuids_are_task_ids() {
        let id = TaskStore::new_id();
        assert_eq!(parse_task_id(&id).unwrap(), id);
        for bad in [
            "",
            "..",
            "../etc",
            "..%2F..",
            "last",
            "0192",
            &id.to_uppercase(),
            &id.replace('-', ""),
            &format!("{{{id}}}"),
            &format!("{id}/.."),
        ] {
            assert!(parse_task_id(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn step_and_action_ids_are_checked() {
        assert!(parse_step_id("build_1-a").is_ok());
        for bad in ["", "..", "a/b", "a.b", &"x".repeat(65), "a b"] {
            assert!(parse_step_id(bad).is_err(), "{bad:?} accepted");
        }
        let id = TaskStore::new_id();
        assert_eq!(
            parse_action_id(&format!("{id}.greet")).unwrap(),
            (id.clone(), "greet".to_string())
        );
        assert!(parse_action_id(&id).is_err());
        assert!(parse_action_id(&format!("{id}.../x")).is_err());
    }
}
