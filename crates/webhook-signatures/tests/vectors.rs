//! The shared test vectors (`shared/vectors.json`, computed with the reference packages) as
//! fixed expectations: each valid vector passes, every one-byte change of its body fails, a
//! stale timestamp fails, and a header with several signatures passes when one matches.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use http::{HeaderMap, HeaderValue};
use serde::Deserialize;
use webhook_signatures::{Tolerance, VerifyError, github, standard, stripe};

#[derive(Deserialize)]
struct Vectors {
    stripe: Vec<Stripe>,
    github: Vec<Github>,
    standard_webhooks: Vec<Standard>,
}

#[derive(Deserialize)]
struct Stripe {
    secret: String,
    timestamp: i64,
    body: String,
    header: String,
}

#[derive(Deserialize)]
struct Github {
    secret: String,
    body: String,
    header: String,
}

#[derive(Deserialize)]
struct Standard {
    secret: String,
    id: String,
    timestamp: i64,
    body: String,
    signature: String,
}

fn vectors() -> Vectors {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/vectors.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

/// Every copy of `body` with one byte changed.
fn flipped(body: &str) -> impl Iterator<Item = Vec<u8>> + '_ {
    (0..body.len()).map(move |i| {
        let mut bytes = body.as_bytes().to_vec();
        bytes[i] ^= 0x01;
        bytes
    })
}

fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.insert(*name, HeaderValue::from_str(value).unwrap());
    }
    map
}

const TOL: Tolerance = Tolerance::DEFAULT;

#[test]
fn stripe_vectors() {
    let vectors = vectors().stripe;
    assert!(!vectors.is_empty());
    for v in vectors {
        let (key, body, t) = (v.secret.as_bytes(), v.body.as_bytes(), v.timestamp);
        assert_eq!(
            stripe::sign(key, t, body),
            v.header,
            "our signing matches the vector"
        );
        let request = headers(&[("stripe-signature", &v.header)]);
        assert_eq!(stripe::verify(key, &request, body, t, TOL), Ok(()));
        assert_eq!(stripe::verify(key, &request, body, t + 300, TOL), Ok(()));
        assert_eq!(stripe::verify(key, &request, body, t - 300, TOL), Ok(()));
        for changed in flipped(&v.body) {
            assert_eq!(
                stripe::verify(key, &request, &changed, t, TOL),
                Err(VerifyError::Mismatch)
            );
        }
        assert_eq!(
            stripe::verify(key, &request, body, t + 301, TOL),
            Err(VerifyError::StaleTimestamp)
        );
        assert_eq!(
            stripe::verify(key, &request, body, t - 301, TOL),
            Err(VerifyError::StaleTimestamp)
        );
        // A rotation: the old secret's signature first, then the matching one.
        let old = stripe::signature(b"whsec_previous", t, body);
        let real = v.header.split_once(",v1=").unwrap().1;
        let rotated = format!("t={t},v1={old},v0=ignored,v1={real}");
        assert_eq!(stripe::verify_header(key, &rotated, body, t, TOL), Ok(()));
        let none_match = format!("t={t},v1={old}");
        assert_eq!(
            stripe::verify_header(key, &none_match, body, t, TOL),
            Err(VerifyError::Mismatch)
        );
    }
}

#[test]
fn github_vectors() {
    let vectors = vectors().github;
    assert!(!vectors.is_empty());
    for v in vectors {
        let (key, body) = (v.secret.as_bytes(), v.body.as_bytes());
        assert_eq!(github::sign(key, body), v.header);
        let request = headers(&[("x-hub-signature-256", &v.header)]);
        assert_eq!(github::verify(key, &request, body), Ok(()));
        for changed in flipped(&v.body) {
            assert_eq!(
                github::verify(key, &request, &changed),
                Err(VerifyError::Mismatch)
            );
        }
        assert_eq!(
            github::verify(b"wrong secret", &request, body),
            Err(VerifyError::Mismatch)
        );
    }
}

#[test]
fn standard_webhooks_vectors() {
    let vectors = vectors().standard_webhooks;
    assert!(!vectors.is_empty());
    for v in vectors {
        let key = standard::SigningKey::parse(&v.secret).unwrap();
        let (body, t) = (v.body.as_bytes(), v.timestamp);
        assert_eq!(standard::sign(&key, &v.id, t, body), v.signature);
        let ts = t.to_string();
        let request = headers(&[
            ("webhook-id", &v.id),
            ("webhook-timestamp", &ts),
            ("webhook-signature", &v.signature),
        ]);
        assert_eq!(standard::verify(&key, &request, body, t, TOL), Ok(()));
        for changed in flipped(&v.body) {
            assert_eq!(
                standard::verify(&key, &request, &changed, t, TOL),
                Err(VerifyError::Mismatch)
            );
        }
        assert_eq!(
            standard::verify(&key, &request, body, t + 301, TOL),
            Err(VerifyError::StaleTimestamp)
        );
        assert_eq!(
            standard::verify(&key, &request, body, t - 301, TOL),
            Err(VerifyError::StaleTimestamp)
        );
        let other = standard::SigningKey::from_bytes(b"previous secret bytes".to_vec());
        let old = standard::sign(&other, &v.id, t, body);
        let rotated = format!("{old} v1a,c2lnbmF0dXJl {}", v.signature);
        assert_eq!(
            standard::verify_parts(&key, &v.id, &ts, &rotated, body, t, TOL),
            Ok(())
        );
        assert_eq!(
            standard::verify_parts(&key, &v.id, &ts, &old, body, t, TOL),
            Err(VerifyError::Mismatch)
        );
        // The id is signed too.
        assert_eq!(
            standard::verify_parts(&key, "msg_other", &ts, &v.signature, body, t, TOL),
            Err(VerifyError::Mismatch)
        );
    }
}
