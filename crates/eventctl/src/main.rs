//! `eventctl`: publish domain events and watch NATS subjects, for people and for scripts.
//!
//! ```text
//! eventctl publish order.status_changed --entity 101 --data '{"status":"paid"}'
//! eventctl tail 'events.order.>' --json --count 1
//! eventctl catalog
//! eventctl provision
//! eventctl rebuild-stats
//! ```
//!
//! Exit codes: 0 success, 2 bad usage, 65 bad input data, 69 NATS unreachable or refused.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use events::{Actor, Audience, Envelope, EventType, Publisher, Token};
use futures_util::StreamExt;
use serde_json::{Map, Value, json};

#[derive(Debug, Parser)]
#[command(version, about = "Publish domain events and tail NATS subjects")]
struct Cli {
    /// NATS server URL.
    #[arg(
        long,
        global = true,
        env = "NATS_URL",
        default_value = "nats://127.0.0.1:4222"
    )]
    nats_url: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Publish one domain event to `events.<domain>.<event_type>` and print the ack as JSON.
    Publish(PublishArgs),
    /// Print messages on subjects (default `events.>`) as they arrive.
    Tail {
        /// Subjects or wildcards to follow.
        subjects: Vec<String>,
        /// Print one JSON object per message: subject, headers, payload.
        #[arg(long)]
        json: bool,
        /// Exit after this many messages.
        #[arg(long)]
        count: Option<usize>,
    },
    /// Print the event catalog and what each surface shows.
    Catalog {
        /// Print the machine-readable document (`proto/catalog.json`).
        #[arg(long)]
        json: bool,
    },
    /// Create or update the `EVENTS` stream with default limits.
    Provision,
    /// Ask stat-aggregator to recompute every counter from the stream (`cmd.stat.rebuild`)
    /// while it goes on counting; prints its reply. Exit 1 when it refused or failed.
    RebuildStats {
        /// How long to wait for the reply (a rebuild replays the whole stream).
        #[arg(long, default_value_t = 120)]
        timeout_secs: u64,
    },
}

#[derive(Debug, clap::Args)]
struct PublishArgs {
    /// Event type, `domain.event_type` (e.g. `order.status_changed`).
    event_type: String,
    /// Id of the entity the event concerns.
    #[arg(long)]
    entity: String,
    /// The event's data, JSON.
    #[arg(long, default_value = "{}")]
    data: String,
    /// Changed fields, a JSON object.
    #[arg(long)]
    changed_fields: Option<String>,
    /// Who caused it, `type` or `type:id` (e.g. `user:42`).
    #[arg(long)]
    actor: Option<String>,
    /// Target users, comma-separated.
    #[arg(long, value_delimiter = ',')]
    user_ids: Vec<String>,
    /// Target profiles, comma-separated.
    #[arg(long, value_delimiter = ',')]
    profile_ids: Vec<String>,
    /// Feed channel of the event.
    #[arg(long)]
    channel: Option<String>,
    /// Event id (UUID); default a new UUIDv7. Reuse one to test duplicate suppression.
    #[arg(long)]
    id: Option<uuid::Uuid>,
}

/// An error with the exit code that describes it.
struct Failure {
    code: u8,
    error: anyhow::Error,
}

fn data_error(error: anyhow::Error) -> Failure {
    Failure { code: 65, error }
}

fn unavailable(error: anyhow::Error) -> Failure {
    Failure { code: 69, error }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("eventctl: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure { code, error }) => {
            eprintln!("eventctl: {error:#}");
            ExitCode::from(code)
        }
    }
}

async fn run(cli: Cli) -> Result<(), Failure> {
    match cli.command {
        Command::Publish(args) => {
            let envelope = build_envelope(args).map_err(data_error)?;
            let client = connect(&cli.nats_url).await?;
            let ack = Publisher::new(client.clone())
                .publish(&envelope)
                .await
                .map_err(|e| {
                    unavailable(anyhow::Error::new(e).context(
                        "is the EVENTS stream provisioned? (a running service or `eventctl provision` creates it)",
                    ))
                })?;
            println!(
                "{}",
                json!({
                    "id": envelope.id,
                    "subject": events::subject::event_subject(&envelope.event_type),
                    "stream": ack.stream,
                    "sequence": ack.sequence,
                    "duplicate": ack.duplicate,
                })
            );
            Ok(())
        }
        Command::Tail {
            subjects,
            json,
            count,
        } => {
            let client = connect(&cli.nats_url).await?;
            tail(client, subjects, json, count)
                .await
                .map_err(unavailable)
        }
        Command::Catalog { json } => {
            let _ = print_catalog(json);
            Ok(())
        }
        Command::Provision => {
            let client = connect(&cli.nats_url).await?;
            let js = async_nats::jetstream::new(client);
            let info =
                events::provision::ensure_stream(&js, &events::provision::StreamSettings::events())
                    .await
                    .map_err(|e| unavailable(e.into()))?;
            println!(
                "{}",
                json!({"stream": info.config.name, "messages": info.state.messages})
            );
            Ok(())
        }
        Command::RebuildStats { timeout_secs } => {
            let client = connect(&cli.nats_url).await?;
            let request = client.request(events::subject::STAT_REBUILD, "".into());
            let reply = tokio::time::timeout(Duration::from_secs(timeout_secs), request)
                .await
                .map_err(|_| unavailable(anyhow::anyhow!("no reply in {timeout_secs} s")))?
                .map_err(|e| {
                    unavailable(anyhow::Error::new(e).context("is stat-aggregator running?"))
                })?;
            let reply: events::stat::RebuildReply = serde_json::from_slice(&reply.payload)
                .context("stat-aggregator's reply")
                .map_err(data_error)?;
            println!("{}", serde_json::to_string(&reply).unwrap_or_default());
            if reply.ok {
                Ok(())
            } else {
                Err(Failure {
                    code: 1,
                    error: anyhow::anyhow!(
                        "rebuild refused: {}",
                        reply.error.as_deref().unwrap_or("no reason given")
                    ),
                })
            }
        }
    }
}

fn build_envelope(args: PublishArgs) -> anyhow::Result<Envelope> {
    let event_type = EventType::parse(&args.event_type).context("event type")?;
    let data: Value = serde_json::from_str(&args.data).context("--data is not valid JSON")?;
    let mut envelope = Envelope::new(event_type, &args.entity, data).context("--entity")?;
    if let Some(id) = args.id {
        envelope.id = id;
    }
    if let Some(raw) = args.changed_fields {
        let fields: Map<String, Value> =
            serde_json::from_str(&raw).context("--changed-fields is not a JSON object")?;
        envelope = envelope.with_changed_fields(fields);
    }
    if let Some(actor) = args.actor {
        let (kind, id) = match actor.split_once(':') {
            Some((k, i)) => (k.to_owned(), Some(i.to_owned())),
            None => (actor, None),
        };
        envelope = envelope.with_actor(Actor { kind, id });
    }
    if !args.user_ids.is_empty() || !args.profile_ids.is_empty() || args.channel.is_some() {
        let channel = args
            .channel
            .map(|c| Token::new("--channel", c))
            .transpose()?;
        envelope = envelope.with_audience(Audience {
            user_ids: args.user_ids,
            profile_ids: args.profile_ids,
            channel,
        });
    }
    Ok(envelope)
}

async fn connect(url: &str) -> Result<async_nats::Client, Failure> {
    async_nats::ConnectOptions::new()
        .name("eventctl")
        .connection_timeout(Duration::from_secs(3))
        .connect(url)
        .await
        .with_context(|| format!("cannot connect to NATS at {url}"))
        .map_err(unavailable)
}

async fn tail(
    client: async_nats::Client,
    subjects: Vec<String>,
    as_json: bool,
    count: Option<usize>,
) -> anyhow::Result<()> {
    let subjects = if subjects.is_empty() {
        vec![events::subject::ALL_EVENTS.to_owned()]
    } else {
        subjects
    };
    let mut streams = Vec::new();
    for subject in &subjects {
        streams.push(client.subscribe(subject.clone()).await?);
    }
    client.flush().await?;
    eprintln!("eventctl: following {}", subjects.join(", "));
    let mut merged = futures_util::stream::select_all(streams);
    let mut seen = 0;
    let mut stdout = std::io::stdout().lock();
    while let Some(message) = merged.next().await {
        let payload = serde_json::from_slice::<Value>(&message.payload).unwrap_or_else(|_| {
            Value::from(String::from_utf8_lossy(&message.payload).into_owned())
        });
        if as_json {
            let headers: Map<String, Value> = message
                .headers
                .iter()
                .flat_map(|h| h.iter())
                .map(|(k, v)| {
                    let v = v.first().map(|v| v.as_str()).unwrap_or_default();
                    (k.to_string(), Value::from(v))
                })
                .collect();
            writeln!(
                stdout,
                "{}",
                json!({"subject": message.subject.as_str(), "headers": headers, "payload": payload})
            )?;
        } else {
            let now = events::envelope::timestamp::format(time::OffsetDateTime::now_utc());
            writeln!(stdout, "{now} {} {payload}", message.subject)?;
        }
        stdout.flush()?;
        seen += 1;
        if count.is_some_and(|n| seen >= n) {
            break;
        }
    }
    Ok(())
}

/// Writes the catalog; a closed pipe (`eventctl catalog | head`) just ends the output.
fn print_catalog(as_json: bool) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    if as_json {
        let doc = events::catalog::document();
        return writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&doc).unwrap_or_default()
        );
    }
    writeln!(
        out,
        "{:<34} {:<22} {:<22} DESCRIPTION",
        "TYPE", "SOCKET.IO /admin", "/ws"
    )?;
    for entry in events::catalog::CATALOG {
        let Ok(t) = EventType::parse(entry.event_type) else {
            continue;
        };
        let s = events::surface::summarize(&t);
        writeln!(
            out,
            "{:<34} {:<22} {:<22} {}",
            entry.event_type,
            s.socketio_admin[0],
            s.ws_event.unwrap_or("-"),
            entry.description
        )?;
    }
    Ok(())
}
