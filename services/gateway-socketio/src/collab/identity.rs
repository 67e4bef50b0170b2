//! Who takes part in collaboration, and the rooms that address them.
//!
//! A participant is an `/admin` user (the JWT `sub`) or a `/provider` profile (the Logto
//! `sub`). Each socket joins its participant's identity room, so the backend can address a
//! user on every instance and tab. Rooms are per namespace in Socket.IO: users' rooms live on
//! `/admin`, profiles' on `/provider`.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::namespace::Namespace;

/// Longest participant id accepted (from a token or a backend payload), in bytes.
pub(crate) const MAX_ID_LEN: usize = 256;

/// The two kinds of participants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Kind {
    /// A CRM user on `/admin`.
    User,
    /// A provider profile on `/provider`.
    Profile,
}

impl Kind {
    /// The kind of the principals of `ns`; `None` for namespaces without collaboration.
    pub(crate) const fn of(ns: Namespace) -> Option<Self> {
        match ns {
            Namespace::Admin => Some(Self::User),
            Namespace::Provider => Some(Self::Profile),
            Namespace::Widget | Namespace::Stat | Namespace::Root => None,
        }
    }

    /// The namespace whose sockets are participants of this kind.
    pub(crate) const fn namespace(self) -> Namespace {
        match self {
            Self::User => Namespace::Admin,
            Self::Profile => Namespace::Provider,
        }
    }

    /// `user` or `profile`.
    pub(crate) const fn as_str(self) -> &'static str {
        match self {
            Self::User => "user",
            Self::Profile => "profile",
        }
    }
}

/// One participant: a kind and an id (at most [`MAX_ID_LEN`] bytes, not empty).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct Participant {
    pub(crate) kind: Kind,
    pub(crate) id: Arc<str>,
}

impl Participant {
    /// `None` when `id` is empty or too long.
    pub(crate) fn new(kind: Kind, id: &str) -> Option<Self> {
        (!id.is_empty() && id.len() <= MAX_ID_LEN).then(|| Self {
            kind,
            id: Arc::from(id),
        })
    }

    /// The room every socket of this participant is in (in [`Kind::namespace`]).
    pub(crate) fn identity_room(&self) -> String {
        format!("{}:{}", self.kind.as_str(), self.id)
    }

    /// The room of the sockets that watch this participant's presence (in both namespaces).
    pub(crate) fn watch_room(&self) -> String {
        format!("presence:{}:{}", self.kind.as_str(), self.id)
    }
}

impl fmt::Display for Participant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind.as_str(), self.id)
    }
}

/// `{"kind": "user", "id": "42"}`, as payloads name a participant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ParticipantRef<'a> {
    pub(crate) kind: Kind,
    pub(crate) id: &'a str,
}

impl Participant {
    /// This participant as payloads show it.
    pub(crate) fn as_ref(&self) -> ParticipantRef<'_> {
        ParticipantRef {
            kind: self.kind,
            id: &self.id,
        }
    }
}
