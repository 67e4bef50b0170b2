//! `/provider` handshakes: Logto tokens against the issuer's JWKS, key rotation, the refetch
//! rate and an unreachable or missing JWKS.

use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{Value, json};

use crate::common::*;

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
