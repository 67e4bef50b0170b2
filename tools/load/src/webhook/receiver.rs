//! The webhook endpoint under load: answers 200 with an empty body at once, counts requests and
//! records, per request, when it arrived and its `webhook-id`, and keeps what its signature
//! covers so that every signature is checked after the measurement, outside the timed window.
//!
//! It runs on its own thread with a single-threaded runtime, as a separate receiver process
//! would: its timestamps are not delayed by the dispatcher's tasks queueing on the same
//! scheduler (the CPU is still shared).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use webhook_signatures::Tolerance;
use webhook_signatures::standard::{self, SigningKey};

/// One request: the `webhook-id` (nil if absent), when it arrived (monotonic and wall clock).
#[derive(Debug, Clone, Copy)]
pub struct Hit {
    pub id: Uuid,
    pub at: Instant,
    pub wall: SystemTime,
}

/// What one request's Standard Webhooks signature covers, as received: the header values
/// and body share the request's buffers (no copy inside the window).
#[derive(Debug, Clone)]
struct Signed {
    id: Option<HeaderValue>,
    timestamp: Option<HeaderValue>,
    signature: Option<HeaderValue>,
    body: Bytes,
}

/// How many requests carried a valid signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Signatures {
    pub valid: usize,
    pub invalid: usize,
}

#[derive(Debug, Default)]
struct Shared {
    count: AtomicU64,
    requests: Mutex<Requests>,
}

#[derive(Debug, Default)]
struct Requests {
    hits: Vec<Hit>,
    signed: Vec<Signed>,
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
            .requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .hits
            .clone()
    }

    /// Checks every request's `webhook-signature` against `secret`, with its `webhook-id` and
    /// `webhook-timestamp` as sent (the time is not judged: this runs after the window).
    pub fn signatures(&self, secret: &str) -> Signatures {
        let key = SigningKey::parse(secret).expect("the tool's own secret parses");
        let requests = self
            .shared
            .requests
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        check(&key, &requests.signed)
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
    let (parts, body) = request.into_parts();
    let header = |name: &str| parts.headers.get(name).cloned();
    let (raw_id, timestamp, signature) = (
        header("webhook-id"),
        header("webhook-timestamp"),
        header("webhook-signature"),
    );
    let id = raw_id
        .as_ref()
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(Uuid::nil());
    // Read the (small) body so the connection stays reusable, and keep it for the check.
    let body = axum::body::to_bytes(body, 1 << 20)
        .await
        .unwrap_or_default();
    {
        let mut requests = shared.requests.lock().unwrap_or_else(|p| p.into_inner());
        requests.hits.push(Hit { id, at, wall });
        requests.signed.push(Signed {
            id: raw_id,
            timestamp,
            signature,
            body,
        });
    }
    shared.count.fetch_add(1, Ordering::AcqRel);
    StatusCode::OK
}

/// A header's value as text; missing or not text: empty (which does not verify).
fn text(value: &Option<HeaderValue>) -> &str {
    value
        .as_ref()
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

fn check(key: &SigningKey, signed: &[Signed]) -> Signatures {
    let valid = signed
        .iter()
        .filter(|s| {
            let timestamp = text(&s.timestamp);
            standard::verify_parts(
                key,
                text(&s.id),
                timestamp,
                text(&s.signature),
                &s.body,
                timestamp.parse().unwrap_or(0),
                Tolerance::from_secs(0),
            )
            .is_ok()
        })
        .count();
    Signatures {
        valid,
        invalid: signed.len() - valid,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_signatures_of_the_exact_bytes_with_the_secret_count() {
        let secret = webhook_dispatcher::signing::generate_secret();
        let key = SigningKey::parse(&secret).unwrap();
        let signed = |body: &'static [u8], signature: String| Signed {
            id: Some(HeaderValue::from_static("msg_1")),
            timestamp: Some(HeaderValue::from_static("1700000000")),
            signature: HeaderValue::try_from(signature).ok(),
            body: Bytes::from_static(body),
        };
        let good = standard::sign(&key, "msg_1", 1_700_000_000, b"{}");
        let other = SigningKey::parse(&webhook_dispatcher::signing::generate_secret()).unwrap();
        let requests = [
            signed(b"{}", good.clone()),
            signed(b"{ }", good),
            signed(b"{}", standard::sign(&other, "msg_1", 1_700_000_000, b"{}")),
            signed(b"{}", String::new()),
        ];
        assert_eq!(
            check(&key, &requests),
            Signatures {
                valid: 1,
                invalid: 3
            }
        );
    }
}
