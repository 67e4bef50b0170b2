//! Before measuring: every integration event, once, through the real gateway and runner, and
//! every payload that crossed a wire checked against its published schema in
//! `proto/schemas/` — what two sockets received (acks and events) and what went over NATS
//! (`cmd.integration.*` requests and their replies, `rt.integration.*`). What the services
//! really send is validated, not a copy of it, so a drift between the code and the contract
//! shows here as a problem line.
//!
//! `cmd.project.access` is not exercised: the stack runs with `integrations.access = "claim"`.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::task::JoinHandle;

use super::client::Client;
use super::stack::{INTEGRATION, PROJECT, STEP, Stack};

/// The published schemas, compiled once.
pub struct Schemas(BTreeMap<&'static str, jsonschema::Validator>);

impl std::fmt::Debug for Schemas {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.0.keys()).finish()
    }
}

const SCHEMAS: [&str; 21] = [
    "socketio-integration-target.schema.json",
    "socketio-integration-execute.schema.json",
    "socketio-integration-room.schema.json",
    "socketio-integration-webhook-subscription.schema.json",
    "socketio-integration-execution-started.schema.json",
    "socketio-integration-execution-completed.schema.json",
    "socketio-integration-execution-failed.schema.json",
    "socketio-integration-status-response.schema.json",
    "socketio-integration-usage-updated.schema.json",
    "socketio-integration-webhook-received.schema.json",
    "socketio-integration-error.schema.json",
    "socketio-integration-ack.schema.json",
    "integration-execute-request.schema.json",
    "integration-execute-reply.schema.json",
    "integration-status-request.schema.json",
    "integration-status-reply.schema.json",
    "project-access-request.schema.json",
    "project-access-reply.schema.json",
    "integration-room-event.schema.json",
    "integration-usage.schema.json",
    "integration-webhook.schema.json",
];

impl Schemas {
    pub fn load() -> anyhow::Result<Self> {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../proto/schemas");
        let mut all = BTreeMap::new();
        for name in SCHEMAS {
            let text = std::fs::read_to_string(format!("{dir}/{name}"))
                .with_context(|| format!("reading {name}"))?;
            let raw: Value = serde_json::from_str(&text)?;
            let validator = jsonschema::validator_for(&raw)
                .map_err(|e| anyhow::anyhow!("compiling {name}: {e}"))?;
            all.insert(name, validator);
        }
        Ok(Self(all))
    }

    /// Why `value` does not match `schema` (empty: it does).
    fn errors(&self, schema: &str, value: &Value) -> Vec<String> {
        match self.0.get(schema) {
            Some(v) => v.iter_errors(value).map(|e| e.to_string()).collect(),
            None => vec![format!("no schema {schema}")],
        }
    }
}

/// What was checked, and what did not match.
#[derive(Debug, Default)]
pub struct Findings {
    /// Schema → payloads checked.
    pub checked: BTreeMap<String, u64>,
    /// One line per mismatch or missing answer.
    pub problems: Vec<String>,
}

impl Findings {
    fn check(&mut self, schemas: &Schemas, schema: &str, what: &str, value: &Value) {
        *self.checked.entry(schema.to_owned()).or_default() += 1;
        for e in schemas.errors(schema, value) {
            self.problems
                .push(format!("{what} vs {schema}: {e}; payload {value}"));
        }
    }

    /// An ack: the ack schema, and its body without `ok` against the answer's schema.
    fn check_ack(&mut self, schemas: &Schemas, answer_schema: &str, what: &str, ack: &Value) {
        self.check(schemas, "socketio-integration-ack.schema.json", what, ack);
        let mut body = ack.clone();
        if let Value::Object(map) = &mut body {
            map.remove("ok");
        }
        self.check(schemas, answer_schema, what, &body);
    }

    fn step<T>(&mut self, what: &str, result: anyhow::Result<T>) -> Option<T> {
        match result {
            Ok(v) => Some(v),
            Err(e) => {
                self.problems.push(format!("{what}: {e:#}"));
                None
            }
        }
    }

    pub fn json(&self) -> Value {
        json!({"checked": self.checked, "problems": self.problems})
    }
}

/// Every NATS message on the subjects of the integration contract, and the replies to the
/// commands (matched by their reply subject), while it runs.
struct Snoop {
    seen: Arc<Mutex<Vec<(String, Value)>>>,
    task: JoinHandle<()>,
}

impl Snoop {
    async fn start(nats_url: &str) -> anyhow::Result<Self> {
        let nc = async_nats::connect(nats_url).await?;
        let mut all = nc.subscribe(">").await?;
        nc.flush().await?;
        let seen = Arc::new(Mutex::new(Vec::new()));
        let out = Arc::clone(&seen);
        let task = tokio::spawn(async move {
            let _keep = nc;
            // Reply subject → the schema of the reply.
            let mut replies: HashMap<String, &'static str> = HashMap::new();
            while let Some(m) = all.next().await {
                let subject = m.subject.as_str();
                let schema = match subject {
                    events::subject::INTEGRATION_EXECUTE => {
                        if let Some(r) = &m.reply {
                            replies.insert(r.to_string(), "integration-execute-reply.schema.json");
                        }
                        "integration-execute-request.schema.json"
                    }
                    events::subject::INTEGRATION_STATUS => {
                        if let Some(r) = &m.reply {
                            replies.insert(r.to_string(), "integration-status-reply.schema.json");
                        }
                        "integration-status-request.schema.json"
                    }
                    events::subject::PROJECT_ACCESS => {
                        if let Some(r) = &m.reply {
                            replies.insert(r.to_string(), "project-access-reply.schema.json");
                        }
                        "project-access-request.schema.json"
                    }
                    events::subject::INTEGRATION_ROOM => "integration-room-event.schema.json",
                    events::subject::INTEGRATION_USAGE => "integration-usage.schema.json",
                    events::subject::INTEGRATION_WEBHOOK => "integration-webhook.schema.json",
                    s if events::subject::push_kind(events::subject::INTEGRATION_WEBHOOKS, s)
                        .is_some() =>
                    {
                        "integration-webhook.schema.json"
                    }
                    other => match replies.remove(other) {
                        Some(schema) => schema,
                        None => continue,
                    },
                };
                let value = serde_json::from_slice(&m.payload)
                    .unwrap_or_else(|_| json!({"unreadable": String::from_utf8_lossy(&m.payload)}));
                out.lock()
                    .unwrap()
                    .push((format!("{schema} ({subject})"), value));
            }
        });
        Ok(Self { seen, task })
    }

    fn stop(self, schemas: &Schemas, findings: &mut Findings) {
        self.task.abort();
        let seen = std::mem::take(&mut *self.seen.lock().unwrap());
        for (label, value) in seen {
            let schema = label.split(' ').next().unwrap_or_default().to_owned();
            findings.check(schemas, &schema, &format!("NATS {label}"), &value);
        }
    }
}

fn target() -> Value {
    json!({"projectId": PROJECT, "integrationId": INTEGRATION})
}

fn execute(endpoint: &str) -> Value {
    json!({"projectId": PROJECT, "integrationId": INTEGRATION, "endpoint": endpoint,
           "params": {"userId": "contract", "limit": 2}, "requestData": {}})
}

/// Runs every event once; the two clients are `a` (the caller, with acks) and `b` (in the
/// room, without acks).
pub async fn run(stack: &Stack, schemas: &Schemas) -> anyhow::Result<Findings> {
    let mut f = Findings::default();
    let snoop = Snoop::start(&stack.nats_url).await?;
    let protocol = stack.protocol()?;
    let mut a = Client::connect(&protocol, &protocol.auth).await?;
    let mut b = Client::connect(&protocol, &protocol.auth).await?;
    let s = schemas;

    // The client payloads themselves (what this tool sends).
    f.check(
        s,
        "socketio-integration-target.schema.json",
        "sent target",
        &target(),
    );
    f.check(
        s,
        "socketio-integration-execute.schema.json",
        "sent execute",
        &execute("getUserTweets"),
    );

    // Joins: a through its ack, b as integration:joined.
    let id = a
        .emit("integration:join", &target(), true)
        .await?
        .unwrap_or(0);
    if let Some(ack) = f.step("integration:join ack", a.ack(id, STEP).await) {
        f.check_ack(
            s,
            "socketio-integration-room.schema.json",
            "integration:join ack",
            &ack,
        );
    }
    b.emit("integration:join", &target(), false).await?;
    if let Some(ev) = f.step(
        "integration:joined",
        b.event("integration:joined", STEP).await,
    ) {
        f.check(
            s,
            "socketio-integration-room.schema.json",
            "integration:joined",
            &ev,
        );
    }
    b.emit("integration:webhook:subscribe", &target(), false)
        .await?;
    if let Some(ev) = f.step(
        "integration:webhook:subscribed",
        b.event("integration:webhook:subscribed", STEP).await,
    ) {
        f.check(
            s,
            "socketio-integration-webhook-subscription.schema.json",
            "integration:webhook:subscribed",
            &ev,
        );
    }

    // A success: a's ack (result), b's started and completed (summary).
    let id = a
        .emit("integration:execute", &execute("getUserTweets"), true)
        .await?
        .unwrap_or(0);
    if let Some(ack) = f.step("execute ack", a.ack(id, STEP).await) {
        if ack["ok"] != true {
            f.problems.push(format!("execute ack not ok: {ack}"));
        }
        f.check_ack(
            s,
            "socketio-integration-execution-completed.schema.json",
            "execute ack",
            &ack,
        );
    }
    room_events(&mut f, s, &mut b, "execution", "completed").await;
    // Without an ack: the caller gets the event.
    a.emit("integration:execute", &execute("getUserTweets"), false)
        .await?;
    if let Some(ev) = f.step(
        "integration:execution:completed (caller)",
        a.event("integration:execution:completed", STEP).await,
    ) {
        f.check(
            s,
            "socketio-integration-execution-completed.schema.json",
            "integration:execution:completed (caller)",
            &ev,
        );
    }
    room_events(&mut f, s, &mut b, "execution", "completed").await;

    // A failure (the third party's 404), with and without an ack.
    let id = a
        .emit("integration:execute", &execute("missing"), true)
        .await?
        .unwrap_or(0);
    if let Some(ack) = f.step("failed execute ack", a.ack(id, STEP).await) {
        f.check_ack(
            s,
            "socketio-integration-execution-failed.schema.json",
            "failed execute ack",
            &ack,
        );
    }
    room_events(&mut f, s, &mut b, "execution", "failed").await;
    a.emit("integration:execute", &execute("missing"), false)
        .await?;
    if let Some(ev) = f.step(
        "integration:execution:failed (caller)",
        a.event("integration:execution:failed", STEP).await,
    ) {
        f.check(
            s,
            "socketio-integration-execution-failed.schema.json",
            "integration:execution:failed (caller)",
            &ev,
        );
    }
    room_events(&mut f, s, &mut b, "execution", "failed").await;

    // The health check: events to the caller and the room, and the ack.
    let test =
        json!({"projectId": PROJECT, "integrationId": INTEGRATION, "endpoint": "healthCheck"});
    let id = a.emit("integration:test", &test, true).await?.unwrap_or(0);
    if let Some(ack) = f.step("test ack", a.ack(id, STEP).await) {
        f.check_ack(
            s,
            "socketio-integration-execution-completed.schema.json",
            "test ack",
            &ack,
        );
    }
    for name in ["integration:test:started", "integration:test:completed"] {
        if let Some(ev) = f.step(&format!("{name} (caller)"), a.event(name, STEP).await) {
            f.check(s, schema_of(name), &format!("{name} (caller)"), &ev);
        }
    }
    room_events(&mut f, s, &mut b, "test", "completed").await;

    // Status, with and without an ack.
    let id = a
        .emit("integration:status", &target(), true)
        .await?
        .unwrap_or(0);
    if let Some(ack) = f.step("status ack", a.ack(id, STEP).await) {
        f.check_ack(
            s,
            "socketio-integration-status-response.schema.json",
            "status ack",
            &ack,
        );
    }
    b.emit("integration:status", &target(), false).await?;
    if let Some(ev) = f.step(
        "integration:status:response",
        b.event("integration:status:response", STEP).await,
    ) {
        f.check(
            s,
            "socketio-integration-status-response.schema.json",
            "integration:status:response",
            &ev,
        );
    }

    // The usage flush after those calls reaches the room.
    if let Some(ev) = f.step(
        "integration:usage:updated",
        b.event("integration:usage:updated", STEP).await,
    ) {
        f.check(
            s,
            "socketio-integration-usage-updated.schema.json",
            "integration:usage:updated",
            &ev,
        );
    }

    // An inbound webhook, signed as GitHub signs, reaches the webhook room.
    let hook = json!({"action": "opened", "issue": {"number": 1}});
    match stack.send_webhook(&hook, "load-contract-delivery-1").await {
        Ok(200) => {
            if let Some(ev) = f.step(
                "integration:webhook:received",
                b.event("integration:webhook:received", STEP).await,
            ) {
                f.check(
                    s,
                    "socketio-integration-webhook-received.schema.json",
                    "integration:webhook:received",
                    &ev,
                );
            }
        }
        Ok(status) => f
            .problems
            .push(format!("the runner answered the webhook {status}")),
        Err(e) => f.problems.push(format!("sending the webhook: {e:#}")),
    }

    // A refusal without an ack: integration:error.
    b.emit("integration:execute", &json!({"projectId": PROJECT}), false)
        .await?;
    if let Some(ev) = f.step(
        "integration:error",
        b.event("integration:error", STEP).await,
    ) {
        f.check(
            s,
            "socketio-integration-error.schema.json",
            "integration:error",
            &ev,
        );
    }
    // And with one.
    let id = a
        .emit(
            "integration:join",
            &json!({"projectId": "other", "integrationId": INTEGRATION}),
            true,
        )
        .await?
        .unwrap_or(0);
    if let Some(ack) = f.step("refused join ack", a.ack(id, STEP).await) {
        if ack["ok"] != false {
            f.problems
                .push(format!("a join of another project was not refused: {ack}"));
        }
        f.check(
            s,
            "socketio-integration-ack.schema.json",
            "refused join ack",
            &ack,
        );
    }

    // Leaving.
    b.emit("integration:webhook:unsubscribe", &target(), false)
        .await?;
    if let Some(ev) = f.step(
        "integration:webhook:unsubscribed",
        b.event("integration:webhook:unsubscribed", STEP).await,
    ) {
        f.check(
            s,
            "socketio-integration-webhook-subscription.schema.json",
            "integration:webhook:unsubscribed",
            &ev,
        );
    }
    b.emit("integration:leave", &target(), false).await?;
    if let Some(ev) = f.step("integration:left", b.event("integration:left", STEP).await) {
        f.check(
            s,
            "socketio-integration-room.schema.json",
            "integration:left",
            &ev,
        );
    }
    let id = a
        .emit("integration:leave", &target(), true)
        .await?
        .unwrap_or(0);
    if let Some(ack) = f.step("leave ack", a.ack(id, STEP).await) {
        f.check_ack(
            s,
            "socketio-integration-room.schema.json",
            "leave ack",
            &ack,
        );
    }

    a.close().await;
    b.close().await;
    // The room events and replies of the last steps are on the wire already; give the snoop
    // their trip.
    tokio::time::sleep(Duration::from_millis(200)).await;
    snoop.stop(s, &mut f);
    for wanted in SCHEMAS {
        if wanted.starts_with("project-access") {
            continue;
        }
        if !f.checked.contains_key(wanted) {
            f.problems.push(format!("no payload of {wanted} was seen"));
        }
    }
    Ok(f)
}

fn schema_of(event: &str) -> &'static str {
    if event.ends_with(":started") {
        "socketio-integration-execution-started.schema.json"
    } else if event.ends_with(":completed") {
        "socketio-integration-execution-completed.schema.json"
    } else {
        "socketio-integration-execution-failed.schema.json"
    }
}

/// The room member's `integration:<kind>:started` and `integration:<kind>:<outcome>`.
async fn room_events(f: &mut Findings, s: &Schemas, b: &mut Client, kind: &str, outcome: &str) {
    for phase in ["started", outcome] {
        let name = format!("integration:{kind}:{phase}");
        if let Some(ev) = f.step(&format!("{name} (room)"), b.event(&name, STEP).await) {
            if phase == "completed" && ev.get("result").is_some() {
                f.problems.push(format!("the room got the data: {ev}"));
            }
            f.check(s, schema_of(&name), &format!("{name} (room)"), &ev);
        }
    }
}
