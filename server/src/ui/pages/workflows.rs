//! The workflows overview: registered sources, their workflow files with validation status,
//! webhook triggers with their recent deliveries, and schedules with their next time.
//!
//! Read-only. Every list comes from the API's own handler called with the viewer's identity,
//! so what a user may see here is exactly what the API would show them (triggers are for
//! admins; a user sees the schedules whose runs are theirs).

use axum::extract::{Path, State};
use axum::routing::get;
use axum::{Json, Router};
use minijinja::{Value, context};
use serde::Serialize;

use super::WORKFLOWS;
use crate::app::AppState;
use crate::error::ApiError;
use crate::hooks::store::DeliveryRecord;
use crate::ui::{UiResult, Viewer};

/// Deliveries shown at once per trigger; the rest (the API keeps up to 200) fold away.
const RECENT_DELIVERIES: usize = 5;

pub fn routes() -> Router<AppState> {
    Router::new().route(WORKFLOWS, get(workflows))
}

/// A trigger and its deliveries, newest first.
#[derive(Debug, Serialize)]
struct TriggerRow {
    trigger: Value,
    recent: Vec<DeliveryRecord>,
    older: Vec<DeliveryRecord>,
}

/// A workflow file and, when it validates, where to run it.
#[derive(Debug, Serialize)]
struct FileRow {
    file: Value,
    run: Option<String>,
    /// What starts it besides a user, in words (`webhook`, `schedule 0 3 * * * UTC`, `watch`).
    starts_on: Vec<String>,
}

async fn workflows(State(state): State<AppState>, viewer: Viewer) -> UiResult {
    let who = &viewer.who;
    let Json(sources) =
        crate::sources::routes::list_sources(State(state.clone()), who.clone()).await?;
    let Json(files) =
        crate::sources::routes::list_workflows(State(state.clone()), who.clone()).await?;
    let Json(schedules) =
        crate::schedules::routes::list_schedules(State(state.clone()), who.clone()).await?;

    // The API keeps triggers to admins; anyone else gets a sentence instead of an error page.
    let triggers =
        match crate::hooks::routes::list_triggers(State(state.clone()), who.clone()).await {
            Ok(Json(list)) => {
                let mut rows = Vec::new();
                for t in list {
                    let Json(mut d) = crate::hooks::routes::list_deliveries(
                        State(state.clone()),
                        who.clone(),
                        Path(t.name.clone()),
                    )
                    .await?;
                    let older = d
                        .deliveries
                        .split_off(RECENT_DELIVERIES.min(d.deliveries.len()));
                    rows.push(TriggerRow {
                        trigger: Value::from_serialize(&t),
                        recent: d.deliveries,
                        older,
                    });
                }
                Some(rows)
            }
            Err(e) if e.status == axum::http::StatusCode::FORBIDDEN => None,
            Err(e) => return Err(e.into()),
        };

    let file_rows = files
        .workflows
        .iter()
        .map(|f| {
            Ok(FileRow {
                run: if f.valid {
                    Some(run_link(&f.source, &f.path)?)
                } else {
                    None
                },
                starts_on: starts_on(f.triggers.as_ref()),
                file: Value::from_serialize(f),
            })
        })
        .collect::<Result<Vec<_>, ApiError>>()?;

    viewer.page(
        &state,
        "workflows.html",
        "Workflows",
        context! {
            sources => Value::from_serialize(&sources.sources),
            files => file_rows,
            unavailable => Value::from_serialize(&files.unavailable),
            triggers => triggers.map(|t| Value::from_serialize(&t)),
            schedules => Value::from_serialize(&schedules.schedules),
        },
    )
}

/// The `on:` summary of a file (`{"webhook": .., "schedule": .., "watch": ..}`, absent ones
/// null) as words.
fn starts_on(triggers: Option<&serde_json::Value>) -> Vec<String> {
    let Some(map) = triggers.and_then(serde_json::Value::as_object) else {
        return Vec::new();
    };
    map.iter()
        .filter(|(_, v)| !v.is_null())
        .map(
            |(k, v)| match (k.as_str(), v.get("cron"), v.get("timezone")) {
                ("schedule", Some(cron), Some(tz)) => format!(
                    "schedule {} {}",
                    cron.as_str().unwrap_or_default(),
                    tz.as_str().unwrap_or_default()
                ),
                _ => k.clone(),
            },
        )
        .collect()
}

/// The run form's address for one file.
fn run_link(source: &str, path: &str) -> Result<String, ApiError> {
    serde_html_form::to_string([("source", source), ("path", path)])
        .map(|q| format!("/ui/workflows/run?{q}"))
        .map_err(|e| ApiError::internal(format!("run link: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn only_the_triggers_a_file_has_are_named() {
        assert!(starts_on(None).is_empty());
        let on = json!({"webhook": {}, "schedule": null, "watch": null});
        assert_eq!(starts_on(Some(&on)), ["webhook"]);
        let on = json!({
            "webhook": null,
            "schedule": {"cron": "0 3 * * *", "timezone": "Europe/Paris"},
            "watch": ["src/**"],
        });
        assert_eq!(
            starts_on(Some(&on)),
            ["schedule 0 3 * * * Europe/Paris", "watch"]
        );
    }

    #[test]
    fn run_links_carry_the_source_and_path_encoded() {
        assert_eq!(
            run_link("ops", "flows/a b.yml").unwrap(),
            "/ui/workflows/run?source=ops&path=flows%2Fa+b.yml"
        );
    }
}
