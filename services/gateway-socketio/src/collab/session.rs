//! The collaboration state of one `/admin` or `/provider` socket, kept in its extensions.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use socketioxide::extract::SocketRef;

use super::channel::ChannelId;
use super::error::CollabError;
use super::identity::Participant;
use crate::auth::Principal;
use crate::limits::TokenBucket;
use crate::namespace::Namespace;

/// One socket's participant, budget and what it is doing.
#[derive(Debug)]
pub(crate) struct CollabSession {
    /// Who the socket is.
    pub(crate) who: Participant,
    /// Its namespace (`/admin` or `/provider`).
    pub(crate) ns: Namespace,
    /// Its verified token.
    pub(crate) principal: Principal,
    /// Collaboration events it may still send (`collab.events_per_minute`); `None`: unlimited.
    budget: Option<Mutex<TokenBucket>>,
    /// Channels it is viewing (`channel:viewing`), at most `collab.max_viewing_per_socket`.
    pub(crate) viewing: Mutex<HashSet<ChannelId>>,
    /// Participants whose presence it watches, at most `presence.max_watched_per_socket`.
    pub(crate) watching: Mutex<HashSet<Participant>>,
    /// Channels it is typing in, with when its last `typing:start` there was relayed.
    pub(crate) typing: Mutex<HashMap<ChannelId, Instant>>,
}

impl CollabSession {
    pub(crate) fn new(
        who: Participant,
        ns: Namespace,
        principal: Principal,
        events_per_minute: u32,
    ) -> Self {
        Self {
            who,
            ns,
            principal,
            budget: (events_per_minute > 0)
                .then(|| Mutex::new(TokenBucket::per_minute(events_per_minute, Instant::now()))),
            viewing: Mutex::default(),
            watching: Mutex::default(),
            typing: Mutex::default(),
        }
    }

    /// Takes one event from the socket's budget.
    pub(crate) fn spend(&self) -> Result<(), CollabError> {
        let Some(budget) = &self.budget else {
            return Ok(());
        };
        if budget
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take(Instant::now())
        {
            Ok(())
        } else {
            Err(CollabError::RateLimited)
        }
    }

    /// The session of socket `s`, or [`CollabError::NoIdentity`] when it has none (a token
    /// without `sub`), after taking one event from its budget.
    pub(crate) fn of(s: &SocketRef) -> Result<Arc<Self>, CollabError> {
        let session = s
            .extensions
            .get::<Arc<Self>>()
            .ok_or(CollabError::NoIdentity)?;
        session.spend()?;
        Ok(session)
    }
}

/// Locks a session's mutex, poison or not (the data is plain bookkeeping).
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
