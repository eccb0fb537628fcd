//! The edge agent's Prometheus metrics, registered once at startup.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use collm_telemetry::metrics::latency_buckets;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub endpoint: String,
    pub mode: String,
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabels {
    /// `edge`, `cloud` or `edge-fallback`.
    pub source: String,
}

#[derive(Clone)]
pub struct Metrics {
    pub requests: Family<RequestLabels, Counter>,
    pub request_seconds: Family<RequestLabels, Histogram>,
    pub time_to_first_token_seconds: Histogram,
    /// Time between consecutive tokens of one response, as its client receives them.
    pub inter_token_seconds: Histogram,
    pub prompt_tokens: Counter,
    pub tokens: Family<SourceLabels, Counter>,
    pub cloud_request_seconds: Histogram,
    pub cloud_errors: Counter,
    pub uploaded_bytes: Counter,
    pub degraded_responses: Counter,
    pub active_generations: Gauge,
    pub cloud_connected: Gauge,
    pub rollbacks: Counter,
    pub drafted_tokens: Counter,
    pub accepted_draft_tokens: Counter,
}

impl Metrics {
    /// Registers the agent's metrics, `collm_edge_build_info` and the `process_*` metrics;
    /// `engine_queue` is the edge engine's count of decode steps waiting for the partition.
    pub fn register(registry: &mut Registry, engine_queue: Gauge) -> Self {
        let histogram = || Histogram::new(latency_buckets());
        let m = Self {
            requests: Family::default(),
            request_seconds: Family::new_with_constructor(histogram),
            time_to_first_token_seconds: histogram(),
            inter_token_seconds: histogram(),
            prompt_tokens: Counter::default(),
            tokens: Family::default(),
            cloud_request_seconds: histogram(),
            cloud_errors: Counter::default(),
            uploaded_bytes: Counter::default(),
            degraded_responses: Counter::default(),
            active_generations: Gauge::default(),
            cloud_connected: Gauge::default(),
            rollbacks: Counter::default(),
            drafted_tokens: Counter::default(),
            accepted_draft_tokens: Counter::default(),
        };
        let r = registry.sub_registry_with_prefix("collm_edge");
        r.register(
            "requests",
            "API requests by endpoint, mode and HTTP status",
            m.requests.clone(),
        );
        r.register(
            "request_duration_seconds",
            "Whole API request latency (streams: until the last event)",
            m.request_seconds.clone(),
        );
        r.register(
            "time_to_first_token_seconds",
            "From request arrival to the first generated token",
            m.time_to_first_token_seconds.clone(),
        );
        r.register(
            "inter_token_latency_seconds",
            "Time between consecutive generated tokens of one response, as sent to its client",
            m.inter_token_seconds.clone(),
        );
        r.register(
            "prompt_tokens",
            "Prompt tokens of the generations started",
            m.prompt_tokens.clone(),
        );
        r.register("tokens", "Generated tokens by who answered them", m.tokens.clone());
        r.register(
            "cloud_request_duration_seconds",
            "Next-token requests to the cloud, uploads of missing rows included",
            m.cloud_request_seconds.clone(),
        );
        r.register(
            "cloud_errors",
            "Cloud requests that failed or timed out (the edge answered instead)",
            m.cloud_errors.clone(),
        );
        r.register(
            "uploaded_bytes",
            "Hidden-state bytes sent to the cloud",
            m.uploaded_bytes.clone(),
        );
        r.register(
            "degraded_responses",
            "Responses answered without a reachable cloud",
            m.degraded_responses.clone(),
        );
        r.register("active_generations", "Generations in progress", m.active_generations.clone());
        r.register(
            "engine_queue_depth",
            "Decode steps waiting for the edge partition (one runs at a time, in arrival order)",
            engine_queue,
        );
        r.register(
            "cloud_connected",
            "1 while a cloud endpoint is connected",
            m.cloud_connected.clone(),
        );
        r.register(
            "rollbacks",
            "Times the edge took back tokens it had decoded ahead of the cloud (a wrong guess or a rejected draft token)",
            m.rollbacks.clone(),
        );
        r.register(
            "drafted_tokens",
            "Draft tokens sent to the cloud for verification (speculative mode)",
            m.drafted_tokens.clone(),
        );
        r.register(
            "accepted_draft_tokens",
            "Draft tokens the cloud found equal to the full model's (speculative mode)",
            m.accepted_draft_tokens.clone(),
        );
        collm_telemetry::metrics::register_standard(
            registry,
            "collm_edge",
            "edge-agent",
            env!("CARGO_PKG_VERSION"),
        );
        m
    }
}
