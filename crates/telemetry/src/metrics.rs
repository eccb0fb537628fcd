//! Prometheus metrics: each service owns one [`Registry`], registers its metrics in it at
//! startup, then shares it (read-only) with the `/metrics` endpoint of [`crate::http`].

use std::fmt::Write as _;

pub use prometheus_client;
pub use prometheus_client::registry::Registry;

/// OpenMetrics text, which Prometheus scrapes natively.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The registry's metrics in the text exposition format.
pub fn render(registry: &Registry) -> String {
    let mut out = String::new();
    if prometheus_client::encoding::text::encode(&mut out, registry).is_err() {
        // Encoding into a String only fails on a metric that refuses to encode; say so where a
        // scraper will see it rather than serving a truncated page.
        out.clear();
        let _ = writeln!(out, "# metrics could not be encoded\n# EOF");
    }
    out
}

/// Latency buckets in seconds, 1 ms to about 65 s, doubling: wide enough for one decode step
/// of a small model on a CPU as well as a long prefill.
pub fn latency_buckets() -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(0.001, 2.0, 17)
}

/// The canonical name of a gRPC status code (`OK`, `INVALID_ARGUMENT`, ...), as gRPC
/// dashboards label them.
pub fn grpc_code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::metrics::counter::Counter;

    use super::*;

    #[test]
    fn registered_metrics_render_as_openmetrics_text() {
        let mut registry = Registry::default();
        let requests = Counter::<u64>::default();
        registry.register("demo_requests", "Requests served", requests.clone());
        requests.inc_by(3);
        let text = render(&registry);
        assert!(text.contains("# HELP demo_requests Requests served"), "{text}");
        assert!(text.contains("demo_requests_total 3"), "{text}");
        assert!(text.trim_end().ends_with("# EOF"), "{text}");
    }

    #[test]
    fn codes_have_their_canonical_names() {
        assert_eq!(grpc_code_name(tonic::Code::Ok), "OK");
        assert_eq!(grpc_code_name(tonic::Code::FailedPrecondition), "FAILED_PRECONDITION");
    }
}
