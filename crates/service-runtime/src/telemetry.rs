//! Logs and traces: `tracing` with a pretty or JSON formatter, plus OpenTelemetry OTLP/HTTP
//! export when `OTEL_EXPORTER_OTLP_ENDPOINT` is set.

use std::io::IsTerminal;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::filter::{FilterExt, filter_fn};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::LogFormat;

/// Standard variable that switches OTLP export on.
pub const OTLP_ENDPOINT_ENV: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";

/// Flushes pending spans when dropped; keep it alive for the life of the process.
#[derive(Debug)]
#[must_use = "spans are flushed when the guard drops"]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(err) = provider.shutdown()
        {
            tracing::warn!(error = %err, "flushing traces failed");
        }
    }
}

/// Installs the global subscriber. `RUST_LOG` filters (default `info`). `otlp_endpoint` is the
/// value of [`OTLP_ENDPOINT_ENV`], if set; the exporter reads the other `OTEL_*` variables
/// itself.
pub fn init(
    service: &'static str,
    format: LogFormat,
    otlp_endpoint: Option<String>,
) -> TelemetryGuard {
    let filter = || EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = match format {
        LogFormat::Json => true,
        LogFormat::Pretty => false,
        LogFormat::Auto => !std::io::stdout().is_terminal(),
    };
    let fmt_layer = if json {
        // JSON lines carry no span data, so this layer takes no spans at all: a span that no
        // other layer wants (no exporter configured) is then disabled at its callsite and
        // costs nothing, which the per-event relay spans of the gateways rely on (≈ 2.5 µs each
        // otherwise, measured). Span-scoped `RUST_LOG` directives (`[span]=debug`) therefore
        // apply to the pretty format only.
        tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(false)
            .with_span_list(false)
            .with_filter(filter().and(filter_fn(|meta| !meta.is_span())))
            .boxed()
    } else {
        tracing_subscriber::fmt::layer()
            .with_filter(filter())
            .boxed()
    };

    let mut provider = None;
    let mut otel_error = None;
    let otel_layer = match otlp_endpoint.filter(|e| !e.trim().is_empty()) {
        None => None,
        Some(_) => match build_provider(service) {
            Ok(p) => {
                let tracer = p.tracer(service);
                provider = Some(p);
                Some(
                    tracing_opentelemetry::layer()
                        .with_tracer(tracer)
                        .with_filter(filter()),
                )
            }
            Err(err) => {
                otel_error = Some(err);
                None
            }
        },
    };
    // Not `.with(Option<layer>)`: a `None` layer claims interest in every callsite, which would
    // enable every span again (tracing-subscriber 0.3).
    let registry = tracing_subscriber::registry().with(fmt_layer);
    let _ = match otel_layer {
        Some(otel) => registry.with(otel).try_init(),
        None => registry.try_init(),
    };
    if let Some(err) = otel_error {
        tracing::warn!(error = %err, "otlp trace export disabled");
    }
    TelemetryGuard { provider }
}

fn build_provider(service: &'static str) -> Result<SdkTracerProvider, String> {
    // The exporter's HTTP client is reqwest with `rustls-no-provider`: without a process-wide
    // crypto provider its construction panics (and export would be off in every service).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .build()
        .map_err(|e| e.to_string())?;
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(Resource::builder().with_service_name(service).build())
        .build())
}
