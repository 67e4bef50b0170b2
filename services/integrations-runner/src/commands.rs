//! `cmd.integration.execute` and `cmd.integration.status`: the runner's NATS request handlers
//! (docs/integrations.md "NATS contract").
//!
//! Both subjects are subscribed in the queue group `integrations-runner`, so each request
//! reaches one replica. A payload larger than `execution.max_request_bytes` is answered
//! `invalid_payload` before it is parsed. At most `execution.max_in_flight` requests run at
//! once, each in its own task; past that a request is answered `busy` at once instead of
//! queueing. Every request with a reply subject gets exactly one reply, errors included. The
//! caller's `traceparent` header becomes the parent of the request's span. On shutdown the
//! subscriptions are dropped first (no new work), then in-flight requests get the grace period.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sqlx::PgPool;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::exec::{ExecError, Execution, Executor};
use crate::ratelimit::RateLimitView;
use crate::usage::{self, Usage};

/// `ExecuteRequest`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExecuteRequest {
    /// The gateway's id of the execution (for logs).
    #[serde(default)]
    pub execution_id: Option<String>,
    /// The caller's project.
    pub project_id: String,
    /// The integration.
    pub integration_id: String,
    /// The endpoint's name.
    pub endpoint: String,
    /// Params (scalars).
    #[serde(default)]
    pub params: Map<String, Value>,
    /// The JSON body, for endpoints that send it.
    #[serde(default)]
    pub request_data: Value,
    /// `execute` or `test`.
    #[serde(default)]
    pub mode: Mode,
    /// How long the gateway waits.
    #[serde(default)]
    pub deadline_ms: Option<u64>,
}

/// `ExecuteRequest.mode`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// `integration:execute`.
    #[default]
    Execute,
    /// `integration:test`.
    Test,
}

/// `{projectId, integrationId}` of `cmd.integration.status`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusRequest {
    /// The caller's project.
    pub project_id: String,
    /// The integration.
    pub integration_id: String,
}

/// `ExecuteReply` / `StatusReply` on failure.
#[derive(Debug, Serialize)]
struct Failure {
    ok: bool,
    error: crate::exec::error::ErrorBody,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Executed {
    ok: bool,
    status: u16,
    data: Value,
    duration_ms: u64,
}

/// `status` of a `StatusReply`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    /// Whether the integration may be executed.
    pub is_active: bool,
    /// Its usage.
    pub usage: Usage,
    /// The rate limit that applies now, if any.
    pub rate_limit: Option<RateLimitView>,
    /// Its last call.
    #[serde(with = "crate::usage::millis_opt")]
    pub last_used: Option<time::OffsetDateTime>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct StatusReply {
    ok: bool,
    project_id: String,
    status: Status,
}

fn failure(err: &ExecError) -> Vec<u8> {
    serde_json::to_vec(&Failure {
        ok: false,
        error: err.body(),
    })
    .unwrap_or_default()
}

/// Parses a bounded payload, naming the first field that does not fit.
fn parse<T: serde::de::DeserializeOwned>(payload: &[u8], max: usize) -> Result<T, ExecError> {
    if payload.len() > max {
        return Err(ExecError::InvalidPayload {
            field: "payload".into(),
        });
    }
    let mut de = serde_json::Deserializer::from_slice(payload);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        ExecError::InvalidPayload {
            field: if path == "." { "payload".into() } else { path },
        }
    })
}

/// The command handlers of one runner.
#[derive(Debug, Clone)]
pub struct Commands {
    executor: Executor,
    pool: PgPool,
    nats: async_nats::Client,
    in_flight: Arc<Semaphore>,
    max_in_flight: usize,
}

impl Commands {
    /// Handlers over `executor`.
    pub fn new(executor: Executor, pool: PgPool, nats: async_nats::Client) -> Self {
        let max_in_flight = executor.config().max_in_flight;
        Self {
            executor,
            pool,
            nats,
            in_flight: Arc::new(Semaphore::new(max_in_flight)),
            max_in_flight,
        }
    }

    /// Serves both subjects until `shutdown`, then lets in-flight requests finish within
    /// `grace`.
    pub async fn serve(
        self,
        shutdown: CancellationToken,
        grace: Duration,
    ) -> Result<(), async_nats::SubscribeError> {
        let queue = events::subject::INTEGRATIONS_QUEUE.to_owned();
        let mut execute = self
            .nats
            .queue_subscribe(events::subject::INTEGRATION_EXECUTE, queue.clone())
            .await?;
        let mut status = self
            .nats
            .queue_subscribe(events::subject::INTEGRATION_STATUS, queue)
            .await?;
        loop {
            let (message, is_execute) = tokio::select! {
                () = shutdown.cancelled() => break,
                m = execute.next() => match m { Some(m) => (m, true), None => break },
                m = status.next() => match m { Some(m) => (m, false), None => break },
            };
            self.dispatch(message, is_execute);
        }
        let _ = execute.unsubscribe().await;
        let _ = status.unsubscribe().await;
        let all = u32::try_from(self.max_in_flight).unwrap_or(u32::MAX);
        if tokio::time::timeout(grace, self.in_flight.acquire_many(all))
            .await
            .is_err()
        {
            tracing::warn!("executions still in flight after the grace period");
        }
        Ok(())
    }

    fn dispatch(&self, message: async_nats::Message, is_execute: bool) {
        let Some(reply) = message.reply.clone() else {
            return; // a publish, not a request: nobody to answer
        };
        let Ok(permit) = Arc::clone(&self.in_flight).try_acquire_owned() else {
            metrics::counter!("integration_executions_total", "outcome" => "busy").increment(1);
            let nats = self.nats.clone();
            tokio::spawn(async move {
                let _ = nats.publish(reply, failure(&ExecError::Busy).into()).await;
            });
            return;
        };
        let this = self.clone();
        let span = tracing::info_span!(
            "integration.command",
            subject = %message.subject,
            integration = tracing::field::Empty,
            endpoint = tracing::field::Empty,
        );
        let _ = span.set_parent(events::trace_context::parent_context(
            message.headers.as_ref(),
        ));
        tokio::spawn(
            async move {
                let gauge = metrics::gauge!("integration_executions_in_flight");
                gauge.increment(1.0);
                let body = if is_execute {
                    this.execute(&message.payload).await
                } else {
                    this.status(&message.payload).await
                };
                gauge.decrement(1.0);
                if let Err(err) = this.nats.publish(reply, body.into()).await {
                    tracing::warn!(error = %err, "reply failed");
                }
                drop(permit);
            }
            .instrument(span),
        );
    }

    async fn execute(&self, payload: &[u8]) -> Vec<u8> {
        let started = Instant::now();
        let max = self.executor.config().max_request_bytes;
        let result = match parse::<ExecuteRequest>(payload, max) {
            Ok(req) => {
                let span = tracing::Span::current();
                span.record("integration", req.integration_id.as_str());
                span.record("endpoint", req.endpoint.as_str());
                let deadline = self.executor.deadline(req.deadline_ms);
                let exec = Execution {
                    project_id: req.project_id,
                    integration_id: req.integration_id,
                    endpoint: req.endpoint,
                    params: req.params,
                    request_data: req.request_data,
                    deadline,
                };
                // The whole execution (loading, token, attempts) ends by the deadline.
                match tokio::time::timeout_at(deadline, self.executor.execute(&exec)).await {
                    Ok(r) => r,
                    Err(_) => Err(ExecError::Timeout),
                }
            }
            Err(err) => Err(err),
        };
        let duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        match result {
            Ok(success) => {
                metrics::counter!("integration_executions_total", "outcome" => "ok").increment(1);
                serde_json::to_vec(&Executed {
                    ok: true,
                    status: success.status,
                    data: success.data,
                    duration_ms,
                })
                .unwrap_or_default()
            }
            Err(err) => {
                metrics::counter!("integration_executions_total", "outcome" => err.code())
                    .increment(1);
                tracing::debug!(code = err.code(), "execution failed");
                failure(&err)
            }
        }
    }

    async fn status(&self, payload: &[u8]) -> Vec<u8> {
        let max = self.executor.config().max_request_bytes;
        match self.status_of(parse::<StatusRequest>(payload, max)).await {
            Ok(reply) => serde_json::to_vec(&reply).unwrap_or_default(),
            Err(err) => failure(&err),
        }
    }

    async fn status_of(
        &self,
        req: Result<StatusRequest, ExecError>,
    ) -> Result<StatusReply, ExecError> {
        let req = req?;
        let target = self
            .executor
            .target(&req.project_id, &req.integration_id)
            .await?;
        let unavailable = |err: sqlx::Error| {
            tracing::warn!(error = %err, "status query failed");
            ExecError::RunnerUnavailable
        };
        let usage = usage::summary(&self.pool, &target.id)
            .await
            .map_err(unavailable)?;
        let last_used = usage::last_used(&self.pool, &target.id)
            .await
            .map_err(unavailable)?;
        let rate_limit = self
            .executor
            .limiter
            .view(&target.id, target.bucket)
            .await
            .map_err(unavailable)?;
        Ok(StatusReply {
            ok: true,
            project_id: target.project_id.clone(),
            status: Status {
                is_active: target.is_active,
                usage,
                rate_limit,
                last_used,
            },
        })
    }
}

/// What [`start`] needs beyond the service context.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// `execution`.
    pub execution: crate::exec::ExecutionConfig,
    /// `usage`.
    pub usage: usage::UsageConfig,
    /// `rate_limit`.
    pub rate_limit: crate::exec::RateLimitConfig,
    /// The shutdown grace period.
    pub grace: Duration,
}

/// Why the engine could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The HTTP client could not be built.
    #[error(transparent)]
    Client(#[from] crate::exec::BuildError),
}

/// Starts the execution engine: the usage flusher and, once the migrations have run, the
/// command handlers. Returns the executor (the REST API may [`crate::exec::cache::TargetCache::invalidate`]
/// its cache) and a task that ends when both have drained after `shutdown`.
pub fn start(
    config: EngineConfig,
    pool: PgPool,
    nats: async_nats::Client,
    migrated: service_runtime::ReadyFlag,
    loader: crate::exec::Loader,
    shutdown: CancellationToken,
) -> Result<(Executor, tokio::task::JoinHandle<()>), StartError> {
    let limiter = crate::ratelimit::RateLimiter::new(pool.clone(), config.rate_limit.max_tracked);
    let recorder = usage::UsageRecorder::new(&config.usage);
    let executor = Executor::new(config.execution, loader, limiter, recorder.clone())?;
    let commands = Commands::new(executor.clone(), pool.clone(), nats.clone());
    // The flusher stops after the commands have drained, so the last executions are counted.
    let commands_done = CancellationToken::new();
    let flusher = tokio::spawn(recorder.run(
        pool,
        nats,
        Duration::from_millis(config.usage.flush_ms.max(10)),
        commands_done.clone(),
    ));
    let task = tokio::spawn(async move {
        tokio::select! {
            () = migrated.wait() => {
                if let Err(err) = commands.serve(shutdown, config.grace).await {
                    tracing::error!(error = %err, "subscribing to integration commands failed");
                }
            }
            () = shutdown.cancelled() => {}
        }
        commands_done.cancel();
        let _ = flusher.await;
    });
    Ok((executor, task))
}
