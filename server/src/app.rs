//! The server's shared state, its router, and the listener.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use secureclaw_engine::session::{AppTable, Session, SessionError};
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;

use crate::auth::{Accounts, Auth, AuthLimits, Tokens};
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
        let auth = Auth::new(
            Accounts::new(session.clone(), params),
            Tokens::new(&secret, config.jwt_expiry)?,
            AuthLimits::from_env().map_err(|e| ServeError::Setup(e.to_string()))?,
        );
        Ok(AppState {
            session,
            config: Arc::new(config),
            auth: Arc::new(auth),
            tasks: Arc::new(TaskService::default()),
            metrics: Arc::new(Metrics::default()),
        })
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
    let mut fresh = vec![0u8; 32];
    getrandom::fill(&mut fresh).map_err(|e| ServeError::Setup(e.to_string()))?;
    let mut batch = secureclaw_engine::session::AppBatch::default();
    batch.put(AppTable::Settings, JWT_SECRET_KEY, fresh.clone());
    session.app_commit(batch).await?;
    Ok(zeroize::Zeroizing::new(fresh))
}

/// Every documented route, without state (the OpenAPI document comes from here).
pub fn api_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .nest(
            "/api/v1",
            OpenApiRouter::new()
                .merge(crate::auth::routes())
                .merge(crate::tasks::routes()),
        )
        .merge(crate::ops::routes())
}

/// The whole application.
pub fn router(state: AppState) -> Router {
    let max = state.config.max_body_bytes;
    let (api, _doc) = api_router().split_for_parts();
    api.layer(DefaultBodyLimit::max(max))
        .layer(tower_http::limit::RequestBodyLimitLayer::new(max))
        .with_state(state)
}

/// Serve until `shutdown` resolves; then stop taking requests, cancel running runs (their
/// steps are rolled back) and return. `ready` is told the bound address.
pub async fn serve(
    state: AppState,
    ready: impl FnOnce(SocketAddr),
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let addr = state.config.listen;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { addr, source })?;
    let bound = listener.local_addr()?;
    ready(bound);
    let session = state.session.clone();
    let app = router(state);
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await?;
    session.shutdown().await;
    Ok(())
}
