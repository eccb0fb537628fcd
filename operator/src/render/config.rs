//! The runtime configuration ConfigMap: `edge.json` for edge agents and `cloud.json` for cloud
//! workers. Each half is hashed separately so a pod template carries only the hash of the half
//! it reads: an edge-only change never restarts the cloud, and the reverse.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::endpoint::CloudEndpoint;
use super::identity::{EdgeAuth, edge_user, node_client};
use super::{Bundle, Component, ModelRef, Redis};
use crate::crd::{CatchUp, CollabModelSpec, Encoding, Mode};
use crate::error::{Error, Result};

/// Pod-template annotation holding the hash of the config half the pod reads.
pub const CONFIG_HASH_ANNOTATION: &str = "collm.dev/config-hash";
/// Version of the JSON layout below; bump on incompatible changes.
pub const CONFIG_FORMAT: u32 = 1;

/// ConfigMap keys, also the file names under [`CONFIG_DIR`].
pub const EDGE_CONFIG_KEY: &str = "edge.json";
pub const CLOUD_CONFIG_KEY: &str = "cloud.json";

/// Where pods see things; the Dockerfiles and runtimes use the same paths.
pub const CONFIG_DIR: &str = "/etc/collm";
/// A mounted bundle (PersistentVolumeClaim, hostPath, ConfigMap).
pub const BUNDLE_DIR: &str = "/var/lib/collm/bundle";
/// The volume a downloaded bundle is fetched into (the init container writes it, the runtime
/// reads it), and the bundle directory inside it, which appears only once verified.
pub const FETCH_DIR: &str = "/var/lib/collm/fetched";
pub const FETCHED_BUNDLE_DIR: &str = "/var/lib/collm/fetched/bundle";
pub const EDGE_TOKEN_DIR: &str = "/var/run/secrets/collm/edge-token";
/// The cloud's certificate and key (cloud pods) or only its CA (edge pods).
pub const TLS_DIR: &str = "/var/run/secrets/collm/tls";
/// The edge's client certificate (mutual TLS).
pub const EDGE_CERT_DIR: &str = "/var/run/secrets/collm/edge-cert";
/// The CA of edge client certificates (mutual TLS).
pub const CLIENT_CA_DIR: &str = "/var/run/secrets/collm/client-ca";
/// File name of the edge token inside [`EDGE_TOKEN_DIR`].
pub const EDGE_TOKEN_FILE: &str = "token";
/// Environment variable carrying a Redis URL taken from a Secret.
pub const REDIS_URL_ENV: &str = "COLLM_REDIS_URL";
/// Port of the managed Redis.
pub const REDIS_PORT: i32 = 6379;

/// Where the bundle is and, for URL sources, what to download and verify.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BundleConfig {
    pub dir: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub download: Option<BundleDownload>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BundleDownload {
    pub url: String,
    pub sha256: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<u64>,
}

/// What an edge agent reads from `edge.json`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EdgeRuntimeConfig {
    pub format: u32,
    pub model: String,
    pub bundle: BundleConfig,
    pub split_layer: u32,
    pub exit_layers: Vec<u32>,
    pub mode: Mode,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub threshold: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_agreement: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_budget_ms: Option<u32>,
    pub encoding: Encoding,
    pub api_port: i32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cloud_endpoint: Option<String>,
    /// DNS name listing the cloud replicas (in-cluster clouds): sessions spread over them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cloud_discovery: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub edge_token_file: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_ca_file: Option<String>,
    /// The edge's client certificate and key (mutual TLS).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert_file: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key_file: Option<String>,
}

/// How a cloud worker checks edges' ServiceAccount tokens.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TokenReviewConfig {
    /// The audience edge tokens are issued for.
    pub audience: String,
    /// Kubernetes users (ServiceAccounts) whose tokens are accepted.
    pub users: Vec<String>,
}

/// The cloud context settings a worker reads.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ContextConfig {
    /// Set for a literal URL or the managed Redis.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis_url: Option<String>,
    /// Set when the URL comes from a Secret, injected as this environment variable.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis_url_env: Option<String>,
    /// Every key of this model starts with it; the finalizer deletes by this prefix.
    pub key_prefix: String,
    pub ttl_seconds: u32,
    pub max_positions_per_session: u32,
    pub max_sessions_per_client: u32,
}

/// What a cloud worker reads from `cloud.json`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CloudRuntimeConfig {
    pub format: u32,
    pub model: String,
    pub bundle: BundleConfig,
    pub split_layer: u32,
    pub grpc_port: i32,
    /// `/healthz`, `/readyz` and `/metrics` over plain HTTP: what the kubelet probes (it cannot
    /// probe gRPC health over TLS) and Prometheus scrapes.
    pub http_port: i32,
    pub catch_up: CatchUp,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub context: Option<ContextConfig>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub edge_token_file: Option<String>,
    /// Edges authenticate with ServiceAccount tokens, checked through the TokenReview API.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_review: Option<TokenReviewConfig>,
    /// Clients refused whatever token they present.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub revoked_clients: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert_file: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key_file: Option<String>,
    /// CA of the client certificates to require (mutual TLS).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_client_ca_file: Option<String>,
}

/// Both halves of the runtime configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct RuntimeConfig {
    pub edge: EdgeRuntimeConfig,
    pub cloud: CloudRuntimeConfig,
}

/// Prefix of every Redis key holding this model's cloud context.
pub fn context_key_prefix(at: &ModelRef) -> String {
    format!("collm:{}:{}:", at.namespace, at.name)
}

impl RuntimeConfig {
    pub fn new(
        spec: &CollabModelSpec,
        at: &ModelRef,
        bundle: &Bundle,
        redis: Option<&Redis>,
        endpoint: Option<&CloudEndpoint>,
        auth: &EdgeAuth,
    ) -> Self {
        let bundle_config = match bundle {
            Bundle::Url { url, sha256, max_bytes } => BundleConfig {
                dir: FETCHED_BUNDLE_DIR.to_string(),
                download: Some(BundleDownload {
                    url: url.clone(),
                    sha256: sha256.to_lowercase(),
                    max_bytes: *max_bytes,
                }),
            },
            _ => BundleConfig { dir: BUNDLE_DIR.to_string(), download: None },
        };
        let creds = spec.credentials.clone().unwrap_or_default();
        let token_file =
            (*auth != EdgeAuth::Nothing).then(|| format!("{EDGE_TOKEN_DIR}/{EDGE_TOKEN_FILE}"));
        let file = |set: bool, dir: &str, name: &str| set.then(|| format!("{dir}/{name}"));
        let tls = creds.tls_secret_ref.is_some();
        let edge_cert = creds.edge_cert_secret_ref.is_some();

        let edge = EdgeRuntimeConfig {
            format: CONFIG_FORMAT,
            model: at.name.clone(),
            bundle: bundle_config.clone(),
            split_layer: spec.split_layer,
            exit_layers: spec.exit_layers.clone(),
            mode: spec.mode,
            threshold: spec.threshold,
            target_agreement: spec.target_agreement,
            latency_budget_ms: spec.latency_budget_ms,
            encoding: spec.encoding,
            api_port: spec.edge.api_port,
            cloud_endpoint: endpoint.map(|e| e.url.clone()),
            cloud_discovery: endpoint.and_then(|e| e.discovery.clone()),
            edge_token_file: token_file.clone(),
            tls_ca_file: file(tls, TLS_DIR, "ca.crt"),
            tls_cert_file: file(edge_cert, EDGE_CERT_DIR, "tls.crt"),
            tls_key_file: file(edge_cert, EDGE_CERT_DIR, "tls.key"),
        };

        let context = spec.context.as_ref().map(|ctx| {
            let (redis_url, redis_url_env) = match redis {
                Some(Redis::Url(url)) => (Some(url.clone()), None),
                // A Secret's URL, the managed Redis's included (it carries the password).
                Some(Redis::Secret(_)) | Some(Redis::Managed) => {
                    (None, Some(REDIS_URL_ENV.to_string()))
                }
                None => (None, None),
            };
            ContextConfig {
                redis_url,
                redis_url_env,
                key_prefix: context_key_prefix(at),
                ttl_seconds: ctx.ttl_seconds,
                max_positions_per_session: ctx.max_positions_per_session,
                max_sessions_per_client: ctx.max_sessions_per_client,
            }
        });
        let (edge_token_file, token_review) = match auth {
            EdgeAuth::Secret(_) => (token_file, None),
            EdgeAuth::ServiceAccountToken { audience } => (
                None,
                Some(TokenReviewConfig { audience: audience.clone(), users: vec![edge_user(at)] }),
            ),
            EdgeAuth::Nothing => (None, None),
        };
        let mut revoked_clients: Vec<String> =
            creds.revoked_edge_nodes.iter().map(|n| node_client(n)).collect();
        revoked_clients.sort();
        revoked_clients.dedup();
        let cloud = CloudRuntimeConfig {
            format: CONFIG_FORMAT,
            model: at.name.clone(),
            bundle: bundle_config,
            split_layer: spec.split_layer,
            grpc_port: spec.cloud.grpc_port,
            http_port: super::cloud::CLOUD_HTTP_PORT,
            catch_up: spec.catch_up,
            context,
            edge_token_file,
            token_review,
            revoked_clients,
            tls_cert_file: file(tls, TLS_DIR, "tls.crt"),
            tls_key_file: file(tls, TLS_DIR, "tls.key"),
            tls_client_ca_file: file(creds.client_ca_secret_ref.is_some(), CLIENT_CA_DIR, "ca.crt"),
        };
        Self { edge, cloud }
    }

    pub fn edge_json(&self) -> Result<String> {
        to_json(&self.edge, "edge runtime config")
    }

    pub fn cloud_json(&self) -> Result<String> {
        to_json(&self.cloud, "cloud runtime config")
    }

    /// Hash of `edge.json`: changes exactly when what edge agents read changes.
    pub fn edge_hash(&self) -> Result<String> {
        Ok(content_hash(&self.edge_json()?))
    }

    /// Hash of `cloud.json`: changes exactly when what cloud workers read changes.
    pub fn cloud_hash(&self) -> Result<String> {
        Ok(content_hash(&self.cloud_json()?))
    }
}

fn to_json<T: Serialize>(value: &T, what: &'static str) -> Result<String> {
    serde_json::to_string_pretty(value).map_err(|source| Error::Json { what, source })
}

/// Hex SHA-256 of a config file's text, truncated: long enough to never collide in practice,
/// short enough to read in `kubectl describe`.
pub fn content_hash(text: &str) -> String {
    let digest = Sha256::digest(text.as_bytes());
    hex::encode(&digest[..16])
}

/// The ConfigMap holding both halves.
pub fn config_map(runtime: &RuntimeConfig, at: &ModelRef) -> Result<ConfigMap> {
    Ok(ConfigMap {
        metadata: at.child_meta(Component::Config),
        data: Some(BTreeMap::from([
            (EDGE_CONFIG_KEY.to_string(), runtime.edge_json()?),
            (CLOUD_CONFIG_KEY.to_string(), runtime.cloud_json()?),
        ])),
        ..ConfigMap::default()
    })
}
