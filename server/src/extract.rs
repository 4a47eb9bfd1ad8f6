//! Request extractors whose rejections are problem documents.

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};

use crate::error::ApiError;

/// A JSON body; a malformed one is a `400 malformed_json` problem (too large: `413`).
#[derive(Debug, Clone, Copy, Default)]
pub struct JsonBody<T>(pub T);

impl<S, T> FromRequest<S> for JsonBody<T>
where
    axum::Json<T>: FromRequest<S, Rejection = JsonRejection>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(JsonBody(v)),
            Err(rejection) => Err(json_problem(&rejection)),
        }
    }
}

fn json_problem(r: &JsonRejection) -> ApiError {
    use axum::http::StatusCode;
    let status = r.status();
    let code = match status {
        StatusCode::PAYLOAD_TOO_LARGE => "body_too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::UNPROCESSABLE_ENTITY => "invalid_body",
        _ => "malformed_json",
    };
    let status = if status == StatusCode::UNPROCESSABLE_ENTITY {
        StatusCode::BAD_REQUEST
    } else {
        status
    };
    ApiError::new(status, code, r.body_text())
}

/// A JSON body whose fields all have defaults: a request with no body at all (no
/// `Content-Type`, no length or length 0) gets `T::default()`, so `curl -X POST URL` works.
/// A body that is there must be JSON, as with [`JsonBody`].
#[derive(Debug, Clone, Copy, Default)]
pub struct JsonOrDefault<T>(pub T);

impl<S, T> FromRequest<S> for JsonOrDefault<T>
where
    axum::Json<T>: FromRequest<S, Rejection = JsonRejection>,
    T: Default,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        use axum::http::header;
        let h = req.headers();
        let no_type = !h.contains_key(header::CONTENT_TYPE);
        let no_length = match h.get(header::CONTENT_LENGTH) {
            None => !h.contains_key(header::TRANSFER_ENCODING),
            Some(v) => v.as_bytes() == b"0",
        };
        if no_type && no_length {
            return Ok(JsonOrDefault(T::default()));
        }
        JsonBody::<T>::from_request(req, state)
            .await
            .map(|JsonBody(v)| JsonOrDefault(v))
    }
}
