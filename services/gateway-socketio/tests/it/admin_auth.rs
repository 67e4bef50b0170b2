//! `/admin` handshakes: pinned algorithms (HS256, RS256, ES256), the exact refusal messages,
//! and the disconnect when a token expires.

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{Value, json};

use crate::common::*;

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
