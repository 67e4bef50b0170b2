//! Credentials at rest: unreadable in the row, and key rotation through configuration.

use integrations_runner::model::{AuthSecret, Credentials, Id};
use serde_json::json;
use sqlx::Row;
use test_support::{NatsServer, TestDatabase};

use crate::common::{Runner, TOKEN, keys, twitter};

#[tokio::test]
async fn credentials_are_unreadable_in_the_database_row() {
    let (nats, db) = (NatsServer::start(), TestDatabase::create().await);
    let runner = Runner::start(&nats, &db, &[]).await;
    let id = "aaaaaaaaaaaaaaaaaaaaaaaa";
    assert_eq!(
        runner.api().post("/v1/integrations", &twitter(id)).await.0,
        201
    );

    let pool = sqlx::PgPool::connect(db.url()).await.unwrap();
    let row = sqlx::query("SELECT secrets, secrets_key_id, to_jsonb(i)::text AS whole FROM integrations i WHERE id = $1")
        .bind(id)
        .fetch_one(&pool)
        .await
        .unwrap();
    let blob: Vec<u8> = row.get("secrets");
    let whole: String = row.get("whole");
    assert_eq!(row.get::<String, _>("secrets_key_id"), "k1");
    for secret in [TOKEN, "gh-webhook-secret-xyz"] {
        assert!(!blob.windows(secret.len()).any(|w| w == secret.as_bytes()));
        assert!(!whole.contains(secret), "{whole}");
        // Not in the hex text of the bytea either.
        let hex: String = secret.bytes().map(|b| format!("{b:02x}")).collect();
        assert!(!whole.contains(&hex));
    }
    assert!(blob.len() > 12 + 16);

    // A sealed blob copied onto another row does not open (the id is the associated data).
    assert_eq!(
        runner
            .api()
            .post("/v1/integrations", &twitter("bbbbbbbbbbbbbbbbbbbbbbbb"))
            .await
            .0,
        201
    );
    sqlx::query("UPDATE integrations SET secrets = $1 WHERE id = 'bbbbbbbbbbbbbbbbbbbbbbbb'")
        .bind(&blob)
        .execute(&pool)
        .await
        .unwrap();
    let store = store(&pool, &[("k1", 1)], "k1");
    assert!(
        store
            .load_for_execution(&Id::parse("bbbbbbbbbbbbbbbbbbbbbbbb").unwrap())
            .await
            .is_err()
    );
    let (_, secrets) = store
        .load_for_execution(&Id::parse(id).unwrap())
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(&secrets.auth, Some(AuthSecret::Token { token }) if token.expose() == TOKEN));
    runner.stop().await;
}

fn store(
    pool: &sqlx::PgPool,
    ks: &[(&str, u8)],
    active: &str,
) -> integrations_runner::store::Store {
    let config: integrations_runner::crypto::CryptoConfig = serde_json::from_value(json!({
        "keys": ks.iter().map(|(id, b)| json!({"id": id, "key": base64_key(*b)})).collect::<Vec<_>>(),
        "active_key_id": active,
    }))
    .unwrap();
    integrations_runner::store::Store::new(
        pool.clone(),
        integrations_runner::crypto::Keyring::from_config(&config).unwrap(),
    )
}

fn base64_key(b: u8) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode([b; 32])
}

#[tokio::test]
async fn keys_rotate_through_configuration() {
    let (nats, db) = (NatsServer::start(), TestDatabase::create().await);
    let old = "cccccccccccccccccccccccc";
    let new = "dddddddddddddddddddddddd";
    let runner = Runner::start(&nats, &db, &[]).await;
    let (_, created) = runner.api().post("/v1/integrations", &twitter(old)).await;
    assert_eq!(created["credentials"]["keyId"], "k1");
    runner.stop().await;

    let rotated = [
        ("CRYPTO__KEYS", keys(&[("k1", 1), ("k2", 2)])),
        ("CRYPTO__ACTIVE_KEY_ID", "k2".to_owned()),
    ];
    let runner = Runner::start(&nats, &db, &rotated).await;
    let api = runner.api();
    let (_, created) = api.post("/v1/integrations", &twitter(new)).await;
    assert_eq!(created["credentials"]["keyId"], "k2");
    let (_, kept) = api.get(&format!("/v1/integrations/{old}")).await;
    assert_eq!(kept["credentials"]["keyId"], "k1");
    // New secrets on the old row are sealed with the active key.
    let (status, patched) = api
        .patch(
            &format!("/v1/integrations/{old}"),
            &json!({"auth": {"type": "bearer", "token": "a-rotated-token-123"}}),
        )
        .await;
    assert_eq!(status, 200, "{patched}");
    assert_eq!(patched["credentials"]["keyId"], "k2");
    runner.stop().await;

    let pool = sqlx::PgPool::connect(db.url()).await.unwrap();
    let both = store(&pool, &[("k1", 1), ("k2", 2)], "k2");
    let (integration, secrets) = both
        .load_for_execution(&Id::parse(new).unwrap())
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(integration.credentials(&secrets).unwrap(), Credentials::Bearer(t) if t == TOKEN)
    );
    let (integration, secrets) = both
        .load_for_execution(&Id::parse(old).unwrap())
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(
        integration.credentials(&secrets).unwrap(),
        Credentials::Bearer("a-rotated-token-123")
    ));
    // Without k2 the new rows no longer open: the key is really used.
    let only_k1 = store(&pool, &[("k1", 1)], "k1");
    assert!(
        only_k1
            .load_for_execution(&Id::parse(new).unwrap())
            .await
            .is_err()
    );
}
