//! `/health` and `/metrics`.

use axum::Json;
use axum::extract::State;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::app::AppState;

/// Counters the handlers feed; rendered by `/metrics`.
#[derive(Default)]
pub struct Metrics {}

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(health))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// `ok` or `degraded`.
    pub status: String,
    pub version: String,
    /// `connected` when the sealed store answers.
    pub database: String,
    /// Provider name → whether it is configured.
    pub llm_providers: serde_json::Map<String, serde_json::Value>,
}

/// Store and LLM provider health.
#[utoipa::path(get, path = "/health", tag = "ops",
    responses((status = 200, description = "the server is up", body = Health)))]
pub async fn health(State(state): State<AppState>) -> Json<Health> {
    let database = match state.session.runs() {
        Ok(_) => "connected",
        Err(_) => "unavailable",
    };
    Json(Health {
        status: if database == "connected" {
            "ok"
        } else {
            "degraded"
        }
        .into(),
        version: env!("CARGO_PKG_VERSION").into(),
        database: database.into(),
        llm_providers: serde_json::Map::new(),
    })
}
