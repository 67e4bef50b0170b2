//! Abuse cases, end to end: oversized WebSocket messages, amplifying subscribe payloads,
//! connection caps, the client address behind proxies, unknown widget keys, the Discord
//! request rate and tokens missing a configured `iss`/`aud`.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{Value, json};
use test_support::{WAIT, eventually};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::*;

/// The gateway believes `X-Forwarded-For` from the test client (127.0.0.1), as it would from
/// the edge proxy in front of it.
fn behind_local_proxy() -> Vec<(&'static str, String)> {
    vec![
        ("LIMITS__TRUST_FORWARDED_FOR", "true".to_owned()),
        ("LIMITS__TRUSTED_PROXIES", r#"["127.0.0.1/32"]"#.to_owned()),
    ]
}

/// `Connect` as sent through a proxy that appended `chain`'s last entry (the client wrote the
/// rest).
fn via(c: Connect, chain: &str) -> Connect {
    c.header("X-Forwarded-For", chain)
}

// ---------------------------------------------------------------------------------------------
// Frame size
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_websocket_message_closes_the_transport_and_others_stay_served() {
    let (_nats, _db, gw) = admin_gateway(&[]).await;
    let d = Driver::start().await;
    d.connect_admin("big", &gw).await;
    d.connect_admin("bystander", &gw).await;

    // 8 MiB in one WebSocket message; socketio.max_payload_bytes is 100 000.
    d.emit("big", "subscribe", json!(["x".repeat(8 << 20)]))
        .await;
    let reason = d.next_event("big", "disconnect").await;
    assert!(
        reason == "transport close" || reason == "transport error",
        "the transport was closed: {reason}"
    );

    // Just under the limit is still read and answered.
    let under = json!({"entities": {"x".repeat(90_000): [1]}});
    let reply = d.subscribe("bystander", under).await;
    assert_eq!(reply["refused"][0]["reason"], "unknown domain", "{reply}");
    d.connect_admin("after", &gw).await;
    let reply = d
        .subscribe("after", json!({"entities": {"orders": [1]}}))
        .await;
    assert_eq!(reply["subscribed"], json!(["entity:orders:1"]));
}

/// Opens a raw WebSocket to the Engine.IO endpoint and announces one 8 MiB text frame, sending
/// only its header and a few bytes: the server must close the connection on the header alone,
/// never waiting for (or buffering) the payload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_frame_larger_than_max_payload_is_refused_at_its_header() {
    let (_nats, _db, gw) = admin_gateway(&[]).await;
    let mut tcp = TcpStream::connect(gw.addr).await.unwrap();
    let request = format!(
        "GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: {}\r\n\
         Upgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        gw.addr
    );
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(tcp.read(&mut byte).await.unwrap(), 1, "upgrade response");
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );

    // FIN + text, masked, 64-bit length 8 MiB, mask key, then a little of the payload.
    let mut frame = vec![0x81, 0x80 | 127];
    frame.extend_from_slice(&(8u64 << 20).to_be_bytes());
    frame.extend_from_slice(&[1, 2, 3, 4]);
    frame.extend_from_slice(&[0u8; 64]);
    tcp.write_all(&frame).await.unwrap();

    // Whatever the server sent before (the Engine.IO open packet) is read past; then the
    // connection must end.
    let closed = tokio::time::timeout(WAIT, async {
        let mut buf = vec![0u8; 4096];
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the server waited for an 8 MiB frame");
    assert_eq!(
        test_support::http_status(&test_support::http_client(), &gw.url("/readyz")).await,
        Some(200)
    );
}

// ---------------------------------------------------------------------------------------------
// Amplification
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amplifying_subscribe_payloads_get_a_small_reply_quickly() {
    let (_nats, _db, gw) = admin_gateway(&[]).await;
    let d = Driver::start().await;
    d.connect_admin("a", &gw).await;

    // The reported payload: ~60 KB, one long unknown key, thousands of ids.
    let many: Vec<u64> = (0..15_000).map(|i| i % 10).collect();
    let over_cap = json!({"entities": {"k".repeat(30_000): many}});
    // Within the target cap: still one refusal for the key, not one per id.
    let few: Vec<u64> = (0..900).collect();
    let within_cap = json!({"entities": {"k".repeat(55_000): few}});
    // Long invalid ids and names are echoed as a short prefix only.
    let long = "z".repeat(20_000);
    let echoes = json!({"entities": {"orders": [long.clone()]}, "domains": [long.clone()],
                        "channels": [long.clone()]});

    for (what, payload, refusals) in [
        ("over the target cap", over_cap, 1),
        ("within the target cap", within_cap, 1),
        ("long names", echoes, 3),
    ] {
        assert!(
            payload.to_string().len() > 50_000,
            "{what}: a large payload"
        );
        let started = Instant::now();
        let reply = d.subscribe("a", payload).await;
        let took = started.elapsed();
        let size = reply.to_string().len();
        assert!(size < 1024, "{what}: reply of {size} bytes: {reply:.300}");
        assert!(took < Duration::from_secs(2), "{what}: took {took:?}");
        assert_schema("socketio-admin-subscribe-ack.schema.json", &reply);
        assert_eq!(reply["subscribed"], json!([]), "{what}");
        assert_eq!(
            reply["refused"].as_array().unwrap().len(),
            refusals,
            "{what}: {reply}"
        );
    }
    assert!(d.is_connected("a").await);
}

// ---------------------------------------------------------------------------------------------
// Connection caps and the client address
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_connections_are_capped_per_address_on_every_namespace() {
    let (_nats, _db, gw) =
        admin_gateway(&[("LIMITS__MAX_CONNECTIONS_PER_IP", "2".to_owned())]).await;
    let d = Driver::start().await;
    const PER_IP: &str = "too many open connections from this address";

    // Refused handshakes hold no place.
    for n in 0..3 {
        let bad = Connect::to(&gw, "/admin").token("not-a-token");
        assert_eq!(
            d.connect_err(&format!("bad{n}"), bad).await,
            "invalid token: malformed"
        );
    }
    d.connect_admin("a1", &gw).await;
    d.connect_ok("s1", Connect::to(&gw, "/stat")).await;
    // Both places are taken, whatever the namespace.
    assert_eq!(d.connect_err("s2", Connect::to(&gw, "/stat")).await, PER_IP);
    let admin = Connect::to(&gw, "/admin").token(&admin_token(json!({})));
    assert_eq!(d.connect_err("a2", admin.clone()).await, PER_IP);
    let key = gw.create_widget_key("Acme shop", &[ACME]).await;
    let widget = Connect::to(&gw, "/widget")
        .auth(json!({"key": key}))
        .origin(ACME);
    assert_eq!(d.connect_err("w1", widget.clone()).await, PER_IP);

    // Leaving gives the place back.
    d.close("a1").await;
    let mut n = 0;
    eventually("a place is free again", || {
        n += 1;
        let (d, name, widget) = (&d, format!("w-again{n}"), widget.clone());
        async move { d.connect(&name, widget).await.ok() }
    })
    .await;
    assert!(d.is_connected("s1").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_total_cap_and_ipv6_per_64_counting() {
    let mut env = behind_local_proxy();
    env.push(("LIMITS__MAX_CONNECTIONS_PER_IP", "1".to_owned()));
    env.push(("LIMITS__MAX_CONNECTIONS", "3".to_owned()));
    let (_nats, _db, gw) = admin_gateway(&env).await;
    let d = Driver::start().await;
    let stat = || Connect::to(&gw, "/stat");

    d.connect_ok("v6a", via(stat(), "2001:db8:1:2::1")).await;
    assert_eq!(
        d.connect_err("v6b", via(stat(), "2001:db8:1:2:ffff::9"))
            .await,
        "too many open connections from this address",
        "the same /64 is one client"
    );
    d.connect_ok("v6c", via(stat(), "2001:db8:1:3::1")).await;
    d.connect_ok("v4", via(stat(), "198.51.100.7")).await;
    assert_eq!(
        d.connect_err("full", via(stat(), "198.51.100.8")).await,
        "server at capacity, retry later"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_address_is_the_right_most_untrusted_forwarded_for_entry() {
    let mut env = behind_local_proxy();
    env.push(("STAT__CONNECTIONS_PER_MINUTE", "1".to_owned()));
    let (_nats, _db, gw) = admin_gateway(&env).await;
    let d = Driver::start().await;
    let stat = || Connect::to(&gw, "/stat");
    const LIMITED: &str = "too many connections from this address, retry later";

    // Client 203.0.113.7 forges a left-most entry; the proxy appended its real address.
    d.connect_ok("first", via(stat(), "192.0.2.1, 203.0.113.7"))
        .await;
    assert_eq!(
        d.connect_err("forged", via(stat(), "192.0.2.2, 203.0.113.7"))
            .await,
        LIMITED,
        "a new forged entry does not make a new client"
    );
    // Another client, whatever it writes in front.
    d.connect_ok("other", via(stat(), "203.0.113.7, 203.0.113.8"))
        .await;

    // From a peer that is not a trusted proxy the header is not believed at all.
    let (_nats2, _db2, direct) = admin_gateway(&[
        ("LIMITS__TRUST_FORWARDED_FOR", "true".to_owned()),
        ("LIMITS__TRUSTED_PROXIES", r#"["10.0.0.0/8"]"#.to_owned()),
        ("STAT__CONNECTIONS_PER_MINUTE", "1".to_owned()),
    ])
    .await;
    let stat = || Connect::to(&direct, "/stat");
    d.connect_ok("d1", via(stat(), "192.0.2.1")).await;
    assert_eq!(d.connect_err("d2", via(stat(), "192.0.2.2")).await, LIMITED);
}

// ---------------------------------------------------------------------------------------------
// Widget keys and Discord requests
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_widget_keys_are_throttled_per_address_without_querying() {
    let mut env = behind_local_proxy();
    env.push(("WIDGET__UNKNOWN_KEYS_PER_MINUTE", "2".to_owned()));
    let (_nats, _db, gw) = admin_gateway(&env).await;
    let d = Driver::start().await;
    let widget = |key: &str, client: &str| {
        via(
            Connect::to(&gw, "/widget")
                .auth(json!({"key": key}))
                .origin(ACME),
            client,
        )
    };
    const PROBER: &str = "203.0.113.7";
    const THROTTLED: &str = "too many unknown widget keys from this address, retry later";

    for n in 0..2 {
        let key = format!("wk_random{n}");
        assert_eq!(
            d.connect_err(&format!("r{n}"), widget(&key, PROBER)).await,
            "unknown widget key"
        );
    }
    // A key already known to be unknown costs nothing.
    assert_eq!(
        d.connect_err("again", widget("wk_random0", PROBER)).await,
        "unknown widget key"
    );
    assert_eq!(
        d.connect_err("r2", widget("wk_random2", PROBER)).await,
        THROTTLED
    );
    // A real key nobody looked up yet is refused too: no query is made for this address.
    let key = gw.create_widget_key("Acme shop", &[ACME]).await;
    assert_eq!(d.connect_err("real", widget(&key, PROBER)).await, THROTTLED);
    // Other addresses are not affected; once cached, the key works for the prober as well.
    d.connect_ok("honest", widget(&key, "198.51.100.1")).await;
    d.connect_ok("cached", widget(&key, PROBER)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discord_requests_are_rate_limited_per_socket_and_per_key() {
    let (nats, _db, gw) = admin_gateway(&[
        ("WIDGET__DISCORD_PER_SOCKET_PER_MINUTE", "2".to_owned()),
        ("WIDGET__DISCORD_PER_KEY_PER_MINUTE", "3".to_owned()),
    ])
    .await;
    let d = Driver::start().await;
    let (acme, other) = (
        gw.create_widget_key("Acme shop", &[ACME]).await,
        gw.create_widget_key("Other shop", &["*"]).await,
    );
    let widget = |key: &str| {
        Connect::to(&gw, "/widget")
            .auth(json!({"key": key}))
            .origin(ACME)
    };
    d.connect_ok("w1", widget(&acme)).await;
    d.connect_ok("w2", widget(&acme)).await;
    d.connect_ok("x", widget(&other)).await;

    let nc = async_nats::connect(nats.url()).await.unwrap();
    let mut sub = nc.subscribe("cmd.discord.request_send").await.unwrap();
    nats_sync(&nc).await;
    let (tx, mut seen) = tokio::sync::mpsc::unbounded_channel::<Value>();
    let responder = nc.clone();
    tokio::spawn(async move {
        while let Some(message) = sub.next().await {
            let body: Value = serde_json::from_slice(&message.payload).unwrap_or(Value::Null);
            if let Some(to) = message.reply {
                let reply = json!({"ok": true, "data": body["data"]});
                responder
                    .publish(to, reply.to_string().into())
                    .await
                    .unwrap();
                responder.flush().await.unwrap();
            }
            let _ = tx.send(body);
        }
    });

    let send = |conn: &'static str, n: u64| {
        let d = &d;
        async move {
            d.emit_ack(conn, "discord:request-send", json!([{"n": n}]))
                .await
        }
    };
    let assert_limited = |r: &Value| {
        assert_eq!(r["ok"], false, "{r}");
        assert_eq!(r["error"]["code"], "rate_limited", "{r}");
        assert_schema("command-reply.schema.json", r);
    };
    assert_eq!(send("w1", 1).await["ok"], true);
    assert_eq!(send("w1", 2).await["ok"], true);
    let limited = send("w1", 3).await;
    assert_limited(&limited);
    // The refusal is also emitted, like every response.
    assert_eq!(
        d.next_matching("w1", "discord:request-response", |v| v["ok"] == false)
            .await,
        limited
    );
    // w1's refused request did not use up the key's budget: one is left, for w2.
    assert_eq!(send("w2", 4).await["ok"], true);
    assert_limited(&send("w2", 5).await);
    // Another key has its own budget.
    assert_eq!(send("x", 6).await["ok"], true);

    let mut forwarded = Vec::new();
    for _ in 0..4 {
        forwarded.push(seen.recv().await.unwrap()["data"]["n"].as_u64().unwrap());
    }
    forwarded.sort_unstable();
    assert_eq!(
        forwarded,
        [1, 2, 4, 6],
        "refused requests never reach the backend"
    );
}

// ---------------------------------------------------------------------------------------------
// Tokens without a configured iss / aud
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_issuer_and_audience_are_required_on_admin_and_provider() {
    let jwks = JwksServer::start(vec![jwk("provider-es384-a.jwk.json", "key-a", "ES384")]).await;
    let env = [
        ("ADMIN__ISSUER", ISSUER.to_owned()),
        ("ADMIN__AUDIENCE", AUDIENCE.to_owned()),
        ("PROVIDER__ISSUER", PROVIDER_ISSUER.to_owned()),
        ("PROVIDER__AUDIENCE", PROVIDER_AUDIENCE.to_owned()),
        ("PROVIDER__JWKS_URL", jwks.url.clone()),
        ("PROVIDER__JWKS_TIMEOUT_SECS", "2".to_owned()),
    ];
    let (_nats, _db, gw) = admin_gateway(&env).await;
    let d = Driver::start().await;

    // `null` removes a claim (see `claims`).
    let admin = |extra: Value| {
        let mut c = json!({"iss": ISSUER, "aud": AUDIENCE});
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        Connect::to(&gw, "/admin").token(&hs256(ADMIN_SECRET.as_bytes(), &claims(c)))
    };
    let key = ec_key("provider-es384-a.key.pem");
    let provider = |drop: &str| {
        let mut c = claims(json!({"iss": PROVIDER_ISSUER, "aud": PROVIDER_AUDIENCE}));
        c.as_object_mut().unwrap().remove(drop);
        let token = sign(jsonwebtoken::Algorithm::ES384, &key, Some("key-a"), &c);
        Connect::to(&gw, "/provider").token(&token)
    };

    d.connect_ok("admin-ok", admin(json!({}))).await;
    d.connect_ok("provider-ok", provider("none")).await;
    assert_eq!(
        d.connect_err("admin-no-aud", admin(json!({"aud": null})))
            .await,
        "invalid token: wrong audience"
    );
    assert_eq!(
        d.connect_err("admin-no-iss", admin(json!({"iss": null})))
            .await,
        "invalid token: wrong issuer"
    );
    assert_eq!(
        d.connect_err("provider-no-aud", provider("aud")).await,
        "invalid token: wrong audience"
    );
    assert_eq!(
        d.connect_err("provider-no-iss", provider("iss")).await,
        "invalid token: wrong issuer"
    );
}
