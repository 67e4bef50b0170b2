//! The `webhooks` configuration section.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use service_runtime::ConfigError;

/// Inbound provider webhooks: the endpoint, the `INTEGRATION_WEBHOOKS` stream and the mirror.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct WebhooksConfig {
    /// Largest request body accepted; a larger one is answered 413 before anything is read
    /// into memory past this bound. The stored message (body plus a small envelope) must also
    /// fit the NATS server's `max_payload` (1 MiB by default), else the answer is 413 too.
    pub max_body_bytes: usize,
    /// Seconds a verified webhook is kept in the stream.
    pub stream_max_age_secs: u64,
    /// Bytes the stream may hold (oldest dropped first).
    pub stream_max_bytes: i64,
    /// Seconds in which a repeated delivery id is a duplicate. The timestamp tolerance of an
    /// integration is capped at half of it, so a replay is refused either by the timestamp check
    /// or by the duplicate window, never by neither.
    pub duplicate_window_secs: u64,
    /// Stream replicas in a clustered deployment.
    pub stream_replicas: usize,
    /// Durable name of the mirror's consumer, shared by every replica (each webhook is
    /// mirrored once).
    pub consumer: String,
    /// Messages the mirror takes per pull.
    pub mirror_batch: usize,
    /// Seconds before a message a crashed replica took is redelivered.
    pub ack_wait_secs: u64,
    /// Deliveries of one message before the mirror gives up on it.
    pub max_deliver: i64,
    /// Milliseconds an integration's webhook settings are cached (0: not cached).
    pub cache_ttl_ms: u64,
    /// Milliseconds to wait for the stream's acknowledgement before answering 503.
    pub publish_timeout_ms: u64,
}

impl Default for WebhooksConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: 1024 * 1024,
            stream_max_age_secs: 7 * 24 * 3600,
            stream_max_bytes: 1024 * 1024 * 1024,
            duplicate_window_secs: 600,
            stream_replicas: 1,
            consumer: "integrations-runner-webhooks".to_owned(),
            mirror_batch: 64,
            ack_wait_secs: 30,
            max_deliver: 20,
            cache_ttl_ms: 2000,
            publish_timeout_ms: 5000,
        }
    }
}

impl WebhooksConfig {
    /// Checks every key; the error names the key at fault.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let key = |k: &str| format!("webhooks.{k}");
        if !(1..=64 * 1024 * 1024).contains(&self.max_body_bytes) {
            return Err(ConfigError::new(
                key("max_body_bytes"),
                "must be 1 to 67108864",
            ));
        }
        if self.stream_max_age_secs == 0 {
            return Err(ConfigError::new(
                key("stream_max_age_secs"),
                "must be positive",
            ));
        }
        if self.stream_max_bytes == 0 || self.stream_max_bytes < -1 {
            return Err(ConfigError::new(
                key("stream_max_bytes"),
                "must be positive, or -1 for unlimited",
            ));
        }
        if self.duplicate_window_secs < 2 || self.duplicate_window_secs > self.stream_max_age_secs {
            return Err(ConfigError::new(
                key("duplicate_window_secs"),
                "must be at least 2 and at most stream_max_age_secs",
            ));
        }
        if !(1..=5).contains(&self.stream_replicas) {
            return Err(ConfigError::new(key("stream_replicas"), "must be 1 to 5"));
        }
        if events::token::validate_token("consumer", &self.consumer).is_err() {
            return Err(ConfigError::new(
                key("consumer"),
                "must be 1 to 128 characters of A-Z, a-z, 0-9, '_' and '-'",
            ));
        }
        if !(1..=1024).contains(&self.mirror_batch) {
            return Err(ConfigError::new(key("mirror_batch"), "must be 1 to 1024"));
        }
        if self.ack_wait_secs == 0 {
            return Err(ConfigError::new(key("ack_wait_secs"), "must be positive"));
        }
        if self.max_deliver < 1 {
            return Err(ConfigError::new(key("max_deliver"), "must be positive"));
        }
        if self.publish_timeout_ms == 0 {
            return Err(ConfigError::new(
                key("publish_timeout_ms"),
                "must be positive",
            ));
        }
        Ok(())
    }

    /// The duplicate window.
    pub fn duplicate_window(&self) -> Duration {
        Duration::from_secs(self.duplicate_window_secs)
    }

    /// The largest timestamp tolerance honoured: half the duplicate window.
    pub fn max_tolerance_secs(&self) -> u64 {
        self.duplicate_window_secs / 2
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_keys_are_named() {
        assert!(WebhooksConfig::default().validate().is_ok());
        let bad = |edit: fn(&mut WebhooksConfig)| {
            let mut c = WebhooksConfig::default();
            edit(&mut c);
            c.validate().map_err(|e| e.key).err()
        };
        assert_eq!(
            bad(|c| c.max_body_bytes = 0).as_deref(),
            Some("webhooks.max_body_bytes")
        );
        assert_eq!(
            bad(|c| c.consumer = "a.b".into()).as_deref(),
            Some("webhooks.consumer")
        );
        assert_eq!(
            bad(|c| c.duplicate_window_secs = 1).as_deref(),
            Some("webhooks.duplicate_window_secs")
        );
        assert_eq!(
            bad(|c| c.stream_max_bytes = -2).as_deref(),
            Some("webhooks.stream_max_bytes")
        );
    }
}
