//! OAuth2 client-credentials tokens: fetched from the token endpoint (a form POST through the
//! same SSRF-guarded client), cached per integration until `expires_in` minus a margin, with
//! one refresh in flight per integration (callers wait for it rather than each fetching one).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Deserialize;

use super::error::ExecError;
use super::spec::{OAuth2, Secret};

/// Largest token response read.
const MAX_TOKEN_RESPONSE: usize = 64 * 1024;
/// Lifetime assumed when the token endpoint does not say.
const DEFAULT_LIFETIME: Duration = Duration::from_secs(300);

#[derive(Debug, Clone)]
struct Cached {
    token: Secret,
    /// `client_id` it was issued for: a changed integration gets a new token.
    client_id: String,
    refresh_at: Instant,
}

type Slot = Arc<tokio::sync::Mutex<Option<Cached>>>;

/// Tokens of every OAuth2 integration of this runner.
#[derive(Debug, Clone, Default)]
pub struct TokenCache {
    slots: Arc<Mutex<HashMap<String, Slot>>>,
    margin: Duration,
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    expires_in: Option<u64>,
}

impl TokenCache {
    /// A cache refreshing tokens `margin` before they expire.
    pub fn new(margin: Duration) -> Self {
        Self {
            slots: Arc::default(),
            margin,
        }
    }

    fn slot(&self, integration: &str) -> Slot {
        let mut slots = match self.slots.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        };
        Arc::clone(slots.entry(integration.to_owned()).or_default())
    }

    /// The cached token, or a new one fetched with `client` before `deadline`.
    pub async fn token(
        &self,
        integration: &str,
        oauth: &OAuth2,
        client: &reqwest::Client,
        policy: &egress::AddressPolicy,
        deadline: tokio::time::Instant,
    ) -> Result<Secret, ExecError> {
        let slot = self.slot(integration);
        let mut guard = tokio::time::timeout_at(deadline, slot.lock())
            .await
            .map_err(|_| ExecError::Timeout)?;
        if let Some(cached) = guard.as_ref()
            && cached.client_id == oauth.client_id
            && cached.refresh_at > Instant::now()
        {
            return Ok(cached.token.clone());
        }
        let fetched = tokio::time::timeout_at(deadline, fetch(oauth, client, policy))
            .await
            .map_err(|_| ExecError::Timeout)??;
        let lifetime = fetched
            .expires_in
            .map_or(DEFAULT_LIFETIME, Duration::from_secs);
        // A token shorter-lived than twice the margin is used for half its life.
        let usable = if lifetime > self.margin * 2 {
            lifetime - self.margin
        } else {
            lifetime / 2
        };
        let token = Secret(fetched.access_token);
        *guard = Some(Cached {
            token: token.clone(),
            client_id: oauth.client_id.clone(),
            refresh_at: Instant::now() + usable,
        });
        metrics::counter!("integration_oauth_tokens_fetched_total").increment(1);
        Ok(token)
    }

    /// Forgets the token of `integration` (the API refused it), so the next call fetches one.
    pub async fn invalidate(&self, integration: &str) {
        let slot = self.slot(integration);
        *slot.lock().await = None;
    }
}

async fn fetch(
    oauth: &OAuth2,
    client: &reqwest::Client,
    policy: &egress::AddressPolicy,
) -> Result<TokenResponse, ExecError> {
    super::check_literal(&oauth.token_url, policy)?;
    let mut form = reqwest::Url::parse("form:").map_err(|_| ExecError::Unreachable)?;
    {
        let mut pairs = form.query_pairs_mut();
        pairs.append_pair("grant_type", "client_credentials");
        pairs.append_pair("client_id", &oauth.client_id);
        pairs.append_pair("client_secret", &oauth.client_secret.0);
        if let Some(scope) = &oauth.scope {
            pairs.append_pair("scope", scope);
        }
        if let Some(audience) = &oauth.audience {
            pairs.append_pair("audience", audience);
        }
    }
    let body = form.query().unwrap_or("").to_owned();
    let response = client
        .post(oauth.token_url.clone())
        .header(
            reqwest::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded",
        )
        .header(reqwest::header::ACCEPT, "application/json")
        .body(body)
        .send()
        .await
        .map_err(|e| super::transport_error(&e))?;
    let status = response.status().as_u16();
    let body = super::response::read_capped(response, MAX_TOKEN_RESPONSE)
        .await
        .map_err(|e| super::transport_error(&e))?
        .ok_or(ExecError::ResponseTooLarge)?;
    if !(200..300).contains(&status) {
        // The token endpoint's body is not passed on: it may describe the credentials.
        return Err(ExecError::UpstreamStatus { status, data: None });
    }
    serde_json::from_slice(&body).map_err(|_| ExecError::UpstreamStatus { status, data: None })
}
