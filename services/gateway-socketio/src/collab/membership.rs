//! Who may use a chat channel. Decided by the backend, one of two ways (`collab.membership`):
//!
//! - `request` (default): `cmd.chat.channel_members` with `{"channel_id"}`, answered
//!   `{"user_ids": [...], "profile_ids": [...]}` (or `{"ok": false, "error": {"code":
//!   "not_found" | "forbidden"}}`: nobody may). Member lists are cached per channel for
//!   `collab.membership_cache_secs`; refusals in a separate, smaller cache, so a flood of
//!   made-up channel ids never pushes real member lists out. Concurrent lookups of one channel
//!   share one request, and lookups have their own in-flight bound
//!   ([`MAX_LOOKUPS_IN_FLIGHT`]), apart from the other requests to the backend. No backend, a
//!   timeout, another `ok: false` or an answer that is not one of these refuses the event
//!   (`unavailable`, not cached): safe by default.
//! - `claim`: the token lists the channel ids its principal may use
//!   (`collab.membership_claim`); the gateway then knows no other members.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::{OnceCell, Semaphore};

use super::channel::ChannelId;
use super::error::CollabError;
use super::identity::Participant;
use super::recipients::Recipients;
use crate::auth::Principal;
use crate::command::Commands;
use crate::config::{CollabConfig, MembershipSource};
use crate::key_cache::AgedCache;

/// Membership requests (distinct channels being looked up) in flight at once on this instance;
/// past it a lookup is refused `unavailable`.
pub(crate) const MAX_LOOKUPS_IN_FLIGHT: usize = 256;
/// Refused channels remembered, at most (and at most `collab.membership_cache_entries`).
const MAX_REFUSALS_CACHED: usize = 10_000;

/// What the backend said of a channel: its members, or that nobody may use it.
type Lookup = Result<Option<Arc<Recipients>>, CollabError>;

/// How a principal was found to be a member, and so how the channel's other members are
/// reached.
#[derive(Debug, Clone)]
pub(crate) enum Access {
    /// The backend listed the members: their identity rooms.
    Listed(Arc<Recipients>),
    /// The token names the channel: the channel's member room.
    Claimed,
}

/// The backend's answer to `cmd.chat.channel_members`.
#[derive(Debug, Deserialize)]
struct Answer {
    #[serde(default = "yes")]
    ok: bool,
    #[serde(default)]
    error: Option<AnswerError>,
    #[serde(flatten)]
    members: Recipients,
}

#[derive(Debug, Deserialize)]
struct AnswerError {
    #[serde(default)]
    code: Option<String>,
}

const fn yes() -> bool {
    true
}

/// Membership decisions of this instance.
#[derive(Debug)]
pub(crate) struct Membership {
    source: MembershipSource,
    /// Members per channel id.
    cache: Mutex<AgedCache<Arc<Recipients>>>,
    /// Channels the backend refused.
    refused: Mutex<AgedCache<()>>,
    /// The lookups in flight, one per channel, shared by everyone asking meanwhile; at most
    /// [`MAX_LOOKUPS_IN_FLIGHT`].
    in_flight: Mutex<HashMap<ChannelId, Arc<OnceCell<Lookup>>>>,
    slots: Semaphore,
    timeout: Duration,
    max_recipients: usize,
}

impl Membership {
    pub(crate) fn new(config: &CollabConfig) -> Self {
        Self {
            source: config.membership,
            cache: Mutex::new(AgedCache::new(
                Duration::from_secs(config.membership_cache_secs),
                config.membership_cache_entries,
            )),
            refused: Mutex::new(AgedCache::new(
                Duration::from_secs(config.membership_cache_secs),
                config.membership_cache_entries.min(MAX_REFUSALS_CACHED),
            )),
            in_flight: Mutex::default(),
            slots: Semaphore::new(MAX_LOOKUPS_IN_FLIGHT),
            timeout: Duration::from_millis(config.request_timeout_ms),
            max_recipients: config.max_recipients,
        }
    }

    /// Whether `who` (authenticated as `principal`) may use `channel`.
    pub(crate) async fn check(
        &self,
        commands: &Commands,
        principal: &Principal,
        who: &Participant,
        channel: &ChannelId,
    ) -> Result<Access, CollabError> {
        match self.source {
            MembershipSource::Claim => principal
                .channels
                .as_ref()
                .is_some_and(|channels| channels.contains(channel.as_str()))
                .then_some(Access::Claimed)
                .ok_or(CollabError::NotMember),
            MembershipSource::Request => match self.members(commands, channel).await? {
                Some(members) if members.contains(who) => Ok(Access::Listed(members)),
                _ => Err(CollabError::NotMember),
            },
        }
    }

    /// The members of `channel` as the backend lists them (`None`: it refused the channel),
    /// cached; `Ok(None)` too in claim mode, where the gateway knows no list.
    pub(crate) async fn members(
        &self,
        commands: &Commands,
        channel: &ChannelId,
    ) -> Result<Option<Arc<Recipients>>, CollabError> {
        if self.source == MembershipSource::Claim {
            return Ok(None);
        }
        if let Some(known) = self.cached(channel) {
            return Ok(known);
        }
        let cell = {
            let mut in_flight = lock(&self.in_flight);
            match in_flight.get(channel) {
                Some(cell) => Arc::clone(cell),
                None if in_flight.len() >= MAX_LOOKUPS_IN_FLIGHT => {
                    metrics::counter!("socketio_membership_requests_total", "outcome" => "busy")
                        .increment(1);
                    return Err(CollabError::Unavailable);
                }
                None => {
                    let cell = Arc::new(OnceCell::new());
                    in_flight.insert(channel.clone(), Arc::clone(&cell));
                    cell
                }
            }
        };
        // One of the callers sharing `cell` asks (another takes over if it is dropped); the
        // answer is cached before the lookup leaves the map, so a later caller finds one or
        // the other.
        let result = cell
            .get_or_init(|| self.ask(commands, channel))
            .await
            .clone();
        let mut in_flight = lock(&self.in_flight);
        if in_flight
            .get(channel)
            .is_some_and(|current| Arc::ptr_eq(current, &cell))
        {
            in_flight.remove(channel);
        }
        result
    }

    /// What the caches know of `channel`: `Some(None)` refused, `Some(Some(_))` its members.
    fn cached(&self, channel: &ChannelId) -> Option<Option<Arc<Recipients>>> {
        let now = Instant::now();
        if let Some(members) = lock(&self.cache).get(channel.as_str(), now) {
            return Some(Some(members));
        }
        lock(&self.refused)
            .get(channel.as_str(), now)
            .map(|()| None)
    }

    /// Asks the backend for `channel`'s members and caches a definite answer.
    async fn ask(&self, commands: &Commands, channel: &ChannelId) -> Lookup {
        let reply = commands
            .request_in(
                &self.slots,
                events::subject::CHANNEL_MEMBERS,
                &json!({"channel_id": channel}),
                usize::MAX,
                self.timeout,
            )
            .await;
        let outcome = crate::command::outcome(&reply);
        metrics::counter!("socketio_membership_requests_total", "outcome" => outcome).increment(1);
        let members = self.read(channel, reply?)?;
        let now = Instant::now();
        match &members {
            Some(members) => {
                lock(&self.cache).insert(channel.as_str(), Arc::clone(members), now);
            }
            None => lock(&self.refused).insert(channel.as_str(), (), now),
        }
        Ok(members)
    }

    fn read(
        &self,
        channel: &ChannelId,
        reply: Value,
    ) -> Result<Option<Arc<Recipients>>, CollabError> {
        match serde_json::from_value::<Answer>(reply) {
            Ok(answer) if !answer.ok => {
                let code = answer.error.as_ref().and_then(|e| e.code.as_deref());
                if matches!(code, Some("not_found" | "forbidden")) {
                    Ok(None)
                } else {
                    tracing::warn!(%channel, ?code, "channel members refused without a definite reason; unavailable");
                    Err(CollabError::Unavailable)
                }
            }
            Ok(answer) if answer.members.len() <= self.max_recipients => {
                Ok(Some(Arc::new(answer.members)))
            }
            Ok(answer) => {
                tracing::warn!(
                    %channel,
                    members = answer.members.len(),
                    limit = self.max_recipients,
                    "channel members over collab.max_recipients; refused"
                );
                Err(CollabError::Unavailable)
            }
            Err(e) => {
                tracing::warn!(%channel, error = %e, "unreadable channel members answer");
                Err(CollabError::Unavailable)
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn membership() -> Membership {
        Membership::new(&CollabConfig::default())
    }

    #[test]
    fn only_not_found_and_forbidden_are_definite_refusals() {
        let m = membership();
        let c = ChannelId::parse("c1").unwrap();
        for code in ["not_found", "forbidden"] {
            let reply = json!({"ok": false, "error": {"code": code, "message": "no"}});
            assert!(matches!(m.read(&c, reply), Ok(None)), "{code}");
        }
        for reply in [
            json!({"ok": false, "error": {"code": "internal", "message": "oops"}}),
            json!({"ok": false, "error": {"code": "timeout"}}),
            json!({"ok": false}),
            json!({"user_ids": "nope"}),
        ] {
            assert_eq!(
                m.read(&c, reply.clone()).err(),
                Some(CollabError::Unavailable),
                "{reply}"
            );
        }
        let members = m.read(&c, json!({"user_ids": ["u-1"]})).unwrap().unwrap();
        assert_eq!(members.user_ids, ["u-1"]);
    }
}
