//! Reading an upstream answer: the body with a cap counted as it streams (Content-Length is not
//! trusted), JSON or text, and the rate-limit headers.

use std::time::Duration;

use reqwest::header::HeaderMap;
use serde_json::Value;
use time::OffsetDateTime;

/// Reads at most `cap` bytes of the body; `None` once it is larger.
pub async fn read_capped(
    mut response: reqwest::Response,
    cap: usize,
) -> Result<Option<Vec<u8>>, reqwest::Error> {
    if response.content_length().is_some_and(|n| n > cap as u64) {
        return Ok(None);
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        if body.len() + chunk.len() > cap {
            return Ok(None);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Some(body))
}

/// The body as JSON when it is JSON, else as (lossy) text; `None` for an empty body.
pub fn body_value(body: &[u8]) -> Option<Value> {
    if body.is_empty() {
        return None;
    }
    Some(
        serde_json::from_slice(body)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(body).into_owned())),
    )
}

/// A body kept in an `upstream_status` error: at most `cap` bytes of it.
pub fn bounded_error_data(body: &[u8], cap: usize) -> Option<Value> {
    if body.len() <= cap {
        return body_value(body);
    }
    let mut end = cap;
    let text = loop {
        match std::str::from_utf8(&body[..end]) {
            Ok(t) => break t,
            Err(e) => end = e.valid_up_to(),
        }
    };
    Some(Value::String(format!("{text}…")))
}

/// What the upstream's rate-limit headers said.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UpstreamHeaders {
    /// `X-RateLimit-Limit`.
    pub limit: Option<i64>,
    /// `X-RateLimit-Remaining`.
    pub remaining: Option<i64>,
    /// `X-RateLimit-Reset`.
    pub reset_at: Option<OffsetDateTime>,
    /// `Retry-After`.
    pub retry_after: Option<Duration>,
}

/// Values of `X-RateLimit-Reset` at or above this are epoch seconds (2001-09-09 onwards);
/// smaller ones are seconds from now. No window is 31 years long, and no provider reports a
/// reset before 2001, so the two readings never overlap.
const EPOCH_THRESHOLD: i64 = 1_000_000_000;

/// Reads `X-RateLimit-Limit/Remaining/Reset` and `Retry-After`, ignoring what does not parse.
pub fn upstream_headers(headers: &HeaderMap, now: OffsetDateTime) -> UpstreamHeaders {
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    let int = |name: &str| text(name).and_then(|v| v.parse::<i64>().ok());
    let reset_at = int("x-ratelimit-reset").and_then(|v| {
        if v >= EPOCH_THRESHOLD {
            OffsetDateTime::from_unix_timestamp(v).ok()
        } else {
            now.checked_add(time::Duration::seconds(v.max(0)))
        }
    });
    UpstreamHeaders {
        limit: int("x-ratelimit-limit"),
        remaining: int("x-ratelimit-remaining"),
        reset_at,
        retry_after: text("retry-after").and_then(egress::parse_retry_after),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn reset_is_epoch_or_relative() {
        let now = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
        let mut h = HeaderMap::new();
        h.insert("x-ratelimit-reset", "60".parse().unwrap());
        h.insert("x-ratelimit-remaining", "4".parse().unwrap());
        h.insert("x-ratelimit-limit", "junk".parse().unwrap());
        h.insert("retry-after", "3".parse().unwrap());
        let u = upstream_headers(&h, now);
        assert_eq!(u.reset_at.unwrap().unix_timestamp(), 1_800_000_060);
        assert_eq!((u.limit, u.remaining), (None, Some(4)));
        assert_eq!(u.retry_after, Some(Duration::from_secs(3)));
        h.insert("x-ratelimit-reset", "1800000500".parse().unwrap());
        assert_eq!(
            upstream_headers(&h, now).reset_at.unwrap().unix_timestamp(),
            1_800_000_500
        );
    }

    #[test]
    fn bodies_are_json_or_text_and_bounded() {
        assert_eq!(body_value(b"{\"a\":1}"), Some(serde_json::json!({"a": 1})));
        assert_eq!(body_value(b"plain"), Some(Value::String("plain".into())));
        assert_eq!(body_value(b""), None);
        assert_eq!(
            bounded_error_data("héllo".as_bytes(), 2),
            Some(Value::String("h…".into()))
        );
    }
}
