//! The fold: counter state, one event at a time, plus the stream position it includes.
//!
//! [`Folder::fold`] is the only way an event moves a counter. It refuses an event at or
//! below the stream sequence already included (a redelivery) and an event id already in the
//! dedupe window (a double publish), so the state is exactly the fold of every distinct
//! event of the stream up to [`Folder::seq`]. The state, the position and the dedupe window
//! are encoded together ([`Folder::encode`]) and written in one key-value write.

use std::collections::BTreeMap;
use std::sync::Arc;

use events::Envelope;
use events::stat::{CounterValues, StatSnapshot};
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::clock::Clock;
use crate::config::Definitions;
use crate::dedupe::Dedupe;
use crate::window::{Calendar, Periods, WindowSpec};

/// What folding one stream message did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// At least one counter moved.
    Counted,
    /// No counter matches the event.
    Unmatched,
    /// The event id was counted before (a double publish).
    Duplicate,
    /// The stream sequence is already included (a redelivery).
    AlreadyIncluded,
}

#[derive(Debug, Clone, PartialEq)]
enum Value {
    /// `total` and the calendar windows.
    Plain(i64),
    /// Bucket start (Unix seconds) → sum.
    Rolling(BTreeMap<i64, i64>),
}

/// The counters of one definition set, folded up to a stream sequence.
#[derive(Debug, Clone)]
pub struct Folder {
    defs: Arc<Definitions>,
    clock: Arc<dyn Clock>,
    seq: u64,
    version: u64,
    periods: Periods,
    values: Vec<Vec<Value>>,
    dedupe: Dedupe,
    changed: Vec<Vec<bool>>,
    changed_list: Vec<(usize, usize)>,
    deltas: Vec<i64>,
}

/// Why a stored state could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// Not this format.
    #[error("stored state has an unknown format")]
    Format,
    /// The JSON part does not parse.
    #[error("stored state: {0}")]
    Json(#[from] serde_json::Error),
}

const MAGIC: &[u8; 5] = b"STAT\x01";

#[derive(Debug, Serialize, Deserialize)]
struct Persisted {
    seq: u64,
    version: u64,
    /// Start of the day, week and month periods the calendar values belong to.
    periods: [i64; 3],
    counters: BTreeMap<String, BTreeMap<String, PersistedValue>>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(untagged)]
enum PersistedValue {
    Plain(i64),
    Rolling(Vec<(i64, i64)>),
}

impl Folder {
    /// Nothing counted, at stream sequence 0.
    pub fn new(defs: Arc<Definitions>, clock: Arc<dyn Clock>, dedupe_window: usize) -> Self {
        let periods = Periods::at(defs.time_zone.clone(), clock.now());
        let values = defs
            .counters
            .iter()
            .map(|c| {
                c.windows
                    .iter()
                    .map(|(_, w)| match w {
                        WindowSpec::Rolling { .. } => Value::Rolling(BTreeMap::new()),
                        _ => Value::Plain(0),
                    })
                    .collect()
            })
            .collect();
        let changed = defs
            .counters
            .iter()
            .map(|c| vec![false; c.windows.len()])
            .collect();
        let n = defs.counters.len();
        Self {
            defs,
            clock,
            seq: 0,
            version: 0,
            periods,
            values,
            dedupe: Dedupe::new(dedupe_window),
            changed,
            changed_list: Vec::new(),
            deltas: vec![0; n],
        }
    }

    /// Reads a state written by [`Self::encode`] under possibly other definitions: counters
    /// and windows are matched by name, new ones start at zero, removed ones are dropped, and
    /// calendar values of a period that has ended start over.
    pub fn restore(
        defs: Arc<Definitions>,
        clock: Arc<dyn Clock>,
        dedupe_window: usize,
        bytes: &[u8],
    ) -> Result<Self, DecodeError> {
        let rest = bytes.strip_prefix(MAGIC).ok_or(DecodeError::Format)?;
        let (len, rest) = rest.split_first_chunk::<4>().ok_or(DecodeError::Format)?;
        let len = u32::from_be_bytes(*len) as usize;
        if rest.len() < len {
            return Err(DecodeError::Format);
        }
        let (json, ids) = rest.split_at(len);
        let stored: Persisted = serde_json::from_slice(json)?;
        let mut folder = Self::new(defs, clock, dedupe_window);
        folder.seq = stored.seq;
        folder.version = stored.version;
        folder.dedupe = Dedupe::decode(dedupe_window, ids).ok_or(DecodeError::Format)?;
        let defs = Arc::clone(&folder.defs);
        for (ci, def) in defs.counters.iter().enumerate() {
            let Some(windows) = stored.counters.get(&def.name) else {
                continue;
            };
            for (wi, (name, spec)) in def.windows.iter().enumerate() {
                let value = match (spec, windows.get(name)) {
                    (WindowSpec::Total, Some(PersistedValue::Plain(v))) => Value::Plain(*v),
                    (WindowSpec::Calendar(kind), Some(PersistedValue::Plain(v))) => {
                        let current = folder.periods.bounds(*kind).0;
                        let stored_start = stored.periods[calendar_index(*kind)];
                        Value::Plain(if current == stored_start { *v } else { 0 })
                    }
                    (WindowSpec::Rolling { .. }, Some(PersistedValue::Rolling(b))) => {
                        Value::Rolling(b.iter().copied().collect())
                    }
                    _ => continue,
                };
                folder.values[ci][wi] = value;
            }
        }
        folder.roll();
        folder.clear_changes();
        Ok(folder)
    }

    /// The state, the stream position and the dedupe window, as one value.
    pub fn encode(&self) -> Vec<u8> {
        let mut counters = BTreeMap::new();
        for (ci, def) in self.defs.counters.iter().enumerate() {
            let mut windows = BTreeMap::new();
            for (wi, (name, _)) in def.windows.iter().enumerate() {
                let v = match &self.values[ci][wi] {
                    Value::Plain(v) => PersistedValue::Plain(*v),
                    Value::Rolling(b) => {
                        PersistedValue::Rolling(b.iter().map(|(k, v)| (*k, *v)).collect())
                    }
                };
                windows.insert(name.clone(), v);
            }
            counters.insert(def.name.clone(), windows);
        }
        let persisted = Persisted {
            seq: self.seq,
            version: self.version,
            periods: Calendar::ALL.map(|k| self.periods.bounds(k).0),
            counters,
        };
        let json = serde_json::to_vec(&persisted).unwrap_or_default();
        let mut out = Vec::with_capacity(MAGIC.len() + 4 + json.len() + self.dedupe.len() * 16);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&(json.len() as u32).to_be_bytes());
        out.extend_from_slice(&json);
        self.dedupe.encode_into(&mut out);
        out
    }

    /// The last stream sequence included.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// The version of the last published update.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Sets the version (a rebuilt state continues the live one's numbering).
    pub fn set_version(&mut self, version: u64) {
        self.version = version;
    }

    /// Counts one more published update.
    pub fn bump_version(&mut self) -> u64 {
        self.version += 1;
        self.version
    }

    /// Ids in the dedupe window.
    pub fn dedupe_len(&self) -> usize {
        self.dedupe.len()
    }

    /// Includes stream sequence `seq`, whose message counts nothing (not an event, deleted).
    pub fn skip(&mut self, seq: u64) {
        self.seq = self.seq.max(seq);
    }

    /// Folds the event at stream sequence `seq`.
    pub fn fold(&mut self, seq: u64, event: &Envelope) -> Outcome {
        if seq <= self.seq {
            return Outcome::AlreadyIncluded;
        }
        self.seq = seq;
        let mut any = false;
        for (d, def) in self.deltas.iter_mut().zip(&self.defs.counters) {
            *d = def.delta(event);
            any |= *d != 0;
        }
        if !any {
            return Outcome::Unmatched;
        }
        if !self.dedupe.insert(event.id) {
            return Outcome::Duplicate;
        }
        let now = self.clock.now();
        let now_s = now.as_second();
        if self.periods.is_stale(now_s) {
            self.roll_at(now);
        }
        let at = event.occurred_at.unix_timestamp().min(now_s);
        let defs = Arc::clone(&self.defs);
        for (ci, def) in defs.counters.iter().enumerate() {
            let delta = self.deltas[ci];
            if delta == 0 {
                continue;
            }
            for (wi, (_, spec)) in def.windows.iter().enumerate() {
                let moved = match (spec, &mut self.values[ci][wi]) {
                    (WindowSpec::Total, Value::Plain(v)) => {
                        *v += delta;
                        true
                    }
                    (WindowSpec::Calendar(kind), Value::Plain(v)) => {
                        let in_period = at >= self.periods.bounds(*kind).0;
                        if in_period {
                            *v += delta;
                        }
                        in_period
                    }
                    (WindowSpec::Rolling { span, bucket }, Value::Rolling(b)) => {
                        let recent = at > now_s - span;
                        if recent {
                            *b.entry(at - at.rem_euclid(*bucket)).or_default() += delta;
                        }
                        recent
                    }
                    _ => false,
                };
                if moved {
                    self.mark(ci, wi);
                }
            }
        }
        Outcome::Counted
    }

    /// Rolls calendar windows over at their boundaries and lets rolling windows forget, by the
    /// clock. Called on every tick, so windows move without events.
    pub fn roll(&mut self) {
        let now = self.clock.now();
        self.roll_at(now);
    }

    fn roll_at(&mut self, now: Timestamp) {
        let rolled = self.periods.advance(now);
        let now_s = now.as_second();
        let defs = Arc::clone(&self.defs);
        for (ci, def) in defs.counters.iter().enumerate() {
            for (wi, (_, spec)) in def.windows.iter().enumerate() {
                let moved = match (spec, &mut self.values[ci][wi]) {
                    (WindowSpec::Calendar(kind), Value::Plain(v)) if rolled.contains(kind) => {
                        std::mem::replace(v, 0) != 0
                    }
                    (WindowSpec::Rolling { span, bucket }, Value::Rolling(b)) => {
                        let horizon = now_s - span;
                        let before: i64 = b.values().sum();
                        b.retain(|start, _| start + bucket > horizon);
                        before != b.values().sum::<i64>()
                    }
                    _ => false,
                };
                if moved {
                    self.mark(ci, wi);
                }
            }
        }
    }

    fn mark(&mut self, ci: usize, wi: usize) {
        if !self.changed[ci][wi] {
            self.changed[ci][wi] = true;
            self.changed_list.push((ci, wi));
        }
    }

    fn value(&self, ci: usize, wi: usize) -> i64 {
        match &self.values[ci][wi] {
            Value::Plain(v) => *v,
            Value::Rolling(b) => b.values().sum(),
        }
    }

    /// Whether any window changed since [`Self::take_changes`].
    pub fn has_changes(&self) -> bool {
        !self.changed_list.is_empty()
    }

    /// Marks every window changed (after a rebuild replaced the values).
    pub fn mark_all_changed(&mut self) {
        for ci in 0..self.values.len() {
            for wi in 0..self.values[ci].len() {
                self.mark(ci, wi);
            }
        }
    }

    fn clear_changes(&mut self) {
        for (ci, wi) in self.changed_list.drain(..) {
            self.changed[ci][wi] = false;
        }
    }

    /// The new values of every window that changed since the last call.
    pub fn take_changes(&mut self) -> CounterValues {
        let mut out = CounterValues::new();
        for &(ci, wi) in &self.changed_list {
            let def = &self.defs.counters[ci];
            out.entry(def.name.clone())
                .or_default()
                .insert(def.windows[wi].0.clone(), self.value(ci, wi));
        }
        self.clear_changes();
        out
    }

    /// Every window's value.
    pub fn values(&self) -> CounterValues {
        let mut out = CounterValues::new();
        for (ci, def) in self.defs.counters.iter().enumerate() {
            let windows = out.entry(def.name.clone()).or_default();
            for (wi, (name, _)) in def.windows.iter().enumerate() {
                windows.insert(name.clone(), self.value(ci, wi));
            }
        }
        out
    }

    /// The public snapshot at the current version.
    pub fn snapshot(&self) -> StatSnapshot {
        StatSnapshot {
            version: self.version,
            at: self.clock.now().to_string(),
            time_zone: self.defs.time_zone_name.clone(),
            counters: self.values(),
        }
    }

    /// The clock.
    pub fn now(&self) -> Timestamp {
        self.clock.now()
    }
}

fn calendar_index(kind: Calendar) -> usize {
    match kind {
        Calendar::Day => 0,
        Calendar::Week => 1,
        Calendar::Month => 2,
    }
}

#[cfg(test)]
mod tests;
