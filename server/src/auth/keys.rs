//! `/api/v1/me/keys/*`: a user's own provider API keys, write-only. Each is sealed under the
//! user's key and bound to its provider, so a row copied to another user or provider does not
//! open; no endpoint ever returns a key.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use secureclaw_engine::session::{AppBatch, AppTable, Audit};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use zeroize::Zeroizing;

use super::{Auth, Identity};
use crate::app::AppState;
use crate::error::{ApiError, ApiResult, Problem};
use crate::extract::JsonBody;

/// Providers a user may store a key for.
pub const PROVIDERS: &[&str] = &["anthropic", "openai", "ollama"];

/// Ledger kinds of a key stored or removed (the entry names the provider, never the key).
pub const AUTH_KEY_SET: &str = "auth_key_set";
pub const AUTH_KEY_REMOVED: &str = "auth_key_removed";

const MAX_KEY_LEN: usize = 4096;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_keys))
        .routes(routes!(put_key, delete_key))
}

/// A key to store.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KeyRequest {
    pub key: String,
}

impl std::fmt::Debug for KeyRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyRequest { key: <redacted> }")
    }
}

/// A stored key, without the key.
#[derive(Debug, Serialize, ToSchema)]
pub struct KeyInfo {
    pub provider: String,
    /// RFC 3339.
    pub set_at: String,
}

/// What a row holds, sealed; wiped when dropped.
#[derive(Serialize, Deserialize, zeroize::Zeroize, zeroize::ZeroizeOnDrop)]
struct StoredKey {
    key: String,
    set_at: String,
}

fn row_key(user_id: &str, provider: &str) -> String {
    format!("{user_id}/{provider}")
}

fn purpose(provider: &str) -> String {
    format!("provider_key/{provider}")
}

fn checked_provider(provider: &str) -> ApiResult<&'static str> {
    PROVIDERS
        .iter()
        .find(|p| **p == provider)
        .copied()
        .ok_or_else(|| {
            ApiError::bad_request(
                "unknown_provider",
                format!(
                    "`{provider}` is not a provider: one of {}",
                    PROVIDERS.join(", ")
                ),
            )
        })
}

impl Auth {
    /// The user's key for `provider`, if they stored one (for the code that calls providers).
    pub fn provider_key(
        &self,
        user_id: &str,
        provider: &str,
    ) -> Result<Option<Zeroizing<String>>, ApiError> {
        Ok(self
            .stored_key(user_id, provider)?
            .map(|s| Zeroizing::new(s.key.clone())))
    }

    fn stored_key(&self, user_id: &str, provider: &str) -> Result<Option<StoredKey>, ApiError> {
        let session = self.accounts.session();
        let Some(sealed) = session.app_get(AppTable::UserSecrets, &row_key(user_id, provider))?
        else {
            return Ok(None);
        };
        let Some(plain) = session.open_for_user(user_id, &purpose(provider), &sealed)? else {
            return Err(ApiError::internal(format!(
                "the {provider} key of {user_id} does not open under its own key"
            )));
        };
        let plain = Zeroizing::new(plain);
        serde_json::from_slice(&plain)
            .map(Some)
            .map_err(|e| ApiError::internal(format!("the {provider} key of {user_id}: {e}")))
    }
}

/// The providers the user stored a key for, and when (never the keys).
#[utoipa::path(get, path = "/me/keys", tag = "auth",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "stored keys, without the keys", body = [KeyInfo]),
        (status = 401, description = "not signed in", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn list_keys(
    State(state): State<AppState>,
    who: Identity,
) -> ApiResult<Json<Vec<KeyInfo>>> {
    let mut out = Vec::new();
    for provider in PROVIDERS {
        if let Some(s) = state.auth.stored_key(&who.user_id, provider)? {
            out.push(KeyInfo {
                provider: (*provider).to_string(),
                set_at: s.set_at.clone(),
            });
        }
    }
    Ok(Json(out))
}

/// Store (or replace) the user's key for a provider.
#[utoipa::path(put, path = "/me/keys/{provider}", tag = "auth",
    security(("bearer" = [])),
    params(("provider" = String, Path, description = "`anthropic`, `openai` or `ollama`")),
    request_body = KeyRequest,
    responses(
        (status = 204, description = "stored"),
        (status = 400, description = "`unknown_provider`, `invalid_key` or a malformed body", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "not signed in", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn put_key(
    State(state): State<AppState>,
    who: Identity,
    Path(provider): Path<String>,
    JsonBody(req): JsonBody<KeyRequest>,
) -> ApiResult<StatusCode> {
    let provider = checked_provider(&provider)?;
    let key = Zeroizing::new(req.key);
    let trimmed = key.trim();
    if trimmed.is_empty() || trimmed.len() > MAX_KEY_LEN || trimmed.chars().any(char::is_control) {
        return Err(ApiError::bad_request(
            "invalid_key",
            format!("a key is 1 to {MAX_KEY_LEN} printable characters"),
        ));
    }
    let stored = StoredKey {
        key: trimmed.to_string(),
        set_at: super::accounts::now(),
    };
    let plain =
        Zeroizing::new(serde_json::to_vec(&stored).map_err(|e| ApiError::internal(e.to_string()))?);
    let session = state.auth.accounts.session();
    let sealed = session.seal_for_user(&who.user_id, &purpose(provider), &plain)?;
    let mut batch = AppBatch::default();
    batch
        .put(
            AppTable::UserSecrets,
            row_key(&who.user_id, provider),
            sealed,
        )
        .audit(Audit::new(
            AUTH_KEY_SET,
            who.actor(),
            serde_json::json!({"provider": provider}),
        ));
    session.app_commit(batch).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Remove the user's key for a provider.
#[utoipa::path(delete, path = "/me/keys/{provider}", tag = "auth",
    security(("bearer" = [])),
    params(("provider" = String, Path, description = "`anthropic`, `openai` or `ollama`")),
    responses(
        (status = 204, description = "removed"),
        (status = 400, description = "`unknown_provider`", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "not signed in", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "no key stored for this provider", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn delete_key(
    State(state): State<AppState>,
    who: Identity,
    Path(provider): Path<String>,
) -> ApiResult<StatusCode> {
    let provider = checked_provider(&provider)?;
    let session = state.auth.accounts.session();
    let row = row_key(&who.user_id, provider);
    if session.app_get(AppTable::UserSecrets, &row)?.is_none() {
        return Err(ApiError::not_found("key"));
    }
    let mut batch = AppBatch::default();
    batch.delete(AppTable::UserSecrets, row).audit(Audit::new(
        AUTH_KEY_REMOVED,
        who.actor(),
        serde_json::json!({"provider": provider}),
    ));
    session.app_commit(batch).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use secureclaw_engine::session::{Access, PassphraseSource, Session, SessionOptions};

    use super::*;
    use crate::config::ServerConfig;

    fn who(user_id: &str) -> Identity {
        Identity {
            user_id: user_id.into(),
            username: format!("name-{user_id}"),
            admin: false,
            roles: Vec::new(),
            session_id: "s".into(),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_key_reads_back_for_its_user_and_provider_only() {
        let dir = tempfile::tempdir().unwrap();
        let pass = dir.path().join("pass");
        std::fs::write(&pass, "keys-test-passphrase").unwrap();
        let session = Session::open(SessionOptions {
            state_dir: dir.path().join("state"),
            passphrase: PassphraseSource::File(pass),
            access: Access::Write { create: true },
            actor: "test:keys".into(),
        })
        .unwrap();
        let state = AppState::new(session.clone(), ServerConfig::defaults(dir.path().into()))
            .await
            .unwrap();
        let status = put_key(
            State(state.clone()),
            who("u1"),
            Path("openai".into()),
            JsonBody(KeyRequest {
                key: " sk-unit-test \n".into(),
            }),
        )
        .await
        .unwrap();
        assert_eq!(status, StatusCode::NO_CONTENT);
        let auth = &state.auth;
        assert_eq!(
            auth.provider_key("u1", "openai")
                .unwrap()
                .as_deref()
                .map(String::as_str),
            Some("sk-unit-test")
        );
        assert!(auth.provider_key("u2", "openai").unwrap().is_none());
        assert!(auth.provider_key("u1", "anthropic").unwrap().is_none());

        // The sealed row moved to another provider or another user does not open.
        let row = session
            .app_get(AppTable::UserSecrets, &row_key("u1", "openai"))
            .unwrap()
            .unwrap();
        let mut batch = AppBatch::default();
        batch
            .put(
                AppTable::UserSecrets,
                row_key("u1", "anthropic"),
                row.clone(),
            )
            .put(AppTable::UserSecrets, row_key("u2", "openai"), row);
        session.app_commit(batch).await.unwrap();
        assert!(auth.provider_key("u1", "anthropic").is_err());
        assert!(auth.provider_key("u2", "openai").is_err());
        session.shutdown().await;
    }
}
