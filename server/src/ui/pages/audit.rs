//! The audit page: ledger entries, newest first, filtered by task, user and kind.
//!
//! An admin sees every entry. Anyone else sees the entries they caused (actor `user:NAME`),
//! those about their account (naming its `user_id`) and those about their own tasks (the runs of those tasks, and entries naming the task), the
//! same line `Identity::may_access` draws for tasks.

use std::collections::{BTreeMap, BTreeSet};

use axum::Router;
use axum::extract::{Query, State};
use axum::routing::get;
use minijinja::context;
use secureclaw_engine::session::LedgerEntry;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::AUDIT;
use super::pager::{PER_PAGE, PageQuery, Pager};
use crate::app::AppState;
use crate::auth::Identity;
use crate::error::ApiError;
use crate::tasks::model::TaskStore;
use crate::ui::{UiResult, Viewer};

/// How much of an entry's outcome the table shows; the ledger export has all of it.
const DETAIL_CHARS: usize = 160;

pub fn routes() -> Router<AppState> {
    Router::new().route(AUDIT, get(audit))
}

/// The filter form's fields; empty means "any".
#[derive(Debug, Default, Deserialize)]
pub struct AuditFilter {
    #[serde(default)]
    pub task: String,
    #[serde(default)]
    pub user: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub page: Option<String>,
}

/// One row of the table.
#[derive(Debug, Serialize)]
pub struct AuditRow {
    pub seq: u64,
    pub time: String,
    pub kind: String,
    pub actor: String,
    pub run: Option<String>,
    /// The task the entry is about, when known.
    pub task: Option<String>,
    pub step: Option<String>,
    /// The outcome, as short JSON text.
    pub detail: String,
}

#[derive(Debug, Serialize)]
pub struct AuditPage {
    pub entries: Vec<AuditRow>,
    pub pager: Pager,
    /// Every kind among the entries the viewer may see, for the filter's list.
    pub kinds: Vec<String>,
    /// Why the list is empty when the filter itself was wrong (an unknown task).
    pub notice: Option<String>,
}

async fn audit(
    State(state): State<AppState>,
    viewer: Viewer,
    Query(filter): Query<AuditFilter>,
) -> UiResult {
    let page = audit_page(&state, &viewer.who, &filter)?;
    viewer.page(
        &state,
        "audit.html",
        "Audit",
        context! {
            entries => page.entries,
            pager => page.pager,
            kinds => page.kinds,
            notice => page.notice,
            filter => context! { task => filter.task.trim(), user => filter.user.trim(), kind => filter.kind.trim() },
        },
    )
}

/// The entries `who` may see that match `filter`, newest first, one page of them.
pub fn audit_page(
    state: &AppState,
    who: &Identity,
    filter: &AuditFilter,
) -> Result<AuditPage, ApiError> {
    let page = PageQuery {
        page: filter.page.clone(),
    }
    .number();
    let (task_f, user_f, kind_f) = (filter.task.trim(), filter.user.trim(), filter.kind.trim());
    let params = [("task", task_f), ("user", user_f), ("kind", kind_f)];

    // Runs of the tasks the viewer may see, to name each run's task and to decide visibility.
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

    let mut notice = None;
    if !task_f.is_empty() && !visible_tasks.contains(task_f) {
        notice = Some(format!("No task {task_f} of yours."));
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
        if notice.is_some()
            || (!task_f.is_empty() && task.as_deref() != Some(task_f))
            || (!user_f.is_empty() && !actor_is(&entry.actor, user_f))
            || (!kind_f.is_empty() && entry.kind != kind_f)
        {
            continue;
        }
        matching.push((entry, task));
    }

    let pager = Pager::new(AUDIT, &params, page, matching.len());
    let entries = matching
        .into_iter()
        .skip(Pager::offset(page))
        .take(PER_PAGE)
        .map(|(e, task)| AuditRow {
            detail: short_detail(e.result.as_ref()),
            seq: e.seq,
            time: e.time,
            kind: e.kind,
            actor: e.actor,
            run: e.run,
            task,
            step: e.step,
        })
        .collect();
    Ok(AuditPage {
        entries,
        pager,
        kinds: kinds.into_iter().collect(),
        notice,
    })
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

/// Entries about an account (its registration, say, made by an address before the user had a
/// name) name its `user_id`.
fn is_about_user(entry: &LedgerEntry, user_id: &str) -> bool {
    entry
        .result
        .as_ref()
        .and_then(|r| r.get("user_id"))
        .and_then(Value::as_str)
        == Some(user_id)
}

/// Does the filter's `user` name this actor? Either the whole actor (`user:ada`, `engine`) or
/// a username.
fn actor_is(actor: &str, user: &str) -> bool {
    actor == user || actor.strip_prefix("user:") == Some(user)
}

/// The outcome as one line of JSON, cut short.
fn short_detail(result: Option<&Value>) -> String {
    let Some(v) = result else {
        return String::new();
    };
    let text = v.to_string();
    if text.chars().count() <= DETAIL_CHARS {
        text
    } else {
        let mut cut: String = text.chars().take(DETAIL_CHARS).collect();
        cut.push('…');
        cut
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_user_filter_takes_a_name_or_an_actor() {
        assert!(actor_is("user:ada", "ada"));
        assert!(actor_is("user:ada", "user:ada"));
        assert!(actor_is("engine", "engine"));
        assert!(!actor_is("user:adam", "ada"));
        assert!(!actor_is("engine", "ada"));
    }

    #[test]
    fn long_details_are_cut() {
        assert_eq!(short_detail(None), "");
        assert_eq!(short_detail(Some(&json!({"a": 1}))), r#"{"a":1}"#);
        let long = short_detail(Some(&json!("x".repeat(500))));
        assert_eq!(long.chars().count(), DETAIL_CHARS + 1);
        assert!(long.ends_with('…'));
    }

    #[test]
    fn entries_find_their_task_by_run_or_by_name() {
        let mut e = LedgerEntry {
            seq: 1,
            time: String::new(),
            actor: "engine".into(),
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
        e.result = Some(json!({"task": "t2"}));
        assert_eq!(entry_task(&e, &runs).as_deref(), Some("t2"));
        e.result = None;
        assert_eq!(entry_task(&e, &runs), None);
    }
}
