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
    SecretKeySelector, Service, ServicePort, ServiceSpec,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::config::{CLOUD_CONFIG_KEY, CONFIG_DIR, CONFIG_HASH_ANNOTATION, REDIS_URL_ENV};
use super::pod::{RUNTIME_UID, restricted_pod_security, runtime_container, runtime_volumes};
use super::{Bundle, CloudChildren, Component, Images, ModelRef, Redis};
use crate::crd::CollabModelSpec;

/// The worker's HTTP port for health and metrics (gRPC has its own, `cloud.grpcPort`).
pub use crate::crd::CLOUD_HTTP_PORT;

/// CPU utilization the autoscaler aims for when the spec names no target.
pub const DEFAULT_CPU_UTILIZATION: i32 = 70;

pub fn children(
    spec: &CollabModelSpec,
    at: &ModelRef,
    bundle: &Bundle,
    redis: Option<&Redis>,
    images: &Images,
    cloud_config_hash: &str,
) -> CloudChildren {
    CloudChildren {
        deployment: deployment(spec, at, bundle, redis, images, cloud_config_hash),
        service: service(spec, at),
        autoscaler: autoscaler(spec, at),
        disruption_budget: disruption_budget(at),
    }
}

fn deployment(
    spec: &CollabModelSpec,
    at: &ModelRef,
    bundle: &Bundle,
    redis: Option<&Redis>,
    images: &Images,
    cloud_config_hash: &str,
) -> Deployment {
    let cloud = &spec.cloud;
    let volumes = runtime_volumes(spec, at, bundle, CLOUD_CONFIG_KEY);

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
    if let Some(Redis::Secret(secret)) = redis {
        container.env = Some(vec![EnvVar {
            name: REDIS_URL_ENV.to_string(),
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: secret.name.clone(),
                    key: secret.key.clone(),
                    optional: Some(false),
                }),
                ..EnvVarSource::default()
            }),
            value: None,
        }]);
    }
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
    container.resources = cloud.resources.clone();
    container.volume_mounts = Some(volumes.mounts);

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
                    annotations: Some(BTreeMap::from([(
                        CONFIG_HASH_ANNOTATION.to_string(),
                        cloud_config_hash.to_string(),
                    )])),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![container],
                    node_selector: (!cloud.node_selector.is_empty())
                        .then(|| cloud.node_selector.clone()),
                    tolerations: (!cloud.tolerations.is_empty()).then(|| cloud.tolerations.clone()),
                    security_context: Some(restricted_pod_security(RUNTIME_UID)),
                    automount_service_account_token: Some(false),
                    enable_service_links: Some(false),
                    volumes: Some(volumes.volumes),
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        }),
        status: None,
    }
}

fn service(spec: &CollabModelSpec, at: &ModelRef) -> Service {
    Service {
        metadata: at.child_meta(Component::Cloud),
        spec: Some(ServiceSpec {
            selector: Some(at.selector_labels(Component::Cloud)),
            ports: Some(vec![ServicePort {
                name: Some("grpc".to_string()),
                app_protocol: Some("kubernetes.io/h2c".to_string()),
                port: spec.cloud.grpc_port,
                target_port: Some(IntOrString::String("grpc".to_string())),
                protocol: Some("TCP".to_string()),
                ..ServicePort::default()
            }]),
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
