//! Public counters (seed 000 `/stat`): the snapshot stat-aggregator keeps in the
//! [`STAT_SNAPSHOT_BUCKET`](crate::subject::STAT_SNAPSHOT_BUCKET) key-value bucket, the
//! coalesced increments it publishes on [`STAT_UPDATES`](crate::subject::STAT_UPDATES), and the
//! reply to a rebuild command.
//!
//! Values are absolute, not deltas: an update carries the new value of every window that
//! changed since the previous update, so applying it twice is harmless. Versions increase by
//! exactly one per update; a reader whose last version is not `update.version - 1` has missed
//! one and must take a fresh snapshot instead (gateway-socketio then emits `stat:load`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Counter name → window name (`total`, `today`, `this_week`, `this_month`, `last_24h`...) →
/// value. Gauges may be negative.
pub type CounterValues = BTreeMap<String, BTreeMap<String, i64>>;

/// Every counter's every window, as of `version`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatSnapshot {
    /// The version of the last update this snapshot includes (0: nothing counted yet).
    pub version: u64,
    /// When the snapshot was taken (RFC 3339, UTC).
    pub at: String,
    /// IANA time zone of the calendar windows (`today`, `this_week`, `this_month`).
    pub time_zone: String,
    /// All values.
    pub counters: CounterValues,
}

/// The windows that changed since version `version - 1`, with their new values.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatUpdate {
    /// Exactly one more than the previous update's.
    pub version: u64,
    /// When the update was published (RFC 3339, UTC).
    pub at: String,
    /// Changed windows only.
    pub counters: CounterValues,
}

impl StatSnapshot {
    /// Applies the next update in place; false (and nothing changed) when `update` is not
    /// exactly the next version.
    pub fn apply(&mut self, update: &StatUpdate) -> bool {
        if update.version != self.version + 1 {
            return false;
        }
        for (name, windows) in &update.counters {
            let counter = self.counters.entry(name.clone()).or_default();
            for (window, value) in windows {
                counter.insert(window.clone(), *value);
            }
        }
        self.version = update.version;
        self.at.clone_from(&update.at);
        true
    }
}

/// stat-aggregator's reply to [`STAT_REBUILD`](crate::subject::STAT_REBUILD).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RebuildReply {
    /// Whether the rebuilt counters replaced the live ones.
    pub ok: bool,
    /// Stream messages replayed.
    #[serde(default)]
    pub replayed: u64,
    /// The stream sequence the rebuilt state includes.
    #[serde(default)]
    pub seq: u64,
    /// The version of the update that published the rebuilt values.
    #[serde(default)]
    pub version: u64,
    /// Why not, when `ok` is false (`not_leader`, `busy`, `failed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(pairs: &[(&str, &str, i64)]) -> CounterValues {
        let mut v = CounterValues::new();
        for (c, w, n) in pairs {
            v.entry((*c).to_owned())
                .or_default()
                .insert((*w).to_owned(), *n);
        }
        v
    }

    #[test]
    fn only_the_next_version_applies() {
        let mut snap = StatSnapshot {
            version: 4,
            at: String::new(),
            time_zone: "UTC".into(),
            counters: values(&[
                ("deals_completed", "total", 1),
                ("deals_completed", "today", 1),
            ]),
        };
        let gap = StatUpdate {
            version: 6,
            at: String::new(),
            counters: values(&[("deals_completed", "total", 9)]),
        };
        assert!(!snap.apply(&gap));
        assert_eq!(snap.version, 4);
        let next = StatUpdate {
            version: 5,
            at: "t".into(),
            counters: values(&[
                ("deals_completed", "total", 2),
                ("orders_created", "total", 1),
            ]),
        };
        assert!(snap.apply(&next));
        assert_eq!(
            snap.counters,
            values(&[
                ("deals_completed", "total", 2),
                ("deals_completed", "today", 1),
                ("orders_created", "total", 1)
            ])
        );
    }
}
