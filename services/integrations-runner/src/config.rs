//! integrations-runner configuration (beside the common `http`, `nats`, `database`, `shutdown`
//! and `log` sections). Every section is checked by [`Config::validate`] when the
//! configuration is loaded, before any port is bound.

use serde::{Deserialize, Serialize};
use service_runtime::{ConfigError, Validate};

use crate::crypto::CryptoConfig;

/// Everything specific to the runner.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// REST API authentication.
    pub api: crate::api::auth::ApiConfig,
    /// Keys that encrypt stored credentials.
    pub crypto: CryptoConfig,
    /// Executing endpoints (`crate::exec`).
    pub execution: crate::exec::ExecutionConfig,
    /// Usage accounting (`crate::usage`).
    pub usage: crate::usage::UsageConfig,
    /// Upstream rate-limit state (`crate::ratelimit`).
    pub rate_limit: crate::exec::RateLimitConfig,
    /// Inbound provider webhooks (W, `crate::webhooks`).
    pub webhooks: crate::webhooks::WebhooksConfig,
}

impl Validate for Config {
    fn validate(&self) -> Result<(), ConfigError> {
        self.api.validate()?;
        self.crypto.validate()?;
        self.execution.validate()?;
        self.webhooks.validate()?;
        Ok(())
    }
}
