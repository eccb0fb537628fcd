//! What every ce-collm service (cloud worker, edge agent, operator) needs to be observed:
//!
//! - [`init`]: logs to stderr filtered by `RUST_LOG`, plus OpenTelemetry traces exported over
//!   OTLP/gRPC when an endpoint is configured (flag or `OTEL_EXPORTER_OTLP_ENDPOINT`; off by
//!   default). Keep the returned [`Telemetry`] alive: dropping it flushes pending spans.
//! - [`propagation`]: continue the caller's trace from the W3C `traceparent` of gRPC metadata or
//!   HTTP headers, and send ours on, so one trace spans edge and cloud.
//! - [`metrics`]: the Prometheus registry types each service registers its metrics in, the
//!   `build_info` and [`process`] metrics every service adds, OpenMetrics and classic text.
//! - [`http`]: an axum router with `/metrics`, `/healthz` and `/readyz` (from a shared
//!   [`http::Readiness`]) that a service serves on its own port or merges into its API.

pub mod http;
mod init;
pub mod metrics;
pub mod process;
pub mod propagation;

pub use init::{LOG_FORMAT_ENV, LogFormat, Telemetry, init};

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("logging is already set up in this process (call collm_telemetry::init once)")]
    AlreadyInitialized,

    #[error("invalid RUST_LOG filter: {0}")]
    Filter(String),

    #[error("invalid COLLM_LOG_FORMAT {0:?} (expected text or json)")]
    LogFormat(String),

    #[error("OTLP exporter for {endpoint}: {reason}")]
    Exporter { endpoint: String, reason: String },
}
