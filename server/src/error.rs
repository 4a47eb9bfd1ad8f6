//! Errors as RFC 9457 problem documents (`application/problem+json`) with a stable `code`.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use secureclaw_engine::session::SessionError;
use serde::Serialize;
use utoipa::ToSchema;

/// A problem document. `code` is stable and meant for programs; `title` and `detail` are for
/// people and may change.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Problem {
    /// `urn:secureclaw:problem:CODE`.
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    /// Stable machine-readable code, e.g. `not_found`, `invalid_workflow`, `totp_required`.
    pub code: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// What to do about it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
    /// Located errors (workflow validation), each with line and column.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub errors: Vec<serde_json::Value>,
}

/// Every error a handler returns.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub detail: Option<String>,
    pub hint: Option<String>,
    pub errors: Vec<serde_json::Value>,
    /// Seconds a client should wait (429, lockouts).
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            detail: Some(detail.into()),
            hint: None,
            errors: Vec::new(),
            retry_after: None,
        }
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    pub fn with_errors(mut self, errors: Vec<serde_json::Value>) -> Self {
        self.errors = errors;
        self
    }

    pub fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs);
        self
    }

    pub fn bad_request(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, detail)
    }

    /// The same answer for "no such id" and "not yours", so ids of other users cannot be probed.
    pub fn not_found(what: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no such {what}"),
        )
    }

    pub fn unauthorized(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", detail)
    }

    pub fn forbidden(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", detail)
    }

    pub fn conflict(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, code, detail)
    }

    pub fn internal(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", detail)
    }

    pub fn problem(&self) -> Problem {
        Problem {
            kind: format!("urn:secureclaw:problem:{}", self.code),
            title: self
                .status
                .canonical_reason()
                .unwrap_or("Error")
                .to_string(),
            status: self.status.as_u16(),
            code: self.code.to_string(),
            detail: self.detail.clone(),
            hint: self.hint.clone(),
            errors: self.errors.clone(),
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status, self.code)?;
        if let Some(d) = &self.detail {
            write!(f, ": {d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ApiError {}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::to_vec(&self.problem()).unwrap_or_default();
        let mut res = (self.status, body).into_response();
        let h = res.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(secs) = self.retry_after
            && let Ok(v) = HeaderValue::from_str(&secs.to_string())
        {
            h.insert(header::RETRY_AFTER, v);
        }
        res
    }
}

impl From<SessionError> for ApiError {
    fn from(e: SessionError) -> Self {
        use secureclaw_engine::record::StoreError;
        match &e {
            SessionError::Store(StoreError::NotFound(_)) => ApiError::not_found("task"),
            SessionError::NotParked { .. } => ApiError::conflict("not_parked", e.to_string()),
            SessionError::NotWaiting { .. } => ApiError::conflict("not_waiting", e.to_string()),
            SessionError::Drift { verb, .. } => {
                ApiError::conflict("workspace_drift", e.to_string())
                    .with_hint(format!("{verb} with `force: true` to go on anyway"))
            }
            SessionError::NotFailed { .. } => ApiError::conflict("not_failed", e.to_string())
                .with_hint("only a failed run goes on from its failed step; `POST /api/v1/tasks/{id}/rerun` runs the workflow again as a new task"),
            SessionError::Busy(_) => ApiError::conflict("busy", e.to_string()),
            SessionError::OtherNode { node, .. } => ApiError::conflict("other_node", e.to_string())
                .with_hint(format!(
                    "send the request to the replica that is node {node}: a replica without \
                     --workers reverts, resumes and retries only the runs it ran"
                )),
            SessionError::Invalid { message, hint } => {
                let mut err = ApiError::bad_request("invalid_request", message.clone());
                err.hint = hint.clone();
                err
            }
            SessionError::Revert(_) => ApiError::conflict("revert_refused", e.to_string()),
            _ if e.is_invalid_request() => ApiError::bad_request("invalid_request", e.to_string()),
            _ => ApiError::internal(e.to_string()),
        }
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
