//! gateway-socketio integration tests, one binary, against `docs/gateway-socketio.md`: the
//! service in process (or as a process, for [`lifecycle`]), a real nats-server and PostgreSQL
//! per test, and the real socket.io-client 4.8 (Node, `tests/client`) driving the sockets. Run
//! `npm ci` in `tests/client` first (scripts/test.sh does).
#![allow(clippy::unwrap_used)]

mod admin_auth;
mod collab;
mod common;
mod hardening;
mod integrations;
mod integrations_runner;
mod lifecycle;
mod presence;
mod prop_parsers;
mod provider;
mod serving;
mod stat;
mod subscriptions;
mod widget;
