//! Connection caps, message size and rate limits, and the client address behind proxies.

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use test_support::{NatsServer, WAIT, eventually};
use tokio_tungstenite::tungstenite::Message;

use crate::harness::*;

#[tokio::test]
async fn connection_and_message_limits_are_enforced() {
    let nats = NatsServer::start();
    let (db, pool) = pg_sessions().await;
    let gw = pg_gateway(
        &nats,
        &db,
        &[
            ("LIMITS__MAX_CONNECTIONS_PER_IP", "2".to_owned()),
            ("LIMITS__MESSAGES_PER_SECOND", "5".to_owned()),
        ],
    )
    .await;
    let sid = random_sid();
    put_pg_session(&pool, &sid, session_json(json!(1)), 3600).await;
    let cookie = cookie_for(&sid);
    let mut first = gw.connect(Some(&cookie)).await;
    let mut second = gw.connect(Some(&cookie)).await;
    next_json(&mut first).await;
    next_json(&mut second).await;
    let mut third = gw.connect(Some(&cookie)).await;
    let (code, reason) = expect_close(&mut third).await;
    assert_eq!(
        (code, reason.contains("too many connections")),
        (1008, true),
        "{reason}"
    );

    // Burst of 10 allowed (2 x 5/s), then errors, then a close for persistent abuse.
    for _ in 0..40 {
        if first
            .send(Message::Text(r#"{"type":"ping"}"#.into()))
            .await
            .is_err()
        {
            break;
        }
    }
    let mut pongs = 0;
    let mut limited = 0;
    let code = loop {
        match tokio::time::timeout(WAIT, first.next()).await.unwrap() {
            Some(Ok(Message::Text(t))) => {
                let v: Value = serde_json::from_str(&t).unwrap();
                if v["type"] == "pong" {
                    pongs += 1
                } else if v["message"].as_str().unwrap_or("").contains("rate limit") {
                    limited += 1
                }
            }
            Some(Ok(Message::Close(Some(f)))) => break u16::from(f.code),
            other => panic!("{other:?}"),
        }
    };
    assert!((10..=12).contains(&pongs), "{pongs}");
    assert!(limited >= 1);
    assert_eq!(code, 1008);
    // The slot freed by the closed connection can be used again.
    drop(first);
    let mut again = eventually("a free slot", || {
        let gw = &gw;
        let cookie = cookie.clone();
        async move {
            let mut c = gw.connect(Some(&cookie)).await;
            match tokio::time::timeout(WAIT, c.next()).await.ok()?? {
                Ok(Message::Text(t)) if t.contains("connected") => Some(c),
                _ => None,
            }
        }
    })
    .await;
    ping(&mut again).await;
}

#[tokio::test]
async fn a_forged_forwarded_for_is_counted_under_the_real_client_address() {
    let nats = NatsServer::start();
    let (db, pool) = pg_sessions().await;
    let gw = pg_gateway(
        &nats,
        &db,
        &[
            ("LIMITS__MAX_CONNECTIONS_PER_IP", "2".to_owned()),
            ("LIMITS__TRUST_FORWARDED_FOR", "true".to_owned()),
            ("LIMITS__TRUSTED_PROXIES", r#"["127.0.0.0/8"]"#.to_owned()),
        ],
    )
    .await;
    let sid = random_sid();
    put_pg_session(&pool, &sid, session_json(json!(1)), 3600).await;
    let cookie = cookie_for(&sid);
    // The test client plays the trusted proxy on 127.0.0.1. The attacker at 198.51.100.9 sent
    // an `X-Forwarded-For` of its own choosing; the proxy appended the address it saw.
    let (victim, real) = ("203.0.113.7", "198.51.100.9");
    let mut attacker = Vec::new();
    for forged in [victim, "192.0.2.1", "192.0.2.2"] {
        let chain = format!("{forged}, {real}");
        attacker.push(
            gw.connect_with(Some(&cookie), &[("x-forwarded-for", &chain)])
                .await,
        );
    }
    assert_eq!(
        outcome(&mut attacker[0]).await.unwrap()["type"],
        "connected"
    );
    assert_eq!(
        outcome(&mut attacker[1]).await.unwrap()["type"],
        "connected"
    );
    // Varying the forged part does not dodge the attacker's own cap...
    let (code, reason) = outcome(&mut attacker[2]).await.unwrap_err();
    assert_eq!(
        (code, reason.as_str()),
        (1008, "too many connections from this address")
    );
    // ...and naming the victim did not use up the victim's.
    for _ in 0..2 {
        let mut client = gw
            .connect_with(Some(&cookie), &[("x-forwarded-for", victim)])
            .await;
        assert_eq!(outcome(&mut client).await.unwrap()["type"], "connected");
        attacker.push(client);
    }
}
