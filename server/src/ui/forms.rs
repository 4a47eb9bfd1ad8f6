//! Form bodies of the UI.
//!
//! Every form carries a `csrf` field; its handler checks it with [`super::Viewer::check_csrf`]
//! (signed in) or [`super::Anonymous::check_csrf`] (before sign-in) before doing anything.

use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

use super::render::UiError;
use crate::error::ApiError;

/// An `application/x-www-form-urlencoded` body; a malformed one is a 400 page.
#[derive(Debug, Clone)]
pub struct UiForm<T>(pub T);

impl<S, T> FromRequest<S> for UiForm<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = UiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, UiError> {
        match axum_extra::extract::Form::<T>::from_request(req, state).await {
            Ok(axum_extra::extract::Form(v)) => Ok(UiForm(v)),
            Err(e) => Err(UiError::Api(ApiError::new(
                StatusCode::BAD_REQUEST,
                "malformed_form",
                format!("the form could not be read: {e}"),
            ))),
        }
    }
}
