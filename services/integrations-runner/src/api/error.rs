//! API errors, mapped to HTTP in this one place. Internal errors are logged, never shown.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use service_runtime::http_api::error_response;

use crate::model::FieldError;
use crate::store::StoreError;

/// Everything a handler can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A field is missing or wrong (422).
    #[error("{0}")]
    Validation(#[from] FieldError),
    /// The body is not JSON (400).
    #[error("invalid JSON: {0}")]
    BadJson(String),
    /// The body is larger than the route accepts (413).
    #[error("the body is larger than this route accepts")]
    TooLarge,
    /// No such resource (404).
    #[error("{0} not found")]
    NotFound(&'static str),
    /// The id is taken (409).
    #[error("an integration with this id exists")]
    Conflict,
    /// Missing or invalid credentials (401).
    #[error("unauthorized")]
    Unauthorized,
    /// The database or the keyring failed (500; details only in logs).
    #[error("store: {0}")]
    Store(#[from] StoreError),
}

impl ApiError {
    /// A validation error.
    pub fn field(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Validation(FieldError::new(field, message))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = match &self {
            Self::Validation(_) => (StatusCode::UNPROCESSABLE_ENTITY, "validation_failed"),
            Self::BadJson(_) => (StatusCode::BAD_REQUEST, "invalid_json"),
            Self::TooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            Self::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            Self::Conflict => (StatusCode::CONFLICT, "conflict"),
            Self::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            Self::Store(err) => {
                tracing::error!(error = %err, "api request failed");
                (StatusCode::INTERNAL_SERVER_ERROR, "internal")
            }
        };
        let message = match &self {
            Self::Store(_) => "internal error".to_owned(),
            Self::Validation(e) => e.message.clone(),
            other => other.to_string(),
        };
        let field = match &self {
            Self::Validation(e) => Some(e.field.as_str()),
            _ => None,
        };
        error_response(status, code, &message, field)
    }
}
