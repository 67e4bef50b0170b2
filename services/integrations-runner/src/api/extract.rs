//! A JSON body extractor whose errors name the field.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

use super::error::ApiError;

/// Like `axum::Json`, but bounded by the route's `DefaultBodyLimit` (413 past it), a type
/// error is a 422 naming the field (`endpoints.getUserTweets.path`), and malformed JSON a
/// 400. An empty body reads as `{}`.
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|e: BytesRejection| match e.status() {
                StatusCode::PAYLOAD_TOO_LARGE => ApiError::TooLarge,
                _ => ApiError::BadJson("the body could not be read".to_owned()),
            })?;
        let value: serde_json::Value = if bytes.iter().all(u8::is_ascii_whitespace) {
            serde_json::Value::Object(serde_json::Map::new())
        } else {
            serde_json::from_slice(&bytes).map_err(|e| ApiError::BadJson(e.to_string()))?
        };
        if !value.is_object() {
            return Err(ApiError::field("body", "must be a JSON object"));
        }
        serde_path_to_error::deserialize(value)
            .map(ApiJson)
            .map_err(|e| {
                let path = e.path().to_string();
                let message = e.into_inner().to_string();
                let field = if path == "." {
                    // Missing and unknown fields are reported at the parent: name the field.
                    backticked(&message).unwrap_or("body").to_owned()
                } else {
                    path
                };
                ApiError::field(field, message)
            })
    }
}

/// The first `name` in serde's "missing field `name`" / "unknown field `name`" messages.
fn backticked(message: &str) -> Option<&str> {
    let start = message.find('`')? + 1;
    let len = message[start..].find('`')?;
    Some(&message[start..start + len])
}
