//! The OpenAPI document, generated from the handlers' annotations, and the pages that show it
//! (Swagger UI at `/docs`, ReDoc at `/redoc`), both served from the binary with no network.

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::app::AppState;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "secureclaw",
        description = "Workflows that AI agents (and people) run in a sandbox, with an encrypted, HMAC-chained ledger and exact undo.",
        license(name = "MIT", identifier = "MIT"),
    ),
    modifiers(&BearerAuth),
    components(schemas(crate::error::Problem)),
    tags(
        (name = "auth", description = "Accounts, sign-in, two-factor"),
        (name = "tasks", description = "Tasks: plan, run, approve, stream, revert"),
        (name = "admin", description = "Server administration (admins only)"),
        (name = "schedules", description = "Workflows that run at set times"),
        (name = "triggers", description = "Signed webhook triggers: bindings (admins only) and deliveries"),
        (name = "ops", description = "Health and metrics"),
    )
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
        components.add_security_scheme(
            "metrics_token",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("SECURECLAW_METRICS_TOKEN, when the server sets one"))
                    .build(),
            ),
        );
    }
}

/// The whole document, as served at `/openapi.json` and checked in at `schemas/openapi.json`.
pub fn openapi() -> utoipa::openapi::OpenApi {
    let mut doc = crate::app::api_router().into_openapi();
    add_common_problems(&mut doc);
    doc
}

/// Answers any operation may give that its handler does not write itself: the body extractor's
/// (`400` malformed, `413` too large, `415` not JSON) for operations that take a body, and
/// `401` for operations that want a bearer token. An operation that documents one of these
/// keeps its own.
fn add_common_problems(doc: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
    let problem = |what: &str| {
        ResponseBuilder::new()
            .description(what)
            .content(
                "application/problem+json",
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("Problem")))
                    .build(),
            )
            .build()
    };
    for item in doc.paths.paths.values_mut() {
        let operations = [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
        ];
        for op in operations.into_iter().flatten() {
            let mut common = Vec::new();
            if op.request_body.is_some() {
                common.push(("400", "`malformed_json` or `invalid_body`"));
                common.push(("413", "`body_too_large`"));
                common.push((
                    "415",
                    "`unsupported_media_type`: send `Content-Type: application/json`",
                ));
            }
            let wants_token = op.security.as_ref().is_some_and(|reqs| !reqs.is_empty());
            if wants_token {
                common.push((
                    "401",
                    "`unauthorized`: no token, or an expired or revoked one",
                ));
            }
            for (status, what) in common {
                op.responses
                    .responses
                    .entry(status.to_string())
                    .or_insert_with(|| problem(what).into());
            }
        }
    }
}

/// The document as checked in: pretty JSON with a final newline.
pub fn openapi_pretty() -> Result<String, serde_json::Error> {
    Ok(openapi().to_pretty_json()? + "\n")
}

/// ReDoc's standalone bundle (see `server/assets/redoc/README.md`).
const REDOC_JS: &[u8] = include_bytes!("../assets/redoc/redoc.standalone.js");
const REDOC_LICENSE: &str = include_str!("../assets/redoc/LICENSE");

/// The bundle's one reference to a CDN is the "API docs by Redocly" logo; it is served without
/// it so the page loads nothing from elsewhere.
const REDOC_CDN_LOGO: &str = "https://cdn.redoc.ly/redoc/logo-mini.svg";

const REDOC_HTML: &str = r#"<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>secureclaw API</title>
<style>body { margin: 0; padding: 0; }</style>
</head>
<body>
<redoc spec-url="/openapi.json"></redoc>
<script src="/redoc/redoc.standalone.js"></script>
</body>
</html>
"#;

/// Only this origin: the docs pages cannot pull anything from a CDN even if a bundle tried.
const DOCS_CSP: &str = "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; script-src 'self' 'unsafe-inline'; worker-src 'self' blob:; font-src 'self' data:; connect-src 'self'; frame-ancestors 'none'";

/// `/openapi.json`, `/docs` (Swagger UI) and `/redoc`.
pub fn routes() -> axum::Router<AppState> {
    let swagger_config = utoipa_swagger_ui::Config::new(["/openapi.json"])
        // Swagger UI would otherwise load a badge from validator.swagger.io.
        .validator_url("none")
        .persist_authorization(false);
    let swagger = utoipa_swagger_ui::SwaggerUi::new("/docs")
        .url("/openapi.json", openapi())
        .config(swagger_config);
    let docs: axum::Router<AppState> = axum::Router::from(swagger)
        .route("/redoc", get(redoc_page))
        .route("/redoc/redoc.standalone.js", get(redoc_js))
        .route("/redoc/LICENSE", get(redoc_license));
    docs.layer(axum::middleware::map_response(docs_csp))
}

async fn docs_csp(mut res: Response) -> Response {
    res.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(DOCS_CSP),
    );
    res
}

async fn redoc_page() -> axum::response::Html<&'static str> {
    axum::response::Html(REDOC_HTML)
}

async fn redoc_js() -> Response {
    static SERVED: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    let body = SERVED.get_or_init(|| {
        String::from_utf8_lossy(REDOC_JS)
            .replace(REDOC_CDN_LOGO, "")
            .into_bytes()
    });
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=86400"),
        ],
        body.as_slice(),
    )
        .into_response()
}

async fn redoc_license() -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        REDOC_LICENSE,
    )
        .into_response()
}
