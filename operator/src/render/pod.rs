//! Pod pieces shared by edge, cloud and Redis: the restricted Pod Security Standard settings, the
//! volumes every runtime pod mounts, the init container that fetches a downloaded bundle, and
//! the environment every runtime gets.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapVolumeSource, Container, EmptyDirVolumeSource, EnvVar, EnvVarSource,
    HostPathVolumeSource, KeyToPath, LocalObjectReference, ObjectFieldSelector,
    PersistentVolumeClaimVolumeSource, PodSecurityContext, ProjectedVolumeSource, SeccompProfile,
    SecretVolumeSource, SecurityContext, ServiceAccountTokenProjection, Volume, VolumeMount,
    VolumeProjection,
};

use super::config::{
    BUNDLE_DIR, CLIENT_CA_DIR, CONFIG_DIR, EDGE_CERT_DIR, EDGE_TOKEN_DIR, EDGE_TOKEN_FILE,
    FETCH_DIR, TLS_DIR,
};
use super::identity::{EDGE_TOKEN_SECONDS, EdgeAuth};
use super::{Bundle, Component, Images, ModelRef, Settings};
use crate::crd::CollabModelSpec;

/// UID/GID of the edge-agent and cloud-worker images (the Dockerfiles use the same numbers).
pub const RUNTIME_UID: i64 = 65532;
/// Name of the init container that downloads and verifies a URL bundle.
pub const FETCH_CONTAINER: &str = "fetch-bundle";
/// Where the kubelet takes a container's termination message from.
const TERMINATION_LOG: &str = "/dev/termination-log";

/// Pod-level settings of the restricted Pod Security Standard.
pub fn restricted_pod_security(uid: i64) -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(uid),
        run_as_group: Some(uid),
        fs_group: Some(uid),
        seccomp_profile: Some(runtime_default_seccomp()),
        ..PodSecurityContext::default()
    }
}

/// Container-level settings of the restricted Pod Security Standard, with a read-only root.
pub fn restricted_container_security() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        capabilities: Some(Capabilities { drop: Some(vec!["ALL".to_string()]), add: None }),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        seccomp_profile: Some(runtime_default_seccomp()),
        ..SecurityContext::default()
    }
}

fn runtime_default_seccomp() -> SeccompProfile {
    SeccompProfile { type_: "RuntimeDefault".to_string(), localhost_profile: None }
}

/// A container with the image pull policy and restricted security applied; a failure's last
/// log lines become its termination message, which the operator shows in the model's status.
pub fn runtime_container(name: &str, image: &str, images: &Images) -> Container {
    Container {
        name: name.to_string(),
        image: Some(image.to_string()),
        image_pull_policy: images.pull_policy.clone(),
        security_context: Some(restricted_container_security()),
        termination_message_policy: Some("FallbackToLogsOnError".to_string()),
        ..Container::default()
    }
}

/// The image pull Secrets of every pod: the operator's defaults, then the model's own.
pub fn pull_secrets(
    spec: &CollabModelSpec,
    settings: &Settings,
) -> Option<Vec<LocalObjectReference>> {
    let mut names: Vec<String> = settings.pull_secrets.clone();
    for secret in &spec.image_pull_secrets {
        if !names.contains(&secret.name) {
            names.push(secret.name.clone());
        }
    }
    (!names.is_empty())
        .then(|| names.into_iter().map(|name| LocalObjectReference { name }).collect())
}

/// An environment variable from a field of the pod (downward API).
pub fn field_env(name: &str, field: &str) -> EnvVar {
    EnvVar {
        name: name.to_string(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: field.to_string(),
                api_version: None,
            }),
            ..EnvVarSource::default()
        }),
        value: None,
    }
}

pub fn value_env(name: &str, value: &str) -> EnvVar {
    EnvVar { name: name.to_string(), value: Some(value.to_string()), value_from: None }
}

/// Environment of every runtime container: ONNX Runtime threads that wait rather than spin for
/// work (pods share nodes; the thread count follows the container's CPU limit by itself), and
/// the pod's own name and namespace.
pub fn runtime_env() -> Vec<EnvVar> {
    vec![
        value_env("COLLM_SPIN", "0"),
        field_env("POD_NAME", "metadata.name"),
        field_env("POD_NAMESPACE", "metadata.namespace"),
    ]
}

/// Which side of the model a pod runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Edge,
    Cloud,
}

/// Volumes and mounts of a runtime pod, and its bundle-fetching init container's mounts.
pub struct RuntimeVolumes {
    pub volumes: Vec<Volume>,
    pub mounts: Vec<VolumeMount>,
    /// Mounts of the fetch-bundle init container (URL bundles only).
    pub fetch_mounts: Option<Vec<VolumeMount>>,
}

pub fn runtime_volumes(
    spec: &CollabModelSpec,
    at: &ModelRef,
    bundle: &Bundle,
    auth: &EdgeAuth,
    side: Side,
    config_key: &str,
) -> RuntimeVolumes {
    let mut volumes = Vec::new();
    let mut mounts = Vec::new();
    let mut add = |volume: Volume, mount: VolumeMount| {
        volumes.push(volume);
        mounts.push(mount);
    };

    // Only this component's half: the other half changing must not change this pod's files.
    let config_mount = mount("config", CONFIG_DIR, true, None);
    add(
        Volume {
            config_map: Some(ConfigMapVolumeSource {
                name: at.child_name(Component::Config),
                items: Some(vec![key(config_key, config_key)]),
                ..ConfigMapVolumeSource::default()
            }),
            ..named("config")
        },
        config_mount.clone(),
    );

    // The root filesystem is read-only; runtimes write scratch files here.
    let tmp_mount = mount("tmp", "/tmp", false, None);
    add(
        Volume { empty_dir: Some(EmptyDirVolumeSource::default()), ..named("tmp") },
        tmp_mount.clone(),
    );

    let mut fetch_mounts = None;
    match bundle {
        Bundle::Url { .. } => {
            // The init container writes the bundle; the runtime only reads it.
            add(
                Volume { empty_dir: Some(EmptyDirVolumeSource::default()), ..named("bundle") },
                mount("bundle", FETCH_DIR, true, None),
            );
            fetch_mounts =
                Some(vec![config_mount, tmp_mount, mount("bundle", FETCH_DIR, false, None)]);
        }
        Bundle::Pvc { claim_name, path } => add(
            Volume {
                persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                    claim_name: claim_name.clone(),
                    read_only: Some(true),
                }),
                ..named("bundle")
            },
            mount(
                "bundle",
                BUNDLE_DIR,
                true,
                (!path.is_empty()).then(|| path.trim_matches('/').to_string()),
            ),
        ),
        Bundle::HostPath { path } => add(
            Volume {
                host_path: Some(HostPathVolumeSource {
                    path: path.clone(),
                    type_: Some("Directory".to_string()),
                }),
                ..named("bundle")
            },
            mount("bundle", BUNDLE_DIR, true, None),
        ),
        Bundle::ConfigMap { name } => add(
            Volume {
                config_map: Some(ConfigMapVolumeSource {
                    name: name.clone(),
                    ..ConfigMapVolumeSource::default()
                }),
                ..named("bundle")
            },
            mount("bundle", BUNDLE_DIR, true, None),
        ),
    }

    match (auth, side) {
        (EdgeAuth::Secret(token), _) => add(
            Volume {
                secret: Some(SecretVolumeSource {
                    secret_name: Some(token.name.clone()),
                    items: Some(vec![key(&token.key, EDGE_TOKEN_FILE)]),
                    ..SecretVolumeSource::default()
                }),
                ..named("edge-token")
            },
            mount("edge-token", EDGE_TOKEN_DIR, true, None),
        ),
        // The kubelet writes this pod's own token for the model's audience, and renews it.
        (EdgeAuth::ServiceAccountToken { audience }, Side::Edge) => add(
            Volume {
                projected: Some(ProjectedVolumeSource {
                    sources: Some(vec![VolumeProjection {
                        service_account_token: Some(ServiceAccountTokenProjection {
                            audience: Some(audience.clone()),
                            expiration_seconds: Some(EDGE_TOKEN_SECONDS),
                            path: EDGE_TOKEN_FILE.to_string(),
                        }),
                        ..VolumeProjection::default()
                    }]),
                    ..ProjectedVolumeSource::default()
                }),
                ..named("edge-token")
            },
            mount("edge-token", EDGE_TOKEN_DIR, true, None),
        ),
        _ => {}
    }

    let creds = spec.credentials.clone().unwrap_or_default();
    let secret_volume = |name: &str, secret: &str, keys: &[&str]| Volume {
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret.to_string()),
            items: Some(keys.iter().map(|k| key(k, k)).collect()),
            ..SecretVolumeSource::default()
        }),
        ..named(name)
    };
    if let Some(tls) = &creds.tls_secret_ref {
        // The edge trusts the CA; only the cloud holds the key.
        let keys: &[&str] = match side {
            Side::Edge => &["ca.crt"],
            Side::Cloud => &["tls.crt", "tls.key"],
        };
        add(secret_volume("tls", &tls.name, keys), mount("tls", TLS_DIR, true, None));
    }
    match side {
        Side::Edge => {
            if let Some(cert) = &creds.edge_cert_secret_ref {
                add(
                    secret_volume("edge-cert", &cert.name, &["tls.crt", "tls.key"]),
                    mount("edge-cert", EDGE_CERT_DIR, true, None),
                );
            }
        }
        Side::Cloud => {
            if let Some(ca) = &creds.client_ca_secret_ref {
                add(
                    secret_volume("client-ca", &ca.name, &["ca.crt"]),
                    mount("client-ca", CLIENT_CA_DIR, true, None),
                );
            }
        }
    }
    RuntimeVolumes { volumes, mounts, fetch_mounts }
}

/// The init container that downloads, verifies and unpacks a URL bundle with the pod's own
/// image (`<binary> fetch-bundle`), so the runtime starts only on a whole, verified bundle.
/// Its failure message (wrong SHA-256, unreachable URL, corrupt archive) is its termination
/// message.
pub fn fetch_container(
    image: &str,
    images: &Images,
    config_key: &str,
    mounts: Vec<VolumeMount>,
    runtime: &Container,
) -> Container {
    let mut container = runtime_container(FETCH_CONTAINER, image, images);
    container.args = Some(vec![
        "fetch-bundle".to_string(),
        "--config".to_string(),
        format!("{CONFIG_DIR}/{config_key}"),
        "--termination-log".to_string(),
        TERMINATION_LOG.to_string(),
    ]);
    container.volume_mounts = Some(mounts);
    // Runs before the runtime, so the runtime's resources cost nothing extra.
    container.resources = runtime.resources.clone();
    container
}

/// Annotations that point a Prometheus scraping by annotation at the pod's metrics.
pub fn scrape_annotations(port: i32) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("prometheus.io/scrape".to_string(), "true".to_string()),
        ("prometheus.io/port".to_string(), port.to_string()),
        ("prometheus.io/path".to_string(), "/metrics".to_string()),
    ])
}

fn key(key: &str, path: &str) -> KeyToPath {
    KeyToPath { key: key.to_string(), path: path.to_string(), mode: None }
}

fn named(name: &str) -> Volume {
    Volume { name: name.to_string(), ..Volume::default() }
}

fn mount(name: &str, path: &str, read_only: bool, sub_path: Option<String>) -> VolumeMount {
    VolumeMount {
        name: name.to_string(),
        mount_path: path.to_string(),
        read_only: Some(read_only),
        sub_path,
        ..VolumeMount::default()
    }
}
