//! `spec.observability` as the environment the edge agent and cloud worker read at startup:
//! `RUST_LOG` (log filter), `COLLM_LOG_FORMAT` (text or json) and
//! `OTEL_EXPORTER_OTLP_ENDPOINT` (the collector traces go to).

use k8s_openapi::api::core::v1::EnvVar;

use super::pod::{Side, value_env};
use crate::crd::CollabModelSpec;

pub const LOG_FILTER_ENV: &str = "RUST_LOG";
pub const LOG_FORMAT_ENV: &str = "COLLM_LOG_FORMAT";
pub const OTLP_ENDPOINT_ENV: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";

/// The variables of one side's runtime container; none when the spec sets nothing for it.
pub fn env(spec: &CollabModelSpec, side: Side) -> Vec<EnvVar> {
    let Some(o) = &spec.observability else { return Vec::new() };
    let settings = o.for_side(match side {
        Side::Edge => o.edge.as_ref(),
        Side::Cloud => o.cloud.as_ref(),
    });
    let mut env = Vec::new();
    if let Some(level) = &settings.log_level {
        env.push(value_env(LOG_FILTER_ENV, level));
    }
    if let Some(format) = settings.log_format {
        env.push(value_env(LOG_FORMAT_ENV, format.as_str()));
    }
    if let Some(endpoint) = &settings.otlp_endpoint {
        env.push(value_env(OTLP_ENDPOINT_ENV, endpoint));
    }
    env
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{CollabModel, LogFormat, ObservabilitySpec, SideObservability};

    fn vars(spec: &CollabModelSpec, side: Side) -> Vec<(String, String)> {
        env(spec, side).into_iter().map(|e| (e.name, e.value.unwrap_or_default())).collect()
    }

    #[test]
    fn model_wide_settings_reach_both_sides_and_a_side_overrides_them() {
        let mut spec = CollabModel::fixture().spec;
        assert!(vars(&spec, Side::Edge).is_empty(), "nothing set, nothing rendered");
        spec.observability = Some(ObservabilitySpec {
            log_level: Some("info,collm_cloud_worker=debug".into()),
            log_format: Some(LogFormat::Json),
            otlp_endpoint: Some("http://otel-collector.observability:4317".into()),
            edge: Some(SideObservability { log_level: Some("warn".into()), ..Default::default() }),
            cloud: None,
        });
        let pair = |k: &str, v: &str| (k.to_string(), v.to_string());
        assert_eq!(
            vars(&spec, Side::Edge),
            [
                pair("RUST_LOG", "warn"),
                pair("COLLM_LOG_FORMAT", "json"),
                pair("OTEL_EXPORTER_OTLP_ENDPOINT", "http://otel-collector.observability:4317"),
            ]
        );
        assert_eq!(vars(&spec, Side::Cloud)[0], pair("RUST_LOG", "info,collm_cloud_worker=debug"));
    }
}
