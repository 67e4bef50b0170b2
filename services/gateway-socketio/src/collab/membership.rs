//! Who may use a chat channel. Decided by the backend, one of two ways (`collab.membership`):
//!
//! - `request` (default): `cmd.chat.channel_members` with `{"channel_id"}`, answered
//!   `{"user_ids": [...], "profile_ids": [...]}` (or `{"ok": false, ...}`: nobody may). Answers
//!   are cached per channel for `collab.membership_cache_secs`. No backend, a timeout or an
//!   answer that is not one of these refuses the event (`unavailable`): safe by default.
//! - `claim`: the token lists the channel ids its principal may use
//!   (`collab.membership_claim`); the gateway then knows no other members.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::{Value, json};

use super::channel::ChannelId;
use super::error::CollabError;
use super::identity::Participant;
use super::recipients::Recipients;
use crate::auth::Principal;
use crate::command::Commands;
use crate::config::{CollabConfig, MembershipSource};
use crate::key_cache::AgedCache;

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
    #[serde(flatten)]
    members: Recipients,
}

const fn yes() -> bool {
    true
}

/// Membership decisions of this instance.
#[derive(Debug)]
pub(crate) struct Membership {
    source: MembershipSource,
    /// Members per channel id; `None`: the backend refused the channel.
    cache: Mutex<AgedCache<Option<Arc<Recipients>>>>,
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
        let cached = self
            .cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(channel.as_str(), Instant::now());
        if let Some(members) = cached {
            return Ok(members);
        }
        let reply = commands
            .request(
                events::subject::CHANNEL_MEMBERS,
                &json!({"channel_id": channel}),
                usize::MAX,
                self.timeout,
            )
            .await;
        let outcome = crate::command::outcome(&reply);
        metrics::counter!("socketio_membership_requests_total", "outcome" => outcome).increment(1);
        let members = self.read(channel, reply?)?;
        self.cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(channel.as_str(), members.clone(), Instant::now());
        Ok(members)
    }

    fn read(
        &self,
        channel: &ChannelId,
        reply: Value,
    ) -> Result<Option<Arc<Recipients>>, CollabError> {
        match serde_json::from_value::<Answer>(reply) {
            Ok(answer) if !answer.ok => Ok(None),
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
