//! The served OpenAPI document, the route table and the router agree.

use std::collections::BTreeSet;

use serde_json::Value;
use webhook_dispatcher::api::{OPENAPI, ROUTES};

fn documented() -> BTreeSet<(String, String)> {
    let doc: Value = serde_json::from_str(OPENAPI).unwrap();
    let mut out = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in ["get", "post", "put", "patch", "delete"] {
            if item.get(method).is_some() {
                out.insert((path.clone(), method.to_owned()));
            }
        }
    }
    out
}

#[test]
fn the_document_lists_exactly_the_routes() {
    let routes: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|(p, m)| ((*p).to_owned(), (*m).to_owned()))
        .collect();
    assert_eq!(documented(), routes);
}

#[test]
fn every_documented_operation_has_an_id_and_error_responses() {
    let doc: Value = serde_json::from_str(OPENAPI).unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    for (path, method) in documented() {
        let op = &doc["paths"][&path][&method];
        assert!(op["operationId"].is_string(), "{method} {path}");
        assert!(
            op["responses"]["401"].is_object(),
            "{method} {path} documents 401"
        );
    }
}

/// Every listed route is served by the router: without credentials each answers 401, never
/// 404 or 405; an unlisted path answers 404.
#[tokio::test]
async fn the_router_serves_every_listed_route() {
    use tower::ServiceExt;
    let pool = sqlx::PgPool::connect_lazy("postgres://nobody@127.0.0.1:1/none").unwrap();
    let state = webhook_dispatcher::api::ApiState {
        store: webhook_dispatcher::store::Store::new(pool),
        delivery: Default::default(),
        policy: Default::default(),
        patterns: Default::default(),
        work_ready: Default::default(),
    };
    let auth =
        webhook_dispatcher::api::auth::Authenticator::new(&webhook_dispatcher::config::ApiConfig {
            keys: vec!["k".repeat(16)],
            ..Default::default()
        });
    let app = webhook_dispatcher::api::router(state, auth);
    for (path, method) in ROUTES {
        let uri = path.replace("{id}", "0193a4c2-7b1e-7cc0-9a52-1f2e3d4c5b6a");
        let request = axum::http::Request::builder()
            .method(method.to_uppercase().as_str())
            .uri(&uri)
            .body(axum::body::Body::empty())
            .unwrap();
        let status = app.clone().oneshot(request).await.unwrap().status();
        assert_eq!(status, 401, "{method} {path}");
    }
    let request = axum::http::Request::get("/crm/nope")
        .body(axum::body::Body::empty())
        .unwrap();
    assert_eq!(app.clone().oneshot(request).await.unwrap().status(), 404);
    let request = axum::http::Request::get("/openapi.json")
        .body(axum::body::Body::empty())
        .unwrap();
    assert_eq!(app.oneshot(request).await.unwrap().status(), 200);
}
