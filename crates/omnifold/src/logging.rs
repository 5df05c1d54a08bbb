//! Where the binary's `tracing` goes: stderr (quiet by default, `-v`,
//! `RUST_LOG`; JSON lines with `--log-json`), and spans to an OpenTelemetry
//! collector over OTLP/HTTP when `telemetry.otlp_endpoint` is set.

use anyhow::{Context, Result};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer as _};

use crate::config::TelemetryConfig;

/// Flushes the exported spans when dropped (at the end of `main`).
pub struct Tracing(Option<SdkTracerProvider>);

impl Drop for Tracing {
    fn drop(&mut self) {
        if let Some(provider) = self.0.take() {
            let _ = provider.shutdown();
        }
    }
}

/// Installs the subscriber: the log lines on stderr at `verbose`'s level
/// (or `RUST_LOG`), and the spans of calls and batches (info level) to the
/// collector when one is configured.
pub fn init(verbose: u8, json: bool, telemetry: Option<&TelemetryConfig>) -> Result<Tracing> {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let stderr = if json {
        tracing_subscriber::fmt::layer().json().with_writer(std::io::stderr).with_filter(filter).boxed()
    } else {
        tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_filter(filter).boxed()
    };
    let provider = telemetry.filter(|t| !t.otlp_endpoint.is_empty()).map(provider).transpose()?;
    let otel = provider
        .as_ref()
        .map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer("omnifold")).with_filter(LevelFilter::INFO));
    tracing_subscriber::registry().with(stderr).with(otel).init();
    Ok(Tracing(provider))
}

/// Spans batched to the collector from a thread of their own.
fn provider(t: &TelemetryConfig) -> Result<SdkTracerProvider> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(t.otlp_endpoint.clone())
        .build()
        .with_context(|| format!("the OTLP exporter for {}", t.otlp_endpoint))?;
    let resource = opentelemetry_sdk::Resource::builder().with_service_name(t.service_name.clone()).build();
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(t.sample_ratio))))
        .with_resource(resource)
        .build())
}
