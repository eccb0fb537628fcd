//! Pod pieces shared by edge, cloud and Redis: the restricted Pod Security Standard settings and
//! the volumes every runtime pod mounts.

use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapVolumeSource, Container, EmptyDirVolumeSource, HostPathVolumeSource,
    KeyToPath, PersistentVolumeClaimVolumeSource, PodSecurityContext, SeccompProfile,
    SecretVolumeSource, SecurityContext, Volume, VolumeMount,
};

use super::config::{BUNDLE_DIR, CONFIG_DIR, EDGE_TOKEN_DIR, EDGE_TOKEN_FILE, TLS_DIR};
use super::{Bundle, Component, Images, ModelRef};
use crate::crd::CollabModelSpec;

/// UID/GID of the edge-agent and cloud-worker images (the Dockerfiles use the same numbers).
pub const RUNTIME_UID: i64 = 65532;

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

/// A container with the image pull policy and restricted security applied.
pub fn runtime_container(name: &str, image: &str, images: &Images) -> Container {
    Container {
        name: name.to_string(),
        image: Some(image.to_string()),
        image_pull_policy: images.pull_policy.clone(),
        security_context: Some(restricted_container_security()),
        ..Container::default()
    }
}

/// Volumes and mounts of a runtime pod that reads `config_key` from the model's ConfigMap.
pub struct RuntimeVolumes {
    pub volumes: Vec<Volume>,
    pub mounts: Vec<VolumeMount>,
}

pub fn runtime_volumes(
    spec: &CollabModelSpec,
    at: &ModelRef,
    bundle: &Bundle,
    config_key: &str,
) -> RuntimeVolumes {
    let mut volumes = Vec::new();
    let mut mounts = Vec::new();
    let mut add = |volume: Volume, mount: VolumeMount| {
        volumes.push(volume);
        mounts.push(mount);
    };

    // Only this component's half: the other half changing must not change this pod's files.
    add(
        Volume {
            name: "config".to_string(),
            config_map: Some(ConfigMapVolumeSource {
                name: at.child_name(Component::Config),
                items: Some(vec![KeyToPath {
                    key: config_key.to_string(),
                    path: config_key.to_string(),
                    mode: None,
                }]),
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        },
        mount("config", CONFIG_DIR, true, None),
    );

    let (bundle_volume, read_only, sub_path) = match bundle {
        Bundle::Url { .. } => (
            Volume { empty_dir: Some(EmptyDirVolumeSource::default()), ..named("bundle") },
            false,
            None,
        ),
        Bundle::Pvc { claim_name, path } => (
            Volume {
                persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                    claim_name: claim_name.clone(),
                    read_only: Some(true),
                }),
                ..named("bundle")
            },
            true,
            (!path.is_empty()).then(|| path.trim_matches('/').to_string()),
        ),
        Bundle::HostPath { path } => (
            Volume {
                host_path: Some(HostPathVolumeSource {
                    path: path.clone(),
                    type_: Some("Directory".to_string()),
                }),
                ..named("bundle")
            },
            true,
            None,
        ),
        Bundle::ConfigMap { name } => (
            Volume {
                config_map: Some(ConfigMapVolumeSource {
                    name: name.clone(),
                    ..ConfigMapVolumeSource::default()
                }),
                ..named("bundle")
            },
            true,
            None,
        ),
    };
    add(bundle_volume, mount("bundle", BUNDLE_DIR, read_only, sub_path));

    // The root filesystem is read-only; runtimes write scratch files here.
    add(
        Volume { empty_dir: Some(EmptyDirVolumeSource::default()), ..named("tmp") },
        mount("tmp", "/tmp", false, None),
    );

    if let Some(creds) = &spec.credentials {
        if let Some(token) = &creds.edge_token_secret_ref {
            add(
                Volume {
                    secret: Some(SecretVolumeSource {
                        secret_name: Some(token.name.clone()),
                        items: Some(vec![KeyToPath {
                            key: token.key.clone(),
                            path: EDGE_TOKEN_FILE.to_string(),
                            mode: None,
                        }]),
                        ..SecretVolumeSource::default()
                    }),
                    ..named("edge-token")
                },
                mount("edge-token", EDGE_TOKEN_DIR, true, None),
            );
        }
        if let Some(tls) = &creds.tls_secret_ref {
            add(
                Volume {
                    secret: Some(SecretVolumeSource {
                        secret_name: Some(tls.name.clone()),
                        ..SecretVolumeSource::default()
                    }),
                    ..named("tls")
                },
                mount("tls", TLS_DIR, true, None),
            );
        }
    }
    RuntimeVolumes { volumes, mounts }
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
