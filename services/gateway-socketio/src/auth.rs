//! Handshake credentials: `/admin` JWTs with a pinned algorithm, `/provider` Logto access tokens
//! checked against the issuer's JWKS (cached, refreshed on an unknown `kid`, rate-limited).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};

use crate::config::{AdminAlgorithm, AdminConfig, ProviderAlgorithm, ProviderConfig};
use crate::policy::Grants;

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

/// Why a JWKS download failed (logged, never shown to a client).
#[derive(Debug, thiserror::Error)]
enum JwksError {
    #[error("{0}")]
    Request(#[source] reqwest::Error),
    #[error("HTTP {0}")]
    Status(reqwest::StatusCode),
    #[error("{0}")]
    Body(#[source] reqwest::Error),
    #[error("no \"keys\" array")]
    NoKeys,
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
}

fn map_error(error: &jsonwebtoken::errors::Error) -> Refusal {
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
fn header_fields(token: &str) -> Result<(String, Option<String>), Refusal> {
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
fn base_validation(alg: Algorithm, issuer: &str, audience: &str, leeway: u64) -> Validation {
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

fn principal(claims: Map<String, Value>, grant_claim: &str) -> Principal {
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
    Principal {
        subject,
        expires_at,
        grants: Arc::new(grants),
    }
}

/// `/admin` token verification.
pub struct AdminVerifier {
    alg: Algorithm,
    alg_name: &'static str,
    keys: Vec<DecodingKey>,
    validation: Validation,
    grant_claim: String,
}

impl std::fmt::Debug for AdminVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminVerifier")
            .field("alg", &self.alg)
            .field("keys", &self.keys.len())
            .finish_non_exhaustive()
    }
}

impl AdminVerifier {
    /// From the `admin` section; a key that does not parse is a configuration error.
    pub fn new(config: &AdminConfig) -> Result<Self, VerifierError> {
        let pem_keys =
            |family: &'static str,
             parse: fn(&[u8]) -> jsonwebtoken::errors::Result<DecodingKey>| {
                config
                    .public_keys
                    .iter()
                    .enumerate()
                    .map(|(index, pem)| {
                        parse(pem.as_bytes()).map_err(|source| VerifierError::PublicKey {
                            index,
                            family,
                            source,
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()
            };
        let (alg, keys) = match config.algorithm {
            AdminAlgorithm::HS256 => (
                Algorithm::HS256,
                vec![DecodingKey::from_secret(config.secret.as_bytes())],
            ),
            AdminAlgorithm::RS256 => (
                Algorithm::RS256,
                pem_keys("RSA", DecodingKey::from_rsa_pem)?,
            ),
            AdminAlgorithm::ES256 => (Algorithm::ES256, pem_keys("EC", DecodingKey::from_ec_pem)?),
        };
        Ok(Self {
            alg,
            alg_name: config.algorithm.as_str(),
            keys,
            validation: base_validation(alg, &config.issuer, &config.audience, config.leeway_secs),
            grant_claim: config.subscribe_claim.clone(),
        })
    }

    /// Verifies a token: pinned algorithm, signature with any configured key, `exp`, `nbf`,
    /// issuer and audience.
    pub fn verify(&self, token: &str) -> Result<Principal, Refusal> {
        let (alg, _) = header_fields(token)?;
        if alg != self.alg_name {
            return Err(Refusal::AlgorithmNotAllowed);
        }
        let mut refusal = Refusal::BadSignature;
        for key in &self.keys {
            match jsonwebtoken::decode::<Map<String, Value>>(token, key, &self.validation) {
                Ok(data) => return Ok(principal(data.claims, &self.grant_claim)),
                Err(e) => {
                    refusal = map_error(&e);
                    if refusal != Refusal::BadSignature {
                        return Err(refusal);
                    }
                }
            }
        }
        debug_assert!(self.alg == Algorithm::HS256 || !self.keys.is_empty());
        Err(refusal)
    }
}

/// Keys of one fetched JWKS, by `kid`.
struct KeySet {
    keys: HashMap<String, (DecodingKey, ProviderAlgorithm)>,
    fetched_at: Instant,
}

/// `/provider` token verification against the issuer's JWKS.
pub struct ProviderVerifier {
    config: ProviderConfig,
    url: String,
    http: reqwest::Client,
    current: RwLock<Option<Arc<KeySet>>>,
    /// Serialises fetches; holds when the last fetch was attempted.
    fetch: tokio::sync::Mutex<Option<Instant>>,
}

impl std::fmt::Debug for ProviderVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProviderVerifier")
            .field("issuer", &self.config.issuer)
            .field("jwks_url", &self.url)
            .finish_non_exhaustive()
    }
}

const fn jwt_algorithm(alg: ProviderAlgorithm) -> Algorithm {
    match alg {
        ProviderAlgorithm::ES256 => Algorithm::ES256,
        ProviderAlgorithm::ES384 => Algorithm::ES384,
        ProviderAlgorithm::RS256 => Algorithm::RS256,
        ProviderAlgorithm::RS384 => Algorithm::RS384,
        ProviderAlgorithm::RS512 => Algorithm::RS512,
        ProviderAlgorithm::PS256 => Algorithm::PS256,
    }
}

/// The algorithm a JWK is for: its `alg`, else what its key type and curve imply.
fn jwk_algorithm(jwk: &Value) -> Option<ProviderAlgorithm> {
    if let Some(alg) = jwk.get("alg").and_then(Value::as_str) {
        return ProviderAlgorithm::from_name(alg);
    }
    match (
        jwk.get("kty").and_then(Value::as_str),
        jwk.get("crv").and_then(Value::as_str),
    ) {
        (Some("EC"), Some("P-256")) => Some(ProviderAlgorithm::ES256),
        (Some("EC"), Some("P-384")) => Some(ProviderAlgorithm::ES384),
        (Some("RSA"), _) => Some(ProviderAlgorithm::RS256),
        _ => None,
    }
}

impl ProviderVerifier {
    /// From the `provider` section: `Ok(None)` when no issuer is configured (`/provider` then
    /// refuses every handshake), an error when the configured verifier cannot be built.
    pub fn new(config: &ProviderConfig) -> Result<Option<Self>, VerifierError> {
        if config.issuer.is_empty() {
            return Ok(None);
        }
        // reqwest is built without a default TLS provider; ring is the one in the tree.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(config.jwks_timeout_secs))
            .build()
            .map_err(VerifierError::JwksClient)?;
        Ok(Some(Self {
            url: config.jwks_endpoint(),
            config: config.clone(),
            http,
            current: RwLock::new(None),
            fetch: tokio::sync::Mutex::new(None),
        }))
    }

    fn snapshot(&self) -> Option<Arc<KeySet>> {
        self.current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Fetches the key set unless another caller fetched it since `seen`, or the last fetch
    /// was less than `min_interval` ago. Returns the set in effect afterwards.
    async fn refresh(&self, seen: Option<Instant>, min_interval: Duration) -> Option<Arc<KeySet>> {
        let mut last = self.fetch.lock().await;
        if let Some(current) = self.snapshot()
            && Some(current.fetched_at) != seen
        {
            return Some(current);
        }
        if let Some(at) = *last
            && at.elapsed() < min_interval
        {
            return self.snapshot();
        }
        *last = Some(Instant::now());
        match self.download().await {
            Ok(set) => {
                let set = Arc::new(set);
                *self
                    .current
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(set.clone());
                metrics::counter!("socketio_jwks_fetches_total", "outcome" => "ok").increment(1);
                Some(set)
            }
            Err(e) => {
                metrics::counter!("socketio_jwks_fetches_total", "outcome" => "error").increment(1);
                tracing::warn!(url = %self.url, error = %e, "JWKS fetch failed");
                self.snapshot()
            }
        }
    }

    async fn download(&self) -> Result<KeySet, JwksError> {
        let response = self
            .http
            .get(&self.url)
            .send()
            .await
            .map_err(JwksError::Request)?;
        if !response.status().is_success() {
            return Err(JwksError::Status(response.status()));
        }
        let body: Value = response.json().await.map_err(JwksError::Body)?;
        let entries = body
            .get("keys")
            .and_then(Value::as_array)
            .ok_or(JwksError::NoKeys)?;
        let mut keys = HashMap::new();
        for entry in entries {
            if entry.get("use").and_then(Value::as_str) == Some("enc") {
                continue;
            }
            let (Some(kid), Some(alg)) = (
                entry.get("kid").and_then(Value::as_str),
                jwk_algorithm(entry),
            ) else {
                continue;
            };
            let Ok(jwk) = serde_json::from_value::<Jwk>(entry.clone()) else {
                continue;
            };
            match DecodingKey::from_jwk(&jwk) {
                Ok(key) => {
                    keys.insert(kid.to_owned(), (key, alg));
                }
                Err(e) => tracing::warn!(kid, error = %e, "JWKS key skipped"),
            }
        }
        Ok(KeySet {
            keys,
            fetched_at: Instant::now(),
        })
    }

    /// Verifies a Logto access token.
    pub async fn verify(&self, token: &str) -> Result<Principal, Refusal> {
        let (alg_name, kid) = header_fields(token)?;
        let alg = ProviderAlgorithm::from_name(&alg_name)
            .filter(|alg| self.config.algorithms.contains(alg))
            .ok_or(Refusal::AlgorithmNotAllowed)?;
        let kid = kid.ok_or(Refusal::UnknownKey)?;
        let cache = Duration::from_secs(self.config.jwks_cache_secs);
        let mut set = match self.snapshot() {
            Some(set) if set.fetched_at.elapsed() < cache => set,
            stale => {
                let seen = stale.as_ref().map(|s| s.fetched_at);
                // At most one fetch a second while the endpoint fails.
                self.refresh(seen, Duration::from_secs(1))
                    .await
                    .ok_or(Refusal::Unavailable)?
            }
        };
        if !set.keys.contains_key(&kid) {
            let min = Duration::from_secs(self.config.jwks_min_refresh_secs);
            set = self
                .refresh(Some(set.fetched_at), min)
                .await
                .ok_or(Refusal::Unavailable)?;
        }
        let (key, key_alg) = set.keys.get(&kid).ok_or(Refusal::UnknownKey)?;
        if *key_alg != alg {
            return Err(Refusal::AlgorithmNotAllowed);
        }
        let validation = base_validation(
            jwt_algorithm(alg),
            &self.config.issuer,
            &self.config.audience,
            self.config.leeway_secs,
        );
        jsonwebtoken::decode::<Map<String, Value>>(token, key, &validation)
            .map(|data| principal(data.claims, ""))
            .map_err(|e| map_error(&e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::json;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn verifier(issuer: &str, audience: &str) -> AdminVerifier {
        AdminVerifier::new(&AdminConfig {
            secret: SECRET.to_owned(),
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
            ..AdminConfig::default()
        })
        .unwrap()
    }

    fn now() -> i64 {
        time::OffsetDateTime::now_utc().unix_timestamp()
    }

    fn hs256(claims: &Value) -> String {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            claims,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap()
    }

    #[test]
    fn accepts_a_valid_token_and_reads_sub_and_exp() {
        let exp = now() + 60;
        let p = verifier("", "")
            .verify(&hs256(&json!({"sub": 7, "exp": exp})))
            .unwrap();
        assert_eq!(p.subject.as_deref(), Some("7"));
        assert_eq!(p.expires_at, exp);
    }

    #[test]
    fn refuses_expired_unsigned_foreign_and_misaddressed_tokens() {
        let v = verifier("crm", "realtime");
        let good = json!({"exp": now() + 60, "iss": "crm", "aud": "realtime"});
        assert!(v.verify(&hs256(&good)).is_ok());
        let expired = json!({"exp": now() - 10, "iss": "crm", "aud": "realtime"});
        assert_eq!(v.verify(&hs256(&expired)).unwrap_err(), Refusal::Expired);
        let later = json!({"exp": now() + 60, "nbf": now() + 30, "iss": "crm", "aud": "realtime"});
        assert_eq!(v.verify(&hs256(&later)).unwrap_err(), Refusal::NotYetValid);
        let wrong_aud = json!({"exp": now() + 60, "iss": "crm", "aud": "other"});
        assert_eq!(
            v.verify(&hs256(&wrong_aud)).unwrap_err(),
            Refusal::WrongAudience
        );
        let wrong_iss = json!({"exp": now() + 60, "iss": "x", "aud": "realtime"});
        assert_eq!(
            v.verify(&hs256(&wrong_iss)).unwrap_err(),
            Refusal::WrongIssuer
        );
        let no_exp = json!({"iss": "crm", "aud": "realtime"});
        assert_eq!(v.verify(&hs256(&no_exp)).unwrap_err(), Refusal::Malformed);
        let no_aud = json!({"exp": now() + 60, "iss": "crm"});
        assert_eq!(
            v.verify(&hs256(&no_aud)).unwrap_err(),
            Refusal::WrongAudience
        );
        let no_iss = json!({"exp": now() + 60, "aud": "realtime"});
        assert_eq!(v.verify(&hs256(&no_iss)).unwrap_err(), Refusal::WrongIssuer);
        // Not configured: not required.
        assert!(verifier("", "").verify(&hs256(&no_iss)).is_ok());

        let forged = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &good,
            &EncodingKey::from_secret(b"another secret entirely"),
        )
        .unwrap();
        assert_eq!(v.verify(&forged).unwrap_err(), Refusal::BadSignature);

        let none_header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
        let body = URL_SAFE_NO_PAD.encode(good.to_string());
        assert_eq!(
            v.verify(&format!("{none_header}.{body}.")).unwrap_err(),
            Refusal::AlgorithmNotAllowed
        );
        let hs512 = jsonwebtoken::encode(
            &Header::new(Algorithm::HS512),
            &good,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap();
        assert_eq!(v.verify(&hs512).unwrap_err(), Refusal::AlgorithmNotAllowed);
        assert_eq!(v.verify("garbage").unwrap_err(), Refusal::Malformed);
    }

    #[test]
    fn messages_never_echo_the_credential() {
        for r in [
            Refusal::BadSignature,
            Refusal::Malformed,
            Refusal::UnknownKey,
        ] {
            assert!(r.to_string().starts_with("invalid token: "));
        }
    }
}
