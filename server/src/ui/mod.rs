//! The web UI: pages rendered on the server, small script modules for the live parts.
//!
//! ```text
//! /ui/...  ─► security headers (strict CSP) ─► Viewer (session cookie) ─► page handler
//!                                                               │
//!                           the same service functions and API handlers as /api/v1
//! ```
//!
//! Pages are minijinja templates in an environment of their own (HTML auto-escaping on, strict
//! undefined values), separate from the one that renders workflow templates. Templates and
//! static files are compiled into the binary. Scripts call the JSON API with the session cookie
//! and the page's CSRF token, so every action is authorised exactly as an API call is.

pub mod assets;
pub mod csrf;
pub mod dag;
pub mod filters;
pub mod forms;
pub mod headers;
pub mod pages;
pub mod qr;
pub mod render;
pub mod viewer;

use axum::Router;
use axum::routing::{get, post};

pub use forms::UiForm;
pub use render::{Templates, UiError, UiResult};
pub use viewer::{Anonymous, Viewer};

use crate::app::AppState;

/// What the UI keeps for the life of the process.
pub struct Ui {
    pub templates: Templates,
    pub csrf: csrf::CsrfKey,
}

impl Ui {
    pub fn new() -> Result<Self, String> {
        Ok(Ui {
            templates: Templates::load().map_err(|e| format!("UI templates: {e}"))?,
            csrf: csrf::CsrfKey::generate().map_err(|e| format!("UI CSRF key: {e}"))?,
        })
    }
}

/// Every route of the UI. Pages are under `/ui`; `/` leads there.
pub fn routes(state: &AppState) -> Router<AppState> {
    let pages = pages::routes()
        .route("/ui/static/{*file}", get(assets::serve))
        .route("/ui/csp-report", post(headers::csp_report))
        // A mistyped UI address gets a page, not the API's problem document.
        .route("/ui/{*rest}", axum::routing::any(no_such_page))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            headers::security_headers,
        ));
    Router::new()
        .route(
            "/",
            get(|| async { axum::response::Redirect::to(pages::DASHBOARD) }),
        )
        .route(
            "/ui",
            get(|| async { axum::response::Redirect::to(pages::DASHBOARD) }),
        )
        .merge(pages)
}

async fn no_such_page() -> UiError {
    UiError::Api(
        crate::error::ApiError::not_found("page")
            .with_hint("the menu at the top leads to every page"),
    )
}

/// The pages' sources kept to what the strict CSP allows, so a violation is caught here and not
/// by a user's browser: no inline script or style, no handler attributes, no `javascript:` URLs.
#[cfg(test)]
mod csp_rules {
    use super::Templates;

    fn offences(text: &str) -> Vec<String> {
        let lower = text.to_ascii_lowercase();
        let mut found = Vec::new();
        for (i, _) in lower.match_indices("<script") {
            let tag_end = lower[i..].find('>').map_or(lower.len(), |e| i + e);
            let tag = &lower[i..tag_end];
            let body_is_empty = lower[tag_end..]
                .trim_start_matches('>')
                .starts_with("</script>");
            if !tag.contains(" src=") || !body_is_empty {
                found.push(format!("inline script: {tag}"));
            }
        }
        for needle in [" style=", "<style", "javascript:"] {
            if lower.contains(needle) {
                found.push(format!("has {needle:?}"));
            }
        }
        // Event handler attributes: ` onclick=`, ` onload="` and the like.
        let bytes = lower.as_bytes();
        for (i, _) in lower.match_indices(" on") {
            let name: String = lower[i + 3..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase())
                .collect();
            if !name.is_empty() && bytes.get(i + 3 + name.len()) == Some(&b'=') {
                found.push(format!("handler attribute on{name}="));
            }
        }
        found
    }

    #[test]
    fn templates_and_scripts_keep_to_the_csp() {
        let mut bad = Vec::new();
        for name in Templates::names() {
            let text = Templates::source(&name).unwrap_or_default();
            bad.extend(offences(&text).into_iter().map(|o| format!("{name}: {o}")));
        }
        for name in super::assets::names() {
            if name.ends_with(".js") {
                let text = super::assets::text(&name).unwrap_or_default();
                // Scripts build elements with `el()` and `textContent`; markup from strings
                // would bypass the escaping the templates do.
                for needle in [
                    "innerhtml",
                    "outerhtml",
                    "insertadjacenthtml",
                    "document.write",
                    "eval(",
                ] {
                    if text.to_ascii_lowercase().contains(needle) {
                        bad.push(format!("{name}: uses {needle}"));
                    }
                }
            }
        }
        assert!(bad.is_empty(), "{bad:#?}");
    }

    #[test]
    fn every_static_file_a_template_names_is_served() {
        let mut missing = Vec::new();
        for name in Templates::names() {
            let text = Templates::source(&name).unwrap_or_default();
            for (i, _) in text.match_indices("/ui/static/") {
                let file: String = text[i + "/ui/static/".len()..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '/'))
                    .collect();
                if !super::assets::exists(&file) {
                    missing.push(format!("{name}: /ui/static/{file}"));
                }
            }
        }
        assert!(missing.is_empty(), "{missing:#?}");
    }

    #[test]
    fn the_rules_catch_what_they_are_for() {
        assert!(!offences(r#"<script>alert(1)</script>"#).is_empty());
        assert!(!offences(r#"<script src="/ui/static/a.js">x()</script>"#).is_empty());
        assert!(!offences(r#"<p style="color:red">"#).is_empty());
        assert!(!offences(r#"<button onclick="go()">"#).is_empty());
        assert!(!offences(r#"<a href="javascript:go()">"#).is_empty());
        assert!(
            offences(
                r#"<script type="module" src="/ui/static/a.js"></script><p>on the page: done</p>"#
            )
            .is_empty()
        );
    }
}
