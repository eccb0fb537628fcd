//! The edge DaemonSet (one edge agent per edge node) and, optionally, its Service.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{DaemonSet, DaemonSetSpec};
use k8s_openapi::api::core::v1::{
    ContainerPort, EnvVar, EnvVarSource, HTTPGetAction, PodSpec, PodTemplateSpec, Probe,
    ResourceRequirements, SecretKeySelector, Service, ServicePort, ServiceSpec,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::config::{CONFIG_DIR, CONFIG_HASH_ANNOTATION, EDGE_CONFIG_KEY};
use super::identity::EdgeAuth;
use super::pod::{
    RUNTIME_UID, Side, fetch_container, field_env, pull_secrets, restricted_pod_security,
    runtime_container, runtime_env, runtime_volumes, scrape_annotations,
};
use super::{Bundle, Component, ModelRef, Settings};
use crate::crd::{CollabModelSpec, EdgeExposure, SecretKeyRef};

/// Readiness endpoint of the edge agent's HTTP API: the agent serves (standalone if it must)
/// whether or not the cloud answers; its cloud link is reported as a pod condition instead.
pub const EDGE_READY_PATH: &str = "/healthz";

/// The pod condition an edge agent sets on its own pod: whether it reaches its cloud.
pub const CLOUD_LINK_CONDITION: &str = "collm.dev/CloudLink";

/// What an edge pod asks for when the spec says nothing: enough for the scheduler to place it
/// sensibly on a small device.
pub fn default_resources() -> ResourceRequirements {
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_string(), Quantity("250m".to_string())),
            ("memory".to_string(), Quantity("256Mi".to_string())),
        ])),
        ..ResourceRequirements::default()
    }
}

pub fn daemon_set(
    spec: &CollabModelSpec,
    at: &ModelRef,
    bundle: &Bundle,
    auth: &EdgeAuth,
    settings: &Settings,
    edge_config_hash: &str,
) -> DaemonSet {
    let edge = &spec.edge;
    let images = &settings.images;
    let volumes = runtime_volumes(spec, at, bundle, auth, Side::Edge, EDGE_CONFIG_KEY);
    let host_port = (edge.exposure == EdgeExposure::HostPort).then_some(edge.api_port);

    let mut container = runtime_container("edge-agent", &images.edge_agent, images);
    container.args = Some(vec!["--config".to_string(), format!("{CONFIG_DIR}/{EDGE_CONFIG_KEY}")]);
    container.ports = Some(vec![ContainerPort {
        name: Some("http".to_string()),
        container_port: edge.api_port,
        host_port,
        protocol: Some("TCP".to_string()),
        ..ContainerPort::default()
    }]);
    // The node name identifies the edge in logs and metrics; the pod's name and namespace let
    // the agent report its cloud link on its own pod.
    let mut env = vec![field_env("COLLM_NODE_NAME", "spec.nodeName")];
    env.extend(runtime_env());
    env.extend(super::observability::env(spec, Side::Edge));
    env.extend(edge.api_key_secret_ref.as_ref().map(api_key_env));
    container.env = Some(env);
    container.readiness_probe = Some(Probe {
        http_get: Some(HTTPGetAction {
            path: Some(EDGE_READY_PATH.to_string()),
            port: IntOrString::String("http".to_string()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(5),
        ..Probe::default()
    });
    container.resources = Some(edge.resources.clone().unwrap_or_else(default_resources));
    container.volume_mounts = Some(volumes.mounts);
    let init_containers = volumes.fetch_mounts.map(|mounts| {
        vec![fetch_container(&images.edge_agent, images, EDGE_CONFIG_KEY, mounts, &container)]
    });

    let mut annotations = scrape_annotations(edge.api_port);
    annotations.insert(CONFIG_HASH_ANNOTATION.to_string(), edge_config_hash.to_string());
    DaemonSet {
        metadata: at.child_meta(Component::Edge),
        spec: Some(DaemonSetSpec {
            selector: LabelSelector {
                match_labels: Some(at.selector_labels(Component::Edge)),
                match_expressions: None,
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(at.labels(Component::Edge)),
                    annotations: Some(annotations),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    init_containers,
                    containers: vec![container],
                    node_selector: Some(edge.node_selector.clone()),
                    tolerations: (!edge.tolerations.is_empty()).then(|| edge.tolerations.clone()),
                    security_context: Some(restricted_pod_security(RUNTIME_UID)),
                    service_account_name: Some(at.child_name(Component::Edge)),
                    // The API token lets the agent patch its own pod's status (the cloud link
                    // condition); the cloud token is the projected one with its own audience.
                    automount_service_account_token: Some(true),
                    enable_service_links: Some(false),
                    image_pull_secrets: pull_secrets(spec, settings),
                    volumes: Some(volumes.volumes),
                    ..PodSpec::default()
                }),
            },
            ..DaemonSetSpec::default()
        }),
        status: None,
    }
}

/// The edge API's key, from the Secret the spec names, as the agent's `COLLM_API_KEY` (an
/// environment variable, not an argument: arguments are visible to every process on the node).
fn api_key_env(secret: &SecretKeyRef) -> EnvVar {
    EnvVar {
        name: API_KEY_ENV.to_string(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret.name.clone(),
                key: secret.key.clone(),
                optional: Some(false),
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

/// The edge agent reads its API key from this variable.
pub const API_KEY_ENV: &str = "COLLM_API_KEY";

/// A Service for the edge API (and its /metrics) that keeps traffic on the caller's node.
pub fn service(spec: &CollabModelSpec, at: &ModelRef) -> Option<Service> {
    (spec.edge.exposure == EdgeExposure::Service).then(|| Service {
        metadata: at.child_meta(Component::Edge),
        spec: Some(ServiceSpec {
            selector: Some(at.selector_labels(Component::Edge)),
            internal_traffic_policy: Some("Local".to_string()),
            ports: Some(vec![ServicePort {
                name: Some("http".to_string()),
                port: spec.edge.api_port,
                target_port: Some(IntOrString::String("http".to_string())),
                protocol: Some("TCP".to_string()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        status: None,
    })
}
