//! PostgreSQL activity counters (`pg_stat_database`, `pg_stat_wal`, `pg_stat_user_tables`) and
//! the processes serving the test database. `pg_stat_statements` is not available, so these
//! deltas are what tells where the database time goes.

use std::collections::BTreeMap;

use serde_json::{Value, json};
use sqlx::PgPool;

use super::cpu::PgProcess;

const DB_KEYS: &[&str] = &[
    "xact_commit",
    "xact_rollback",
    "tup_returned",
    "tup_fetched",
    "tup_inserted",
    "tup_updated",
    "tup_deleted",
    "blks_read",
    "blks_hit",
    "active_time",
    "idle_in_transaction_time",
];
/// Cluster-wide: other databases' traffic counts too.
const WAL_KEYS: &[&str] = &["wal_records", "wal_bytes", "wal_write", "wal_sync"];
const TABLE_KEYS: &[&str] = &[
    "seq_scan",
    "seq_tup_read",
    "idx_scan",
    "idx_tup_fetch",
    "n_tup_ins",
    "n_tup_upd",
    "n_tup_hot_upd",
    "n_dead_tup",
    "autovacuum_count",
    "autoanalyze_count",
];

/// Counter name → value.
pub type Counters = BTreeMap<String, f64>;

/// Reads the counters of the pool's database.
pub async fn snapshot(pool: &PgPool) -> Counters {
    let rows: Vec<(String, Option<f64>)> = sqlx::query_as(
        "SELECT 'db.' || key, value::float8 FROM pg_stat_database d, jsonb_each_text(to_jsonb(d)) \
           WHERE d.datname = current_database() AND key = ANY($1) \
         UNION ALL \
         SELECT 'wal.' || key, value::float8 FROM pg_stat_wal w, jsonb_each_text(to_jsonb(w)) \
           WHERE key = ANY($2) \
         UNION ALL \
         SELECT t.relname || '.' || key, value::float8 FROM pg_stat_user_tables t, jsonb_each_text(to_jsonb(t)) \
           WHERE key = ANY($3)",
    )
    .bind(DB_KEYS)
    .bind(WAL_KEYS)
    .bind(TABLE_KEYS)
    .fetch_all(pool)
    .await
    .unwrap_or_default();
    rows.into_iter()
        .filter_map(|(k, v)| v.map(|v| (k, v)))
        .collect()
}

/// `after - before` for every counter (gauges such as `n_dead_tup` are shown as their final
/// value).
pub fn delta(before: &Counters, after: &Counters) -> Value {
    let mut out = serde_json::Map::new();
    for (k, v) in after {
        let d = if k.ends_with(".n_dead_tup") {
            *v
        } else {
            v - before.get(k).copied().unwrap_or(0.0)
        };
        if d != 0.0 {
            out.insert(k.clone(), json!(d));
        }
    }
    Value::Object(out)
}

/// The PostgreSQL processes to account: backends of the test database (the observer's own
/// connection, named `load-webhook`, separately) and the cluster's background processes.
pub async fn processes(pool: &PgPool) -> Vec<PgProcess> {
    let rows: Vec<(i32, String)> = sqlx::query_as(
        "SELECT pid, CASE WHEN application_name = 'load-webhook' THEN 'observer' \
                          WHEN backend_type = 'client backend' THEN 'dispatcher connections' \
                          ELSE backend_type END \
         FROM pg_stat_activity WHERE datname = current_database() OR datname IS NULL",
    )
    .fetch_all(pool)
    .await
    .unwrap_or_default();
    rows.into_iter()
        .map(|(pid, group)| PgProcess { pid, group })
        .collect()
}

/// Samples `pg_stat_activity` of the test database every `every` until `stop`: what the
/// dispatcher's connections are running (or waiting on) while active. A poor man's
/// `pg_stat_statements`: each sample is one backend running one statement.
pub async fn sample_activity(
    pool: PgPool,
    every: Option<std::time::Duration>,
    stop: tokio_util::sync::CancellationToken,
) -> Value {
    let Some(every) = every else {
        stop.cancelled().await;
        return Value::Null;
    };
    let mut counts: BTreeMap<(String, String), u64> = BTreeMap::new();
    let mut samples = 0u64;
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            _ = ticker.tick() => {}
        }
        let rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT regexp_replace(left(query, 200), '\\s+', ' ', 'g'), \
                    COALESCE(wait_event_type || ':' || wait_event, 'CPU') \
             FROM pg_stat_activity \
             WHERE datname = current_database() AND state = 'active' \
               AND application_name <> 'load-webhook'",
        )
        .fetch_all(&pool)
        .await
        .unwrap_or_default();
        samples += 1;
        for (query, wait) in rows {
            *counts.entry((label(&query), wait)).or_insert(0) += 1;
        }
    }
    let mut top: Vec<((String, String), u64)> = counts.into_iter().collect();
    top.sort_by_key(|e| std::cmp::Reverse(e.1));
    json!({
        "samples": samples,
        "interval_ms": every.as_millis() as u64,
        "active_backends_avg": top.iter().map(|(_, n)| *n).sum::<u64>() as f64 / samples.max(1) as f64,
        "top": top.iter().take(20).map(|((q, w), n)| json!({
            "statement": q,
            "wait": w,
            "samples": n,
            "avg_backends": *n as f64 / samples.max(1) as f64,
        })).collect::<Vec<_>>(),
    })
}

/// A short name for a dispatcher statement.
fn label(query: &str) -> String {
    let q = query.trim();
    let known = [
        ("WITH local AS", "claim"),
        (
            "WITH u AS ( SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::uuid[]",
            "intake: INSERT webhook_deliveries (claiming)",
        ),
        (
            "WITH u AS ( SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::text[]",
            "record: UPDATE deliveries + INSERT attempts",
        ),
        (
            "INSERT INTO webhook_attempts",
            "record: INSERT webhook_attempts",
        ),
        (
            "UPDATE webhook_deliveries d SET status",
            "record: UPDATE webhook_deliveries",
        ),
        (
            "UPDATE webhook_subscriptions s SET consecutive_failures",
            "record: UPDATE subscriptions failures",
        ),
        (
            "UPDATE webhook_subscriptions SET enabled = FALSE",
            "record: disable check",
        ),
        (
            "INSERT INTO webhook_events",
            "intake: INSERT webhook_events",
        ),
        (
            "INSERT INTO webhook_deliveries",
            "intake: INSERT webhook_deliveries",
        ),
        ("SELECT id, event_types", "intake: enabled patterns"),
        ("COMMIT", "COMMIT"),
        ("BEGIN", "BEGIN"),
        (
            "SELECT (SELECT count(*) FROM webhook_deliveries WHERE status = 'pending')",
            "maintenance: stats",
        ),
    ];
    known
        .iter()
        .find(|(prefix, _)| q.starts_with(prefix))
        .map_or_else(
            || q.chars().take(60).collect(),
            |(_, name)| (*name).to_owned(),
        )
}

/// Runs `ANALYZE` on the dispatcher's tables every `every` until `stop`.
pub async fn analyze_periodically(
    pool: PgPool,
    every: std::time::Duration,
    stop: tokio_util::sync::CancellationToken,
) {
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = ticker.tick() => {}
        }
        if let Err(err) =
            sqlx::query("ANALYZE webhook_deliveries, webhook_events, webhook_attempts")
                .execute(&pool)
                .await
        {
            eprintln!("ANALYZE failed: {err}");
        }
    }
}

/// Reads `duration: X ms  <phase> <name>: <sql>` lines of `database` from a PostgreSQL server
/// log, from byte `from` on, and totals them by phase and statement.
pub fn statement_log(path: &std::path::Path, from: u64, database: &str) -> Value {
    use std::io::{Read, Seek, SeekFrom};
    let mut text = String::new();
    if let Ok(mut f) = std::fs::File::open(path) {
        let _ = f.seek(SeekFrom::Start(from));
        let mut bytes = Vec::new();
        let _ = f.read_to_end(&mut bytes);
        text = String::from_utf8_lossy(&bytes).into_owned();
    }
    let marker = format!("@{database} LOG:  duration: ");
    let mut totals: BTreeMap<String, (u64, f64)> = BTreeMap::new();
    let (mut count, mut total) = (0u64, 0.0f64);
    for line in text.lines() {
        let Some(at) = line.find(&marker) else {
            continue;
        };
        let rest = &line[at + marker.len()..];
        let Some((ms, rest)) = rest.split_once(" ms  ") else {
            continue;
        };
        let Ok(ms) = ms.trim().parse::<f64>() else {
            continue;
        };
        // `execute sqlx_s_3: SQL`, `parse <unnamed>: SQL`, `bind ...: SQL`, `statement: SQL`.
        let (phase, sql) = match rest.split_once(": ") {
            Some((head, sql)) => (head.split_whitespace().next().unwrap_or(""), sql),
            None => ("?", rest),
        };
        let key = format!(
            "{phase:<9} {}",
            label(&sql.split_whitespace().collect::<Vec<_>>().join(" "))
        );
        let e = totals.entry(key).or_insert((0, 0.0));
        e.0 += 1;
        e.1 += ms;
        count += 1;
        total += ms;
    }
    let mut top: Vec<(String, (u64, f64))> = totals.into_iter().collect();
    top.sort_by(|a, b| b.1.1.total_cmp(&a.1.1));
    json!({
        "statements": count,
        "total_ms": total,
        "top": top.iter().map(|(k, (n, ms))| json!({
            "statement": k,
            "count": n,
            "total_ms": ms,
            "mean_ms": ms / (*n).max(1) as f64,
            "share_pct": 100.0 * ms / total.max(1e-9),
        })).collect::<Vec<_>>(),
    })
}
