//! The catalog of event types named in the customer-facing seeds.
//!
//! The catalog documents; it does not censor: an event type that is not listed here is still
//! carried by every surface whose mapping rule applies to it.

use serde::Serialize;

/// Which seed document lists an event type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// Seed 000 "Webhook Events (37)".
    Webhooks,
    /// Seed 001's `/ws` domains (created/updated/deleted).
    WebSocket,
    /// Both seeds.
    Both,
}

/// One known event type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct CatalogEntry {
    /// `domain.event_type`.
    #[serde(rename = "type")]
    pub event_type: &'static str,
    /// The seed's description.
    pub description: &'static str,
    /// Where the seeds list it.
    pub source: Source,
}

impl CatalogEntry {
    /// Whether seed 000 lists this type among its webhook events.
    pub fn is_webhook_event(&self) -> bool {
        matches!(self.source, Source::Webhooks | Source::Both)
    }

    /// The type's domain.
    pub fn domain(&self) -> &'static str {
        self.event_type
            .split_once('.')
            .map_or(self.event_type, |(d, _)| d)
    }
}

const fn entry(
    event_type: &'static str,
    description: &'static str,
    source: Source,
) -> CatalogEntry {
    CatalogEntry {
        event_type,
        description,
        source,
    }
}

use Source::{Both, WebSocket, Webhooks};

/// Every event type the seeds name, grouped by domain in the seeds' order.
pub const CATALOG: &[CatalogEntry] = &[
    entry("deal.created", "Deal created", Webhooks),
    entry("deal.status_changed", "Deal status changed", Webhooks),
    entry(
        "deal.provider_assigned",
        "Provider assigned to deal",
        Webhooks,
    ),
    entry(
        "deal.provider_reassigned",
        "Provider reassigned to deal",
        Webhooks,
    ),
    entry("deal.completed", "Deal completed", Webhooks),
    entry("deal.returned", "Deal returned for revision", Webhooks),
    entry("deal.note_updated", "Deal note updated", Webhooks),
    entry(
        "deal.reminder_triggered",
        "Deal reminder triggered",
        Webhooks,
    ),
    entry(
        "deal.deadline_triggered",
        "Deal deadline triggered",
        Webhooks,
    ),
    entry("deal.message_sent", "Deal message sent", Webhooks),
    entry("deal.report_offline", "Client reported offline", Webhooks),
    entry("deal.report_problem", "Deal problem reported", Webhooks),
    entry("order.created", "Order created", Both),
    entry("order.status_changed", "Order status changed", Webhooks),
    entry(
        "order.payment_status_changed",
        "Order payment status changed",
        Webhooks,
    ),
    entry(
        "order.shipping_status_changed",
        "Order shipping status changed",
        Webhooks,
    ),
    entry("order.note_updated", "Order note updated", Webhooks),
    entry(
        "order.coins_transaction",
        "Order coins transaction",
        Webhooks,
    ),
    entry(
        "order.updated",
        "Order status or details updated",
        WebSocket,
    ),
    entry("order.deleted", "Order deleted", WebSocket),
    entry("payout.created", "Payout requested", Webhooks),
    entry("payout.status_changed", "Payout status changed", Webhooks),
    entry("payout.note_updated", "Payout note updated", Webhooks),
    entry("customer.created", "Customer created", Both),
    entry("customer.kyc_completed", "Customer KYC completed", Webhooks),
    entry(
        "customer.coins_adjusted",
        "Customer coins adjusted",
        Webhooks,
    ),
    entry(
        "customer.manager_assigned",
        "Customer manager assigned",
        Webhooks,
    ),
    entry(
        "customer.manager_reassigned",
        "Customer manager reassigned",
        Webhooks,
    ),
    entry("customer.updated", "Customer updated", Both),
    entry("customer.deleted", "Customer deleted", WebSocket),
    entry("provider.created", "Provider created", Webhooks),
    entry(
        "provider.status_changed",
        "Provider status changed",
        Webhooks,
    ),
    entry("provider.note_updated", "Provider note updated", Webhooks),
    entry("product.created", "Product created", Both),
    entry(
        "product.pricing_changed",
        "Product pricing changed",
        Webhooks,
    ),
    entry(
        "product.autodeal_changed",
        "Product auto-deal config changed",
        Webhooks,
    ),
    entry("product.updated", "Product details updated", WebSocket),
    entry("product.deleted", "Product deleted", WebSocket),
    entry("profile.created", "Profile created", Webhooks),
    entry(
        "profile.kyc_status_changed",
        "Profile KYC status changed",
        Webhooks,
    ),
    entry(
        "profile.username_changed",
        "Profile username changed",
        Webhooks,
    ),
    entry("profile.updated", "Profile updated", Webhooks),
    entry("shipment.created", "New shipment created", WebSocket),
    entry(
        "shipment.updated",
        "Shipment status or tracking updated",
        WebSocket,
    ),
    entry("shipment.deleted", "Shipment deleted", WebSocket),
    entry("transaction.created", "New transaction created", WebSocket),
    entry(
        "transaction.updated",
        "Transaction status updated",
        WebSocket,
    ),
    entry("transaction.deleted", "Transaction deleted", WebSocket),
];

/// Looks an event type up in the catalog.
pub fn lookup(event_type: &str) -> Option<&'static CatalogEntry> {
    CATALOG.iter().find(|e| e.event_type == event_type)
}

/// The webhook event types of seed 000, in the seed's order.
pub fn webhook_event_types() -> impl Iterator<Item = &'static CatalogEntry> {
    CATALOG.iter().filter(|e| e.is_webhook_event())
}

/// Domains that have at least one catalogued event type, in catalog order.
pub fn known_domains() -> Vec<&'static str> {
    let mut domains: Vec<&'static str> = Vec::new();
    for e in CATALOG {
        if !domains.contains(&e.domain()) {
            domains.push(e.domain());
        }
    }
    domains
}

/// The published catalog document (`proto/catalog.json`): every known type with its
/// description, source seed and what each surface shows for it.
pub fn document() -> serde_json::Value {
    let types: Vec<serde_json::Value> = CATALOG
        .iter()
        .map(|entry| {
            let surfaces = crate::EventType::parse(entry.event_type)
                .map(|t| serde_json::to_value(crate::surface::summarize(&t)).unwrap_or_default())
                .unwrap_or_default();
            serde_json::json!({
                "type": entry.event_type,
                "domain": entry.domain(),
                "description": entry.description,
                "source": entry.source,
                "surfaces": surfaces,
            })
        })
        .collect();
    serde_json::json!({
        "$comment": "Generated by `eventctl catalog --json`; do not edit. A test fails when it drifts from crates/events.",
        "version": 1,
        "event_types": types,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::EventType;

    /// Seed 000, "Events (37)", transcribed in order.
    const SEED_000_WEBHOOK_TYPES: [&str; 37] = [
        "deal.created",
        "deal.status_changed",
        "deal.provider_assigned",
        "deal.provider_reassigned",
        "deal.completed",
        "deal.returned",
        "deal.note_updated",
        "deal.reminder_triggered",
        "deal.deadline_triggered",
        "deal.message_sent",
        "deal.report_offline",
        "deal.report_problem",
        "order.created",
        "order.status_changed",
        "order.payment_status_changed",
        "order.shipping_status_changed",
        "order.note_updated",
        "order.coins_transaction",
        "payout.created",
        "payout.status_changed",
        "payout.note_updated",
        "customer.created",
        "customer.kyc_completed",
        "customer.coins_adjusted",
        "customer.manager_assigned",
        "customer.manager_reassigned",
        "customer.updated",
        "provider.created",
        "provider.status_changed",
        "provider.note_updated",
        "product.created",
        "product.pricing_changed",
        "product.autodeal_changed",
        "profile.created",
        "profile.kyc_status_changed",
        "profile.username_changed",
        "profile.updated",
    ];

    #[test]
    fn lists_exactly_the_37_seed_webhook_types_in_order() {
        let listed: Vec<&str> = webhook_event_types().map(|e| e.event_type).collect();
        assert_eq!(listed, SEED_000_WEBHOOK_TYPES);
    }

    #[test]
    fn lists_the_15_seed_001_events() {
        for domain in ["order", "product", "customer", "shipment", "transaction"] {
            for action in ["created", "updated", "deleted"] {
                let t = format!("{domain}.{action}");
                let entry = lookup(&t).unwrap_or_else(|| panic!("{t} missing"));
                assert!(
                    matches!(entry.source, Source::WebSocket | Source::Both),
                    "{t}"
                );
            }
        }
    }

    #[test]
    fn every_entry_is_a_valid_unique_type() {
        for (i, e) in CATALOG.iter().enumerate() {
            EventType::parse(e.event_type).unwrap();
            assert!(!e.description.is_empty());
            assert!(
                CATALOG[..i].iter().all(|o| o.event_type != e.event_type),
                "{} twice",
                e.event_type
            );
        }
        assert_eq!(
            known_domains(),
            [
                "deal",
                "order",
                "payout",
                "customer",
                "provider",
                "product",
                "profile",
                "shipment",
                "transaction"
            ]
        );
    }
}
