//! The operator binary run by the tests with the chart's ServiceAccount token, so the API server
//! enforces the chart's RBAC on every call it makes.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::chart::InstalledOperator;
use crate::cluster::{Kubectl, repo_root};
use crate::process::{Daemon, eventually, free_port};

/// Lease timing of the test replicas: short, so a takeover happens within seconds.
pub const LEASE_DURATION_SECONDS: u64 = 4;

/// The operator binary of this build: `$COLLM_OPERATOR_BIN`, else the workspace target dir of
/// the profile the tests were built with.
pub fn operator_binary() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("COLLM_OPERATOR_BIN") {
        return Ok(PathBuf::from(path));
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"));
    let profile = if cfg!(debug_assertions) { "debug" } else { "release" };
    let binary = target.join(profile).join("collm-operator");
    if !binary.is_file() {
        bail!(
            "{} is missing: build it first with `cargo build{} -p collm-operator` (or set COLLM_OPERATOR_BIN)",
            binary.display(),
            if profile == "release" { " --release" } else { "" }
        );
    }
    Ok(binary)
}

/// A kubeconfig that authenticates as the chart's ServiceAccount (a TokenRequest token), for
/// the admin kubeconfig's cluster.
pub fn service_account_kubeconfig(
    admin: &Kubectl,
    installed: &InstalledOperator,
    path: &Path,
) -> Result<Kubectl> {
    let token = admin
        .run(&[
            "create",
            "token",
            &installed.service_account,
            "-n",
            &installed.lease_namespace,
            "--duration=6h",
        ])?
        .trim()
        .to_string();
    let view: Value = serde_json::from_str(&admin.run(&[
        "config",
        "view",
        "--raw",
        "--minify",
        "--flatten",
        "-o",
        "json",
    ])?)?;
    let cluster = view["clusters"][0]["cluster"].clone();
    if cluster.is_null() {
        bail!("the admin kubeconfig names no cluster");
    }
    let config = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "e2e", "cluster": cluster}],
        "users": [{"name": installed.service_account, "user": {"token": token}}],
        "contexts": [{"name": "e2e", "context": {"cluster": "e2e", "user": installed.service_account}}],
        "current-context": "e2e",
    });
    std::fs::write(path, serde_json::to_vec_pretty(&config)?)?;
    Ok(Kubectl { kubeconfig: path.to_path_buf() })
}

/// One running operator replica.
pub struct Replica {
    pub identity: String,
    pub metrics_url: String,
    pub daemon: Daemon,
}

impl Replica {
    /// Starts a replica with the chart's args (images, lease name and namespace) plus a free
    /// metrics port and short lease timing.
    pub fn start(
        identity: &str,
        kubeconfig: &Path,
        installed: &InstalledOperator,
        log_dir: &Path,
    ) -> Result<Self> {
        let port = free_port()?;
        let mut args: Vec<String> =
            installed.args.iter().filter(|a| !a.starts_with("--http-addr=")).cloned().collect();
        args.push(format!("--http-addr=127.0.0.1:{port}"));
        args.push(format!("--lease-duration-seconds={LEASE_DURATION_SECONDS}"));
        args.push("--lease-renew-deadline-seconds=3".to_string());
        args.push("--lease-retry-period-seconds=1".to_string());
        args.push("--redis-timeout-seconds=1".to_string());
        let mut command = Command::new(operator_binary()?);
        command
            .args(&args)
            .env("KUBECONFIG", kubeconfig)
            .env("POD_NAME", identity)
            .env("RUST_LOG", "info,collm_operator=debug")
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT");
        let daemon =
            Daemon::spawn(identity, &mut command, &log_dir.join(format!("{identity}.log")))?;
        let replica = Self {
            identity: identity.to_string(),
            metrics_url: format!("http://127.0.0.1:{port}/metrics"),
            daemon,
        };
        eventually(&format!("{identity} to serve /metrics"), Duration::from_secs(30), || {
            replica.metrics().map(|_| ())
        })?;
        Ok(replica)
    }

    /// The /metrics page.
    pub fn metrics(&self) -> Result<String> {
        let out =
            Command::new("curl").args(["-fsS", "--max-time", "2", &self.metrics_url]).output()?;
        if !out.status.success() {
            bail!("GET {}: {}", self.metrics_url, String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// A metric's value (the first sample whose name and labels start with `series`).
    pub fn metric(&self, series: &str) -> Result<f64> {
        let page = self.metrics()?;
        page.lines()
            .filter(|l| !l.starts_with('#'))
            .find_map(|l| {
                let (name, value) = l.rsplit_once(' ')?;
                (name == series).then(|| value.parse::<f64>().ok()).flatten()
            })
            .with_context(|| format!("no {series} in the metrics of {}", self.identity))
    }

    pub fn is_leader(&self) -> Result<bool> {
        Ok(self.metric("collm_operator_leader")? == 1.0)
    }

    pub fn reconciliations(&self) -> Result<f64> {
        self.metric("collm_operator_reconciliations_total")
    }
}
