//! gateway-socketio configuration (beside the common sections). Every key is documented in
//! `docs/gateway-socketio.md`.

use serde::{Deserialize, Serialize};
use service_runtime::net::ClientIpPolicy;
use service_runtime::{ConfigError, Validate, reject_placeholder};

/// Everything specific to the Socket.IO gateway.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// `/admin`: JWT verification and subscription policy.
    pub admin: AdminConfig,
    /// `/provider`: Logto access tokens.
    pub provider: ProviderConfig,
    /// `/widget`: widget keys and the Discord request relay.
    pub widget: WidgetConfig,
    /// `/stat`: public counters.
    pub stat: StatConfig,
    /// Operator API (widget keys).
    pub api: ApiConfig,
    /// Engine.IO / Socket.IO transport settings.
    pub socketio: SocketIoConfig,
    /// Cluster-wide socket counts.
    pub metrics: MetricsConfig,
    /// Connection caps and how the client address is found.
    pub limits: LimitsConfig,
    /// Collaboration events on `/admin` and `/provider`: channel membership, bounds.
    pub collab: CollabConfig,
    /// Cluster-wide presence and viewing (JetStream key-value).
    pub presence: PresenceConfig,
    /// Typing indicators.
    pub typing: TypingConfig,
    /// Integration events on `/` and `/admin` (`docs/integrations.md`).
    pub integrations: IntegrationsConfig,
}

/// Who decides that a principal may use a project's integrations (`integrations.access`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProjectAccessSource {
    /// Ask the backend (`cmd.project.access`) and cache the answer. Without a backend, every
    /// project is refused.
    #[default]
    Backend,
    /// The token's `integrations.projects_claim` claim lists the project ids.
    Claim,
}

/// Integration events: project access, bounds and deadlines.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct IntegrationsConfig {
    /// `backend` (default) or `claim`.
    pub access: ProjectAccessSource,
    /// Claim listing project ids, with `access = "claim"`.
    pub projects_claim: String,
    /// Seconds a backend access answer (allowed or refused) is trusted.
    pub access_cache_secs: u64,
    /// Access answers cached at once; beyond it the oldest are dropped.
    pub access_cache_entries: usize,
    /// Seconds the runner's "this integration is in this project" is trusted.
    pub integration_cache_secs: u64,
    /// How long an access or status request may take.
    pub request_timeout_ms: u64,
    /// `deadlineMs` of an execution: how long the gateway waits for the runner.
    pub execute_timeout_ms: u64,
    /// Largest client payload of an integration event, in bytes.
    pub max_payload_bytes: usize,
    /// Largest NATS push (`rt.integration.*`) relayed, in bytes.
    pub max_push_bytes: usize,
    /// Executions in flight at once on this instance; past it `busy`.
    pub max_in_flight: usize,
    /// Executions in flight at once per socket; past it `busy`.
    pub max_in_flight_per_socket: usize,
}

impl Default for IntegrationsConfig {
    fn default() -> Self {
        Self {
            access: ProjectAccessSource::Backend,
            projects_claim: "projects".to_owned(),
            access_cache_secs: 30,
            access_cache_entries: 100_000,
            integration_cache_secs: 10,
            request_timeout_ms: 3000,
            execute_timeout_ms: 30_000,
            max_payload_bytes: 64 * 1024,
            max_push_bytes: 256 * 1024,
            max_in_flight: 1024,
            max_in_flight_per_socket: 8,
        }
    }
}

/// Where channel membership comes from (`collab.membership`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MembershipSource {
    /// Ask the backend (`cmd.chat.channel_members`) and cache the answer. Without a backend,
    /// every channel is refused.
    #[default]
    Request,
    /// The token's `collab.membership_claim` claim lists the channel ids its principal may use.
    Claim,
}

/// Collaboration events: who may use which chat channel, and the bounds of what clients and the
/// backend send.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct CollabConfig {
    /// `request` (default) or `claim`.
    pub membership: MembershipSource,
    /// Claim listing channel ids, with `membership = "claim"`.
    pub membership_claim: String,
    /// Seconds a backend membership answer is trusted.
    pub membership_cache_secs: u64,
    /// Channels whose membership is cached at once; beyond it the oldest are dropped.
    pub membership_cache_entries: usize,
    /// How long a request to the backend (membership, followed chats) may take.
    pub request_timeout_ms: u64,
    /// Largest client payload forwarded to the backend (`get_followed_chats`), in bytes.
    pub max_request_bytes: usize,
    /// Largest backend push (`rt.chat.*`, `rt.attention.*`) relayed, in bytes.
    pub max_push_bytes: usize,
    /// Recipients one push or membership answer may name.
    pub max_recipients: usize,
    /// Channels one socket may be viewing at once.
    pub max_viewing_per_socket: usize,
    /// Collaboration events one socket may send per minute (a token bucket holding this many);
    /// 0 = unlimited.
    pub events_per_minute: u32,
}

impl Default for CollabConfig {
    fn default() -> Self {
        Self {
            membership: MembershipSource::Request,
            membership_claim: "chat_channels".to_owned(),
            membership_cache_secs: 30,
            membership_cache_entries: 100_000,
            request_timeout_ms: 3000,
            max_request_bytes: 16 * 1024,
            max_push_bytes: 256 * 1024,
            max_recipients: 1000,
            max_viewing_per_socket: 20,
            events_per_minute: 600,
        }
    }
}

/// Presence and viewing, kept cluster-wide in a JetStream key-value bucket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PresenceConfig {
    /// Bucket name (created when missing).
    pub bucket: String,
    /// Replicas of the bucket (clustered JetStream).
    pub replicas: usize,
    /// How often an instance says it is alive.
    pub heartbeat_ms: u64,
    /// An instance not heard from for this long is dead: its users and viewers are dropped.
    pub ttl_ms: u64,
    /// A user whose last socket on an instance left stays online this long, so a reconnect
    /// (a reload, a network change) does not flap offline and back.
    pub grace_ms: u64,
    /// Ids one `presence:query` may name.
    pub max_query_ids: usize,
    /// Users one socket may watch (receive `presence:update` for).
    pub max_watched_per_socket: usize,
    /// Whether `/admin` principals may query anyone's presence without naming a channel they
    /// are in (CRM staff seeing colleagues). `/provider` always needs a channel.
    pub admin_query_any: bool,
}

impl Default for PresenceConfig {
    fn default() -> Self {
        Self {
            bucket: events::subject::PRESENCE_BUCKET.to_owned(),
            replicas: 1,
            heartbeat_ms: 5000,
            ttl_ms: 15_000,
            grace_ms: 3000,
            max_query_ids: 100,
            max_watched_per_socket: 500,
            admin_query_any: true,
        }
    }
}

/// Typing indicators.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct TypingConfig {
    /// A typing indicator not renewed by a `typing:start` within this long ends with an
    /// automatic `user:typing:stop`.
    pub timeout_ms: u64,
    /// Least time between two `typing:start` of one socket and channel that are relayed; those
    /// in between are absorbed (acked, not relayed).
    pub renew_ms: u64,
}

impl Default for TypingConfig {
    fn default() -> Self {
        Self {
            timeout_ms: 6000,
            renew_ms: 1000,
        }
    }
}

/// The signature algorithm `/admin` tokens must use.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum AdminAlgorithm {
    /// HMAC-SHA256 with `admin.secret`.
    #[default]
    HS256,
    /// RSA PKCS#1 v1.5 SHA-256 with the PEM keys of `admin.public_keys`.
    RS256,
    /// ECDSA P-256 SHA-256 with the PEM keys of `admin.public_keys`.
    ES256,
}

impl AdminAlgorithm {
    /// The name a JWS header gives it (`alg`).
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::HS256 => "HS256",
            Self::RS256 => "RS256",
            Self::ES256 => "ES256",
        }
    }
}

/// A signature algorithm `/provider` tokens may use (`provider.algorithms`). Parsed when the
/// configuration loads: an unknown name is a configuration error naming the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ProviderAlgorithm {
    /// ECDSA P-256 SHA-256.
    ES256,
    /// ECDSA P-384 SHA-384 (Logto's default).
    ES384,
    /// RSA PKCS#1 v1.5 SHA-256.
    RS256,
    /// RSA PKCS#1 v1.5 SHA-384.
    RS384,
    /// RSA PKCS#1 v1.5 SHA-512.
    RS512,
    /// RSA-PSS SHA-256.
    PS256,
}

impl ProviderAlgorithm {
    /// Every supported algorithm.
    pub const ALL: [Self; 6] = [
        Self::ES256,
        Self::ES384,
        Self::RS256,
        Self::RS384,
        Self::RS512,
        Self::PS256,
    ];

    /// The name a JWS header or a JWK gives it (`alg`).
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::ES256 => "ES256",
            Self::ES384 => "ES384",
            Self::RS256 => "RS256",
            Self::RS384 => "RS384",
            Self::RS512 => "RS512",
            Self::PS256 => "PS256",
        }
    }

    /// The algorithm an `alg` value names, when it is a supported one.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.as_str() == name)
    }
}

/// `/admin` authentication and authorization.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct AdminConfig {
    /// The only algorithm accepted; a token whose header names another is refused.
    pub algorithm: AdminAlgorithm,
    /// HS256 secret. Never logged.
    pub secret: String,
    /// RS256/ES256 public keys (PEM, SPKI or PKCS#1 for RSA); a token verifying with any is
    /// accepted (rotation).
    pub public_keys: Vec<String>,
    /// Required `iss`, when not empty.
    pub issuer: String,
    /// Required member of `aud`, when not empty.
    pub audience: String,
    /// Clock skew tolerated on `exp`/`nbf`, in seconds.
    pub leeway_secs: u64,
    /// Claim listing what the token may subscribe to; empty = everything.
    pub subscribe_claim: String,
    /// Rooms one socket may be in through `subscribe`.
    pub max_subscriptions: usize,
    /// Targets (ids, domains, channels) one `subscribe`/`unsubscribe` may name; a payload
    /// naming more is refused whole, before any of it is looked at.
    pub max_targets_per_request: usize,
}

impl std::fmt::Debug for AdminConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminConfig")
            .field("algorithm", &self.algorithm)
            .field(
                "secret",
                &if self.secret.is_empty() {
                    ""
                } else {
                    "redacted"
                },
            )
            .field("public_keys", &self.public_keys.len())
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("leeway_secs", &self.leeway_secs)
            .field("subscribe_claim", &self.subscribe_claim)
            .field("max_subscriptions", &self.max_subscriptions)
            .field("max_targets_per_request", &self.max_targets_per_request)
            .finish()
    }
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            algorithm: AdminAlgorithm::HS256,
            secret: String::new(),
            public_keys: Vec::new(),
            issuer: String::new(),
            audience: String::new(),
            leeway_secs: 0,
            subscribe_claim: String::new(),
            max_subscriptions: 1000,
            max_targets_per_request: crate::policy::DEFAULT_MAX_TARGETS,
        }
    }
}

/// `/provider`: tokens issued by a Logto tenant (OIDC), checked against its JWKS.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ProviderConfig {
    /// Issuer (`iss`), e.g. `https://tenant.logto.app/oidc`. Empty: `/provider` refuses all.
    pub issuer: String,
    /// JWKS endpoint; empty = `{issuer}/jwks`.
    pub jwks_url: String,
    /// API resource indicator the token must be issued for (`aud`).
    pub audience: String,
    /// Accepted algorithms (Logto signs with ES384 by default; RSA after a rotation).
    pub algorithms: Vec<ProviderAlgorithm>,
    /// Seconds a fetched key set is used before it is fetched again.
    pub jwks_cache_secs: u64,
    /// Least seconds between two fetches triggered by unknown `kid`s.
    pub jwks_min_refresh_secs: u64,
    /// JWKS request timeout.
    pub jwks_timeout_secs: u64,
    /// Clock skew tolerated on `exp`/`nbf`, in seconds.
    pub leeway_secs: u64,
}

impl Default for ProviderConfig {
    fn default() -> Self {
        Self {
            issuer: String::new(),
            jwks_url: String::new(),
            audience: String::new(),
            algorithms: vec![
                ProviderAlgorithm::ES384,
                ProviderAlgorithm::ES256,
                ProviderAlgorithm::RS256,
                ProviderAlgorithm::RS384,
                ProviderAlgorithm::RS512,
            ],
            jwks_cache_secs: 300,
            jwks_min_refresh_secs: 10,
            jwks_timeout_secs: 5,
            leeway_secs: 0,
        }
    }
}

impl ProviderConfig {
    /// The JWKS endpoint in effect.
    pub fn jwks_endpoint(&self) -> String {
        if self.jwks_url.is_empty() {
            format!("{}/jwks", self.issuer.trim_end_matches('/'))
        } else {
            self.jwks_url.clone()
        }
    }
}

/// `/widget`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct WidgetConfig {
    /// Seconds a widget key looked up in PostgreSQL is trusted before it is read again.
    pub cache_secs: u64,
    /// How long `discord:request-send` waits for the backend.
    pub request_timeout_ms: u64,
    /// Largest `discord:request-send` payload forwarded, in bytes.
    pub max_request_bytes: usize,
    /// Widget keys held in the lookup cache; beyond it the oldest entries are dropped.
    pub cache_entries: usize,
    /// Handshakes per minute and client address whose key is not cached and turns out not to
    /// exist (a token bucket holding this many); past it, keys that are not cached are refused
    /// without asking PostgreSQL. 0 = unlimited.
    pub unknown_keys_per_minute: u32,
    /// `discord:request-send` per minute and socket (a token bucket holding this many);
    /// 0 = unlimited.
    pub discord_per_socket_per_minute: u32,
    /// `discord:request-send` per minute and widget key, over all its sockets on this
    /// instance; 0 = unlimited.
    pub discord_per_key_per_minute: u32,
}

impl Default for WidgetConfig {
    fn default() -> Self {
        Self {
            cache_secs: 10,
            request_timeout_ms: 5000,
            max_request_bytes: 16 * 1024,
            cache_entries: 10_000,
            unknown_keys_per_minute: 20,
            discord_per_socket_per_minute: 6,
            discord_per_key_per_minute: 120,
        }
    }
}

/// `/stat`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct StatConfig {
    /// New connections per client address (IPv6: per /64) per minute; 0 = unlimited.
    pub connections_per_minute: u32,
    /// Moved to `limits.trust_forwarded_for`; still read only to refuse it with a clear error,
    /// as ignoring it would silently count every client behind a proxy as the proxy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trust_forwarded_for: Option<bool>,
}

impl Default for StatConfig {
    fn default() -> Self {
        Self {
            connections_per_minute: 60,
            trust_forwarded_for: None,
        }
    }
}

/// Connection caps, on every namespace, and the client address they are counted by.
///
/// Each namespace socket holds one place (a socket.io-client connection to `/admin` and
/// `/widget` over one Engine.IO connection holds two): a namespace socket is what carries
/// handlers, rooms and the token expiry. An Engine.IO connection that joins no namespace is
/// closed after `socketio.connect_timeout_secs`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct LimitsConfig {
    /// Namespace sockets on this instance; past it, handshakes are refused.
    pub max_connections: usize,
    /// Namespace sockets per client address (IPv6: per /64).
    pub max_connections_per_ip: usize,
    /// `trust_forwarded_for` and `trusted_proxies` (CIDRs): with both, the client is the
    /// right-most `X-Forwarded-For` address that is not a trusted proxy.
    #[serde(flatten)]
    pub client_ip: ClientIpPolicy,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_connections: 50_000,
            max_connections_per_ip: 200,
            client_ip: ClientIpPolicy::default(),
        }
    }
}

/// Operator API.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ApiConfig {
    /// Bearer keys accepted by `/api/*`. Empty: the API answers 401 to everyone.
    pub keys: Vec<String>,
}

impl std::fmt::Debug for ApiConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiConfig")
            .field("keys", &format_args!("[{} redacted]", self.keys.len()))
            .finish()
    }
}

/// Engine.IO / Socket.IO.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SocketIoConfig {
    /// Outgoing packets queued per socket before emits to it are dropped.
    pub max_buffer: usize,
    /// Engine.IO heartbeat interval.
    pub ping_interval_secs: u64,
    /// Engine.IO heartbeat timeout.
    pub ping_timeout_secs: u64,
    /// Largest incoming packet (bytes).
    pub max_payload_bytes: u64,
    /// Seconds a client has to join a namespace after the Engine.IO handshake.
    pub connect_timeout_secs: u64,
    /// WebSocket read buffer per connection (bytes); small keeps idle sockets cheap.
    pub ws_read_buffer_bytes: usize,
    /// Origins allowed cross-origin HTTP (long-polling) access; `*` for any.
    pub cors_origins: Vec<String>,
}

impl Default for SocketIoConfig {
    fn default() -> Self {
        Self {
            max_buffer: 1024,
            ping_interval_secs: 25,
            ping_timeout_secs: 20,
            max_payload_bytes: 100_000,
            connect_timeout_secs: 45,
            ws_read_buffer_bytes: 1024,
            cors_origins: Vec::new(),
        }
    }
}

/// Cluster-wide socket counts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct MetricsConfig {
    /// Seconds between two reports (and two `socket_metrics_updated`).
    pub interval_secs: u64,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self { interval_secs: 5 }
    }
}

impl Validate for Config {
    fn validate(&self) -> Result<(), ConfigError> {
        // Shipped placeholders (k8s/base/gateway-socketio.yaml) are refused whether or not the
        // value is in use: a deployment that still carries one was not finished.
        reject_placeholder("admin.secret", &self.admin.secret)?;
        for (i, key) in self.api.keys.iter().enumerate() {
            reject_placeholder(&format!("api.keys[{i}]"), key)?;
        }
        if self.stat.trust_forwarded_for.is_some() {
            return Err(ConfigError::new(
                "stat.trust_forwarded_for",
                "moved to limits.trust_forwarded_for (with limits.trusted_proxies)",
            ));
        }
        match self.admin.algorithm {
            AdminAlgorithm::HS256 if self.admin.secret.len() < 16 => {
                return Err(ConfigError::new(
                    "admin.secret",
                    "HS256 needs a secret of at least 16 bytes",
                ));
            }
            AdminAlgorithm::RS256 | AdminAlgorithm::ES256 if self.admin.public_keys.is_empty() => {
                return Err(ConfigError::new(
                    "admin.public_keys",
                    "RS256/ES256 need at least one PEM public key",
                ));
            }
            _ => {}
        }
        if self.admin.max_subscriptions == 0 {
            return Err(ConfigError::new(
                "admin.max_subscriptions",
                "must be at least 1",
            ));
        }
        if !self.provider.issuer.is_empty() {
            if self.provider.audience.is_empty() {
                return Err(ConfigError::new(
                    "provider.audience",
                    "required when provider.issuer is set (the API resource indicator)",
                ));
            }
            if self.provider.algorithms.is_empty() {
                return Err(ConfigError::new("provider.algorithms", "must not be empty"));
            }
            let url = self.provider.jwks_endpoint();
            if !(url.starts_with("https://") || url.starts_with("http://")) {
                return Err(ConfigError::new(
                    "provider.jwks_url",
                    "must be an http(s) URL",
                ));
            }
        }
        for (key, value) in [
            ("socketio.max_buffer", self.socketio.max_buffer as u64),
            (
                "socketio.ping_interval_secs",
                self.socketio.ping_interval_secs,
            ),
            (
                "socketio.ping_timeout_secs",
                self.socketio.ping_timeout_secs,
            ),
            (
                "socketio.max_payload_bytes",
                self.socketio.max_payload_bytes,
            ),
            (
                "socketio.connect_timeout_secs",
                self.socketio.connect_timeout_secs,
            ),
            ("metrics.interval_secs", self.metrics.interval_secs),
            (
                "admin.max_targets_per_request",
                self.admin.max_targets_per_request as u64,
            ),
            ("widget.cache_entries", self.widget.cache_entries as u64),
            ("limits.max_connections", self.limits.max_connections as u64),
            (
                "limits.max_connections_per_ip",
                self.limits.max_connections_per_ip as u64,
            ),
            ("widget.request_timeout_ms", self.widget.request_timeout_ms),
            (
                "provider.jwks_timeout_secs",
                self.provider.jwks_timeout_secs,
            ),
            (
                "collab.membership_cache_entries",
                self.collab.membership_cache_entries as u64,
            ),
            ("collab.request_timeout_ms", self.collab.request_timeout_ms),
            (
                "collab.max_request_bytes",
                self.collab.max_request_bytes as u64,
            ),
            ("collab.max_push_bytes", self.collab.max_push_bytes as u64),
            ("collab.max_recipients", self.collab.max_recipients as u64),
            (
                "collab.max_viewing_per_socket",
                self.collab.max_viewing_per_socket as u64,
            ),
            ("presence.replicas", self.presence.replicas as u64),
            ("presence.heartbeat_ms", self.presence.heartbeat_ms),
            ("presence.max_query_ids", self.presence.max_query_ids as u64),
            (
                "presence.max_watched_per_socket",
                self.presence.max_watched_per_socket as u64,
            ),
            ("typing.timeout_ms", self.typing.timeout_ms),
            (
                "integrations.access_cache_entries",
                self.integrations.access_cache_entries as u64,
            ),
            (
                "integrations.request_timeout_ms",
                self.integrations.request_timeout_ms,
            ),
            (
                "integrations.execute_timeout_ms",
                self.integrations.execute_timeout_ms,
            ),
            (
                "integrations.max_payload_bytes",
                self.integrations.max_payload_bytes as u64,
            ),
            (
                "integrations.max_push_bytes",
                self.integrations.max_push_bytes as u64,
            ),
            (
                "integrations.max_in_flight",
                self.integrations.max_in_flight as u64,
            ),
            (
                "integrations.max_in_flight_per_socket",
                self.integrations.max_in_flight_per_socket as u64,
            ),
        ] {
            if value == 0 {
                return Err(ConfigError::new(key, "must be at least 1"));
            }
        }
        if self.presence.ttl_ms < self.presence.heartbeat_ms * 2 {
            return Err(ConfigError::new(
                "presence.ttl_ms",
                "must be at least twice presence.heartbeat_ms (one lost heartbeat is not a death)",
            ));
        }
        if events::token::validate_token("bucket", &self.presence.bucket).is_err() {
            return Err(ConfigError::new(
                "presence.bucket",
                "must be 1 to 128 characters of [A-Za-z0-9_-]",
            ));
        }
        if self.collab.membership == MembershipSource::Claim
            && self.collab.membership_claim.is_empty()
        {
            return Err(ConfigError::new(
                "collab.membership_claim",
                "required with collab.membership = \"claim\"",
            ));
        }
        if self.integrations.access == ProjectAccessSource::Claim
            && self.integrations.projects_claim.is_empty()
        {
            return Err(ConfigError::new(
                "integrations.projects_claim",
                "required with integrations.access = \"claim\"",
            ));
        }
        if self.typing.renew_ms >= self.typing.timeout_ms {
            return Err(ConfigError::new(
                "typing.renew_ms",
                "must be less than typing.timeout_ms, or continuous typing would flicker",
            ));
        }
        if self.socketio.ws_read_buffer_bytes < 256 {
            return Err(ConfigError::new(
                "socketio.ws_read_buffer_bytes",
                "must be at least 256",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
