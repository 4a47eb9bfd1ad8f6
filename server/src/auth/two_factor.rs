//! `/api/v1/auth/2fa/*`: set up, enable and disable TOTP sign-in. Turning 2FA on or off needs a
//! current code and ends the user's other sessions and pending login tickets.

use axum::Json;
use axum::extract::State;
use secureclaw_engine::session::Audit;
use secureclaw_engine::tools::vault::kind;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::routes::check_code;
use super::totp::{self, TotpSetup};
use super::{ClientAddr, Identity};
use crate::app::AppState;
use crate::error::{ApiError, ApiResult, Problem};
use crate::extract::JsonBody;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(setup))
        .routes(routes!(enable))
        .routes(routes!(disable))
}

/// A current TOTP code.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CodeRequest {
    /// The 6-digit code the authenticator shows now.
    pub code: String,
}

/// 2FA after a change.
#[derive(Debug, Serialize, ToSchema)]
pub struct TwoFactorStatus {
    pub enabled: bool,
    /// The user's other sessions that the change ended.
    pub sessions_ended: usize,
}

/// A fresh TOTP secret to enable 2FA with (while 2FA is off; the previous secret, if any, is
/// replaced).
#[utoipa::path(post, path = "/auth/2fa/setup", tag = "auth",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "the new secret and its otpauth:// URL", body = TotpSetup),
        (status = 401, description = "not signed in", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`totp_already_enabled`: disable it first", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn setup(State(state): State<AppState>, who: Identity) -> ApiResult<Json<TotpSetup>> {
    let auth = &state.auth;
    let _writing = auth.account_writes.lock().await;
    let mut account = auth
        .accounts
        .get(&who.user_id)?
        .ok_or_else(|| ApiError::unauthorized("the account no longer exists"))?;
    if account.totp.as_ref().is_some_and(|t| t.enabled) {
        return Err(already_enabled());
    }
    let fresh = totp::fresh_state();
    let out = totp::setup(&fresh, &state.config.totp_issuer, &account.username)?;
    account.totp = Some(fresh);
    auth.accounts.save(&account, Vec::new()).await?;
    Ok(Json(out))
}

/// Require a TOTP code at sign-in from now on. Needs a current code from the secret of the
/// setup; the code is spent.
#[utoipa::path(post, path = "/auth/2fa/enable", tag = "auth",
    security(("bearer" = [])),
    request_body = CodeRequest,
    responses(
        (status = 200, description = "2FA is on; the user's other sessions ended", body = TwoFactorStatus),
        (status = 400, description = "malformed body", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "not signed in, or `invalid_code`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`totp_already_enabled` or `totp_not_set_up`", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "`rate_limited` or `locked_out` after wrong codes", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn enable(
    State(state): State<AppState>,
    who: Identity,
    client: ClientAddr,
    JsonBody(req): JsonBody<CodeRequest>,
) -> ApiResult<Json<TwoFactorStatus>> {
    change(&state, &who, client, &req.code, true).await
}

/// Stop requiring a TOTP code; needs a current one. The secret is dropped (set up anew to
/// enable again).
#[utoipa::path(post, path = "/auth/2fa/disable", tag = "auth",
    security(("bearer" = [])),
    request_body = CodeRequest,
    responses(
        (status = 200, description = "2FA is off; the user's other sessions ended", body = TwoFactorStatus),
        (status = 400, description = "malformed body", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "not signed in, or `invalid_code`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`totp_not_enabled`", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "`rate_limited` or `locked_out` after wrong codes", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn disable(
    State(state): State<AppState>,
    who: Identity,
    client: ClientAddr,
    JsonBody(req): JsonBody<CodeRequest>,
) -> ApiResult<Json<TwoFactorStatus>> {
    change(&state, &who, client, &req.code, false).await
}

async fn change(
    state: &AppState,
    who: &Identity,
    client: ClientAddr,
    code: &str,
    enabled: bool,
) -> ApiResult<Json<TwoFactorStatus>> {
    let auth = &state.auth;
    let _writing = auth.account_writes.lock().await;
    auth.throttle
        .check(&who.username, client.0)
        .map_err(|r| r.into_error())?;
    let mut account = auth
        .accounts
        .get(&who.user_id)?
        .ok_or_else(|| ApiError::unauthorized("the account no longer exists"))?;
    match (&account.totp, enabled) {
        (Some(t), true) if t.enabled => return Err(already_enabled()),
        (None, true) => {
            return Err(
                ApiError::conflict("totp_not_set_up", "this account has no TOTP secret")
                    .with_hint("POST /api/v1/auth/2fa/setup"),
            );
        }
        (t, false) if !t.as_ref().is_some_and(|t| t.enabled) => {
            return Err(ApiError::conflict(
                "totp_not_enabled",
                "two-factor sign-in is not on",
            ));
        }
        _ => {}
    }
    let during = if enabled { "2fa_enable" } else { "2fa_disable" };
    check_code(state, &mut account, code, client, during).await?;
    auth.throttle.succeed(&who.username);
    if enabled {
        if let Some(t) = account.totp.as_mut() {
            t.enabled = true;
        }
    } else {
        account.totp = None;
    }
    auth.tickets.forget_user(&who.user_id);
    let ended = auth
        .sessions
        .end_others_of(&who.user_id, Some(&who.session_id))
        .await?;
    auth.accounts
        .save(
            &account,
            vec![Audit::new(
                kind::AUTH_2FA_CHANGED,
                who.actor(),
                serde_json::json!({
                    "enabled": enabled,
                    "sessions_ended": ended,
                    "client": client.0.to_string(),
                }),
            )],
        )
        .await?;
    Ok(Json(TwoFactorStatus {
        enabled,
        sessions_ended: ended,
    }))
}

fn already_enabled() -> ApiError {
    ApiError::conflict("totp_already_enabled", "two-factor sign-in is already on")
        .with_hint("POST /api/v1/auth/2fa/disable with a current code first")
}
