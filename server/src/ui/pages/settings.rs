//! The user's own settings: two-factor sign-in (set up, enable, disable), the sessions signed
//! in as them, and their provider keys.
//!
//! Every change goes through the API's own handlers (`crate::auth::two_factor`,
//! `crate::auth::routes`, `crate::auth::keys`) with the viewer's identity, so the checks,
//! throttle and ledger entries are exactly the API's. Each form posts, and its handler
//! redirects back with a `done` flag that names what happened (never a value the user typed).

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse as _, Redirect, Response};
use axum::routing::{get, post};
use minijinja::{Value, context};
use serde::{Deserialize, Serialize};

use super::SETTINGS;
use super::auth::{refusal_text, with_refusal_status};
use crate::app::AppState;
use crate::auth::keys::{KeyRequest, PROVIDERS};
use crate::auth::two_factor::CodeRequest;
use crate::auth::{Account, ClientAddr, totp};
use crate::error::ApiError;
use crate::extract::JsonBody;
use crate::ui::forms::UiForm;
use crate::ui::viewer::{Viewer, signed_out_redirect};
use crate::ui::{UiError, UiResult, qr};

/// The TOTP setup page.
pub const TWO_FACTOR: &str = "/ui/settings/2fa";
const TWO_FACTOR_DISABLE: &str = "/ui/settings/2fa/disable";
const SESSION_REVOKE: &str = "/ui/settings/sessions/{id}/revoke";
const KEYS: &str = "/ui/settings/keys";
const KEY_DELETE: &str = "/ui/settings/keys/{provider}/delete";

/// Sessions shown per page.
const PAGE_SIZE: usize = 50;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route(SETTINGS, get(settings_page))
        .route(TWO_FACTOR, get(two_factor_page).post(enable_two_factor))
        .route(TWO_FACTOR_DISABLE, post(disable_two_factor))
        .route(SESSION_REVOKE, post(revoke_session))
        .route(KEYS, post(save_key))
        .route(KEY_DELETE, post(delete_key))
}

/// What the settings page was sent back with after a change.
#[derive(Debug, Default, Deserialize)]
pub struct SettingsQuery {
    #[serde(default)]
    pub done: Option<String>,
    /// Other sessions a 2FA change signed out.
    #[serde(default)]
    pub ended: Option<usize>,
    #[serde(default)]
    pub page: Option<usize>,
}

/// The message of a `done` flag; an unknown flag shows nothing rather than echoing it.
fn done_message(done: &str, ended: Option<usize>) -> Option<String> {
    let ended = match ended {
        Some(0) | None => String::new(),
        Some(1) => " Your one other session was signed out.".to_string(),
        Some(n) => format!(" Your {n} other sessions were signed out."),
    };
    let text = match done {
        "2fa-on" => format!("Two-factor sign-in is on: signing in now asks for a code.{ended}"),
        "2fa-off" => format!("Two-factor sign-in is off.{ended}"),
        "session-revoked" => "The session was signed out.".to_string(),
        "key-saved" => "The key was stored.".to_string(),
        "key-deleted" => "The key was deleted.".to_string(),
        _ => return None,
    };
    Some(text)
}

/// One row of the sessions table.
#[derive(Debug, Serialize)]
struct SessionRow {
    id: String,
    /// RFC 3339 (the `when` filter shows it).
    created: String,
    expires: String,
    client: String,
    current: bool,
}

/// RFC 3339 of a Unix time, or the number itself if it is out of range.
fn rfc3339(unix: u64) -> String {
    i64::try_from(unix)
        .ok()
        .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| unix.to_string())
}

/// The viewer's account (for the 2FA state, which no API answer carries on its own).
fn account_of(state: &AppState, viewer: &Viewer) -> Result<Account, ApiError> {
    state
        .auth
        .accounts
        .get(&viewer.who.user_id)?
        .ok_or_else(|| ApiError::unauthorized("the account no longer exists"))
}

/// Errors a form on the settings page was refused with, shown next to that form.
#[derive(Debug, Default)]
struct FormErrors {
    two_factor: Option<String>,
    key: Option<String>,
}

async fn render_settings(
    state: &AppState,
    viewer: &Viewer,
    query: &SettingsQuery,
    errors: FormErrors,
) -> UiResult {
    let account = account_of(state, viewer)?;
    let two_factor_on = account.totp.as_ref().is_some_and(|t| t.enabled);
    let axum::Json(all_sessions) =
        crate::auth::routes::list_sessions(State(state.clone()), viewer.who.clone()).await;
    let page = query.page.unwrap_or(1).max(1);
    let total = all_sessions.len();
    let sessions: Vec<SessionRow> = all_sessions
        .into_iter()
        .skip((page - 1).saturating_mul(PAGE_SIZE))
        .take(PAGE_SIZE)
        .map(|s| SessionRow {
            created: rfc3339(s.created),
            expires: rfc3339(s.expires),
            id: s.id,
            client: s.client,
            current: s.current,
        })
        .collect();
    let axum::Json(keys) =
        crate::auth::keys::list_keys(State(state.clone()), viewer.who.clone()).await?;
    let notice = query
        .done
        .as_deref()
        .and_then(|d| done_message(d, query.ended));
    viewer.page(
        state,
        "settings.html",
        "Settings",
        context! {
            notice,
            two_factor_on,
            two_factor_error => errors.two_factor,
            sessions => Value::from_serialize(&sessions),
            prev_page => (page > 1).then(|| page - 1),
            next_page => (page.saturating_mul(PAGE_SIZE) < total).then(|| page + 1),
            keys => Value::from_serialize(&keys),
            providers => PROVIDERS,
            key_error => errors.key,
        },
    )
}

async fn settings_page(
    State(state): State<AppState>,
    viewer: Viewer,
    Query(query): Query<SettingsQuery>,
) -> UiResult {
    render_settings(&state, &viewer, &query, FormErrors::default()).await
}

/// Back to the settings page after a change.
fn done(flag: &str, ended: Option<usize>) -> Response {
    let mut to = format!("{SETTINGS}?done={flag}");
    if let Some(n) = ended {
        to.push_str(&format!("&ended={n}"));
    }
    Redirect::to(&to).into_response()
}

#[derive(Debug, Default, Deserialize)]
pub struct TwoFactorQuery {
    /// Set right after registering: the page says the account is ready and 2FA is next.
    #[serde(default)]
    pub new: Option<String>,
}

/// The TOTP setup: the QR code of the pending secret, the secret to type, and a code to
/// enable it with.
///
/// The pending secret is the one kept in the account (registering makes one). Only when the
/// account has none (after 2FA was turned off) does this page ask the API for a fresh one; a
/// pending secret is never replaced here, so reloading the page, or another site making the
/// browser load it, changes nothing the user has already scanned.
async fn two_factor_page(
    State(state): State<AppState>,
    viewer: Viewer,
    Query(q): Query<TwoFactorQuery>,
) -> UiResult {
    render_two_factor(&state, &viewer, q.new.is_some(), None).await
}

async fn render_two_factor(
    state: &AppState,
    viewer: &Viewer,
    new: bool,
    error: Option<String>,
) -> UiResult {
    let account = account_of(state, viewer)?;
    let setup = match &account.totp {
        Some(t) if t.enabled => {
            return viewer.page(
                state,
                "settings_2fa.html",
                "Two-factor sign-in",
                context! { already_on => true, new, error, qr => (), secret => (), otpauth_url => () },
            );
        }
        Some(t) => totp::setup(t, &state.config.totp_issuer, &account.username)?,
        None => {
            let axum::Json(fresh) =
                crate::auth::two_factor::setup(State(state.clone()), viewer.who.clone()).await?;
            fresh
        }
    };
    let svg = qr::svg(
        &setup.otpauth_url,
        "totp-qr",
        "QR code of your two-factor secret, for an authenticator app",
    )
    .map_err(|e| UiError::Render(e.to_string()))?;
    viewer.page(
        state,
        "settings_2fa.html",
        "Two-factor sign-in",
        context! {
            already_on => false,
            new,
            error,
            // Built by `qr::svg` from the URL alone: numbers and fixed markup, no user HTML.
            qr => Value::from_safe_string(svg),
            secret => setup.secret,
            otpauth_url => setup.otpauth_url,
        },
    )
}

/// Not `Debug`: it holds a TOTP code, which no log may print.
#[derive(Deserialize)]
pub struct EnableForm {
    /// Missing is the same as wrong: a 403, not a malformed form.
    #[serde(default)]
    pub csrf: String,
    pub code: String,
    #[serde(default)]
    pub new: Option<String>,
}

async fn enable_two_factor(
    State(state): State<AppState>,
    viewer: Viewer,
    client: ClientAddr,
    UiForm(form): UiForm<EnableForm>,
) -> UiResult {
    viewer.check_csrf(&state, &form.csrf)?;
    let answer = crate::auth::two_factor::enable(
        State(state.clone()),
        viewer.who.clone(),
        client,
        JsonBody(CodeRequest { code: form.code }),
    )
    .await;
    match answer {
        Ok(axum::Json(status)) => Ok(done("2fa-on", Some(status.sessions_ended))),
        Err(e) => {
            let res =
                render_two_factor(&state, &viewer, form.new.is_some(), Some(refusal_text(&e)))
                    .await?;
            Ok(with_refusal_status(res, &e))
        }
    }
}

/// Not `Debug`: it holds a TOTP code, which no log may print.
#[derive(Deserialize)]
pub struct CodeForm {
    /// Missing is the same as wrong: a 403, not a malformed form.
    #[serde(default)]
    pub csrf: String,
    pub code: String,
}

async fn disable_two_factor(
    State(state): State<AppState>,
    viewer: Viewer,
    client: ClientAddr,
    UiForm(form): UiForm<CodeForm>,
) -> UiResult {
    viewer.check_csrf(&state, &form.csrf)?;
    let answer = crate::auth::two_factor::disable(
        State(state.clone()),
        viewer.who.clone(),
        client,
        JsonBody(CodeRequest { code: form.code }),
    )
    .await;
    match answer {
        Ok(axum::Json(status)) => Ok(done("2fa-off", Some(status.sessions_ended))),
        Err(e) => {
            let errors = FormErrors {
                two_factor: Some(refusal_text(&e)),
                ..FormErrors::default()
            };
            let res = render_settings(&state, &viewer, &SettingsQuery::default(), errors).await?;
            Ok(with_refusal_status(res, &e))
        }
    }
}

#[derive(Debug, Deserialize)]
pub struct CsrfForm {
    /// Missing is the same as wrong: a 403, not a malformed form.
    #[serde(default)]
    pub csrf: String,
}

/// End one of the viewer's sessions; ending the one in use signs this browser out.
async fn revoke_session(
    State(state): State<AppState>,
    viewer: Viewer,
    Path(id): Path<String>,
    UiForm(form): UiForm<CsrfForm>,
) -> UiResult {
    viewer.check_csrf(&state, &form.csrf)?;
    let current = id == viewer.who.session_id;
    crate::auth::routes::revoke_session(State(state.clone()), viewer.who.clone(), Path(id)).await?;
    if current {
        return Ok(signed_out_redirect());
    }
    Ok(done("session-revoked", None))
}

/// Not `Debug`: it holds the key, which no log may print.
#[derive(Deserialize)]
pub struct KeyForm {
    /// Missing is the same as wrong: a 403, not a malformed form.
    #[serde(default)]
    pub csrf: String,
    pub provider: String,
    pub key: String,
}

async fn save_key(
    State(state): State<AppState>,
    viewer: Viewer,
    UiForm(form): UiForm<KeyForm>,
) -> UiResult {
    viewer.check_csrf(&state, &form.csrf)?;
    let answer = crate::auth::keys::put_key(
        State(state.clone()),
        viewer.who.clone(),
        Path(form.provider),
        JsonBody(KeyRequest { key: form.key }),
    )
    .await;
    match answer {
        Ok(_) => Ok(done("key-saved", None)),
        // The page is drawn again without the key: it is never sent back to the browser.
        Err(e) => {
            let errors = FormErrors {
                key: Some(refusal_text(&e)),
                ..FormErrors::default()
            };
            let res = render_settings(&state, &viewer, &SettingsQuery::default(), errors).await?;
            Ok(with_refusal_status(res, &e))
        }
    }
}

async fn delete_key(
    State(state): State<AppState>,
    viewer: Viewer,
    Path(provider): Path<String>,
    UiForm(form): UiForm<CsrfForm>,
) -> UiResult {
    viewer.check_csrf(&state, &form.csrf)?;
    crate::auth::keys::delete_key(State(state.clone()), viewer.who.clone(), Path(provider)).await?;
    Ok(done("key-deleted", None))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_known_flags_show_a_message() {
        assert!(
            done_message("2fa-on", Some(2))
                .unwrap()
                .contains("2 other sessions")
        );
        assert!(
            !done_message("2fa-off", Some(0))
                .unwrap()
                .contains("session")
        );
        assert_eq!(done_message("<script>", None), None);
    }

    #[test]
    fn unix_times_become_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(u64::MAX), u64::MAX.to_string());
    }
}
