//! `/api/v1/auth/*`.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use secureclaw_engine::session::Audit;
use secureclaw_engine::tools::vault::kind;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{ClientAddr, Identity};
use crate::app::AppState;
use crate::error::{ApiError, ApiResult, Problem};
use crate::extract::JsonBody;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(register))
        .routes(routes!(login))
        .routes(routes!(logout))
        .routes(routes!(me))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

/// A signed-in session's token.
#[derive(Debug, Serialize, ToSchema)]
pub struct TokenResponse {
    pub access_token: String,
    /// Always `Bearer`.
    pub token_type: String,
    /// Unix seconds.
    pub expires_at: u64,
    pub user: Identity,
}

/// A new account and its first session.
#[derive(Debug, Serialize, ToSchema)]
pub struct Registered {
    #[serde(flatten)]
    pub token: TokenResponse,
}

/// Create an account. The first account is an admin.
#[utoipa::path(post, path = "/auth/register", tag = "auth",
    request_body = Credentials,
    responses(
        (status = 201, description = "account created, signed in", body = Registered),
        (status = 400, description = "bad username or weak password", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "username taken", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn register(
    State(state): State<AppState>,
    client: ClientAddr,
    JsonBody(req): JsonBody<Credentials>,
) -> ApiResult<(StatusCode, Json<Registered>)> {
    let account = state
        .auth
        .accounts
        .create(
            &req.username,
            &req.password,
            false,
            &format!("addr:{}", client.0),
        )
        .await?;
    let token = sign_in(&state, &account, client, "register").await?;
    Ok((StatusCode::CREATED, Json(Registered { token })))
}

/// Sign in with a username and password.
#[utoipa::path(post, path = "/auth/login", tag = "auth",
    request_body = Credentials,
    responses(
        (status = 200, description = "signed in", body = TokenResponse),
        (status = 401, description = "wrong username or password", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn login(
    State(state): State<AppState>,
    client: ClientAddr,
    JsonBody(req): JsonBody<Credentials>,
) -> ApiResult<Json<TokenResponse>> {
    let accounts = &state.auth.accounts;
    let account = accounts.find(&req.username)?;
    let ok = match &account {
        Some(a) => {
            accounts
                .verify_password(&a.password_hash, &req.password)
                .await
        }
        None => {
            accounts.verify_dummy(&req.password).await;
            false
        }
    };
    let Some(account) = account.filter(|_| ok) else {
        state
            .session
            .audit(Audit::new(
                kind::AUTH_LOGIN_FAILED,
                format!("addr:{}", client.0),
                serde_json::json!({"user": req.username, "reason": "bad credentials"}),
            ))
            .await?;
        return Err(ApiError::unauthorized("wrong username or password"));
    };
    Ok(Json(sign_in(&state, &account, client, "password").await?))
}

/// Start a session and sign its token; the ledger records the sign-in.
pub async fn sign_in(
    state: &AppState,
    account: &super::Account,
    client: ClientAddr,
    method: &str,
) -> ApiResult<TokenResponse> {
    let auth = &state.auth;
    let sid = auth
        .sessions
        .start(&account.id, u64::MAX, client.0.to_string());
    let (access_token, expires_at) = auth.tokens.issue(&account.id, &sid)?;
    auth.sessions.set_expiry(&sid, expires_at);
    state
        .session
        .audit(Audit::new(
            kind::AUTH_LOGIN,
            format!("user:{}", account.username),
            serde_json::json!({"method": method, "client": client.0.to_string()}),
        ))
        .await?;
    Ok(TokenResponse {
        access_token,
        token_type: "Bearer".into(),
        expires_at,
        user: Identity {
            user_id: account.id.clone(),
            username: account.username.clone(),
            admin: account.admin,
            roles: account.roles.clone(),
            session_id: sid,
        },
    })
}

/// End this session: its token stops working at once.
#[utoipa::path(post, path = "/auth/logout", tag = "auth",
    security(("bearer" = [])),
    responses(
        (status = 204, description = "signed out"),
        (status = 401, description = "not signed in", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn logout(State(state): State<AppState>, who: Identity) -> ApiResult<StatusCode> {
    state.auth.sessions.end(&who.session_id);
    state
        .session
        .audit(Audit::new(
            kind::AUTH_LOGOUT,
            who.actor(),
            serde_json::json!({"session": "ended by sign-out"}),
        ))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Who the token belongs to.
#[utoipa::path(get, path = "/auth/me", tag = "auth",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "the signed-in user", body = Identity),
        (status = 401, description = "not signed in", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn me(who: Identity) -> Json<Identity> {
    Json(who)
}
