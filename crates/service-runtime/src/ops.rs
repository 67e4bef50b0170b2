//! `/healthz`, `/readyz` and `/metrics`.
//!
//! - `/healthz`: 200 while the process serves HTTP (liveness).
//! - `/readyz`: 200 only when every dependency check passes and the service is not draining;
//!   503 otherwise, with a JSON body naming each check's state.
//! - `/metrics`: Prometheus text exposition of the process-wide `metrics` recorder.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures_util::future::{BoxFuture, join_all};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde_json::{Map, Value, json};

/// How long one readiness check may take before it counts as failed.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

type CheckFn = Arc<dyn Fn() -> BoxFuture<'static, Result<(), String>> + Send + Sync>;

/// A readiness condition set by the work it waits for; see [`Readiness::flag`]. Other tasks
/// can also [`wait`](Self::wait) for it (start consuming once migrations have run).
#[derive(Debug, Clone, Default)]
pub struct ReadyFlag(Arc<FlagState>);

#[derive(Debug, Default)]
struct FlagState {
    set: AtomicBool,
    changed: tokio::sync::Notify,
}

impl ReadyFlag {
    /// The condition holds (again).
    pub fn set(&self) {
        self.0.set.store(true, Ordering::Release);
        self.0.changed.notify_waiters();
    }

    /// The condition no longer holds.
    pub fn clear(&self) {
        self.0.set.store(false, Ordering::Release);
    }

    /// Whether the condition holds.
    pub fn is_set(&self) -> bool {
        self.0.set.load(Ordering::Acquire)
    }

    /// Returns once the condition holds.
    pub async fn wait(&self) {
        loop {
            let changed = self.0.changed.notified();
            tokio::pin!(changed);
            // Registered before the check, so a `set` between the two is not missed.
            changed.as_mut().enable();
            if self.is_set() {
                return;
            }
            changed.await;
        }
    }
}

/// The dependency checks behind `/readyz`.
#[derive(Clone, Default)]
pub struct Readiness {
    checks: Vec<(&'static str, CheckFn)>,
    draining: Arc<AtomicBool>,
}

impl std::fmt::Debug for Readiness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Readiness")
            .field(
                "checks",
                &self.checks.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
            )
            .field("draining", &self.draining.load(Ordering::Relaxed))
            .finish()
    }
}

impl Readiness {
    /// Adds a named check; `Err` carries a short, non-secret reason.
    pub fn add<F, Fut>(&mut self, name: &'static str, check: F)
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        self.checks.push((
            name,
            Arc::new(move || Box::pin(check()) as BoxFuture<'static, _>),
        ));
    }

    /// Adds a check that passes once the returned flag is set: for background work that must
    /// have finished once (a subscription made, a stream provisioned, migrations run).
    /// `pending` is what `/readyz` says until then.
    pub fn flag(&mut self, name: &'static str, pending: &'static str) -> ReadyFlag {
        let flag = ReadyFlag::default();
        let seen = flag.clone();
        self.add(name, move || {
            let ready = seen.is_set();
            async move {
                if ready {
                    Ok(())
                } else {
                    Err(pending.to_owned())
                }
            }
        });
        flag
    }

    /// Marks the service as draining: `/readyz` answers 503 from now on.
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// Runs every check concurrently; returns whether all passed and each one's state.
    pub async fn evaluate(&self) -> (bool, Map<String, Value>) {
        let results = join_all(self.checks.iter().map(|(name, check)| async move {
            let result = match tokio::time::timeout(CHECK_TIMEOUT, check()).await {
                Ok(r) => r,
                Err(_) => Err("timed out".to_owned()),
            };
            (*name, result)
        }))
        .await;
        let mut ready = !self.draining.load(Ordering::Relaxed);
        let mut states = Map::new();
        if !ready {
            states.insert("draining".into(), Value::from("shutting down"));
        }
        for (name, result) in results {
            ready &= result.is_ok();
            states.insert(
                name.into(),
                Value::from(result.err().unwrap_or_else(|| "ok".to_owned())),
            );
        }
        (ready, states)
    }
}

/// The process-wide Prometheus recorder, installed on first use.
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            // Fails only if another recorder is installed; then this handle just renders empty.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

#[derive(Clone)]
struct OpsState {
    readiness: Readiness,
    metrics: PrometheusHandle,
}

/// The router serving the three ops endpoints.
pub fn router(readiness: Readiness) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(render_metrics))
        .with_state(OpsState {
            readiness,
            metrics: metrics_handle(),
        })
}

async fn healthz() -> impl IntoResponse {
    axum::Json(json!({"status": "ok"}))
}

async fn readyz(State(state): State<OpsState>) -> Response {
    let (ready, checks) = state.readiness.evaluate().await;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({"status": if ready { "ready" } else { "not_ready" }, "checks": checks});
    (status, axum::Json(body)).into_response()
}

async fn render_metrics(State(state): State<OpsState>) -> Response {
    state.metrics.run_upkeep();
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::Request;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    use super::*;

    async fn get_json(router: Router, path: &str) -> (StatusCode, Value) {
        let resp = router
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    #[tokio::test]
    async fn readyz_reflects_checks_and_draining() {
        let flag = Arc::new(AtomicBool::new(false));
        let mut readiness = Readiness::default();
        let f = Arc::clone(&flag);
        readiness.add("nats", move || {
            let up = f.load(Ordering::Relaxed);
            async move {
                if up {
                    Ok(())
                } else {
                    Err("disconnected".into())
                }
            }
        });
        let app = router(readiness.clone());

        let (status, body) = get_json(app.clone(), "/readyz").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body["checks"]["nats"], "disconnected");

        flag.store(true, Ordering::Relaxed);
        let (status, body) = get_json(app.clone(), "/readyz").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["status"], "ready");

        readiness.set_draining();
        assert_eq!(
            get_json(app.clone(), "/readyz").await.0,
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(get_json(app, "/healthz").await.0, StatusCode::OK);
    }

    #[tokio::test]
    async fn metrics_render_prometheus_text() {
        let app = router(Readiness::default());
        metrics::counter!("ops_test_total").increment(3);
        let resp = app
            .oneshot(Request::get("/metrics").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let text = String::from_utf8(
            resp.into_body()
                .collect()
                .await
                .unwrap()
                .to_bytes()
                .to_vec(),
        )
        .unwrap();
        assert!(text.contains("ops_test_total 3"), "{text}");
    }

    #[tokio::test]
    async fn a_ready_flag_wakes_its_waiters() {
        let flag = ReadyFlag::default();
        let waiter = tokio::spawn({
            let flag = flag.clone();
            async move { flag.wait().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        flag.set();
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("woken")
            .expect("no panic");
        flag.wait().await; // already set: returns at once
    }
}
