//! The publisher and provisioning against a real nats-server with JetStream.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use events::provision::{BucketSettings, StreamSettings, ensure_bucket, ensure_stream};
use events::trace_context::{TRACEPARENT, parse_traceparent};
use events::{Envelope, EventType, Publisher};
use futures_util::StreamExt;
use serde_json::json;
use test_support::NatsServer;

async fn connect(server: &NatsServer) -> jetstream::Context {
    jetstream::new(async_nats::connect(server.url()).await.unwrap())
}

fn order_event(id: &str) -> Envelope {
    Envelope::new(
        EventType::parse("order.status_changed").unwrap(),
        id,
        json!({"id": 101, "status": "paid"}),
    )
    .unwrap()
    .with_changed_fields(json!({"status": "paid"}).as_object().unwrap().clone())
}

#[tokio::test]
async fn provisioning_twice_is_harmless_and_converges() {
    let server = NatsServer::start();
    let js = connect(&server).await;
    let settings = StreamSettings::events();
    let first = ensure_stream(&js, &settings).await.unwrap();
    Publisher::from_context(js.clone())
        .publish(&order_event("101"))
        .await
        .unwrap();
    let second = ensure_stream(&js, &settings).await.unwrap();
    assert_eq!(first.config.subjects, ["events.>"]);
    assert_eq!(second.created, first.created);
    assert_eq!(
        second.state.messages, 1,
        "re-provisioning kept the stored event"
    );

    // A changed limit is applied to the existing stream.
    let shorter = StreamSettings {
        max_age: Duration::from_secs(3600),
        ..settings.clone()
    };
    let third = ensure_stream(&js, &shorter).await.unwrap();
    assert_eq!(third.config.max_age, Duration::from_secs(3600));

    // Many provisioners racing at start all succeed.
    let racers = (0..4).map(|_| {
        let js = js.clone();
        let s = settings.clone();
        tokio::spawn(async move { ensure_stream(&js, &s).await.map(|_| ()) })
    });
    for r in racers {
        r.await.unwrap().unwrap();
    }

    let bucket = BucketSettings {
        bucket: "presence".into(),
        description: "test bucket".into(),
        max_age: Duration::from_secs(30),
        history: 1,
        replicas: 1,
    };
    let kv = ensure_bucket(&js, &bucket).await.unwrap();
    kv.put("user-1", "online".into()).await.unwrap();
    let kv = ensure_bucket(&js, &bucket).await.unwrap();
    assert_eq!(kv.get("user-1").await.unwrap().unwrap(), "online");
}

#[tokio::test]
async fn publishing_the_same_event_id_twice_stores_one_message() {
    let server = NatsServer::start();
    let js = connect(&server).await;
    ensure_stream(&js, &StreamSettings::events()).await.unwrap();
    let publisher = Publisher::from_context(js.clone());
    let event = order_event("101");

    let first = publisher.publish(&event).await.unwrap();
    let again = publisher.publish(&event).await.unwrap();
    assert!(!first.duplicate);
    assert!(again.duplicate);
    assert_eq!(again.sequence, first.sequence);
    publisher.publish(&order_event("102")).await.unwrap();

    let mut stream = js.get_stream("EVENTS").await.unwrap();
    assert_eq!(stream.info().await.unwrap().state.messages, 2);
}

#[tokio::test]
async fn a_consumer_reads_back_exactly_what_was_published() {
    let server = NatsServer::start();
    let js = connect(&server).await;
    let stream = ensure_stream(&js, &StreamSettings::events()).await.unwrap();
    let event = order_event("101").with_actor(events::Actor {
        kind: "user".into(),
        id: Some("42".into()),
    });
    Publisher::from_context(js.clone())
        .publish(&event)
        .await
        .unwrap();

    let consumer = js
        .get_stream(&stream.config.name)
        .await
        .unwrap()
        .create_consumer(consumer::pull::Config {
            filter_subject: "events.order.>".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut messages = consumer.messages().await.unwrap();
    let message = tokio::time::timeout(Duration::from_secs(5), messages.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();

    assert_eq!(message.subject.as_str(), "events.order.status_changed");
    assert_eq!(Envelope::decode(&message.payload).unwrap(), event);
    let headers = message.headers.as_ref().unwrap();
    assert_eq!(
        headers.get("Nats-Msg-Id").unwrap().as_str(),
        event.id.to_string()
    );
    assert_eq!(
        headers.get("Content-Type").unwrap().as_str(),
        "application/json"
    );
    assert!(parse_traceparent(headers.get(TRACEPARENT).unwrap().as_str()).is_some());
    message.ack().await.unwrap();
}
