//! `Idempotency-Key` on the requests that start runs (draft-ietf-httpapi-idempotency-key-header).
//!
//! ```text
//! POST + Idempotency-Key on a route in RUN_CREATING
//!   ├─ same caller and key in flight           ─► 409 idempotency_in_flight
//!   ├─ stored, same fingerprint                ─► the stored response again (Idempotency-Replayed: true)
//!   ├─ stored, another fingerprint             ─► 422 idempotency_key_reused
//!   └─ new ─► the handler; a 2xx answer is stored for TTL_SECS
//! ```
//!
//! The fingerprint is SHA-256 over the method, the path with its query, the caller and the
//! body. Keys are scoped per caller (the bearer token's user; requests without one, such as
//! webhook deliveries, share the scope `anonymous` and are told apart by path and body). Stored
//! answers are sealed under the caller's key; errors are not stored, so a retry after a
//! failure runs again.
//!
//! A route opts in by its path in [`RUN_CREATING`]: one line. The layer is applied to the
//! whole router in `app.rs` and passes every other request through untouched.

use std::collections::HashSet;
use std::sync::Mutex;

use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use secureclaw_engine::session::{AppBatch, AppTable};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::app::AppState;
use crate::error::ApiError;

/// The request header.
pub const HEADER: &str = "idempotency-key";
/// Set on a replayed answer.
pub const REPLAYED_HEADER: &str = "idempotency-replayed";
/// Routes (as the router matches them) whose `POST` starts a run.
pub const RUN_CREATING: &[&str] = &[
    "/api/v1/tasks",
    "/api/v1/tasks/{id}/run",
    "/api/v1/hooks/{name}",
    "/api/v1/workflows/run",
    "/api/v1/tasks/{id}/rerun",
    "/api/v1/tasks/{id}/retry",
];
/// How long a stored answer is replayed: a day.
pub const TTL_SECS: i64 = 24 * 60 * 60;
/// Longest key accepted.
pub const MAX_KEY_LEN: usize = 255;
/// Answers larger than this are not stored (a run-starting answer is a few hundred bytes).
const MAX_STORED_BODY: usize = 256 * 1024;
/// The scope of requests without a bearer token.
const ANONYMOUS: &str = "anonymous";
/// Seal purpose of stored answers.
const SEAL_PURPOSE: &str = "idempotency";

/// Keys whose first request is still being answered, by row key. In memory: after a restart
/// nothing is in flight.
#[derive(Default)]
pub struct InFlight(Mutex<HashSet<String>>);

impl InFlight {
    fn claim(&self, row: &str) -> bool {
        match self.0.lock() {
            Ok(mut set) => set.insert(row.to_string()),
            Err(_) => false,
        }
    }

    fn release(&self, row: &str) {
        if let Ok(mut set) = self.0.lock() {
            set.remove(row);
        }
    }
}

/// Releases its claim however the request ends (answered, failed, or the client went away).
struct Claim<'a> {
    set: &'a InFlight,
    row: String,
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        self.set.release(&self.row);
    }
}

/// A stored answer: the fingerprint in the clear, the answer sealed for the caller.
#[derive(Serialize, Deserialize)]
struct Row {
    fingerprint: String,
    /// Unix seconds.
    expires: i64,
    owner: String,
    sealed: String,
}

#[derive(Serialize, Deserialize)]
struct Answer {
    status: u16,
    content_type: Option<String>,
    body: String,
}

fn problem(status: StatusCode, code: &'static str, detail: &str) -> Response {
    ApiError::new(status, code, detail).into_response()
}

fn sha256_hex(parts: &[&[u8]]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        // Length-prefixed, so moving bytes between parts changes the hash.
        h.update((p.len() as u64).to_be_bytes());
        h.update(p);
    }
    hex::encode(h.finalize())
}

/// The key's value: an sf-string (`"…"`) as the draft writes it, or the bare token clients
/// often send; 1 to 255 visible ASCII characters.
pub fn parse_key(raw: &HeaderValue) -> Option<String> {
    let text = raw.to_str().ok()?.trim();
    let text = text
        .strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .unwrap_or(text);
    let ok = (1..=MAX_KEY_LEN).contains(&text.len())
        && text.bytes().all(|b| b.is_ascii_graphic() || b == b' ');
    ok.then(|| text.to_string())
}

/// The middleware (see the module docs).
pub async fn layer(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let applies = req.method() == Method::POST
        && req
            .extensions()
            .get::<MatchedPath>()
            .is_some_and(|m| RUN_CREATING.contains(&m.as_str()));
    let Some(raw) = req.headers().get(HEADER).filter(|_| applies).cloned() else {
        return next.run(req).await;
    };
    let Some(key) = parse_key(&raw) else {
        return problem(
            StatusCode::BAD_REQUEST,
            "invalid_idempotency_key",
            "an Idempotency-Key is 1 to 255 visible ASCII characters, e.g. a UUID",
        );
    };
    let caller = match crate::auth::bearer(req.headers()) {
        None => ANONYMOUS.to_string(),
        Some(token) => match state.auth.authenticate(token).await {
            Ok(who) => who.user_id,
            // Not signed in: the handler answers 401 and nothing is stored.
            Err(_) => return next.run(req).await,
        },
    };
    let (parts, body) = req.into_parts();
    let limit = state
        .config
        .max_body_bytes
        .max(state.config.hook_max_body_bytes);
    let Ok(bytes) = axum::body::to_bytes(body, limit).await else {
        return crate::app::too_large(limit).into_response();
    };
    let target = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let fingerprint = sha256_hex(&[
        parts.method.as_str().as_bytes(),
        target.as_bytes(),
        caller.as_bytes(),
        &bytes,
    ]);
    let row_key = sha256_hex(&[caller.as_bytes(), key.as_bytes()]);
    let now = crate::hooks::unix_now();
    let stored: Option<Row> = match state.session.app_get_json(AppTable::Idempotency, &row_key) {
        Ok(r) => r.filter(|r: &Row| r.expires > now),
        Err(e) => return ApiError::from(e).into_response(),
    };
    if let Some(row) = stored {
        if row.fingerprint != fingerprint {
            return problem(
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency_key_reused",
                "this Idempotency-Key was used with another request; a key stands for one request",
            );
        }
        return replay(&state, &row);
    }
    if !state.idempotency.claim(&row_key) {
        return ApiError::conflict(
            "idempotency_in_flight",
            "a request with this Idempotency-Key is still being answered",
        )
        .retry_after(1)
        .into_response();
    }
    let _claim = Claim {
        set: &state.idempotency,
        row: row_key.clone(),
    };
    // Stored meanwhile by a request that finished between the read above and the claim.
    if let Ok(Some(row)) = state
        .session
        .app_get_json::<Row>(AppTable::Idempotency, &row_key)
        && row.expires > now
    {
        return if row.fingerprint == fingerprint {
            replay(&state, &row)
        } else {
            problem(
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency_key_reused",
                "this Idempotency-Key was used with another request; a key stands for one request",
            )
        };
    }
    let res = next
        .run(Request::from_parts(parts, Body::from(bytes)))
        .await;
    if !res.status().is_success() {
        return res;
    }
    let (res_parts, res_body) = res.into_parts();
    let Ok(res_bytes) = axum::body::to_bytes(res_body, MAX_STORED_BODY).await else {
        return problem(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the answer could not be stored for replay",
        );
    };
    let answer = Answer {
        status: res_parts.status.as_u16(),
        content_type: res_parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
        body: base64::engine::general_purpose::STANDARD.encode(&res_bytes),
    };
    if let Err(e) = store(&state, &row_key, &caller, fingerprint, now, &answer).await {
        return e.into_response();
    }
    Response::from_parts(res_parts, Body::from(res_bytes))
}

async fn store(
    state: &AppState,
    row_key: &str,
    caller: &str,
    fingerprint: String,
    now: i64,
    answer: &Answer,
) -> Result<(), ApiError> {
    let plain = serde_json::to_vec(answer).map_err(|e| ApiError::internal(e.to_string()))?;
    let sealed = state.session.seal_for_user(caller, SEAL_PURPOSE, &plain)?;
    let row = Row {
        fingerprint,
        expires: now + TTL_SECS,
        owner: caller.to_string(),
        sealed: base64::engine::general_purpose::STANDARD.encode(sealed),
    };
    let mut batch = AppBatch::default();
    batch.put_json(AppTable::Idempotency, row_key, &row)?;
    Ok(state.session.app_commit(batch).await?)
}

fn replay(state: &AppState, row: &Row) -> Response {
    let answer = base64::engine::general_purpose::STANDARD
        .decode(&row.sealed)
        .ok()
        .and_then(|sealed| {
            state
                .session
                .open_for_user(&row.owner, SEAL_PURPOSE, &sealed)
                .ok()
                .flatten()
        })
        .and_then(|plain| serde_json::from_slice::<Answer>(&plain).ok());
    let Some(answer) = answer else {
        return problem(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the stored answer for this Idempotency-Key does not open",
        );
    };
    let body = base64::engine::general_purpose::STANDARD
        .decode(&answer.body)
        .unwrap_or_default();
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::OK);
    let mut res = (status, body).into_response();
    let h = res.headers_mut();
    if let Some(ct) = answer
        .content_type
        .and_then(|c| HeaderValue::from_str(&c).ok())
    {
        h.insert(header::CONTENT_TYPE, ct);
    }
    h.insert(REPLAYED_HEADER, HeaderValue::from_static("true"));
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_sf_strings_or_bare_tokens() {
        let v = |s: &str| parse_key(&HeaderValue::from_str(s).unwrap());
        assert_eq!(
            v("\"8e03978e-40d5-43e8-bc93-6894a57f9324\"").as_deref(),
            Some("8e03978e-40d5-43e8-bc93-6894a57f9324")
        );
        assert_eq!(v("abc").as_deref(), Some("abc"));
        assert_eq!(v("\"\""), None);
        assert_eq!(v(&"k".repeat(256)), None);
    }

    #[test]
    fn fingerprints_separate_their_parts() {
        assert_ne!(sha256_hex(&[b"ab", b"c"]), sha256_hex(&[b"a", b"bc"]));
    }
}
