//! Handshake authentication by session cookie, and revalidation of connected sessions.

use std::time::Duration;

use gateway_ws::cookie::sign;
use serde_json::{Value, json};
use test_support::NatsServer;

use crate::harness::*;

#[tokio::test]
async fn redis_session_cookie_connects_with_the_passport_user() {
    let nats = NatsServer::start();
    let redis_url =
        std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    let gw = Gateway::start(
        &nats,
        &[
            ("SESSION__STORE", "redis".to_owned()),
            ("SESSION__REDIS_URL", redis_url.clone()),
        ],
    )
    .await;
    let sid = random_sid();
    let mut redis = redis::Client::open(redis_url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let sess = json!({"cookie": {"originalMaxAge": 3_600_000, "httpOnly": true, "path": "/"}, "passport": {"user": "u-42"}});
    // connect-redis: SET sess:<sid> <json> EX <ttl>
    let _: () = redis::cmd("SET")
        .arg(format!("sess:{sid}"))
        .arg(sess.to_string())
        .arg("EX")
        .arg(3600)
        .query_async(&mut redis)
        .await
        .unwrap();

    let mut client = gw.connect(Some(&cookie_for(&sid))).await;
    assert_eq!(next_json(&mut client).await["userId"], "u-42");

    let mut unknown = gw.connect(Some(&cookie_for(&random_sid()))).await;
    assert_eq!(expect_close(&mut unknown).await.0, 1008);

    let _: () = redis::cmd("DEL")
        .arg(format!("sess:{sid}"))
        .query_async(&mut redis)
        .await
        .unwrap();
}

#[tokio::test]
async fn missing_forged_unknown_and_expired_sessions_close_with_1008_before_anything_else() {
    let nats = NatsServer::start();
    let (db, pool) = pg_sessions().await;
    let gw = pg_gateway(&nats, &db, &[]).await;
    let expired = random_sid();
    put_pg_session(&pool, &expired, session_json(json!(7)), -60).await;
    let good = random_sid();
    put_pg_session(&pool, &good, session_json(json!(7)), 3600).await;
    let forged = cookie_for(&good).replace("connect.sid=s%3A", "connect.sid=s%3AX");
    let wrong_secret = format!(
        "connect.sid={}",
        sign(&good, b"not the secret").replace(':', "%3A")
    );
    let no_user = random_sid();
    put_pg_session(&pool, &no_user, json!({"cookie": {}}), 3600).await;

    for (cookie, reason) in [
        (None, "authentication required"),
        (
            Some("connect.sid=garbage".to_owned()),
            "invalid session cookie",
        ),
        (Some(forged), "invalid session cookie"),
        (Some(wrong_secret), "invalid session cookie"),
        (
            Some(cookie_for(&random_sid())),
            "session not found or expired",
        ),
        (Some(cookie_for(&expired)), "session not found or expired"),
        (Some(cookie_for(&no_user)), "session has no user"),
    ] {
        let mut client = gw.connect(cookie.as_deref()).await;
        let (code, text) = expect_close(&mut client).await;
        assert_eq!(code, 1008, "{cookie:?}");
        assert!(text.contains(reason), "{cookie:?}: {text}");
    }
    assert!(gw.metrics().await.contains("ws_auth_failures_total"));
}

#[tokio::test]
async fn a_destroyed_session_is_disconnected_with_1008_within_the_bound() {
    let nats = NatsServer::start();
    let (db, pool) = pg_sessions().await;
    let gw = pg_gateway(&nats, &db, &[("SESSION__REVALIDATE_SECS", "1".to_owned())]).await;
    let (gone, stays) = (random_sid(), random_sid());
    put_pg_session(&pool, &gone, session_json(json!(1)), 3600).await;
    put_pg_session(&pool, &stays, session_json(json!(2)), 3600).await;
    let mut doomed = gw.connect(Some(&cookie_for(&gone))).await;
    let mut kept = gw.connect(Some(&cookie_for(&stays))).await;
    next_json(&mut doomed).await;
    next_json(&mut kept).await;

    sqlx::query(r#"DELETE FROM "session" WHERE sid = $1"#)
        .bind(&gone)
        .execute(&pool)
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let (code, reason) = expect_close(&mut doomed).await;
    assert_eq!(code, 1008);
    assert!(reason.contains("session"), "{reason}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    ping(&mut kept).await;
}

/// Rewrites sessions the way express-session does on logout-in-place or a login as someone
/// else, and checks that revalidation re-reads the user, not only that the session exists.
async fn sessions_that_lose_their_user_are_disconnected(
    gw: &Gateway,
    mut put: impl AsyncFnMut(&str, Value),
) {
    let (logout, switched, touched) = (random_sid(), random_sid(), random_sid());
    for sid in [&logout, &switched, &touched] {
        put(sid, session_json(json!(1))).await;
    }
    let mut logged_out = gw.connect(Some(&cookie_for(&logout))).await;
    let mut other_user = gw.connect(Some(&cookie_for(&switched))).await;
    let mut kept = gw.connect(Some(&cookie_for(&touched))).await;
    for c in [&mut logged_out, &mut other_user, &mut kept] {
        assert_eq!(next_json(c).await["userId"], 1);
    }

    put(
        &logout,
        json!({"cookie": {"originalMaxAge": 86_400_000, "path": "/"}}),
    )
    .await;
    put(&switched, session_json(json!(2))).await;
    put(&touched, session_json(json!(1))).await;
    let started = std::time::Instant::now();
    assert_eq!(
        expect_close(&mut logged_out).await,
        (1008, "session has no user".to_owned())
    );
    assert_eq!(
        expect_close(&mut other_user).await,
        (1008, "session user changed".to_owned())
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    ping(&mut kept).await;
}

#[tokio::test]
async fn a_pg_session_that_loses_its_user_is_disconnected_with_1008_within_the_bound() {
    let nats = NatsServer::start();
    let (db, pool) = pg_sessions().await;
    let gw = pg_gateway(&nats, &db, &[("SESSION__REVALIDATE_SECS", "1".to_owned())]).await;
    sessions_that_lose_their_user_are_disconnected(&gw, async |sid, sess| {
        put_pg_session(&pool, sid, sess, 3600).await;
    })
    .await;
}

#[tokio::test]
async fn a_redis_session_that_loses_its_user_is_disconnected_with_1008_within_the_bound() {
    let nats = NatsServer::start();
    let redis_url =
        std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    let gw = Gateway::start(
        &nats,
        &[
            ("SESSION__STORE", "redis".to_owned()),
            ("SESSION__REDIS_URL", redis_url.clone()),
            ("SESSION__REVALIDATE_SECS", "1".to_owned()),
        ],
    )
    .await;
    let mut redis = redis::Client::open(redis_url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let mut written = Vec::new();
    sessions_that_lose_their_user_are_disconnected(&gw, async |sid, sess| {
        // connect-redis: SET sess:<sid> <json> EX <ttl>
        let _: () = redis::cmd("SET")
            .arg(format!("sess:{sid}"))
            .arg(sess.to_string())
            .arg("EX")
            .arg(3600)
            .query_async(&mut redis)
            .await
            .unwrap();
        written.push(format!("sess:{sid}"));
    })
    .await;
    let _: () = redis::cmd("DEL")
        .arg(&written)
        .query_async(&mut redis)
        .await
        .unwrap();
}
