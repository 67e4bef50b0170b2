//! gateway-ws configuration (beside the common sections).

use serde::{Deserialize, Serialize};
use service_runtime::{ConfigError, Validate};

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
    /// Seconds between checks that connected sessions still exist; a destroyed or expired
    /// session is disconnected within this bound (plus one store round trip).
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
    /// Take the client IP from the first `X-Forwarded-For` entry (behind a trusted proxy).
    pub trust_forwarded_for: bool,
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
            messages_per_second: 20,
            max_message_bytes: 4096,
            outbound_queue: 1024,
            write_timeout_secs: 10,
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
        if s.store == StoreKind::Redis
            && !s.redis_url.starts_with("redis://")
            && !s.redis_url.starts_with("rediss://")
        {
            return Err(ConfigError::new(
                "session.redis_url",
                "must start with redis:// or rediss://",
            ));
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
