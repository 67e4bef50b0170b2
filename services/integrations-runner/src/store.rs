//! The `integrations` rows: every statement on that table except usage accounting and rate
//! state (in [`crate::usage`] and [`crate::ratelimit`]).
//!
//! Rows are decoded into [`Integration`] once, here; a row that does not decode (written by
//! hand, or by a future version) is a [`StoreError::Corrupt`] naming the column, never a
//! silently defaulted value. Secrets are sealed with the [`Keyring`]'s active key on every
//! write that changes them and opened with the key the row names.

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use sqlx::postgres::PgRow;
use sqlx::types::Json;
use sqlx::{PgPool, Postgres, Row, Transaction};
use time::OffsetDateTime;

use crate::crypto::{CryptoError, Keyring};
use crate::model::{
    AuthSpec, Endpoint, EndpointName, HttpUrl, Id, Integration, RateLimitSpec, Secrets, WebhookSpec,
};

/// Why a store call failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database failed.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// Sealing or opening the secrets failed.
    #[error("secrets of {id}: {source}")]
    Crypto {
        /// The integration.
        id: String,
        /// What failed.
        #[source]
        source: CryptoError,
    },
    /// A stored column does not decode.
    #[error("integration {id}: column {column} does not decode: {message}")]
    Corrupt {
        /// The integration.
        id: String,
        /// The column.
        column: &'static str,
        /// Why (a serde message about the stored JSON; stored columns hold no secret).
        message: String,
    },
}

/// An integration as stored, with what the API shows about its secrets.
#[derive(Debug, Clone, PartialEq)]
pub struct Stored {
    /// The integration.
    pub integration: Integration,
    /// The key that sealed its secrets; `None`: no secrets are stored.
    pub secrets_key_id: Option<String>,
    sealed: Option<Vec<u8>>,
}

impl Stored {
    /// Whether secrets are stored.
    pub fn has_secrets(&self) -> bool {
        self.sealed.is_some()
    }
}

/// A new integration.
#[derive(Debug, Clone)]
pub struct NewIntegration {
    /// Id.
    pub id: Id,
    /// Project.
    pub project_id: Id,
    /// Provider, lower case.
    pub provider: String,
    /// Name.
    pub name: String,
    /// Base URL.
    pub base_url: HttpUrl,
    /// Auth (non-secret part).
    pub auth: AuthSpec,
    /// Endpoints.
    pub endpoints: BTreeMap<EndpointName, Endpoint>,
    /// Rate limit.
    pub rate_limit: Option<RateLimitSpec>,
    /// Webhook settings (non-secret part).
    pub webhook: Option<WebhookSpec>,
    /// Every secret.
    pub secrets: Secrets,
    /// Whether it starts active.
    pub is_active: bool,
}

/// The changeable parts of an integration, handed to an [`Store::update`] closure.
#[derive(Debug, Clone, PartialEq)]
pub struct Editable {
    /// Provider.
    pub provider: String,
    /// Name.
    pub name: String,
    /// Base URL.
    pub base_url: HttpUrl,
    /// Auth.
    pub auth: AuthSpec,
    /// Endpoints.
    pub endpoints: BTreeMap<EndpointName, Endpoint>,
    /// Rate limit.
    pub rate_limit: Option<RateLimitSpec>,
    /// Webhook.
    pub webhook: Option<WebhookSpec>,
    /// Active.
    pub is_active: bool,
    /// Secrets, opened.
    pub secrets: Secrets,
}

const COLUMNS: &str = "id, project_id, provider, name, base_url, auth, endpoints, rate_limit, \
     webhook, secrets, secrets_key_id, is_active, created_at, updated_at, last_used_at";

/// Most rows one list call returns.
pub const MAX_PAGE: i64 = 200;

/// Data access for integrations. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Store {
    pool: PgPool,
    keyring: Keyring,
}

fn json_column<T: DeserializeOwned>(
    row: &PgRow,
    id: &str,
    column: &'static str,
) -> Result<T, StoreError> {
    let Json(value): Json<serde_json::Value> = row.try_get(column)?;
    serde_json::from_value(value).map_err(|e| StoreError::Corrupt {
        id: id.to_owned(),
        column,
        message: e.to_string(),
    })
}

fn optional_json_column<T: DeserializeOwned>(
    row: &PgRow,
    id: &str,
    column: &'static str,
) -> Result<Option<T>, StoreError> {
    let value: Option<Json<serde_json::Value>> = row.try_get(column)?;
    match value {
        None | Some(Json(serde_json::Value::Null)) => Ok(None),
        Some(Json(v)) => serde_json::from_value(v)
            .map(Some)
            .map_err(|e| StoreError::Corrupt {
                id: id.to_owned(),
                column,
                message: e.to_string(),
            }),
    }
}

fn decode(row: &PgRow) -> Result<Stored, StoreError> {
    let raw_id: String = row.try_get("id")?;
    let corrupt = |column: &'static str, message: String| StoreError::Corrupt {
        id: raw_id.clone(),
        column,
        message,
    };
    let id = Id::parse(&raw_id).map_err(|e| corrupt("id", e.to_string()))?;
    let raw_project: String = row.try_get("project_id")?;
    let project_id = Id::parse(&raw_project).map_err(|e| corrupt("project_id", e.to_string()))?;
    let raw_url: String = row.try_get("base_url")?;
    let base_url = HttpUrl::parse(&raw_url).map_err(|e| corrupt("base_url", e.to_string()))?;
    let integration = Integration {
        provider: row.try_get("provider")?,
        name: row.try_get("name")?,
        base_url,
        auth: json_column(row, &raw_id, "auth")?,
        endpoints: json_column(row, &raw_id, "endpoints")?,
        rate_limit: optional_json_column(row, &raw_id, "rate_limit")?,
        webhook: optional_json_column(row, &raw_id, "webhook")?,
        is_active: row.try_get("is_active")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        last_used_at: row.try_get("last_used_at")?,
        id,
        project_id,
    };
    Ok(Stored {
        integration,
        secrets_key_id: row.try_get("secrets_key_id")?,
        sealed: row.try_get("secrets")?,
    })
}

fn json<T: serde::Serialize>(value: &T) -> Json<serde_json::Value> {
    // Serialising these model types cannot fail: they hold only strings, numbers and maps
    // with string keys. `Null` would be refused by the NOT NULL columns, not stored silently.
    Json(serde_json::to_value(value).unwrap_or(serde_json::Value::Null))
}

impl Store {
    /// Over `pool`, sealing with `keyring`.
    pub fn new(pool: PgPool, keyring: Keyring) -> Self {
        Self { pool, keyring }
    }

    /// The pool (for the usage and rate-limit statements that live elsewhere).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The keyring.
    pub fn keyring(&self) -> &Keyring {
        &self.keyring
    }

    fn seal(&self, id: &Id, secrets: &Secrets) -> Result<Option<(String, Vec<u8>)>, StoreError> {
        if secrets.is_empty() {
            return Ok(None);
        }
        self.keyring
            .seal_secrets(id, secrets)
            .map(Some)
            .map_err(|source| StoreError::Crypto {
                id: id.to_string(),
                source,
            })
    }

    /// Opens the secrets of a stored integration (empty when none are stored).
    pub fn open(&self, stored: &Stored) -> Result<Secrets, StoreError> {
        match (&stored.sealed, &stored.secrets_key_id) {
            (Some(blob), Some(key_id)) => self
                .keyring
                .open_secrets(key_id, &stored.integration.id, blob)
                .map_err(|source| StoreError::Crypto {
                    id: stored.integration.id.to_string(),
                    source,
                }),
            _ => Ok(Secrets::default()),
        }
    }

    /// Inserts `new`; `None` when the id is taken.
    pub async fn create(&self, new: &NewIntegration) -> Result<Option<Stored>, StoreError> {
        let sealed = self.seal(&new.id, &new.secrets)?;
        let (key_id, blob) = sealed.unzip();
        let row = sqlx::query(&format!(
            "INSERT INTO integrations (id, project_id, provider, name, base_url, auth, endpoints, \
             rate_limit, webhook, secrets, secrets_key_id, is_active) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) \
             ON CONFLICT (id) DO NOTHING RETURNING {COLUMNS}"
        ))
        .bind(new.id.as_str())
        .bind(new.project_id.as_str())
        .bind(&new.provider)
        .bind(&new.name)
        .bind(new.base_url.url().as_str())
        .bind(json(&new.auth))
        .bind(json(&new.endpoints))
        .bind(new.rate_limit.as_ref().map(json))
        .bind(new.webhook.as_ref().map(json))
        .bind(blob)
        .bind(key_id)
        .bind(new.is_active)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(decode).transpose()
    }

    /// The integration `id`, in any project.
    pub async fn get(&self, id: &Id) -> Result<Option<Stored>, StoreError> {
        let row = sqlx::query(&format!("SELECT {COLUMNS} FROM integrations WHERE id = $1"))
            .bind(id.as_str())
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(decode).transpose()
    }

    /// The integration `id` if it belongs to `project_id`.
    pub async fn get_in_project(
        &self,
        project_id: &Id,
        id: &Id,
    ) -> Result<Option<Stored>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM integrations WHERE id = $1 AND project_id = $2"
        ))
        .bind(id.as_str())
        .bind(project_id.as_str())
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(decode).transpose()
    }

    /// The integration and its opened secrets, for executing it (active or not: the caller
    /// answers `inactive`).
    pub async fn load_for_execution(
        &self,
        id: &Id,
    ) -> Result<Option<(Integration, Secrets)>, StoreError> {
        let Some(stored) = self.get(id).await? else {
            return Ok(None);
        };
        let secrets = self.open(&stored)?;
        Ok(Some((stored.integration, secrets)))
    }

    /// A page of a project's integrations in id order, after `after`; at most `limit`
    /// (capped at [`MAX_PAGE`]).
    pub async fn list(
        &self,
        project_id: &Id,
        after: Option<&Id>,
        limit: i64,
    ) -> Result<Vec<Stored>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM integrations WHERE project_id = $1 AND ($2::text IS NULL OR id > $2) \
             ORDER BY id LIMIT $3"
        ))
        .bind(project_id.as_str())
        .bind(after.map(Id::as_str))
        .bind(limit.clamp(1, MAX_PAGE))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(decode).collect()
    }

    /// Changes `id` (in `project_id`, when given) under a row lock: `edit` gets the current
    /// parts, secrets opened, and may refuse with its own error. Secrets are sealed again with
    /// the active key only when they changed. `Ok(Ok(None))`: no such integration.
    pub async fn update<E>(
        &self,
        project_id: Option<&Id>,
        id: &Id,
        edit: impl FnOnce(&mut Editable) -> Result<(), E>,
    ) -> Result<Result<Option<Stored>, E>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let Some(stored) = Self::lock(&mut tx, project_id, id).await? else {
            return Ok(Ok(None));
        };
        let secrets = self.open(&stored)?;
        let i = &stored.integration;
        let before = Editable {
            provider: i.provider.clone(),
            name: i.name.clone(),
            base_url: i.base_url.clone(),
            auth: i.auth.clone(),
            endpoints: i.endpoints.clone(),
            rate_limit: i.rate_limit,
            webhook: i.webhook.clone(),
            is_active: i.is_active,
            secrets,
        };
        let mut after = before.clone();
        if let Err(e) = edit(&mut after) {
            return Ok(Err(e));
        }
        if after == before {
            tx.rollback().await?;
            return Ok(Ok(Some(stored)));
        }
        let (key_id, blob) = if after.secrets == before.secrets {
            (stored.secrets_key_id.clone(), stored.sealed.clone())
        } else {
            self.seal(id, &after.secrets)?.unzip()
        };
        let row = sqlx::query(&format!(
            "UPDATE integrations SET provider = $2, name = $3, base_url = $4, auth = $5, \
             endpoints = $6, rate_limit = $7, webhook = $8, is_active = $9, secrets = $10, \
             secrets_key_id = $11, updated_at = now() WHERE id = $1 RETURNING {COLUMNS}"
        ))
        .bind(id.as_str())
        .bind(&after.provider)
        .bind(&after.name)
        .bind(after.base_url.url().as_str())
        .bind(json(&after.auth))
        .bind(json(&after.endpoints))
        .bind(after.rate_limit.as_ref().map(json))
        .bind(after.webhook.as_ref().map(json))
        .bind(after.is_active)
        .bind(blob)
        .bind(key_id)
        .fetch_one(&mut *tx)
        .await?;
        let updated = decode(&row)?;
        tx.commit().await?;
        Ok(Ok(Some(updated)))
    }

    async fn lock(
        tx: &mut Transaction<'_, Postgres>,
        project_id: Option<&Id>,
        id: &Id,
    ) -> Result<Option<Stored>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM integrations WHERE id = $1 AND ($2::text IS NULL OR project_id = $2) \
             FOR UPDATE"
        ))
        .bind(id.as_str())
        .bind(project_id.map(Id::as_str))
        .fetch_optional(&mut **tx)
        .await?;
        row.as_ref().map(decode).transpose()
    }

    /// Activates or deactivates `id`; `None`: no such integration.
    pub async fn set_active(
        &self,
        project_id: Option<&Id>,
        id: &Id,
        active: bool,
    ) -> Result<Option<Stored>, StoreError> {
        let row = sqlx::query(&format!(
            "UPDATE integrations SET is_active = $3, \
             updated_at = CASE WHEN is_active = $3 THEN updated_at ELSE now() END \
             WHERE id = $1 AND ($2::text IS NULL OR project_id = $2) RETURNING {COLUMNS}"
        ))
        .bind(id.as_str())
        .bind(project_id.map(Id::as_str))
        .bind(active)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(decode).transpose()
    }

    /// Deactivates `id` (executions answer `inactive`; webhooks are refused).
    pub async fn deactivate(
        &self,
        project_id: Option<&Id>,
        id: &Id,
    ) -> Result<Option<Stored>, StoreError> {
        self.set_active(project_id, id, false).await
    }

    /// Replaces the endpoints of `id` (an import), and sets the base URL when `base_url` is
    /// given; `None`: no such integration.
    pub async fn replace_endpoints(
        &self,
        project_id: Option<&Id>,
        id: &Id,
        endpoints: &BTreeMap<EndpointName, Endpoint>,
        base_url: Option<&HttpUrl>,
    ) -> Result<Option<Stored>, StoreError> {
        let row = sqlx::query(&format!(
            "UPDATE integrations SET endpoints = $3, base_url = COALESCE($4, base_url), \
             updated_at = now() WHERE id = $1 AND ($2::text IS NULL OR project_id = $2) \
             RETURNING {COLUMNS}"
        ))
        .bind(id.as_str())
        .bind(project_id.map(Id::as_str))
        .bind(json(endpoints))
        .bind(base_url.map(|u| u.url().as_str()))
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(decode).transpose()
    }

    /// Per-day, per-endpoint usage of `id` for the last `days` days (today included), newest
    /// first.
    pub async fn usage_days(&self, id: &Id, days: u32) -> Result<Vec<UsageDay>, StoreError> {
        let rows: Vec<(time::Date, String, i64, i64, i64)> = sqlx::query_as(
            "SELECT day, endpoint, calls, successes, failures FROM integration_usage \
             WHERE integration_id = $1 AND day > (now() AT TIME ZONE 'UTC')::date - $2::int \
             ORDER BY day DESC, endpoint",
        )
        .bind(id.as_str())
        .bind(i32::try_from(days).unwrap_or(i32::MAX))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(day, endpoint, calls, successes, failures)| UsageDay {
                day,
                endpoint,
                calls,
                successes,
                failures,
            })
            .collect())
    }

    /// When `id` was last used.
    pub async fn last_used(&self, id: &Id) -> Result<Option<OffsetDateTime>, StoreError> {
        let row: Option<(Option<OffsetDateTime>,)> =
            sqlx::query_as("SELECT last_used_at FROM integrations WHERE id = $1")
                .bind(id.as_str())
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.and_then(|r| r.0))
    }
}

/// One row of `integration_usage`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageDay {
    /// The UTC day.
    pub day: time::Date,
    /// The endpoint.
    pub endpoint: String,
    /// Calls.
    pub calls: i64,
    /// Successful calls.
    pub successes: i64,
    /// Failed calls.
    pub failures: i64,
}
