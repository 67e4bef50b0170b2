//! The OpenAPI document lists exactly the routes the router serves.

use std::collections::BTreeSet;

use serde_json::Value;

#[test]
fn the_document_lists_every_route() {
    let doc: Value = serde_json::from_str(integrations_runner::api::OPENAPI).unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let mut documented = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in ["get", "post", "put", "patch", "delete"] {
            if item.get(method).is_some() {
                documented.insert((path.clone(), method.to_owned()));
            }
        }
    }
    let routed: BTreeSet<(String, String)> = integrations_runner::api::ROUTES
        .iter()
        .map(|(p, m)| ((*p).to_owned(), (*m).to_owned()))
        .collect();
    assert_eq!(documented, routed);
}
