//! gateway-ws configuration (beside the common sections).

use serde::{Deserialize, Serialize};
use service_runtime::net::{Cidr, ClientIpPolicy};
use service_runtime::{ConfigError, Validate, reject_placeholder};

use crate::origin::Origin;

/// Everything specific to the `/ws` gateway.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// How sessions are read.
    pub session: SessionConfig,
    /// Connection and message limits.
    pub limits: LimitsConfig,
    /// Protocol-level keepalive.
    pub heartbeat: HeartbeatConfig,
    /// Which pages may connect.
    pub security: SecurityConfig,
}

/// Browser-facing protections.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SecurityConfig {
    /// Origins (`https://crm.example.com`) whose pages may open `/ws`, exactly; parsed at
    /// load, `*` refused. Empty: only pages of the same host and port as the request's
    /// `Host`. Requests without `Origin` (not from a browser) are always allowed.
    pub allowed_origins: Vec<Origin>,
}

/// Where the host application keeps its express-session sessions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// connect-pg-simple: table `session (sid, sess json, expire)` in `database.url`.
    #[default]
    Postgres,
    /// connect-redis: `<prefix><sid>` holding the session JSON, expiring by TTL.
    Redis,
}

/// Session cookie and store.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SessionConfig {
    /// Cookie name (express-session's `name`).
    pub cookie_name: String,
    /// Signing secrets; every one verifies (rotation). Never logged.
    pub secrets: Vec<String>,
    /// Which store holds sessions.
    pub store: StoreKind,
    /// connect-pg-simple table, optionally schema-qualified (`public.session`).
    pub table: String,
    /// connect-redis server.
    pub redis_url: String,
    /// connect-redis key prefix.
    pub redis_prefix: String,
    /// Dotted paths tried in order to find the user id in the session JSON.
    pub user_id_paths: Vec<String>,
    /// Seconds between re-reads of connected sessions; a session destroyed, expired, or no
    /// longer holding the connection's user is disconnected within this bound (plus one store
    /// round trip).
    pub revalidate_secs: u64,
}

impl std::fmt::Debug for SessionConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionConfig")
            .field("cookie_name", &self.cookie_name)
            .field(
                "secrets",
                &format_args!("[{} redacted]", self.secrets.len()),
            )
            .field("store", &self.store)
            .field("table", &self.table)
            .field("redis_prefix", &self.redis_prefix)
            .field("user_id_paths", &self.user_id_paths)
            .field("revalidate_secs", &self.revalidate_secs)
            .finish_non_exhaustive()
    }
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            cookie_name: "connect.sid".to_owned(),
            secrets: Vec::new(),
            store: StoreKind::Postgres,
            table: "session".to_owned(),
            redis_url: "redis://127.0.0.1:6379".to_owned(),
            redis_prefix: "sess:".to_owned(),
            user_id_paths: vec!["userId".to_owned(), "passport.user".to_owned()],
            revalidate_secs: 30,
        }
    }
}

/// Limits; each breach gets an answer a client understands, never a crash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct LimitsConfig {
    /// Connections this instance accepts; beyond it new ones close with 1013.
    pub max_connections: usize,
    /// Connections per client IP; beyond it new ones close with 1008.
    pub max_connections_per_ip: usize,
    /// Take the client IP from `X-Forwarded-For`: the right-most entry that is not one of
    /// `trusted_proxies`, never the left-most, which the client writes itself.
    pub trust_forwarded_for: bool,
    /// Proxies (CIDRs) whose `X-Forwarded-For` entries are believed. Empty with
    /// `trust_forwarded_for`: the peer is the only proxy, so the last entry is the client.
    pub trusted_proxies: Vec<Cidr>,
    /// Client messages per second (sustained); bursts up to twice this.
    pub messages_per_second: u32,
    /// Largest client message in bytes; a larger one closes with 1009.
    pub max_message_bytes: usize,
    /// Events a connection may fall behind before it is closed with 1013 (slow consumer).
    pub outbound_queue: usize,
    /// Seconds one write to a client may take before it counts as stuck and is closed.
    pub write_timeout_secs: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_connections: 50_000,
            max_connections_per_ip: 200,
            trust_forwarded_for: false,
            trusted_proxies: Vec::new(),
            messages_per_second: 20,
            max_message_bytes: 4096,
            outbound_queue: 1024,
            write_timeout_secs: 10,
        }
    }
}

impl LimitsConfig {
    /// How the client address of a handshake is found.
    pub fn client_ip_policy(&self) -> ClientIpPolicy {
        ClientIpPolicy {
            trust_forwarded_for: self.trust_forwarded_for,
            trusted_proxies: self.trusted_proxies.clone(),
        }
    }
}

/// Server pings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct HeartbeatConfig {
    /// Seconds between pings to an idle connection.
    pub interval_secs: u64,
    /// Seconds without any frame from the client before it is dropped.
    pub timeout_secs: u64,
}

impl Default for HeartbeatConfig {
    fn default() -> Self {
        Self {
            interval_secs: 25,
            timeout_secs: 60,
        }
    }
}

impl Validate for Config {
    fn validate(&self) -> Result<(), ConfigError> {
        let s = &self.session;
        if s.secrets.is_empty() || s.secrets.iter().any(String::is_empty) {
            return Err(ConfigError::new(
                "session.secrets",
                "at least one non-empty secret is required",
            ));
        }
        // k8s/base/gateway-ws.yaml ships `CHANGE-ME-...` values; a gateway checking cookies against a
        // published secret accepts cookies anyone can forge.
        for secret in &s.secrets {
            reject_placeholder("session.secrets", secret)?;
        }
        if s.cookie_name.is_empty() {
            return Err(ConfigError::new("session.cookie_name", "must not be empty"));
        }
        let valid_table = !s.table.is_empty()
            && s.table.split('.').count() <= 2
            && s.table
                .split('.')
                .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
        if !valid_table {
            return Err(ConfigError::new(
                "session.table",
                "must be [schema.]table of letters, digits, _",
            ));
        }
        if s.store == StoreKind::Redis {
            if !s.redis_url.starts_with("redis://") && !s.redis_url.starts_with("rediss://") {
                return Err(ConfigError::new(
                    "session.redis_url",
                    "must start with redis:// or rediss://",
                ));
            }
            // The URL carries the Redis password when there is one.
            reject_placeholder("session.redis_url", &s.redis_url)?;
        }
        if s.user_id_paths.is_empty() {
            return Err(ConfigError::new(
                "session.user_id_paths",
                "must name at least one path",
            ));
        }
        if s.revalidate_secs == 0 {
            return Err(ConfigError::new(
                "session.revalidate_secs",
                "must be at least 1",
            ));
        }
        let l = &self.limits;
        for (key, value) in [
            ("limits.max_connections", l.max_connections),
            ("limits.max_connections_per_ip", l.max_connections_per_ip),
            ("limits.messages_per_second", l.messages_per_second as usize),
            ("limits.outbound_queue", l.outbound_queue),
            ("limits.write_timeout_secs", l.write_timeout_secs as usize),
        ] {
            if value == 0 {
                return Err(ConfigError::new(key, "must be at least 1"));
            }
        }
        if l.max_message_bytes < 64 {
            return Err(ConfigError::new(
                "limits.max_message_bytes",
                "must be at least 64",
            ));
        }
        let h = &self.heartbeat;
        if h.interval_secs == 0 || h.timeout_secs <= h.interval_secs {
            return Err(ConfigError::new(
                "heartbeat.timeout_secs",
                "must be greater than heartbeat.interval_secs, which must be at least 1",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use service_runtime::{ConfigSource, Settings};

    use super::*;

    fn load(extra: &[(&str, &str)]) -> Result<Settings<Config>, ConfigError> {
        let mut env = vec![(
            "GATEWAY_WS_SESSION__SECRETS".to_owned(),
            r#"["a real secret"]"#.to_owned(),
        )];
        env.extend(
            extra
                .iter()
                .map(|(k, v)| (format!("GATEWAY_WS_{k}"), (*v).to_owned())),
        );
        crate::SPEC.load::<Config>(&ConfigSource { file: None, env })
    }

    #[test]
    fn shipped_placeholder_secrets_are_refused_naming_the_key() {
        for secrets in [
            r#"["CHANGE-ME-example-session-secret"]"#,
            r#"["new secret", "change-me-old"]"#,
        ] {
            let err = load(&[("SESSION__SECRETS", secrets)]).unwrap_err();
            assert_eq!(err.key, "session.secrets", "{secrets}");
            assert!(!err.to_string().contains("example-session"), "{err}");
        }
        let err = load(&[
            ("SESSION__STORE", "redis"),
            (
                "SESSION__REDIS_URL",
                "redis://:CHANGE-ME-example@redis.example.internal:6379",
            ),
        ])
        .unwrap_err();
        assert_eq!(err.key, "session.redis_url");
        assert!(!err.to_string().contains("redis.example"), "{err}");
        assert!(
            load(&[
                ("SESSION__STORE", "redis"),
                ("SESSION__REDIS_URL", "redis://:s3cret@redis:6379")
            ])
            .is_ok()
        );
    }

    #[test]
    fn allowed_origins_and_trusted_proxies_are_parsed_at_load() {
        let settings = load(&[
            (
                "SECURITY__ALLOWED_ORIGINS",
                r#"["https://crm.example.com", "http://localhost:3000"]"#,
            ),
            ("LIMITS__TRUST_FORWARDED_FOR", "true"),
            ("LIMITS__TRUSTED_PROXIES", r#"["10.0.0.0/8", "::1"]"#),
        ])
        .unwrap();
        assert_eq!(
            settings.service.security.allowed_origins,
            vec![
                Origin::parse("https://crm.example.com").unwrap(),
                Origin::parse("http://localhost:3000").unwrap()
            ]
        );
        let policy = settings.service.limits.client_ip_policy();
        assert!(policy.trust_forwarded_for);
        assert_eq!(
            policy.trusted_proxies,
            vec![
                Cidr::parse("10.0.0.0/8").unwrap(),
                Cidr::parse("::1").unwrap()
            ]
        );

        for (origins, hint) in [
            (r#"["*"]"#, "not supported"),
            (r#"["https://crm.example.com/"]"#, "no path"),
            (r#"["crm.example.com"]"#, "http:// or https://"),
        ] {
            let err = load(&[("SECURITY__ALLOWED_ORIGINS", origins)]).unwrap_err();
            assert!(err.key.starts_with("security.allowed_origins"), "{err}");
            assert!(err.message.contains(hint), "{origins}: {err}");
        }
        let err = load(&[("LIMITS__TRUSTED_PROXIES", r#"["10.0.0.0/33"]"#)]).unwrap_err();
        assert!(err.key.starts_with("limits.trusted_proxies"), "{err}");
    }
}
