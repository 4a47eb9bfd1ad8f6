//! Sign-in pages: register, login, the TOTP step, logout.
//!
//! The handlers call the API's own handlers (`crate::auth::routes`), so throttling, lockout,
//! ledger entries and every check are the API's; this module only turns forms into their
//! requests and answers into pages and cookies.

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse as _, Redirect, Response};
use axum::routing::{get, post};
use minijinja::context;
use serde::Deserialize;

use super::{DASHBOARD, LOGIN, LOGIN_TOTP, LOGOUT, REGISTER};
use crate::app::AppState;
use crate::auth::ClientAddr;
use crate::auth::routes::{Credentials, LoginResponse, TotpLogin};
use crate::error::ApiError;
use crate::extract::JsonBody;
use crate::ui::forms::UiForm;
use crate::ui::viewer::{Anonymous, Viewer, signed_in_redirect, signed_out_redirect};
use crate::ui::{UiError, UiResult};

/// Where a new account goes first: the TOTP setup, marked as the step after registering.
const AFTER_REGISTER: &str = "/ui/settings/2fa?new=1";

pub fn routes() -> Router<AppState> {
    Router::new()
        .route(LOGIN, get(login_page).post(login))
        .route(LOGIN_TOTP, get(totp_step_page).post(login_totp))
        .route(REGISTER, get(register_page).post(register))
        .route(LOGOUT, post(logout))
}

/// What an API refusal says to a person: its detail, its hint, and how long to wait.
pub(crate) fn refusal_text(e: &ApiError) -> String {
    let mut text = e.detail.clone().unwrap_or_else(|| e.code.to_string());
    if let Some(h) = &e.hint {
        text.push_str(" (");
        text.push_str(h);
        text.push(')');
    }
    if let Some(secs) = e.retry_after {
        text.push_str(&format!(" Try again in {secs} seconds."));
    }
    text
}

/// A page that answers a refused form: the API's status, and its `Retry-After` when it has one.
pub(crate) fn with_refusal_status(mut res: Response, e: &ApiError) -> Response {
    *res.status_mut() = e.status;
    if let Some(secs) = e.retry_after
        && let Ok(v) = HeaderValue::from_str(&secs.to_string())
    {
        res.headers_mut().insert(header::RETRY_AFTER, v);
    }
    res
}

#[derive(Debug, Deserialize)]
pub struct Next {
    pub next: Option<String>,
}

async fn login_page(
    State(state): State<AppState>,
    anon: Anonymous,
    Query(q): Query<Next>,
) -> UiResult {
    if anon.signed_in {
        return Ok(axum::response::Redirect::to(DASHBOARD).into_response());
    }
    anon.page(
        &state,
        "login.html",
        "Sign in",
        context! { next => q.next, username => "", error => () },
    )
}

/// Not `Debug`: it holds the password, which no log may print.
#[derive(Deserialize)]
pub struct LoginForm {
    /// Missing is the same as wrong: a 403, not a malformed form.
    #[serde(default)]
    pub csrf: String,
    pub username: String,
    pub password: String,
    #[serde(default)]
    pub next: Option<String>,
}

async fn login(
    State(state): State<AppState>,
    anon: Anonymous,
    client: ClientAddr,
    UiForm(form): UiForm<LoginForm>,
) -> UiResult {
    anon.check_csrf(&state, &form.csrf)?;
    let answer = crate::auth::routes::login(
        State(state.clone()),
        client,
        JsonBody(Credentials {
            username: form.username.clone(),
            password: form.password,
        }),
    )
    .await;
    match answer {
        Ok(axum::Json(LoginResponse::Token(t))) => Ok(signed_in_redirect(
            &t.access_token,
            state.auth.tokens.expiry().as_secs(),
            form.next.as_deref(),
        )),
        Ok(axum::Json(LoginResponse::TotpRequired(t))) => anon.page(
            &state,
            "login_totp.html",
            "Two-factor code",
            context! { ticket => t.login_token, next => form.next, error => (), again => () },
        ),
        Err(e) => {
            let res = anon.page(
                &state,
                "login.html",
                "Sign in",
                context! {
                    next => form.next,
                    username => form.username,
                    error => refusal_text(&e),
                },
            )?;
            Ok(with_refusal_status(res, &e))
        }
    }
}

/// The TOTP step only exists as the answer to a password; a bookmarked or reloaded address
/// starts over.
async fn totp_step_page() -> Redirect {
    Redirect::to(LOGIN)
}

/// Not `Debug`: it holds the login ticket and code, which no log may print.
#[derive(Deserialize)]
pub struct TotpForm {
    /// Missing is the same as wrong: a 403, not a malformed form.
    #[serde(default)]
    pub csrf: String,
    pub ticket: String,
    pub code: String,
    #[serde(default)]
    pub next: Option<String>,
}

async fn login_totp(
    State(state): State<AppState>,
    anon: Anonymous,
    client: ClientAddr,
    UiForm(form): UiForm<TotpForm>,
) -> UiResult {
    anon.check_csrf(&state, &form.csrf)?;
    let answer = crate::auth::routes::login_totp(
        State(state.clone()),
        client,
        JsonBody(TotpLogin {
            login_token: form.ticket,
            code: form.code,
        }),
    )
    .await;
    match answer {
        Ok(axum::Json(t)) => Ok(signed_in_redirect(
            &t.access_token,
            state.auth.tokens.expiry().as_secs(),
            form.next.as_deref(),
        )),
        // The API spends the ticket whatever the outcome, so there is no form to show again:
        // the page offers a fresh sign-in instead.
        Err(e) => {
            let res = anon.page(
                &state,
                "login_totp.html",
                "Two-factor code",
                context! {
                    ticket => (),
                    next => form.next,
                    error => refusal_text(&e),
                    again => login_again_link(form.next.as_deref()),
                },
            )?;
            Ok(with_refusal_status(res, &e))
        }
    }
}

/// The sign-in page, keeping where the user was headed.
fn login_again_link(next: Option<&str>) -> String {
    match next {
        Some(n) if n.starts_with("/ui/") && !n.starts_with("//") => format!(
            "{LOGIN}?{}",
            serde_html_form::to_string([("next", n)]).unwrap_or_default()
        ),
        _ => LOGIN.to_string(),
    }
}

async fn register_page(State(state): State<AppState>, anon: Anonymous) -> UiResult {
    if anon.signed_in {
        return Ok(Redirect::to(DASHBOARD).into_response());
    }
    anon.page(
        &state,
        "register.html",
        "Create an account",
        context! { username => "", error => () },
    )
}

/// Not `Debug`: it holds the password, which no log may print.
#[derive(Deserialize)]
pub struct RegisterForm {
    /// Missing is the same as wrong: a 403, not a malformed form.
    #[serde(default)]
    pub csrf: String,
    pub username: String,
    pub password: String,
}

/// Create the account through the API's handler (its throttle, password rules and ledger
/// entry), sign the browser in, and go on to the TOTP setup the account was made with.
async fn register(
    State(state): State<AppState>,
    anon: Anonymous,
    client: ClientAddr,
    UiForm(form): UiForm<RegisterForm>,
) -> UiResult {
    anon.check_csrf(&state, &form.csrf)?;
    let answer = crate::auth::routes::register(
        State(state.clone()),
        client,
        JsonBody(Credentials {
            username: form.username.clone(),
            password: form.password,
        }),
    )
    .await;
    match answer {
        Ok((_, axum::Json(registered))) => Ok(signed_in_redirect(
            &registered.token.access_token,
            state.auth.tokens.expiry().as_secs(),
            Some(AFTER_REGISTER),
        )),
        Err(e) => {
            let res = anon.page(
                &state,
                "register.html",
                "Create an account",
                context! { username => form.username, error => refusal_text(&e) },
            )?;
            Ok(with_refusal_status(res, &e))
        }
    }
}

#[derive(Debug, Deserialize)]
pub struct CsrfOnly {
    /// Missing is the same as wrong: a 403, not a malformed form.
    #[serde(default)]
    pub csrf: String,
}

/// Sign out: the session ends for the API as well (the cookie's token stops working).
async fn logout(
    State(state): State<AppState>,
    viewer: Result<Viewer, UiError>,
    UiForm(form): UiForm<CsrfOnly>,
) -> UiResult<Response> {
    let Ok(viewer) = viewer else {
        return Ok(signed_out_redirect());
    };
    viewer.check_csrf(&state, &form.csrf)?;
    let _ = crate::auth::routes::logout(State(state.clone()), viewer.who).await?;
    Ok(signed_out_redirect())
}
