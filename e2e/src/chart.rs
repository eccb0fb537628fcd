//! The Helm chart: the helm binary from the tool cache, install, lint, and what the installed
//! operator Deployment says about how to run the operator.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::cluster::{Kubectl, repo_root};

pub const RELEASE: &str = "collm";
pub const RELEASE_NAMESPACE: &str = "collm-system";

/// The helm binary: `$COLLM_BIN/helm`, else what `tools/build-go-tools` built, else PATH.
pub fn helm_binary() -> Result<PathBuf> {
    if let Some(bin) = std::env::var_os("COLLM_BIN") {
        let helm = PathBuf::from(bin).join("helm");
        if helm.is_file() {
            return Ok(helm);
        }
    }
    let out = Command::new(repo_root().join("tools/build-go-tools"))
        .output()
        .context("running tools/build-go-tools")?;
    if out.status.success() {
        let dir = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let helm = PathBuf::from(dir).join("helm");
        if helm.is_file() {
            return Ok(helm);
        }
    }
    which("helm").context("no helm: tools/build-go-tools did not build it and none is on PATH")
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| PathBuf::from(d).join(name))
        .find(|p| p.is_file())
}

pub fn chart_dir() -> PathBuf {
    repo_root().join("charts/collm")
}

/// Runs helm against the cluster of `kubeconfig`; returns stdout or the error with stderr.
pub fn helm(kubeconfig: &std::path::Path, args: &[&str]) -> Result<String> {
    let out = Command::new(helm_binary()?)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .env("HELM_CACHE_HOME", std::env::temp_dir().join("collm-e2e-helm/cache"))
        .env("HELM_CONFIG_HOME", std::env::temp_dir().join("collm-e2e-helm/config"))
        .env("HELM_DATA_HOME", std::env::temp_dir().join("collm-e2e-helm/data"))
        .output()
        .context("running helm")?;
    if !out.status.success() {
        bail!(
            "helm {} failed:\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// How the chart runs the operator, read back from the installed Deployment.
#[derive(Clone, Debug)]
pub struct InstalledOperator {
    pub deployment: String,
    pub service_account: String,
    pub lease_name: String,
    pub lease_namespace: String,
    /// The container's args, images included.
    pub args: Vec<String>,
}

/// Installs (or upgrades) the chart and scales its operator Deployment to zero: the tests run
/// the operator themselves, as the chart's ServiceAccount, so that they can kill replicas and
/// read their metrics; an in-cluster replica would compete for the Lease.
pub fn install(kubectl: &Kubectl) -> Result<InstalledOperator> {
    let chart = chart_dir();
    let chart = chart.to_str().context("chart path")?;
    helm(
        &kubectl.kubeconfig,
        &[
            "upgrade",
            "--install",
            RELEASE,
            chart,
            "--namespace",
            RELEASE_NAMESPACE,
            "--create-namespace",
            "--wait=false",
        ],
    )?;
    let deployments: Value = serde_json::from_str(&kubectl.run(&[
        "get",
        "deployments",
        "-n",
        RELEASE_NAMESPACE,
        "-l",
        &format!("app.kubernetes.io/instance={RELEASE}"),
        "-o",
        "json",
    ])?)?;
    let deployment = deployments["items"]
        .as_array()
        .and_then(|items| items.first())
        .context("the chart installed no operator Deployment")?;
    let name = deployment["metadata"]["name"].as_str().context("deployment name")?.to_string();
    let pod = &deployment["spec"]["template"]["spec"];
    let service_account =
        pod["serviceAccountName"].as_str().context("serviceAccountName")?.to_string();
    let args: Vec<String> = pod["containers"][0]["args"]
        .as_array()
        .context("operator args")?
        .iter()
        .filter_map(|a| a.as_str().map(str::to_string))
        .collect();
    let flag = |name: &str| {
        args.iter().find_map(|a| a.strip_prefix(&format!("--{name}=")).map(str::to_string))
    };
    let lease_name = flag("lease-name").context("the chart passes no --lease-name")?;
    let lease_namespace = flag("lease-namespace").unwrap_or_else(|| RELEASE_NAMESPACE.to_string());
    kubectl.run(&["scale", "deployment", &name, "-n", RELEASE_NAMESPACE, "--replicas=0"])?;
    Ok(InstalledOperator { deployment: name, service_account, lease_name, lease_namespace, args })
}
