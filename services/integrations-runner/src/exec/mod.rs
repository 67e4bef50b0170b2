//! Executing an integration endpoint against the third-party API.
//!
//! In order: the integration is loaded (cached, [`cache`]); it must be in the caller's
//! project (`not_found`), active (`inactive`) and have the endpoint (`unknown_endpoint`); the
//! params render the URL, query and headers ([`request`], `invalid_params`); the rate limits
//! are checked ([`crate::ratelimit`], `rate_limited`, fail fast); auth is placed ([`auth`]);
//! the request is sent through the [`egress`] client (SSRF policy in the resolver, IP
//! literals checked here, no redirects, no environment proxy) and its response read with a cap
//! ([`response`]). Idempotent requests are retried on connect errors and 502/503/504 with
//! exponential backoff and jitter, within the deadline and `execution.max_attempts`.

pub mod auth;
pub mod cache;
pub mod config;
pub mod error;
pub mod oauth;
pub mod request;
pub mod response;
pub mod spec;

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Map, Value};
use service_runtime::Backoff;
use time::OffsetDateTime;

use crate::ratelimit::RateLimiter;
use crate::usage::UsageRecorder;
pub use config::{ExecutionConfig, RateLimitConfig};
pub use error::ExecError;
use spec::{Auth, Target};

/// Why an integration could not be loaded (the database did not answer, or its secrets did
/// not decrypt).
#[derive(Debug, thiserror::Error)]
#[error("loading the integration failed: {0}")]
pub struct LoadError(pub String);

/// Loads one integration by id, `None` when there is none.
pub type Loader = Arc<
    dyn Fn(String) -> Pin<Box<dyn Future<Output = Result<Option<Target>, LoadError>> + Send>>
        + Send
        + Sync,
>;

/// The loader over the integrations table: the row and its decrypted secrets, turned into a
/// [`Target`]. An id that is not an id is simply not found.
pub fn store_loader(store: crate::store::Store) -> Loader {
    Arc::new(move |id: String| {
        let store = store.clone();
        Box::pin(async move {
            let Ok(id) = crate::model::Id::parse(&id) else {
                return Ok(None);
            };
            let Some((integration, secrets)) = store
                .load_for_execution(&id)
                .await
                .map_err(|e| LoadError(e.to_string()))?
            else {
                return Ok(None);
            };
            Target::from_model(&integration, &secrets)
                .map(Some)
                .map_err(|e| LoadError(format!("integration {id}: {e}")))
        })
    })
}

/// One execution, parsed.
#[derive(Debug, Clone)]
pub struct Execution {
    /// The caller's project.
    pub project_id: String,
    /// The integration.
    pub integration_id: String,
    /// The endpoint's name.
    pub endpoint: String,
    /// Path, query and header params.
    pub params: Map<String, Value>,
    /// The JSON body, for endpoints that send one.
    pub request_data: Value,
    /// When the runner must have replied.
    pub deadline: tokio::time::Instant,
}

/// A successful execution.
#[derive(Debug, Clone, PartialEq)]
pub struct Success {
    /// The upstream's status.
    pub status: u16,
    /// Its body, JSON or text (`null` when empty).
    pub data: Value,
}

/// Executes endpoints. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Executor {
    client: reqwest::Client,
    policy: Arc<egress::AddressPolicy>,
    config: Arc<ExecutionConfig>,
    /// Loaded integrations.
    pub cache: cache::TargetCache,
    tokens: oauth::TokenCache,
    /// Rate limits.
    pub limiter: RateLimiter,
    /// Usage counts.
    pub usage: UsageRecorder,
}

/// Why the executor could not be built.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct BuildError(#[from] egress::ClientError);

/// The address of an IP-literal URL checked against the policy (such URLs never reach the
/// resolver, where the policy otherwise runs).
pub(crate) fn check_literal(
    url: &reqwest::Url,
    policy: &egress::AddressPolicy,
) -> Result<(), ExecError> {
    match egress::literal_ip(url) {
        Some(ip) => policy.check(ip).map_err(|_| ExecError::DestinationRefused),
        None => Ok(()),
    }
}

/// A client error by type: a policy refusal, a timeout, or the upstream being unreachable.
pub(crate) fn transport_error(err: &reqwest::Error) -> ExecError {
    if egress::refusal(err).is_some() {
        ExecError::DestinationRefused
    } else if err.is_timeout() {
        ExecError::Timeout
    } else {
        ExecError::Unreachable
    }
}

/// What one attempt ended in.
enum Attempt {
    Done(Result<Success, ExecError>),
    /// Worth another attempt, if the method and the deadline allow.
    Retry(ExecError),
}

impl Executor {
    /// An executor with its own HTTP client.
    pub fn new(
        config: ExecutionConfig,
        loader: Loader,
        limiter: RateLimiter,
        usage: UsageRecorder,
    ) -> Result<Self, BuildError> {
        let policy = Arc::new(egress::AddressPolicy::new(config.allow_networks.clone()));
        let options = egress::ClientOptions {
            connect_timeout: Duration::from_millis(config.connect_timeout_ms),
            timeout: None,
            proxy: None,
            user_agent: concat!("realtime-integrations/", env!("CARGO_PKG_VERSION")),
            pool_max_idle_per_host: 32,
        };
        let client = egress::client(&options, Arc::clone(&policy))?;
        Ok(Self {
            client,
            policy,
            cache: cache::TargetCache::new(loader, config.cache_ttl(), config.cache_max_entries),
            tokens: oauth::TokenCache::new(Duration::from_secs(config.token_refresh_margin_secs)),
            config: Arc::new(config),
            limiter,
            usage,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &ExecutionConfig {
        &self.config
    }

    /// The deadline of a request that allows `deadline_ms` (the gateway's wait): the reply
    /// margin earlier.
    pub fn deadline(&self, deadline_ms: Option<u64>) -> tokio::time::Instant {
        let wait = deadline_ms
            .unwrap_or(self.config.default_deadline_ms)
            .min(self.config.max_deadline_ms)
            .saturating_sub(self.config.reply_margin_ms);
        tokio::time::Instant::now() + Duration::from_millis(wait)
    }

    /// Loads integration `id` if it is in `project`.
    pub async fn target(&self, project: &str, id: &str) -> Result<Arc<Target>, ExecError> {
        let target = self.cache.get(id).await.map_err(|err| {
            tracing::warn!(error = %err, integration = id, "loading integration failed");
            ExecError::RunnerUnavailable
        })?;
        target
            .filter(|t| t.project_id == project)
            .ok_or(ExecError::NotFound)
    }

    /// Runs one execution and counts it in the usage.
    pub async fn execute(&self, exec: &Execution) -> Result<Success, ExecError> {
        let target = self.target(&exec.project_id, &exec.integration_id).await?;
        if !target.is_active {
            return Err(ExecError::Inactive);
        }
        let endpoint = target
            .endpoints
            .get(&exec.endpoint)
            .ok_or(ExecError::UnknownEndpoint)?;
        let rendered = endpoint.template.render(&target.base_url, &exec.params)?;
        let result = self.run(&target, endpoint, rendered, exec).await;
        self.usage.record(
            &target.id,
            &target.project_id,
            &exec.endpoint,
            result.is_ok(),
        );
        result
    }

    async fn run(
        &self,
        target: &Target,
        endpoint: &spec::EndpointPlan,
        rendered: request::Rendered,
        exec: &Execution,
    ) -> Result<Success, ExecError> {
        match self.limiter.acquire(&target.id, target.bucket).await {
            Ok(Ok(())) => {}
            Ok(Err(limited)) => {
                return Err(ExecError::RateLimited {
                    retry_after_ms: limited.retry_after_ms,
                });
            }
            Err(err) => {
                tracing::warn!(error = %err, "rate limit check failed");
                return Err(ExecError::RunnerUnavailable);
            }
        }
        check_literal(&rendered.url, &self.policy)?;
        let attempt_timeout = endpoint
            .timeout
            .unwrap_or(Duration::from_millis(self.config.timeout_ms));
        let max_attempts = if endpoint.retryable {
            self.config.max_attempts
        } else {
            1
        };
        let backoff = Backoff::new(
            Duration::from_millis(self.config.retry_base_ms),
            Duration::from_millis(self.config.retry_max_ms),
        );
        let mut attempt = 1;
        loop {
            let attempt_deadline = exec
                .deadline
                .min(tokio::time::Instant::now() + attempt_timeout);
            let outcome = match tokio::time::timeout_at(
                attempt_deadline,
                self.attempt(target, endpoint, &rendered, exec),
            )
            .await
            {
                Ok(outcome) => outcome,
                Err(_) => Attempt::Done(Err(ExecError::Timeout)),
            };
            match outcome {
                Attempt::Done(result) => return result,
                Attempt::Retry(err) => {
                    let delay = backoff.delay(attempt);
                    if attempt >= max_attempts
                        || tokio::time::Instant::now() + delay >= exec.deadline
                    {
                        return Err(err);
                    }
                    metrics::counter!("integration_retries_total").increment(1);
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
            }
        }
    }

    async fn attempt(
        &self,
        target: &Target,
        endpoint: &spec::EndpointPlan,
        rendered: &request::Rendered,
        exec: &Execution,
    ) -> Attempt {
        let mut builder = self
            .client
            .request(endpoint.method.clone(), rendered.url.clone());
        for (name, value) in &rendered.headers {
            builder = builder.header(name, value);
        }
        let body = match &endpoint.body {
            crate::model::BodySpec::None => None,
            crate::model::BodySpec::RequestData => Some(exec.request_data.clone()),
            crate::model::BodySpec::Template(t) => Some(t.render(&exec.params)),
        };
        if let Some(body) = body {
            match serde_json::to_vec(&body) {
                Ok(body) => {
                    builder = builder
                        .header(reqwest::header::CONTENT_TYPE, "application/json")
                        .body(body);
                }
                Err(_) => {
                    return Attempt::Done(Err(ExecError::InvalidPayload {
                        field: "requestData".into(),
                    }));
                }
            }
        }
        let builder = match auth::place(
            builder,
            &rendered.url,
            target,
            &self.tokens,
            &self.client,
            &self.policy,
            exec.deadline,
        )
        .await
        {
            Ok(b) => b,
            Err(err) => return Attempt::Done(Err(err)),
        };
        let started = Instant::now();
        let response = match builder.send().await {
            Ok(r) => r,
            Err(err) => {
                let e = transport_error(&err);
                return if err.is_connect() && e == ExecError::Unreachable {
                    Attempt::Retry(e)
                } else {
                    Attempt::Done(Err(e))
                };
            }
        };
        let status = response.status().as_u16();
        let upstream = response::upstream_headers(response.headers(), OffsetDateTime::now_utc());
        let body = response::read_capped(response, self.config.max_response_bytes).await;
        metrics::histogram!("integration_upstream_duration_seconds")
            .record(started.elapsed().as_secs_f64());
        if let Err(err) = self.limiter.record(&target.id, status, &upstream).await {
            tracing::warn!(error = %err, "recording upstream rate limit failed");
        }
        let body = match body {
            Ok(Some(body)) => body,
            Ok(None) => return Attempt::Done(Err(ExecError::ResponseTooLarge)),
            Err(err) => return Attempt::Done(Err(transport_error(&err))),
        };
        match status {
            200..=299 => Attempt::Done(Ok(Success {
                status,
                data: response::body_value(&body).unwrap_or(Value::Null),
            })),
            429 => {
                let wait = upstream.retry_after.unwrap_or(Duration::from_secs(1));
                Attempt::Done(Err(ExecError::RateLimited {
                    retry_after_ms: u64::try_from(wait.as_millis()).unwrap_or(u64::MAX).max(1),
                }))
            }
            _ => {
                if status == 401 && matches!(target.auth, Auth::OAuth2(_)) {
                    self.tokens.invalidate(&target.id).await;
                }
                let err = ExecError::UpstreamStatus {
                    status,
                    data: response::bounded_error_data(&body, self.config.max_error_data_bytes),
                };
                if matches!(status, 502..=504) {
                    Attempt::Retry(err)
                } else {
                    Attempt::Done(Err(err))
                }
            }
        }
    }
}
