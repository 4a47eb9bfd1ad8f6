//! Accounts and sign-in: Argon2id passwords, HS256 JWTs bound to sessions (held in memory, or
//! in the store when several server replicas share one),
//! TOTP two-factor sign-in with codes spent once, a throttle with backoff and lockout, roles,
//! and each user's sealed provider keys. docs/auth.md describes the flows and the limits.
//!
//! A token is accepted only while its session is in the session table: logging out or revoking
//! ends it, whatever its `exp` says, and so does restarting a server that holds its sessions in
//! memory (one with no shared store).

pub mod accounts;
pub mod admin;
pub mod keys;
pub mod limits;
pub mod routes;
pub mod tickets;
pub mod tokens;
pub mod totp;
pub mod two_factor;

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
use serde::Serialize;
use utoipa::ToSchema;

use crate::app::AppState;
use crate::error::ApiError;

pub use accounts::{Account, Accounts};
pub use limits::{AuthLimits, Throttle};
pub use tickets::Tickets;
pub use tokens::{Claims, Sessions, Tokens};

/// Every route of this module: sign-in, sessions, 2FA, admin, the user's provider keys.
pub fn routes() -> utoipa_axum::router::OpenApiRouter<AppState> {
    routes::routes()
        .merge(two_factor::routes())
        .merge(admin::routes())
        .merge(keys::routes())
}

/// The signed-in user a request acts for.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Identity {
    pub user_id: String,
    pub username: String,
    pub admin: bool,
    pub roles: Vec<String>,
    /// The in-memory session the token belongs to.
    #[serde(skip)]
    pub session_id: String,
}

impl Identity {
    /// The ledger's name for this user.
    pub fn actor(&self) -> String {
        format!("user:{}", self.username)
    }

    /// May this user see and act on something `owner` owns?
    pub fn may_access(&self, owner: &str) -> bool {
        self.admin || self.user_id == owner
    }

    pub fn has_role(&self, role: &str) -> bool {
        self.admin || self.roles.iter().any(|r| r == role)
    }
}

/// The bearer token of a request, if it has one.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

impl FromRequestParts<AppState> for Identity {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        if let Some(token) = bearer(&parts.headers) {
            return state.auth.authenticate(token).await;
        }
        // The web UI's pages call the API with their session cookie instead; a browser sends
        // it by itself, so anything that changes state must carry the page's CSRF token too.
        let Some(token) = crate::ui::csrf::cookie(&parts.headers, crate::ui::csrf::SESSION_COOKIE)
        else {
            return Err(ApiError::unauthorized(
                "sign in first: send `Authorization: Bearer TOKEN`",
            )
            .with_hint("POST /api/v1/auth/login returns a token"));
        };
        let who = state.auth.authenticate(token).await?;
        if !parts.method.is_safe() {
            let given = parts
                .headers
                .get(crate::ui::csrf::CSRF_HEADER)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            if !state.ui.csrf.check_session(&who.session_id, given) {
                return Err(ApiError::new(
                    axum::http::StatusCode::FORBIDDEN,
                    "csrf_token_invalid",
                    "a request signed in by the session cookie needs the page's CSRF token",
                )
                .with_hint("send the token of the page's `csrf-token` meta tag as `X-CSRF-Token`, or use a bearer token"));
            }
        }
        Ok(who)
    }
}

/// The client's address: the socket's, or the first untrusted hop of `X-Forwarded-For` when
/// the socket is a proxy the operator trusts.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub std::net::IpAddr);

impl FromRequestParts<AppState> for ClientAddr {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let socket = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip())
            .unwrap_or(std::net::IpAddr::from([127, 0, 0, 1]));
        Ok(ClientAddr(client_ip(
            socket,
            &parts.headers,
            &state.config.trusted_proxies,
        )))
    }
}

/// Walk `X-Forwarded-For` from the right while the hop is a trusted proxy.
pub fn client_ip(
    socket: std::net::IpAddr,
    headers: &HeaderMap,
    trusted: &[std::net::IpAddr],
) -> std::net::IpAddr {
    if !trusted.contains(&socket) {
        return socket;
    }
    let hops: Vec<std::net::IpAddr> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let mut client = socket;
    for hop in hops.into_iter().rev() {
        client = hop;
        if !trusted.contains(&hop) {
            break;
        }
    }
    client
}

/// Accounts, tokens and sessions together, and the throttle in front of them.
pub struct Auth {
    pub accounts: Accounts,
    pub tokens: Tokens,
    pub sessions: Sessions,
    pub throttle: Throttle,
    pub tickets: Tickets,
    /// Held across every read-modify-write of an account, so two requests cannot both spend
    /// the same TOTP code or lose each other's change.
    pub account_writes: tokio::sync::Mutex<()>,
}

impl Auth {
    pub fn new(accounts: Accounts, tokens: Tokens, sessions: Sessions, limits: AuthLimits) -> Self {
        Auth {
            accounts,
            tokens,
            sessions,
            tickets: Tickets::new(limits.ticket_ttl, limits.tracked_max),
            throttle: Throttle::new(limits),
            account_writes: tokio::sync::Mutex::new(()),
        }
    }

    /// The identity a token stands for, if its signature, expiry and session all hold.
    pub async fn authenticate(&self, token: &str) -> Result<Identity, ApiError> {
        let claims = self.tokens.verify(token)?;
        if !self.sessions.is_active(&claims.sid, &claims.sub) {
            return Err(ApiError::unauthorized(
                "this token's session has ended (signed out, revoked, or the server restarted)",
            )
            .with_hint("sign in again"));
        }
        let account = self
            .accounts
            .get(&claims.sub)?
            .ok_or_else(|| ApiError::unauthorized("the account no longer exists"))?;
        Ok(Identity {
            user_id: account.id,
            username: account.username,
            admin: account.admin,
            roles: account.roles,
            session_id: claims.sid,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let proxy: std::net::IpAddr = "10.0.0.1".parse().unwrap();
        let mut h = HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            HeaderValue::from_static("203.0.113.9, 10.0.0.1"),
        );
        // No trusted proxy: the header is ignored.
        assert_eq!(client_ip(proxy, &h, &[]), proxy);
        // Trusted: the first untrusted hop from the right.
        assert_eq!(
            client_ip(proxy, &h, &[proxy]).to_string(),
            "203.0.113.9".to_string()
        );
        // A client that is not the proxy cannot spoof its address with the header.
        let other: std::net::IpAddr = "198.51.100.7".parse().unwrap();
        assert_eq!(client_ip(other, &h, &[proxy]), other);
    }

    #[test]
    fn the_api_document_lists_every_auth_route_and_which_need_a_token() {
        let (_, doc) = crate::app::api_router().split_for_parts();
        let doc = serde_json::to_value(&doc).unwrap();
        let open = [
            ("post", "/api/v1/auth/register"),
            ("post", "/api/v1/auth/login"),
            ("post", "/api/v1/auth/login/totp"),
        ];
        let signed_in = [
            ("post", "/api/v1/auth/logout"),
            ("get", "/api/v1/auth/me"),
            ("get", "/api/v1/auth/sessions"),
            ("delete", "/api/v1/auth/sessions/{id}"),
            ("post", "/api/v1/auth/2fa/setup"),
            ("post", "/api/v1/auth/2fa/enable"),
            ("post", "/api/v1/auth/2fa/disable"),
            ("get", "/api/v1/admin/users"),
            ("post", "/api/v1/admin/users/{id}/roles"),
            ("get", "/api/v1/me/keys"),
            ("put", "/api/v1/me/keys/{provider}"),
            ("delete", "/api/v1/me/keys/{provider}"),
        ];
        for (method, path) in open.iter().chain(&signed_in) {
            let op = &doc["paths"][path][method];
            assert!(op.is_object(), "{method} {path} is not documented");
            let wants_token = signed_in.contains(&(*method, *path));
            assert_eq!(op["security"].is_array(), wants_token, "{method} {path}");
        }
    }

    #[test]
    fn bearer_needs_the_scheme() {
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer abc"),
        );
        assert_eq!(bearer(&h), Some("abc"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert_eq!(bearer(&h), None);
    }
}
