//! The audit page: ledger entries, newest first, filtered by task, user and kind. It is
//! `GET /api/v1/audit` (`crate::audit::list_audit`, called with the viewer's identity) drawn as
//! a table, so it shows exactly the entries the API would.

use std::collections::BTreeMap;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::routing::get;
use minijinja::context;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::AUDIT;
use super::pager::{PER_PAGE, PageQuery, Pager};
use crate::app::AppState;
use crate::audit::{AuditList, list_audit};
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
struct AuditRow {
    seq: u64,
    time: String,
    kind: String,
    actor: String,
    run: Option<String>,
    task: Option<String>,
    step: Option<String>,
    /// The outcome, as short JSON text.
    detail: String,
}

async fn audit(
    State(state): State<AppState>,
    viewer: Viewer,
    Query(filter): Query<AuditFilter>,
) -> UiResult {
    let (task, user, kind) = (filter.task.trim(), filter.user.trim(), filter.kind.trim());
    let page = PageQuery {
        page: filter.page.clone(),
    }
    .number();
    let query = BTreeMap::from([
        ("task".to_string(), task.to_string()),
        ("user".to_string(), user.to_string()),
        ("kind".to_string(), kind.to_string()),
        ("limit".to_string(), PER_PAGE.to_string()),
        ("offset".to_string(), Pager::offset(page).to_string()),
    ]);
    let (list, notice) =
        match list_audit(State(state.clone()), viewer.who.clone(), Query(query)).await {
            Ok(axum::Json(list)) => (list, None),
            // A task that is not the viewer's (or does not exist) is a filter to correct, not an
            // error page.
            Err(e) if e.status == StatusCode::NOT_FOUND && !task.is_empty() => {
                let mut unfiltered = BTreeMap::new();
                unfiltered.insert("limit".to_string(), "0".to_string());
                let kinds = list_audit(State(state.clone()), viewer.who.clone(), Query(unfiltered))
                    .await
                    .map(|axum::Json(l)| l.kinds)
                    .unwrap_or_default();
                let empty = AuditList {
                    entries: Vec::new(),
                    total: 0,
                    limit: PER_PAGE,
                    offset: 0,
                    kinds,
                };
                (empty, Some(format!("No task {task} of yours.")))
            }
            Err(e) => return Err(e.into()),
        };
    let pager = Pager::new(
        AUDIT,
        &[("task", task), ("user", user), ("kind", kind)],
        page,
        list.total,
    );
    let entries: Vec<AuditRow> = list
        .entries
        .into_iter()
        .map(|e| AuditRow {
            detail: short_detail(e.result.as_ref()),
            seq: e.seq,
            time: e.time,
            kind: e.kind,
            actor: e.actor,
            run: e.run,
            task: e.task,
            step: e.step,
        })
        .collect();
    viewer.page(
        &state,
        "audit.html",
        "Audit",
        context! {
            entries => entries,
            pager => pager,
            kinds => list.kinds,
            notice => notice,
            filter => context! { task => task, user => user, kind => kind },
        },
    )
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
    fn long_details_are_cut() {
        assert_eq!(short_detail(None), "");
        assert_eq!(short_detail(Some(&json!({"a": 1}))), r#"{"a":1}"#);
        let long = short_detail(Some(&json!("x".repeat(500))));
        assert_eq!(long.chars().count(), DETAIL_CHARS + 1);
        assert!(long.ends_with('…'));
    }
}
