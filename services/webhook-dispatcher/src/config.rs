//! webhook-dispatcher configuration (beside the common sections).

use serde::{Deserialize, Serialize};
pub use service_runtime::http_api::ApiConfig;
use service_runtime::net::Cidr;
use service_runtime::{ConfigError, Validate};

/// Everything specific to the dispatcher.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// REST API authentication.
    pub api: ApiConfig,
    /// Consuming `events.>`.
    pub intake: IntakeConfig,
    /// Sending.
    pub delivery: DeliveryConfig,
    /// Pruning old records.
    pub retention: RetentionConfig,
}

/// The durable JetStream consumer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct IntakeConfig {
    /// Durable consumer name, shared by every replica.
    pub consumer: String,
    /// Events read and committed per transaction.
    pub batch: usize,
    /// Seconds before JetStream redelivers an event a crashed replica received but never
    /// acknowledged.
    pub ack_wait_secs: u64,
}

impl Default for IntakeConfig {
    fn default() -> Self {
        Self {
            consumer: "webhook-dispatcher".to_owned(),
            batch: 256,
            ack_wait_secs: 30,
        }
    }
}

/// How deliveries are sent and retried.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DeliveryConfig {
    /// Attempts in flight at once in this replica.
    pub concurrency: usize,
    /// Deliveries claimed per database round trip.
    pub claim_batch: i64,
    /// Seconds a claim is held; a crashed replica's claims fall back after this.
    pub lease_secs: u64,
    /// Milliseconds between polls when nothing is due.
    pub poll_interval_ms: u64,
    /// While attempts are in flight, milliseconds the claim loop lets freed capacity gather
    /// before its next claim, so that claims stay batched under load (one claim per finished
    /// attempt would cost a database round trip per delivery). 0: claim at once.
    pub claim_linger_ms: u64,
    /// Intake claims fresh deliveries as it stores them, up to this replica's free attempt
    /// slots and each subscription's room, and hands them straight to the workers: no claim
    /// round trip or second write before a first attempt. Off: every delivery waits for the
    /// claim loop.
    pub claim_at_intake: bool,
    /// Seconds to establish a connection.
    pub connect_timeout_secs: u64,
    /// Seconds for a whole attempt, body included.
    pub timeout_secs: u64,
    /// Bytes of the response body kept in the attempt record.
    pub max_response_body_bytes: usize,
    /// Attempts per delivery unless the subscription says otherwise (seed: 3).
    pub default_max_attempts: i32,
    /// Concurrent attempts per subscription unless it says otherwise.
    pub default_max_concurrency: i32,
    /// First retry delay in milliseconds; doubles per attempt, with ±20 % jitter.
    pub retry_base_ms: u64,
    /// Longest delay before a retry, `Retry-After` included, in seconds.
    pub retry_max_secs: u64,
    /// Consecutive failed attempts after which a subscription is disabled (0: never).
    pub disable_after_failures: i32,
    /// Seconds the previous secret keeps signing after a rotation, unless the call says.
    pub rotation_grace_secs: u64,
    /// Networks deliveries may reach even though they are not public (CIDRs); a value that
    /// is not a network fails loading, naming the key.
    pub allow_networks: Vec<Cidr>,
    /// An HTTP(S) proxy for every delivery. Unset: deliveries connect directly and the
    /// `HTTP_PROXY`/`HTTPS_PROXY`/`ALL_PROXY` variables are ignored, because through a proxy
    /// the destination check sees only the proxy. Set: that proxy resolves destinations and
    /// must enforce the destination policy itself.
    pub proxy: Option<ProxyUrl>,
}

/// A proxy URL, `http://host:port` or `https://host:port`, parsed at load. Its password, if
/// any, is never shown by `Debug`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ProxyUrl(reqwest::Url);

impl ProxyUrl {
    /// The parsed URL.
    pub fn url(&self) -> &reqwest::Url {
        &self.0
    }
}

/// Why `delivery.proxy` is not a proxy URL. Never repeats the value (it may hold a password).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProxyUrlError {
    /// Not an absolute URL.
    #[error("is not an absolute URL")]
    Invalid,
    /// Another scheme than http or https, or no host.
    #[error("must be http://host:port or https://host:port")]
    Unsupported,
}

impl TryFrom<String> for ProxyUrl {
    type Error = ProxyUrlError;
    fn try_from(raw: String) -> Result<Self, Self::Error> {
        let url = reqwest::Url::parse(raw.trim()).map_err(|_| ProxyUrlError::Invalid)?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none_or(str::is_empty) {
            return Err(ProxyUrlError::Unsupported);
        }
        Ok(Self(url))
    }
}

impl From<ProxyUrl> for String {
    fn from(p: ProxyUrl) -> Self {
        p.0.into()
    }
}

impl std::fmt::Debug for ProxyUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut shown = self.0.clone();
        if shown.password().is_some() {
            let _ = shown.set_password(Some("redacted"));
        }
        write!(f, "ProxyUrl({shown})")
    }
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        Self {
            concurrency: 256,
            claim_batch: 200,
            lease_secs: 60,
            poll_interval_ms: 250,
            claim_linger_ms: 2,
            claim_at_intake: true,
            connect_timeout_secs: 5,
            timeout_secs: 15,
            max_response_body_bytes: 4096,
            default_max_attempts: 3,
            default_max_concurrency: 16,
            retry_base_ms: 5_000,
            retry_max_secs: 3_600,
            disable_after_failures: 100,
            rotation_grace_secs: 86_400,
            allow_networks: Vec::new(),
            proxy: None,
        }
    }
}

/// Pruning.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RetentionConfig {
    /// Days finished deliveries and their attempts are kept.
    pub days: u32,
    /// Seconds between pruning runs.
    pub interval_secs: u64,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self {
            days: 30,
            interval_secs: 3600,
        }
    }
}

impl Validate for Config {
    fn validate(&self) -> Result<(), ConfigError> {
        self.api.validate()?;
        if self.intake.consumer.is_empty()
            || !self
                .intake
                .consumer
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(ConfigError::new(
                "intake.consumer",
                "must be letters, digits, - or _",
            ));
        }
        let d = &self.delivery;
        for (key, ok) in [
            ("intake.batch", (1..=10_000).contains(&self.intake.batch)),
            (
                "intake.ack_wait_secs",
                (1..=3600).contains(&self.intake.ack_wait_secs),
            ),
            ("delivery.concurrency", d.concurrency >= 1),
            (
                "delivery.claim_batch",
                (1..=10_000).contains(&d.claim_batch),
            ),
            ("delivery.lease_secs", d.lease_secs > d.timeout_secs),
            (
                "delivery.timeout_secs",
                d.timeout_secs >= 1 && d.connect_timeout_secs <= d.timeout_secs,
            ),
            (
                "delivery.default_max_attempts",
                (1..=50).contains(&d.default_max_attempts),
            ),
            (
                "delivery.default_max_concurrency",
                d.default_max_concurrency >= 1,
            ),
            ("delivery.poll_interval_ms", d.poll_interval_ms >= 1),
            ("delivery.claim_linger_ms", d.claim_linger_ms <= 1_000),
            ("delivery.retry_base_ms", d.retry_base_ms >= 1),
            ("retention.days", self.retention.days >= 1),
            ("retention.interval_secs", self.retention.interval_secs >= 1),
        ] {
            if !ok {
                return Err(ConfigError::new(key, "is out of range"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use service_runtime::ConfigSource;

    use super::*;

    fn load(extra: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let mut env = vec![
            (
                "WEBHOOK_DISPATCHER_DATABASE__URL".to_owned(),
                "postgres://postgres@127.0.0.1:5432/unused".to_owned(),
            ),
            (
                "WEBHOOK_DISPATCHER_API__KEYS".to_owned(),
                "[a-real-key-0123456789]".to_owned(),
            ),
        ];
        env.extend(
            extra
                .iter()
                .map(|(k, v)| (format!("WEBHOOK_DISPATCHER_{k}"), (*v).to_owned())),
        );
        crate::SPEC
            .load::<Config>(&ConfigSource { file: None, env })
            .map(|s| s.service)
    }

    #[test]
    fn shipped_placeholder_secrets_are_refused_naming_the_key() {
        // The values k8s/base/webhook-dispatcher.yaml ships.
        let err =
            load(&[("API__KEYS", r#"["CHANGE-ME-example-api-key-0123456789"]"#)]).unwrap_err();
        assert_eq!(err.key, "api.keys");
        assert!(!err.to_string().contains("example-api-key"), "{err}");
        let err = load(&[(
            "API__JWT_HS256_SECRET",
            "CHANGE-ME-example-at-least-32-bytes-long",
        )])
        .unwrap_err();
        assert_eq!(err.key, "api.jwt_hs256_secret");
        assert!(
            load(&[(
                "API__JWT_HS256_SECRET",
                "a-real-secret-that-is-at-least-32-bytes"
            )])
            .is_ok()
        );
    }

    #[test]
    fn networks_and_proxy_are_parsed_at_load() {
        let config = load(&[
            ("DELIVERY__ALLOW_NETWORKS", "[10.20.0.0/16, 127.0.0.1]"),
            ("DELIVERY__PROXY", "http://user:pw@proxy.internal:3128"),
        ])
        .unwrap();
        assert_eq!(
            config.delivery.allow_networks,
            vec![
                Cidr::parse("10.20.0.0/16").unwrap(),
                Cidr::parse("127.0.0.1/32").unwrap()
            ]
        );
        let proxy = config.delivery.proxy.unwrap();
        assert_eq!(proxy.url().host_str(), Some("proxy.internal"));
        assert!(!format!("{proxy:?}").contains("pw"));

        let err = load(&[("DELIVERY__ALLOW_NETWORKS", "[10.0.0.0/33]")]).unwrap_err();
        assert!(err.key.starts_with("delivery.allow_networks"), "{err}");
        let err = load(&[("DELIVERY__PROXY", "socks5://secret@proxy:1080")]).unwrap_err();
        assert!(err.key.starts_with("delivery.proxy"), "{err}");
        assert!(!err.to_string().contains("secret"), "{err}");
        assert_eq!(load(&[]).unwrap().delivery.proxy, None);
    }
}
