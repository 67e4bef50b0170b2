//! stat-aggregator's own configuration: the `[aggregator]` section and the `[[counters]]`
//! definitions, parsed and checked once, before the port is bound.

use std::collections::HashSet;
use std::time::Duration;

use events::Pattern;
use jiff::tz::TimeZone;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use service_runtime::{ConfigError, Validate};

use crate::counters::{CounterDef, Filter, Rule};
use crate::window::WindowSpec;

/// The counters used when the configuration defines none.
pub const DEFAULT_COUNTERS: &str = include_str!("default_counters.toml");

/// This service's own configuration sections.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// Consumer, buckets, time zone, rates.
    pub aggregator: AggregatorConfig,
    /// Counter definitions; absent: [`DEFAULT_COUNTERS`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub counters: Option<Vec<CounterConfig>>,
}

/// `[aggregator]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AggregatorConfig {
    /// IANA time zone of `today`, `this_week`, `this_month` (e.g. `Europe/Berlin`).
    pub time_zone: String,
    /// Durable consumer name on the `EVENTS` stream.
    pub consumer: String,
    /// Key-value bucket holding the aggregator's private state (counters, stream position,
    /// dedupe window) and its lease.
    pub state_bucket: String,
    /// At most this many `rt.stat.update` messages per second.
    pub max_updates_per_sec: u32,
    /// Event ids remembered to drop a double publish (bounded; persisted with the state).
    pub dedupe_window: usize,
    /// The leader's lease lasts this long without renewal; a standby takes over after it.
    pub lease_ttl_secs: u64,
    /// Messages pulled per request.
    pub batch: usize,
    /// JetStream redelivers what is not acknowledged within this.
    pub ack_wait_secs: u64,
}

impl Default for AggregatorConfig {
    fn default() -> Self {
        Self {
            time_zone: "UTC".to_owned(),
            consumer: "stat-aggregator".to_owned(),
            state_bucket: "stat_aggregator".to_owned(),
            max_updates_per_sec: 10,
            dedupe_window: 20_000,
            lease_ttl_secs: 10,
            batch: 1_000,
            ack_wait_secs: 30,
        }
    }
}

impl AggregatorConfig {
    /// The interval between two updates.
    pub fn update_interval(&self) -> Duration {
        Duration::from_secs(1) / self.max_updates_per_sec.max(1)
    }
}

/// One `[[counters]]` entry: either `event_types` (+ `filter`) for a plain +1 counter, or
/// `rules` for anything else (a gauge: one rule +1, another -1), or both.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CounterConfig {
    /// Public name: `[a-z0-9_]`, 1–64 characters.
    pub name: String,
    /// Event types counted +1 (`deal.completed`, `deal.*`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub event_types: Vec<String>,
    /// Condition on `event_types`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<FilterConfig>,
    /// Further rules.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<RuleConfig>,
    /// Windows kept; default `["total"]`.
    #[serde(default = "total_only")]
    pub windows: Vec<String>,
}

fn total_only() -> Vec<String> {
    vec!["total".to_owned()]
}

/// A rule of a counter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// Event types.
    pub event_types: Vec<String>,
    /// Condition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<FilterConfig>,
    /// Added per matching event; default 1.
    #[serde(default = "plus_one")]
    pub delta: i64,
}

fn plus_one() -> i64 {
    1
}

/// `{ field = "data.status", equals = "completed" }`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterConfig {
    /// `data.<path>`, dot-separated.
    pub field: String,
    /// The value the field must equal (string, number or boolean).
    pub equals: Value,
}

/// Everything the aggregator needs from its configuration, parsed.
#[derive(Debug, Clone)]
pub struct Definitions {
    /// The counters, in configuration order.
    pub counters: Vec<CounterDef>,
    /// Time zone of the calendar windows.
    pub time_zone: TimeZone,
    /// Its IANA name.
    pub time_zone_name: String,
}

impl Config {
    /// Parses the counter definitions (the configured ones, else the defaults) and the time
    /// zone; the error names the key.
    pub fn definitions(&self) -> Result<Definitions, ConfigError> {
        let a = &self.aggregator;
        let time_zone = TimeZone::get(&a.time_zone).map_err(|e| {
            ConfigError::new("aggregator.time_zone", format!("{:?}: {e}", a.time_zone))
        })?;
        let configured = match &self.counters {
            Some(c) => c.clone(),
            None => default_counter_configs(),
        };
        let mut names = HashSet::new();
        let mut counters = Vec::with_capacity(configured.len());
        for (i, c) in configured.iter().enumerate() {
            let key = format!("counters[{i}]");
            let def = compile_counter(&key, c)?;
            if !names.insert(def.name.clone()) {
                return Err(ConfigError::new(
                    format!("{key}.name"),
                    format!("{:?} is defined twice", def.name),
                ));
            }
            counters.push(def);
        }
        Ok(Definitions {
            counters,
            time_zone,
            time_zone_name: a.time_zone.clone(),
        })
    }
}

/// The built-in counter set.
pub fn default_counter_configs() -> Vec<CounterConfig> {
    #[derive(Deserialize)]
    struct File {
        counters: Vec<CounterConfig>,
    }
    // A test parses the embedded file, so this cannot fail at run time.
    use figment::providers::Format;
    figment::Figment::from(figment::providers::Toml::string(DEFAULT_COUNTERS))
        .extract::<File>()
        .map(|f| f.counters)
        .unwrap_or_default()
}

fn compile_counter(key: &str, c: &CounterConfig) -> Result<CounterDef, ConfigError> {
    let name_ok = !c.name.is_empty()
        && c.name.len() <= 64
        && c.name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if !name_ok {
        return Err(ConfigError::new(
            format!("{key}.name"),
            format!("{:?} must be 1-64 characters of [a-z0-9_]", c.name),
        ));
    }
    let mut rules = Vec::new();
    if !c.event_types.is_empty() {
        rules.push(compile_rule(key, &c.event_types, c.filter.as_ref(), 1)?);
    } else if c.filter.is_some() {
        return Err(ConfigError::new(
            format!("{key}.filter"),
            "applies to event_types, which is empty",
        ));
    }
    for (j, r) in c.rules.iter().enumerate() {
        let rkey = format!("{key}.rules[{j}]");
        if r.delta == 0 {
            return Err(ConfigError::new(format!("{rkey}.delta"), "must not be 0"));
        }
        rules.push(compile_rule(
            &rkey,
            &r.event_types,
            r.filter.as_ref(),
            r.delta,
        )?);
    }
    if rules.is_empty() {
        return Err(ConfigError::new(
            key,
            "needs event_types or rules: it would never move",
        ));
    }
    if c.windows.is_empty() {
        return Err(ConfigError::new(format!("{key}.windows"), "is empty"));
    }
    let mut windows: Vec<(String, WindowSpec)> = Vec::new();
    for (j, w) in c.windows.iter().enumerate() {
        let spec = WindowSpec::parse(w)
            .map_err(|e| ConfigError::new(format!("{key}.windows[{j}]"), e.to_string()))?;
        if windows.iter().any(|(n, _)| n == w) {
            return Err(ConfigError::new(
                format!("{key}.windows[{j}]"),
                format!("{w:?} is listed twice"),
            ));
        }
        windows.push((w.clone(), spec));
    }
    Ok(CounterDef {
        name: c.name.clone(),
        rules,
        windows,
    })
}

fn compile_rule(
    key: &str,
    types: &[String],
    filter: Option<&FilterConfig>,
    delta: i64,
) -> Result<Rule, ConfigError> {
    if types.is_empty() {
        return Err(ConfigError::new(format!("{key}.event_types"), "is empty"));
    }
    let patterns = types
        .iter()
        .enumerate()
        .map(|(j, t)| {
            Pattern::parse(t)
                .map_err(|e| ConfigError::new(format!("{key}.event_types[{j}]"), e.to_string()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let filter = filter
        .map(|f| {
            let fkey = format!("{key}.filter.field");
            let path = f.field.strip_prefix("data.").ok_or_else(|| {
                ConfigError::new(&fkey, format!("{:?} must start with \"data.\"", f.field))
            })?;
            let path: Vec<String> = path.split('.').map(str::to_owned).collect();
            if path.iter().any(String::is_empty) {
                return Err(ConfigError::new(
                    &fkey,
                    format!("{:?} has an empty part", f.field),
                ));
            }
            if !(f.equals.is_string() || f.equals.is_number() || f.equals.is_boolean()) {
                return Err(ConfigError::new(
                    format!("{key}.filter.equals"),
                    "must be a string, number or boolean",
                ));
            }
            Ok(Filter {
                path,
                equals: f.equals.clone(),
            })
        })
        .transpose()?;
    Ok(Rule {
        patterns,
        filter,
        delta,
    })
}

impl Validate for Config {
    fn validate(&self) -> Result<(), ConfigError> {
        let a = &self.aggregator;
        if a.consumer.is_empty() || a.consumer.contains(['.', '*', '>', ' ']) {
            return Err(ConfigError::new(
                "aggregator.consumer",
                "must be a non-empty name without . * > or spaces",
            ));
        }
        if a.state_bucket.is_empty()
            || !a
                .state_bucket
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(ConfigError::new(
                "aggregator.state_bucket",
                "must be [A-Za-z0-9_-]+",
            ));
        }
        if a.max_updates_per_sec == 0 || a.max_updates_per_sec > 100 {
            return Err(ConfigError::new(
                "aggregator.max_updates_per_sec",
                "must be 1-100",
            ));
        }
        if a.dedupe_window == 0 || a.dedupe_window > 40_000 {
            // 16 bytes per id; the state must stay under NATS's default 1 MiB payload.
            return Err(ConfigError::new(
                "aggregator.dedupe_window",
                "must be 1-40000",
            ));
        }
        if a.lease_ttl_secs < 2 {
            return Err(ConfigError::new(
                "aggregator.lease_ttl_secs",
                "must be at least 2",
            ));
        }
        if a.batch == 0 || a.batch > 10_000 {
            return Err(ConfigError::new("aggregator.batch", "must be 1-10000"));
        }
        if a.ack_wait_secs == 0 {
            return Err(ConfigError::new(
                "aggregator.ack_wait_secs",
                "must be positive",
            ));
        }
        self.definitions().map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_counters_parse() {
        let defs = Config::default().definitions().unwrap();
        assert!(defs.counters.len() >= 8);
        assert!(defs.counters.iter().any(|c| c.name == "providers_online"));
        assert_eq!(default_counter_configs().len(), defs.counters.len());
    }

    fn with(counter: CounterConfig) -> Config {
        Config {
            counters: Some(vec![counter]),
            ..Config::default()
        }
    }

    fn counter(name: &str, types: &[&str], windows: &[&str]) -> CounterConfig {
        CounterConfig {
            name: name.into(),
            event_types: types.iter().map(|s| (*s).to_owned()).collect(),
            filter: None,
            rules: vec![],
            windows: windows.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    #[test]
    fn bad_definitions_name_their_key() {
        let key = |c: Config| c.validate().unwrap_err().key;
        assert_eq!(
            key(with(counter("Bad Name", &["deal.*"], &["total"]))),
            "counters[0].name"
        );
        assert_eq!(
            key(with(counter("x", &["deal.status*"], &["total"]))),
            "counters[0].event_types[0]"
        );
        assert_eq!(
            key(with(counter("x", &["deal.*"], &["yesterday"]))),
            "counters[0].windows[0]"
        );
        assert_eq!(key(with(counter("x", &[], &["total"]))), "counters[0]");
        let mut filtered = counter("x", &["deal.*"], &["total"]);
        filtered.filter = Some(FilterConfig {
            field: "status".into(),
            equals: "done".into(),
        });
        assert_eq!(key(with(filtered)), "counters[0].filter.field");
        let mut tz = Config::default();
        tz.aggregator.time_zone = "Mars/Olympus".into();
        assert_eq!(key(tz), "aggregator.time_zone");
        let twice = Config {
            counters: Some(vec![
                counter("x", &["deal.*"], &["total"]),
                counter("x", &["order.*"], &["total"]),
            ]),
            ..Config::default()
        };
        assert_eq!(key(twice), "counters[1].name");
    }
}
