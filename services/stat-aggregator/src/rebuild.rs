//! Rebuild: recompute every counter from the `EVENTS` stream, beside the live fold.
//!
//! On `cmd.stat.rebuild` the leader notes the stream's last sequence, and a task replays the
//! stream from its first message up to that sequence through an ordered consumer into a
//! fresh [`Folder`] (the same fold, the same definitions, the same clock). When it is done
//! the leader folds, into the rebuilt state, the few messages the live fold has included
//! since (read by sequence), so both include exactly the same messages, then replaces the
//! live state with it and publishes every value as the next update. Nothing is counted twice:
//! the rebuilt state is the fold of the stream up to the live sequence, as the live one is.

use std::sync::Arc;

use async_nats::jetstream::{self, consumer};
use futures_util::StreamExt;

use crate::clock::Clock;
use crate::config::Definitions;
use crate::fold::Folder;

/// Why a rebuild failed.
pub type RebuildError = Box<dyn std::error::Error + Send + Sync>;

/// Replays the stream up to `until` (inclusive) into a fresh state; returns it and the number
/// of messages read.
pub async fn replay(
    js: jetstream::Context,
    defs: Arc<Definitions>,
    clock: Arc<dyn Clock>,
    dedupe_window: usize,
    until: u64,
) -> Result<(Folder, u64), RebuildError> {
    let mut folder = Folder::new(defs, clock, dedupe_window);
    if until == 0 {
        return Ok((folder, 0));
    }
    let stream = js.get_stream(events::subject::EVENTS_STREAM).await?;
    let ordered = stream
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subject: events::subject::ALL_EVENTS.to_owned(),
            deliver_policy: consumer::DeliverPolicy::All,
            description: Some("stat-aggregator rebuild".to_owned()),
            ..Default::default()
        })
        .await?;
    let mut messages = ordered.messages().await?;
    let mut read = 0;
    while let Some(message) = messages.next().await {
        let message = message?;
        let seq = message.info()?.stream_sequence;
        if seq > until {
            break;
        }
        read += 1;
        fold_raw(&mut folder, seq, &message.payload);
        if seq >= until {
            break;
        }
    }
    Ok((folder, read))
}

/// Folds `payload` at `seq`; a payload that is not an event still advances the position.
pub fn fold_raw(folder: &mut Folder, seq: u64, payload: &[u8]) {
    match events::Envelope::decode(payload) {
        Ok(event) => {
            folder.fold(seq, &event);
        }
        Err(_) => folder.skip(seq),
    }
}

/// Brings `rebuilt` up to stream sequence `live` by reading the messages in between by
/// sequence (a deleted sequence counts nothing). Also fills the live fold's gaps.
pub async fn catch_up(
    stream: &jetstream::stream::Stream,
    rebuilt: &mut Folder,
    live: u64,
) -> Result<(), RebuildError> {
    for seq in rebuilt.seq() + 1..=live {
        match stream.get_raw_message(seq).await {
            Ok(m) => fold_raw(rebuilt, seq, &m.payload),
            Err(e) if e.kind() == jetstream::stream::LastRawMessageErrorKind::NoMessageFound => {
                rebuilt.skip(seq);
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}
