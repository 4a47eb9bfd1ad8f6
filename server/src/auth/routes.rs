//! `/api/v1/auth/*`: register, sign in (password, then a TOTP code when 2FA is on), sign out,
//! and the user's own sessions.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use secureclaw_engine::session::Audit;
use secureclaw_engine::tools::vault::kind;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::limits::AfterFailure;
use super::totp::{self, TotpSetup};
use super::{Account, ClientAddr, Identity};
use crate::app::AppState;
use crate::error::{ApiError, ApiResult, Problem};
use crate::extract::JsonBody;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(register))
        .routes(routes!(login))
        .routes(routes!(login_totp))
        .routes(routes!(logout))
        .routes(routes!(me))
        .routes(routes!(list_sessions))
        .routes(routes!(revoke_session))
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

/// A new account, its first session, and the TOTP setup to enable 2FA with.
#[derive(Debug, Serialize, ToSchema)]
pub struct Registered {
    #[serde(flatten)]
    pub token: TokenResponse,
    pub totp: TotpSetup,
}

/// The password was right and the account needs a TOTP code: send it with the ticket to
/// `POST /api/v1/auth/login/totp`. The ticket is not an access token.
#[derive(Debug, Serialize, ToSchema)]
pub struct TotpRequired {
    /// Always `true`.
    pub totp_required: bool,
    /// Single-use, short-lived.
    pub login_token: String,
    /// Seconds the ticket stays valid.
    pub expires_in: u64,
}

/// Signed in, or one step short of it.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum LoginResponse {
    Token(TokenResponse),
    TotpRequired(TotpRequired),
}

/// The second step of a sign-in with 2FA.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TotpLogin {
    pub login_token: String,
    /// The 6-digit code the authenticator shows now.
    pub code: String,
}

/// Create an account (the first one is an admin) and sign in. The answer carries the TOTP
/// setup; 2FA is off until `POST /api/v1/auth/2fa/enable`.
#[utoipa::path(post, path = "/auth/register", tag = "auth",
    request_body = Credentials,
    responses(
        (status = 201, description = "account created, signed in", body = Registered),
        (status = 400, description = "bad username, weak password or malformed body", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "username taken", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "too many accounts from this address (`rate_limited`, with Retry-After)", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn register(
    State(state): State<AppState>,
    client: ClientAddr,
    JsonBody(req): JsonBody<Credentials>,
) -> ApiResult<(StatusCode, Json<Registered>)> {
    state.auth.throttle.register(client.0)?;
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
    let setup = match &account.totp {
        Some(t) => totp::setup(t, &state.config.totp_issuer, &account.username)?,
        None => return Err(ApiError::internal("a new account has no TOTP secret")),
    };
    let token = sign_in(&state, &account, client, "register").await?;
    Ok((StatusCode::CREATED, Json(Registered { token, totp: setup })))
}

/// Sign in with a username and password. With 2FA on, the answer is a ticket for
/// `login/totp` instead of a token.
#[utoipa::path(post, path = "/auth/login", tag = "auth",
    request_body = Credentials,
    responses(
        (status = 200, description = "signed in, or `totp_required` with a login ticket", body = LoginResponse),
        (status = 400, description = "malformed body", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "wrong username or password (the same answer for both)", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "`rate_limited` (wait Retry-After seconds) or `locked_out` (the account is locked, even for the right password)", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn login(
    State(state): State<AppState>,
    client: ClientAddr,
    JsonBody(req): JsonBody<Credentials>,
) -> ApiResult<Json<LoginResponse>> {
    let auth = &state.auth;
    let _attempt = auth
        .throttle
        .begin(&req.username, client.0)
        .map_err(|r| r.into_error())?;
    let accounts = &auth.accounts;
    // A name or password longer than any account's is wrong; it is not worth an index lookup
    // or an Argon2id hash of a megabyte.
    let plausible = req.username.len() <= super::accounts::MAX_USERNAME_LEN
        && req.password.len() <= super::accounts::MAX_PASSWORD_LEN;
    let account = if plausible {
        accounts.find(&req.username)?
    } else {
        None
    };
    let ok = match &account {
        Some(a) => {
            accounts
                .verify_password(&a.password_hash, &req.password)
                .await
        }
        None if plausible => {
            accounts.verify_dummy(&req.password).await;
            false
        }
        None => false,
    };
    let reason = if account.is_some() {
        "bad password"
    } else {
        "unknown user"
    };
    let Some(account) = account.filter(|_| ok) else {
        record_failure(&state, &req.username, client, reason, "password").await?;
        return Err(ApiError::unauthorized("wrong username or password"));
    };
    if account.totp.as_ref().is_some_and(|t| t.enabled) {
        let login_token = auth.tickets.issue(&account.id)?;
        return Ok(Json(LoginResponse::TotpRequired(TotpRequired {
            totp_required: true,
            login_token,
            expires_in: auth.tickets.ttl().as_secs(),
        })));
    }
    auth.throttle.succeed(&req.username);
    Ok(Json(LoginResponse::Token(
        sign_in(&state, &account, client, "password").await?,
    )))
}

/// Finish a 2FA sign-in: the ticket from `login` and a current code. The ticket is spent
/// whatever the outcome; a code is accepted once only.
#[utoipa::path(post, path = "/auth/login/totp", tag = "auth",
    request_body = TotpLogin,
    responses(
        (status = 200, description = "signed in", body = TokenResponse),
        (status = 400, description = "malformed body", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "`invalid_login_token` (unknown, spent or expired ticket) or `invalid_code` (wrong or already used code)", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "`rate_limited` or `locked_out`", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn login_totp(
    State(state): State<AppState>,
    client: ClientAddr,
    JsonBody(req): JsonBody<TotpLogin>,
) -> ApiResult<Json<TokenResponse>> {
    let auth = &state.auth;
    let Some(user_id) = auth.tickets.redeem(&req.login_token) else {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_login_token",
            "this login ticket is unknown, spent or expired",
        )
        .with_hint("sign in with your password again"));
    };
    let account = {
        // Under the lock, so parallel guesses see each other's failures.
        let _writing = auth.account_writes.lock().await;
        let mut account = auth
            .accounts
            .get(&user_id)?
            .ok_or_else(|| ApiError::unauthorized("the account no longer exists"))?;
        auth.throttle
            .check(&account.username, client.0)
            .map_err(|r| r.into_error())?;
        check_code(&state, &mut account, &req.code, client, "login").await?;
        auth.accounts.save(&account, Vec::new()).await?;
        account
    };
    auth.throttle.succeed(&account.username);
    Ok(Json(sign_in(&state, &account, client, "totp").await?))
}

/// Check a TOTP code against the account and note the step it matched in the account (the
/// caller saves it, holding `account_writes` from reading the account to saving it, so no code
/// is spent twice). A refused code counts as a failed sign-in.
pub async fn check_code(
    state: &AppState,
    account: &mut Account,
    code: &str,
    client: ClientAddr,
    during: &str,
) -> ApiResult<()> {
    let Some(t) = account.totp.as_mut() else {
        return Err(
            ApiError::conflict("totp_not_set_up", "this account has no TOTP secret")
                .with_hint("POST /api/v1/auth/2fa/setup"),
        );
    };
    let now = super::tokens::unix_now();
    match totp::check(t, &state.config.totp_issuer, &account.username, code, now)? {
        Ok(step) => {
            t.last_step = Some(step);
            Ok(())
        }
        Err(why) => {
            record_failure(state, &account.username, client, why.reason(), during).await?;
            Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "invalid_code",
                "wrong or already used code",
            )
            .with_hint("wait for the next code of your authenticator"))
        }
    }
}

/// Count a failed password or code, and put it (and a lockout it causes) in the ledger.
pub async fn record_failure(
    state: &AppState,
    username: &str,
    client: ClientAddr,
    reason: &str,
    during: &str,
) -> ApiResult<()> {
    let after = state.auth.throttle.fail(username, client.0);
    let username = shown(username);
    let mut audits = vec![Audit::new(
        kind::AUTH_LOGIN_FAILED,
        format!("addr:{}", client.0),
        serde_json::json!({
            "user": username,
            "reason": reason,
            "step": during,
            "client": client.0.to_string(),
        }),
    )];
    if after == AfterFailure::LockedNow {
        audits.push(Audit::new(
            kind::AUTH_LOCKOUT,
            format!("addr:{}", client.0),
            serde_json::json!({
                "user": username,
                "client": client.0.to_string(),
                "seconds": state.auth.throttle.limits().lockout.as_secs(),
            }),
        ));
    }
    let mut batch = secureclaw_engine::session::AppBatch::default();
    for a in audits {
        batch.audit(a);
    }
    state.session.app_commit(batch).await?;
    Ok(())
}

/// A name as typed, for the ledger: at most a username's length (a longer one matches no
/// account, and must not bloat the ledger).
fn shown(username: &str) -> String {
    let max = super::accounts::MAX_USERNAME_LEN;
    if username.len() <= max {
        return username.to_string();
    }
    let mut end = max;
    while !username.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &username[..end])
}

/// Start a session and sign its token; the ledger records the sign-in.
pub async fn sign_in(
    state: &AppState,
    account: &Account,
    client: ClientAddr,
    method: &str,
) -> ApiResult<TokenResponse> {
    let auth = &state.auth;
    let sid = crate::auth::Sessions::new_id();
    let (access_token, expires_at) = auth.tokens.issue(&account.id, &sid)?;
    auth.sessions
        .start(&sid, &account.id, expires_at, client.0.to_string())
        .await?;
    state
        .session
        .audit(Audit::new(
            kind::AUTH_LOGIN,
            format!("user:{}", account.username),
            serde_json::json!({
                "method": method,
                "client": client.0.to_string(),
                "session": sid,
            }),
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
    state
        .auth
        .sessions
        .end(&who.session_id, &who.user_id)
        .await?;
    state
        .session
        .audit(Audit::new(
            kind::AUTH_LOGOUT,
            who.actor(),
            serde_json::json!({"how": "sign-out", "session": who.session_id}),
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

/// One of the user's sessions.
#[derive(Debug, Serialize, ToSchema)]
pub struct SessionView {
    pub id: String,
    /// Unix seconds.
    pub created: u64,
    /// Unix seconds.
    pub expires: u64,
    /// The client address it signed in from.
    pub client: String,
    /// The session of this request.
    pub current: bool,
}

/// The signed-in user's sessions (never another user's).
#[utoipa::path(get, path = "/auth/sessions", tag = "auth",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "the user's live sessions, oldest first", body = [SessionView]),
        (status = 401, description = "not signed in", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn list_sessions(State(state): State<AppState>, who: Identity) -> Json<Vec<SessionView>> {
    let mut out: Vec<SessionView> = state
        .auth
        .sessions
        .of_user(&who.user_id)
        .into_iter()
        .map(|s| SessionView {
            current: s.id == who.session_id,
            id: s.id,
            created: s.created,
            expires: s.expires,
            client: s.client,
        })
        .collect();
    out.sort_by(|a, b| a.created.cmp(&b.created).then_with(|| a.id.cmp(&b.id)));
    Json(out)
}

/// End one of the user's sessions (its token stops working at once). Another user's session
/// is `404`, as if it did not exist.
#[utoipa::path(delete, path = "/auth/sessions/{id}", tag = "auth",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "session id")),
    responses(
        (status = 204, description = "session ended"),
        (status = 401, description = "not signed in", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "no such session of this user", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn revoke_session(
    State(state): State<AppState>,
    who: Identity,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let sessions = &state.auth.sessions;
    if sessions.get_own(&id, &who.user_id).is_none() || !sessions.end(&id, &who.user_id).await? {
        return Err(ApiError::not_found("session"));
    }
    state
        .session
        .audit(Audit::new(
            kind::AUTH_LOGOUT,
            who.actor(),
            serde_json::json!({"how": "revoked", "session": id}),
        ))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
