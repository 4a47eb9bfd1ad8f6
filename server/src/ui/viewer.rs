//! Who is looking at a page: a signed-in user (by the session cookie) or an anonymous browser.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse as _, Response};
use minijinja::{Value, context};
use serde::Serialize;

use super::csrf;
use super::render::{UiError, UiResult};
use crate::app::AppState;
use crate::auth::Identity;

/// A signed-in user, from the session cookie. Without a valid one, pages send the browser to
/// the sign-in page and back.
#[derive(Debug, Clone)]
pub struct Viewer {
    pub who: Identity,
    /// The CSRF token of this session, for forms and `fetch`.
    pub csrf: String,
    /// The session token itself (the API takes it too).
    pub token: String,
}

/// What every page's layout shows about its viewer.
#[derive(Debug, Serialize)]
pub struct Layout<'a> {
    pub title: &'a str,
    /// The menu entry to mark as the current page.
    pub nav: &'static str,
    /// `None` on the pages before sign-in.
    pub user: Option<LayoutUser<'a>>,
    pub csrf: &'a str,
}

#[derive(Debug, Serialize)]
pub struct LayoutUser<'a> {
    pub name: &'a str,
    pub admin: bool,
}

impl FromRequestParts<AppState> for Viewer {
    type Rejection = UiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, UiError> {
        // Back to the page after signing in; a form's POST address is no page to come back
        // to, so a form sent after the session ended leads to the dashboard.
        let next = if parts.method == axum::http::Method::GET {
            parts
                .uri
                .path_and_query()
                .map(|p| p.as_str().to_string())
                .unwrap_or_default()
        } else {
            String::new()
        };
        let Some(token) = csrf::cookie(&parts.headers, csrf::SESSION_COOKIE) else {
            return Err(UiError::SignIn { next });
        };
        match state.auth.authenticate(token).await {
            Ok(who) => Ok(Viewer {
                csrf: state.ui.csrf.for_session(&who.session_id),
                token: token.to_string(),
                who,
            }),
            Err(_) => Err(UiError::SignIn { next }),
        }
    }
}

impl Viewer {
    /// Render a page of the signed-in UI: `ctx` plus `layout`.
    pub fn page(&self, state: &AppState, template: &str, title: &str, ctx: Value) -> UiResult {
        let layout = Layout {
            title,
            nav: nav_of(template),
            user: Some(LayoutUser {
                name: &self.who.username,
                admin: self.who.admin,
            }),
            csrf: &self.csrf,
        };
        let body = state.ui.templates.render(
            template,
            context! { layout => Value::from_serialize(&layout), ..ctx },
        )?;
        Ok(super::render::html(body))
    }

    /// Check a CSRF token a form carried.
    pub fn check_csrf(&self, state: &AppState, given: &str) -> Result<(), UiError> {
        if state.ui.csrf.check_session(&self.who.session_id, given) {
            Ok(())
        } else {
            Err(UiError::Csrf)
        }
    }
}

/// A browser before sign-in: its anonymous cookie (made on first sight) and the CSRF token
/// the pre-sign-in forms carry.
#[derive(Debug, Clone)]
pub struct Anonymous {
    pub anon: String,
    pub csrf: String,
    /// Set when the cookie is new: the response must carry it.
    set_cookie: Option<HeaderValue>,
    /// Already signed in (the sign-in pages send such a browser on).
    pub signed_in: bool,
}

/// The anonymous cookie lasts a day; a form older than that is sent again.
const ANON_MAX_AGE: u64 = 24 * 60 * 60;

impl FromRequestParts<AppState> for Anonymous {
    type Rejection = UiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, UiError> {
        let signed_in = match csrf::cookie(&parts.headers, csrf::SESSION_COOKIE) {
            Some(token) => state.auth.authenticate(token).await.is_ok(),
            None => false,
        };
        let (anon, set_cookie) = match csrf::cookie(&parts.headers, csrf::ANON_COOKIE) {
            Some(v) if v.len() == 48 && v.bytes().all(|b| b.is_ascii_hexdigit()) => {
                (v.to_string(), None)
            }
            _ => {
                let v = csrf::new_anonymous().map_err(|e| {
                    UiError::Render(format!("no randomness for the anonymous cookie: {e}"))
                })?;
                let c = csrf::set_cookie(csrf::ANON_COOKIE, &v, ANON_MAX_AGE);
                (v, c)
            }
        };
        Ok(Anonymous {
            csrf: state.ui.csrf.for_anonymous(&anon),
            anon,
            set_cookie,
            signed_in,
        })
    }
}

impl Anonymous {
    /// Render a page before sign-in, setting the anonymous cookie when it is new.
    pub fn page(&self, state: &AppState, template: &str, title: &str, ctx: Value) -> UiResult {
        let layout = Layout {
            title,
            nav: "",
            user: None,
            csrf: &self.csrf,
        };
        let body = state.ui.templates.render(
            template,
            context! { layout => Value::from_serialize(&layout), ..ctx },
        )?;
        Ok(self.with_cookie(super::render::html(body)))
    }

    /// Attach the anonymous cookie to a response when it is new.
    pub fn with_cookie(&self, mut res: Response) -> Response {
        if let Some(c) = &self.set_cookie {
            res.headers_mut().append(header::SET_COOKIE, c.clone());
        }
        res
    }

    /// Check a CSRF token a pre-sign-in form carried.
    pub fn check_csrf(&self, state: &AppState, given: &str) -> Result<(), UiError> {
        if self.set_cookie.is_none() && state.ui.csrf.check_anonymous(&self.anon, given) {
            Ok(())
        } else {
            Err(UiError::Csrf)
        }
    }
}

/// Sign a browser in: the session cookie, then on to `next` (a UI path only).
pub fn signed_in_redirect(token: &str, max_age_secs: u64, next: Option<&str>) -> Response {
    let to = match next {
        Some(n) if n.starts_with("/ui/") && !n.starts_with("//") => n,
        _ => super::pages::DASHBOARD,
    };
    let mut res = axum::response::Redirect::to(to).into_response();
    if let Some(c) = csrf::set_cookie(csrf::SESSION_COOKIE, token, max_age_secs) {
        res.headers_mut().append(header::SET_COOKIE, c);
    }
    res
}

/// Sign a browser out: clear the session cookie and go to the sign-in page.
pub fn signed_out_redirect() -> Response {
    let mut res = axum::response::Redirect::to(super::pages::LOGIN).into_response();
    if let Some(c) = csrf::clear_cookie(csrf::SESSION_COOKIE) {
        res.headers_mut().append(header::SET_COOKIE, c);
    }
    res
}

/// The menu entry a template belongs to, by its name.
fn nav_of(template: &str) -> &'static str {
    let stem = template.split(['.', '_', '/']).next().unwrap_or("");
    match stem {
        "dashboard" | "task" => "tasks",
        "new" => "new",
        "workflows" | "run" => "workflows",
        "audit" => "audit",
        "settings" => "settings",
        _ => "",
    }
}
