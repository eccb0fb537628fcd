//! A cluster whose pods really run, for the real-node tests: KUBECONFIG's cluster when it is
//! set (its nodes must already have the images, e.g. from `e2e/kind/up` or `k3s ctr images
//! import`), else a local one with a real node (`e2e/cluster/up --node`) into which the images
//! built from `docker/*.Dockerfile` are imported. One per test binary ([`real_node`]).
//!
//! ```sh
//! source scripts/env.sh
//! tools/build-images operator edge-agent cloud-worker redis   # or let the harness do it
//! cargo test --release -p collm-e2e --test heavy_node -- --include-ignored
//! ```
//!
//! The local node needs root and Debian's containerd, runc, containernetworking-plugins,
//! iptables and buildah (scripts/test installs them). `COLLM_IMAGES=DIR` takes the image
//! archives from DIR as they are instead of running `tools/build-images` (which rebuilds what
//! the sources changed); `COLLM_E2E_KEEP_LOGS=1` keeps the cluster's logs.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Instant;

use anyhow::{Context, Result, bail};

use crate::cluster::{Cluster, Kubectl, Mode, repo_root};

/// The images under test, by the names pods use.
#[derive(Clone, Debug)]
pub struct Images {
    pub operator: String,
    pub edge_agent: String,
    pub cloud_worker: String,
    /// A Redis image for the managed Redis (`image.redis` of the chart); None: the chart's
    /// default, which the cluster can pull.
    pub redis: Option<String>,
}

impl Images {
    /// The Helm values that make the chart and the operator use these images.
    pub fn helm_values(&self) -> Vec<String> {
        let mut values = Vec::new();
        for (key, reference) in [
            ("operator", &self.operator),
            ("edgeAgent", &self.edge_agent),
            ("cloudWorker", &self.cloud_worker),
        ]
        .into_iter()
        .chain(self.redis.as_ref().map(|r| ("redis", r)))
        {
            let (repository, tag) = split_reference(reference);
            values.push(format!("image.{key}.repository={repository}"));
            values.push(format!("image.{key}.tag={tag}"));
        }
        values
    }
}

/// `registry/name:tag` → (`registry/name`, `tag`); a reference without a tag gets `latest`.
pub fn split_reference(reference: &str) -> (&str, &str) {
    match reference.rsplit_once(':') {
        Some((repository, tag)) if !tag.contains('/') => (repository, tag),
        _ => (reference, "latest"),
    }
}

pub struct RealNode {
    pub cluster: Cluster,
    /// Admin kubectl.
    pub admin: Kubectl,
    pub images: Images,
    /// Where the harness writes logs (port-forwards, ...).
    pub log_dir: PathBuf,
}

impl RealNode {
    /// True when the node is this machine (`up --node`): pod and ClusterIP addresses are
    /// reachable from the test process, and hostPath volumes are this machine's directories.
    pub fn is_local(&self) -> bool {
        self.cluster.local_dir.is_some()
    }

    /// The address at which pods reach this machine (the node's address on its bridge), for
    /// servers a test runs on the host for pods to call (e.g. an HTTP server with a bundle):
    /// bind them to it or to 0.0.0.0. None when the node is not this machine.
    pub fn host_address_for_pods(&self) -> Option<std::net::IpAddr> {
        let env = std::fs::read_to_string(self.cluster.local_dir.as_ref()?.join("env")).ok()?;
        env.lines().find_map(|l| l.strip_prefix("export COLLM_NODE_IP="))?.parse().ok()
    }

    fn set_up() -> Result<Self> {
        let started = Instant::now();
        let log_dir = tempfile::Builder::new().prefix("collm-e2e-node-logs-").tempdir()?.keep();
        let (cluster, images) = match Cluster::from_kubeconfig() {
            Some(cluster) => (cluster, expected_images()?),
            None => {
                let archives = image_archives()?;
                let cluster = Cluster::start_local(Mode::RealNode)?;
                let dir = cluster.local_dir.clone().expect("a local cluster has a directory");
                let images = import(&dir, &archives)?;
                (cluster, images)
            }
        };
        let admin = cluster.kubectl();
        eprintln!("e2e: real node ready in {:.1?} with {images:?}", started.elapsed());
        Ok(Self { cluster, admin, images, log_dir })
    }
}

static NODE: OnceLock<Result<RealNode, String>> = OnceLock::new();

/// The test binary's real-node cluster, set up by the first test that asks.
pub fn real_node() -> &'static RealNode {
    match NODE.get_or_init(|| RealNode::set_up().map_err(|e| format!("{e:#}"))) {
        Ok(node) => node,
        Err(e) => panic!("real-node cluster: {e}"),
    }
}

const IMAGES: [&str; 4] = ["operator", "edge-agent", "cloud-worker", "redis"];

/// The directory of the image archives: COLLM_IMAGES as given, else what `tools/build-images`
/// makes of the current sources.
fn image_archives() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("COLLM_IMAGES") {
        eprintln!("e2e: images from COLLM_IMAGES={}", PathBuf::from(&dir).display());
        return Ok(PathBuf::from(dir));
    }
    let started = Instant::now();
    eprintln!(
        "e2e: tools/build-images {} (incremental; cold: see docker/README.md)",
        IMAGES.join(" ")
    );
    let out = Command::new(repo_root().join("tools/build-images"))
        .arg("--print-env")
        .args(IMAGES)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .context("running tools/build-images")?;
    if !out.status.success() {
        bail!("tools/build-images failed ({})", out.status);
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let dir = stdout
        .lines()
        .find_map(|l| l.strip_prefix("export COLLM_IMAGES="))
        .context("tools/build-images printed no COLLM_IMAGES")?;
    eprintln!("e2e: images built in {:.1?}", started.elapsed());
    Ok(PathBuf::from(dir.trim_matches('\'')))
}

/// Imports the archives into the local node's containerd; returns the images' names.
fn import(cluster_dir: &Path, archives: &Path) -> Result<Images> {
    let out = Command::new(repo_root().join("e2e/cluster/load-images"))
        .arg(cluster_dir)
        .args(IMAGES)
        .env("COLLM_IMAGES", archives)
        .stdin(Stdio::null())
        .output()
        .context("running e2e/cluster/load-images")?;
    if !out.status.success() {
        bail!("e2e/cluster/load-images failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let reference = |name: &str| -> Result<String> {
        let path = archives.join(format!("{name}.ref"));
        Ok(std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?
            .trim()
            .to_string())
    };
    Ok(Images {
        operator: reference("operator")?,
        edge_agent: reference("edge-agent")?,
        cloud_worker: reference("cloud-worker")?,
        redis: Some(reference("redis")?),
    })
}

/// A binary of this workspace, built by `cargo build --release` (COLLM_<NAME>_BIN overrides it).
pub fn workspace_binary(name: &str) -> Result<PathBuf> {
    let variable = format!("COLLM_{}_BIN", name.to_uppercase().replace('-', "_"));
    if let Some(path) = std::env::var_os(&variable) {
        return Ok(PathBuf::from(path));
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| repo_root().join("target"), PathBuf::from);
    let profile = if cfg!(debug_assertions) { "debug" } else { "release" };
    let binary = target.join(profile).join(name);
    if !binary.is_file() {
        bail!("{} is missing: build the workspace first (or set {variable})", binary.display());
    }
    Ok(binary)
}

/// The names `tools/build-images` gives the images (tag: COLLM_IMAGE_TAG or the workspace
/// version), for a cluster that already has them.
fn expected_images() -> Result<Images> {
    let tag = match std::env::var("COLLM_IMAGE_TAG") {
        Ok(tag) if !tag.is_empty() => tag,
        _ => env!("CARGO_PKG_VERSION").to_string(),
    };
    let name = |component: &str| format!("docker.io/collm/{component}:{tag}");
    Ok(Images {
        operator: name("operator"),
        edge_agent: name("edge-agent"),
        cloud_worker: name("cloud-worker"),
        redis: None,
    })
}
