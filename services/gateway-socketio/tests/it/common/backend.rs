//! A stand-in for the chat backend on NATS: answers `cmd.chat.channel_members` from a table
//! that tests change as they go, and counts the requests.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{Value, json};
use test_support::NatsServer;

/// Members per channel id, served on `cmd.chat.channel_members`. A channel not in the table
/// is answered `{"ok": false, ...}` (the backend refuses it).
pub struct ChatBackend {
    channels: Arc<Mutex<HashMap<String, Value>>>,
    requests: Arc<AtomicUsize>,
    delay: Arc<Mutex<Duration>>,
    task: tokio::task::JoinHandle<()>,
}

impl ChatBackend {
    /// Starts answering on its own connection; returns once the subscription is in place.
    pub async fn start(nats: &NatsServer) -> Self {
        let client = async_nats::connect(nats.url()).await.unwrap();
        let mut sub = client
            .subscribe(events::subject::CHANNEL_MEMBERS)
            .await
            .unwrap();
        super::nats_sync(&client).await;
        let channels: Arc<Mutex<HashMap<String, Value>>> = Arc::default();
        let requests = Arc::new(AtomicUsize::new(0));
        let delay: Arc<Mutex<Duration>> = Arc::default();
        let task = {
            let (channels, requests, delay) = (
                Arc::clone(&channels),
                Arc::clone(&requests),
                Arc::clone(&delay),
            );
            tokio::spawn(async move {
                while let Some(message) = sub.next().await {
                    requests.fetch_add(1, Ordering::SeqCst);
                    let Some(reply) = message.reply else { continue };
                    let asked: Value = serde_json::from_slice(&message.payload).unwrap_or_default();
                    let channel = asked["channel_id"].as_str().unwrap_or_default().to_owned();
                    let answer = channels.lock().unwrap().get(&channel).cloned().unwrap_or_else(
                        || json!({"ok": false, "error": {"code": "not_found", "message": "no such channel"}}),
                    );
                    let wait = *delay.lock().unwrap();
                    let client = client.clone();
                    // Each answer on its own, so a delay holds up no other request.
                    tokio::spawn(async move {
                        tokio::time::sleep(wait).await;
                        let _ = client.publish(reply, answer.to_string().into()).await;
                    });
                }
            })
        };
        Self {
            channels,
            requests,
            delay,
            task,
        }
    }

    /// Channel `id` has these `/admin` users and `/provider` profiles.
    pub fn channel(&self, id: &str, user_ids: &[&str], profile_ids: &[&str]) {
        self.channels.lock().unwrap().insert(
            id.to_owned(),
            json!({"user_ids": user_ids, "profile_ids": profile_ids}),
        );
    }

    /// Answers from now on wait `delay` first (a slow backend).
    pub fn delay(&self, delay: Duration) {
        *self.delay.lock().unwrap() = delay;
    }

    /// Membership requests answered so far.
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

impl Drop for ChatBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}
