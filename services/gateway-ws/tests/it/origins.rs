//! Which pages may open `/ws`: the `Origin` check.

use serde_json::json;
use test_support::NatsServer;

use crate::harness::*;

#[tokio::test]
async fn cross_site_origins_are_refused_and_same_origin_or_no_origin_connects() {
    let nats = NatsServer::start();
    let (db, pool) = pg_sessions().await;
    let gw = pg_gateway(&nats, &db, &[]).await;
    let sid = random_sid();
    put_pg_session(&pool, &sid, session_json(json!(1)), 3600).await;
    let cookie = cookie_for(&sid);
    // tungstenite sends `Host: 127.0.0.1:<port>`; a page served from there is same-origin,
    // whatever its scheme (TLS may end at a proxy in front).
    let port = gw.addr.port();
    for origin in [
        format!("http://{}", gw.addr),
        format!("https://{}", gw.addr),
        format!("HTTP://127.0.0.1:{port}"),
    ] {
        let mut client = gw.connect_with(Some(&cookie), &[("origin", &origin)]).await;
        assert_eq!(
            outcome(&mut client).await.unwrap()["type"],
            "connected",
            "{origin}"
        );
    }
    // Not a browser: no Origin, nothing to hijack.
    let mut client = gw.connect(Some(&cookie)).await;
    assert_eq!(outcome(&mut client).await.unwrap()["type"], "connected");

    for origin in [
        "https://evil.example".to_owned(),
        format!("http://localhost:{port}"),
        format!("http://127.0.0.1:{}", port.wrapping_add(1)),
        format!("http://{}.evil.example", gw.addr.ip()),
        "null".to_owned(),
        "not an origin".to_owned(),
    ] {
        let mut client = gw.connect_with(Some(&cookie), &[("origin", &origin)]).await;
        let (code, reason) = outcome(&mut client).await.unwrap_err();
        assert_eq!(code, 1008, "{origin}");
        assert_eq!(reason, "origin not allowed", "{origin}");
    }
    assert!(
        gw.metrics()
            .await
            .contains(r#"ws_auth_failures_total{reason="origin"}"#)
    );
}

#[tokio::test]
async fn allowed_origins_replace_the_same_origin_default() {
    let nats = NatsServer::start();
    let (db, pool) = pg_sessions().await;
    let gw = pg_gateway(
        &nats,
        &db,
        &[(
            "SECURITY__ALLOWED_ORIGINS",
            r#"["https://crm.example.com", "http://localhost:3000"]"#.to_owned(),
        )],
    )
    .await;
    let sid = random_sid();
    put_pg_session(&pool, &sid, session_json(json!(1)), 3600).await;
    let cookie = cookie_for(&sid);
    for origin in [
        "https://crm.example.com",
        "https://CRM.example.com:443",
        "http://localhost:3000",
    ] {
        let mut client = gw.connect_with(Some(&cookie), &[("origin", origin)]).await;
        assert_eq!(
            outcome(&mut client).await.unwrap()["type"],
            "connected",
            "{origin}"
        );
    }
    let mut client = gw.connect(Some(&cookie)).await;
    assert_eq!(outcome(&mut client).await.unwrap()["type"], "connected");

    let same_origin = format!("http://{}", gw.addr);
    for origin in [
        "http://crm.example.com",
        "https://crm.example.com:8443",
        "https://crm.example.com.evil.example",
        "http://localhost:3001",
        same_origin.as_str(),
    ] {
        let mut client = gw.connect_with(Some(&cookie), &[("origin", origin)]).await;
        let (code, reason) = outcome(&mut client).await.unwrap_err();
        assert_eq!(
            (code, reason.as_str()),
            (1008, "origin not allowed"),
            "{origin}"
        );
    }
}
