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
