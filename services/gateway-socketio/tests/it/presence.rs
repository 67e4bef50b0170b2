//! Presence and channel viewing across gateway instances (`docs/gateway-socketio.md`,
//! "Presence" and "Viewing"): several gateways on one NATS server, instances killed or shut
//! down, the bounds and refusals of `presence:query`, `presence:update` and `channel:viewing`.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, kv};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use futures_util::TryStreamExt;
use jsonwebtoken::Algorithm;
use serde_json::{Value, json};
use test_support::{NatsServer, ServiceProcess, TestDatabase, eventually, http_client};

use crate::common::*;

const TTL_MS: u64 = 1000;

/// Fast presence timings: heartbeats every 200 ms, dead after 1 s, a 300 ms grace.
fn fast(extra: &[(&'static str, &str)]) -> Vec<(&'static str, String)> {
    let mut env = vec![
        ("PRESENCE__HEARTBEAT_MS", "200".to_owned()),
        ("PRESENCE__TTL_MS", TTL_MS.to_string()),
        ("PRESENCE__GRACE_MS", "300".to_owned()),
    ];
    for (k, v) in extra {
        env.retain(|(key, _)| key != k);
        env.push((k, (*v).to_owned()));
    }
    env
}

async fn two_gateways(env: &[(&str, String)]) -> (NatsServer, TestDatabase, Gateway, Gateway) {
    let (nats, db) = backends().await;
    let a = Gateway::start(&nats, &db, env).await;
    let b = Gateway::start(&nats, &db, env).await;
    (nats, db, a, b)
}

fn user(sub: &str) -> String {
    admin_token(json!({ "sub": sub }))
}

async fn admin(d: &Driver, conn: &str, url: &str, sub: &str) {
    d.connect_ok(conn, Connect::to_url(url, "/admin").token(&user(sub)))
        .await;
}

async fn query(d: &Driver, conn: &str, payload: Value) -> Value {
    let result = d.emit_ack(conn, "presence:query", json!([payload])).await;
    assert_schema("socketio-presence-result.schema.json", &result);
    result
}

/// Matches a `presence:update` of user `id` with `status`.
fn update(id: &str, status: &str) -> impl Fn(&Value) -> bool + use<> {
    let (id, status) = (id.to_owned(), status.to_owned());
    move |v: &Value| v["kind"] == "user" && v["id"] == json!(id) && v["status"] == json!(status)
}

/// The next `presence:update` of user `id` with `status` on `conn`, checked against the schema.
async fn next_update(d: &Driver, conn: &str, id: &str, status: &str) -> Value {
    let got = d
        .next_matching(conn, "presence:update", update(id, status))
        .await;
    assert_schema("socketio-presence-update.schema.json", &got);
    got
}

/// The presence bucket, read directly.
async fn bucket(nats: &NatsServer) -> kv::Store {
    let client = async_nats::connect(nats.url()).await.unwrap();
    jetstream::new(client)
        .get_key_value(events::subject::PRESENCE_BUCKET)
        .await
        .unwrap()
}

async fn keys(store: &kv::Store) -> BTreeSet<String> {
    store
        .keys()
        .await
        .unwrap()
        .try_collect::<BTreeSet<String>>()
        .await
        .unwrap()
}

fn b64(id: &str) -> String {
    URL_SAFE_NO_PAD.encode(id)
}

/// The `at` of user `id`'s last-seen key, once it is there.
async fn seen_at(store: &kv::Store, id: &str) -> Value {
    let key = format!("seen.user.{}", b64(id));
    eventually(&format!("{key} written"), || async {
        let value = store.get(key.as_str()).await.unwrap()?;
        let value: Value = serde_json::from_slice(&value).unwrap();
        Some(value["at"].clone())
    })
    .await
}

/// The presence key of user `id`, once exactly one instance holds one.
async fn only_presence_key(store: &kv::Store, id: &str) -> String {
    let suffix = format!(".p.user.{}", b64(id));
    eventually(&format!("one key of {id}"), || async {
        let held: Vec<String> = keys(store)
            .await
            .into_iter()
            .filter(|k| k.ends_with(&suffix))
            .collect();
        (held.len() == 1).then(|| held[0].clone())
    })
    .await
}

/// Waits until `key` is deleted from the bucket.
async fn deleted(store: &kv::Store, key: &str) {
    eventually(&format!("{key} deleted"), || async {
        store.get(key).await.unwrap().is_none().then_some(())
    })
    .await;
}

/// The instances holding keys `i.<instance>.…` in the bucket.
async fn instances(store: &kv::Store) -> BTreeSet<String> {
    keys(store)
        .await
        .into_iter()
        .filter_map(|k| k.strip_prefix("i.")?.split('.').next().map(str::to_owned))
        .collect()
}

/// The last stream sequence of the bucket's stream: every write to the bucket adds one.
async fn last_sequence(nats: &NatsServer) -> u64 {
    let js = jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let mut stream = js
        .get_stream(format!("KV_{}", events::subject::PRESENCE_BUCKET))
        .await
        .unwrap();
    stream.info().await.unwrap().state.last_sequence
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_is_seen_across_instances() {
    let (_nats, _db, a, b) = two_gateways(&fast(&[])).await;
    let d = Driver::start().await;
    admin(&d, "observer", &a.url(""), "observer").await;

    let result = query(&d, "observer", json!({"user_ids": ["user-1"]})).await;
    assert_eq!(
        result,
        json!({"ok": true, "refused": [], "presence": [
            {"kind": "user", "id": "user-1", "status": "offline", "last_seen": null, "watched": true}
        ]})
    );

    admin(&d, "u1", &b.url(""), "user-1").await;
    let got = next_update(&d, "observer", "user-1", "online").await;
    assert_eq!(
        got,
        json!({"kind": "user", "id": "user-1", "status": "online", "last_seen": null})
    );
    let result = query(&d, "observer", json!({"user_ids": ["user-1"]})).await;
    assert_eq!(result["presence"][0]["status"], "online", "{result}");
    assert_eq!(result["presence"][0]["watched"], true, "{result}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_tabs_count_once_and_the_last_one_leaving_sets_last_seen() {
    let (nats, _db, a, b) = two_gateways(&fast(&[])).await;
    let d = Driver::start().await;
    admin(&d, "observer", &a.url(""), "observer").await;
    query(&d, "observer", json!({"user_ids": ["user-2"]})).await;

    admin(&d, "tab1", &a.url(""), "user-2").await;
    next_update(&d, "observer", "user-2", "online").await;
    let store = bucket(&nats).await;
    let on_a = only_presence_key(&store, "user-2").await;
    admin(&d, "tab2", &b.url(""), "user-2").await;

    d.close("tab1").await;
    // Gateway a deletes its key of user-2 after the grace; b still holds user-2.
    deleted(&store, &on_a).await;
    let ack = d
        .emit_ack("tab2", "presence:update", json!([{"status": "away"}]))
        .await;
    assert_eq!(ack, json!({"ok": true, "status": "away"}));
    assert_schema("socketio-collab-ack.schema.json", &ack);
    // b's away was written after a's delete: were the delete pushed, it came first.
    d.assert_no_event(
        "observer",
        "presence:update",
        update("user-2", "offline"),
        "presence:update",
        update("user-2", "away"),
    )
    .await;
    assert_eq!(
        d.count("observer", "presence:update", update("user-2", "online")),
        1,
        "the second tab changed nothing:\n{}",
        d.dump("observer")
    );

    d.close("tab2").await;
    let offline = next_update(&d, "observer", "user-2", "offline").await;
    let last_seen = offline["last_seen"]
        .as_str()
        .expect("a last_seen")
        .to_owned();
    let at =
        time::OffsetDateTime::parse(&last_seen, &time::format_description::well_known::Rfc3339)
            .unwrap();
    assert!(
        (time::OffsetDateTime::now_utc() - at).abs() < time::Duration::seconds(30),
        "{last_seen}"
    );
    // The stored last-seen is the one pushed, and a query answers it.
    assert_eq!(seen_at(&store, "user-2").await, json!(last_seen));
    let result = query(&d, "observer", json!({"user_ids": ["user-2"]})).await;
    assert_eq!(result["presence"][0]["status"], "offline", "{result}");
    assert_eq!(
        result["presence"][0]["last_seen"],
        json!(last_seen),
        "{result}"
    );

    // Once per change: the last-seen write pushed nothing more.
    admin(&d, "tab3", &a.url(""), "user-2").await;
    next_update(&d, "observer", "user-2", "online").await;
    assert_eq!(
        d.count("observer", "presence:update", update("user-2", "offline")),
        1,
        "{}",
        d.dump("observer")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnect_to_another_instance_within_the_grace_does_not_flap() {
    let (nats, _db, a, b) = two_gateways(&fast(&[("PRESENCE__GRACE_MS", "3000")])).await;
    let d = Driver::start().await;
    admin(&d, "observer", &b.url(""), "observer").await;
    query(&d, "observer", json!({"user_ids": ["user-5"]})).await;
    admin(&d, "before", &a.url(""), "user-5").await;
    next_update(&d, "observer", "user-5", "online").await;
    let store = bucket(&nats).await;
    let on_a = only_presence_key(&store, "user-5").await;

    d.close("before").await;
    admin(&d, "after", &b.url(""), "user-5").await;
    // a deletes its key of user-5 after the grace.
    deleted(&store, &on_a).await;
    d.emit_ack("after", "presence:update", json!([{"status": "away"}]))
        .await;
    d.assert_no_event(
        "observer",
        "presence:update",
        update("user-5", "offline"),
        "presence:update",
        update("user-5", "away"),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_instance_takes_its_users_offline_within_the_ttl() {
    let (nats, db) = backends().await;
    let env = fast(&[]);
    let a = Gateway::start(&nats, &db, &env).await;
    let mut process_env: Vec<(String, String)> = vec![
        ("HTTP__LISTEN".to_owned(), "127.0.0.1:0".to_owned()),
        ("LOG__FORMAT".to_owned(), "json".to_owned()),
        ("NATS__URL".to_owned(), nats.url()),
        ("DATABASE__URL".to_owned(), db.url().to_owned()),
        ("ADMIN__SECRET".to_owned(), ADMIN_SECRET.to_owned()),
    ];
    process_env.extend(env.iter().map(|(k, v)| ((*k).to_owned(), v.clone())));
    let process_env: Vec<(String, String)> = process_env
        .into_iter()
        .map(|(k, v)| (format!("{PREFIX}{k}"), v))
        .collect();
    let process_env: Vec<(&str, String)> = process_env
        .iter()
        .map(|(k, v)| (k.as_str(), v.clone()))
        .collect();
    let doomed = ServiceProcess::spawn(env!("CARGO_BIN_EXE_gateway-socketio"), &[], &process_env);
    let client = http_client();
    let ready = doomed.url("/readyz");
    eventually("the process ready", || async {
        (test_support::http_status(&client, &ready).await == Some(200)).then_some(())
    })
    .await;

    let d = Driver::start().await;
    admin(&d, "observer", &a.url(""), "observer").await;
    query(&d, "observer", json!({"user_ids": ["user-3"]})).await;
    admin(&d, "u3", &doomed.url(""), "user-3").await;
    next_update(&d, "observer", "user-3", "online").await;

    doomed.signal("KILL");
    let killed = Instant::now();
    let offline = next_update(&d, "observer", "user-3", "offline").await;
    let took = killed.elapsed();
    assert!(
        took < Duration::from_millis(TTL_MS) + Duration::from_secs(3),
        "offline only after {took:?}"
    );
    assert!(offline["last_seen"].is_string(), "{offline}");
    let store = bucket(&nats).await;
    assert_eq!(seen_at(&store, "user-3").await, offline["last_seen"]);

    // Its keys are purged: only a's remain.
    eventually("the dead instance's keys purged", || async {
        let instances: BTreeSet<String> = keys(&store)
            .await
            .into_iter()
            .filter_map(|k| k.strip_prefix("i.")?.split('.').next().map(str::to_owned))
            .collect();
        (instances.len() == 1).then_some(())
    })
    .await;
    drop(doomed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_shutdown_then_a_reconnect_elsewhere_within_the_grace_does_not_flap() {
    // A ttl of a minute: only the departing instance's own goodbye can be seen in time.
    let env = fast(&[
        ("PRESENCE__TTL_MS", "60000"),
        ("PRESENCE__GRACE_MS", "2000"),
    ]);
    let (_nats, _db, a, b) = two_gateways(&env).await;
    let d = Driver::start().await;
    admin(&d, "observer", &a.url(""), "observer").await;
    query(&d, "observer", json!({"user_ids": ["user-4"]})).await;
    admin(&d, "before", &b.url(""), "user-4").await;
    next_update(&d, "observer", "user-4", "online").await;

    // b shuts down, closing the socket; the client reconnects to a.
    drop(b);
    admin(&d, "after", &a.url(""), "user-4").await;
    let ack = d
        .emit_ack("after", "presence:update", json!([{"status": "away"}]))
        .await;
    assert_eq!(ack, json!({"ok": true, "status": "away"}));
    // Away only once b's participants are dropped (b says online until then): an offline
    // pushed by that drop, or before, comes first.
    d.assert_no_event(
        "observer",
        "presence:update",
        update("user-4", "offline"),
        "presence:update",
        update("user-4", "away"),
    )
    .await;
    assert_eq!(
        d.count("observer", "presence:update", update("user-4", "online")),
        1,
        "{}",
        d.dump("observer")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_shutting_down_takes_its_users_offline_after_the_grace() {
    const GRACE_MS: u64 = 1000;
    // A ttl of a minute: only the departing instance's own goodbye can be seen in time.
    let grace = GRACE_MS.to_string();
    let env = fast(&[
        ("PRESENCE__TTL_MS", "60000"),
        ("PRESENCE__GRACE_MS", &grace),
    ]);
    let (nats, _db, a, b) = two_gateways(&env).await;
    let d = Driver::start().await;
    admin(&d, "observer", &a.url(""), "observer").await;
    query(&d, "observer", json!({"user_ids": ["user-9"]})).await;
    admin(&d, "u9", &b.url(""), "user-9").await;
    next_update(&d, "observer", "user-9", "online").await;
    let store = bucket(&nats).await;
    assert_eq!(instances(&store).await.len(), 2);

    drop(b);
    let stopped = Instant::now();
    let offline = next_update(&d, "observer", "user-9", "offline").await;
    let took = stopped.elapsed();
    assert!(
        took >= Duration::from_millis(GRACE_MS - 100),
        "offline already after {took:?}"
    );
    assert!(
        took < Duration::from_millis(GRACE_MS) + Duration::from_secs(2),
        "offline only after {took:?}"
    );
    assert!(offline["last_seen"].is_string(), "{offline}");
    // The reaper (a) writes the last-seen pushed and purges b's keys.
    assert_eq!(seen_at(&store, "user-9").await, offline["last_seen"]);
    eventually("b's keys purged", || async {
        (instances(&store).await.len() == 1).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_toggles_coalesce_into_few_writes() {
    // Heartbeats every 2 s: the toggles are nearly all the stream sees meanwhile.
    let env = fast(&[
        ("PRESENCE__HEARTBEAT_MS", "2000"),
        ("PRESENCE__TTL_MS", "10000"),
    ]);
    let (nats, _db, gw) = admin_gateway(&env).await;
    let d = Driver::start().await;
    admin(&d, "observer", &gw.url(""), "observer").await;
    query(&d, "observer", json!({"user_ids": ["toggler"]})).await;
    admin(&d, "t", &gw.url(""), "toggler").await;
    next_update(&d, "observer", "toggler", "online").await;
    let store = bucket(&nats).await;
    let key = only_presence_key(&store, "toggler").await;

    let before = last_sequence(&nats).await;
    for status in ["away", "online"].repeat(10) {
        let ack = d
            .emit_ack("t", "presence:update", json!([{ "status": status }]))
            .await;
        assert_eq!(ack["ok"], true, "{ack}");
    }
    let ack = d
        .emit_ack("t", "presence:update", json!([{"status": "away"}]))
        .await;
    assert_eq!(ack["ok"], true, "{ack}");
    // The last one wins.
    eventually("the key says away", || async {
        let value = store.get(key.as_str()).await.unwrap()?;
        let value: Value = serde_json::from_slice(&value).unwrap();
        (value["status"] == "away").then_some(())
    })
    .await;
    next_update(&d, "observer", "toggler", "away").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let writes = last_sequence(&nats).await - before;
    assert!(writes < 10, "{writes} writes for 21 toggles");
    let updates = d.count("observer", "presence:update", |v| v["id"] == "toggler");
    assert!(updates < 10, "{updates} updates:\n{}", d.dump("observer"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_viewing_needs_membership_is_bounded_and_is_in_the_bucket() {
    let (nats, db) = backends().await;
    let chat = ChatBackend::start(&nats).await;
    for c in ["c1", "c2", "c3"] {
        chat.channel(c, &["viewer"], &[]);
    }
    let gw = Gateway::start(
        &nats,
        &db,
        &fast(&[("COLLAB__MAX_VIEWING_PER_SOCKET", "2")]),
    )
    .await;
    let d = Driver::start().await;
    admin(&d, "viewer", &gw.url(""), "viewer").await;
    admin(&d, "stranger", &gw.url(""), "stranger").await;
    let view = |conn: &'static str, payload: Value| {
        let d = &d;
        async move {
            let ack = d.emit_ack(conn, "channel:viewing", json!([payload])).await;
            assert_schema("socketio-collab-ack.schema.json", &ack);
            ack
        }
    };

    assert_eq!(
        view("viewer", json!({"channel_id": "c1"})).await,
        json!({"ok": true, "channel_id": "c1"})
    );
    let refused = view("stranger", json!({"channel_id": "c1"})).await;
    assert_eq!(refused["error"]["code"], "forbidden", "{refused}");
    let refused = view("viewer", json!({"channel_id": "unknown"})).await;
    assert_eq!(
        refused["error"]["code"], "forbidden",
        "the backend refuses it: {refused}"
    );
    let refused = view("viewer", json!({"channel_id": "bad.id"})).await;
    assert_eq!(refused["error"]["code"], "malformed", "{refused}");

    // Without an ack, a refusal comes as collab:error.
    d.emit("stranger", "channel:viewing", json!([{"channel_id": "c1"}]))
        .await;
    let error = d.next_event("stranger", "collab:error").await;
    assert_schema("socketio-collab-error.schema.json", &error);
    assert_eq!(error["event"], "channel:viewing");
    assert_eq!(error["error"]["code"], "forbidden");

    // At most two channels per socket; viewing one again is not another.
    assert_eq!(
        view("viewer", json!({"channel_id": "c2"})).await["ok"],
        true
    );
    assert_eq!(
        view("viewer", json!({"channel_id": "c1"})).await["ok"],
        true
    );
    let refused = view("viewer", json!({"channel_id": "c3"})).await;
    assert_eq!(refused["error"]["code"], "limit", "{refused}");
    let left = d
        .emit_ack("viewer", "channel:left", json!([{"channel_id": "c1"}]))
        .await;
    assert_eq!(left, json!({"ok": true, "channel_id": "c1"}));
    assert_eq!(
        view("viewer", json!({"channel_id": "c3"})).await["ok"],
        true
    );

    // Cluster-wide: the bucket says who views what; leaving ends it.
    let store = bucket(&nats).await;
    let viewing = |channel: &str| format!(".v.{channel}.user.{}", b64("viewer"));
    eventually("c2 and c3 viewed, c1 no longer", || async {
        let keys = keys(&store).await;
        let has = |c: &str| keys.iter().any(|k| k.ends_with(&viewing(c)));
        (has("c2") && has("c3") && !has("c1")).then_some(())
    })
    .await;
    d.close("viewer").await;
    eventually("viewing ended with the socket", || async {
        let keys = keys(&store).await;
        (!keys.iter().any(|k| k.contains(".v."))).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_viewing_without_a_backend_is_unavailable() {
    let (_nats, _db, gw) = admin_gateway(&fast(&[])).await;
    let d = Driver::start().await;
    admin(&d, "viewer", &gw.url(""), "viewer").await;
    let refused = d
        .emit_ack("viewer", "channel:viewing", json!([{"channel_id": "c1"}]))
        .await;
    assert_eq!(refused["ok"], false, "{refused}");
    assert_eq!(refused["error"]["code"], "unavailable", "{refused}");
}

fn provider_env(jwks_url: &str) -> Vec<(&'static str, String)> {
    let mut env = fast(&[
        ("PRESENCE__MAX_QUERY_IDS", "3"),
        ("PRESENCE__MAX_WATCHED_PER_SOCKET", "2"),
    ]);
    env.extend([
        ("PROVIDER__ISSUER", PROVIDER_ISSUER.to_owned()),
        ("PROVIDER__JWKS_URL", jwks_url.to_owned()),
        ("PROVIDER__AUDIENCE", PROVIDER_AUDIENCE.to_owned()),
    ]);
    env
}

fn provider_token(sub: &str) -> String {
    sign(
        Algorithm::ES384,
        &ec_key("provider-es384-a.key.pem"),
        Some("key-a"),
        &claims(json!({"iss": PROVIDER_ISSUER, "aud": PROVIDER_AUDIENCE, "sub": sub})),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_queries_are_bounded_and_authorised() {
    let jwks = JwksServer::start(vec![jwk("provider-es384-a.jwk.json", "key-a", "ES384")]).await;
    let (nats, db) = backends().await;
    let chat = ChatBackend::start(&nats).await;
    chat.channel("deal-1", &["u-1"], &["profile-1"]);
    let gw = Gateway::start(&nats, &db, &provider_env(&jwks.url)).await;
    let d = Driver::start().await;
    admin(&d, "admin", &gw.url(""), "u-1").await;

    // More ids than presence.max_query_ids: refused whole, before anything else.
    let refused = query(
        &d,
        "admin",
        json!({"user_ids": ["a", "b"], "profile_ids": ["c", "d"], "channel_id": "nope"}),
    )
    .await;
    assert_eq!(refused["ok"], false, "{refused}");
    assert_eq!(refused["error"]["code"], "limit", "{refused}");
    // Three are fine; past presence.max_watched_per_socket they are answered, not watched.
    let result = query(&d, "admin", json!({"user_ids": ["a", "b", 7]})).await;
    let watched: Vec<(Value, Value)> = result["presence"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["id"].clone(), p["watched"].clone()))
        .collect();
    assert_eq!(
        watched,
        [
            (json!("a"), json!(true)),
            (json!("b"), json!(true)),
            (json!("7"), json!(false))
        ],
        "{result}"
    );
    let refused = query(&d, "admin", json!({"user_ids": "a"})).await;
    assert_eq!(refused["error"]["code"], "malformed", "{refused}");

    // With a channel: its members, ids that are not members refused one by one.
    let result = query(&d, "admin", json!({"channel_id": "deal-1"})).await;
    let members: BTreeSet<String> = result["presence"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            format!(
                "{}:{}",
                p["kind"].as_str().unwrap(),
                p["id"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        members,
        strings(&["user:u-1", "profile:profile-1"]),
        "{result}"
    );
    let result = query(
        &d,
        "admin",
        json!({"channel_id": "deal-1", "user_ids": ["u-1", "u-9"]}),
    )
    .await;
    assert_eq!(result["presence"].as_array().unwrap().len(), 1, "{result}");
    assert_eq!(
        result["refused"],
        json!([{"kind": "user", "id": "u-9", "reason": "not a member of the channel"}])
    );
    let refused = query(&d, "admin", json!({"channel_id": "deal-2"})).await;
    assert_eq!(refused["error"]["code"], "forbidden", "{refused}");

    // /provider must name a channel it is in.
    d.connect_ok(
        "provider",
        Connect::to(&gw, "/provider").token(&provider_token("profile-1")),
    )
    .await;
    let refused = query(&d, "provider", json!({"user_ids": ["u-1"]})).await;
    assert_eq!(refused["error"]["code"], "forbidden", "{refused}");
    // u-1 (the "admin" socket) is online once the bucket's echo is applied.
    eventually("u-1 online", || async {
        let result = query(
            &d,
            "provider",
            json!({"channel_id": "deal-1", "user_ids": ["u-1"]}),
        )
        .await;
        assert_eq!(result["presence"][0]["id"], "u-1", "{result}");
        (result["presence"][0]["status"] == "online").then_some(())
    })
    .await;

    // Without an ack, the answer is the presence:result event.
    d.emit(
        "provider",
        "presence:query",
        json!([{"profile_ids": ["profile-1"]}]),
    )
    .await;
    let event = d.next_event("provider", "presence:result").await;
    assert_eq!(event["error"]["code"], "forbidden", "{event}");

    // A token without sub is nobody to collaborate as.
    d.connect_ok(
        "nobody",
        Connect::to(&gw, "/admin").token(&admin_token(json!({"sub": null}))),
    )
    .await;
    let refused = query(&d, "nobody", json!({"user_ids": ["u-1"]})).await;
    assert_eq!(refused["error"]["code"], "no_identity", "{refused}");
    let refused = d
        .emit_ack("nobody", "presence:update", json!([{"status": "away"}]))
        .await;
    assert_eq!(refused["error"]["code"], "no_identity", "{refused}");
    let refused = d
        .emit_ack("admin", "presence:update", json!([{"status": "busy"}]))
        .await;
    assert_eq!(refused["error"]["code"], "malformed", "{refused}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admins_query_anyone_only_when_allowed() {
    let (_nats, _db, gw) = admin_gateway(&fast(&[("PRESENCE__ADMIN_QUERY_ANY", "false")])).await;
    let d = Driver::start().await;
    admin(&d, "admin", &gw.url(""), "u-1").await;
    let refused = query(&d, "admin", json!({"user_ids": ["u-2"]})).await;
    assert_eq!(refused["error"]["code"], "forbidden", "{refused}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_declared_dead_while_alive_writes_its_state_again() {
    let (nats, _db, a, b) = two_gateways(&fast(&[])).await;
    let d = Driver::start().await;
    admin(&d, "observer", &b.url(""), "observer").await;
    query(&d, "observer", json!({"user_ids": ["user-6"]})).await;
    admin(&d, "u6", &a.url(""), "user-6").await;
    next_update(&d, "observer", "user-6", "online").await;

    // Do what a reaper does to a (partitioned) instance: purge its keys, delete its live key.
    let store = bucket(&nats).await;
    let key_of_u6 = format!(".p.user.{}", b64("user-6"));
    let instance = keys(&store)
        .await
        .into_iter()
        .find_map(|k| {
            k.ends_with(&key_of_u6)
                .then(|| k.strip_prefix("i.")?.split('.').next().map(str::to_owned))?
        })
        .expect("a's key of user-6");
    let js = jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    js.get_stream(format!("KV_{}", events::subject::PRESENCE_BUCKET))
        .await
        .unwrap()
        .purge()
        .filter(format!(
            "$KV.{}.i.{instance}.>",
            events::subject::PRESENCE_BUCKET
        ))
        .await
        .unwrap();
    store.delete(format!("i.{instance}.live")).await.unwrap();

    // a hears its live key deleted and writes everything again. (b, having heard a within the
    // ttl, takes the deletion for a departure and holds user-6 for the grace: whether it
    // flaps depends on how fast a is back, which is not what this test is about.)
    let key = format!("i.{instance}{key_of_u6}");
    eventually("a's key of user-6 written again", || async {
        keys(&store).await.contains(&key).then_some(())
    })
    .await;
    eventually("a alive again", || async {
        store
            .get(format!("i.{instance}.live"))
            .await
            .unwrap()
            .map(|_| ())
    })
    .await;
    let result = query(&d, "observer", json!({"user_ids": ["user-6"]})).await;
    assert_eq!(result["presence"][0]["status"], "online", "{result}");
    drop(a);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_recovers_after_a_nats_restart() {
    // A long ttl: the outage is not a death, only the watches are interrupted.
    let env = fast(&[("PRESENCE__TTL_MS", "30000")]);
    let (mut nats, _db, a, b) = two_gateways(&env).await;
    let d = Driver::start().await;
    admin(&d, "observer", &a.url(""), "observer").await;
    query(&d, "observer", json!({"user_ids": ["user-7", "user-8"]})).await;
    admin(&d, "u7", &b.url(""), "user-7").await;
    next_update(&d, "observer", "user-7", "online").await;

    nats.restart();
    admin(&d, "u8", &b.url(""), "user-8").await;
    next_update(&d, "observer", "user-8", "online").await;
    d.close("u7").await;
    next_update(&d, "observer", "user-7", "offline").await;
    let result = query(&d, "observer", json!({"user_ids": ["user-8"]})).await;
    assert_eq!(result["presence"][0]["status"], "online", "{result}");
}
