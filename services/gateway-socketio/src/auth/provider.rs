//! `/provider` Logto access tokens, checked against the issuer's JWKS: cached, refreshed on an
//! unknown `kid` at most every `provider.jwks_min_refresh_secs`.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::{Map, Value};

use super::{
    Principal, Refusal, VerifierError, base_validation, header_fields, map_error, principal,
};
use crate::config::{ProviderAlgorithm, ProviderConfig};

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
    channel_claim: String,
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
            channel_claim: String::new(),
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

    /// Also reads the chat channels a token lists from `claim` (`collab.membership_claim`).
    #[must_use]
    pub fn with_channel_claim(mut self, claim: &str) -> Self {
        claim.clone_into(&mut self.channel_claim);
        self
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
            .map_err(|e| map_error(&e))
            .and_then(|data| principal(data.claims, "", &self.channel_claim, ""))
    }
}
