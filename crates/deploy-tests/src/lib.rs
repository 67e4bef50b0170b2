//! Tests of the deployment files against the real services.
//!
//! `tests/it` starts a real `nats-server` with the very `authorization` block the manifests
//! ship ([`authorization_file`], included unchanged; only the `$NATS_PASSWORD_*` variables get
//! test values), runs each service in process as its own NATS user, drives its main path, and
//! then reads the server's log: the path must work with no permission violation, and one
//! action outside the user's permissions must be refused ([`violations`]). So the shipped
//! permissions are shown to be both enough and tight.
//!
//! This crate exists so that one test binary may depend on all five services without any
//! service depending on another; it is not a default member (`cargo test --workspace` or
//! `-p deploy-tests` runs it).
#![warn(missing_docs)]

use std::path::{Path, PathBuf};

/// `k8s/base/nats/authorization.conf`: the users and permissions every shipped NATS server
/// config includes (k8s dev and prod, docker-compose).
pub fn authorization_file() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../k8s/base/nats/authorization.conf")
}

/// Every `$NATS_PASSWORD_<USER>` variable `conf` refers to, in order, without duplicates.
pub fn password_variables(conf: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for line in conf.lines() {
        let line = line.split('#').next().unwrap_or_default();
        let mut rest = line;
        while let Some(at) = rest.find("$NATS_PASSWORD_") {
            let name: String = rest[at + 1..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            rest = &rest[at + 1 + name.len()..];
            if !out.contains(&name) {
                out.push(name);
            }
        }
    }
    out
}

/// What a refused operation tried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// A publish (or a request, or a reply).
    Publish,
    /// A subscription.
    Subscribe,
}

/// One permission violation the server logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The NATS user.
    pub user: String,
    /// Publish or subscribe.
    pub operation: Operation,
    /// The subject refused.
    pub subject: String,
}

/// The permission violations in a `nats-server` log, such as
/// `[ERR] 127.0.0.1:5 - cid:5 - "$G/user:gateway-ws" - Publish Violation - Subject "events.a.b"`.
pub fn violations(log: &str) -> Vec<Violation> {
    log.lines()
        .filter_map(|line| {
            let user = between(line, "user:", "\"")?;
            let operation = if line.contains(" - Publish Violation - ") {
                Operation::Publish
            } else if line.contains(" - Subscription Violation - ") {
                Operation::Subscribe
            } else {
                return None;
            };
            let subject = between(line, "Subject \"", "\"")?;
            Some(Violation {
                user: user.to_owned(),
                operation,
                subject: subject.to_owned(),
            })
        })
        .collect()
}

fn between<'a>(line: &'a str, start: &str, end: &str) -> Option<&'a str> {
    let from = line.find(start)? + start.len();
    let len = line[from..].find(end)?;
    Some(&line[from..from + len])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_every_password_variable_of_the_shipped_file() {
        let conf = std::fs::read_to_string(authorization_file()).expect("shipped file");
        let vars = password_variables(&conf);
        for user in [
            "GATEWAY_WS",
            "GATEWAY_SOCKETIO",
            "WEBHOOK_DISPATCHER",
            "INTEGRATIONS_RUNNER",
            "STAT_AGGREGATOR",
            "BACKEND",
            "ADMIN",
        ] {
            assert!(
                vars.contains(&format!("NATS_PASSWORD_{user}")),
                "{user}: {vars:?}"
            );
        }
        assert_eq!(
            password_variables("a: $NATS_PASSWORD_X # $NATS_PASSWORD_COMMENT\nb: $NATS_PASSWORD_X"),
            ["NATS_PASSWORD_X"]
        );
    }

    #[test]
    fn reads_violations_from_the_log() {
        let log = "[1] 2026/01/01 [INF] Server is ready\n\
            [1] 2026/01/01 [ERR] 127.0.0.1:5 - cid:5 - \"$G/user:gateway-ws\" - Publish Violation - Subject \"events.a.b\"\n\
            [1] 2026/01/01 [ERR] 127.0.0.1:5 - cid:5 - \"$G/user:gateway-ws\" - Subscription Violation - Subject \"rt.>\", SID 1\n\
            [1] 2026/01/01 [ERR] 127.0.0.1:6 - cid:6 - authentication error - User \"gateway-ws\"\n";
        assert_eq!(
            violations(log),
            [
                Violation {
                    user: "gateway-ws".into(),
                    operation: Operation::Publish,
                    subject: "events.a.b".into()
                },
                Violation {
                    user: "gateway-ws".into(),
                    operation: Operation::Subscribe,
                    subject: "rt.>".into()
                },
            ]
        );
    }
}
