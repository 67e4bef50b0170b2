//! An OTLP/HTTP trace receiver on `127.0.0.1:0`: `POST /v1/traces` with a protobuf
//! `ExportTraceServiceRequest`, the way `opentelemetry-otlp`'s `http-proto` exporter sends it.
//! Every span is kept, flattened, with the `service.name` of the resource that exported it.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use prost::Message as _;
use tokio::net::TcpListener;

/// `Content-Type` of OTLP/HTTP protobuf.
const PROTOBUF: &str = "application/x-protobuf";

/// One exported span.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportedSpan {
    /// `service.name` of the resource that exported it.
    pub service: String,
    /// The span's name.
    pub name: String,
    /// Trace id, 32 lowercase hex digits (as in a `traceparent`).
    pub trace_id: String,
    /// Span id, 16 lowercase hex digits.
    pub span_id: String,
    /// The parent's span id; empty for a root.
    pub parent_span_id: String,
    /// Attributes, each value in its text form (`"200"`, `"true"`, `"deal.created"`).
    pub attributes: BTreeMap<String, String>,
}

impl ExportedSpan {
    /// An attribute's text, if the span has it.
    pub fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }
}

/// A running receiver; it stops with the test's runtime.
#[derive(Debug, Clone)]
pub struct Collector {
    addr: SocketAddr,
    spans: Arc<Mutex<Vec<ExportedSpan>>>,
}

impl Collector {
    /// Binds `127.0.0.1:0` and serves until the runtime ends.
    pub async fn start() -> std::io::Result<Self> {
        let spans = Arc::new(Mutex::new(Vec::new()));
        let app = Router::new()
            .route("/v1/traces", axum::routing::post(export))
            .with_state(Arc::clone(&spans));
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok(Self { addr, spans })
    }

    /// The value for `OTEL_EXPORTER_OTLP_ENDPOINT` (the exporter appends `/v1/traces`).
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every span received so far, in arrival order.
    pub fn spans(&self) -> Vec<ExportedSpan> {
        self.spans
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

async fn export(
    State(spans): State<Arc<Mutex<Vec<ExportedSpan>>>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    // The exporters here send uncompressed protobuf; anything else is a test setup error,
    // answered so that the exporter logs it rather than the spans vanishing silently.
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    if content_type != Some(PROTOBUF) || headers.contains_key(header::CONTENT_ENCODING) {
        return StatusCode::UNSUPPORTED_MEDIA_TYPE.into_response();
    }
    let Ok(request) = ExportTraceServiceRequest::decode(body) else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    let received = flatten(request);
    spans
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .extend(received);
    (
        [(header::CONTENT_TYPE, PROTOBUF)],
        ExportTraceServiceResponse::default().encode_to_vec(),
    )
        .into_response()
}

fn flatten(request: ExportTraceServiceRequest) -> Vec<ExportedSpan> {
    let mut out = Vec::new();
    for resource_spans in request.resource_spans {
        let service = resource_spans
            .resource
            .iter()
            .flat_map(|r| &r.attributes)
            .find(|kv| kv.key == "service.name")
            .and_then(|kv| kv.value.as_ref())
            .map(text)
            .unwrap_or_default();
        for span in resource_spans.scope_spans.into_iter().flat_map(|s| s.spans) {
            out.push(ExportedSpan {
                service: service.clone(),
                name: span.name,
                trace_id: hex(&span.trace_id),
                span_id: hex(&span.span_id),
                parent_span_id: hex(&span.parent_span_id),
                attributes: attributes(&span.attributes),
            });
        }
    }
    out
}

fn attributes(kvs: &[KeyValue]) -> BTreeMap<String, String> {
    kvs.iter()
        .filter_map(|kv| Some((kv.key.clone(), text(kv.value.as_ref()?))))
        .collect()
}

fn text(value: &AnyValue) -> String {
    match &value.value {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};

    fn attribute(key: &str, value: any_value::Value) -> KeyValue {
        KeyValue {
            key: key.to_owned(),
            value: Some(AnyValue { value: Some(value) }),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn keeps_posted_spans_with_their_service() {
        let collector = Collector::start().await.unwrap();
        let request = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![attribute(
                        "service.name",
                        any_value::Value::StringValue("svc".to_owned()),
                    )],
                    ..Default::default()
                }),
                scope_spans: vec![ScopeSpans {
                    spans: vec![Span {
                        name: "work".to_owned(),
                        trace_id: vec![0xab; 16],
                        span_id: vec![1, 2, 3, 4, 5, 6, 7, 8],
                        attributes: vec![attribute("n", any_value::Value::IntValue(7))],
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        let client = test_support::http_client();
        let url = format!("{}/v1/traces", collector.endpoint());
        let ok = client
            .post(&url)
            .header("content-type", PROTOBUF)
            .body(request.encode_to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(ok.status().as_u16(), 200);
        let json = client.post(&url).body("{}").send().await.unwrap();
        assert_eq!(json.status().as_u16(), 415);

        let spans = collector.spans();
        assert_eq!(spans.len(), 1, "{spans:?}");
        assert_eq!(spans[0].service, "svc");
        assert_eq!(spans[0].name, "work");
        assert_eq!(spans[0].trace_id, "ab".repeat(16));
        assert_eq!(spans[0].span_id, "0102030405060708");
        assert_eq!(spans[0].parent_span_id, "");
        assert_eq!(spans[0].attribute("n"), Some("7"));
    }
}
