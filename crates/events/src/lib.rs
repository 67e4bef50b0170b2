//! The platform's event contract.
//!
//! Backend services publish a domain event once; every surface derives what it shows from the
//! same [`Envelope`] through the one mapping table in [`surface`]:
//!
//! ```text
//! events.order.status_changed ─┬─ Socket.IO /admin: orders_updated → entity:orders:101, domain:orders
//!                              ├─ WebSocket /ws:    order:updated  → order_changes
//!                              └─ webhooks:         order.status_changed
//! ```
//!
//! - [`envelope`]: the event envelope and its JSON form.
//! - [`catalog`]: every event type the customer-facing seeds name.
//! - [`pattern`]: event-type patterns (`deal.status_changed`, `deal.*`, `*`), shared by webhooks
//!   and counters.
//! - [`subject`]: the NATS subject map, builders and parsers.
//! - [`surface`]: the mapping from an event to each surface.
//! - [`publisher`] and [`provision`]: publishing to JetStream and idempotent set-up of streams
//!   and key-value buckets.
//! - [`stat`]: public counters: snapshot, coalesced updates, rebuild reply.
//! - [`trace_context`]: W3C `traceparent` propagation over NATS headers.
#![warn(missing_docs)]

pub mod catalog;
pub mod envelope;
mod event_type;
pub mod pattern;
pub mod provision;
pub mod publisher;
pub mod stat;
pub mod subject;
pub mod surface;
pub mod token;
pub mod trace_context;

pub use envelope::{Actor, Audience, EntityRef, Envelope, EnvelopeError};
pub use event_type::EventType;
pub use pattern::{Pattern, PatternError};
pub use publisher::{PublishError, Published, Publisher};
pub use token::{Token, TokenError};
