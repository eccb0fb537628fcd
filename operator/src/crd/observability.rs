//! `spec.observability`: how the model's edge and cloud pods log and where they send traces.
//! Settings at the top apply to both sides; `edge` and `cloud` override them for one side.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Logs and traces of the model's edge agents and cloud workers.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ObservabilitySpec {
    /// Log filter of both sides (`RUST_LOG` syntax), e.g. `info` or
    /// `info,collm_edge_agent=debug`. Unset: `info`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub log_level: Option<String>,

    /// Log lines as `text` (default) or `json` (one object per line, for log collectors).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_format: Option<LogFormat>,

    /// OTLP/gRPC endpoint of an OpenTelemetry collector the pods send traces to, e.g.
    /// `http://otel-collector.observability:4317`. Unset: no traces are exported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048), regex(pattern = r"^https?://[^\s/]+/?$"))]
    pub otlp_endpoint: Option<String>,

    /// Overrides for the edge agents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edge: Option<SideObservability>,

    /// Overrides for the cloud workers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloud: Option<SideObservability>,
}

/// Settings of one side, each replacing the model-wide one when set.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SideObservability {
    /// Log filter (`RUST_LOG` syntax).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub log_level: Option<String>,

    /// `text` or `json`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_format: Option<LogFormat>,

    /// OTLP/gRPC collector endpoint, `http(s)://host:port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048), regex(pattern = r"^https?://[^\s/]+/?$"))]
    pub otlp_endpoint: Option<String>,
}

/// How log lines are written.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl LogFormat {
    /// The value the binaries read from `COLLM_LOG_FORMAT`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Text => "text",
            Self::Json => "json",
        }
    }
}

impl ObservabilitySpec {
    /// The settings one side runs with: its own where set, else the model-wide ones.
    pub fn for_side(&self, side: Option<&SideObservability>) -> SideObservability {
        let side = side.cloned().unwrap_or_default();
        SideObservability {
            log_level: side.log_level.or_else(|| self.log_level.clone()),
            log_format: side.log_format.or(self.log_format),
            otlp_endpoint: side.otlp_endpoint.or_else(|| self.otlp_endpoint.clone()),
        }
    }
}
