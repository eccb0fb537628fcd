//! The managed Redis: one replica, no persistence. The cloud context is recoverable (edges keep
//! what they uploaded and re-upload what the cloud reports missing), so losing it costs time,
//! not sessions.

use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetSpec};
use k8s_openapi::api::core::v1::{
    ContainerPort, EmptyDirVolumeSource, ExecAction, PodSpec, PodTemplateSpec, Probe, Service,
    ServicePort, ServiceSpec, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::config::REDIS_PORT;
use super::pod::{restricted_pod_security, runtime_container};
use super::{Component, Images, ModelRef, RedisChildren};

/// UID of the `redis` user in the official Redis images.
pub const REDIS_UID: i64 = 999;

pub fn children(at: &ModelRef, images: &Images) -> RedisChildren {
    RedisChildren { stateful_set: stateful_set(at, images), service: service(at) }
}

fn stateful_set(at: &ModelRef, images: &Images) -> StatefulSet {
    let mut container = runtime_container("redis", &images.redis, images);
    container.args = Some(
        ["redis-server", "--port", &REDIS_PORT.to_string(), "--save", "", "--appendonly", "no"]
            .iter()
            .map(|s| s.to_string())
            .collect(),
    );
    container.ports = Some(vec![ContainerPort {
        name: Some("redis".to_string()),
        container_port: REDIS_PORT,
        protocol: Some("TCP".to_string()),
        ..ContainerPort::default()
    }]);
    container.readiness_probe = Some(Probe {
        exec: Some(ExecAction { command: Some(vec!["redis-cli".to_string(), "ping".to_string()]) }),
        period_seconds: Some(5),
        ..Probe::default()
    });
    container.volume_mounts = Some(vec![VolumeMount {
        name: "data".to_string(),
        mount_path: "/data".to_string(),
        ..VolumeMount::default()
    }]);

    StatefulSet {
        metadata: at.child_meta(Component::Redis),
        spec: Some(StatefulSetSpec {
            replicas: Some(1),
            service_name: Some(at.child_name(Component::Redis)),
            selector: LabelSelector {
                match_labels: Some(at.selector_labels(Component::Redis)),
                match_expressions: None,
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(at.labels(Component::Redis)),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![container],
                    security_context: Some(restricted_pod_security(REDIS_UID)),
                    automount_service_account_token: Some(false),
                    enable_service_links: Some(false),
                    volumes: Some(vec![Volume {
                        name: "data".to_string(),
                        empty_dir: Some(EmptyDirVolumeSource::default()),
                        ..Volume::default()
                    }]),
                    ..PodSpec::default()
                }),
            },
            ..StatefulSetSpec::default()
        }),
        status: None,
    }
}

fn service(at: &ModelRef) -> Service {
    Service {
        metadata: at.child_meta(Component::Redis),
        spec: Some(ServiceSpec {
            selector: Some(at.selector_labels(Component::Redis)),
            ports: Some(vec![ServicePort {
                name: Some("redis".to_string()),
                port: REDIS_PORT,
                target_port: Some(IntOrString::String("redis".to_string())),
                protocol: Some("TCP".to_string()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}
