//! Who may use an integration: the principal must be allowed in the project
//! (`integrations.access`: the token's project claim, or `cmd.project.access` asked of the
//! backend), and the integration must be in that project (`cmd.integration.status` asked of
//! the runner). Backend and runner answers are cached ([`CachedLookup`]): allowed and refused
//! separately (a flood of made-up ids never pushes real answers out), concurrent lookups of one
//! key share one request, and lookups have their own in-flight bound. An answer that is not a
//! definite yes or no is not cached and refuses `runner_unavailable`: safe by default.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::{OnceCell, Semaphore};

use super::error::IntegrationError;
use super::payload::Target;
use crate::auth::Principal;
use crate::command::Commands;
use crate::config::{IntegrationsConfig, ProjectAccessSource};
use crate::key_cache::AgedCache;

/// Lookups (distinct keys) in flight at once per kind on this instance.
pub(crate) const MAX_LOOKUPS_IN_FLIGHT: usize = 256;
/// Refusals remembered, at most.
const MAX_REFUSALS_CACHED: usize = 10_000;

type Decision = Result<bool, IntegrationError>;

/// A yes/no question asked of a NATS service, cached per key, deduplicated while in flight.
#[derive(Debug)]
pub(crate) struct CachedLookup {
    allowed: Mutex<AgedCache<()>>,
    /// `None`: refusals are not cached.
    refused: Option<Mutex<AgedCache<()>>>,
    in_flight: Mutex<HashMap<String, Arc<OnceCell<Decision>>>>,
    pub(crate) slots: Semaphore,
    label: &'static str,
}

impl CachedLookup {
    pub(crate) fn new(
        label: &'static str,
        ttl: Duration,
        entries: usize,
        refusal_ttl: Option<Duration>,
    ) -> Self {
        Self {
            allowed: Mutex::new(AgedCache::new(ttl, entries)),
            refused: refusal_ttl
                .map(|ttl| Mutex::new(AgedCache::new(ttl, entries.min(MAX_REFUSALS_CACHED)))),
            in_flight: Mutex::default(),
            slots: Semaphore::new(MAX_LOOKUPS_IN_FLIGHT),
            label,
        }
    }

    /// The cached decision for `key`, or `ask`'s (shared with concurrent callers of the same
    /// key; a definite answer is cached).
    pub(crate) async fn decide<F, Fut>(&self, key: String, ask: F) -> Decision
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Decision>,
    {
        let now = Instant::now();
        if lock(&self.allowed).get(&key, now).is_some() {
            return Ok(true);
        }
        if let Some(refused) = &self.refused
            && lock(refused).get(&key, now).is_some()
        {
            return Ok(false);
        }
        let cell = {
            let mut in_flight = lock(&self.in_flight);
            match in_flight.get(&key) {
                Some(cell) => Arc::clone(cell),
                None if in_flight.len() >= MAX_LOOKUPS_IN_FLIGHT => {
                    metrics::counter!("socketio_integration_lookups_total", "kind" => self.label, "outcome" => "busy")
                        .increment(1);
                    return Err(IntegrationError::RunnerUnavailable);
                }
                None => {
                    let cell = Arc::new(OnceCell::new());
                    in_flight.insert(key.clone(), Arc::clone(&cell));
                    cell
                }
            }
        };
        let decision = *cell
            .get_or_init(|| async {
                let decision = ask().await;
                let outcome = match decision {
                    Ok(true) => "allowed",
                    Ok(false) => "refused",
                    Err(e) => e.code(),
                };
                metrics::counter!("socketio_integration_lookups_total", "kind" => self.label, "outcome" => outcome)
                    .increment(1);
                let now = Instant::now();
                match decision {
                    Ok(true) => lock(&self.allowed).insert(&key, (), now),
                    Ok(false) => {
                        if let Some(refused) = &self.refused {
                            lock(refused).insert(&key, (), now);
                        }
                    }
                    Err(_) => {}
                }
                decision
            })
            .await;
        let mut in_flight = lock(&self.in_flight);
        if in_flight
            .get(&key)
            .is_some_and(|current| Arc::ptr_eq(current, &cell))
        {
            in_flight.remove(&key);
        }
        decision
    }
}

/// The access decisions of this instance.
#[derive(Debug)]
pub(crate) struct Access {
    source: ProjectAccessSource,
    projects: CachedLookup,
    integrations: CachedLookup,
    timeout: Duration,
}

/// `{allowed}` from `cmd.project.access`.
#[derive(Debug, Deserialize)]
struct AccessAnswer {
    allowed: bool,
}

/// The part of a `StatusReply` that says whether the integration is in the project.
#[derive(Debug, Deserialize)]
struct StatusAnswer {
    ok: bool,
    #[serde(default, rename = "projectId")]
    project_id: Option<String>,
    #[serde(default)]
    error: Option<ErrorCode>,
}

#[derive(Debug, Deserialize)]
struct ErrorCode {
    #[serde(default)]
    code: Option<String>,
}

impl Access {
    pub(crate) fn new(config: &IntegrationsConfig) -> Self {
        let access_ttl = Duration::from_secs(config.access_cache_secs);
        Self {
            source: config.access,
            projects: CachedLookup::new(
                "project",
                access_ttl,
                config.access_cache_entries,
                Some(access_ttl),
            ),
            integrations: CachedLookup::new(
                "integration",
                Duration::from_secs(config.integration_cache_secs),
                config.access_cache_entries,
                None,
            ),
            timeout: Duration::from_millis(config.request_timeout_ms),
        }
    }

    /// Whether `principal` may use the project of `target`, and the integration is in it.
    pub(crate) async fn check(
        &self,
        commands: &Commands,
        principal: &Principal,
        target: &Target,
    ) -> Result<(), IntegrationError> {
        self.project(commands, principal, target).await?;
        self.integration(commands, target).await
    }

    /// Whether `principal` may use the project of `target`.
    pub(crate) async fn project(
        &self,
        commands: &Commands,
        principal: &Principal,
        target: &Target,
    ) -> Result<(), IntegrationError> {
        let project = target.project_id.as_str();
        let allowed = match self.source {
            ProjectAccessSource::Claim => principal
                .projects
                .as_ref()
                .is_some_and(|projects| projects.contains(project)),
            ProjectAccessSource::Backend => {
                // The backend decides for a subject; a token without one is nobody.
                let Some(subject) = principal.subject.as_deref() else {
                    return Err(IntegrationError::Forbidden);
                };
                let key = format!("{project}\u{0}{subject}");
                self.projects
                    .decide(key, || async {
                        let reply = commands
                            .request_in(
                                &self.projects.slots,
                                events::subject::PROJECT_ACCESS,
                                &json!({"projectId": project, "subject": subject}),
                                usize::MAX,
                                self.timeout,
                            )
                            .await?;
                        read_access(reply)
                    })
                    .await?
            }
        };
        if allowed {
            Ok(())
        } else {
            Err(IntegrationError::Forbidden)
        }
    }

    /// Whether the integration of `target` is in its project, as the runner says.
    async fn integration(
        &self,
        commands: &Commands,
        target: &Target,
    ) -> Result<(), IntegrationError> {
        let key = format!("{}\u{0}{}", target.project_id, target.integration_id);
        let known = self
            .integrations
            .decide(key, || async {
                let reply = commands
                    .request_in(
                        &self.integrations.slots,
                        events::subject::INTEGRATION_STATUS,
                        &status_request(target),
                        usize::MAX,
                        self.timeout,
                    )
                    .await?;
                read_status(target, reply)
            })
            .await?;
        if known {
            Ok(())
        } else {
            Err(IntegrationError::NotFound)
        }
    }
}

/// The `cmd.integration.status` request body.
pub(crate) fn status_request(target: &Target) -> Value {
    json!({"projectId": target.project_id.as_str(), "integrationId": target.integration_id.as_str()})
}

fn read_access(reply: Value) -> Decision {
    match serde_json::from_value::<AccessAnswer>(reply) {
        Ok(answer) => Ok(answer.allowed),
        Err(e) => {
            tracing::warn!(error = %e, "unreadable project access answer");
            Err(IntegrationError::RunnerUnavailable)
        }
    }
}

/// `ok: true` (for this project) is yes, `not_found` no; anything else undecided.
fn read_status(target: &Target, reply: Value) -> Decision {
    match serde_json::from_value::<StatusAnswer>(reply) {
        Ok(answer) if answer.ok => Ok(answer
            .project_id
            .is_none_or(|p| p == target.project_id.as_str())),
        Ok(answer)
            if answer
                .error
                .as_ref()
                .and_then(|e| e.code.as_deref())
                .is_some_and(|code| code == "not_found") =>
        {
            Ok(false)
        }
        Ok(answer) => {
            tracing::warn!(error = ?answer.error, "integration status refused without a definite reason");
            Err(IntegrationError::RunnerUnavailable)
        }
        Err(e) => {
            tracing::warn!(error = %e, "unreadable integration status answer");
            Err(IntegrationError::RunnerUnavailable)
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::integration::payload::Id;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn target() -> Target {
        Target {
            project_id: Id::parse("p1").unwrap(),
            integration_id: Id::parse("i1").unwrap(),
        }
    }

    #[test]
    fn status_answers() {
        let t = target();
        assert_eq!(
            read_status(&t, json!({"ok": true, "projectId": "p1"})),
            Ok(true)
        );
        assert_eq!(
            read_status(&t, json!({"ok": true, "projectId": "p2"})),
            Ok(false)
        );
        assert_eq!(
            read_status(&t, json!({"ok": false, "error": {"code": "not_found"}})),
            Ok(false)
        );
        for reply in [
            json!({"ok": false, "error": {"code": "internal"}}),
            json!("x"),
        ] {
            assert_eq!(
                read_status(&t, reply),
                Err(IntegrationError::RunnerUnavailable)
            );
        }
        assert_eq!(read_access(json!({"allowed": false})), Ok(false));
        assert_eq!(
            read_access(json!({"nope": 1})),
            Err(IntegrationError::RunnerUnavailable)
        );
    }

    #[tokio::test]
    async fn lookups_are_cached_and_shared() {
        let lookup = CachedLookup::new(
            "t",
            Duration::from_secs(60),
            10,
            Some(Duration::from_secs(60)),
        );
        let asked = AtomicUsize::new(0);
        let ask = || async {
            asked.fetch_add(1, Ordering::SeqCst);
            tokio::task::yield_now().await;
            Ok(true)
        };
        let (a, b) = tokio::join!(
            lookup.decide("k".to_owned(), ask),
            lookup.decide("k".to_owned(), ask)
        );
        assert_eq!((a, b), (Ok(true), Ok(true)));
        assert_eq!(lookup.decide("k".to_owned(), ask).await, Ok(true));
        assert_eq!(asked.load(Ordering::SeqCst), 1);
        // Refusals are cached; undecided answers are not.
        let no = || async { Ok(false) };
        assert_eq!(lookup.decide("n".to_owned(), no).await, Ok(false));
        assert_eq!(lookup.decide("n".to_owned(), ask).await, Ok(false));
        let fail = || async { Err(IntegrationError::RunnerUnavailable) };
        assert!(lookup.decide("f".to_owned(), fail).await.is_err());
        assert_eq!(lookup.decide("f".to_owned(), ask).await, Ok(true));
    }
}
