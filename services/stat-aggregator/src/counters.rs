//! Counter definitions, parsed once from configuration: which events move a counter, by how
//! much, and which windows it keeps.

use events::{Envelope, Pattern};
use serde_json::Value;

use crate::window::WindowSpec;

/// One counter (or gauge: a counter with a negative rule).
#[derive(Debug, Clone, PartialEq)]
pub struct CounterDef {
    /// Public name, the key in snapshots.
    pub name: String,
    /// Every matching rule adds its delta.
    pub rules: Vec<Rule>,
    /// `(name, window)` pairs; the name is the key in snapshots.
    pub windows: Vec<(String, WindowSpec)>,
}

/// Events of `patterns` whose data passes `filter` move the counter by `delta`.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    /// Event types, with the same matching rules as webhook subscriptions.
    pub patterns: Vec<Pattern>,
    /// Optional condition on the event's data.
    pub filter: Option<Filter>,
    /// +1 for a counter; -1 on the "down" rule of a gauge.
    pub delta: i64,
}

/// `data.<path> == value`.
#[derive(Debug, Clone, PartialEq)]
pub struct Filter {
    /// Field path inside `data` (`status`, `payment.state`).
    pub path: Vec<String>,
    /// The value it must equal (JSON equality: `"completed"` is not `1`).
    pub equals: Value,
}

impl Filter {
    /// Whether `data` passes.
    pub fn passes(&self, data: &Value) -> bool {
        let mut at = data;
        for key in &self.path {
            match at.get(key) {
                Some(v) => at = v,
                None => return false,
            }
        }
        *at == self.equals
    }
}

impl Rule {
    /// Whether `event` matches.
    pub fn applies(&self, event: &Envelope) -> bool {
        events::pattern::any_matches(&self.patterns, event.event_type.as_str())
            && self.filter.as_ref().is_none_or(|f| f.passes(&event.data))
    }
}

impl CounterDef {
    /// The sum of the deltas of every rule `event` matches (0: the counter does not move).
    pub fn delta(&self, event: &Envelope) -> i64 {
        self.rules
            .iter()
            .filter(|r| r.applies(event))
            .map(|r| r.delta)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use events::EventType;
    use serde_json::json;

    fn event(ty: &str, data: Value) -> Envelope {
        let (d, n) = ty.split_once('.').unwrap();
        Envelope::new(EventType::new(d, n).unwrap(), "1", data).unwrap()
    }

    #[test]
    fn rules_match_patterns_and_filters() {
        let def = CounterDef {
            name: "orders_completed".into(),
            rules: vec![Rule {
                patterns: vec![Pattern::parse("order.*").unwrap()],
                filter: Some(Filter {
                    path: vec!["status".into()],
                    equals: json!("completed"),
                }),
                delta: 1,
            }],
            windows: vec![],
        };
        assert_eq!(
            def.delta(&event(
                "order.status_changed",
                json!({"status": "completed"})
            )),
            1
        );
        assert_eq!(
            def.delta(&event("order.status_changed", json!({"status": "new"}))),
            0
        );
        assert_eq!(def.delta(&event("order.created", json!({}))), 0);
        assert_eq!(
            def.delta(&event("deal.completed", json!({"status": "completed"}))),
            0
        );
    }

    #[test]
    fn nested_paths_and_json_equality() {
        let f = Filter {
            path: vec!["payment".into(), "paid".into()],
            equals: json!(true),
        };
        assert!(f.passes(&json!({"payment": {"paid": true}})));
        assert!(!f.passes(&json!({"payment": {"paid": "true"}})));
        assert!(!f.passes(&json!({"payment": 1})));
    }

    #[test]
    fn a_gauge_sums_its_rules() {
        let rule = |ty: &str, delta| Rule {
            patterns: vec![Pattern::parse(ty).unwrap()],
            filter: None,
            delta,
        };
        let def = CounterDef {
            name: "deals_open".into(),
            rules: vec![rule("deal.created", 1), rule("deal.completed", -1)],
            windows: vec![],
        };
        assert_eq!(def.delta(&event("deal.created", json!({}))), 1);
        assert_eq!(def.delta(&event("deal.completed", json!({}))), -1);
    }
}
