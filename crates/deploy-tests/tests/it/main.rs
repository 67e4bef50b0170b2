//! Each service against the NATS authorization the manifests ship: its main path works as its
//! own user, and one thing outside its permissions is refused.
#![allow(clippy::unwrap_used)]

mod common;
mod gateway_socketio;
mod gateway_ws;
mod integrations_runner;
mod stat_aggregator;
mod webhook_dispatcher;
mod wrong_password;
