//! The edge DaemonSet (one edge agent per edge node) and, optionally, its Service.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{DaemonSet, DaemonSetSpec};
use k8s_openapi::api::core::v1::{
    ContainerPort, EnvVar, EnvVarSource, HTTPGetAction, ObjectFieldSelector, PodSpec,
    PodTemplateSpec, Probe, Service, ServicePort, ServiceSpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::config::{CONFIG_DIR, CONFIG_HASH_ANNOTATION, EDGE_CONFIG_KEY};
use super::pod::{RUNTIME_UID, restricted_pod_security, runtime_container, runtime_volumes};
use super::{Bundle, Component, Images, ModelRef};
use crate::crd::{CollabModelSpec, EdgeExposure};

/// Readiness endpoint of the edge agent's HTTP API.
pub const EDGE_READY_PATH: &str = "/healthz";

pub fn daemon_set(
    spec: &CollabModelSpec,
    at: &ModelRef,
    bundle: &Bundle,
    images: &Images,
    edge_config_hash: &str,
) -> DaemonSet {
    let edge = &spec.edge;
    let volumes = runtime_volumes(spec, at, bundle, EDGE_CONFIG_KEY);
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
    // The node name identifies the edge to the cloud and in metrics.
    container.env = Some(vec![EnvVar {
        name: "COLLM_NODE_NAME".to_string(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: "spec.nodeName".to_string(),
                api_version: None,
            }),
            ..EnvVarSource::default()
        }),
        value: None,
    }]);
    container.readiness_probe = Some(Probe {
        http_get: Some(HTTPGetAction {
            path: Some(EDGE_READY_PATH.to_string()),
            port: IntOrString::String("http".to_string()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(5),
        ..Probe::default()
    });
    container.resources = edge.resources.clone();
    container.volume_mounts = Some(volumes.mounts);

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
                    annotations: Some(BTreeMap::from([(
                        CONFIG_HASH_ANNOTATION.to_string(),
                        edge_config_hash.to_string(),
                    )])),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![container],
                    node_selector: Some(edge.node_selector.clone()),
                    tolerations: (!edge.tolerations.is_empty()).then(|| edge.tolerations.clone()),
                    security_context: Some(restricted_pod_security(RUNTIME_UID)),
                    automount_service_account_token: Some(false),
                    enable_service_links: Some(false),
                    volumes: Some(volumes.volumes),
                    ..PodSpec::default()
                }),
            },
            ..DaemonSetSpec::default()
        }),
        status: None,
    }
}

/// A Service for the edge API that keeps traffic on the caller's node.
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
