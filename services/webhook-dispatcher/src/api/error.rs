//! API errors, mapped to HTTP in this one place. Internal errors are logged, never shown.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use service_runtime::http_api::error_response;

/// Everything a handler can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A field is missing or wrong (422).
    #[error("{field}: {message}")]
    Validation {
        /// The field, e.g. `url` or `event_types[1]`.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// The body is not JSON (400).
    #[error("invalid JSON: {0}")]
    BadJson(String),
    /// No such resource (404).
    #[error("{0} not found")]
    NotFound(&'static str),
    /// The resource is in a state that does not allow this now (409).
    #[error("{message}")]
    Conflict {
        /// Machine-readable code, e.g. `delivery_in_flight`.
        code: &'static str,
        /// What to do.
        message: &'static str,
    },
    /// Missing or invalid credentials (401).
    #[error("unauthorized")]
    Unauthorized,
    /// The database failed (500; details only in logs).
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
}

impl ApiError {
    /// A validation error.
    pub fn field(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Validation {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = match &self {
            Self::Validation { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "validation_failed"),
            Self::BadJson(_) => (StatusCode::BAD_REQUEST, "invalid_json"),
            Self::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            Self::Conflict { code, .. } => (StatusCode::CONFLICT, *code),
            Self::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            Self::Database(err) => {
                tracing::error!(error = %err, "api request failed");
                (StatusCode::INTERNAL_SERVER_ERROR, "internal")
            }
        };
        let message = match &self {
            Self::Database(_) => "internal error".to_owned(),
            other => other.to_string(),
        };
        let field = match &self {
            Self::Validation { field, .. } => Some(field.as_str()),
            _ => None,
        };
        error_response(status, code, &message, field)
    }
}
