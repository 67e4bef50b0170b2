//! gateway-ws integration tests, one binary: the real service (in process, or as a process for
//! [`lifecycle`]), real NATS, real PostgreSQL and Redis session stores written the way
//! connect-pg-simple and connect-redis write them, and a real WebSocket client.
#![allow(clippy::unwrap_used)]

mod delivery;
mod harness;
mod lifecycle;
mod limits;
mod origins;
mod prop_parsers;
mod sessions;
