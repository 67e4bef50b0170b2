//! The webhook endpoint under load: answers 200 with an empty body at once, counts requests and
//! records, per request, when it arrived and its `webhook-id`.
//!
//! It runs on its own thread with a single-threaded runtime, as a separate receiver process
//! would: its timestamps are not delayed by the dispatcher's tasks queueing on the same
//! scheduler (the CPU is still shared).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use axum::Router;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// One request: the `webhook-id` (nil if absent), when it arrived (monotonic and wall clock).
#[derive(Debug, Clone, Copy)]
pub struct Hit {
    pub id: Uuid,
    pub at: Instant,
    pub wall: SystemTime,
}

#[derive(Debug, Default)]
struct Shared {
    count: AtomicU64,
    hits: Mutex<Vec<Hit>>,
}

/// A running receiver.
#[derive(Debug, Clone)]
pub struct Receiver {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    stop: CancellationToken,
}

impl Receiver {
    /// Binds 127.0.0.1:0 and serves on a dedicated thread.
    pub fn start() -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared::default());
        let stop = CancellationToken::new();
        let (state, token) = (Arc::clone(&shared), stop.clone());
        std::thread::Builder::new()
            .name("receiver".to_owned())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                    let app = Router::new()
                        .route("/hook", axum::routing::post(hook))
                        .with_state(state);
                    tokio::select! {
                        () = token.cancelled() => {}
                        served = axum::serve(listener, app) => {
                            if let Err(err) = served {
                                eprintln!("receiver stopped: {err}");
                            }
                        }
                    }
                });
            })
            .unwrap();
        Self { addr, shared, stop }
    }

    /// The URL subscriptions point at.
    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    /// Requests so far.
    pub fn count(&self) -> u64 {
        self.shared.count.load(Ordering::Acquire)
    }

    /// Every request so far, in arrival order.
    pub fn hits(&self) -> Vec<Hit> {
        self.shared
            .hits
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Stops serving (open connections are dropped with the runtime).
    pub fn stop(&self) {
        self.stop.cancel();
    }
}

async fn hook(State(shared): State<Arc<Shared>>, request: Request) -> StatusCode {
    // Taken before the body is read: the request line and headers have arrived.
    let at = Instant::now();
    let wall = SystemTime::now();
    let id = request
        .headers()
        .get("webhook-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(Uuid::nil());
    // Read the (small) body so the connection stays reusable.
    let _ = axum::body::to_bytes(request.into_body(), 1 << 20).await;
    shared
        .hits
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(Hit { id, at, wall });
    shared.count.fetch_add(1, Ordering::AcqRel);
    StatusCode::OK
}
