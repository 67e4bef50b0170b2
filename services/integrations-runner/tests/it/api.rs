//! The REST API against a real runner, PostgreSQL and NATS.

use serde_json::{Value, json};
use test_support::{NatsServer, TestDatabase};

use crate::common::{PROJECT, Runner, TOKEN, twitter};

const ID: &str = "64b2c3d4e5f6789012345678";

fn assert_no_secret(body: &Value) {
    let text = body.to_string();
    assert!(!text.contains(TOKEN), "a secret leaked: {text}");
    assert!(
        !text.contains("gh-webhook-secret"),
        "a secret leaked: {text}"
    );
}

#[tokio::test]
async fn create_list_get_patch_deactivate() {
    let (nats, db) = (NatsServer::start(), TestDatabase::create().await);
    let runner = Runner::start(&nats, &db, &[]).await;
    let api = runner.api();

    let (status, created) = api.post("/v1/integrations", &twitter(ID)).await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["id"], ID);
    assert_eq!(created["auth"], json!({"type": "bearer"}));
    assert_eq!(created["credentials"], json!({"set": true, "keyId": "k1"}));
    assert_eq!(created["isActive"], true);
    assert_eq!(
        created["endpoints"]["getUserTweets"]["path"],
        "/2/users/{userId}/tweets"
    );
    assert_eq!(
        created["webhookPath"],
        format!("/integrations/{ID}/webhooks")
    );
    assert_no_secret(&created);

    let (status, again) = api.post("/v1/integrations", &twitter(ID)).await;
    assert_eq!(status, 409, "{again}");

    // A generated id when none is given.
    let mut other = twitter("x");
    other.as_object_mut().unwrap().remove("id");
    let (status, generated) = api.post("/v1/integrations", &other).await;
    assert_eq!(status, 201, "{generated}");
    assert_eq!(generated["id"].as_str().unwrap().len(), 24);

    let (status, list) = api
        .get(&format!("/v1/integrations?projectId={PROJECT}&limit=1"))
        .await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(list["data"].as_array().unwrap().len(), 1);
    assert_no_secret(&list);
    let cursor = list["nextCursor"].as_str().unwrap().to_owned();
    let (_, page2) = api
        .get(&format!(
            "/v1/integrations?projectId={PROJECT}&limit=1&cursor={cursor}"
        ))
        .await;
    assert_eq!(page2["data"].as_array().unwrap().len(), 1);
    assert_ne!(page2["data"][0]["id"], list["data"][0]["id"]);
    let (_, empty) = api.get("/v1/integrations?projectId=otherproject").await;
    assert_eq!(empty["data"], json!([]));

    let (status, got) = api.get(&format!("/v1/integrations/{ID}")).await;
    assert_eq!(status, 200);
    assert_eq!(got["name"], "Twitter");
    assert_no_secret(&got);

    // A patch keeps the token when the auth type stays.
    let (status, patched) = api
        .patch(
            &format!("/v1/integrations/{ID}"),
            &json!({"name": "X", "rateLimit": null}),
        )
        .await;
    assert_eq!(status, 200, "{patched}");
    assert_eq!(patched["name"], "X");
    assert_eq!(patched["rateLimit"], Value::Null);
    assert_eq!(patched["credentials"]["set"], true);
    assert_no_secret(&patched);

    // Changing the auth type needs the new secret.
    let (status, err) = api
        .patch(
            &format!("/v1/integrations/{ID}"),
            &json!({"auth": {"type": "header", "name": "X-Api-Key"}}),
        )
        .await;
    assert_eq!(status, 422, "{err}");
    assert_eq!(err["error"]["field"], "auth.value");

    let (status, off) = api
        .post(&format!("/v1/integrations/{ID}/deactivate"), &json!({}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(off["isActive"], false);
    let (_, on) = api
        .post(&format!("/v1/integrations/{ID}/activate"), &json!({}))
        .await;
    assert_eq!(on["isActive"], true);

    let (status, usage) = api
        .get(&format!("/v1/integrations/{ID}/usage?days=7"))
        .await;
    assert_eq!(status, 200, "{usage}");
    assert_eq!(usage["usage"], json!([]));

    let (status, missing) = api.get("/v1/integrations/000000000000000000000000").await;
    assert_eq!(status, 404);
    assert_eq!(missing["error"]["code"], "not_found");
    runner.stop().await;
}

#[tokio::test]
async fn invalid_input_is_422_naming_the_field() {
    let (nats, db) = (NatsServer::start(), TestDatabase::create().await);
    let runner = Runner::start(&nats, &db, &[]).await;
    let api = runner.api();

    type Edit = Box<dyn Fn(&mut Value)>;
    let cases: Vec<(Edit, &str)> = vec![
        (Box::new(|v| v["baseUrl"] = json!("not a url")), "baseUrl"),
        (
            Box::new(|v| v["baseUrl"] = json!("ftp://x.example")),
            "baseUrl",
        ),
        (
            Box::new(|v| {
                v.as_object_mut().unwrap().remove("projectId");
            }),
            "projectId",
        ),
        (
            Box::new(|v| v["auth"] = json!({"type": "magic"})),
            "auth.type",
        ),
        (
            Box::new(|v| v["auth"] = json!({"type": "bearer"})),
            "auth.token",
        ),
        (
            Box::new(|v| v["endpoints"]["getUserTweets"]["path"] = json!("/2/{userId")),
            "endpoints.getUserTweets.path",
        ),
        (
            Box::new(|v| v["endpoints"]["getUserTweets"]["path"] = json!("no-slash")),
            "endpoints.getUserTweets.path",
        ),
        (
            Box::new(|v| v["endpoints"]["getUserTweets"]["method"] = json!("TRACE")),
            "endpoints.getUserTweets.method",
        ),
        (
            Box::new(|v| v["rateLimit"]["requests"] = json!(0)),
            "rateLimit.requests",
        ),
        (
            Box::new(|v| v["webhook"] = json!({"scheme": "hmac", "secret": "s"})),
            "webhook.header",
        ),
        (Box::new(|v| v["id"] = json!("not/an/id")), "id"),
        (Box::new(|v| v["surprise"] = json!(1)), "surprise"),
    ];
    for (edit, field) in cases {
        let mut body = twitter(ID);
        edit(&mut body);
        let (status, err) = api.post("/v1/integrations", &body).await;
        assert_eq!(status, 422, "{field}: {err}");
        assert_eq!(err["error"]["field"], field, "{err}");
        assert_eq!(err["error"]["code"], "validation_failed");
    }
    let (status, err) = api.get("/v1/integrations").await;
    assert_eq!((status, &err["error"]["field"]), (422, &json!("projectId")));

    // Oversized bodies are refused before they are parsed.
    let mut big = twitter(ID);
    big["name"] = json!("x".repeat(300 * 1024));
    let (status, _) = api.post("/v1/integrations", &big).await;
    assert_eq!(status, 413);
    runner.stop().await;
}

#[tokio::test]
async fn every_route_needs_credentials() {
    let (nats, db) = (NatsServer::start(), TestDatabase::create().await);
    let runner = Runner::start(&nats, &db, &[]).await;
    let anon = runner.api().anonymous();
    for (path, method) in integrations_runner::api::ROUTES {
        let path = path.replace("{id}", ID);
        let (status, body) = anon
            .send(&method.to_uppercase(), &path, Some(&json!({})))
            .await;
        assert_eq!(status, 401, "{method} {path}: {body}");
        assert_eq!(body["error"]["code"], "unauthorized");
    }
    let mut wrong = runner.api();
    wrong.key = Some("wrong-key-0123456789abc".to_owned());
    assert_eq!(wrong.get("/v1/integrations?projectId=p").await.0, 401);
    let (status, _) = anon.get("/openapi.json").await;
    assert_eq!(status, 200);
    runner.stop().await;
}

#[tokio::test]
async fn openapi_import_replaces_endpoints() {
    let (nats, db) = (NatsServer::start(), TestDatabase::create().await);
    let runner = Runner::start(&nats, &db, &[]).await;
    let api = runner.api();
    assert_eq!(api.post("/v1/integrations", &twitter(ID)).await.0, 201);
    let doc = json!({
        "openapi": "3.0.3",
        "servers": [{"url": "https://api.x.com"}],
        "paths": {
            "/2/tweets/{id}": {
                "get": {"operationId": "getTweet", "parameters": [
                    {"name": "id", "in": "path", "required": true},
                    {"name": "expansions", "in": "query"}]},
                "delete": {"summary": "no operationId"}
            },
            "/2/tweets": {"post": {"operationId": "createTweet", "requestBody": {"content": {}}}}
        }
    });
    let (status, out) = api
        .put(
            &format!("/v1/integrations/{ID}/endpoints/openapi?useServerUrl=true"),
            &doc,
        )
        .await;
    assert_eq!(status, 200, "{out}");
    assert_eq!(out["imported"], json!(["createTweet", "getTweet"]));
    assert_eq!(out["skipped"][0]["reason"], "no operationId");
    let endpoints = &out["integration"]["endpoints"];
    assert_eq!(endpoints["getTweet"]["path"], "/2/tweets/{id}");
    assert_eq!(endpoints["getTweet"]["query"]["expansions"], "{expansions}");
    assert_eq!(endpoints["createTweet"]["body"], "requestData");
    assert!(endpoints.get("getUserTweets").is_none());
    assert_eq!(out["integration"]["baseUrl"], "https://api.x.com/");
    assert_no_secret(&out);

    let (status, err) = api
        .put(
            &format!("/v1/integrations/{ID}/endpoints/openapi"),
            &json!({"swagger": "2.0", "paths": {}}),
        )
        .await;
    assert_eq!((status, &err["error"]["field"]), (422, &json!("openapi")));
    runner.stop().await;
}
