//! One table from a domain event to what each surface shows.
//!
//! | surface | rule |
//! |---|---|
//! | Socket.IO `/admin` | `{plural}_updated` and `{plural}_event_log` to rooms `entity:{plural}:{id}` and `domain:{plural}`; `event_log_created` to `domain:event_log`; `{channel}_message` to `channel:{channel}` when `audience.channel` is set. Payload: the envelope as published. |
//! | WebSocket `/ws` | for order, product, customer, shipment, transaction: `*.created` → `{domain}:created`, `*.deleted` → `{domain}:deleted`, anything else → `{domain}:updated`, on channel `{domain}_changes`; message `{event, data (+changed_fields), timestamp}`. |
//! | webhooks | the event type itself, e.g. `deal.status_changed`. |
//!
//! Everything a gateway sends per event is computed here once, so fan-out only copies bytes.

use std::borrow::Cow;

use serde::ser::SerializeMap;
use serde::{Serialize, Serializer};
use serde_json::{Map, Value};

use crate::envelope::timestamp;
use crate::{Envelope, EventType};

/// Known domains and their plural, as used in Socket.IO event names (`orders_updated`) and
/// subscription keys (`{entities: {orders: [101]}}`).
const PLURALS: &[(&str, &str)] = &[
    ("deal", "deals"),
    ("order", "orders"),
    ("payout", "payouts"),
    ("customer", "customers"),
    ("provider", "providers"),
    ("product", "products"),
    ("profile", "profiles"),
    ("shipment", "shipments"),
    ("transaction", "transactions"),
];

/// The plural of a domain: the table above, else English's common rules (`y` → `ies`, `s`/`x`
/// → `es`, otherwise `s`).
pub fn plural(domain: &str) -> Cow<'_, str> {
    if let Some((_, p)) = PLURALS.iter().find(|(d, _)| *d == domain) {
        return Cow::Borrowed(p);
    }
    if let Some(stem) = domain.strip_suffix('y')
        && !stem.ends_with(['a', 'e', 'i', 'o', 'u'])
    {
        return Cow::Owned(format!("{stem}ies"));
    }
    if domain.ends_with(['s', 'x']) {
        return Cow::Owned(format!("{domain}es"));
    }
    Cow::Owned(format!("{domain}s"))
}

/// The domain a plural names, when it is one of the known domains.
pub fn singular(plural: &str) -> Option<&'static str> {
    PLURALS.iter().find(|(_, p)| *p == plural).map(|(d, _)| *d)
}

/// Socket.IO room names.
pub mod rooms {
    /// Room of the clients following every event log entry.
    pub const EVENT_LOG: &str = "domain:event_log";
    /// The pseudo-domain clients subscribe to for [`EVENT_LOG`].
    pub const EVENT_LOG_DOMAIN: &str = "event_log";

    /// `entity:{plural}:{id}`: subscribers of one entity.
    pub fn entity(plural: &str, id: &str) -> String {
        format!("entity:{plural}:{id}")
    }

    /// `domain:{plural}`: subscribers of a whole domain.
    pub fn domain(plural: &str) -> String {
        format!("domain:{plural}")
    }

    /// `channel:{name}`: subscribers of a feed channel.
    pub fn channel(name: &str) -> String {
        format!("channel:{name}")
    }

    /// Whether `room` is one of the above (a `subscribe` room), not a room the gateway joins
    /// for other reasons.
    pub fn is_subscription(room: &str) -> bool {
        ["entity:", "domain:", "channel:"]
            .iter()
            .any(|prefix| room.starts_with(prefix))
    }
}

/// Which rule of the `/admin` row an emit comes from, so consumers (metric labels, filters)
/// decide on it rather than on the shape of the event name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AdminEmitKind {
    /// `{plural}_updated`.
    Updated,
    /// `{plural}_event_log`.
    EventLog,
    /// `event_log_created`.
    EventLogCreated,
    /// `{channel}_message`, for an event with `audience.channel`.
    ChannelMessage,
}

/// One Socket.IO emit: an event name and the rooms it goes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminEmit {
    /// Which rule produced it.
    pub kind: AdminEmitKind,
    /// Socket.IO event name.
    pub event: String,
    /// Rooms of the `/admin` namespace that receive it.
    pub rooms: Vec<String>,
}

/// What the `/admin` namespace emits for an event. The payload of every emit is the envelope.
pub fn admin_emits(envelope: &Envelope) -> Vec<AdminEmit> {
    let plural = plural(envelope.entity.domain.as_str());
    let entity_rooms = vec![
        rooms::entity(&plural, envelope.entity.id.as_str()),
        rooms::domain(&plural),
    ];
    let mut emits = vec![
        AdminEmit {
            kind: AdminEmitKind::Updated,
            event: format!("{plural}_updated"),
            rooms: entity_rooms.clone(),
        },
        AdminEmit {
            kind: AdminEmitKind::EventLog,
            event: format!("{plural}_event_log"),
            rooms: entity_rooms,
        },
        AdminEmit {
            kind: AdminEmitKind::EventLogCreated,
            event: "event_log_created".to_owned(),
            rooms: vec![rooms::EVENT_LOG.to_owned()],
        },
    ];
    if let Some(channel) = envelope.audience.as_ref().and_then(|a| a.channel.as_ref()) {
        emits.push(AdminEmit {
            kind: AdminEmitKind::ChannelMessage,
            event: format!("{channel}_message"),
            rooms: vec![rooms::channel(channel.as_str())],
        });
    }
    emits
}

/// The channels of the `/ws` protocol (seed 001).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WsChannel {
    /// `order_changes`.
    OrderChanges,
    /// `product_changes`.
    ProductChanges,
    /// `customer_changes`.
    CustomerChanges,
    /// `shipment_changes`.
    ShipmentChanges,
    /// `transaction_changes`.
    TransactionChanges,
}

/// What happened to the entity, as `/ws` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WsAction {
    /// `{domain}:created`.
    Created,
    /// `{domain}:updated`.
    Updated,
    /// `{domain}:deleted`.
    Deleted,
}

impl WsChannel {
    /// Every channel, in the seed's order.
    pub const ALL: [Self; 5] = [
        Self::OrderChanges,
        Self::ProductChanges,
        Self::CustomerChanges,
        Self::ShipmentChanges,
        Self::TransactionChanges,
    ];

    /// The channel's wire name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::OrderChanges => "order_changes",
            Self::ProductChanges => "product_changes",
            Self::CustomerChanges => "customer_changes",
            Self::ShipmentChanges => "shipment_changes",
            Self::TransactionChanges => "transaction_changes",
        }
    }

    /// The channel's position in [`Self::ALL`], `0..Self::ALL.len()`: the one mapping from a
    /// channel to a slot in a per-channel array (`WsChannel::ALL[c.index()] == c`).
    pub const fn index(self) -> usize {
        match self {
            Self::OrderChanges => 0,
            Self::ProductChanges => 1,
            Self::CustomerChanges => 2,
            Self::ShipmentChanges => 3,
            Self::TransactionChanges => 4,
        }
    }

    /// The channel with this wire name.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == name)
    }

    /// The channel carrying a domain's events.
    pub fn for_domain(domain: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.domain() == domain)
    }

    /// The domain whose events the channel carries.
    pub const fn domain(self) -> &'static str {
        match self {
            Self::OrderChanges => "order",
            Self::ProductChanges => "product",
            Self::CustomerChanges => "customer",
            Self::ShipmentChanges => "shipment",
            Self::TransactionChanges => "transaction",
        }
    }

    /// The `/ws` event name for an action on this channel's domain.
    pub const fn event(self, action: WsAction) -> &'static str {
        use WsAction::{Created, Deleted, Updated};
        match (self, action) {
            (Self::OrderChanges, Created) => "order:created",
            (Self::OrderChanges, Updated) => "order:updated",
            (Self::OrderChanges, Deleted) => "order:deleted",
            (Self::ProductChanges, Created) => "product:created",
            (Self::ProductChanges, Updated) => "product:updated",
            (Self::ProductChanges, Deleted) => "product:deleted",
            (Self::CustomerChanges, Created) => "customer:created",
            (Self::CustomerChanges, Updated) => "customer:updated",
            (Self::CustomerChanges, Deleted) => "customer:deleted",
            (Self::ShipmentChanges, Created) => "shipment:created",
            (Self::ShipmentChanges, Updated) => "shipment:updated",
            (Self::ShipmentChanges, Deleted) => "shipment:deleted",
            (Self::TransactionChanges, Created) => "transaction:created",
            (Self::TransactionChanges, Updated) => "transaction:updated",
            (Self::TransactionChanges, Deleted) => "transaction:deleted",
        }
    }
}

/// Where and as what an event appears on `/ws`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WsRoute {
    /// The channel whose subscribers receive it.
    pub channel: WsChannel,
    /// The action it reports.
    pub action: WsAction,
    /// The event name, e.g. `order:updated`.
    pub event: &'static str,
}

/// The `/ws` route of an event type, if its domain has a `/ws` channel.
pub fn ws_route(event_type: &EventType) -> Option<WsRoute> {
    let channel = WsChannel::for_domain(event_type.domain())?;
    let action = match event_type.name() {
        "created" => WsAction::Created,
        "deleted" => WsAction::Deleted,
        _ => WsAction::Updated,
    };
    Some(WsRoute {
        channel,
        action,
        event: channel.event(action),
    })
}

/// The `/ws` message for an event on a route: `{"event", "data", "timestamp"}` with the
/// envelope's `changed_fields` inside `data`, serialised once for every subscriber.
pub fn ws_message(envelope: &Envelope, route: WsRoute) -> String {
    let message = WsEventMessage {
        event: route.event,
        data: WsData {
            data: &envelope.data,
            changed_fields: envelope.changed_fields.as_ref(),
        },
        timestamp: timestamp::format(envelope.occurred_at),
    };
    // Serialising borrowed JSON values into a String cannot fail.
    serde_json::to_string(&message).unwrap_or_default()
}

#[derive(Serialize)]
struct WsEventMessage<'a> {
    event: &'static str,
    data: WsData<'a>,
    timestamp: String,
}

/// `data` with `changed_fields` merged in, without cloning either. `/ws` clients expect an
/// object: a null `data` becomes `{}` and any other non-object is carried as `{"value": ...}`.
struct WsData<'a> {
    data: &'a Value,
    changed_fields: Option<&'a Map<String, Value>>,
}

impl Serialize for WsData<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let extra = usize::from(self.changed_fields.is_some());
        let mut map = match self.data {
            Value::Object(fields) => {
                let mut map = serializer.serialize_map(Some(fields.len() + extra))?;
                for (k, v) in fields {
                    if !(extra == 1 && k == "changed_fields") {
                        map.serialize_entry(k, v)?;
                    }
                }
                map
            }
            Value::Null => serializer.serialize_map(Some(extra))?,
            other => {
                let mut map = serializer.serialize_map(Some(1 + extra))?;
                map.serialize_entry("value", other)?;
                map
            }
        };
        if let Some(changed) = self.changed_fields {
            map.serialize_entry("changed_fields", changed)?;
        }
        map.end()
    }
}

/// The webhook event type an envelope is delivered as.
pub fn webhook_type(envelope: &Envelope) -> &str {
    envelope.event_type.as_str()
}

/// Every surface's view of one event type, for documentation (`eventctl catalog`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SurfaceSummary {
    /// Socket.IO `/admin` event names.
    pub socketio_admin: Vec<String>,
    /// `/ws` event name, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ws_event: Option<&'static str>,
    /// `/ws` channel, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ws_channel: Option<&'static str>,
    /// Webhook event type.
    pub webhook: String,
}

/// Summarises what each surface shows for an event type.
pub fn summarize(event_type: &EventType) -> SurfaceSummary {
    let plural = plural(event_type.domain());
    let route = ws_route(event_type);
    SurfaceSummary {
        socketio_admin: vec![
            format!("{plural}_updated"),
            format!("{plural}_event_log"),
            "event_log_created".to_owned(),
        ],
        ws_event: route.map(|r| r.event),
        ws_channel: route.map(|r| r.channel.as_str()),
        webhook: event_type.as_str().to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use time::OffsetDateTime;
    use time::format_description::well_known::Rfc3339;

    use super::*;
    use crate::Audience;
    use crate::token::Token;

    fn event(t: &str, id: &str, data: Value) -> Envelope {
        let mut e = Envelope::new(EventType::parse(t).unwrap(), id, data).unwrap();
        e.occurred_at = OffsetDateTime::parse("2026-01-25T10:30:00Z", &Rfc3339).unwrap();
        e
    }

    fn fields(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn order_status_changed_reaches_order_and_domain_rooms() {
        let emits = admin_emits(&event("order.status_changed", "101", json!({})));
        assert_eq!(
            emits,
            [
                AdminEmit {
                    kind: AdminEmitKind::Updated,
                    event: "orders_updated".into(),
                    rooms: vec!["entity:orders:101".into(), "domain:orders".into()],
                },
                AdminEmit {
                    kind: AdminEmitKind::EventLog,
                    event: "orders_event_log".into(),
                    rooms: vec!["entity:orders:101".into(), "domain:orders".into()],
                },
                AdminEmit {
                    kind: AdminEmitKind::EventLogCreated,
                    event: "event_log_created".into(),
                    rooms: vec!["domain:event_log".into()],
                },
            ]
        );
    }

    #[test]
    fn deal_events_are_deals_updated_and_feed_channels_get_messages() {
        let e = event("deal.provider_assigned", "555", json!({})).with_audience(Audience {
            channel: Some(Token::new("channel", "deal_feed").unwrap()),
            ..Audience::default()
        });
        let emits = admin_emits(&e);
        assert_eq!(emits[0].event, "deals_updated");
        assert_eq!(emits[0].rooms, ["entity:deals:555", "domain:deals"]);
        assert_eq!(emits[3].kind, AdminEmitKind::ChannelMessage);
        assert_eq!(emits[3].event, "deal_feed_message");
        assert_eq!(emits[3].rooms, ["channel:deal_feed"]);
    }

    #[test]
    fn plurals_cover_every_catalog_domain() {
        for (domain, p) in [
            ("deal", "deals"),
            ("order", "orders"),
            ("payout", "payouts"),
            ("customer", "customers"),
            ("provider", "providers"),
            ("product", "products"),
            ("profile", "profiles"),
            ("shipment", "shipments"),
            ("transaction", "transactions"),
            ("company", "companies"),
            ("survey", "surveys"),
            ("box", "boxes"),
        ] {
            assert_eq!(plural(domain), p);
        }
        for domain in crate::catalog::known_domains() {
            assert_eq!(singular(&plural(domain)), Some(domain));
        }
    }

    #[test]
    fn ws_routes_follow_the_seed_rule_case_by_case() {
        let cases = [
            ("order.created", Some(("order:created", "order_changes"))),
            ("order.updated", Some(("order:updated", "order_changes"))),
            (
                "order.status_changed",
                Some(("order:updated", "order_changes")),
            ),
            (
                "order.payment_status_changed",
                Some(("order:updated", "order_changes")),
            ),
            ("order.deleted", Some(("order:deleted", "order_changes"))),
            (
                "product.pricing_changed",
                Some(("product:updated", "product_changes")),
            ),
            (
                "product.deleted",
                Some(("product:deleted", "product_changes")),
            ),
            (
                "customer.kyc_completed",
                Some(("customer:updated", "customer_changes")),
            ),
            (
                "customer.created",
                Some(("customer:created", "customer_changes")),
            ),
            (
                "shipment.updated",
                Some(("shipment:updated", "shipment_changes")),
            ),
            (
                "transaction.created",
                Some(("transaction:created", "transaction_changes")),
            ),
            (
                "transaction.deleted",
                Some(("transaction:deleted", "transaction_changes")),
            ),
            ("deal.created", None),
            ("payout.status_changed", None),
            ("profile.updated", None),
        ];
        for (t, want) in cases {
            let got =
                ws_route(&EventType::parse(t).unwrap()).map(|r| (r.event, r.channel.as_str()));
            assert_eq!(got, want, "{t}");
        }
    }

    #[test]
    fn every_catalogued_event_maps_to_some_surface() {
        let mut ws_events = std::collections::BTreeSet::new();
        for entry in crate::catalog::CATALOG {
            let summary = summarize(&EventType::parse(entry.event_type).unwrap());
            assert_eq!(summary.webhook, entry.event_type);
            assert!(summary.socketio_admin[0].ends_with("_updated"));
            if let Some(e) = summary.ws_event {
                ws_events.insert(e);
            }
        }
        assert_eq!(ws_events.len(), 15, "{ws_events:?}");
    }

    #[test]
    fn ws_message_matches_the_seed_order_updated_example() {
        let e = event(
            "order.status_changed",
            "123",
            json!({"id": 123, "order_number": "ORD-1234567890", "status": "processing",
                   "payment_status": "paid", "total": 99.99, "customer_id": 45, "currency": "USD"}),
        )
        .with_changed_fields(fields(
            json!({"status": "processing", "payment_status": "paid"}),
        ));
        let route = ws_route(&e.event_type).unwrap();
        let msg: Value = serde_json::from_str(&ws_message(&e, route)).unwrap();
        assert_eq!(
            msg,
            json!({
                "event": "order:updated",
                "data": {
                    "id": 123, "order_number": "ORD-1234567890", "status": "processing",
                    "payment_status": "paid", "total": 99.99, "customer_id": 45, "currency": "USD",
                    "changed_fields": {"status": "processing", "payment_status": "paid"}
                },
                "timestamp": "2026-01-25T10:30:00.000Z"
            })
        );
    }

    #[test]
    fn ws_message_without_changed_fields_matches_the_transaction_example() {
        let data = json!({"id": 202, "order_id": 123, "type": "payment", "status": "completed",
                          "amount": 99.99, "gateway": "stripe"});
        let e = event("transaction.created", "202", data.clone());
        let msg: Value =
            serde_json::from_str(&ws_message(&e, ws_route(&e.event_type).unwrap())).unwrap();
        assert_eq!(
            msg,
            json!({"event": "transaction:created", "data": data,
                   "timestamp": "2026-01-25T10:30:00.000Z"})
        );
    }

    #[test]
    fn ws_data_is_always_an_object() {
        let changed = fields(json!({"stock": 0}));
        for (data, want) in [
            (Value::Null, json!({"changed_fields": {"stock": 0}})),
            (
                json!([1, 2]),
                json!({"value": [1, 2], "changed_fields": {"stock": 0}}),
            ),
            (
                json!({"changed_fields": "stale", "id": 1}),
                json!({"id": 1, "changed_fields": {"stock": 0}}),
            ),
        ] {
            let e = event("product.updated", "1", data).with_changed_fields(changed.clone());
            let msg: Value =
                serde_json::from_str(&ws_message(&e, ws_route(&e.event_type).unwrap())).unwrap();
            assert_eq!(msg["data"], want);
        }
    }

    #[test]
    fn ws_channel_index_is_its_position_in_all() {
        for (i, channel) in WsChannel::ALL.into_iter().enumerate() {
            assert_eq!(channel.index(), i, "{channel:?}");
            assert_eq!(WsChannel::ALL[channel.index()], channel);
        }
    }

    #[test]
    fn webhook_type_is_the_event_type() {
        let e = event("deal.status_changed", "555", json!({}));
        assert_eq!(webhook_type(&e), "deal.status_changed");
    }
}
