//! Logs and traces: `tracing` with a pretty or JSON formatter, plus OpenTelemetry OTLP/HTTP
//! export when `OTEL_EXPORTER_OTLP_ENDPOINT` is set.

use std::io::IsTerminal;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
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
        tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(false)
            .with_span_list(false)
            .with_filter(filter())
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
    let _ = tracing_subscriber::registry()
        .with(fmt_layer)
        .with(otel_layer)
        .try_init();
    if let Some(err) = otel_error {
        tracing::warn!(error = %err, "otlp trace export disabled");
    }
    TelemetryGuard { provider }
}

fn build_provider(service: &'static str) -> Result<SdkTracerProvider, String> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .build()
        .map_err(|e| e.to_string())?;
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(Resource::builder().with_service_name(service).build())
        .build())
}
