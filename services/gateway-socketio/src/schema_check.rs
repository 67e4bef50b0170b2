//! Unit-test helper: a value against a published schema of `proto/schemas/`.
#![allow(clippy::unwrap_used)]

use serde_json::Value;

/// Panics with every validation error when `instance` does not match `proto/schemas/<name>`.
pub(crate) fn assert_matches_schema(name: &str, instance: &Value) {
    let path = format!("{}/../../proto/schemas/{name}", env!("CARGO_MANIFEST_DIR"));
    let raw: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let validator = jsonschema::validator_for(&raw).unwrap();
    let errors: Vec<String> = validator
        .iter_errors(instance)
        .map(|e| e.to_string())
        .collect();
    assert!(errors.is_empty(), "{name}: {instance}\n{errors:#?}");
}
