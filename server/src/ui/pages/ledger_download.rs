//! A run's ledger as the two files `secureclaw ledger verify-export FILE --head FILE.head.json`
//! checks offline: the signed entries (JSONL) and the signed head. The API answers both in one
//! JSON document; a browser download wants each as a file of its own.

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse as _, Response};
use axum::routing::get;

use crate::app::AppState;
use crate::ui::{UiError, UiResult, Viewer};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/ui/tasks/{id}/ledger.jsonl", get(entries))
        .route("/ui/tasks/{id}/ledger.jsonl.head.json", get(head))
}

/// The address of a task's ledger entries; the head is at this plus `.head.json`.
pub fn entries_path(task_id: &str) -> String {
    format!("/ui/tasks/{task_id}/ledger.jsonl")
}

async fn entries(
    State(state): State<AppState>,
    viewer: Viewer,
    Path(id): Path<String>,
) -> UiResult {
    let export = export(&state, &viewer, &id).await?;
    Ok(attachment(
        export.jsonl,
        "application/x-ndjson",
        &format!("ledger-{id}.jsonl"),
    ))
}

async fn head(State(state): State<AppState>, viewer: Viewer, Path(id): Path<String>) -> UiResult {
    let export = export(&state, &viewer, &id).await?;
    let text = serde_json::to_string_pretty(&export.head)
        .map_err(|e| UiError::Render(format!("ledger head: {e}")))?;
    Ok(attachment(
        text + "\n",
        "application/json",
        &format!("ledger-{id}.jsonl.head.json"),
    ))
}

/// The export, authorised exactly as `GET /api/v1/tasks/{id}/ledger/export`.
async fn export(
    state: &AppState,
    viewer: &Viewer,
    id: &str,
) -> Result<crate::tasks::routes::LedgerExport, UiError> {
    let axum::Json(export) = crate::tasks::routes::ledger_export(
        State(state.clone()),
        viewer.who.clone(),
        Path(id.to_string()),
    )
    .await?;
    Ok(export)
}

fn attachment(body: String, content_type: &'static str, filename: &str) -> Response {
    let mut res = body.into_response();
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // Task ids are UUIDs (checked by the API before anything is read), so the name needs no
    // quoting beyond the quotes.
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{filename}\"")) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    res
}
