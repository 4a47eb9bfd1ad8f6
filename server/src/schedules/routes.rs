//! `GET /api/v1/schedules`: each scheduled workflow, its next time and its last start.

use axum::extract::State;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::ScheduleView;
use crate::app::AppState;
use crate::auth::Identity;
use crate::error::{ApiResult, Problem};

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ScheduleList {
    pub schedules: Vec<ScheduleView>,
}

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list_schedules))
}

/// Scheduled workflows: an admin sees all, a user those whose runs are theirs.
#[utoipa::path(get, path = "/schedules", tag = "schedules",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "each schedule with its cron, time zone, next time and last start", body = ScheduleList),
        (status = 401, description = "not signed in", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn list_schedules(
    State(state): State<AppState>,
    who: Identity,
) -> ApiResult<axum::Json<ScheduleList>> {
    let schedules = state
        .schedules
        .list()
        .into_iter()
        .filter(|s| who.admin || s.owner == who.user_id)
        .collect();
    Ok(axum::Json(ScheduleList { schedules }))
}
