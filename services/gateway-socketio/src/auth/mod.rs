//! Handshake credentials: `/admin` JWTs with a pinned algorithm, `/provider` Logto access tokens
//! checked against the issuer's JWKS (cached, refreshed on an unknown `kid`, rate-limited).

use std::collections::HashSet;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use serde_json::{Map, Value};

use crate::policy::Grants;

mod admin;
mod provider;

pub use admin::AdminVerifier;
pub use provider::ProviderVerifier;

/// Why a verifier cannot be built from its configuration section. Becomes a
/// [`ConfigError`](service_runtime::ConfigError) naming the key, before the port is bound.
#[derive(Debug, thiserror::Error)]
pub enum VerifierError {
    /// An `admin.public_keys` entry is not a PEM public key of the configured algorithm.
    #[error("not an {family} public key: {source}")]
    PublicKey {
        /// Index in `admin.public_keys`.
        index: usize,
        /// `RSA` or `EC`.
        family: &'static str,
        /// What jsonwebtoken found wrong.
        source: jsonwebtoken::errors::Error,
    },
    /// The HTTP client for the provider's JWKS could not be built.
    #[error("cannot build the JWKS client: {0}")]
    JwksClient(#[source] reqwest::Error),
}

impl VerifierError {
    /// The dotted configuration key at fault.
    pub fn key(&self) -> String {
        match self {
            Self::PublicKey { index, .. } => format!("admin.public_keys[{index}]"),
            Self::JwksClient(_) => "provider.jwks_url".to_owned(),
        }
    }
}

impl From<VerifierError> for service_runtime::ConfigError {
    fn from(error: VerifierError) -> Self {
        Self::new(error.key(), error.to_string())
    }
}

/// Why a handshake was refused. Its `Display` is the client-safe `connect_error` message:
/// the one place where a refusal becomes text (never with the credential in it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// No token in `auth.token`.
    #[error("authentication required: auth.token is missing")]
    MissingToken,
    /// `exp` is past.
    #[error("invalid token: expired")]
    Expired,
    /// `nbf` is in the future.
    #[error("invalid token: not yet valid")]
    NotYetValid,
    /// The signature does not verify with any configured key.
    #[error("invalid token: bad signature")]
    BadSignature,
    /// The header's `alg` is not the configured one.
    #[error("invalid token: algorithm not allowed")]
    AlgorithmNotAllowed,
    /// `iss` differs.
    #[error("invalid token: wrong issuer")]
    WrongIssuer,
    /// `aud` lacks the configured audience.
    #[error("invalid token: wrong audience")]
    WrongAudience,
    /// The JWKS has no key with the token's `kid`, even after a refresh.
    #[error("invalid token: unknown signing key")]
    UnknownKey,
    /// Anything else wrong with the token.
    #[error("invalid token: malformed")]
    Malformed,
    /// A dependency (JWKS endpoint, database) did not answer.
    #[error("authentication unavailable, retry later")]
    Unavailable,
    /// `/provider` has no issuer configured.
    #[error("provider authentication is not configured")]
    ProviderNotConfigured,
    /// No widget key in the handshake.
    #[error("widget key required")]
    WidgetKeyRequired,
    /// The widget key does not exist.
    #[error("unknown widget key")]
    UnknownWidgetKey,
    /// The widget key was deactivated.
    #[error("widget key inactive")]
    WidgetKeyInactive,
    /// `Origin` missing or not allowed for the widget key.
    #[error("origin not allowed")]
    OriginNotAllowed,
    /// Per-IP connection rate exceeded.
    #[error("too many connections from this address, retry later")]
    RateLimited,
    /// The instance holds `limits.max_connections` sockets.
    #[error("server at capacity, retry later")]
    AtCapacity,
    /// The client address holds `limits.max_connections_per_ip` sockets.
    #[error("too many open connections from this address")]
    TooManyFromAddress,
    /// The client address presented too many unknown widget keys lately.
    #[error("too many unknown widget keys from this address, retry later")]
    UnknownKeysThrottled,
}

impl Refusal {
    /// Short label for metrics.
    pub const fn label(self) -> &'static str {
        match self {
            Self::MissingToken => "missing_token",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::BadSignature => "bad_signature",
            Self::AlgorithmNotAllowed => "algorithm",
            Self::WrongIssuer => "issuer",
            Self::WrongAudience => "audience",
            Self::UnknownKey => "unknown_key",
            Self::Malformed => "malformed",
            Self::Unavailable => "unavailable",
            Self::ProviderNotConfigured => "not_configured",
            Self::WidgetKeyRequired => "missing_key",
            Self::UnknownWidgetKey => "unknown_key",
            Self::WidgetKeyInactive => "inactive_key",
            Self::OriginNotAllowed => "origin",
            Self::RateLimited => "rate_limited",
            Self::AtCapacity => "capacity",
            Self::TooManyFromAddress => "per_ip_limit",
            Self::UnknownKeysThrottled => "unknown_key_throttled",
        }
    }
}

/// Who a verified token speaks for.
#[derive(Debug, Clone)]
pub struct Principal {
    /// `sub`, when present.
    pub subject: Option<String>,
    /// `exp`, Unix seconds.
    pub expires_at: i64,
    /// What the principal may subscribe to.
    pub grants: Arc<Grants>,
    /// Chat channels the token names (`collab.membership = "claim"`); `None` when the
    /// verifier reads no such claim.
    pub channels: Option<Arc<HashSet<String>>>,
    /// Projects the token names (`integrations.access = "claim"`); `None` when the verifier
    /// reads no such claim.
    pub projects: Option<Arc<HashSet<String>>>,
}

/// Channel ids one token may list; more is refused as malformed (the socket would hold a room
/// for each).
pub const MAX_CLAIMED_CHANNELS: usize = 1000;

/// The channel-list claim: an array of strings or one space-separated string, as for grants.
/// `Err` when it lists more than [`MAX_CLAIMED_CHANNELS`].
fn channels_claim(claim: Option<&Value>) -> Result<HashSet<String>, Refusal> {
    let items: Vec<&str> = match claim {
        Some(Value::String(s)) => s.split_whitespace().collect(),
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    if items.len() > MAX_CLAIMED_CHANNELS {
        return Err(Refusal::Malformed);
    }
    Ok(items.into_iter().map(str::to_owned).collect())
}

pub(crate) fn map_error(error: &jsonwebtoken::errors::Error) -> Refusal {
    match error.kind() {
        ErrorKind::ExpiredSignature => Refusal::Expired,
        ErrorKind::ImmatureSignature => Refusal::NotYetValid,
        ErrorKind::InvalidSignature => Refusal::BadSignature,
        ErrorKind::InvalidAlgorithm => Refusal::AlgorithmNotAllowed,
        ErrorKind::InvalidIssuer => Refusal::WrongIssuer,
        ErrorKind::InvalidAudience => Refusal::WrongAudience,
        // Required (configured) but absent: as wrong as a different value.
        ErrorKind::MissingRequiredClaim(claim) if claim == "iss" => Refusal::WrongIssuer,
        ErrorKind::MissingRequiredClaim(claim) if claim == "aud" => Refusal::WrongAudience,
        _ => Refusal::Malformed,
    }
}

/// The `alg` and `kid` of a compact JWS header, read without trusting anything else in it.
pub(crate) fn header_fields(token: &str) -> Result<(String, Option<String>), Refusal> {
    let mut parts = token.split('.');
    let (Some(header), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Refusal::Malformed);
    };
    let bytes = URL_SAFE_NO_PAD
        .decode(header.trim_end_matches('='))
        .map_err(|_| Refusal::Malformed)?;
    let header: Map<String, Value> =
        serde_json::from_slice(&bytes).map_err(|_| Refusal::Malformed)?;
    let alg = header
        .get("alg")
        .and_then(Value::as_str)
        .ok_or(Refusal::Malformed)?
        .to_owned();
    let kid = header.get("kid").and_then(Value::as_str).map(str::to_owned);
    Ok((alg, kid))
}

/// `exp` is always required; `iss` and `aud` are required as soon as they are configured.
/// jsonwebtoken compares `iss`/`aud` only when the token carries them, so a configured claim
/// must also be listed as required, or a token without it passes.
pub(crate) fn base_validation(
    alg: Algorithm,
    issuer: &str,
    audience: &str,
    leeway: u64,
) -> Validation {
    let mut validation = Validation::new(alg);
    validation.leeway = leeway;
    validation.validate_nbf = true;
    let mut required = vec!["exp"];
    if !issuer.is_empty() {
        validation.set_issuer(&[issuer]);
        required.push("iss");
    }
    if audience.is_empty() {
        validation.validate_aud = false;
    } else {
        validation.set_audience(&[audience]);
        required.push("aud");
    }
    validation.set_required_spec_claims(&required);
    validation
}

/// The principal of verified `claims`: `grant_claim` lists subscriptions (empty: all),
/// `channel_claim` the chat channels and `project_claim` the projects (empty: not read).
pub(crate) fn principal(
    claims: Map<String, Value>,
    grant_claim: &str,
    channel_claim: &str,
    project_claim: &str,
) -> Result<Principal, Refusal> {
    let expires_at = claims.get("exp").and_then(Value::as_i64).unwrap_or(0);
    let subject = claims.get("sub").and_then(|v| match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    });
    let grants = if grant_claim.is_empty() {
        Grants::all()
    } else {
        Grants::from_claim(claims.get(grant_claim))
    };
    let channels = if channel_claim.is_empty() {
        None
    } else {
        Some(Arc::new(channels_claim(claims.get(channel_claim))?))
    };
    // The same list shape and bound as the channels.
    let projects = if project_claim.is_empty() {
        None
    } else {
        Some(Arc::new(channels_claim(claims.get(project_claim))?))
    };
    Ok(Principal {
        subject,
        expires_at,
        grants: Arc::new(grants),
        channels,
        projects,
    })
}
