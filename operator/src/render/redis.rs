//! The managed Redis: one replica, no persistence, a generated password, a memory bound, and a
//! NetworkPolicy admitting only the model's cloud pods and the operator. The cloud context is
//! recoverable (edges keep what they uploaded and re-upload what the cloud reports missing), so
//! losing it (or evicting the least recently used sessions when memory is full) costs time, not
//! sessions.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetSpec};
use k8s_openapi::api::core::v1::{
    ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource, ExecAction, PodSpec,
    PodTemplateSpec, Probe, ResourceRequirements, Secret, SecretKeySelector, Service, ServicePort,
    ServiceSpec, Volume, VolumeMount,
};
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use sha2::{Digest, Sha256};

use super::config::REDIS_PORT;
use super::pod::{pull_secrets, restricted_pod_security, runtime_container};
use super::{Component, ModelRef, RedisChildren, Settings};
use crate::crd::{CollabModelSpec, RedisSpec};

/// UID of the `redis` user in the official Redis images.
pub const REDIS_UID: i64 = 999;
/// Keys of the generated Secret.
pub const PASSWORD_KEY: &str = "password";
pub const URL_KEY: &str = "url";
/// Pod-template annotation holding a hash of the password the pod uses: a regenerated password
/// (the Secret deleted by hand) rolls Redis and the cloud together.
pub const SECRET_HASH_ANNOTATION: &str = "collm.dev/secret-hash";
/// maxmemory of the managed Redis when the spec names none.
pub const DEFAULT_MAX_MEMORY_MIB: u32 = 256;

/// Name of the generated password Secret.
pub fn password_secret_name(at: &ModelRef) -> String {
    at.child_name(Component::Redis)
}

/// The managed Redis's URL with its password (what cloud workers and the finalizer use).
pub fn url_with_password(at: &ModelRef, password: &str) -> String {
    format!(
        "redis://:{password}@{}.{}.svc:{REDIS_PORT}",
        at.child_name(Component::Redis),
        at.namespace
    )
}

/// The hash pods carry of a password (not the password).
pub fn password_hash(password: &str) -> String {
    hex::encode(&Sha256::digest(password.as_bytes())[..16])
}

/// The generated Secret, owned by the model: created once by the controller, never rewritten.
pub fn password_secret(at: &ModelRef, password: &str) -> Secret {
    let mut meta = at.child_meta(Component::Redis);
    meta.name = Some(password_secret_name(at));
    Secret {
        metadata: meta,
        type_: Some("Opaque".to_string()),
        data: Some(BTreeMap::from([
            (PASSWORD_KEY.to_string(), ByteString(password.as_bytes().to_vec())),
            (URL_KEY.to_string(), ByteString(url_with_password(at, password).into_bytes())),
        ])),
        ..Secret::default()
    }
}

pub fn children(
    at: &ModelRef,
    redis: Option<&RedisSpec>,
    settings: &Settings,
    spec: &CollabModelSpec,
    password_hash: Option<&str>,
) -> RedisChildren {
    let max_memory = redis.and_then(|r| r.max_memory_mib).unwrap_or(DEFAULT_MAX_MEMORY_MIB);
    RedisChildren {
        stateful_set: stateful_set(at, settings, spec, max_memory, password_hash),
        service: service(at),
        network_policy: network_policy(at, settings),
    }
}

fn from_secret(at: &ModelRef, name: &str, key: &str) -> EnvVar {
    EnvVar {
        name: name.to_string(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: password_secret_name(at),
                key: key.to_string(),
                optional: Some(false),
            }),
            ..EnvVarSource::default()
        }),
        value: None,
    }
}

fn stateful_set(
    at: &ModelRef,
    settings: &Settings,
    spec: &CollabModelSpec,
    max_memory_mib: u32,
    password_hash: Option<&str>,
) -> StatefulSet {
    let images = &settings.images;
    let mut container = runtime_container("redis", &images.redis, images);
    container.args = Some(
        [
            "redis-server",
            "--port",
            &REDIS_PORT.to_string(),
            "--save",
            "",
            "--appendonly",
            "no",
            // The kubelet substitutes the variable; the password never appears in the spec.
            "--requirepass",
            "$(REDIS_PASSWORD)",
            "--maxmemory",
            &format!("{max_memory_mib}mb"),
            "--maxmemory-policy",
            "allkeys-lru",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect(),
    );
    // redis-cli (the readiness probe) reads REDISCLI_AUTH.
    container.env = Some(vec![
        from_secret(at, "REDIS_PASSWORD", PASSWORD_KEY),
        from_secret(at, "REDISCLI_AUTH", PASSWORD_KEY),
    ]);
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
    // maxmemory bounds the data; the limit leaves room for Redis's own overhead and buffers.
    let limit = max_memory_mib + max_memory_mib / 4 + 32;
    container.resources = Some(ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_string(), Quantity("50m".to_string())),
            ("memory".to_string(), Quantity(format!("{limit}Mi"))),
        ])),
        limits: Some(BTreeMap::from([("memory".to_string(), Quantity(format!("{limit}Mi")))])),
        ..ResourceRequirements::default()
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
                    annotations: password_hash.map(|hash| {
                        BTreeMap::from([(SECRET_HASH_ANNOTATION.to_string(), hash.to_string())])
                    }),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![container],
                    security_context: Some(restricted_pod_security(REDIS_UID)),
                    automount_service_account_token: Some(false),
                    enable_service_links: Some(false),
                    image_pull_secrets: pull_secrets(spec, settings),
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

/// Only the model's cloud pods (and the operator, whose finalizer deletes the model's keys)
/// may connect to its Redis.
fn network_policy(at: &ModelRef, settings: &Settings) -> NetworkPolicy {
    let selector = |labels: BTreeMap<String, String>| LabelSelector {
        match_labels: Some(labels),
        match_expressions: None,
    };
    let mut from = vec![NetworkPolicyPeer {
        pod_selector: Some(selector(at.selector_labels(Component::Cloud))),
        ..NetworkPolicyPeer::default()
    }];
    if let Some(operator) = &settings.operator {
        from.push(NetworkPolicyPeer {
            namespace_selector: Some(selector(BTreeMap::from([(
                "kubernetes.io/metadata.name".to_string(),
                operator.namespace.clone(),
            )]))),
            pod_selector: Some(selector(operator.labels.clone())),
            ..NetworkPolicyPeer::default()
        });
    }
    NetworkPolicy {
        metadata: at.child_meta(Component::Redis),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(selector(at.selector_labels(Component::Redis))),
            policy_types: Some(vec!["Ingress".to_string()]),
            ingress: Some(vec![NetworkPolicyIngressRule {
                from: Some(from),
                ports: Some(vec![NetworkPolicyPort {
                    port: Some(IntOrString::Int(REDIS_PORT)),
                    protocol: Some("TCP".to_string()),
                    end_port: None,
                }]),
            }]),
            egress: None,
        }),
    }
}
