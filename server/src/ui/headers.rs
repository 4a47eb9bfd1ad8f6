//! Security headers of every UI response, and the CSP report endpoint.

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;

use super::render::ErrorPage;
use crate::app::AppState;

/// No inline script or style, nothing from another origin, never framed. Inline SVG is drawn
/// with presentation attributes and classes, which this allows.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
style-src 'self'; img-src 'self' data:; connect-src 'self'; font-src 'self'; \
object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'; \
report-uri /ui/csp-report";

/// Adds the CSP and its companions to every UI response, and draws error pages.
pub async fn security_headers(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let mut res = next.run(req).await;
    if let Some(page) = res.extensions_mut().remove::<ErrorPage>() {
        res = error_page(&state, res.status(), &page);
    }
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        "cross-origin-opener-policy",
        HeaderValue::from_static("same-origin"),
    );
    if !h.contains_key(header::CACHE_CONTROL) {
        // Pages hold a user's data and their CSRF token: never kept by a shared cache.
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    res
}

/// `report-uri` target: counts violations (shown by `/metrics` as
/// `secureclaw_ui_csp_violations_total`). The report itself is not kept: it is the browser's
/// word and may hold anything.
pub async fn csp_report(State(state): State<AppState>) -> StatusCode {
    state
        .metrics
        .ui_csp_violations
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    StatusCode::NO_CONTENT
}

/// The error page for `page`; plain text if even that cannot be drawn.
fn error_page(state: &AppState, status: StatusCode, page: &ErrorPage) -> Response {
    use axum::response::IntoResponse as _;
    let ctx = minijinja::context! {
        layout => minijinja::context! { title => page.title.clone(), nav => "", user => (), csrf => "" },
        error => minijinja::Value::from_serialize(page),
    };
    match state.ui.templates.render("error.html", ctx) {
        Ok(body) => (status, axum::response::Html(body)).into_response(),
        Err(_) => (status, format!("{}: {}", page.title, page.detail)).into_response(),
    }
}
