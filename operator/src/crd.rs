//! The `CollabModel` custom resource: one object describing an LLM split between edge devices
//! (a DaemonSet) and the cloud (an autoscaled Deployment).
//!
//! Doc comments become the schema descriptions that `kubectl explain` shows, so they are written
//! for users. Cross-field rules are CEL (`x-kubernetes-validations`) evaluated by the API server;
//! their messages are what a user sees when `kubectl apply` is rejected.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{LocalObjectReference, ResourceRequirements, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

mod observability;
pub use observability::{LogFormat, ObservabilitySpec, SideObservability};

/// The API group of every resource this project defines.
pub const GROUP: &str = "collm.dev";

/// Rule: the cloud's replica bounds are ordered.
pub const RULE_REPLICAS: &str = "cloud.minReplicas must be less than or equal to cloud.maxReplicas";
/// Port the cloud worker serves health and metrics on (probed by the kubelet, scraped by
/// Prometheus); `cloud.grpcPort` must differ from it.
pub const CLOUD_HTTP_PORT: i32 = 8081;
/// Rule: the gRPC port leaves the worker's HTTP port free.
pub const RULE_GRPC_PORT: &str =
    "cloud.grpcPort must not be 8081: the cloud worker serves health and metrics there";
/// Rule: a confidence threshold is a probability the edge can reach.
pub const RULE_THRESHOLD: &str = "threshold must be greater than 0 and at most 1 (it is the edge's minimum top-token probability)";
/// Rule: an agreement target is a fraction.
pub const RULE_AGREEMENT: &str = "targetAgreement must be greater than 0 and at most 1";
/// Rule: only one way of choosing the exit threshold.
pub const RULE_THRESHOLD_XOR_AGREEMENT: &str = "set either threshold or targetAgreement, not both";
/// Rule: exit heads run on the edge, so they sit at or before the split.
pub const RULE_EXIT_LAYERS: &str = "every exit layer must be between 1 and splitLayer: exit heads run on the edge, before the split";
/// Rule: the bundle comes from exactly one place.
pub const RULE_BUNDLE_ONE_SOURCE: &str =
    "bundle needs exactly one source: url (with sha256), pvc, hostPath or configMap";
/// Rule: downloaded bundles are verified.
pub const RULE_BUNDLE_SHA: &str =
    "bundle.url needs bundle.sha256 (64 hex digits) so edge and cloud can verify the download";
/// Rule: a collaborative edge needs some cloud to talk to.
pub const RULE_EDGE_ONLY_ENDPOINT: &str = "collaborative mode without a cloud in this cluster \
     (cloud.enabled: false) needs externalCloudEndpoint";
/// Rule: an external endpoint and a local cloud exclude each other.
pub const RULE_ENDPOINT_XOR_CLOUD: &str =
    "externalCloudEndpoint is for edge-only deployments: set cloud.enabled: false to use it";
/// Rule: a local cloud stores its context in Redis.
pub const RULE_CLOUD_NEEDS_REDIS: &str =
    "a cloud in this cluster needs context.redis (url, secretRef or managed: true)";
/// Rule: Redis comes from exactly one place.
pub const RULE_REDIS_ONE_SOURCE: &str =
    "context.redis needs exactly one of url, secretRef or managed: true";
/// Rule: a cloud in another cluster cannot check this cluster's ServiceAccount tokens.
pub const RULE_EXTERNAL_NEEDS_TOKEN: &str = "externalCloudEndpoint needs credentials.edgeTokenSecretRef: \
     a cloud in another cluster cannot check this cluster's ServiceAccount tokens";
/// Rule: client certificates are part of TLS.
pub const RULE_MUTUAL_TLS_NEEDS_TLS: &str = "credentials.clientCaSecretRef and credentials.edgeCertSecretRef \
     (mutual TLS) need credentials.tlsSecretRef";
/// Rule: one autoscaling signal.
pub const RULE_ONE_METRIC: &str =
    "cloud autoscaling takes either targetCpuUtilization or customMetric, not both";

/// A language model split between edge devices and the cloud, with early exits on the edge.
///
/// The operator renders it into a runtime ConfigMap, an edge DaemonSet, a cloud Deployment with
/// Service, HorizontalPodAutoscaler and PodDisruptionBudget, and optionally a managed Redis.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[cfg_attr(test, kube(cel))]
#[kube(
    group = "collm.dev",
    version = "v1alpha1",
    kind = "CollabModel",
    namespaced,
    status = "CollabModelStatus",
    shortname = "collab",
    shortname = "cmodel",
    category = "collm",
    derive = "PartialEq",
    doc = "A language model split between edge devices and an autoscaled cloud, with early exits on the edge.",
    printcolumn = r#"{"name":"Mode","type":"string","jsonPath":".spec.mode"}"#,
    printcolumn = r#"{"name":"Threshold","type":"number","jsonPath":".spec.threshold"}"#,
    printcolumn = r#"{"name":"Edge Ready","type":"integer","jsonPath":".status.readyEdgeNodes"}"#,
    printcolumn = r#"{"name":"Cloud","type":"integer","jsonPath":".status.cloudReplicas"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[x_kube(
    validation = Rule::new("!has(self.exitLayers) || self.exitLayers.all(l, l >= 1 && l <= self.splitLayer)")
        .message(RULE_EXIT_LAYERS),
    validation = Rule::new("!(has(self.threshold) && has(self.targetAgreement))")
        .message(RULE_THRESHOLD_XOR_AGREEMENT),
    validation = Rule::new("(has(self.mode) && self.mode == 'standalone') || !(has(self.cloud) && has(self.cloud.enabled) && !self.cloud.enabled) || has(self.externalCloudEndpoint)")
        .message(RULE_EDGE_ONLY_ENDPOINT),
    validation = Rule::new("!has(self.externalCloudEndpoint) || (has(self.cloud) && has(self.cloud.enabled) && !self.cloud.enabled)")
        .message(RULE_ENDPOINT_XOR_CLOUD),
    validation = Rule::new("(has(self.cloud) && has(self.cloud.enabled) && !self.cloud.enabled) || (has(self.context) && has(self.context.redis))")
        .message(RULE_CLOUD_NEEDS_REDIS),
    validation = Rule::new("!has(self.externalCloudEndpoint) || (has(self.credentials) && has(self.credentials.edgeTokenSecretRef))")
        .message(RULE_EXTERNAL_NEEDS_TOKEN),
)]
#[serde(rename_all = "camelCase")]
pub struct CollabModelSpec {
    /// Where edge and cloud pods get the model bundle (the directory written by `collm export`).
    pub bundle: BundleSource,

    /// The layer after which the model is cut: layers [0, splitLayer) run on the edge, the rest
    /// in the cloud. Must match the bundle's manifest.
    #[schemars(range(min = 1))]
    pub split_layer: u32,

    /// Depths of the edge's early-exit heads, each in 1..=splitLayer, as recorded in the bundle.
    /// Empty means one exit at splitLayer.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub exit_layers: Vec<u32>,

    /// `collaborative` (the edge answers when confident and asks the cloud otherwise) or
    /// `standalone` (the edge always answers from its exit heads).
    #[serde(default)]
    pub mode: Mode,

    /// Minimum top-token probability at which the edge answers without the cloud, in (0, 1].
    /// 1 sends every uncertain token to the cloud. Leave unset to use the bundle's calibrated value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self > 0.0 && self <= 1.0").message(RULE_THRESHOLD))]
    pub threshold: Option<f64>,

    /// Instead of a threshold: the fraction of tokens that must agree with the full model, in
    /// (0, 1]; the edge picks the threshold from the bundle's calibration curve.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self > 0.0 && self <= 1.0").message(RULE_AGREEMENT))]
    pub target_agreement: Option<f64>,

    /// How long the edge waits for a cloud answer before it answers itself (latency-aware exit).
    /// Unset means wait for the cloud.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub latency_budget_ms: Option<u32>,

    /// Where and how the edge part runs.
    #[serde(default)]
    pub edge: EdgeSpec,

    /// The cloud part: an autoscaled Deployment in this cluster, or disabled for edge-only
    /// deployments that use externalCloudEndpoint.
    #[serde(default)]
    pub cloud: CloudSpec,

    /// How the cloud fills in positions it has not processed: `exact` runs them through the cloud
    /// layers (output equals the full model); `propagate` derives the cloud layers' keys and
    /// values for positions the edge answered from their uploaded hidden state (less cloud
    /// compute, approximate: the bundle needs cloud_kv.onnx, and answers can differ from exact).
    #[serde(default)]
    pub catch_up: CatchUp,

    /// Encoding of hidden states sent from edge to cloud: `f32` (default: the cloud continues
    /// from exactly the edge's hidden states), `f16` (half the bytes; moves some answers away
    /// from the full model's) or `int8` (per-row scale).
    #[serde(default)]
    pub encoding: Encoding,

    /// The cloud context: the per-session hidden states kept in Redis so any cloud replica can
    /// continue any session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<ContextSpec>,

    /// Secrets for edge authentication and TLS between edge and cloud.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<Credentials>,

    /// gRPC endpoint of a cloud running in another cluster: `host:port` (https:// with
    /// credentials.tlsSecretRef, else http://) or a full `http(s)://host:port` URL. Only for
    /// edge-only deployments (cloud.enabled: false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048), regex(pattern = r"^(https?://)?[^\s/]+/?$"))]
    pub external_cloud_endpoint: Option<String>,

    /// Secrets of this namespace for pulling the edge, cloud and Redis images (added to the
    /// operator's own defaults).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub image_pull_secrets: Vec<LocalObjectReference>,

    /// Log level and format of the edge and cloud pods, and the OpenTelemetry collector they
    /// send traces to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observability: Option<ObservabilitySpec>,
}

/// Where the model bundle comes from. Exactly one source.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[x_kube(
    validation = Rule::new("[has(self.url), has(self.pvc), has(self.hostPath), has(self.configMap)].filter(x, x).size() == 1")
        .message(RULE_BUNDLE_ONE_SOURCE),
    validation = Rule::new("!has(self.url) || has(self.sha256)").message(RULE_BUNDLE_SHA),
)]
#[serde(rename_all = "camelCase")]
pub struct BundleSource {
    /// HTTP(S) URL of a bundle archive (`collm bundle pack`); an init container of every edge and
    /// cloud pod downloads it, checks sha256 and the bundle's own checksums, and only then starts
    /// the runtime.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048), regex(pattern = r"^https?://"))]
    pub url: Option<String>,

    /// SHA-256 of the archive at url, as 64 hex digits (`collm bundle pack` prints it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9a-fA-F]{64}$"))]
    pub sha256: Option<String>,

    /// Largest archive, in bytes, pods download from url. Defaults to 8 GiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_bytes: Option<i64>,

    /// A PersistentVolumeClaim holding the bundle directory (mounted read-only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pvc: Option<PvcBundle>,

    /// A directory already present on every node, for pre-provisioned edge devices. Needs a
    /// namespace whose Pod Security level allows hostPath volumes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_path: Option<HostPathBundle>,

    /// A ConfigMap holding the bundle files, for tiny models (ConfigMaps hold at most 1 MiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map: Option<ConfigMapBundle>,
}

/// A bundle on a PersistentVolumeClaim.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PvcBundle {
    /// Name of the PersistentVolumeClaim in the CollabModel's namespace.
    #[schemars(length(min = 1))]
    pub claim_name: String,
    /// Directory of the bundle inside the volume; empty means the volume root.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub path: String,
}

/// A bundle already on the node's filesystem.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HostPathBundle {
    /// Absolute path of the bundle directory on the node.
    #[schemars(regex(pattern = r"^/"))]
    pub path: String,
}

/// A bundle stored in a ConfigMap (one key per file).
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ConfigMapBundle {
    /// Name of the ConfigMap in the CollabModel's namespace.
    #[schemars(length(min = 1))]
    pub name: String,
}

/// Who answers a token.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Standalone,
    #[default]
    Collaborative,
}

/// How the cloud catches up on positions it has not processed.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum CatchUp {
    #[default]
    Exact,
    Propagate,
}

/// Wire encoding of hidden states.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    #[default]
    F32,
    F16,
    Int8,
}

/// How clients reach the edge's OpenAI-compatible API.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum EdgeExposure {
    #[default]
    Service,
    HostPort,
}

/// Placement and resources of the edge DaemonSet.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EdgeSpec {
    /// Labels a node must carry to run the edge part. Defaults to `collm.dev/edge: "true"`.
    #[serde(default = "default_edge_node_selector")]
    pub node_selector: BTreeMap<String, String>,

    /// Tolerations for taints on edge nodes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,

    /// CPU and memory for each edge pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,

    /// Port of the OpenAI-compatible HTTP API in the edge pod.
    #[serde(default = "default_api_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub api_port: i32,

    /// `service` (default): a Service routing to the edge pod on the caller's node
    /// (internalTrafficPolicy Local). `hostPort`: the API port opens on each edge node's own
    /// address; this needs a namespace whose Pod Security level allows host ports.
    #[serde(default)]
    pub exposure: EdgeExposure,

    /// A Secret key holding the API key clients must send (`Authorization: Bearer <key>`) on
    /// every /v1 request of the edge API; /healthz, /readyz and /metrics stay open. Unset: no
    /// key is asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_secret_ref: Option<SecretKeyRef>,
}

impl Default for EdgeSpec {
    fn default() -> Self {
        Self {
            node_selector: default_edge_node_selector(),
            tolerations: Vec::new(),
            resources: None,
            api_port: default_api_port(),
            exposure: EdgeExposure::default(),
            api_key_secret_ref: None,
        }
    }
}

/// The cloud Deployment and its autoscaling.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(
    validation = Rule::new("!has(self.minReplicas) || !has(self.maxReplicas) || self.minReplicas <= self.maxReplicas")
        .message(RULE_REPLICAS),
    validation = Rule::new("!(has(self.targetCpuUtilization) && has(self.customMetric))")
        .message(RULE_ONE_METRIC),
)]
#[serde(rename_all = "camelCase")]
pub struct CloudSpec {
    /// Run the cloud part in this cluster. false makes an edge-only deployment, which needs
    /// externalCloudEndpoint in collaborative mode.
    #[serde(default = "default_true")]
    pub enabled: bool,

    /// Fewest cloud replicas the autoscaler keeps.
    #[serde(default = "default_min_replicas")]
    #[schemars(range(min = 1))]
    pub min_replicas: i32,

    /// Most cloud replicas the autoscaler may run.
    #[serde(default = "default_max_replicas")]
    #[schemars(range(min = 1))]
    pub max_replicas: i32,

    /// Average CPU utilization (percent of requests) the autoscaler aims for. Defaults to 70 when
    /// no customMetric is given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub target_cpu_utilization: Option<i32>,

    /// Scale on a per-pod custom metric instead of CPU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom_metric: Option<CustomMetricTarget>,

    /// CPU and memory for each cloud pod. Set CPU requests for CPU-based autoscaling to work.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,

    /// Labels a node must carry to run cloud pods.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,

    /// Tolerations for cloud pods.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,

    /// Port of the cloud's gRPC service (not 8081, where the worker serves health and metrics).
    #[serde(default = "default_grpc_port")]
    #[schemars(range(min = 1, max = 65535))]
    #[x_kube(validation = Rule::new("self != 8081").message(RULE_GRPC_PORT))]
    pub grpc_port: i32,
}

impl Default for CloudSpec {
    fn default() -> Self {
        Self {
            enabled: true,
            min_replicas: default_min_replicas(),
            max_replicas: default_max_replicas(),
            target_cpu_utilization: None,
            custom_metric: None,
            resources: None,
            node_selector: BTreeMap::new(),
            tolerations: Vec::new(),
            grpc_port: default_grpc_port(),
        }
    }
}

/// A per-pod metric (served by a custom metrics adapter) and its target average.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CustomMetricTarget {
    /// Metric name as the custom metrics adapter serves it, e.g. `collm_cloud_rpc_in_flight`
    /// (gRPC calls each cloud worker is serving; the worker's /metrics lists them all).
    #[schemars(length(min = 1))]
    pub name: String,
    /// Target average value per pod, as a Kubernetes quantity (e.g. `4` or `500m`).
    #[schemars(length(min = 1))]
    pub average_value: String,
}

/// Cloud context storage, lifetime and quotas.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ContextSpec {
    /// The Redis holding the cloud context.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis: Option<RedisSpec>,

    /// Seconds a session's context lives after its last use.
    #[serde(default = "default_ttl_seconds")]
    #[schemars(range(min = 1))]
    pub ttl_seconds: u32,

    /// Most positions (tokens) one session may store.
    #[serde(default = "default_max_positions")]
    #[schemars(range(min = 1))]
    pub max_positions_per_session: u32,

    /// Most concurrent sessions one edge client may hold.
    #[serde(default = "default_max_sessions")]
    #[schemars(range(min = 1))]
    pub max_sessions_per_client: u32,
}

/// The Redis connection: a URL, a Secret holding the URL, or a Redis the operator runs.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[x_kube(
    validation = Rule::new("[has(self.url), has(self.secretRef), has(self.managed) && self.managed].filter(x, x).size() == 1")
        .message(RULE_REDIS_ONE_SOURCE),
)]
#[serde(rename_all = "camelCase")]
pub struct RedisSpec {
    /// Redis URL, e.g. `redis://redis.infra:6379/0`. Use secretRef when it carries a password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^rediss?://"))]
    pub url: Option<String>,

    /// A key of a Secret in this namespace holding the Redis URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretKeyRef>,

    /// true: the operator runs a single-replica Redis for this model (no persistence: edges
    /// re-upload what the cloud reports missing), with a generated password, a NetworkPolicy
    /// admitting only the model's cloud pods and the operator, and a memory bound.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managed: Option<bool>,

    /// Memory of the managed Redis in MiB: its maxmemory (least recently used keys go first when
    /// full; edges re-upload what is missing) plus headroom for the container's limit. Defaults
    /// to 256.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 16, max = 1048576))]
    pub max_memory_mib: Option<u32>,
}

/// One key of a Secret in the CollabModel's namespace.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Secret name.
    #[schemars(length(min = 1))]
    pub name: String,
    /// Key within the Secret.
    #[schemars(length(min = 1))]
    pub key: String,
}

/// A whole Secret in the CollabModel's namespace.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SecretRef {
    /// Secret name.
    #[schemars(length(min = 1))]
    pub name: String,
}

/// Edge authentication and transport security. With none of it set, a model with a cloud needs
/// no Secret: every edge pod presents its own ServiceAccount token (kubelet-issued, bound to the
/// pod and its node, rotated), which the cloud checks with the TokenReview API and maps to one
/// client per edge node, so quotas and revocation are per device.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[x_kube(
    validation = Rule::new("(!has(self.clientCaSecretRef) && !has(self.edgeCertSecretRef)) || has(self.tlsSecretRef)")
        .message(RULE_MUTUAL_TLS_NEEDS_TLS),
)]
#[serde(rename_all = "camelCase")]
pub struct Credentials {
    /// A bearer token Secret instead of ServiceAccount tokens: needed for a cloud in another
    /// cluster. Edge pods send it; cloud pods accept it (one bare token is one client, `edge`, for
    /// every edge; a tokens file of `client-id token` lines gives each edge its own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edge_token_secret_ref: Option<SecretKeyRef>,

    /// A `kubernetes.io/tls` Secret (tls.crt, tls.key, ca.crt): the cloud serves with it (its
    /// certificate must name `<name>-cloud.<namespace>.svc`, or the external endpoint's host);
    /// edge pods receive only its ca.crt, never the key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_secret_ref: Option<SecretRef>,

    /// Mutual TLS: a Secret whose ca.crt signs the edges' client certificates; the cloud refuses
    /// connections without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ca_secret_ref: Option<SecretRef>,

    /// Mutual TLS: a `kubernetes.io/tls` Secret with the client certificate and key edge pods
    /// present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edge_cert_secret_ref: Option<SecretRef>,

    /// Edge nodes the cloud refuses, whatever token they present: revokes one device without
    /// touching the others (ServiceAccount identities are per node).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub revoked_edge_nodes: Vec<String>,
}

/// Observed state, written by the operator.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CollabModelStatus {
    /// Ready, EdgeReady, CloudReady, ContextReady and Degraded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,

    /// The metadata.generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Edge pods that are ready (one per edge node).
    #[serde(default)]
    pub ready_edge_nodes: i32,

    /// Cloud replicas that are available.
    #[serde(default)]
    pub cloud_replicas: i32,

    /// The gRPC endpoint edges use: the in-cluster cloud Service or externalCloudEndpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloud_endpoint: Option<String>,
}

fn default_edge_node_selector() -> BTreeMap<String, String> {
    BTreeMap::from([(format!("{GROUP}/edge"), "true".to_string())])
}
fn default_api_port() -> i32 {
    8080
}
fn default_grpc_port() -> i32 {
    50051
}
fn default_true() -> bool {
    true
}
fn default_min_replicas() -> i32 {
    1
}
fn default_max_replicas() -> i32 {
    4
}
fn default_ttl_seconds() -> u32 {
    3600
}
fn default_max_positions() -> u32 {
    8192
}
fn default_max_sessions() -> u32 {
    64
}

#[cfg(test)]
mod tests;
