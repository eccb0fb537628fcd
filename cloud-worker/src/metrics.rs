//! The worker's Prometheus metrics, registered once at startup in the registry that `/metrics`
//! serves. Names start with `collm_cloud_`; counters get `_total` when encoded.

use std::sync::Arc;
use std::time::Instant;

use collm_telemetry::metrics::{Registry, grpc_code_name, latency_buckets};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;

use crate::engine::CacheUse;

/// The RPCs of `CloudService`, as metric labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rpc {
    Upload,
    NextToken,
    EndSession,
    Health,
    Generate,
    Verify,
}

impl Rpc {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Upload => "Upload",
            Self::NextToken => "NextToken",
            Self::EndSession => "EndSession",
            Self::Health => "Health",
            Self::Generate => "Generate",
            Self::Verify => "Verify",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RpcLabels {
    rpc: &'static str,
    code: &'static str,
}

type LatencyFamily = Family<RpcLabels, Histogram, fn() -> Histogram>;

pub struct WorkerMetrics {
    rpc_requests: Family<RpcLabels, Counter>,
    rpc_seconds: LatencyFamily,
    in_flight: Gauge,
    upload_bytes: Counter,
    upload_rows: Counter,
    sessions_opened: Counter,
    sessions_ended: Counter,
    cache_hits: Counter,
    cache_misses: Counter,
    cache_rebuilds: Counter,
    positions_computed: Counter,
    positions_propagated: Counter,
    cached_sessions: Gauge,
    context_bytes: Gauge,
    context_store_up: Gauge,
    generated_tokens: Counter,
    drafted_tokens: Counter,
    accepted_tokens: Counter,
    rechecked_verifications: Counter,
}

/// Inference calls waiting for the worker's one engine (a process has one, so one gauge).
static ENGINE_QUEUE: std::sync::LazyLock<Gauge> = std::sync::LazyLock::new(Gauge::default);

/// Counts a call as waiting for the engine until dropped: hold it from before the engine lock
/// is asked for until it is granted.
pub struct EngineWait(());

impl EngineWait {
    pub fn start() -> Self {
        ENGINE_QUEUE.inc();
        Self(())
    }
}

impl Drop for EngineWait {
    fn drop(&mut self) {
        ENGINE_QUEUE.dec();
    }
}

impl WorkerMetrics {
    /// Registers every metric of the worker in `registry`, with `collm_cloud_build_info` and the
    /// `process_*` metrics.
    pub fn register(registry: &mut Registry) -> Arc<Self> {
        let m = Self {
            rpc_requests: Family::default(),
            rpc_seconds: Family::new_with_constructor(|| Histogram::new(latency_buckets())),
            in_flight: Gauge::default(),
            upload_bytes: Counter::default(),
            upload_rows: Counter::default(),
            sessions_opened: Counter::default(),
            sessions_ended: Counter::default(),
            cache_hits: Counter::default(),
            cache_misses: Counter::default(),
            cache_rebuilds: Counter::default(),
            positions_computed: Counter::default(),
            positions_propagated: Counter::default(),
            cached_sessions: Gauge::default(),
            context_bytes: Gauge::default(),
            context_store_up: Gauge::default(),
            generated_tokens: Counter::default(),
            drafted_tokens: Counter::default(),
            accepted_tokens: Counter::default(),
            rechecked_verifications: Counter::default(),
        };
        let r = registry;
        r.register(
            "collm_cloud_rpc_requests",
            "Finished gRPC calls by method and status code (CANCELLED: the caller went away)",
            m.rpc_requests.clone(),
        );
        r.register(
            "collm_cloud_rpc_duration_seconds",
            "Duration of gRPC calls by method and status code (streams: until their end)",
            m.rpc_seconds.clone(),
        );
        r.register("collm_cloud_rpc_in_flight", "gRPC calls being served", m.in_flight.clone());
        r.register(
            "collm_cloud_engine_queue_depth",
            "Inference steps waiting for the worker's engine (one runs at a time)",
            ENGINE_QUEUE.clone(),
        );
        r.register(
            "collm_cloud_upload_bytes",
            "Hidden-state payload bytes received in valid upload chunks",
            m.upload_bytes.clone(),
        );
        r.register(
            "collm_cloud_upload_rows",
            "Hidden-state rows (positions) received in valid upload chunks",
            m.upload_rows.clone(),
        );
        r.register(
            "collm_cloud_sessions_opened",
            "Sessions whose position 0 was stored through this worker",
            m.sessions_opened.clone(),
        );
        r.register(
            "collm_cloud_sessions_ended",
            "Sessions ended through this worker (EndSession on an existing session)",
            m.sessions_ended.clone(),
        );
        r.register(
            "collm_cloud_kv_cache_hits",
            "Next-token and verify steps that extended (or cut back) a session's cached KV",
            m.cache_hits.clone(),
        );
        r.register(
            "collm_cloud_kv_cache_misses",
            "Next-token steps that built a session's KV from its stored rows",
            m.cache_misses.clone(),
        );
        r.register(
            "collm_cloud_kv_cache_rebuilds",
            "Misses for a session whose KV this worker had held (evicted, or nothing of it still valid)",
            m.cache_rebuilds.clone(),
        );
        r.register(
            "collm_cloud_positions_computed",
            "Positions run through the cloud layers (the cloud's share of the computation)",
            m.positions_computed.clone(),
        );
        r.register(
            "collm_cloud_positions_propagated",
            "Positions whose cloud-layer keys and values were propagated from the edge's hidden state instead of computed (propagate catch-up)",
            m.positions_propagated.clone(),
        );
        r.register(
            "collm_cloud_kv_cached_sessions",
            "Sessions whose KV cache is in this worker's memory",
            m.cached_sessions.clone(),
        );
        r.register(
            "collm_cloud_context_bytes",
            "Bytes of hidden-state rows the cloud context store holds, every client",
            m.context_bytes.clone(),
        );
        r.register(
            "collm_cloud_context_store_up",
            "1 when the last check reached the cloud context store, 0 otherwise",
            m.context_store_up.clone(),
        );
        r.register(
            "collm_cloud_generated_tokens",
            "Tokens streamed by Generate (full model, cloud-only baseline)",
            m.generated_tokens.clone(),
        );
        r.register(
            "collm_cloud_drafted_tokens",
            "Draft tokens checked by Verify (lossless speculation)",
            m.drafted_tokens.clone(),
        );
        r.register(
            "collm_cloud_accepted_tokens",
            "Draft tokens Verify found equal to the full model's picks",
            m.accepted_tokens.clone(),
        );
        r.register(
            "collm_cloud_rechecked_verifications",
            "Verifications whose batched pass left a deciding pick within rounding of a tie, so the positions from it ran again one at a time",
            m.rechecked_verifications.clone(),
        );
        collm_telemetry::metrics::register_standard(
            r,
            "collm_cloud",
            "cloud-worker",
            env!("CARGO_PKG_VERSION"),
        );
        Arc::new(m)
    }

    /// Starts timing one call; the timer records it when finished or dropped.
    pub fn start(self: &Arc<Self>, rpc: Rpc) -> RpcTimer {
        self.in_flight.inc();
        RpcTimer { metrics: Arc::clone(self), rpc, started: Instant::now(), finished: false }
    }

    pub fn uploaded(&self, rows: u32, bytes: usize) {
        self.upload_rows.inc_by(u64::from(rows));
        self.upload_bytes.inc_by(bytes as u64);
    }

    pub fn session_opened(&self) {
        self.sessions_opened.inc();
    }

    pub fn session_ended(&self) {
        self.sessions_ended.inc();
    }

    pub fn answered(
        &self,
        cache: CacheUse,
        computed: u64,
        propagated: u64,
        cached_sessions: usize,
    ) {
        match cache {
            CacheUse::Hit => self.cache_hits.inc(),
            CacheUse::Built => self.cache_misses.inc(),
            CacheUse::Rebuilt => {
                self.cache_rebuilds.inc();
                self.cache_misses.inc()
            }
        };
        self.positions_computed.inc_by(computed);
        self.positions_propagated.inc_by(propagated);
        self.set_cached_sessions(cached_sessions);
    }

    pub fn set_cached_sessions(&self, n: usize) {
        self.cached_sessions.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// The outcome of a context store check, and the bytes it holds when it could tell.
    pub fn context_store(&self, up: bool, bytes: Option<u64>) {
        self.context_store_up.set(i64::from(up));
        if let Some(b) = bytes {
            self.context_bytes.set(i64::try_from(b).unwrap_or(i64::MAX));
        }
    }

    pub fn generated(&self) {
        self.generated_tokens.inc();
    }

    pub fn verified(&self, drafted: usize, accepted: usize) {
        self.drafted_tokens.inc_by(drafted as u64);
        self.accepted_tokens.inc_by(accepted as u64);
    }

    /// A verification's batched verdict was too close to call and ran again.
    pub fn verify_rechecked(&self) {
        self.rechecked_verifications.inc();
    }
}

/// One call being timed; `finish` records its status, dropping it unfinished records
/// `CANCELLED` (tonic drops a handler's future when the caller goes away).
pub struct RpcTimer {
    metrics: Arc<WorkerMetrics>,
    rpc: Rpc,
    started: Instant,
    finished: bool,
}

impl RpcTimer {
    pub fn finish(mut self, code: tonic::Code) {
        self.record(code);
    }

    /// Records the outcome of a handler's result.
    pub fn finish_with<T>(self, result: &Result<T, tonic::Status>) {
        self.finish(result.as_ref().map_or_else(tonic::Status::code, |_| tonic::Code::Ok));
    }

    fn record(&mut self, code: tonic::Code) {
        if std::mem::replace(&mut self.finished, true) {
            return;
        }
        let m = &self.metrics;
        let labels = RpcLabels { rpc: self.rpc.as_str(), code: grpc_code_name(code) };
        m.rpc_requests.get_or_create(&labels).inc();
        m.rpc_seconds.get_or_create(&labels).observe(self.started.elapsed().as_secs_f64());
        m.in_flight.dec();
    }
}

impl Drop for RpcTimer {
    fn drop(&mut self) {
        self.record(tonic::Code::Cancelled);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_cache_use_and_uploads_show_up_under_their_names() {
        let mut registry = Registry::default();
        let m = WorkerMetrics::register(&mut registry);
        m.start(Rpc::NextToken).finish(tonic::Code::Ok);
        m.start(Rpc::NextToken).finish_with::<()>(&Err(tonic::Status::not_found("gone")));
        drop(m.start(Rpc::Upload));
        m.uploaded(3, 1728);
        m.answered(CacheUse::Built, 5, 2, 1);
        m.answered(CacheUse::Hit, 1, 0, 1);
        m.answered(CacheUse::Rebuilt, 7, 3, 1);
        m.verified(4, 3);
        m.verify_rechecked();
        m.context_store(true, Some(4096));
        let text = collm_telemetry::metrics::render(&registry);
        for line in [
            r#"collm_cloud_rpc_requests_total{rpc="NextToken",code="OK"} 1"#,
            r#"collm_cloud_rpc_requests_total{rpc="NextToken",code="NOT_FOUND"} 1"#,
            r#"collm_cloud_rpc_requests_total{rpc="Upload",code="CANCELLED"} 1"#,
            r#"collm_cloud_rpc_duration_seconds_count{rpc="NextToken",code="OK"} 1"#,
            "collm_cloud_rpc_in_flight 0",
            "collm_cloud_upload_rows_total 3",
            "collm_cloud_upload_bytes_total 1728",
            "collm_cloud_kv_cache_hits_total 1",
            "collm_cloud_kv_cache_misses_total 2",
            "collm_cloud_kv_cache_rebuilds_total 1",
            "collm_cloud_positions_computed_total 13",
            "collm_cloud_positions_propagated_total 5",
            "collm_cloud_context_bytes 4096",
            "collm_cloud_context_store_up 1",
            "collm_cloud_drafted_tokens_total 4",
            "collm_cloud_accepted_tokens_total 3",
            "collm_cloud_rechecked_verifications_total 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line:?} missing from:\n{text}");
        }
    }
}
