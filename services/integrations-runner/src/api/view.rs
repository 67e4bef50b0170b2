//! Response bodies. Built from [`Stored`] only, which holds sealed secrets it cannot show:
//! no response can carry a credential.

use serde_json::{Value, json};
use time::format_description::well_known::Rfc3339;

use crate::store::{Stored, UsageDay};

fn ts(t: time::OffsetDateTime) -> Value {
    t.format(&Rfc3339).map_or(Value::Null, Value::String)
}

/// An integration as every route shows it.
pub fn integration(s: &Stored) -> Value {
    let i = &s.integration;
    json!({
        "id": i.id.as_str(),
        "projectId": i.project_id.as_str(),
        "provider": i.provider,
        "name": i.name,
        "baseUrl": i.base_url.url().as_str(),
        "auth": i.auth,
        "endpoints": i.endpoints,
        "rateLimit": i.rate_limit,
        "webhook": i.webhook,
        "webhookPath": i.webhook.as_ref().map(|_| format!("/integrations/{}/webhooks", i.id)),
        "isActive": i.is_active,
        "credentials": {"set": s.has_secrets(), "keyId": s.secrets_key_id},
        "createdAt": ts(i.created_at),
        "updatedAt": ts(i.updated_at),
        "lastUsedAt": i.last_used_at.map(ts),
    })
}

/// One usage row.
pub fn usage_day(u: &UsageDay) -> Value {
    json!({
        "date": u.day.to_string(),
        "endpoint": u.endpoint,
        "calls": u.calls,
        "successes": u.successes,
        "failures": u.failures,
    })
}
