//! Reading express-session sessions where the host application keeps them.

use std::collections::HashMap;

use redis::AsyncCommands;
use serde_json::Value;
use sqlx::PgPool;

/// Why a store could not answer (as opposed to answering "no such session").
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// PostgreSQL failed.
    #[error("session store (postgres): {0}")]
    Postgres(#[from] sqlx::Error),
    /// Redis failed.
    #[error("session store (redis): {0}")]
    Redis(#[from] redis::RedisError),
}

/// A session store.
#[derive(Clone)]
pub enum SessionStore {
    /// connect-pg-simple's table.
    Postgres {
        /// Pool on the host application's database.
        pool: PgPool,
        /// `SELECT sess FROM <table> WHERE sid = $1 AND expire >= now()`.
        load_sql: String,
        /// `SELECT sid, sess FROM <table> WHERE sid = ANY($1) AND expire >= now()`.
        batch_sql: String,
    },
    /// connect-redis keys.
    Redis {
        /// Reconnecting connection, made on first use so the gateway starts while Redis is away.
        conn: std::sync::Arc<RedisConnection>,
        /// Key prefix, `sess:` by default.
        prefix: String,
    },
}

/// A Redis connection manager created on first successful use.
pub struct RedisConnection {
    client: redis::Client,
    manager: tokio::sync::OnceCell<redis::aio::ConnectionManager>,
}

impl std::fmt::Debug for RedisConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConnection")
            .field("connected", &self.manager.initialized())
            .finish()
    }
}

impl RedisConnection {
    /// A connection to `url`, not yet opened.
    pub fn new(url: &str) -> Result<Self, redis::RedisError> {
        Ok(Self {
            client: redis::Client::open(url)?,
            manager: tokio::sync::OnceCell::new(),
        })
    }

    async fn get(&self) -> Result<redis::aio::ConnectionManager, redis::RedisError> {
        self.manager
            .get_or_try_init(|| {
                let config = redis::aio::ConnectionManagerConfig::new()
                    .set_connection_timeout(std::time::Duration::from_secs(3))
                    .set_response_timeout(std::time::Duration::from_secs(3))
                    .set_number_of_retries(2);
                redis::aio::ConnectionManager::new_with_config(self.client.clone(), config)
            })
            .await
            .cloned()
    }
}

impl std::fmt::Debug for SessionStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Postgres { .. } => f.write_str("SessionStore::Postgres"),
            Self::Redis { prefix, .. } => write!(f, "SessionStore::Redis({prefix})"),
        }
    }
}

impl SessionStore {
    /// The connect-pg-simple store over `table` (validated as `[schema.]table`).
    pub fn postgres(pool: PgPool, table: &str) -> Self {
        let quoted = table
            .split('.')
            .map(|p| format!("\"{p}\""))
            .collect::<Vec<_>>()
            .join(".");
        Self::Postgres {
            pool,
            load_sql: format!("SELECT sess::text FROM {quoted} WHERE sid = $1 AND expire >= now()"),
            batch_sql: format!(
                "SELECT sid, sess::text FROM {quoted} WHERE sid = ANY($1) AND expire >= now()"
            ),
        }
    }

    /// The live session JSON for `sid`, or `None` when it does not exist or has expired.
    pub async fn load(&self, sid: &str) -> Result<Option<Value>, StoreError> {
        let raw: Option<String> = match self {
            Self::Postgres { pool, load_sql, .. } => {
                sqlx::query_scalar(load_sql)
                    .bind(sid)
                    .fetch_optional(pool)
                    .await?
            }
            Self::Redis { conn, prefix } => {
                let mut conn = conn.get().await?;
                conn.get(format!("{prefix}{sid}")).await?
            }
        };
        Ok(raw.and_then(|r| live(&r)))
    }

    /// The live session JSON of each of `sids` that still exists, in one round trip: sessions
    /// are re-read rather than only checked for existence, because a session rewritten in
    /// place (logout, login as someone else) keeps its sid.
    pub async fn load_many(&self, sids: &[String]) -> Result<HashMap<String, Value>, StoreError> {
        if sids.is_empty() {
            return Ok(HashMap::new());
        }
        match self {
            Self::Postgres {
                pool, batch_sql, ..
            } => {
                let rows: Vec<(String, String)> =
                    sqlx::query_as(batch_sql).bind(sids).fetch_all(pool).await?;
                Ok(rows
                    .into_iter()
                    .filter_map(|(sid, raw)| live(&raw).map(|sess| (sid, sess)))
                    .collect())
            }
            Self::Redis { conn, prefix } => {
                let mut conn = conn.get().await?;
                let mut pipe = redis::pipe();
                for sid in sids {
                    pipe.get(format!("{prefix}{sid}"));
                }
                let raws: Vec<Option<String>> = pipe.query_async(&mut conn).await?;
                Ok(sids
                    .iter()
                    .zip(raws)
                    .filter_map(|(sid, raw)| Some((sid.clone(), live(&raw?)?)))
                    .collect())
            }
        }
    }

    /// A cheap round trip, for `/readyz`.
    pub async fn ping(&self) -> Result<(), StoreError> {
        match self {
            Self::Postgres { pool, .. } => {
                sqlx::query("SELECT 1").execute(pool).await?;
            }
            Self::Redis { conn, .. } => {
                let mut conn = conn.get().await?;
                let _: String = redis::cmd("PING").query_async(&mut conn).await?;
            }
        }
        Ok(())
    }
}

/// A stored session's JSON, unless it does not parse or its cookie has expired.
fn live(raw: &str) -> Option<Value> {
    serde_json::from_str::<Value>(raw)
        .ok()
        .filter(|sess| !cookie_expired(sess))
}

/// express-session also stores `cookie.expires`; a session past it is expired even if the
/// store has not reaped it yet.
fn cookie_expired(sess: &Value) -> bool {
    sess.pointer("/cookie/expires")
        .and_then(Value::as_str)
        .and_then(|s| {
            time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()
        })
        .is_some_and(|at| at < time::OffsetDateTime::now_utc())
}

/// Where a session holds its user id: `session.user_id_paths` (dotted, e.g. `passport.user`)
/// turned into JSON pointers once at start-up, tried in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserIdPaths(Vec<String>);

impl UserIdPaths {
    /// The pointers of dotted paths: `passport.user` is `/passport/user`.
    pub fn new(dotted: &[String]) -> Self {
        Self(
            dotted
                .iter()
                .map(|path| format!("/{}", path.replace('.', "/")))
                .collect(),
        )
    }
}

/// The user id at the first of `paths` that holds a string or a number.
pub fn user_id(sess: &Value, paths: &UserIdPaths) -> Option<Value> {
    paths.0.iter().find_map(|pointer| {
        sess.pointer(pointer)
            .filter(|v| v.is_number() || v.as_str().is_some_and(|s| !s.is_empty()))
            .cloned()
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn finds_the_user_id_by_path_in_order() {
        let paths = UserIdPaths::new(&["userId".to_owned(), "passport.user".to_owned()]);
        assert_eq!(user_id(&json!({"userId": 1}), &paths), Some(json!(1)));
        assert_eq!(
            user_id(&json!({"passport": {"user": "u-7"}}), &paths),
            Some(json!("u-7"))
        );
        assert_eq!(
            user_id(&json!({"userId": 1, "passport": {"user": 2}}), &paths),
            Some(json!(1))
        );
        assert_eq!(
            user_id(&json!({"userId": null, "passport": {"user": 2}}), &paths),
            Some(json!(2))
        );
        assert_eq!(user_id(&json!({"cookie": {}}), &paths), None);
        assert_eq!(user_id(&json!({"userId": ""}), &paths), None);
    }

    #[test]
    fn cookie_expiry_in_the_session_counts() {
        assert!(cookie_expired(
            &json!({"cookie": {"expires": "2001-01-01T00:00:00.000Z"}})
        ));
        assert!(!cookie_expired(
            &json!({"cookie": {"expires": "2999-01-01T00:00:00.000Z"}})
        ));
        assert!(!cookie_expired(&json!({"cookie": {"expires": null}})));
        assert!(!cookie_expired(&json!({})));
    }
}
