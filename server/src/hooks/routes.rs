//! `/api/v1/triggers`: binding webhook triggers to workflows, their secrets and deliveries.
//! Admins only. A secret is returned once, in the reply that created it, and never again.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use secureclaw_engine::model::{HookPreset, Tier};
use secureclaw_engine::session::Audit;
use secureclaw_engine::tools::vault::kind;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use zeroize::Zeroizing;

use super::signature::Scheme;
use super::store::{Binding, DeliveryRecord, Secrets, TriggerStore, parse_name};
use super::{source, unix_now};
use crate::app::AppState;
use crate::auth::Identity;
use crate::error::{ApiError, ApiResult, Problem};
use crate::extract::{JsonBody, JsonOrDefault};

/// How long a rotated-out secret keeps verifying unless told otherwise: a day.
pub const DEFAULT_GRACE_SECS: u64 = 24 * 60 * 60;
/// The longest grace period: a week.
pub const MAX_GRACE_SECS: u64 = 7 * 24 * 60 * 60;

/// A trigger to bind.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTrigger {
    /// `[a-z0-9_-]{1,64}`; deliveries go to `POST /api/v1/hooks/{name}`.
    pub name: String,
    /// A registered workflow source.
    pub source: String,
    /// The workflow file in the source, which must declare `on.webhook`. Without one, the
    /// trigger is a push hook (GitHub preset) that only re-fetches the source.
    pub path: Option<String>,
    /// The shared secret; when absent one is generated and returned once.
    pub secret: Option<String>,
    /// Tiers the runs it starts have approved up front (`read_only`, `low_write`,
    /// `destructive`, `network_egress`); default none: every gate parks for a person.
    pub approve: Option<Vec<String>>,
    /// Default true.
    pub enabled: Option<bool>,
}

impl std::fmt::Debug for CreateTrigger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreateTrigger")
            .field("name", &self.name)
            .field("source", &self.source)
            .field("path", &self.path)
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field("approve", &self.approve)
            .field("enabled", &self.enabled)
            .finish()
    }
}

/// A secret rotation.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateSecret {
    /// How long the old secret keeps verifying (default a day, at most a week).
    pub grace_seconds: Option<u64>,
}

/// A binding as the API shows it (never its secret).
#[derive(Debug, Serialize, ToSchema)]
pub struct TriggerView {
    pub name: String,
    pub source: String,
    pub path: Option<String>,
    /// `github`, `standard_webhooks` or `hmac`.
    pub preset: String,
    /// The `hmac` preset's signature header.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    pub approve: Vec<String>,
    pub enabled: bool,
    pub created_by: String,
    /// RFC 3339.
    pub created: String,
    /// RFC 3339 of the last rotation.
    pub rotated: Option<String>,
    /// Until when (RFC 3339) the secret before the last rotation still verifies.
    pub previous_secret_until: Option<String>,
    /// Where senders deliver.
    pub url: String,
}

/// A new secret: shown here once, never again.
#[derive(Serialize, ToSchema)]
pub struct WithSecret {
    pub trigger: TriggerView,
    pub secret: String,
}

/// A trigger's recent deliveries, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryList {
    pub deliveries: Vec<DeliveryRecord>,
}

fn require_admin(who: &Identity) -> ApiResult<()> {
    if who.admin {
        Ok(())
    } else {
        Err(ApiError::forbidden("only an admin may manage triggers"))
    }
}

fn preset_name(p: HookPreset) -> String {
    serde_json::to_value(p)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

fn rfc3339(unix: i64) -> Option<String> {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
}

pub fn view(b: &Binding) -> TriggerView {
    TriggerView {
        name: b.name.clone(),
        source: b.source.clone(),
        path: b.path.clone(),
        preset: preset_name(b.preset),
        header: b.header.clone(),
        approve: b.approve.iter().map(|t| t.as_str().to_string()).collect(),
        enabled: b.enabled,
        created_by: b.created_by.clone(),
        created: b.created.clone(),
        rotated: b.rotated.clone(),
        previous_secret_until: b
            .grace_until
            .filter(|until| *until > unix_now())
            .and_then(rfc3339),
        url: format!("/api/v1/hooks/{}", b.name),
    }
}

/// A reply carrying a secret: never cached by anything between.
fn secret_reply(status: StatusCode, body: WithSecret) -> Response {
    let mut res = (status, Json(body)).into_response();
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

fn tiers(names: &[String]) -> ApiResult<Vec<Tier>> {
    let mut out = Vec::new();
    for n in names {
        let t = Tier::parse(n).ok_or_else(|| {
            ApiError::bad_request(
                "invalid_tiers",
                format!(
                    "`{n}` is not a tier: one of read_only, low_write, destructive, network_egress"
                ),
            )
        })?;
        if !out.contains(&t) {
            out.push(t);
        }
    }
    Ok(out)
}

fn existing(state: &AppState, name: &str) -> ApiResult<Binding> {
    let name = parse_name(name)?;
    TriggerStore::new(state.session.clone())
        .get(&name)?
        .ok_or_else(|| ApiError::not_found("trigger"))
}

fn lock_key(name: &str) -> String {
    format!("trigger:{name}")
}

/// Bind a trigger. The reply holds its secret, once.
#[utoipa::path(post, path = "/triggers", tag = "triggers", request_body = CreateTrigger,
    security(("bearer" = [])),
    responses(
        (status = 201, description = "bound; the secret is in this reply and nowhere else", body = WithSecret),
        (status = 400, description = "`invalid_name`, `no_webhook_trigger`, `invalid_secret`, `invalid_tiers`, an unknown source or workflow, an invalid workflow", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "not signed in", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "not an admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "no such source, or no such workflow in it", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`trigger_exists`", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn create_trigger(
    State(state): State<AppState>,
    who: Identity,
    JsonBody(req): JsonBody<CreateTrigger>,
) -> ApiResult<Response> {
    require_admin(&who)?;
    let secret_given = req.secret.map(Zeroizing::new);
    let name = parse_name(&req.name).map_err(|_| {
        ApiError::bad_request(
            "invalid_name",
            "a trigger name is 1 to 64 of a-z, 0-9, '-' and '_'",
        )
    })?;
    let approve = tiers(req.approve.as_deref().unwrap_or_default())?;
    let (preset, header) = match &req.path {
        Some(path) => {
            let bound = source::resolve(&state, &req.source, path, false).await?;
            let Some(hook) = bound.validated.workflow.on.webhook else {
                return Err(ApiError::bad_request(
                    "no_webhook_trigger",
                    format!("{}/{path} does not declare `on.webhook`", req.source),
                )
                .with_hint(
                    "add `on: { webhook: { preset: github } }` (or standard_webhooks, hmac) to the workflow, commit it, and bind again",
                ));
            };
            (hook.preset, hook.header)
        }
        None => {
            source::exists(&state, &req.source)?;
            (HookPreset::Github, None)
        }
    };
    let scheme = Scheme::new(preset, header.as_deref());
    let secret = match secret_given {
        Some(s) => {
            scheme
                .key(&s)
                .map_err(|e| ApiError::bad_request("invalid_secret", e.0))?;
            s
        }
        None => Zeroizing::new(
            scheme
                .generate_secret()
                .map_err(|e| ApiError::internal(e.0))?,
        ),
    };
    let store = TriggerStore::new(state.session.clone());
    let _guard = state.tasks.lock(&lock_key(&name)).await;
    if store.get(&name)?.is_some() {
        return Err(ApiError::conflict(
            "trigger_exists",
            format!("a trigger named `{name}` is bound already"),
        )
        .with_hint("DELETE it first, or pick another name"));
    }
    let mut binding = Binding::new(
        name.clone(),
        req.source.clone(),
        req.path.clone(),
        preset,
        header,
        approve,
        req.enabled.unwrap_or(true),
        who.user_id.clone(),
        who.username.clone(),
    );
    binding.seal(
        &state.session,
        &Secrets {
            current: secret.to_string(),
            previous: None,
        },
    )?;
    let audit = Audit::new(
        kind::TRIGGER_BOUND,
        who.actor(),
        serde_json::json!({
            "trigger": name,
            "source": binding.source,
            "path": binding.path,
            "preset": binding.preset,
            "approve": binding.approve,
            "enabled": binding.enabled,
        }),
    );
    store.save(&binding, audit).await?;
    Ok(secret_reply(
        StatusCode::CREATED,
        WithSecret {
            trigger: view(&binding),
            secret: secret.to_string(),
        },
    ))
}

/// Every trigger, by name.
#[utoipa::path(get, path = "/triggers", tag = "triggers", security(("bearer" = [])),
    responses(
        (status = 200, description = "the triggers (no secrets)", body = [TriggerView]),
        (status = 403, description = "not an admin", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn list_triggers(
    State(state): State<AppState>,
    who: Identity,
) -> ApiResult<Json<Vec<TriggerView>>> {
    require_admin(&who)?;
    let list = TriggerStore::new(state.session.clone()).list()?;
    Ok(Json(list.iter().map(view).collect()))
}

/// One trigger.
#[utoipa::path(get, path = "/triggers/{name}", tag = "triggers", security(("bearer" = [])),
    params(("name" = String, Path, description = "trigger name")),
    responses(
        (status = 200, description = "the trigger (no secret)", body = TriggerView),
        (status = 403, description = "not an admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "no such trigger", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn get_trigger(
    State(state): State<AppState>,
    who: Identity,
    Path(name): Path<String>,
) -> ApiResult<Json<TriggerView>> {
    require_admin(&who)?;
    Ok(Json(view(&existing(&state, &name)?)))
}

async fn set_enabled(
    state: &AppState,
    who: &Identity,
    name: &str,
    enabled: bool,
) -> ApiResult<Json<TriggerView>> {
    require_admin(who)?;
    let name = parse_name(name)?;
    let _guard = state.tasks.lock(&lock_key(&name)).await;
    let mut binding = existing(state, &name)?;
    binding.enabled = enabled;
    let audit = Audit::new(
        kind::TRIGGER_CHANGED,
        who.actor(),
        serde_json::json!({
            "trigger": name,
            "change": if enabled { "enabled" } else { "disabled" },
        }),
    );
    TriggerStore::new(state.session.clone())
        .save(&binding, audit)
        .await?;
    Ok(Json(view(&binding)))
}

/// Stop taking deliveries: each one is refused (403) and recorded; nothing is created.
#[utoipa::path(post, path = "/triggers/{name}/disable", tag = "triggers", security(("bearer" = [])),
    params(("name" = String, Path, description = "trigger name")),
    responses(
        (status = 200, description = "disabled", body = TriggerView),
        (status = 403, description = "not an admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "no such trigger", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn disable_trigger(
    State(state): State<AppState>,
    who: Identity,
    Path(name): Path<String>,
) -> ApiResult<Json<TriggerView>> {
    set_enabled(&state, &who, &name, false).await
}

/// Take deliveries again.
#[utoipa::path(post, path = "/triggers/{name}/enable", tag = "triggers", security(("bearer" = [])),
    params(("name" = String, Path, description = "trigger name")),
    responses(
        (status = 200, description = "enabled", body = TriggerView),
        (status = 403, description = "not an admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "no such trigger", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn enable_trigger(
    State(state): State<AppState>,
    who: Identity,
    Path(name): Path<String>,
) -> ApiResult<Json<TriggerView>> {
    set_enabled(&state, &who, &name, true).await
}

/// Replace the secret. The reply holds the new one, once; the old one keeps verifying for the
/// grace period so senders can be switched over.
#[utoipa::path(post, path = "/triggers/{name}/rotate", tag = "triggers", security(("bearer" = [])),
    params(("name" = String, Path, description = "trigger name")),
    request_body = RotateSecret,
    responses(
        (status = 200, description = "the new secret, once", body = WithSecret),
        (status = 400, description = "`invalid_grace`: over a week", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "not an admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "no such trigger", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn rotate_secret(
    State(state): State<AppState>,
    who: Identity,
    Path(name): Path<String>,
    JsonOrDefault(req): JsonOrDefault<RotateSecret>,
) -> ApiResult<Response> {
    require_admin(&who)?;
    let grace = req.grace_seconds.unwrap_or(DEFAULT_GRACE_SECS);
    if grace > MAX_GRACE_SECS {
        return Err(ApiError::bad_request(
            "invalid_grace",
            format!("the grace period is at most {MAX_GRACE_SECS} seconds (a week)"),
        ));
    }
    let name = parse_name(&name)?;
    let _guard = state.tasks.lock(&lock_key(&name)).await;
    let mut binding = existing(&state, &name)?;
    let fresh = Zeroizing::new(
        binding
            .scheme()
            .generate_secret()
            .map_err(|e| ApiError::internal(e.0))?,
    );
    // `grace` is at most a week, so it fits an i64.
    let until = unix_now() + i64::try_from(grace).unwrap_or(0);
    binding.rotate(&state.session, fresh.to_string(), until)?;
    let audit = Audit::new(
        kind::TRIGGER_SECRET_ROTATED,
        who.actor(),
        serde_json::json!({ "trigger": name, "grace_until": rfc3339(until) }),
    );
    TriggerStore::new(state.session.clone())
        .save(&binding, audit)
        .await?;
    Ok(secret_reply(
        StatusCode::OK,
        WithSecret {
            trigger: view(&binding),
            secret: fresh.to_string(),
        },
    ))
}

/// Unbind a trigger; its delivery list and the delivery ids it has seen go with it (the
/// ledger keeps every delivery).
#[utoipa::path(delete, path = "/triggers/{name}", tag = "triggers", security(("bearer" = [])),
    params(("name" = String, Path, description = "trigger name")),
    responses(
        (status = 204, description = "removed"),
        (status = 403, description = "not an admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "no such trigger", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn delete_trigger(
    State(state): State<AppState>,
    who: Identity,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    require_admin(&who)?;
    let name = parse_name(&name)?;
    let _guard = state.tasks.lock(&lock_key(&name)).await;
    existing(&state, &name)?;
    let audit = Audit::new(
        kind::TRIGGER_CHANGED,
        who.actor(),
        serde_json::json!({ "trigger": name, "change": "removed" }),
    );
    TriggerStore::new(state.session.clone())
        .remove(&name, audit)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The trigger's most recent deliveries (up to 200), newest first: accepted, duplicate,
/// ignored and refused ones, with the reason and the task and run each started.
#[utoipa::path(get, path = "/triggers/{name}/deliveries", tag = "triggers", security(("bearer" = [])),
    params(("name" = String, Path, description = "trigger name")),
    responses(
        (status = 200, description = "newest first", body = DeliveryList),
        (status = 403, description = "not an admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "no such trigger", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn list_deliveries(
    State(state): State<AppState>,
    who: Identity,
    Path(name): Path<String>,
) -> ApiResult<Json<DeliveryList>> {
    require_admin(&who)?;
    let binding = existing(&state, &name)?;
    Ok(Json(DeliveryList {
        deliveries: TriggerStore::new(state.session.clone()).deliveries(&binding.name)?,
    }))
}

/// The lock that orders changes to one trigger and its delivery list.
pub(super) fn trigger_lock(name: &str) -> String {
    lock_key(name)
}
