//! Where a trigger's workflow comes from: the workflow sources the operator registered
//! (`state.sources`). The one seam between triggers and sources.

use secureclaw_engine::validate::Validated;

use crate::app::AppState;
use crate::error::ApiResult;

/// A bound workflow, ready to run.
pub struct BoundWorkflow {
    /// With its provenance when the source is a git repository.
    pub validated: Validated,
    /// The workspace the source's triggered runs use, if it names one.
    pub workspace: Option<String>,
}

/// The workflow at `path` in `source`; with `fetch`, the source is fetched first so the run is
/// at its newest commit.
pub async fn resolve(
    state: &AppState,
    source: &str,
    path: &str,
    fetch: bool,
) -> ApiResult<BoundWorkflow> {
    let resolved = state.sources.resolve(state, source, path, fetch).await?;
    Ok(BoundWorkflow {
        validated: resolved.validated,
        workspace: resolved.workspace,
    })
}

/// Fetch `source` (a push hook without a workflow): its new head commit, if it is a git
/// repository.
pub async fn refresh(state: &AppState, source: &str) -> ApiResult<Option<String>> {
    let record = state.sources.record(state, source)?;
    Ok(state.sources.scan(&record, true).await?.commit)
}

/// The source exists (binding a push hook must not fetch it yet).
pub fn exists(state: &AppState, source: &str) -> ApiResult<()> {
    state.sources.record(state, source).map(|_| ())
}
