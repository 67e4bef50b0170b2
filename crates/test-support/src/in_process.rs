//! A service running inside the test process: the same `prepare` and `run` the binary calls,
//! on `127.0.0.1:0`, with its configuration given as environment pairs (never the process
//! environment), ready before [`InProcess::start`] returns and stopped when dropped.

use std::net::SocketAddr;

use serde::Serialize;
use serde::de::DeserializeOwned;
use service_runtime::{ConfigError, ConfigSource, ServiceError, ServiceSpec, Settings, Validate};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::{eventually, http_client, http_status};

/// A running in-process service.
#[derive(Debug)]
pub struct InProcess {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Cancel to stop it (dropping does too).
    pub shutdown: CancellationToken,
    /// The service's `run`; finished once it stopped.
    pub task: JoinHandle<Result<(), ServiceError>>,
}

impl InProcess {
    /// Loads `spec`'s settings from `env` (full variable names, prefix included), prepares,
    /// binds `127.0.0.1:0`, runs, and waits until `/readyz` answers 200. Panics when the
    /// configuration is invalid or the service stops while starting.
    pub async fn start<S, P, B, F, Fut>(
        spec: &ServiceSpec,
        env: Vec<(String, String)>,
        prepare: B,
        run: F,
    ) -> Self
    where
        S: DeserializeOwned + Serialize + Default + Validate,
        B: FnOnce(&Settings<S>) -> Result<P, ConfigError>,
        F: FnOnce(Settings<S>, P, TcpListener, CancellationToken) -> Fut,
        Fut: Future<Output = Result<(), ServiceError>> + Send + 'static,
    {
        let settings = spec
            .load::<S>(&ConfigSource { file: None, env })
            .unwrap_or_else(|err| panic!("invalid test config for {}: {err}", spec.name));
        let prepared = prepare(&settings)
            .unwrap_or_else(|err| panic!("invalid test config for {}: {err}", spec.name));
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("bound address");
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(run(settings, prepared, listener, shutdown.clone()));
        let service = Self {
            addr,
            shutdown,
            task,
        };
        let client = http_client();
        let url = service.url("/readyz");
        eventually(&format!("{} ready", spec.name), || async {
            assert!(
                !service.task.is_finished(),
                "{} stopped while starting",
                spec.name
            );
            (http_status(&client, &url).await == Some(200)).then_some(())
        })
        .await;
        service
    }

    /// `http://<addr><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The Prometheus text of `/metrics`.
    pub async fn metrics(&self) -> String {
        http_client()
            .get(self.url("/metrics"))
            .send()
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("/metrics body")
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}
