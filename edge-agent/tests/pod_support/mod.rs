//! Running a pod the operator rendered as processes on this machine, the way a kubelet would:
//! its volumes made from the rendered ConfigMap and the test's Secrets, its environment from
//! the container spec (downward API and Secret references resolved), its init container run to
//! completion first, then its container with exactly the rendered arguments.
//!
//! What cannot be the same here is mapped, and only that: each mount path becomes a directory
//! of the test (paths inside the mounted config files are mapped with it), the in-cluster
//! Service names become loopback addresses, and the fixed health port of cloud pods (each pod
//! has its own network, the test has one) becomes a free port.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use k8s_openapi::api::core::v1::{ConfigMap, Container, PodSpec};

/// Text substitutions for the network: (in-cluster text, its loopback stand-in).
pub type NetworkMap = Vec<(String, String)>;

/// A rendered pod laid out on this machine.
pub struct LocalPod {
    pub root: PathBuf,
    pub name: String,
    /// Mount path in the pod → directory here.
    mounts: BTreeMap<String, PathBuf>,
    env: Vec<(String, String)>,
    network: NetworkMap,
}

impl LocalPod {
    /// Makes the pod's volumes under `root`: the config from `config_map`, Secrets from
    /// `secrets` (name → key → value), emptyDirs empty.
    pub fn prepare(
        root: &Path,
        name: &str,
        namespace: &str,
        spec: &PodSpec,
        config_map: &ConfigMap,
        secrets: &BTreeMap<String, BTreeMap<String, String>>,
        network: NetworkMap,
    ) -> Self {
        let root = root.join(name);
        let mut mounts = BTreeMap::new();
        // What the kubelet reads a failed container's message from.
        mounts.insert("/dev/termination-log".to_string(), root.join("termination-log"));
        let containers = spec.init_containers.iter().flatten().chain(&spec.containers);
        for container in containers.clone() {
            for mount in container.volume_mounts.iter().flatten() {
                let dir = root.join("volumes").join(&mount.name);
                mounts.insert(mount.mount_path.clone(), dir);
            }
        }
        for volume in spec.volumes.iter().flatten() {
            let dir = root.join("volumes").join(&volume.name);
            std::fs::create_dir_all(&dir).expect("volume dir");
            if let Some(cm) = &volume.config_map {
                assert_eq!(
                    Some(&cm.name),
                    config_map.metadata.name.as_ref(),
                    "only the model's ConfigMap"
                );
                let data = config_map.data.as_ref().expect("config data");
                for item in cm.items.iter().flatten() {
                    let text = map_text(&data[&item.key], &mounts, &network);
                    std::fs::write(dir.join(&item.path), text).expect("config file");
                }
            }
            if let Some(secret) = &volume.secret {
                let name = secret.secret_name.as_deref().expect("secret name");
                let values =
                    secrets.get(name).unwrap_or_else(|| panic!("the test has no Secret {name}"));
                for item in secret.items.iter().flatten() {
                    std::fs::write(dir.join(&item.path), &values[&item.key]).expect("secret file");
                }
            }
            assert!(volume.projected.is_none(), "projected volumes need a kubelet");
        }
        let mut env = Vec::new();
        for var in spec.containers[0].env.iter().flatten() {
            let value = match (&var.value, &var.value_from) {
                (Some(v), _) => v.clone(),
                (None, Some(from)) => {
                    if let Some(field) = &from.field_ref {
                        match field.field_path.as_str() {
                            "metadata.name" => name.to_string(),
                            "metadata.namespace" => namespace.to_string(),
                            "spec.nodeName" => "edge-node-1".to_string(),
                            other => panic!("unknown field {other}"),
                        }
                    } else if let Some(key) = &from.secret_key_ref {
                        let value = &secrets[&key.name][&key.key];
                        map_text(value, &mounts, &network)
                    } else {
                        panic!("unsupported env source for {}", var.name)
                    }
                }
                (None, None) => String::new(),
            };
            env.push((var.name.clone(), value));
        }
        Self { root, name: name.to_string(), mounts, env, network }
    }

    /// The command a container runs (its binary is `program`), arguments mapped.
    pub fn command(&self, program: &Path, container: &Container) -> Command {
        let mut cmd = Command::new(program);
        for arg in container.args.iter().flatten() {
            cmd.arg(map_text(arg, &self.mounts, &self.network));
        }
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        // No Kubernetes API here: the agent's pod condition report has nowhere to go.
        cmd.env("KUBECONFIG", self.root.join("no-kubeconfig"));
        cmd
    }

    /// Runs an init container to completion; panics with its output when it fails.
    pub fn run_init(&self, program: &Path, container: &Container) -> String {
        let out = self.command(program, container).stdout(Stdio::piped()).output().expect("runs");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success(),
            "init container {} of {} failed:\n{text}",
            container.name,
            self.name
        );
        text
    }

    /// What the last failed container wrote for the kubelet.
    pub fn termination_message(&self) -> String {
        std::fs::read_to_string(&self.mounts["/dev/termination-log"]).unwrap_or_default()
    }

    /// The directory a mount path is here.
    pub fn mounted(&self, path: &str) -> &Path {
        &self.mounts[path]
    }
}

/// Mount paths become this machine's directories and the network map applies, in one pass
/// (longest match first, nothing substituted twice).
pub fn map_text(text: &str, mounts: &BTreeMap<String, PathBuf>, network: &NetworkMap) -> String {
    let mut pairs: Vec<(String, String)> =
        mounts.iter().map(|(m, d)| (m.clone(), d.display().to_string())).collect();
    pairs.extend(network.iter().cloned());
    pairs.sort_by_key(|p| std::cmp::Reverse(p.0.len()));
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    'scan: while !rest.is_empty() {
        for (from, to) in &pairs {
            if let Some(after) = rest.strip_prefix(from.as_str()) {
                out.push_str(to);
                rest = after;
                continue 'scan;
            }
        }
        let c = rest.chars().next().expect("not empty");
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    out
}
