//! The files of `proto/` against each other and against `events::subject`: every schema the
//! AsyncAPI document names exists and every schema is named there, every schema's examples
//! are valid against it, every subject the services use has its channel, and every
//! integration Socket.IO event gateway-socketio handles or emits has its message.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde_json::Value;

fn proto() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto")
}

fn asyncapi() -> String {
    std::fs::read_to_string(proto().join("asyncapi.yaml")).unwrap()
}

fn schema_files() -> BTreeSet<String> {
    std::fs::read_dir(proto().join("schemas"))
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .filter(|name| name.ends_with(".schema.json"))
        .collect()
}

#[test]
fn the_asyncapi_document_and_the_schemas_name_each_other() {
    let doc = asyncapi();
    let referenced: BTreeSet<String> = doc
        .split("./schemas/")
        .skip(1)
        .map(|rest| {
            rest.split(|c: char| c == '\'' || c == '#' || c.is_whitespace())
                .next()
                .unwrap()
                .to_owned()
        })
        .collect();
    let files = schema_files();
    let missing: Vec<_> = referenced.difference(&files).collect();
    assert!(missing.is_empty(), "referenced but absent: {missing:?}");
    let unused: Vec<_> = files.difference(&referenced).collect();
    assert!(unused.is_empty(), "schemas no channel uses: {unused:?}");
}

#[test]
fn every_schema_accepts_its_own_examples() {
    for name in schema_files() {
        let raw: Value = serde_json::from_str(
            &std::fs::read_to_string(proto().join("schemas").join(&name)).unwrap(),
        )
        .unwrap();
        let validator = jsonschema::validator_for(&raw).unwrap_or_else(|e| panic!("{name}: {e}"));
        let examples = raw["examples"].as_array().cloned().unwrap_or_default();
        assert!(!examples.is_empty(), "{name} has no examples");
        for example in examples {
            let errors: Vec<String> = validator
                .iter_errors(&example)
                .map(|e| e.to_string())
                .collect();
            assert!(errors.is_empty(), "{name}: {example}\n{errors:#?}");
        }
    }
}

#[test]
fn every_subject_in_use_has_its_channel() {
    use events::subject::*;
    let doc = asyncapi();
    let addresses: BTreeSet<&str> = doc
        .lines()
        .filter_map(|line| line.trim().strip_prefix("address: "))
        .map(|address| address.trim_matches('\''))
        .collect();
    for subject in [
        WIDGET_KEY_DEACTIVATED,
        SOCKET_METRICS,
        DISCORD_REQUEST_SEND,
        "rt.chat.message",
        GATEWAY_TYPING,
        CHANNEL_MEMBERS,
        FOLLOWED_CHATS,
        STAT_UPDATES,
        STAT_REBUILD,
        INTEGRATION_EXECUTE,
        INTEGRATION_STATUS,
        PROJECT_ACCESS,
        INTEGRATION_ROOM,
        INTEGRATION_USAGE,
        INTEGRATION_WEBHOOK,
    ] {
        assert!(addresses.contains(subject), "no channel for {subject}");
    }
    // Filters: the channel's address has a parameter where the filter has its wildcard.
    for (filter, address) in [
        (CHAT_PUSHES, "rt.chat.{kind}"),
        (ATTENTION_PUSHES, "rt.attention.{kind}"),
        (WIDGET_PUSHES, "rt.widget.{widgetKey}.update"),
        (ALL_EVENTS, "events.{domain}.{eventType}"),
        (
            INTEGRATION_WEBHOOKS,
            "integrations.webhooks.{integrationId}",
        ),
    ] {
        assert!(
            addresses.contains(address),
            "no channel {address} for {filter}"
        );
    }
    for stream in [EVENTS_STREAM, INTEGRATION_WEBHOOKS_STREAM] {
        assert!(
            doc.contains(&format!("stream: {stream}\n")),
            "no x-jetstream stream {stream}"
        );
    }
}

/// The `name:` of every message of the AsyncAPI document.
fn message_names(doc: &str) -> BTreeSet<String> {
    doc.lines()
        .filter_map(|line| line.strip_prefix("      name: "))
        .map(|name| name.trim_matches(|c| c == '\'' || c == '"').to_owned())
        .collect()
}

/// Every Socket.IO event name (`"integration:…"` string literal) in the gateway's integration
/// module: the events it handles and the ones it emits.
fn gateway_integration_events() -> BTreeSet<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../services/gateway-socketio/src/integration");
    let mut names = BTreeSet::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let source = std::fs::read_to_string(&path).unwrap();
        for literal in source.split("\"integration:").skip(1) {
            let Some((rest, _)) = literal.split_once('"') else {
                continue;
            };
            // Room names are `format!`ed (`integration:{id}`); `"integration:"` is a prefix.
            let event = rest
                .split(':')
                .all(|part| !part.is_empty() && part.bytes().all(|b| b.is_ascii_lowercase()));
            if event {
                names.insert(format!("integration:{rest}"));
            }
        }
    }
    names
}

#[test]
fn every_integration_event_of_the_gateway_has_its_message() {
    let documented: BTreeSet<String> = message_names(&asyncapi())
        .into_iter()
        .filter(|name| name.starts_with("integration:"))
        .collect();
    let in_code = gateway_integration_events();
    // A sanity floor: the scan found the handlers and the emits.
    for known in [
        "integration:join",
        "integration:execution:completed",
        "integration:error",
    ] {
        assert!(in_code.contains(known), "scan missed {known}: {in_code:?}");
    }
    let undocumented: Vec<_> = in_code.difference(&documented).collect();
    assert!(
        undocumented.is_empty(),
        "events without a message: {undocumented:?}"
    );
    let unknown: Vec<_> = documented.difference(&in_code).collect();
    assert!(
        unknown.is_empty(),
        "messages the gateway neither handles nor emits: {unknown:?}"
    );
}
