//! Prometheus metrics: each service owns one [`Registry`], registers its metrics in it at
//! startup, then shares it (read-only) with the `/metrics` endpoint of [`crate::http`].

use std::fmt::Write as _;

pub use prometheus_client;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
pub use prometheus_client::registry::Registry;

/// OpenMetrics text, which Prometheus asks for first when it scrapes.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The classic Prometheus text format (0.0.4), for scrapers and tools that do not ask for
/// OpenMetrics (`curl`, `promtool check metrics`, older agents).
pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Registers what every service exposes besides its own metrics: `<prefix>_build_info` (a gauge
/// of 1 whose labels name the build) and the `process_*` metrics of [`crate::process`].
pub fn register_standard(registry: &mut Registry, prefix: &str, service: &str, version: &str) {
    let info = Family::<Vec<(String, String)>, Gauge>::default();
    info.get_or_create(&vec![
        ("service".to_string(), service.to_string()),
        ("version".to_string(), version.to_string()),
    ])
    .set(1);
    registry.register(
        format!("{prefix}_build_info"),
        "A constant 1, labelled with the service and its version",
        info,
    );
    registry.register_collector(Box::new(crate::process::ProcessCollector));
}

/// Whether a scraper's `Accept` header asks for OpenMetrics (Prometheus does).
pub fn wants_openmetrics(accept: Option<&str>) -> bool {
    accept.is_some_and(|a| a.contains("application/openmetrics-text"))
}

/// The registry in the classic text format: OpenMetrics as the registry encodes it, with the
/// differences of the older format undone (a counter's family is named with its `_total`,
/// there is no `# UNIT` and no `# EOF`).
pub fn render_text(registry: &Registry) -> String {
    openmetrics_to_text(&render(registry))
}

fn openmetrics_to_text(open: &str) -> String {
    let counters: std::collections::HashSet<&str> =
        open.lines().filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter")).collect();
    let mut out = String::with_capacity(open.len());
    for line in open.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let descriptor =
            ["# HELP ", "# TYPE "].iter().find_map(|p| Some((*p, line.strip_prefix(p)?)));
        match descriptor {
            Some((kind, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                let tail = if tail == "unknown" { "untyped" } else { tail };
                let suffix = if counters.contains(name) { "_total" } else { "" };
                let _ = writeln!(out, "{kind}{name}{suffix} {tail}");
            }
            None if counters.iter().any(|c| line.starts_with(&format!("{c}_created"))) => {}
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

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
    fn the_text_format_names_counters_with_total_and_has_no_eof() {
        let mut registry = Registry::default();
        let requests = Counter::<u64>::default();
        registry.register("demo_requests", "Requests served", requests.clone());
        let depth = Gauge::<i64>::default();
        registry.register("demo_queue_depth", "Waiting", depth.clone());
        requests.inc();
        depth.set(2);
        register_standard(&mut registry, "demo", "demo-service", "1.2.3");
        let text = render_text(&registry);
        for line in [
            "# HELP demo_requests_total Requests served.",
            "# TYPE demo_requests_total counter",
            "demo_requests_total 1",
            "# TYPE demo_queue_depth gauge",
            "demo_queue_depth 2",
            "# TYPE demo_build_info gauge",
            r#"demo_build_info{service="demo-service",version="1.2.3"} 1"#,
            "# TYPE process_cpu_seconds_total counter",
        ] {
            assert!(text.lines().any(|l| l == line), "{line:?} missing from:\n{text}");
        }
        assert!(!text.contains("# EOF"), "{text}");
        assert!(wants_openmetrics(Some(
            "application/openmetrics-text;version=1.0.0,text/plain;q=0.5"
        )));
        assert!(!wants_openmetrics(Some("text/plain")) && !wants_openmetrics(None));
    }

    #[test]
    fn codes_have_their_canonical_names() {
        assert_eq!(grpc_code_name(tonic::Code::Ok), "OK");
        assert_eq!(grpc_code_name(tonic::Code::FailedPrecondition), "FAILED_PRECONDITION");
    }
}
