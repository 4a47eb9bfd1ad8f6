//! Sign-in pages: register, login, the TOTP step, logout.
//!
//! The handlers call the API's own handlers (`crate::auth::routes`), so throttling, lockout,
//! ledger entries and every check are the API's; this module only turns forms into their
//! requests and answers into pages and cookies.

use axum::Router;
use axum::extract::{Query, State};
use axum::response::{IntoResponse as _, Response};
use axum::routing::{get, post};
use minijinja::context;
use serde::Deserialize;

use super::{DASHBOARD, LOGIN, LOGOUT};
use crate::app::AppState;
use crate::auth::ClientAddr;
use crate::auth::routes::{Credentials, LoginResponse};
use crate::extract::JsonBody;
use crate::ui::forms::UiForm;
use crate::ui::viewer::{Anonymous, Viewer, signed_in_redirect, signed_out_redirect};
use crate::ui::{UiError, UiResult};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route(LOGIN, get(login_page).post(login))
        .route(LOGOUT, post(logout))
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

#[derive(Debug, Deserialize)]
pub struct LoginForm {
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
            context! { ticket => t.login_token, next => form.next, error => () },
        ),
        Err(e) => {
            let mut res = anon.page(
                &state,
                "login.html",
                "Sign in",
                context! {
                    next => form.next,
                    username => form.username,
                    error => e.detail.clone().unwrap_or_default(),
                },
            )?;
            *res.status_mut() = e.status;
            Ok(res)
        }
    }
}

#[derive(Debug, Deserialize)]
pub struct CsrfOnly {
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
