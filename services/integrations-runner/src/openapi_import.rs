//! Endpoints from an OpenAPI 3 document (`PUT /v1/integrations/{id}/endpoints/openapi`).
//!
//! Each operation with an `operationId` becomes an endpoint of that name: its method, its
//! path (OpenAPI's `{param}` is the runner's placeholder syntax), path params required (they
//! are placeholders), query and header params mapped to `{param}` templates (`required: true`
//! ones listed in `required`), and a `requestBody` sent as the caller's `requestData`.
//! Parameters may be inline or local `#/components/parameters/…` references. Operations
//! without an `operationId`, or that do not fit (a param name the runner cannot template, a
//! reserved header, the endpoint limit), are skipped and reported, never half-imported.
//! `servers[0].url`, when absolute http(s), is returned for the caller to use as base URL.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

use crate::model::{
    BodySpec, Endpoint, EndpointName, FieldError, HeaderField, HttpUrl, MAX_ENDPOINTS, Method,
    Name, Template,
};

/// An operation left out, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Skipped {
    /// Lower-case method.
    pub method: String,
    /// The path as written.
    pub path: String,
    /// Its `operationId`, if any.
    pub operation_id: Option<String>,
    /// Why it was skipped.
    pub reason: String,
}

/// What a document yields.
#[derive(Debug, Clone)]
pub struct Imported {
    /// The endpoints, by `operationId`.
    pub endpoints: BTreeMap<EndpointName, Endpoint>,
    /// Operations left out.
    pub skipped: Vec<Skipped>,
    /// `servers[0].url`, when it is an absolute http(s) URL.
    pub server_url: Option<HttpUrl>,
}

const METHODS: &[&str] = &["get", "post", "put", "patch", "delete", "head"];

/// Reads `doc`; the error names the field when the document is not OpenAPI 3.
pub fn import(doc: &Value) -> Result<Imported, FieldError> {
    let version = doc.get("openapi").and_then(Value::as_str).unwrap_or("");
    if !version.starts_with("3.") {
        return Err(FieldError::new(
            "openapi",
            "must be an OpenAPI 3 document (`openapi: 3.x`)",
        ));
    }
    let paths = doc
        .get("paths")
        .and_then(Value::as_object)
        .ok_or_else(|| FieldError::new("paths", "must be an object"))?;
    let server_url = doc
        .pointer("/servers/0/url")
        .and_then(Value::as_str)
        .and_then(|u| HttpUrl::parse(u.trim_end_matches('/')).ok());
    let mut endpoints = BTreeMap::new();
    let mut skipped = Vec::new();
    for (path, item) in paths {
        let shared = item.get("parameters").and_then(Value::as_array);
        for method in METHODS {
            let Some(op) = item.get(*method) else {
                continue;
            };
            let operation_id = op.get("operationId").and_then(Value::as_str);
            let skip = |reason: String| Skipped {
                method: (*method).to_owned(),
                path: path.clone(),
                operation_id: operation_id.map(str::to_owned),
                reason,
            };
            let Some(operation_id) = operation_id else {
                skipped.push(skip("no operationId".to_owned()));
                continue;
            };
            if endpoints.len() >= MAX_ENDPOINTS {
                skipped.push(skip(format!("more than {MAX_ENDPOINTS} endpoints")));
                continue;
            }
            match endpoint(doc, method, path, op, shared) {
                Ok(e) => match Name::parse(operation_id) {
                    Ok(name) if !endpoints.contains_key(&name) => {
                        endpoints.insert(name, e);
                    }
                    Ok(_) => skipped.push(skip("duplicate operationId".to_owned())),
                    Err(why) => skipped.push(skip(format!("operationId {why}"))),
                },
                Err(why) => skipped.push(skip(why)),
            }
        }
    }
    Ok(Imported {
        endpoints,
        skipped,
        server_url,
    })
}

fn resolve<'a>(doc: &'a Value, p: &'a Value) -> Option<&'a Value> {
    match p.get("$ref").and_then(Value::as_str) {
        Some(r) => doc.pointer(r.strip_prefix('#')?),
        None => Some(p),
    }
}

fn endpoint(
    doc: &Value,
    method: &str,
    path: &str,
    op: &Value,
    shared: Option<&Vec<Value>>,
) -> Result<Endpoint, String> {
    let method = Method::parse(method).map_err(|e| e.to_string())?;
    let template = Template::parse(path).map_err(|e| format!("path {e}"))?;
    let mut query = BTreeMap::new();
    let mut headers = BTreeMap::new();
    let mut required = Vec::new();
    let params = shared.into_iter().flatten().chain(
        op.get("parameters")
            .and_then(Value::as_array)
            .into_iter()
            .flatten(),
    );
    for p in params {
        let p = resolve(doc, p).ok_or("a parameter $ref does not resolve")?;
        let name = p
            .get("name")
            .and_then(Value::as_str)
            .ok_or("a parameter has no name")?;
        let location = p.get("in").and_then(Value::as_str).unwrap_or("");
        let is_required = p.get("required").and_then(Value::as_bool).unwrap_or(false);
        if location == "cookie" {
            continue;
        }
        let param = Name::parse(name).map_err(|e| format!("parameter {name:?}: {e}"))?;
        let placeholder = Template::parse(&format!("{{{param}}}")).map_err(|e| e.to_string())?;
        match location {
            "path" => {}
            "query" => {
                query.insert(name.to_owned(), placeholder);
            }
            "header" => {
                let h = HeaderField::parse(name).map_err(|e| format!("header {name:?} {e}"))?;
                headers.insert(h, placeholder);
            }
            other => return Err(format!("parameter {name:?} is in {other:?}")),
        }
        if is_required && location != "path" && !required.contains(&param) {
            required.push(param);
        }
    }
    let body = if op.get("requestBody").is_some() && !matches!(method, Method::Get | Method::Head) {
        BodySpec::RequestData
    } else {
        BodySpec::None
    };
    let e = Endpoint {
        method,
        path: template,
        query,
        headers,
        body,
        required,
        idempotent: None,
        timeout_ms: None,
    };
    e.check().map_err(|err| err.to_string())?;
    Ok(e)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use serde_json::json;

    use super::*;

    #[test]
    fn operations_become_endpoints() {
        let doc = json!({"openapi": "3.0.3", "servers": [{"url": "https://api.example.com/v2/"}],
        "components": {"parameters": {"Limit": {"name": "limit", "in": "query"}}},
        "paths": {
          "/users/{userId}/tweets": {
            "parameters": [{"name": "userId", "in": "path", "required": true}],
            "get": {"operationId": "getUserTweets", "parameters": [
              {"$ref": "#/components/parameters/Limit"},
              {"name": "since", "in": "query", "required": true}]},
            "post": {"operationId": "postTweet", "requestBody": {}},
            "delete": {"summary": "no id"}
          },
          "/weird": {"get": {"operationId": "weird", "parameters": [{"name": "page[size]", "in": "query"}]}}
        }});
        let out = import(&doc).unwrap();
        assert_eq!(
            out.server_url.unwrap().url().as_str(),
            "https://api.example.com/v2"
        );
        let e = &out.endpoints["getUserTweets"];
        assert_eq!(e.path.as_str(), "/users/{userId}/tweets");
        assert_eq!(e.query["limit"].as_str(), "{limit}");
        assert_eq!(
            e.required_params().map(Name::as_str).collect::<Vec<_>>(),
            ["userId", "since"]
        );
        assert_eq!(out.endpoints["postTweet"].body, BodySpec::RequestData);
        assert_eq!(out.skipped.len(), 2, "{:?}", out.skipped);
        assert_eq!(out.skipped[0].reason, "no operationId");
        assert!(import(&json!({"swagger": "2.0", "paths": {}})).is_err());
    }
}
