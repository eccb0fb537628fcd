//! Process-wide setup: the `tracing` subscriber (stderr logs, and OpenTelemetry spans when an
//! OTLP endpoint is configured) and the guard that flushes spans on drop.

use std::io::IsTerminal;
use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::{Error, Result};

/// `text` (default: one compact line per event) or `json` (one JSON object per line, for log
/// collectors).
pub const LOG_FORMAT_ENV: &str = "COLLM_LOG_FORMAT";

/// How log lines are written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

impl LogFormat {
    /// From the value of [`LOG_FORMAT_ENV`]; unset or empty is text.
    pub fn parse(value: Option<&str>) -> Result<Self> {
        match value.map(str::trim) {
            None | Some("") | Some("text") => Ok(Self::Text),
            Some("json") => Ok(Self::Json),
            Some(other) => Err(Error::LogFormat(other.to_owned())),
        }
    }
}

/// The standard variable naming the OTLP collector when no flag does.
pub const OTLP_ENDPOINT_ENV: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";

/// Log filter when `RUST_LOG` is unset: our own info, the ONNX Runtime's warnings only.
const DEFAULT_FILTER: &str = "info,ort=warn";

/// How long dropping [`Telemetry`] may wait for the last spans to reach the collector.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// Keeps the exporter running; dropping it flushes the spans not yet exported.
#[must_use = "dropping the guard stops trace export"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
    /// The OTLP/gRPC exporter's connection lives on this runtime, apart from the service's own,
    /// so that it works before the service starts its runtime and after it has stopped it.
    runtime: Option<tokio::runtime::Runtime>,
    endpoint: Option<String>,
}

impl Telemetry {
    /// The collector spans go to, `None` when trace export is off.
    pub fn otlp_endpoint(&self) -> Option<&str> {
        self.endpoint.as_deref()
    }

    /// Exports every finished span now (a no-op when trace export is off).
    pub fn flush(&self) {
        if let Some(provider) = &self.provider
            && let Err(e) = provider.force_flush()
        {
            tracing::warn!("flushing traces failed: {e}");
        }
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(e) = provider.shutdown_with_timeout(FLUSH_TIMEOUT)
        {
            eprintln!("warning: flushing traces on exit failed: {e}");
        }
        if let Some(runtime) = self.runtime.take() {
            // Safe from any context, async included, unlike dropping the runtime.
            runtime.shutdown_background();
        }
    }
}

/// Sets up logging and, when `otlp_endpoint` (or else `OTEL_EXPORTER_OTLP_ENDPOINT`) names a
/// collector (`http://HOST:4317`, OTLP over gRPC), trace export with `service_name` as the
/// `service.name` resource. Call once, early in `main`, and keep the guard until exit.
pub fn init(service_name: &str, otlp_endpoint: Option<&str>) -> Result<Telemetry> {
    let filter = match std::env::var(EnvFilter::DEFAULT_ENV) {
        Ok(spec) if !spec.trim().is_empty() => {
            EnvFilter::try_new(&spec).map_err(|e| Error::Filter(format!("{spec:?}: {e}")))?
        }
        _ => EnvFilter::new(DEFAULT_FILTER),
    };
    let endpoint = otlp_endpoint
        .map(str::to_owned)
        .or_else(|| std::env::var(OTLP_ENDPOINT_ENV).ok())
        .map(|e| e.trim().to_owned())
        .filter(|e| !e.is_empty());
    let (provider, runtime) = match &endpoint {
        Some(endpoint) => {
            let (provider, runtime) = otlp_provider(service_name, endpoint)?;
            (Some(provider), Some(runtime))
        }
        None => (None, None),
    };
    let otel = provider.as_ref().map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer(service_name.to_owned()))
            // The exporter's own transport must not trace itself into an endless loop.
            .with_filter(tracing_subscriber::filter::filter_fn(|meta| !is_transport(meta.target())))
    });
    let format = LogFormat::parse(std::env::var(LOG_FORMAT_ENV).ok().as_deref())?;
    let logs = match format {
        // Colours only for a person at a terminal, not in a pod's or a test's captured output.
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .compact()
            .with_ansi(std::io::stderr().is_terminal())
            .with_writer(std::io::stderr)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(false)
            .with_writer(std::io::stderr)
            .boxed(),
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(logs)
        .with(otel)
        .try_init()
        .map_err(|_| Error::AlreadyInitialized)?;
    if let Some(p) = &provider {
        opentelemetry::global::set_tracer_provider(p.clone());
    }
    if let Some(endpoint) = &endpoint {
        tracing::info!(service = service_name, %endpoint, "exporting traces over OTLP");
    }
    Ok(Telemetry { provider, runtime, endpoint })
}

fn otlp_provider(
    service_name: &str,
    endpoint: &str,
) -> Result<(SdkTracerProvider, tokio::runtime::Runtime)> {
    let failed = |reason: String| Error::Exporter { endpoint: endpoint.to_owned(), reason };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("otlp-export")
        .enable_all()
        .build()
        .map_err(|e| failed(format!("cannot start its runtime: {e}")))?;
    // The gRPC channel binds to the runtime current when it is built.
    let exporter = {
        let _entered = runtime.enter();
        opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint)
            .build()
            .map_err(|e| failed(e.to_string()))?
    };
    let provider = SdkTracerProvider::builder()
        .with_resource(Resource::builder().with_service_name(service_name.to_owned()).build())
        .with_batch_exporter(exporter)
        .build();
    Ok((provider, runtime))
}

fn is_transport(target: &str) -> bool {
    ["h2", "hyper", "tonic", "tower", "opentelemetry"].iter().any(|t| {
        target == *t
            || target.starts_with(&format!("{t}::"))
            || target.starts_with(&format!("{t}_"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_format_is_text_unless_json_is_asked_and_nonsense_is_refused() {
        assert_eq!(LogFormat::parse(None).ok(), Some(LogFormat::Text));
        assert_eq!(LogFormat::parse(Some(" ")).ok(), Some(LogFormat::Text));
        assert_eq!(LogFormat::parse(Some("json")).ok(), Some(LogFormat::Json));
        let err = LogFormat::parse(Some("yaml")).expect_err("refused").to_string();
        assert!(err.contains("COLLM_LOG_FORMAT \"yaml\"") && err.contains("text or json"), "{err}");
    }
}
