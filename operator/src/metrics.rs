//! The operator's Prometheus metrics, registered in the registry `/metrics` serves.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub error: String,
}

pub struct Metrics {
    pub reconciliations: Counter,
    pub failures: Family<ErrorLabels, Counter>,
    pub duration: Histogram,
    pub leader: Gauge,
    pub context_keys_deleted: Counter,
}

impl Metrics {
    /// Registers every metric in `registry` under the `collm_operator_` prefix.
    pub fn new(registry: &mut Registry) -> Self {
        let registry = registry.sub_registry_with_prefix("collm_operator");
        let reconciliations = Counter::default();
        let failures = Family::<ErrorLabels, Counter>::default();
        let duration = Histogram::new([0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]);
        let leader = Gauge::default();
        let context_keys_deleted = Counter::default();
        registry.register("reconciliations", "Reconciliations started", reconciliations.clone());
        registry.register(
            "reconcile_failures",
            "Reconciliations that failed, by error",
            failures.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Duration of a reconciliation",
            duration.clone(),
        );
        registry.register("leader", "1 while this replica holds the leader Lease", leader.clone());
        registry.register(
            "context_keys_deleted",
            "Redis keys deleted by the cloud-context finalizer",
            context_keys_deleted.clone(),
        );
        Self { reconciliations, failures, duration, leader, context_keys_deleted }
    }

    pub fn reconciled(&self, took: Duration, error: Option<&'static str>) {
        self.reconciliations.inc();
        self.duration.observe(took.as_secs_f64());
        if let Some(error) = error {
            self.failures.get_or_create(&ErrorLabels { error: error.to_string() }).inc();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconciliations_failures_and_durations_are_exposed() {
        let mut registry = Registry::default();
        let metrics = Metrics::new(&mut registry);
        metrics.reconciled(Duration::from_millis(30), None);
        metrics.reconciled(Duration::from_millis(30), Some("kube_api"));
        let text = collm_telemetry::metrics::render(&registry);
        assert!(text.contains("collm_operator_reconciliations_total 2"), "{text}");
        assert!(
            text.contains(r#"collm_operator_reconcile_failures_total{error="kube_api"} 1"#),
            "{text}"
        );
        assert!(text.contains("collm_operator_reconcile_duration_seconds_count 2"), "{text}");
        assert!(text.contains("collm_operator_leader 0"), "{text}");
    }
}
