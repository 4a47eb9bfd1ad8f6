//! The page templates, and errors shown as pages.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use minijinja::{AutoEscape, Environment, UndefinedBehavior, Value};
use serde::Serialize;

use crate::error::ApiError;

#[derive(rust_embed::Embed)]
#[folder = "ui/templates/"]
struct Files;

/// The UI's own template environment: HTML auto-escaping for every template, and an undefined
/// value is an error rather than an empty string (a typo in a template fails its test).
pub struct Templates {
    env: Environment<'static>,
}

impl Templates {
    pub fn load() -> Result<Self, minijinja::Error> {
        let mut env = Environment::new();
        env.set_auto_escape_callback(|_| AutoEscape::Html);
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        for name in Files::iter() {
            let Some(file) = Files::get(&name) else {
                continue;
            };
            let text = String::from_utf8(file.data.into_owned()).map_err(|e| {
                minijinja::Error::new(
                    minijinja::ErrorKind::InvalidOperation,
                    format!("template {name} is not UTF-8: {e}"),
                )
            })?;
            env.add_template_owned(name.into_owned(), text)?;
        }
        super::filters::register(&mut env);
        Ok(Templates { env })
    }

    /// Render `name` with `ctx`. A failure names the template and the fault only: the error's
    /// alternate form lists the context's values (the CSRF token among them), which must not
    /// reach an error page.
    pub fn render(&self, name: &str, ctx: Value) -> Result<String, UiError> {
        let t = self
            .env
            .get_template(name)
            .map_err(|e| UiError::Render(format!("{name}: {e}")))?;
        t.render(ctx)
            .map_err(|e| UiError::Render(format!("{name}: {e}")))
    }

    /// Every template's name (tests render each).
    pub fn names() -> Vec<String> {
        Files::iter().map(|n| n.into_owned()).collect()
    }

    /// A template's source text, as embedded.
    pub fn source(name: &str) -> Option<String> {
        Files::get(name).and_then(|f| String::from_utf8(f.data.into_owned()).ok())
    }
}

/// What a UI handler returns on failure; shown as a page.
#[derive(Debug)]
pub enum UiError {
    /// Not signed in (or the session ended): to the sign-in page, then back to `next`.
    SignIn { next: String },
    /// A form without a valid CSRF token.
    Csrf,
    /// What the API would have answered, shown as a page.
    Api(ApiError),
    /// A template failed (a bug).
    Render(String),
}

pub type UiResult<T = Response> = Result<T, UiError>;

impl From<ApiError> for UiError {
    fn from(e: ApiError) -> Self {
        UiError::Api(e)
    }
}

/// The error page's content, picked up by [`super::headers`] and rendered there (it has the
/// templates; an error value does not).
#[derive(Debug, Clone, Serialize)]
pub struct ErrorPage {
    pub status: u16,
    pub title: String,
    pub detail: String,
    pub hint: Option<String>,
}

impl IntoResponse for UiError {
    fn into_response(self) -> Response {
        let page = match self {
            UiError::SignIn { next } => {
                let to = if next.starts_with("/ui/") && !next.starts_with("/ui/login") {
                    format!(
                        "{}?{}",
                        super::pages::LOGIN,
                        serde_html_form::to_string([("next", next.as_str())]).unwrap_or_default()
                    )
                } else {
                    super::pages::LOGIN.to_string()
                };
                return Redirect::to(&to).into_response();
            }
            UiError::Csrf => ErrorPage {
                status: 403,
                title: "This form has expired".into(),
                detail: "The form did not carry a valid security token. It may be from before you signed in again, or from another site.".into(),
                hint: Some("Go back, reload the page and send the form again.".into()),
            },
            UiError::Api(e) => ErrorPage {
                status: e.status.as_u16(),
                title: match e.status {
                    StatusCode::NOT_FOUND => "Not found".into(),
                    StatusCode::FORBIDDEN => "Not allowed".into(),
                    s => s.canonical_reason().unwrap_or("Error").to_string(),
                },
                detail: e.detail.clone().unwrap_or_else(|| e.code.to_string()),
                hint: e.hint.clone(),
            },
            UiError::Render(why) => ErrorPage {
                status: 500,
                title: "This page could not be drawn".into(),
                detail: why,
                hint: None,
            },
        };
        let status = StatusCode::from_u16(page.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut res = (status, page.detail.clone()).into_response();
        res.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        res.extensions_mut().insert(page);
        res
    }
}

/// An HTML response.
pub fn html(body: String) -> Response {
    Html(body).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_render_error_does_not_show_the_context() {
        let t = Templates::load().unwrap();
        let ctx =
            minijinja::context! { layout => minijinja::context! { csrf => "tok-SECRET-123" } };
        let Err(UiError::Render(why)) = t.render("login.html", ctx) else {
            panic!("login.html needs more than a CSRF token");
        };
        assert!(why.starts_with("login.html"), "{why}");
        assert!(!why.contains("tok-SECRET-123"), "{why}");
    }
}
