//! The cloud worker Deployment with its Service, HorizontalPodAutoscaler (autoscaling/v2) and
//! PodDisruptionBudget.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::autoscaling::v2::{
    CrossVersionObjectReference, HorizontalPodAutoscaler, HorizontalPodAutoscalerSpec,
    MetricIdentifier, MetricSpec, MetricTarget, PodsMetricSource, ResourceMetricSource,
};
use k8s_openapi::api::core::v1::{
    ContainerPort, EnvVar, EnvVarSource, HTTPGetAction, PodSpec, PodTemplateSpec, Probe,
    ResourceRequirements, SecretKeySelector, Service, ServicePort, ServiceSpec,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::config::{CLOUD_CONFIG_KEY, CONFIG_DIR, CONFIG_HASH_ANNOTATION, REDIS_URL_ENV};
use super::identity::{self, EdgeAuth};
use super::pod::{
    RUNTIME_UID, Side, fetch_container, pull_secrets, restricted_pod_security, runtime_container,
    runtime_env, runtime_volumes, scrape_annotations,
};
use super::redis::{SECRET_HASH_ANNOTATION, URL_KEY, password_secret_name};
use super::{Bundle, CloudChildren, Component, ModelRef, Redis, Settings};
use crate::crd::CollabModelSpec;

/// The worker's HTTP port for health and metrics (gRPC has its own, `cloud.grpcPort`).
pub use crate::crd::CLOUD_HTTP_PORT;

/// CPU utilization the autoscaler aims for when the spec names no target.
pub const DEFAULT_CPU_UTILIZATION: i32 = 70;
/// CPU a cloud pod requests when the spec names none: CPU-utilization autoscaling is a
/// percentage of the request, so without one the autoscaler cannot act.
pub const DEFAULT_CPU_REQUEST: &str = "500m";
pub const DEFAULT_MEMORY_REQUEST: &str = "512Mi";

/// What a cloud pod is rendered from besides the spec.
pub struct CloudPod<'a> {
    pub bundle: &'a Bundle,
    pub redis: Option<&'a Redis>,
    pub auth: &'a EdgeAuth,
    pub settings: &'a Settings,
    pub config_hash: &'a str,
    /// Hash of the managed Redis's password (the worker reads it from the Secret).
    pub secret_hash: Option<&'a str>,
}

pub fn children(spec: &CollabModelSpec, at: &ModelRef, pod: &CloudPod<'_>) -> CloudChildren {
    let reviews = matches!(pod.auth, EdgeAuth::ServiceAccountToken { .. });
    CloudChildren {
        deployment: deployment(spec, at, pod),
        service: service(spec, at),
        pods_service: pods_service(spec, at),
        autoscaler: autoscaler(spec, at),
        disruption_budget: disruption_budget(at),
        service_account: identity::service_account(at, Component::Cloud),
        token_review_binding: reviews
            .then(|| identity::token_review_binding(at, at.uid(), &pod.settings.cluster_roles)),
    }
}

/// The spec's resources, with a CPU and memory request added where it names none.
pub fn resources(spec: Option<&ResourceRequirements>) -> ResourceRequirements {
    let mut resources = spec.cloned().unwrap_or_default();
    let requests = resources.requests.get_or_insert_with(BTreeMap::new);
    requests.entry("cpu".to_string()).or_insert_with(|| Quantity(DEFAULT_CPU_REQUEST.to_string()));
    if spec.is_none() {
        requests.insert("memory".to_string(), Quantity(DEFAULT_MEMORY_REQUEST.to_string()));
    }
    resources
}

fn deployment(spec: &CollabModelSpec, at: &ModelRef, pod: &CloudPod<'_>) -> Deployment {
    let cloud = &spec.cloud;
    let images = &pod.settings.images;
    let volumes = runtime_volumes(spec, at, pod.bundle, pod.auth, Side::Cloud, CLOUD_CONFIG_KEY);
    let reviews = matches!(pod.auth, EdgeAuth::ServiceAccountToken { .. });

    let mut container = runtime_container("cloud-worker", &images.cloud_worker, images);
    container.args = Some(vec!["--config".to_string(), format!("{CONFIG_DIR}/{CLOUD_CONFIG_KEY}")]);
    container.ports = Some(vec![
        ContainerPort {
            name: Some("grpc".to_string()),
            container_port: cloud.grpc_port,
            protocol: Some("TCP".to_string()),
            ..ContainerPort::default()
        },
        ContainerPort {
            name: Some("http".to_string()),
            container_port: CLOUD_HTTP_PORT,
            protocol: Some("TCP".to_string()),
            ..ContainerPort::default()
        },
    ]);
    let mut env = runtime_env();
    env.extend(super::observability::env(spec, Side::Cloud));
    let redis_secret = match pod.redis {
        Some(Redis::Secret(secret)) => Some((secret.name.clone(), secret.key.clone())),
        Some(Redis::Managed) => Some((password_secret_name(at), URL_KEY.to_string())),
        _ => None,
    };
    if let Some((name, key)) = redis_secret {
        env.push(EnvVar {
            name: REDIS_URL_ENV.to_string(),
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector { name, key, optional: Some(false) }),
                ..EnvVarSource::default()
            }),
            value: None,
        });
    }
    container.env = Some(env);
    // Probed over plain HTTP: a kubelet cannot speak gRPC health to a TLS-only server. The
    // worker loads its model before it listens, so the startup probe allows for that; after it,
    // liveness follows /healthz and readiness /readyz (the context store, draining on SIGTERM).
    let http_probe = |path: &str, period: i32, failures: i32| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_string()),
            port: IntOrString::String("http".to_string()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        ..Probe::default()
    };
    container.startup_probe = Some(http_probe("/healthz", 5, 60));
    container.liveness_probe = Some(http_probe("/healthz", 10, 3));
    container.readiness_probe = Some(http_probe("/readyz", 5, 1));
    container.resources = Some(resources(cloud.resources.as_ref()));
    container.volume_mounts = Some(volumes.mounts);
    let init_containers = volumes.fetch_mounts.map(|mounts| {
        vec![fetch_container(&images.cloud_worker, images, CLOUD_CONFIG_KEY, mounts, &container)]
    });
    let mut annotations = scrape_annotations(CLOUD_HTTP_PORT);
    annotations.insert(CONFIG_HASH_ANNOTATION.to_string(), pod.config_hash.to_string());
    if let Some(hash) = pod.secret_hash {
        annotations.insert(SECRET_HASH_ANNOTATION.to_string(), hash.to_string());
    }

    Deployment {
        metadata: at.child_meta(Component::Cloud),
        spec: Some(DeploymentSpec {
            // No replicas: the HorizontalPodAutoscaler owns that field; setting it here would make
            // every apply fight the autoscaler.
            replicas: None,
            selector: LabelSelector {
                match_labels: Some(at.selector_labels(Component::Cloud)),
                match_expressions: None,
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(at.labels(Component::Cloud)),
                    annotations: Some(annotations),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    init_containers,
                    containers: vec![container],
                    node_selector: (!cloud.node_selector.is_empty())
                        .then(|| cloud.node_selector.clone()),
                    tolerations: (!cloud.tolerations.is_empty()).then(|| cloud.tolerations.clone()),
                    security_context: Some(restricted_pod_security(RUNTIME_UID)),
                    service_account_name: Some(at.child_name(Component::Cloud)),
                    // An API token only to review edge tokens.
                    automount_service_account_token: Some(reviews),
                    enable_service_links: Some(false),
                    image_pull_secrets: pull_secrets(spec, pod.settings),
                    // Long enough for calls in flight to finish after SIGTERM (the worker's
                    // drain timeout is 30 s): edges move their sessions meanwhile.
                    termination_grace_period_seconds: Some(40),
                    volumes: Some(volumes.volumes),
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        }),
        status: None,
    }
}

fn grpc_port(spec: &CollabModelSpec) -> ServicePort {
    ServicePort {
        name: Some("grpc".to_string()),
        app_protocol: Some("kubernetes.io/h2c".to_string()),
        port: spec.cloud.grpc_port,
        target_port: Some(IntOrString::String("grpc".to_string())),
        protocol: Some("TCP".to_string()),
        ..ServicePort::default()
    }
}

/// The cloud's stable address (what TLS certificates name, and what clients outside the model
/// use), with the workers' metrics port for scraping.
fn service(spec: &CollabModelSpec, at: &ModelRef) -> Service {
    Service {
        metadata: at.child_meta(Component::Cloud),
        spec: Some(ServiceSpec {
            selector: Some(at.selector_labels(Component::Cloud)),
            ports: Some(vec![
                grpc_port(spec),
                ServicePort {
                    name: Some("metrics".to_string()),
                    port: CLOUD_HTTP_PORT,
                    target_port: Some(IntOrString::String("http".to_string())),
                    protocol: Some("TCP".to_string()),
                    ..ServicePort::default()
                },
            ]),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

/// Headless: DNS answers with one address per ready cloud pod. Edges resolve it to spread their
/// sessions over the replicas (kube-proxy balances per connection, and an edge keeps one
/// long-lived HTTP/2 connection, so the ClusterIP alone would pin every edge to one replica).
/// A pod turns unready on SIGTERM, leaves the records, and edges move its sessions.
fn pods_service(spec: &CollabModelSpec, at: &ModelRef) -> Service {
    let mut meta = at.child_meta(Component::Cloud);
    meta.name = Some(at.cloud_pods_service_name());
    Service {
        metadata: meta,
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".to_string()),
            selector: Some(at.selector_labels(Component::Cloud)),
            publish_not_ready_addresses: Some(false),
            ports: Some(vec![grpc_port(spec)]),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

fn autoscaler(spec: &CollabModelSpec, at: &ModelRef) -> HorizontalPodAutoscaler {
    let cloud = &spec.cloud;
    let metric = match &cloud.custom_metric {
        Some(custom) => MetricSpec {
            type_: "Pods".to_string(),
            pods: Some(PodsMetricSource {
                metric: MetricIdentifier { name: custom.name.clone(), selector: None },
                target: MetricTarget {
                    type_: "AverageValue".to_string(),
                    average_value: Some(Quantity(custom.average_value.clone())),
                    ..MetricTarget::default()
                },
            }),
            ..MetricSpec::default()
        },
        None => MetricSpec {
            type_: "Resource".to_string(),
            resource: Some(ResourceMetricSource {
                name: "cpu".to_string(),
                target: MetricTarget {
                    type_: "Utilization".to_string(),
                    average_utilization: Some(
                        cloud.target_cpu_utilization.unwrap_or(DEFAULT_CPU_UTILIZATION),
                    ),
                    ..MetricTarget::default()
                },
            }),
            ..MetricSpec::default()
        },
    };
    HorizontalPodAutoscaler {
        metadata: at.child_meta(Component::Cloud),
        spec: Some(HorizontalPodAutoscalerSpec {
            scale_target_ref: CrossVersionObjectReference {
                api_version: Some("apps/v1".to_string()),
                kind: "Deployment".to_string(),
                name: at.child_name(Component::Cloud),
            },
            min_replicas: Some(cloud.min_replicas),
            max_replicas: cloud.max_replicas,
            metrics: Some(vec![metric]),
            behavior: None,
        }),
        status: None,
    }
}

/// At most one cloud pod down at a time from voluntary disruptions. `maxUnavailable` rather than
/// `minAvailable`, so a single-replica cloud can still be drained.
fn disruption_budget(at: &ModelRef) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: at.child_meta(Component::Cloud),
        spec: Some(PodDisruptionBudgetSpec {
            selector: Some(LabelSelector {
                match_labels: Some(at.selector_labels(Component::Cloud)),
                match_expressions: None,
            }),
            max_unavailable: Some(IntOrString::Int(1)),
            ..PodDisruptionBudgetSpec::default()
        }),
        status: None,
    }
}
