//! The server's shared state, its router, and the listener.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use secureclaw_engine::session::{AppTable, Session, SessionError};
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;

use crate::auth::{Accounts, Auth, AuthLimits, Sessions, Tokens};
use crate::config::ServerConfig;
use crate::docs::ApiDoc;
use crate::error::ApiError;
use crate::ops::Metrics;
use crate::tasks::TaskService;

/// What every handler shares. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub session: Session,
    pub config: Arc<ServerConfig>,
    pub auth: Arc<Auth>,
    pub tasks: Arc<TaskService>,
    pub metrics: Arc<Metrics>,
    /// Registered workflow sources and their last scans.
    pub sources: Arc<crate::sources::Sources>,
    /// Webhook triggers: the injection screen for payload inputs.
    pub hooks: Arc<crate::hooks::HookService>,
    /// `Idempotency-Key`s whose first request is still being answered.
    pub idempotency: Arc<crate::idempotency::InFlight>,
    /// Cancelled when the server begins to stop: long-lived responses (event streams) end on
    /// it so the graceful shutdown need not wait for them.
    pub stopping: tokio_util::sync::CancellationToken,
    /// Which source workflows declare schedules and watches (the sources; a fixed list in
    /// tests).
    pub feed: Arc<dyn crate::schedules::WorkflowFeed>,
    /// The scheduler's view of each schedule, for the API.
    pub schedules: Arc<crate::schedules::ScheduleBoard>,
    /// The web UI's templates and CSRF key.
    pub ui: Arc<crate::ui::Ui>,
    /// Where started runs go when workers execute them (`None`: this process runs them).
    pub dispatch: Option<Arc<dyn crate::dispatch::Dispatch>>,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("binding {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("serving: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Session(#[from] SessionError),
    #[error("{0}")]
    Setup(String),
}

impl From<ApiError> for ServeError {
    fn from(e: ApiError) -> Self {
        ServeError::Setup(e.to_string())
    }
}

/// Settings row holding the generated JWT secret.
const JWT_SECRET_KEY: &str = "jwt_secret";

impl AppState {
    /// The state for a session that is already open.
    pub async fn new(session: Session, config: ServerConfig) -> Result<Self, ServeError> {
        let secret = jwt_secret(&session, &config).await?;
        let params = secureclaw_engine::tools::vault::KdfParams::from_env()
            .map_err(|e| ServeError::Setup(format!("Argon2id parameters: {e}")))?;
        // Replicas sharing a store share the sign-in sessions too: any replica accepts a token
        // any other issued, and a sign-out ends the session on every one.
        let sessions = match session.node() {
            Some(_) => Sessions::shared(session.clone()),
            None => Sessions::default(),
        };
        let auth = Auth::new(
            Accounts::new(session.clone(), params),
            Tokens::new(&secret, config.jwt_expiry)?,
            sessions,
            AuthLimits::from_env().map_err(|e| ServeError::Setup(e.to_string()))?,
        );
        let sources = Arc::new(crate::sources::Sources::new(config.sources_cache_dir()));
        let hooks =
            crate::hooks::HookService::new(config.injection_detect).map_err(ServeError::Setup)?;
        Ok(AppState {
            feed: sources.clone(),
            sources,
            session,
            config: Arc::new(config),
            auth: Arc::new(auth),
            tasks: Arc::new(TaskService::default()),
            metrics: Arc::new(Metrics::default()),
            hooks: Arc::new(hooks),
            idempotency: Arc::new(crate::idempotency::InFlight::default()),
            stopping: tokio_util::sync::CancellationToken::new(),
            schedules: Arc::default(),
            ui: Arc::new(crate::ui::Ui::new().map_err(ServeError::Setup)?),
            dispatch: None,
        })
    }

    /// Queue the runs this server starts with `dispatch` instead of running them here.
    pub fn with_dispatch(mut self, dispatch: Arc<dyn crate::dispatch::Dispatch>) -> Self {
        self.dispatch = Some(dispatch);
        self
    }
}

/// `JWT_SECRET` when set; else the one sealed in the vault, generated on first start.
async fn jwt_secret(
    session: &Session,
    config: &ServerConfig,
) -> Result<zeroize::Zeroizing<Vec<u8>>, ServeError> {
    if let Some(s) = &config.jwt_secret {
        if s.len() < 32 {
            return Err(ServeError::Setup(
                "JWT_SECRET must be at least 32 characters (or leave it empty to have one generated and sealed in the vault)".into(),
            ));
        }
        return Ok(zeroize::Zeroizing::new(s.as_bytes().to_vec()));
    }
    if let Some(s) = session.app_get(AppTable::Settings, JWT_SECRET_KEY)? {
        return Ok(zeroize::Zeroizing::new(s));
    }
    let mut fresh = zeroize::Zeroizing::new(vec![0u8; 32]);
    getrandom::fill(&mut fresh).map_err(|e| ServeError::Setup(e.to_string()))?;
    // Created, not put: replicas of a shared store starting together for the first time all
    // sign with the one secret that won, so each accepts the others' tokens.
    let stored = session
        .app_create(AppTable::Settings, JWT_SECRET_KEY, fresh.to_vec())
        .await?;
    Ok(zeroize::Zeroizing::new(stored))
}

/// Every documented route, without state (the OpenAPI document comes from here).
pub fn api_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .nest(
            "/api/v1",
            OpenApiRouter::new()
                .merge(crate::auth::routes())
                .merge(crate::tasks::routes())
                .merge(crate::workspaces::routes())
                .merge(crate::sources::routes::routes())
                .merge(crate::schedules::routes())
                .merge(crate::hooks::routes())
                .merge(crate::audit::routes()),
        )
        .merge(crate::ops::routes())
}

/// The whole application: the API, the offline docs, problem documents for unknown routes and
/// methods, and the body limit in front of everything.
pub fn router(state: AppState) -> Router {
    let max = state.config.max_body_bytes;
    let (api, _doc) = api_router().split_for_parts();
    api.merge(crate::docs::routes())
        .merge(crate::ui::routes(&state))
        .fallback(unknown_route)
        .method_not_allowed_fallback(unknown_method)
        // Acts only on the run-starting routes it lists, after routing (it reads the route).
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::idempotency::layer,
        ))
        // Extractors that read bodies (JsonBody) stop at the limit even when no length is
        // announced (chunked bodies); `body_limit` refuses an announced length up front.
        .layer(DefaultBodyLimit::max(max))
        .layer(axum::middleware::from_fn_with_state(max, body_limit))
        .with_state(state)
}

async fn unknown_route(uri: axum::http::Uri) -> ApiError {
    ApiError::not_found("route").with_hint(format!(
        "{} is not part of the API; see /openapi.json or /docs",
        uri.path()
    ))
}

async fn unknown_method(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        axum::http::StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{} does not answer {method}", uri.path()),
    )
    .with_hint("see /openapi.json for the methods each path takes")
}

/// Refuse a body whose announced length is over the limit before anything reads it, and cap
/// the bytes any reader may take from it (a body without a length, or one that lies).
async fn body_limit(
    State(max): State<usize>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    let announced = req
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if announced.is_some_and(|n| n > max as u64) {
        return too_large(max).into_response();
    }
    let (parts, body) = req.into_parts();
    let body = axum::body::Body::new(http_body_util::Limited::new(body, max));
    next.run(axum::extract::Request::from_parts(parts, body))
        .await
}

/// The 413 problem for a body over `max` bytes.
pub fn too_large(max: usize) -> ApiError {
    ApiError::new(
        axum::http::StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
        format!("the request body is over the {max}-byte limit"),
    )
    .with_hint("SECURECLAW_MAX_BODY_BYTES sets the limit")
}

/// How long requests in flight (streams included) may go on once the server is stopping.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// Serve until `shutdown` resolves; then stop taking requests, cancel running runs (what their
/// steps changed stays recorded for revert) and return. `ready` is told the bound address.
pub async fn serve(
    state: AppState,
    ready: impl FnOnce(SocketAddr),
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let addr = state.config.listen;
    let tls = match &state.config.tls {
        Some(files) => Some(crate::tls::server_config(files)?),
        None => None,
    };
    let listener =
        std::net::TcpListener::bind(addr).map_err(|source| ServeError::Bind { addr, source })?;
    listener.set_nonblocking(true)?;
    let bound = listener.local_addr()?;
    let session = state.session.clone();
    let stopping = state.stopping.clone();
    crate::schedules::spawn(
        state.clone(),
        state.feed.clone(),
        Arc::new(crate::schedules::RealClock),
    );
    crate::watching::spawn(state.clone(), state.feed.clone());
    crate::retention::spawn(state.clone());
    let app = router(state).into_make_service_with_connect_info::<SocketAddr>();
    tokio::spawn({
        let stopping = stopping.clone();
        async move {
            shutdown.await;
            stopping.cancel();
        }
    });
    // Once stopping, running runs are cancelled at once while requests
    // in flight get a grace period; a stream that outlives it is cut.
    let wind_down = {
        let stopping = stopping.clone();
        let session = session.clone();
        async move {
            stopping.cancelled().await;
            session.shutdown().await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        }
    };
    match tls {
        None => {
            let listener = tokio::net::TcpListener::from_std(listener)?;
            ready(bound);
            let server =
                axum::serve(listener, app).with_graceful_shutdown(stopping.cancelled_owned());
            tokio::select! {
                done = server => done?,
                () = wind_down => {}
            }
        }
        Some(config) => {
            let handle = axum_server::Handle::new();
            let server = axum_server::from_tcp_rustls(
                listener,
                axum_server::tls_rustls::RustlsConfig::from_config(config),
            )?
            .handle(handle.clone());
            ready(bound);
            tokio::spawn(async move {
                stopping.cancelled().await;
                handle.graceful_shutdown(Some(SHUTDOWN_GRACE));
            });
            tokio::select! {
                done = server.serve(app) => done?,
                () = wind_down => {}
            }
        }
    }
    session.shutdown().await;
    Ok(())
}
