//! The agent's cloud link, reported where Kubernetes users look: a condition on the agent's own
//! pod (`collm.dev/CloudLink`). The agent stays ready when the cloud is unreachable (it answers
//! alone), so readiness cannot carry this; the operator reads the condition from the pod status
//! it already watches and shows `Degraded` with reason `CloudLinkDown` on the model, without
//! polling any pod.
//!
//! Written with server-side apply under its own field manager, so only this condition is the
//! agent's; the kubelet keeps the others. Written when the state changes and again every few
//! minutes (a write lost to an API outage is repaired). Outside a pod (no `POD_NAME` and
//! `POD_NAMESPACE`) nothing is reported.

use std::time::{Duration, Instant};

use collm_cloud_client::{CloudLink, LinkStatus};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Patch, PatchParams};
use serde_json::json;

/// The condition type on the pod.
pub const CONDITION: &str = "collm.dev/CloudLink";
/// Field manager of the agent's writes.
const MANAGER: &str = "collm-edge-agent";
/// How often the link is looked at.
const CHECK: Duration = Duration::from_secs(1);
/// How often an unchanged condition is written again.
const REASSERT: Duration = Duration::from_secs(300);

/// The pod this agent runs in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodRef {
    pub name: String,
    pub namespace: String,
}

impl PodRef {
    /// From the downward-API variables the operator renders; `None` outside a pod.
    pub fn from_env() -> Option<Self> {
        let get = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        Some(Self { name: get("POD_NAME")?, namespace: get("POD_NAMESPACE")? })
    }
}

/// What the condition says. Pure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkReport {
    pub up: bool,
    pub reason: &'static str,
    pub message: String,
}

impl LinkReport {
    pub fn of(status: &LinkStatus) -> Self {
        if status.connected.is_empty() {
            let why = status.last_error.clone().unwrap_or_else(|| "not connected yet".to_string());
            return Self {
                up: false,
                reason: "CloudUnreachable",
                message: format!("no cloud replica answers; the edge answers alone: {why}"),
            };
        }
        Self {
            up: true,
            reason: "CloudReachable",
            message: format!(
                "connected to {} of {} cloud replica{}",
                status.connected.len(),
                status.known,
                if status.known == 1 { "" } else { "s" }
            ),
        }
    }
}

/// Reports until the process ends. Errors are logged and retried: the agent serves whatever
/// happens to its reports.
pub async fn run(link: CloudLink, pod: PodRef) {
    let client = match kube::Client::try_default().await {
        Ok(client) => client,
        Err(e) => {
            tracing::warn!(error = %e, "cannot reach the Kubernetes API: the cloud link is not reported on the pod");
            return;
        }
    };
    let api: kube::Api<Pod> = kube::Api::namespaced(client, &pod.namespace);
    let mut written: Option<(LinkReport, Instant)> = None;
    let mut since = jiff_now();
    loop {
        let report = LinkReport::of(&link.status());
        let due = match &written {
            None => true,
            Some((last, at)) => *last != report || at.elapsed() >= REASSERT,
        };
        if due {
            if written.as_ref().is_none_or(|(last, _)| last.up != report.up) {
                since = jiff_now();
            }
            match write(&api, &pod.name, &report, &since).await {
                Ok(()) => {
                    tracing::info!(up = report.up, message = %report.message, "cloud link reported on the pod");
                    written = Some((report, Instant::now()));
                }
                Err(e) => tracing::warn!(error = %e, "cannot report the cloud link on the pod"),
            }
        }
        tokio::time::sleep(CHECK).await;
    }
}

fn jiff_now() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .round(k8s_openapi::jiff::Unit::Second)
        .map_or_else(|_| k8s_openapi::jiff::Timestamp::now().to_string(), |t| t.to_string())
}

async fn write(
    api: &kube::Api<Pod>,
    name: &str,
    report: &LinkReport,
    since: &str,
) -> Result<(), kube::Error> {
    let patch = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "status": {"conditions": [{
            "type": CONDITION,
            "status": if report.up { "True" } else { "False" },
            "reason": report.reason,
            "message": report.message,
            "lastTransitionTime": since,
        }]},
    });
    api.patch_status(name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(&patch)).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(connected: &[&str], known: usize, error: Option<&str>) -> LinkStatus {
        LinkStatus {
            endpoint: connected.first().map(|s| s.to_string()),
            estimate: None,
            reconnects: 0,
            connected: connected.iter().map(|s| s.to_string()).collect(),
            known,
            last_error: error.map(str::to_string),
        }
    }

    #[test]
    fn a_link_with_a_replica_is_up_and_says_how_many() {
        let r =
            LinkReport::of(&status(&["http://10.0.0.1:50051", "http://10.0.0.2:50051"], 3, None));
        assert!(r.up);
        assert_eq!(r.reason, "CloudReachable");
        assert_eq!(r.message, "connected to 2 of 3 cloud replicas");
    }

    #[test]
    fn a_link_without_one_is_down_and_says_why() {
        let r = LinkReport::of(&status(&[], 1, Some("http://c:1: connection refused")));
        assert!(!r.up);
        assert_eq!(r.reason, "CloudUnreachable");
        assert!(r.message.contains("connection refused") && r.message.contains("answers alone"));
    }
}
