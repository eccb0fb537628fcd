//! The cluster under test: the one KUBECONFIG names, or a local cluster started with
//! `e2e/cluster/up` into a temporary directory (and stopped with `down` when the tests end):
//! a control plane with fake nodes, or with a real node (`up --node`, see [`crate::node`]).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::process::on_exit;

pub struct Cluster {
    /// Admin credentials: used to set up and inspect, never by the operator.
    pub admin_kubeconfig: PathBuf,
    /// Set when this process started the cluster.
    pub local_dir: Option<PathBuf>,
}

/// The repository root (the e2e crate's parent).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("e2e sits in the repository")
        .to_path_buf()
}

impl Cluster {
    /// KUBECONFIG if set, else a fresh local control plane with fake nodes.
    pub fn connect_or_start() -> Result<Self> {
        Self::from_kubeconfig().map_or_else(|| Self::start_local(Mode::FakeNodes), Ok)
    }

    /// The cluster KUBECONFIG names, if it is set.
    pub fn from_kubeconfig() -> Option<Self> {
        match std::env::var("KUBECONFIG") {
            Ok(path) if !path.trim().is_empty() => {
                let path = PathBuf::from(path.split(':').next().unwrap_or_default());
                eprintln!("e2e: using the cluster of KUBECONFIG={}", path.display());
                Some(Self { admin_kubeconfig: path, local_dir: None })
            }
            _ => None,
        }
    }

    /// A fresh local cluster (`e2e/cluster/up [--node] DIR`), taken down with `down` when this
    /// test process exits.
    pub fn start_local(mode: Mode) -> Result<Self> {
        let dir = tempfile::Builder::new().prefix("collm-e2e-cluster-").tempdir()?.keep();
        let root = repo_root();
        let down = root.join("e2e/cluster/down");
        let keep =
            if std::env::var_os("COLLM_E2E_KEEP_LOGS").is_some() { "--keep-logs " } else { "" };
        // Registered before `up` so that a half-started cluster is stopped too.
        on_exit(&format!("'{}' {keep}'{}' >/dev/null 2>&1", down.display(), dir.display()))?;
        eprintln!("e2e: starting a local cluster ({mode:?}) in {}", dir.display());
        let started = std::time::Instant::now();
        let mut up = Command::new(root.join("e2e/cluster/up"));
        if mode == Mode::RealNode {
            up.arg("--node");
        }
        let out = up.arg(&dir).stdin(Stdio::null()).output().context("running e2e/cluster/up")?;
        if !out.status.success() {
            bail!(
                "e2e/cluster/up failed ({}):\n{}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        eprintln!("e2e: cluster up in {:.1?}", started.elapsed());
        Ok(Self { admin_kubeconfig: dir.join("admin.kubeconfig"), local_dir: Some(dir) })
    }

    /// `kubectl` as admin.
    pub fn kubectl(&self) -> Kubectl {
        Kubectl { kubeconfig: self.admin_kubeconfig.clone() }
    }
}

/// What a local cluster runs pods on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Nodes registered without a kubelet: pods are scheduled, never started (fast).
    FakeNodes,
    /// One real node on this machine: containerd, a kubelet, kube-proxy and cluster DNS.
    RealNode,
}

/// kubectl with one kubeconfig.
#[derive(Clone, Debug)]
pub struct Kubectl {
    pub kubeconfig: PathBuf,
}

/// A failed kubectl call: its arguments and what it printed.
#[derive(Debug)]
pub struct KubectlError {
    pub args: String,
    pub stderr: String,
}

impl std::fmt::Display for KubectlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "kubectl {} failed: {}", self.args, self.stderr.trim())
    }
}

impl std::error::Error for KubectlError {}

impl Kubectl {
    /// Runs kubectl with `args` (and `stdin`), returning stdout; a non-zero exit is an error
    /// carrying stderr.
    pub fn run_with_input(&self, args: &[&str], stdin: Option<&str>) -> Result<String> {
        let mut cmd = Command::new("kubectl");
        cmd.arg("--kubeconfig").arg(&self.kubeconfig).arg("--request-timeout=20s").args(args);
        cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() });
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().context("running kubectl (is it installed?)")?;
        if let Some(input) = stdin {
            child.stdin.take().context("kubectl stdin")?.write_all(input.as_bytes())?;
        }
        let out = child.wait_with_output()?;
        if !out.status.success() {
            return Err(KubectlError {
                args: args.join(" "),
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            }
            .into());
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    pub fn run(&self, args: &[&str]) -> Result<String> {
        self.run_with_input(args, None)
    }

    /// `kubectl apply -f -` of a manifest (YAML or JSON).
    pub fn apply(&self, manifest: &str) -> Result<String> {
        self.run_with_input(&["apply", "-f", "-"], Some(manifest))
    }

    /// An object as JSON, or None when it does not exist.
    pub fn get(&self, namespace: &str, kind: &str, name: &str) -> Result<Option<Value>> {
        match self.run(&["get", "-n", namespace, kind, name, "-o", "json", "--ignore-not-found"]) {
            Ok(out) if out.trim().is_empty() => Ok(None),
            Ok(out) => Ok(Some(serde_json::from_str(&out)?)),
            Err(e) => Err(e),
        }
    }

    /// An object that must exist.
    pub fn must_get(&self, namespace: &str, kind: &str, name: &str) -> Result<Value> {
        self.get(namespace, kind, name)?
            .with_context(|| format!("{kind} {namespace}/{name} does not exist"))
    }

    /// A fresh namespace named `<prefix>-<random>`.
    pub fn fresh_namespace(&self, prefix: &str) -> Result<String> {
        let suffix: String = format!("{:08x}", rand_suffix());
        let name = format!("{prefix}-{suffix}");
        self.run(&["create", "namespace", &name])?;
        Ok(name)
    }
}

fn rand_suffix() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish() as u32
}
