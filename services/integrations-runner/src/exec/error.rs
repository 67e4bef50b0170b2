//! Why an execution failed, as the typed error every path ends in, and its one mapping to the
//! wire `error` object of `ExecuteReply` (docs/integrations.md "Error codes").

use serde::Serialize;
use serde_json::Value;

/// Why an execution (or a status request) failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ExecError {
    /// The request is not the documented shape.
    #[error("invalid payload: {field}")]
    InvalidPayload {
        /// What is wrong, e.g. `endpoint`.
        field: String,
    },
    /// No such integration in that project.
    #[error("no such integration in this project")]
    NotFound,
    /// The integration is deactivated.
    #[error("the integration is inactive")]
    Inactive,
    /// No endpoint of that name.
    #[error("the integration has no endpoint of that name")]
    UnknownEndpoint,
    /// A required param is missing or not a scalar, or cannot be a path segment.
    #[error("invalid param {field}")]
    InvalidParams {
        /// `params.<name>`.
        field: String,
    },
    /// The third party answered 4xx/5xx.
    #[error("the upstream answered {status}")]
    UpstreamStatus {
        /// Its status code.
        status: u16,
        /// Its (bounded) body, when it sent one.
        data: Option<Value>,
    },
    /// No answer within the deadline.
    #[error("no answer within the deadline")]
    Timeout,
    /// The integration's rate limit is exhausted.
    #[error("rate limited")]
    RateLimited {
        /// When a call may succeed again.
        retry_after_ms: u64,
    },
    /// Connection refused, TLS or DNS failure.
    #[error("the upstream is unreachable")]
    Unreachable,
    /// The URL resolves to an address the runner may not reach.
    #[error("destination refused")]
    DestinationRefused,
    /// The response exceeded `execution.max_response_bytes`.
    #[error("the response is too large")]
    ResponseTooLarge,
    /// Too many executions in flight on this runner.
    #[error("too many executions in flight")]
    Busy,
    /// The runner cannot serve the request (its database does not answer, or it is
    /// stopping).
    #[error("the runner cannot serve the request")]
    RunnerUnavailable,
}

impl ExecError {
    /// The wire code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidPayload { .. } => "invalid_payload",
            Self::NotFound => "not_found",
            Self::Inactive => "inactive",
            Self::UnknownEndpoint => "unknown_endpoint",
            Self::InvalidParams { .. } => "invalid_params",
            Self::UpstreamStatus { .. } => "upstream_status",
            Self::Timeout => "timeout",
            Self::RateLimited { .. } => "rate_limited",
            Self::Unreachable => "upstream_unreachable",
            Self::DestinationRefused => "destination_refused",
            Self::ResponseTooLarge => "response_too_large",
            Self::Busy => "busy",
            Self::RunnerUnavailable => "runner_unavailable",
        }
    }

    /// The wire `error` object. The message is this enum's own text, never a library's.
    pub fn body(&self) -> ErrorBody {
        let mut body = ErrorBody {
            code: self.code(),
            message: self.to_string(),
            status: None,
            retry_after_ms: None,
            field: None,
            data: None,
        };
        match self {
            Self::InvalidPayload { field } | Self::InvalidParams { field } => {
                body.field = Some(field.clone());
            }
            Self::UpstreamStatus { status, data } => {
                body.status = Some(*status);
                body.data = data.clone();
            }
            Self::RateLimited { retry_after_ms } => body.retry_after_ms = Some(*retry_after_ms),
            _ => {}
        }
        body
    }
}

/// `error` of a failed `ExecuteReply` / `StatusReply`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ErrorBody {
    /// One of the documented codes.
    pub code: &'static str,
    /// A human-readable sentence.
    pub message: String,
    /// `upstream_status`: the upstream's status.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// `rate_limited`: milliseconds until a call may succeed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
    /// `invalid_payload` / `invalid_params`: what is wrong.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// `upstream_status`: the upstream's body.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
}
