//! gateway-socketio end to end, against `docs/gateway-socketio.md`: the service in process,
//! a real nats-server and PostgreSQL per test, and the real socket.io-client 4.8 (Node) driving
//! the sockets. Run `npm ci` in `tests/client` first (scripts/test.sh does).
#![allow(clippy::unwrap_used)]

mod common;
mod hardening;

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use events::envelope::Audience;
use events::token::Token;
use futures_util::StreamExt;
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{Value, json};
use test_support::{WAIT, http_client};

const ISSUER: &str = "https://auth.test";
const AUDIENCE: &str = "crm";

const PROVIDER_ISSUER: &str = "https://tenant.logto.test/oidc";
const PROVIDER_AUDIENCE: &str = "https://api.provider.test";

const ACME: &str = "https://acme.example";

fn set(v: &Value) -> BTreeSet<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("expected an array, got {v}"))
        .iter()
        .map(|s| s.as_str().unwrap().to_owned())
        .collect()
}

fn strings(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

fn json_of(envelope: &events::Envelope) -> Value {
    serde_json::to_value(envelope).unwrap()
}

/// Asserts a subscribe reply refused the whole payload.
fn assert_payload_refused(reply: &Value, what: &str) {
    assert_schema("socketio-admin-subscribe-ack.schema.json", reply);
    assert_eq!(reply["subscribed"], json!([]), "{what}: {reply}");
    let refused = reply["refused"].as_array().unwrap();
    assert_eq!(refused.len(), 1, "{what}: {reply}");
    assert_eq!(refused[0]["target"], "payload", "{what}: {reply}");
    assert!(
        refused[0]["reason"].as_str().is_some_and(|r| !r.is_empty()),
        "{what}: a reason is given: {reply}"
    );
}

/// Asserts a reply subscribed nothing and refused exactly one target with `reason`.
fn assert_refused_one(reply: &Value, reason: &str, what: &str) {
    assert_eq!(reply["subscribed"], json!([]), "{what}: {reply}");
    let refused = reply["refused"].as_array().unwrap();
    assert_eq!(refused.len(), 1, "{what}: {reply}");
    assert_eq!(refused[0]["reason"], reason, "{what}: {reply}");
}

async fn admin_gateway(
    extra: &[(&str, String)],
) -> (
    test_support::NatsServer,
    test_support::TestDatabase,
    Gateway,
) {
    let (nats, db) = backends().await;
    let gw = Gateway::start(&nats, &db, extra).await;
    (nats, db, gw)
}

// ---------------------------------------------------------------------------------------------
// /admin authentication
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_hs256_accepts_valid_tokens_and_refuses_bad_ones_with_exact_messages() {
    let (_nats, _db, gw) = admin_gateway(&[
        ("ADMIN__ISSUER", ISSUER.to_owned()),
        ("ADMIN__AUDIENCE", AUDIENCE.to_owned()),
    ])
    .await;
    let d = Driver::start().await;
    let good = |extra: Value| {
        let mut c = claims(json!({"iss": ISSUER, "aud": AUDIENCE}));
        for (k, v) in extra.as_object().unwrap() {
            if v.is_null() {
                c.as_object_mut().unwrap().remove(k);
            } else {
                c[k] = v.clone();
            }
        }
        c
    };
    let secret = ADMIN_SECRET.as_bytes();

    let ok = d
        .connect_ok(
            "ok",
            Connect::to(&gw, "/admin").token(&hs256(secret, &good(json!({})))),
        )
        .await;
    assert_eq!(ok.transport, "websocket");
    d.connect_ok(
        "aud-array",
        Connect::to(&gw, "/admin")
            .token(&hs256(secret, &good(json!({"aud": ["billing", AUDIENCE]})))),
    )
    .await;

    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "missing",
            json!({}),
            "authentication required: auth.token is missing",
        ),
        (
            "expired",
            json!({"token": hs256(secret, &good(json!({"exp": now() - 120}))) }),
            "invalid token: expired",
        ),
        (
            "not-yet-valid",
            json!({"token": hs256(secret, &good(json!({"nbf": now() + 600}))) }),
            "invalid token: not yet valid",
        ),
        (
            "bad-signature",
            json!({"token": hs256(b"another-secret-0123456789abcdef", &good(json!({})))}),
            "invalid token: bad signature",
        ),
        (
            "alg-none",
            json!({"token": unsigned_token(&json!({"alg": "none", "typ": "JWT"}), &good(json!({})))}),
            "invalid token: algorithm not allowed",
        ),
        (
            "alg-hs512",
            json!({"token": sign(Algorithm::HS512, &EncodingKey::from_secret(secret), None, &good(json!({})))}),
            "invalid token: algorithm not allowed",
        ),
        (
            "wrong-audience",
            json!({"token": hs256(secret, &good(json!({"aud": "billing"})))}),
            "invalid token: wrong audience",
        ),
        (
            "wrong-issuer",
            json!({"token": hs256(secret, &good(json!({"iss": "https://evil.test"})))}),
            "invalid token: wrong issuer",
        ),
        (
            "garbage",
            json!({"token": "this.is-not.a-jwt"}),
            "invalid token: malformed",
        ),
    ];
    let mut failures = Vec::new();
    for (name, auth, expected) in cases {
        let got = d.connect(name, Connect::to(&gw, "/admin").auth(auth)).await;
        if got.as_ref().err().map(String::as_str) != Some(expected) {
            failures.push(format!("{name}: expected Err({expected:?}), got {got:?}"));
        }
    }
    // `exp` is required (the message for its absence is not specified beyond "invalid token").
    let no_exp = d
        .connect(
            "no-exp",
            Connect::to(&gw, "/admin").token(&hs256(secret, &good(json!({"exp": null})))),
        )
        .await;
    if !no_exp
        .as_ref()
        .err()
        .is_some_and(|e| e.starts_with("invalid token: "))
    {
        failures.push(format!(
            "no-exp: expected an invalid token refusal, got {no_exp:?}"
        ));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(d.is_connected("ok").await && d.is_connected("aud-array").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_rs256_accepts_rs256_and_refuses_algorithm_confusion() {
    let public_pem = fixture("admin-rs256.pub.pem");
    let (_nats, _db, gw) = admin_gateway(&[
        ("ADMIN__ALGORITHM", "RS256".to_owned()),
        (
            "ADMIN__PUBLIC_KEYS",
            serde_json::to_string(&vec![public_pem.clone()]).unwrap(),
        ),
    ])
    .await;
    let d = Driver::start().await;
    let key = rsa_key("admin-rs256.key.pem");
    d.connect_ok(
        "rs256",
        Connect::to(&gw, "/admin").token(&sign(Algorithm::RS256, &key, None, &claims(json!({})))),
    )
    .await;

    // HS256 "signed" with the public key's bytes: the classic confusion attack.
    let confused = sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(public_pem.as_bytes()),
        None,
        &claims(json!({})),
    );
    assert_eq!(
        d.connect_err("confused", Connect::to(&gw, "/admin").token(&confused))
            .await,
        "invalid token: algorithm not allowed"
    );
    assert_eq!(
        d.connect_err(
            "none",
            Connect::to(&gw, "/admin")
                .token(&unsigned_token(&json!({"alg": "none"}), &claims(json!({}))))
        )
        .await,
        "invalid token: algorithm not allowed"
    );
    // Right algorithm, key not configured.
    let foreign = sign(
        Algorithm::RS256,
        &rsa_key("provider-rs256.key.pem"),
        None,
        &claims(json!({})),
    );
    assert_eq!(
        d.connect_err("foreign", Connect::to(&gw, "/admin").token(&foreign))
            .await,
        "invalid token: bad signature"
    );
    assert!(d.is_connected("rs256").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_es256_accepts_es256_and_refuses_other_families() {
    let (_nats, _db, gw) = admin_gateway(&[
        ("ADMIN__ALGORITHM", "ES256".to_owned()),
        (
            "ADMIN__PUBLIC_KEYS",
            serde_json::to_string(&vec![fixture("admin-es256.pub.pem")]).unwrap(),
        ),
    ])
    .await;
    let d = Driver::start().await;
    d.connect_ok(
        "es256",
        Connect::to(&gw, "/admin").token(&sign(
            Algorithm::ES256,
            &ec_key("admin-es256.key.pem"),
            None,
            &claims(json!({})),
        )),
    )
    .await;
    let rsa = sign(
        Algorithm::RS256,
        &rsa_key("admin-rs256.key.pem"),
        None,
        &claims(json!({})),
    );
    assert_eq!(
        d.connect_err("rs256", Connect::to(&gw, "/admin").token(&rsa))
            .await,
        "invalid token: algorithm not allowed"
    );
    assert_eq!(
        d.connect_err(
            "hs256",
            Connect::to(&gw, "/admin").token(&admin_token(json!({})))
        )
        .await,
        "invalid token: algorithm not allowed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_socket_is_disconnected_when_its_token_expires() {
    let (_nats, _db, gw) = admin_gateway(&[]).await;
    let d = Driver::start().await;
    let exp = now() + 5;
    d.connect_ok(
        "short",
        Connect::to(&gw, "/admin").token(&admin_token(json!({"exp": exp}))),
    )
    .await;
    d.connect_admin("long", &gw).await;

    let expired = d.next_pushed("short", "auth:expired", |_| true).await;
    let received_at = SystemTime::now()
        .checked_sub(expired.at.elapsed())
        .unwrap()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        received_at >= (exp - 1) as f64,
        "auth:expired came {:.1}s before exp",
        exp as f64 - received_at
    );
    let body = expired.first();
    assert_eq!(body["reason"], "token expired", "{body}");
    let expired_at = time::OffsetDateTime::parse(
        body["expired_at"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap_or_else(|e| panic!("expired_at is RFC 3339: {body}: {e}"));
    assert!(
        (expired_at.unix_timestamp() - exp).abs() <= 1,
        "expired_at {expired_at} is the token's exp {exp}"
    );
    let disconnect = d.next_pushed("short", "disconnect", |_| true).await;
    assert_eq!(disconnect.first(), "io server disconnect");
    assert!(expired.seq < disconnect.seq, "auth:expired comes first");

    // The other socket is untouched.
    assert!(d.is_connected("long").await);
    assert_eq!(
        d.subscribe("long", json!({"domains": ["orders"]})).await,
        json!({"subscribed": ["domain:orders"], "refused": []})
    );
    assert_eq!(d.count("long", "auth:expired", |_| true), 0);
}

// ---------------------------------------------------------------------------------------------
// /provider
// ---------------------------------------------------------------------------------------------

fn provider_claims(extra: Value) -> Value {
    let mut c =
        claims(json!({"iss": PROVIDER_ISSUER, "aud": PROVIDER_AUDIENCE, "sub": "provider-7"}));
    for (k, v) in extra.as_object().unwrap() {
        c[k] = v.clone();
    }
    c
}

fn provider_env(jwks_url: &str, min_refresh: u64) -> Vec<(&'static str, String)> {
    vec![
        ("PROVIDER__ISSUER", PROVIDER_ISSUER.to_owned()),
        ("PROVIDER__JWKS_URL", jwks_url.to_owned()),
        ("PROVIDER__AUDIENCE", PROVIDER_AUDIENCE.to_owned()),
        ("PROVIDER__JWKS_MIN_REFRESH_SECS", min_refresh.to_string()),
        ("PROVIDER__JWKS_TIMEOUT_SECS", "2".to_owned()),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_verifies_against_the_jwks_and_follows_a_key_rotation() {
    let jwks = JwksServer::start(vec![jwk("provider-es384-a.jwk.json", "key-a", "ES384")]).await;
    let (_nats, _db, gw) = admin_gateway(&provider_env(&jwks.url, 0)).await;
    let d = Driver::start().await;
    let (a, b, r) = (
        ec_key("provider-es384-a.key.pem"),
        ec_key("provider-es384-b.key.pem"),
        rsa_key("provider-rs256.key.pem"),
    );
    let to = || Connect::to(&gw, "/provider");

    d.connect_ok(
        "a",
        to().token(&sign(
            Algorithm::ES384,
            &a,
            Some("key-a"),
            &provider_claims(json!({})),
        )),
    )
    .await;
    let before_rotation = jwks.hits();
    assert!(before_rotation >= 1, "the JWKS was fetched");

    jwks.rotate(vec![
        jwk("provider-es384-b.jwk.json", "key-b", "ES384"),
        jwk("provider-rs256.jwk.json", "key-r", "RS256"),
    ]);
    d.connect_ok(
        "b",
        to().token(&sign(
            Algorithm::ES384,
            &b,
            Some("key-b"),
            &provider_claims(json!({})),
        )),
    )
    .await;
    assert!(
        jwks.hits() > before_rotation,
        "an unknown kid fetched the JWKS again"
    );
    d.connect_ok(
        "rsa",
        to().token(&sign(
            Algorithm::RS256,
            &r,
            Some("key-r"),
            &provider_claims(json!({})),
        )),
    )
    .await;

    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "missing",
            json!({}),
            "authentication required: auth.token is missing",
        ),
        (
            "unknown-kid",
            json!({"token": sign(Algorithm::ES384, &a, Some("key-c"), &provider_claims(json!({})))}),
            "invalid token: unknown signing key",
        ),
        (
            "rotated-out",
            json!({"token": sign(Algorithm::ES384, &a, Some("key-a"), &provider_claims(json!({})))}),
            "invalid token: unknown signing key",
        ),
        (
            "bad-signature",
            json!({"token": sign(Algorithm::ES384, &a, Some("key-b"), &provider_claims(json!({})))}),
            "invalid token: bad signature",
        ),
        (
            "wrong-audience",
            json!({"token": sign(Algorithm::ES384, &b, Some("key-b"), &provider_claims(json!({"aud": "https://other.api"})))}),
            "invalid token: wrong audience",
        ),
        (
            "wrong-issuer",
            json!({"token": sign(Algorithm::ES384, &b, Some("key-b"), &provider_claims(json!({"iss": "https://evil.logto.test/oidc"})))}),
            "invalid token: wrong issuer",
        ),
        (
            "expired",
            json!({"token": sign(Algorithm::ES384, &b, Some("key-b"), &provider_claims(json!({"exp": now() - 120})))}),
            "invalid token: expired",
        ),
        (
            "alg-none",
            json!({"token": unsigned_token(&json!({"alg": "none", "kid": "key-b"}), &provider_claims(json!({})))}),
            "invalid token: algorithm not allowed",
        ),
        (
            "hs256",
            json!({"token": sign(Algorithm::HS256, &EncodingKey::from_secret(b"0123456789abcdef0123"), Some("key-b"), &provider_claims(json!({})))}),
            "invalid token: algorithm not allowed",
        ),
    ];
    let mut failures = Vec::new();
    for (name, auth, expected) in cases {
        let got = d.connect(name, to().auth(auth)).await;
        if got.as_ref().err().map(String::as_str) != Some(expected) {
            failures.push(format!("{name}: expected Err({expected:?}), got {got:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    for conn in ["a", "b", "rsa"] {
        assert!(d.is_connected(conn).await, "{conn} stays connected");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_unknown_kids_refetch_the_jwks_at_most_once_per_min_refresh() {
    let jwks = JwksServer::start(vec![jwk("provider-es384-a.jwk.json", "key-a", "ES384")]).await;
    let (_nats, _db, gw) = admin_gateway(&provider_env(&jwks.url, 3600)).await;
    let d = Driver::start().await;
    let a = ec_key("provider-es384-a.key.pem");
    d.connect_ok(
        "a",
        Connect::to(&gw, "/provider").token(&sign(
            Algorithm::ES384,
            &a,
            Some("key-a"),
            &provider_claims(json!({})),
        )),
    )
    .await;
    let after_first = jwks.hits();
    assert!(after_first >= 1);
    for (i, kid) in ["key-x", "key-y", "key-x", "key-z"].iter().enumerate() {
        let token = sign(Algorithm::ES384, &a, Some(kid), &provider_claims(json!({})));
        assert_eq!(
            d.connect_err(
                &format!("x{i}"),
                Connect::to(&gw, "/provider").token(&token)
            )
            .await,
            "invalid token: unknown signing key"
        );
    }
    assert!(
        jwks.hits() <= after_first + 1,
        "four unknown kids within provider.jwks_min_refresh_secs fetched the JWKS {} more times",
        jwks.hits() - after_first
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_unreachable_jwks_is_authentication_unavailable() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let url = format!("http://127.0.0.1:{port}/jwks");
    let (_nats, _db, gw) = admin_gateway(&provider_env(&url, 0)).await;
    let d = Driver::start().await;
    let token = sign(
        Algorithm::ES384,
        &ec_key("provider-es384-a.key.pem"),
        Some("key-a"),
        &provider_claims(json!({})),
    );
    assert_eq!(
        d.connect_err("p", Connect::to(&gw, "/provider").token(&token))
            .await,
        "authentication unavailable, retry later"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_without_configuration_refuses_every_handshake() {
    let (_nats, _db, gw) = admin_gateway(&[]).await;
    let d = Driver::start().await;
    let token = sign(
        Algorithm::ES384,
        &ec_key("provider-es384-a.key.pem"),
        Some("key-a"),
        &provider_claims(json!({})),
    );
    assert_eq!(
        d.connect_err("p", Connect::to(&gw, "/provider").token(&token))
            .await,
        "provider authentication is not configured"
    );
    // /admin is unaffected.
    d.connect_admin("a", &gw).await;
}

// ---------------------------------------------------------------------------------------------
// /widget
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn widget_key_api_requires_the_bearer_key_and_validates_origins() {
    let (_nats, _db, gw) = admin_gateway(&[]).await;
    let http = http_client();
    let create = json!({"name": "Acme shop", "allowed_origins": [ACME]});

    let status = |r: reqwest::Response| r.status().as_u16();
    assert_eq!(
        status(
            http.post(gw.url("/api/widget-keys"))
                .json(&create)
                .send()
                .await
                .unwrap()
        ),
        401,
        "no bearer"
    );
    assert_eq!(
        status(
            http.post(gw.url("/api/widget-keys"))
                .bearer_auth("not-the-key")
                .json(&create)
                .send()
                .await
                .unwrap()
        ),
        401,
        "wrong bearer"
    );
    assert_eq!(
        status(http.get(gw.url("/api/widget-keys")).send().await.unwrap()),
        401,
        "list without bearer"
    );

    let response = http
        .post(gw.url("/api/widget-keys"))
        .bearer_auth(API_KEY)
        .json(&create)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 201);
    let created: Value = response.json().await.unwrap();
    let key = created["key"].as_str().unwrap().to_owned();
    assert!(key.starts_with("wk_"), "{created}");
    assert_eq!(created["name"], "Acme shop");
    assert_eq!(created["allowed_origins"], json!([ACME]));
    assert_eq!(created["active"], true);
    time::OffsetDateTime::parse(
        created["created_at"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();

    let shown = http
        .get(gw.url(&format!("/api/widget-keys/{key}")))
        .bearer_auth(API_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(shown.status().as_u16(), 200);
    let shown: Value = shown.json().await.unwrap();
    assert_eq!(shown["key"], key.as_str());
    assert_eq!(shown["active"], true);

    let list: Value = http
        .get(gw.url("/api/widget-keys"))
        .bearer_auth(API_KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        list["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|k| k["key"] == key.as_str()),
        "{list}"
    );
    assert_eq!(
        status(
            http.get(gw.url("/api/widget-keys/wk_doesnotexist"))
                .bearer_auth(API_KEY)
                .send()
                .await
                .unwrap()
        ),
        404
    );

    for bad in [
        "https://acme.example/shop",
        "acme.example",
        "ftp://acme.example",
    ] {
        let response = http
            .post(gw.url("/api/widget-keys"))
            .bearer_auth(API_KEY)
            .json(&json!({"name": "bad", "allowed_origins": [bad]}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 422, "origin {bad:?}");
        let body = response.text().await.unwrap();
        assert!(
            body.contains("allowed_origins"),
            "422 names the field: {body}"
        );
    }

    let deactivated = http
        .post(gw.url(&format!("/api/widget-keys/{key}/deactivate")))
        .bearer_auth(API_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(deactivated.status().as_u16(), 200);
    let deactivated: Value = deactivated.json().await.unwrap();
    assert_eq!(deactivated["key"], key.as_str());
    assert_eq!(deactivated["active"], false);
    assert_eq!(
        status(
            http.post(gw.url("/api/widget-keys/wk_doesnotexist/deactivate"))
                .bearer_auth(API_KEY)
                .send()
                .await
                .unwrap()
        ),
        404
    );
    assert_eq!(
        status(
            http.post(gw.url(&format!("/api/widget-keys/{key}/deactivate")))
                .send()
                .await
                .unwrap()
        ),
        401,
        "deactivate without bearer"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn widget_handshake_checks_key_and_origin_and_deactivation_disconnects() {
    let (nats, _db, gw) = admin_gateway(&[]).await;
    let d = Driver::start().await;
    let key = gw.create_widget_key("Acme shop", &[ACME]).await;
    let any = gw.create_widget_key("Anywhere", &["*"]).await;
    let w = || Connect::to(&gw, "/widget");

    d.connect_ok("by-key", w().auth(json!({"key": key})).origin(ACME))
        .await;
    d.connect_ok(
        "by-widget-key",
        w().auth(json!({"widgetKey": key})).origin(ACME),
    )
    .await;
    d.connect_ok("by-query", w().query("key", &key).origin(ACME))
        .await;
    d.connect_ok(
        "any",
        w().auth(json!({"key": any}))
            .origin("https://elsewhere.example:8443"),
    )
    .await;

    let refusals = [
        (
            "evil-origin",
            w().auth(json!({"key": key})).origin("https://evil.example"),
            "origin not allowed",
        ),
        (
            "no-origin",
            w().auth(json!({"key": key})),
            "origin not allowed",
        ),
        ("no-key", w().origin(ACME), "widget key required"),
        (
            "unknown-key",
            w().auth(json!({"key": "wk_unknown0123456789"}))
                .origin(ACME),
            "unknown widget key",
        ),
    ];
    for (name, options, expected) in refusals {
        assert_eq!(d.connect_err(name, options).await, expected, "{name}");
    }

    let response = http_client()
        .post(gw.url(&format!("/api/widget-keys/{key}/deactivate")))
        .bearer_auth(API_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    for conn in ["by-key", "by-widget-key", "by-query"] {
        let told = d.next_pushed(conn, "widget:deactivated", |_| true).await;
        assert_eq!(told.first(), json!({"reason": "widget key deactivated"}));
        let gone = d.next_pushed(conn, "disconnect", |_| true).await;
        assert_eq!(gone.first(), "io server disconnect", "{conn}");
        assert!(told.seq < gone.seq);
    }
    assert_eq!(
        d.connect_err("after", w().auth(json!({"key": key})).origin(ACME))
            .await,
        "widget key inactive"
    );

    // The other key's socket is unaffected: still connected, still receiving its pushes.
    let nc = async_nats::connect(nats.url()).await.unwrap();
    nats_publish_until(
        &d,
        &nc,
        &format!("rt.widget.{any}.update"),
        "any",
        "widget:update",
        |n| json!({"probe": n}),
    )
    .await;
    assert!(d.is_connected("any").await);
    assert_eq!(d.count("any", "widget:deactivated", |_| true), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn widget_updates_and_intercom_notifications_reach_only_their_key() {
    let (nats, _db, gw) = admin_gateway(&[]).await;
    let d = Driver::start().await;
    let acme = gw.create_widget_key("Acme shop", &[ACME]).await;
    let other = gw
        .create_widget_key("Other shop", &["https://other.example"])
        .await;
    d.connect_ok(
        "acme",
        Connect::to(&gw, "/widget")
            .auth(json!({"key": acme}))
            .origin(ACME),
    )
    .await;
    d.connect_ok(
        "other",
        Connect::to(&gw, "/widget")
            .auth(json!({"key": other}))
            .origin("https://other.example"),
    )
    .await;
    let nc = async_nats::connect(nats.url()).await.unwrap();
    nats_publish_until(
        &d,
        &nc,
        &format!("rt.widget.{acme}.update"),
        "acme",
        "widget:update",
        |n| json!({"probe": n}),
    )
    .await;
    nats_publish_until(
        &d,
        &nc,
        &format!("rt.widget.{other}.update"),
        "other",
        "widget:update",
        |n| json!({"probe": n}),
    )
    .await;

    let update =
        json!({"theme": {"color": "#ff6600"}, "title": "Need a boost?", "n": [1, 2.5, null, true]});
    nc.publish(
        format!("rt.widget.{acme}.update"),
        update.to_string().into(),
    )
    .await
    .unwrap();
    let notify = json!({"ticket_id": 7, "status": "answered"});
    nc.publish(
        format!("rt.widget.{acme}.intercom_notify"),
        notify.to_string().into(),
    )
    .await
    .unwrap();
    let marker = json!({"marker": "other"});
    nc.publish(
        format!("rt.widget.{other}.update"),
        marker.to_string().into(),
    )
    .await
    .unwrap();
    nc.flush().await.unwrap();

    assert_eq!(
        d.next_matching("acme", "widget:update", |v| v.get("theme").is_some())
            .await,
        update,
        "relayed as is"
    );
    assert_eq!(d.next_event("acme", "widget:intercom:notify").await, notify);
    d.assert_no_event(
        "other",
        "widget:update",
        |v| v.get("theme").is_some(),
        "widget:update",
        |v| *v == marker,
    )
    .await;
    assert_eq!(d.count("other", "widget:intercom:notify", |_| true), 0);
    assert_eq!(d.count("acme", "widget:update", |v| *v == marker), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discord_request_is_relayed_to_the_backend_and_answered() {
    let (nats, _db, gw) = admin_gateway(&[]).await;
    let d = Driver::start().await;
    let key = gw.create_widget_key("Acme shop", &[ACME]).await;
    d.connect_ok(
        "w",
        Connect::to(&gw, "/widget")
            .auth(json!({"key": key}))
            .origin(ACME),
    )
    .await;

    let nc = async_nats::connect(nats.url()).await.unwrap();
    let mut sub = nc.subscribe("cmd.discord.request_send").await.unwrap();
    nats_sync(&nc).await;
    let (tx, mut requests) = tokio::sync::mpsc::unbounded_channel::<Value>();
    let responder = nc.clone();
    tokio::spawn(async move {
        let mut n = 0;
        while let Some(message) = sub.next().await {
            n += 1;
            let body: Value = serde_json::from_slice(&message.payload).unwrap_or(Value::Null);
            let reply = json!({"ok": true, "request_id": format!("req-{n}"), "echo": body["data"]});
            if let Some(to) = message.reply {
                responder
                    .publish(to, reply.to_string().into())
                    .await
                    .unwrap();
                responder.flush().await.unwrap();
            }
            let _ = tx.send(body);
        }
    });

    let data = json!({"game": "valorant", "rank": "gold", "message": "boost me"});
    let ack = d.emit_ack("w", "discord:request-send", json!([data])).await;
    let expected = json!({"ok": true, "request_id": "req-1", "echo": data});
    assert_eq!(ack, expected, "the ack gets the backend's reply");
    assert_eq!(
        d.next_event("w", "discord:request-response").await,
        expected,
        "and it is emitted as discord:request-response"
    );
    let request = requests.recv().await.unwrap();
    assert_eq!(
        request,
        json!({"widget_key": key, "origin": ACME, "data": data})
    );
    assert_schema("discord-request.schema.json", &request);

    // Without an ack callback the reply is emitted only.
    d.emit("w", "discord:request-send", json!([{"n": 2}])).await;
    assert_eq!(
        d.next_event("w", "discord:request-response").await,
        json!({"ok": true, "request_id": "req-2", "echo": {"n": 2}})
    );
    assert_eq!(requests.recv().await.unwrap()["data"], json!({"n": 2}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discord_request_without_an_answer_fails_with_the_documented_shape() {
    let (nats, _db, gw) = admin_gateway(&[("WIDGET__REQUEST_TIMEOUT_MS", "400".to_owned())]).await;
    let d = Driver::start().await;
    let key = gw.create_widget_key("Acme shop", &[ACME]).await;
    d.connect_ok(
        "w",
        Connect::to(&gw, "/widget")
            .auth(json!({"key": key}))
            .origin(ACME),
    )
    .await;

    let check = |r: &Value, codes: &[&str]| {
        assert_eq!(r["ok"], false, "{r}");
        let code = r["error"]["code"].as_str().unwrap_or_default();
        assert!(codes.contains(&code), "code {code:?} not in {codes:?}: {r}");
        assert!(
            r["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{r}"
        );
        assert_eq!(r.as_object().unwrap().len(), 2, "{r}");
        assert_eq!(r["error"].as_object().unwrap().len(), 2, "{r}");
        assert_schema("command-reply.schema.json", r);
    };

    // Nobody subscribed: `unavailable` (NATS reports no responders) or `timeout`.
    let nobody = d
        .emit_ack("w", "discord:request-send", json!([{"n": 1}]))
        .await;
    check(&nobody, &["unavailable", "timeout"]);
    assert_eq!(d.next_event("w", "discord:request-response").await, nobody);

    // A backend that never answers: `timeout`.
    let nc = async_nats::connect(nats.url()).await.unwrap();
    let mut silent = nc.subscribe("cmd.discord.request_send").await.unwrap();
    nats_sync(&nc).await;
    let started = std::time::Instant::now();
    let late = d
        .emit_ack("w", "discord:request-send", json!([{"n": 2}]))
        .await;
    check(&late, &["timeout"]);
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "it waited widget.request_timeout_ms"
    );
    let seen = silent.next().await.unwrap();
    assert_eq!(
        serde_json::from_slice::<Value>(&seen.payload).unwrap()["data"],
        json!({"n": 2})
    );
}

// ---------------------------------------------------------------------------------------------
// /stat
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stat_connects_without_auth_and_limits_new_connections_per_address() {
    let (_nats, _db, gw) = admin_gateway(&[("STAT__CONNECTIONS_PER_MINUTE", "2".to_owned())]).await;
    let d = Driver::start().await;
    d.connect_ok("s1", Connect::to(&gw, "/stat")).await;
    d.connect_ok("s2", Connect::to(&gw, "/stat").transports(&["polling"]))
        .await;
    assert_eq!(
        d.connect_err("s3", Connect::to(&gw, "/stat")).await,
        "too many connections from this address, retry later"
    );
    // The limit is on new connections, not on open ones.
    d.close("s1").await;
    assert_eq!(
        d.connect_err("s4", Connect::to(&gw, "/stat")).await,
        "too many connections from this address, retry later"
    );
    assert!(d.is_connected("s2").await);
}

// ---------------------------------------------------------------------------------------------
// /admin subscriptions and events
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_example_entity_subscription_relays_only_those_entities() {
    let (nats, _db, gw) = admin_gateway(&[]).await;
    let d = Driver::start().await;
    d.connect_admin("a", &gw).await;
    let ack = d
        .subscribe("a", json!({"entities": {"orders": [101], "deals": [555]}}))
        .await;
    assert_eq!(
        set(&ack["subscribed"]),
        strings(&["entity:orders:101", "entity:deals:555"]),
        "{ack}"
    );
    assert_eq!(ack["refused"], json!([]), "{ack}");
    assert_eq!(ack.as_object().unwrap().len(), 2, "{ack}");
    assert_schema("socketio-admin-subscribe-ack.schema.json", &ack);

    let p = publisher(&nats).await;
    let (published, got) =
        publish_until(&d, &p, "a", "orders_updated", || order_status_changed(101)).await;
    assert_eq!(
        got,
        json_of(&published),
        "the payload is the envelope as published"
    );
    assert_schema("envelope.schema.json", &got);
    assert_eq!(got["id"], published.id.to_string());
    assert_eq!(got["type"], "order.status_changed");
    assert_eq!(got["entity"], json!({"domain": "order", "id": "101"}));
    assert_eq!(
        d.next_matching("a", "orders_event_log", has_id(&published))
            .await,
        json_of(&published)
    );

    let deal = envelope("deal.status_changed", "555");
    p.publish(&deal).await.unwrap();
    assert_eq!(
        d.next_matching("a", "deals_updated", has_id(&deal)).await,
        json_of(&deal)
    );

    // Order 102 is not subscribed: nothing, proven by a later event for 101.
    let other = order_status_changed(102);
    p.publish(&other).await.unwrap();
    let marker = order_status_changed(101);
    p.publish(&marker).await.unwrap();
    d.next_matching("a", "orders_event_log", has_id(&marker))
        .await;
    d.assert_no_event(
        "a",
        "orders_updated",
        has_id(&other),
        "orders_updated",
        has_id(&marker),
    )
    .await;
    assert_eq!(d.count("a", "orders_event_log", has_id(&other)), 0);
    assert_eq!(
        d.count("a", "event_log_created", other_than(&marker)),
        0,
        "not subscribed to domain:event_log"
    );

    // In two matching rooms (entity and domain), an event still arrives once.
    assert_eq!(
        d.subscribe("a", json!({"domains": ["orders"]})).await,
        json!({"subscribed": ["domain:orders"], "refused": []})
    );
    let twice = order_status_changed(101);
    p.publish(&twice).await.unwrap();
    let marker = order_status_changed(103);
    p.publish(&marker).await.unwrap();
    d.next_matching("a", "orders_updated", has_id(&marker))
        .await;
    d.next_matching("a", "orders_event_log", has_id(&marker))
        .await;
    assert_eq!(
        d.count("a", "orders_updated", has_id(&twice)),
        1,
        "{}",
        d.dump("a")
    );
    assert_eq!(
        d.count("a", "orders_event_log", has_id(&twice)),
        1,
        "{}",
        d.dump("a")
    );
}

/// The seed's snippet as written: `io(...)` then `socket.emit('subscribe', ...)` at once, with
/// no ack callback and before the connection is up (socket.io-client sends it right after the
/// namespace CONNECT). Many sockets at once, so a gateway that registers its event handlers
/// after acknowledging the connection loses some of these.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_snippet_subscribe_emitted_before_connect_is_honoured() {
    const SOCKETS: usize = 24;
    let (nats, _db, gw) = admin_gateway(&[]).await;
    let d = Driver::start().await;
    let seed = json!([{"entities": {"orders": [101], "deals": [555]}}]);
    let names: Vec<String> = (0..SOCKETS).map(|i| format!("seed-{i}")).collect();
    let connects = names.iter().enumerate().map(|(i, name)| {
        let options = Connect::to(&gw, "/admin")
            .token(&admin_token(json!({})))
            .emit_early("subscribe", seed.clone(), i % 2 == 1);
        let d = &d;
        async move { d.connect_ok(name, options).await }
    });
    futures_util::future::join_all(connects).await;
    let expected = strings(&["entity:orders:101", "entity:deals:555"]);
    let mut lost = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let reply = if i % 2 == 1 {
            d.wait_pushed(name, "driver:ack", |v| *v == "subscribe", WAIT)
                .await
                .map(|p| p.args.get(1).cloned().unwrap_or(Value::Null))
        } else {
            d.wait_pushed(name, "subscribe:result", |_| true, WAIT)
                .await
                .map(|p| p.first())
        };
        match reply {
            Some(reply) => {
                assert_eq!(set(&reply["subscribed"]), expected, "{name}: {reply}");
                assert_eq!(reply["refused"], json!([]), "{name}: {reply}");
            }
            None => lost.push(name.clone()),
        }
    }
    assert!(
        lost.is_empty(),
        "{} of {SOCKETS} sockets got no reply to the subscribe they emitted before the \
         connection was up: {lost:?}",
        lost.len()
    );
    let p = publisher(&nats).await;
    let (published, _) = publish_until(&d, &p, &names[0], "orders_updated", || {
        order_status_changed(101)
    })
    .await;
    for name in &names[1..] {
        assert_eq!(
            d.next_matching(name, "orders_updated", has_id(&published))
                .await,
            json_of(&published)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn domain_event_log_and_channel_subscriptions() {
    let (nats, _db, gw) = admin_gateway(&[]).await;
    let d = Driver::start().await;
    for conn in ["orders", "log", "feed"] {
        d.connect_ok(
            conn,
            Connect::to(&gw, "/admin").token(&admin_token(json!({}))),
        )
        .await;
    }
    assert_eq!(
        d.subscribe("orders", json!({"domains": ["orders"]})).await,
        json!({"subscribed": ["domain:orders"], "refused": []})
    );
    assert_eq!(
        d.subscribe("log", json!({"domains": ["event_log"]})).await,
        json!({"subscribed": ["domain:event_log"], "refused": []})
    );
    assert_eq!(
        d.subscribe("feed", json!({"channels": ["ops_feed"]})).await,
        json!({"subscribed": ["channel:ops_feed"], "refused": []})
    );
    let p = publisher(&nats).await;
    publish_until(&d, &p, "log", "event_log_created", || {
        envelope("payout.created", "1")
    })
    .await;

    let o101 = order_status_changed(101);
    let o102 = order_status_changed(102);
    let deal = envelope("deal.created", "555");
    let fed = envelope("customer.updated", "9").with_audience(Audience {
        channel: Some(Token::new("channel", "ops_feed").unwrap()),
        ..Audience::default()
    });
    let marker = envelope("order.created", "104").with_audience(Audience {
        channel: Some(Token::new("channel", "ops_feed").unwrap()),
        ..Audience::default()
    });
    for e in [&o101, &o102, &deal, &fed, &marker] {
        p.publish(e).await.unwrap();
    }

    for e in [&o101, &o102] {
        assert_eq!(
            d.next_matching("orders", "orders_updated", has_id(e)).await,
            json_of(e)
        );
        d.next_matching("orders", "orders_event_log", has_id(e))
            .await;
    }
    for e in [&o101, &o102, &deal, &fed, &marker] {
        assert_eq!(
            d.next_matching("log", "event_log_created", has_id(e)).await,
            json_of(e),
            "event_log_created for every event"
        );
    }
    assert_eq!(
        d.next_matching("feed", "ops_feed_message", has_id(&fed))
            .await,
        json_of(&fed)
    );
    // Only events whose audience.channel is ops_feed reach the feed (marker is one, last).
    d.assert_no_event(
        "feed",
        "ops_feed_message",
        |v| v["entity"]["domain"] != "customer" && v["id"] != json!(marker.id.to_string()),
        "ops_feed_message",
        has_id(&marker),
    )
    .await;
    // Each socket got only what its rooms receive.
    d.next_matching("orders", "orders_updated", has_id(&marker))
        .await;
    // (The marker's own other emits may still be on their way: left out.)
    assert_eq!(d.count("orders", "deals_updated", |_| true), 0);
    assert_eq!(
        d.count("orders", "event_log_created", other_than(&marker)),
        0
    );
    assert_eq!(
        d.count("orders", "ops_feed_message", other_than(&marker)),
        0
    );
    assert_eq!(d.count("log", "orders_updated", other_than(&marker)), 0);
    assert_eq!(d.count("feed", "orders_updated", other_than(&marker)), 0);
    assert_eq!(d.count("feed", "event_log_created", other_than(&marker)), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsubscribe_stops_delivery() {
    let (nats, _db, gw) = admin_gateway(&[]).await;
    let d = Driver::start().await;
    d.connect_admin("a", &gw).await;
    let ack = d
        .subscribe("a", json!({"entities": {"orders": [101, 999]}}))
        .await;
    assert_eq!(
        set(&ack["subscribed"]),
        strings(&["entity:orders:101", "entity:orders:999"])
    );
    let p = publisher(&nats).await;
    publish_until(&d, &p, "a", "orders_updated", || order_status_changed(101)).await;

    let ack = d
        .emit_ack("a", "unsubscribe", json!([{"entities": {"orders": [101]}}]))
        .await;
    assert_eq!(
        ack,
        json!({"subscribed": ["entity:orders:101"], "refused": []})
    );
    let gone = order_status_changed(101);
    p.publish(&gone).await.unwrap();
    let marker = order_status_changed(999);
    p.publish(&marker).await.unwrap();
    d.assert_no_event(
        "a",
        "orders_updated",
        has_id(&gone),
        "orders_updated",
        has_id(&marker),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_without_an_ack_callback_emits_the_result() {
    let (_nats, _db, gw) = admin_gateway(&[]).await;
    let d = Driver::start().await;
    d.connect_admin("a", &gw).await;
    d.emit("a", "subscribe", json!([{"entities": {"orders": [7]}}]))
        .await;
    assert_eq!(
        d.next_event("a", "subscribe:result").await,
        json!({"subscribed": ["entity:orders:7"], "refused": []})
    );
    d.emit("a", "unsubscribe", json!([{"entities": {"orders": [7]}}]))
        .await;
    assert_eq!(
        d.next_event("a", "unsubscribe:result").await,
        json!({"subscribed": ["entity:orders:7"], "refused": []})
    );
    // With an ack callback, nothing is emitted besides the ack.
    d.subscribe("a", json!({"domains": ["deals"]})).await;
    d.emit("a", "subscribe", json!([{"domains": ["payouts"]}]))
        .await;
    assert_eq!(
        d.next_event("a", "subscribe:result").await,
        json!({"subscribed": ["domain:payouts"], "refused": []})
    );
    assert_eq!(d.count("a", "subscribe:result", |_| true), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_unknown_subscriptions_are_refused_and_the_socket_stays_usable() {
    let (nats, _db, gw) = admin_gateway(&[]).await;
    let d = Driver::start().await;
    d.connect_admin("a", &gw).await;
    for (what, payload) in [
        ("a string", json!("orders")),
        ("ids not a list", json!({"entities": {"orders": "x"}})),
        ("entities not a map", json!({"entities": ["orders"]})),
        ("domains not a list", json!({"domains": "orders"})),
        ("a number", json!(42)),
    ] {
        let reply = d.subscribe("a", json!(payload)).await;
        assert_payload_refused(&reply, what);
    }
    // Malformed without an ack callback: the refusal is emitted.
    d.emit("a", "subscribe", json!(["orders"])).await;
    assert_payload_refused(&d.next_event("a", "subscribe:result").await, "emitted");

    let reply = d.subscribe("a", json!({"domains": ["widgets"]})).await;
    assert_refused_one(&reply, "unknown domain", "unknown domain");
    assert!(
        reply["refused"][0]["target"]
            .as_str()
            .is_some_and(|t| t.contains("widgets")),
        "{reply}"
    );
    let reply = d
        .subscribe("a", json!({"entities": {"gadgets": [1]}}))
        .await;
    assert_refused_one(&reply, "unknown domain", "unknown entity domain");
    let reply = d
        .subscribe("a", json!({"entities": {"orders": ["not a valid id!"]}}))
        .await;
    assert_refused_one(&reply, "invalid id", "invalid id");
    let reply = d.subscribe("a", json!({"channels": ["ops feed!"]})).await;
    assert_refused_one(&reply, "invalid channel", "invalid channel");

    // Targets are refused one by one; the valid ones are joined.
    let reply = d
        .subscribe(
            "a",
            json!({"entities": {"orders": [101]}, "domains": ["widgets"]}),
        )
        .await;
    assert_eq!(reply["subscribed"], json!(["entity:orders:101"]), "{reply}");
    assert_eq!(reply["refused"].as_array().unwrap().len(), 1, "{reply}");
    assert_eq!(reply["refused"][0]["reason"], "unknown domain", "{reply}");

    let p = publisher(&nats).await;
    let (published, got) =
        publish_until(&d, &p, "a", "orders_updated", || order_status_changed(101)).await;
    assert_eq!(got, json_of(&published));
    assert!(d.is_connected("a").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_claim_limits_what_a_token_may_subscribe_to() {
    let (_nats, _db, gw) =
        admin_gateway(&[("ADMIN__SUBSCRIBE_CLAIM", "subscriptions".to_owned())]).await;
    let d = Driver::start().await;
    let connect = |name: &'static str, claim: Value| {
        let token = admin_token(json!({ "subscriptions": claim }));
        let d = &d;
        let gw = &gw;
        async move {
            d.connect_ok(name, Connect::to(gw, "/admin").token(&token))
                .await;
        }
    };
    connect("orders", json!(["orders"])).await;
    let reply = d
        .subscribe(
            "orders",
            json!({"entities": {"orders": [101], "deals": [555]}}),
        )
        .await;
    assert_eq!(
        reply,
        json!({"subscribed": ["entity:orders:101"], "refused": [{"target": "entity:deals:555", "reason": "forbidden"}]}),
        "the contract's example"
    );
    assert_schema("socketio-admin-subscribe-ack.schema.json", &reply);
    let reply = d.subscribe("orders", json!({"domains": ["deals"]})).await;
    assert_eq!(
        reply,
        json!({"subscribed": [], "refused": [{"target": "domain:deals", "reason": "forbidden"}]})
    );
    let reply = d
        .subscribe(
            "orders",
            json!({"domains": ["orders"], "channels": ["ops_feed"]}),
        )
        .await;
    assert_eq!(reply["subscribed"], json!(["domain:orders"]), "{reply}");
    assert_eq!(
        reply["refused"],
        json!([{"target": "channel:ops_feed", "reason": "forbidden"}])
    );

    // A space-separated string claim.
    connect("spaced", json!("deals channel:*")).await;
    let reply = d
        .subscribe(
            "spaced",
            json!({"entities": {"deals": [1]}, "channels": ["ops_feed"], "domains": ["orders"]}),
        )
        .await;
    assert_eq!(
        set(&reply["subscribed"]),
        strings(&["entity:deals:1", "channel:ops_feed"]),
        "{reply}"
    );
    assert_eq!(
        reply["refused"],
        json!([{"target": "domain:orders", "reason": "forbidden"}])
    );

    // `*`: everything.
    connect("star", json!(["*"])).await;
    let reply = d
        .subscribe(
            "star",
            json!({"domains": ["deals", "event_log"], "channels": ["ops_feed"]}),
        )
        .await;
    assert_eq!(
        set(&reply["subscribed"]),
        strings(&["domain:deals", "domain:event_log", "channel:ops_feed"])
    );
    assert_eq!(reply["refused"], json!([]));

    // Without the claim: nothing.
    d.connect_admin("none", &gw).await;
    let reply = d
        .subscribe("none", json!({"entities": {"orders": [1]}}))
        .await;
    assert_eq!(
        reply,
        json!({"subscribed": [], "refused": [{"target": "entity:orders:1", "reason": "forbidden"}]})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_subscriptions_limits_the_rooms_of_one_socket() {
    let (_nats, _db, gw) = admin_gateway(&[("ADMIN__MAX_SUBSCRIPTIONS", "3".to_owned())]).await;
    let d = Driver::start().await;
    d.connect_admin("a", &gw).await;
    let reply = d
        .subscribe("a", json!({"entities": {"orders": [1, 2]}}))
        .await;
    assert_eq!(set(&reply["subscribed"]).len(), 2, "{reply}");
    let reply = d
        .subscribe("a", json!({"domains": ["orders", "deals"]}))
        .await;
    assert_eq!(reply["subscribed"].as_array().unwrap().len(), 1, "{reply}");
    let refused = reply["refused"].as_array().unwrap();
    assert_eq!(refused.len(), 1, "{reply}");
    assert_eq!(refused[0]["reason"], "too many subscriptions", "{reply}");
    // Leaving a room makes space again.
    d.emit_ack("a", "unsubscribe", json!([{"entities": {"orders": [1]}}]))
        .await;
    let reply = d.subscribe("a", json!({"entities": {"orders": [3]}})).await;
    assert_eq!(
        reply,
        json!({"subscribed": ["entity:orders:3"], "refused": []})
    );
}

// ---------------------------------------------------------------------------------------------
// Scale-out, transports, metrics
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_each_deliver_an_event_exactly_once() {
    let (nats, db) = backends().await;
    let env = [("METRICS__INTERVAL_SECS", "1".to_owned())];
    let one = Gateway::start(&nats, &db, &env).await;
    let two = Gateway::start(&nats, &db, &env).await;
    let d = Driver::start().await;
    for (conn, gw) in [("on-one", &one), ("on-two", &two)] {
        d.connect_ok(
            conn,
            Connect::to(gw, "/admin").token(&admin_token(json!({}))),
        )
        .await;
        assert_eq!(
            d.emit_ack(conn, "subscribe", json!([{"entities": {"orders": [101]}}]))
                .await,
            json!({"subscribed": ["entity:orders:101"], "refused": []})
        );
    }
    let p = publisher(&nats).await;
    for conn in ["on-one", "on-two"] {
        publish_until(&d, &p, conn, "orders_updated", || order_status_changed(101)).await;
    }

    let event = order_status_changed(101);
    p.publish(&event).await.unwrap();
    let marker = order_status_changed(101);
    p.publish(&marker).await.unwrap();
    for conn in ["on-one", "on-two"] {
        assert_eq!(
            d.next_matching(conn, "orders_updated", has_id(&event))
                .await,
            json_of(&event)
        );
        d.next_matching(conn, "orders_updated", has_id(&marker))
            .await;
        d.next_matching(conn, "orders_event_log", has_id(&marker))
            .await;
        assert_eq!(
            d.count(conn, "orders_updated", has_id(&event)),
            1,
            "{}",
            d.dump(conn)
        );
        assert_eq!(
            d.count(conn, "orders_event_log", has_id(&event)),
            1,
            "{}",
            d.dump(conn)
        );
    }

    // The cluster-wide counts sum both instances.
    let metrics = d
        .next_matching("on-one", "socket_metrics_updated", |v| {
            v["instances"] == 2 && v["namespaces"]["admin"] == 2
        })
        .await;
    assert_eq!(metrics["total"], 2, "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_polling_transport_round_trip() {
    let (nats, _db, gw) = admin_gateway(&[]).await;
    let d = Driver::start().await;
    let connected = d
        .connect_ok(
            "poll",
            Connect::to(&gw, "/admin")
                .token(&admin_token(json!({})))
                .transports(&["polling"]),
        )
        .await;
    assert_eq!(connected.transport, "polling");
    assert_eq!(
        d.subscribe("poll", json!({"entities": {"orders": [101]}}))
            .await,
        json!({"subscribed": ["entity:orders:101"], "refused": []})
    );
    let p = publisher(&nats).await;
    let (published, got) = publish_until(&d, &p, "poll", "orders_updated", || {
        order_status_changed(101)
    })
    .await;
    assert_eq!(got, json_of(&published));
    d.emit("poll", "subscribe", json!([{"domains": ["deals"]}]))
        .await;
    assert_eq!(
        d.next_event("poll", "subscribe:result").await,
        json!({"subscribed": ["domain:deals"], "refused": []})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_metrics_updated_reaches_admin_sockets() {
    let (_nats, _db, gw) = admin_gateway(&[("METRICS__INTERVAL_SECS", "1".to_owned())]).await;
    let d = Driver::start().await;
    d.connect_ok("stat", Connect::to(&gw, "/stat")).await;
    d.connect_admin("a", &gw).await;
    let metrics = d
        .next_matching("a", "socket_metrics_updated", |v| {
            v["namespaces"]["admin"].as_i64() >= Some(1)
                && v["namespaces"]["stat"].as_i64() >= Some(1)
        })
        .await;
    assert_schema("socketio-socket-metrics.schema.json", &metrics);
    let ns = metrics["namespaces"].as_object().unwrap();
    let names: BTreeSet<&str> = ns.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        BTreeSet::from(["admin", "provider", "widget", "stat"]),
        "{metrics}"
    );
    assert_eq!(metrics["namespaces"]["admin"], 1, "{metrics}");
    assert_eq!(metrics["namespaces"]["stat"], 1, "{metrics}");
    let sum: i64 = ns.values().map(|v| v.as_i64().unwrap()).sum();
    assert_eq!(metrics["total"], sum, "{metrics}");
    assert_eq!(metrics["instances"], 1, "{metrics}");
    time::OffsetDateTime::parse(
        metrics["updated_at"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap_or_else(|e| panic!("updated_at is RFC 3339: {metrics}: {e}"));
}

// ---------------------------------------------------------------------------------------------
// Shutdown and CORS
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_turns_not_ready_and_disconnects_every_socket() {
    let (_nats, _db, gw) = admin_gateway(&[]).await;
    let d = Driver::start().await;
    d.connect_admin("ws", &gw).await;
    d.connect_ok(
        "poll",
        Connect::to(&gw, "/admin")
            .token(&admin_token(json!({})))
            .transports(&["polling"]),
    )
    .await;
    d.connect_ok("stat", Connect::to(&gw, "/stat")).await;

    gw.shutdown.cancel();
    for conn in ["ws", "poll", "stat"] {
        let gone = d.next_pushed(conn, "disconnect", |_| true).await;
        // The transport is closed (not a Socket.IO-level disconnect): socket.io-client
        // reconnects by itself on this reason, to whichever instance takes it.
        assert_eq!(gone.first(), "transport close", "{conn}");
    }
    let mut gw = gw;
    let finished = tokio::time::timeout(WAIT, &mut gw.task).await;
    assert!(
        matches!(finished, Ok(Ok(Ok(())))),
        "the gateway returned Ok within the grace period: {finished:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_allows_configured_origins_only() {
    let (_nats, _db, gw) = admin_gateway(&[(
        "SOCKETIO__CORS_ORIGINS",
        "[\"https://crm.example\"]".to_owned(),
    )])
    .await;
    let client = http_client();
    let handshake = gw.url("/socket.io/?EIO=4&transport=polling");
    let preflight = |origin: &'static str| {
        client
            .request(reqwest::Method::OPTIONS, &handshake)
            .header("Origin", origin)
            .header("Access-Control-Request-Method", "POST")
            .send()
    };
    let allowed = preflight("https://crm.example").await.unwrap();
    assert_eq!(
        allowed.headers()["access-control-allow-origin"],
        "https://crm.example"
    );
    let other = preflight("https://evil.example").await.unwrap();
    assert!(
        !other.headers().contains_key("access-control-allow-origin"),
        "{:?}",
        other.headers()
    );

    // The Engine.IO handshake itself answers with the header for the allowed origin.
    let open = client
        .get(&handshake)
        .header("Origin", "https://crm.example")
        .send()
        .await
        .unwrap();
    assert_eq!(open.status(), 200);
    assert_eq!(
        open.headers()["access-control-allow-origin"],
        "https://crm.example"
    );
    assert!(open.text().await.unwrap().starts_with("0{"));
}
