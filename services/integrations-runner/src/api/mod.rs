//! The REST API: integrations under `/v1/integrations`.
//!
//! Every route is listed once in [`ROUTES`]; the OpenAPI document (`GET /openapi.json`) is
//! tested against that list and the router. Responses never carry a secret: they say only
//! whether credentials are stored and under which key (`credentials: {set, keyId}`).

pub mod auth;
pub mod error;
pub mod extract;
mod input;
mod view;

use axum::extract::rejection::QueryRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use std::collections::BTreeMap;

use self::error::ApiError;
use self::extract::ApiJson;
use self::input::{CreateIntegration, PatchIntegration};
use crate::model::{Id, check_endpoints};
use crate::store::{MAX_PAGE, Store};

/// The OpenAPI document served at `/openapi.json`.
pub const OPENAPI: &str = include_str!("openapi.json");

/// Largest request body of the JSON routes.
pub const MAX_BODY_BYTES: usize = 256 * 1024;
/// Largest OpenAPI document an import accepts.
pub const MAX_OPENAPI_BYTES: usize = 2 * 1024 * 1024;

/// Every API route as `(path, method)`.
pub const ROUTES: &[(&str, &str)] = &[
    ("/v1/integrations", "get"),
    ("/v1/integrations", "post"),
    ("/v1/integrations/{id}", "get"),
    ("/v1/integrations/{id}", "patch"),
    ("/v1/integrations/{id}/activate", "post"),
    ("/v1/integrations/{id}/deactivate", "post"),
    ("/v1/integrations/{id}/endpoints/openapi", "put"),
    ("/v1/integrations/{id}/usage", "get"),
];

/// What handlers share.
#[derive(Debug, Clone)]
pub struct ApiState {
    store: Store,
}

impl ApiState {
    /// Over `store`.
    pub fn new(store: Store) -> Self {
        Self { store }
    }
}

/// The API router; every route requires authentication except `/openapi.json`.
pub fn router(state: ApiState, auth: auth::Authenticator) -> Router {
    let import = Router::new()
        .route(
            "/v1/integrations/{id}/endpoints/openapi",
            put(import_openapi),
        )
        .layer(DefaultBodyLimit::max(MAX_OPENAPI_BYTES));
    let protected = Router::new()
        .route(
            "/v1/integrations",
            get(list_integrations).post(create_integration),
        )
        .route(
            "/v1/integrations/{id}",
            get(get_integration).patch(patch_integration),
        )
        .route("/v1/integrations/{id}/activate", post(activate))
        .route("/v1/integrations/{id}/deactivate", post(deactivate))
        .route("/v1/integrations/{id}/usage", get(usage))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .merge(import)
        .route_layer(axum::middleware::from_fn_with_state(auth, auth::require))
        .with_state(state);
    Router::new()
        .route(
            "/openapi.json",
            get(|| async { ([("content-type", "application/json")], OPENAPI) }),
        )
        .merge(protected)
}

fn parse_id(field: &str, raw: &str) -> Result<Id, ApiError> {
    Id::parse(raw).map_err(|e| ApiError::field(field, e.to_string()))
}

type QueryMap = Result<Query<BTreeMap<String, String>>, QueryRejection>;

fn query_map(q: QueryMap) -> Result<BTreeMap<String, String>, ApiError> {
    q.map(|Query(m)| m)
        .map_err(|_| ApiError::field("query", "is not a valid query string"))
}

fn parse_number(
    q: &BTreeMap<String, String>,
    field: &str,
    default: i64,
    range: std::ops::RangeInclusive<i64>,
) -> Result<i64, ApiError> {
    match q.get(field) {
        None => Ok(default),
        Some(raw) => raw
            .parse::<i64>()
            .ok()
            .filter(|n| range.contains(n))
            .ok_or_else(|| {
                ApiError::field(
                    field,
                    format!("must be a number from {} to {}", range.start(), range.end()),
                )
            }),
    }
}

async fn create_integration(
    State(state): State<ApiState>,
    ApiJson(body): ApiJson<CreateIntegration>,
) -> Result<Response, ApiError> {
    let new = body.into_new()?;
    let stored = state.store.create(&new).await?.ok_or(ApiError::Conflict)?;
    Ok((StatusCode::CREATED, Json(view::integration(&stored))).into_response())
}

async fn list_integrations(
    State(state): State<ApiState>,
    query: QueryMap,
) -> Result<Response, ApiError> {
    let q = query_map(query)?;
    let project = q
        .get("projectId")
        .ok_or_else(|| ApiError::field("projectId", "is required"))?;
    let project = parse_id("projectId", project)?;
    let cursor = q.get("cursor").map(|c| parse_id("cursor", c)).transpose()?;
    let limit = parse_number(&q, "limit", 50, 1..=MAX_PAGE)?;
    let page = state.store.list(&project, cursor.as_ref(), limit).await?;
    let next = (page.len() as i64 == limit)
        .then(|| page.last().map(|s| s.integration.id.to_string()))
        .flatten();
    Ok(Json(serde_json::json!({
        "data": page.iter().map(view::integration).collect::<Vec<_>>(),
        "nextCursor": next,
    }))
    .into_response())
}

async fn get_integration(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id("id", &id)?;
    let stored = state
        .store
        .get(&id)
        .await?
        .ok_or(ApiError::NotFound("integration"))?;
    Ok(Json(view::integration(&stored)).into_response())
}

async fn patch_integration(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<PatchIntegration>,
) -> Result<Response, ApiError> {
    let id = parse_id("id", &id)?;
    let stored = state
        .store
        .update(None, &id, |e| body.apply(e))
        .await??
        .ok_or(ApiError::NotFound("integration"))?;
    Ok(Json(view::integration(&stored)).into_response())
}

async fn set_active(state: &ApiState, id: &str, active: bool) -> Result<Response, ApiError> {
    let id = parse_id("id", id)?;
    let stored = state
        .store
        .set_active(None, &id, active)
        .await?
        .ok_or(ApiError::NotFound("integration"))?;
    Ok(Json(view::integration(&stored)).into_response())
}

async fn activate(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    set_active(&state, &id, true).await
}

async fn deactivate(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    set_active(&state, &id, false).await
}

async fn import_openapi(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    query: QueryMap,
    ApiJson(document): ApiJson<serde_json::Value>,
) -> Result<Response, ApiError> {
    let id = parse_id("id", &id)?;
    let q = query_map(query)?;
    let use_server_url = match q.get("useServerUrl").map(String::as_str) {
        None | Some("false") => false,
        Some("true") => true,
        Some(_) => return Err(ApiError::field("useServerUrl", "must be true or false")),
    };
    let imported = crate::openapi_import::import(&document)?;
    check_endpoints(&imported.endpoints)?;
    let base_url = if use_server_url {
        Some(imported.server_url.clone().ok_or_else(|| {
            ApiError::field(
                "servers",
                "has no absolute http(s) URL in servers[0].url to use as the base URL",
            )
        })?)
    } else {
        None
    };
    let stored = state
        .store
        .replace_endpoints(None, &id, &imported.endpoints, base_url.as_ref())
        .await?
        .ok_or(ApiError::NotFound("integration"))?;
    Ok(Json(serde_json::json!({
        "integration": view::integration(&stored),
        "imported": imported.endpoints.keys().collect::<Vec<_>>(),
        "skipped": imported.skipped,
        "serverUrl": imported.server_url.map(|u| u.url().to_string()),
    }))
    .into_response())
}

async fn usage(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    query: QueryMap,
) -> Result<Response, ApiError> {
    let id = parse_id("id", &id)?;
    let q = query_map(query)?;
    let days = parse_number(&q, "days", 30, 1..=366)?;
    if state.store.get(&id).await?.is_none() {
        return Err(ApiError::NotFound("integration"));
    }
    let rows = state
        .store
        .usage_days(&id, u32::try_from(days).unwrap_or(30))
        .await?;
    Ok(Json(serde_json::json!({
        "integrationId": id.as_str(),
        "days": days,
        "usage": rows.iter().map(view::usage_day).collect::<Vec<_>>(),
    }))
    .into_response())
}
