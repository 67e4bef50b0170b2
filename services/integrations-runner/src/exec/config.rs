//! The `execution` and `rate_limit` configuration sections.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use service_runtime::ConfigError;
use service_runtime::net::Cidr;

/// How endpoints are executed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ExecutionConfig {
    /// Executions in flight in this runner; past it a request is answered `busy` at once.
    pub max_in_flight: usize,
    /// Largest `cmd.integration.execute` / `status` payload; a larger one is answered
    /// `invalid_payload` before it is parsed.
    pub max_request_bytes: usize,
    /// Milliseconds a loaded integration (decrypted secrets included, in memory only) is reused.
    pub cache_ttl_ms: u64,
    /// Integrations kept in that cache.
    pub cache_max_entries: usize,
    /// Milliseconds one attempt may take, unless the endpoint says otherwise.
    pub timeout_ms: u64,
    /// Milliseconds to establish a connection.
    pub connect_timeout_ms: u64,
    /// The gateway's wait when a request has no `deadlineMs`; larger values are capped to
    /// `max_deadline_ms`.
    pub default_deadline_ms: u64,
    /// Largest `deadlineMs` honoured.
    pub max_deadline_ms: u64,
    /// Milliseconds before the request's deadline at which the runner gives up and replies,
    /// so its reply arrives before the gateway's own timeout.
    pub reply_margin_ms: u64,
    /// Largest response body read; past it `response_too_large`.
    pub max_response_bytes: usize,
    /// Bytes of an error body kept in `upstream_status.data`.
    pub max_error_data_bytes: usize,
    /// Attempts of an idempotent request on connect errors and 502/503/504.
    pub max_attempts: u32,
    /// First retry delay (doubles, ±20 % jitter).
    pub retry_base_ms: u64,
    /// Longest retry delay.
    pub retry_max_ms: u64,
    /// Seconds before an OAuth2 token's `expires_in` at which it is refreshed.
    pub token_refresh_margin_secs: u64,
    /// Non-public networks endpoints may reach anyway (CIDRs). Empty: loopback, private,
    /// link-local … are refused (`destination_refused`).
    pub allow_networks: Vec<Cidr>,
}

impl Default for ExecutionConfig {
    fn default() -> Self {
        Self {
            max_in_flight: 512,
            max_request_bytes: 256 * 1024,
            cache_ttl_ms: 2_000,
            cache_max_entries: 10_000,
            timeout_ms: 10_000,
            connect_timeout_ms: 5_000,
            default_deadline_ms: 30_000,
            max_deadline_ms: 120_000,
            reply_margin_ms: 250,
            max_response_bytes: 1024 * 1024,
            max_error_data_bytes: 16 * 1024,
            max_attempts: 3,
            retry_base_ms: 100,
            retry_max_ms: 2_000,
            token_refresh_margin_secs: 30,
            allow_networks: Vec::new(),
        }
    }
}

impl ExecutionConfig {
    /// Checks the values only the service can judge.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, why: &str| Err(ConfigError::new(key, why));
        if self.max_in_flight == 0 {
            return bad("execution.max_in_flight", "must be at least 1");
        }
        if self.max_attempts == 0 {
            return bad("execution.max_attempts", "must be at least 1");
        }
        if self.timeout_ms == 0 || self.max_deadline_ms == 0 {
            return bad("execution.timeout_ms", "must be positive");
        }
        if self.max_request_bytes < 1024 || self.max_response_bytes == 0 {
            return bad("execution.max_request_bytes", "must be at least 1024");
        }
        Ok(())
    }

    /// `cache_ttl_ms` as a duration.
    pub fn cache_ttl(&self) -> Duration {
        Duration::from_millis(self.cache_ttl_ms)
    }
}

/// The `rate_limit` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RateLimitConfig {
    /// Integrations whose upstream rate-limit state is kept in memory.
    pub max_tracked: usize,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            max_tracked: 10_000,
        }
    }
}
