//! `GET /api/v1/audit`: ledger entries, newest first, filtered by task, user and kind, as the
//! caller may see them. The web UI's audit page is this handler drawn as a table.
//!
//! An admin sees every entry. Anyone else sees the entries they caused (actor `user:NAME`),
//! those about their account (naming its `user_id`) and those about their own tasks (the runs
//! of those tasks, and entries naming the task): the line `Identity::may_access` draws.

use std::collections::{BTreeMap, BTreeSet};

use axum::Json;
use axum::extract::{Query, State};
use secureclaw_engine::session::LedgerEntry;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::app::AppState;
use crate::auth::Identity;
use crate::error::{ApiError, ApiResult, Problem};
use crate::tasks::model::TaskStore;

const DEFAULT_LIMIT: usize = 50;
const MAX_LIMIT: usize = 500;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list_audit))
}

/// The filter (documents the query; the handler reads it by hand); an empty or absent field
/// matches everything.
#[derive(Debug, Default, Clone, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// Entries about this task (its creation, its run's entries).
    #[serde(default)]
    pub task: Option<String>,
    /// Entries by this actor: a username, or a whole actor (`user:ada`, `server`).
    #[serde(default)]
    pub user: Option<String>,
    /// Entries of this kind (`task_created`, `step_finished`, `auth_login`...).
    #[serde(default)]
    pub kind: Option<String>,
    /// At most this many (default 50, at most 500).
    #[serde(default)]
    pub limit: Option<usize>,
    /// Skip this many of the newest.
    #[serde(default)]
    pub offset: Option<usize>,
}

/// One ledger entry as the audit list shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditEntry {
    pub seq: u64,
    /// RFC 3339, UTC.
    pub time: String,
    pub kind: String,
    /// `user:NAME`, `server`, `addr:IP`...
    pub actor: String,
    pub run: Option<String>,
    /// The task the entry is about, when known.
    pub task: Option<String>,
    pub step: Option<String>,
    /// Risk tier, for step entries.
    #[schema(value_type = Option<Object>)]
    pub tier: Option<Value>,
    /// What happened.
    #[schema(value_type = Option<Object>)]
    pub result: Option<Value>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AuditList {
    /// Newest first.
    pub entries: Vec<AuditEntry>,
    /// Matching entries in all.
    pub total: usize,
    pub limit: usize,
    pub offset: usize,
    /// Every kind among the entries the caller may see (for a filter's choices).
    pub kinds: Vec<String>,
}

/// Ledger entries the caller may see, newest first.
#[utoipa::path(get, path = "/audit", tag = "audit", security(("bearer" = [])),
    params(AuditQuery),
    responses(
        (status = 200, description = "the entries", body = AuditList),
        (status = 400, description = "bad paging", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "not signed in", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`task` names no task of the caller's", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn list_audit(
    State(state): State<AppState>,
    who: Identity,
    Query(q): Query<BTreeMap<String, String>>,
) -> ApiResult<Json<AuditList>> {
    // Read by hand rather than into `AuditQuery`, so a bad number is a problem document.
    let number = |name: &str, default: usize| -> ApiResult<usize> {
        match q.get(name).map(|v| v.trim()).filter(|v| !v.is_empty()) {
            None => Ok(default),
            Some(v) => v.parse().map_err(|_| {
                ApiError::bad_request("invalid_request", format!("`{name}` must be a number"))
            }),
        }
    };
    let text = |name: &str| q.get(name).map(|v| v.trim()).unwrap_or("").to_string();
    let (task_f, user_f, kind_f) = (text("task"), text("user"), text("kind"));
    let limit = number("limit", DEFAULT_LIMIT)?.min(MAX_LIMIT);
    let offset = number("offset", 0)?;

    // Runs of the tasks the caller may see: they name each run's task and decide visibility.
    let store = TaskStore::new(state.session.clone());
    let mut task_of_run: BTreeMap<String, String> = BTreeMap::new();
    let mut visible_tasks: BTreeSet<String> = BTreeSet::new();
    for id in store.ids((!who.admin).then_some(who.user_id.as_str()))? {
        let Some(task) = store.load(&id)? else {
            continue;
        };
        if !who.may_access(&task.owner) {
            continue;
        }
        if let Some(run) = task.run_id {
            task_of_run.insert(run, task.id.clone());
        }
        visible_tasks.insert(task.id);
    }
    if !task_f.is_empty() && !visible_tasks.contains(&task_f) {
        return Err(ApiError::not_found("task"));
    }

    let actor = who.actor();
    let mut kinds = BTreeSet::new();
    let mut matching = Vec::new();
    for entry in state.session.ledger_entries(None)?.into_iter().rev() {
        let task = entry_task(&entry, &task_of_run);
        let visible = who.admin
            || entry.actor == actor
            || is_about_user(&entry, &who.user_id)
            || task.as_ref().is_some_and(|t| visible_tasks.contains(t));
        if !visible {
            continue;
        }
        kinds.insert(entry.kind.clone());
        if (!task_f.is_empty() && task.as_deref() != Some(task_f.as_str()))
            || (!user_f.is_empty() && !actor_is(&entry.actor, &user_f))
            || (!kind_f.is_empty() && entry.kind != kind_f)
        {
            continue;
        }
        matching.push((entry, task));
    }

    let total = matching.len();
    let entries = matching
        .into_iter()
        .skip(offset)
        .take(limit)
        .map(|(e, task)| AuditEntry {
            seq: e.seq,
            time: e.time,
            kind: e.kind,
            actor: e.actor,
            run: e.run,
            task,
            step: e.step,
            tier: e.tier,
            result: e.result,
        })
        .collect();
    Ok(Json(AuditList {
        entries,
        total,
        limit,
        offset,
        kinds: kinds.into_iter().collect(),
    }))
}

/// The task an entry is about: its run's task, or the task its outcome names.
fn entry_task(entry: &LedgerEntry, task_of_run: &BTreeMap<String, String>) -> Option<String> {
    if let Some(t) = entry.run.as_ref().and_then(|r| task_of_run.get(r)) {
        return Some(t.clone());
    }
    entry
        .result
        .as_ref()
        .and_then(|r| r.get("task"))
        .and_then(Value::as_str)
        .map(str::to_string)
}

/// Entries about an account (its registration, made by an address before the user had a
/// session) name its `user_id`.
fn is_about_user(entry: &LedgerEntry, user_id: &str) -> bool {
    entry
        .result
        .as_ref()
        .and_then(|r| r.get("user_id"))
        .and_then(Value::as_str)
        == Some(user_id)
}

/// Does the filter's `user` name this actor? Either the whole actor or a username.
fn actor_is(actor: &str, user: &str) -> bool {
    actor == user || actor.strip_prefix("user:") == Some(user)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_user_filter_takes_a_name_or_an_actor() {
        assert!(actor_is("user:ada", "ada"));
        assert!(actor_is("user:ada", "user:ada"));
        assert!(actor_is("server", "server"));
        assert!(!actor_is("user:adam", "ada"));
        assert!(!actor_is("server", "ada"));
    }

    #[test]
    fn entries_find_their_task_by_run_or_by_name_and_their_user_by_id() {
        let mut e = LedgerEntry {
            seq: 1,
            time: String::new(),
            actor: "server".into(),
            run: Some("r1".into()),
            step: None,
            kind: "run_started".into(),
            tier: None,
            enforcement: None,
            pre_manifest: None,
            post_manifest: None,
            inverse: None,
            result: None,
        };
        let runs = BTreeMap::from([("r1".to_string(), "t1".to_string())]);
        assert_eq!(entry_task(&e, &runs).as_deref(), Some("t1"));
        e.run = None;
        e.result = Some(json!({"task": "t2", "user_id": "u1"}));
        assert_eq!(entry_task(&e, &runs).as_deref(), Some("t2"));
        assert!(is_about_user(&e, "u1"));
        assert!(!is_about_user(&e, "u2"));
        e.result = None;
        assert_eq!(entry_task(&e, &runs), None);
        assert!(!is_about_user(&e, "u1"));
    }
}
