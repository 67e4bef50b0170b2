//! The state every handler shares (socketioxide state): configuration, verifiers, the
//! per-namespace parts, connection places and counts.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use serde_json::Value;
use service_runtime::net::ConnectionLimiter;
use socketioxide::extract::State;
use tokio::sync::Semaphore;

use crate::auth::{AdminVerifier, ProviderVerifier};
use crate::collab::Collab;
use crate::command::Commands;
use crate::config::Config;
use crate::expiry::Schedule;
use crate::namespace::Namespace;
use crate::stat::StatAdmission;
use crate::widget::WidgetKeys;
use crate::widget::discord::KeyBudgets;

/// Shared by every handler.
pub struct Gateway {
    pub(crate) config: Config,
    pub(crate) admin: AdminVerifier,
    pub(crate) provider: Option<ProviderVerifier>,
    pub(crate) widgets: WidgetKeys,
    pub(crate) nats: async_nats::Client,
    /// Presence, typing, viewing and membership (`/admin`, `/provider`).
    pub(crate) collab: Collab,
    /// Integrations on `/` and `/admin`: access decisions, execution bounds.
    pub(crate) integrations: crate::integration::Integrations,
    /// Request/reply to the backend, bounded in flight.
    pub(crate) commands: Commands,
    /// Connected sockets per namespace (this instance), by [`Namespace::index`].
    counts: [AtomicI64; Namespace::ALL.len()],
    /// When each socket's token expires.
    pub(crate) expiry: Schedule,
    pub(crate) stat: StatAdmission,
    /// Places of namespace sockets, in total and per client address (`limits.*`).
    pub(crate) limiter: Arc<ConnectionLimiter>,
    pub(crate) discord_keys: KeyBudgets,
    /// The last `socket_metrics_updated` body, for sockets that join after it was sent.
    pub(crate) cluster_counts: std::sync::Mutex<Option<Arc<Value>>>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway").finish_non_exhaustive()
    }
}

/// Requests to the backend in flight at once, over every namespace.
const COMMANDS_IN_FLIGHT: usize = 1024;

impl Gateway {
    /// Handlers' shared state.
    pub fn new(
        config: Config,
        admin: AdminVerifier,
        provider: Option<ProviderVerifier>,
        widgets: WidgetKeys,
        nats: async_nats::Client,
    ) -> Self {
        let limiter = ConnectionLimiter::new(
            config.limits.max_connections,
            config.limits.max_connections_per_ip,
            "socketio_connection_slots",
        );
        Self {
            discord_keys: KeyBudgets::new(config.widget.discord_per_key_per_minute),
            stat: StatAdmission::new(config.stat.connections_per_minute),
            collab: Collab::new(&config),
            integrations: crate::integration::Integrations::new(&config.integrations),
            commands: Commands::new(nats.clone(), Semaphore::new(COMMANDS_IN_FLIGHT)),
            config,
            admin,
            provider,
            widgets,
            nats,
            counts: Default::default(),
            expiry: Schedule::default(),
            limiter,
            cluster_counts: std::sync::Mutex::default(),
        }
    }

    /// This instance's connected sockets per namespace, by [`Namespace::index`].
    pub fn local_counts(&self) -> [i64; Namespace::ALL.len()] {
        std::array::from_fn(|i| self.counts[i].load(Ordering::Relaxed))
    }

    pub(crate) fn connected(&self, ns: Namespace) {
        let n = self.counts[ns.index()].fetch_add(1, Ordering::Relaxed) + 1;
        metrics::gauge!("socketio_connections", "namespace" => ns.name()).set(n as f64);
        metrics::counter!("socketio_connections_total", "namespace" => ns.name()).increment(1);
    }

    pub(crate) fn disconnected(&self, ns: Namespace) {
        let n = self.counts[ns.index()].fetch_sub(1, Ordering::Relaxed) - 1;
        metrics::gauge!("socketio_connections", "namespace" => ns.name()).set(n as f64);
    }
}

/// The extractor of the shared state.
pub(crate) type Shared = State<Arc<Gateway>>;
