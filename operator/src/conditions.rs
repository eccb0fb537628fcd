//! Status conditions computed from the observed children: a fixed vocabulary of types and
//! reasons, deterministic messages, and `lastTransitionTime` that moves only when a condition's
//! status flips. Pure: the caller passes the previous conditions and the current time.

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::crd::CollabModelStatus;
use crate::pods::{PodObserved, ProblemKind};

pub const READY: &str = "Ready";
pub const EDGE_READY: &str = "EdgeReady";
pub const CLOUD_READY: &str = "CloudReady";
pub const CONTEXT_READY: &str = "ContextReady";
pub const DEGRADED: &str = "Degraded";

/// Every reason a condition can carry.
pub mod reason {
    pub const ALL_READY: &str = "AllComponentsReady";
    pub const COMPONENTS_NOT_READY: &str = "ComponentsNotReady";
    pub const EDGE_PODS_READY: &str = "EdgePodsReady";
    pub const EDGE_DAEMON_SET_MISSING: &str = "EdgeDaemonSetMissing";
    pub const NO_EDGE_NODES: &str = "NoEdgeNodes";
    pub const EDGE_PODS_NOT_READY: &str = "EdgePodsNotReady";
    pub const CLOUD_AVAILABLE: &str = "CloudReplicasAvailable";
    pub const CLOUD_DEPLOYMENT_MISSING: &str = "CloudDeploymentMissing";
    pub const NO_CLOUD_REPLICA: &str = "NoCloudReplicaAvailable";
    pub const EXTERNAL_CLOUD: &str = "ExternalCloud";
    pub const NO_CLOUD_NEEDED: &str = "StandaloneWithoutCloud";
    pub const CONTEXT_NOT_NEEDED: &str = "ContextNotNeeded";
    pub const MANAGED_REDIS_READY: &str = "ManagedRedisReady";
    pub const MANAGED_REDIS_NOT_READY: &str = "ManagedRedisNotReady";
    pub const REDIS_REACHABLE: &str = "RedisReachable";
    pub const REDIS_UNREACHABLE: &str = "RedisUnreachable";
    pub const REDIS_NOT_PROBED: &str = "RedisNotProbed";
    pub const AS_EXPECTED: &str = "AsExpected";
    pub const RECONCILE_FAILED: &str = "ReconcileFailed";
    pub const PARTIALLY_AVAILABLE: &str = "PartiallyAvailable";
    /// Pods cannot download or verify the model bundle (wrong SHA-256, unreachable URL,
    /// corrupt archive).
    pub const BUNDLE_FETCH_FAILED: &str = "BundleFetchFailed";
    /// Edge or cloud pods do not start or keep exiting.
    pub const EDGE_PODS_FAILING: &str = "EdgePodsFailing";
    pub const CLOUD_PODS_FAILING: &str = "CloudPodsFailing";
    /// Ready edge pods report that they cannot reach the cloud (they answer alone).
    pub const CLOUD_LINK_DOWN: &str = "CloudLinkDown";
}

/// The edge DaemonSet as observed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EdgeObserved {
    /// Nodes that should run an edge pod.
    pub desired: i32,
    /// Edge pods that are ready.
    pub ready: i32,
}

impl EdgeObserved {
    pub fn from_daemon_set(ds: &DaemonSet) -> Self {
        let status = ds.status.as_ref();
        Self {
            desired: status.map_or(0, |s| s.desired_number_scheduled),
            ready: status.map_or(0, |s| s.number_ready),
        }
    }
}

/// The cloud as observed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CloudObserved {
    /// No cloud here and none needed (a standalone edge-only model).
    NotNeeded,
    /// Edge-only model whose cloud runs at this endpoint in another cluster.
    External(String),
    /// The cloud Deployment is expected but was not found.
    Missing,
    /// The cloud Deployment.
    Deployment { desired: i32, available: i32 },
}

impl CloudObserved {
    pub fn from_deployment(deploy: &Deployment) -> Self {
        let status = deploy.status.as_ref();
        Self::Deployment {
            desired: deploy.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1),
            available: status.and_then(|s| s.available_replicas).unwrap_or(0),
        }
    }
}

/// The cloud context store as observed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContextObserved {
    /// No cloud in this cluster, so no context store.
    NotNeeded,
    /// The operator-run Redis: ready or not (missing counts as not ready).
    Managed { ready: bool },
    /// A user-provided Redis; `None` until the controller has probed it.
    External { reachable: Option<bool> },
}

impl ContextObserved {
    pub fn from_managed(sts: Option<&StatefulSet>) -> Self {
        let ready = sts
            .and_then(|s| s.status.as_ref())
            .and_then(|s| s.ready_replicas)
            .is_some_and(|ready| ready >= 1);
        Self::Managed { ready }
    }
}

/// Everything the status is computed from.
#[derive(Clone, Debug, PartialEq)]
pub struct Observed {
    /// `None` when the DaemonSet was not found.
    pub edge: Option<EdgeObserved>,
    pub cloud: CloudObserved,
    pub context: ContextObserved,
    pub cloud_endpoint: Option<String>,
    /// The last reconcile's error, if it failed.
    pub reconcile_error: Option<String>,
    /// The model's edge and cloud pods (empty when they could not be listed).
    pub edge_pods: Vec<PodObserved>,
    pub cloud_pods: Vec<PodObserved>,
    /// Whether edges are meant to ask the cloud (collaborative mode): only then is a cloud link
    /// that is down a problem.
    pub collaborative: bool,
}

/// Status condition value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Truth {
    True,
    False,
    Unknown,
}

impl Truth {
    fn as_str(self) -> &'static str {
        match self {
            Truth::True => "True",
            Truth::False => "False",
            Truth::Unknown => "Unknown",
        }
    }
}

struct Verdict {
    type_: &'static str,
    status: Truth,
    reason: &'static str,
    message: String,
}

/// The first pod problem among `pods`, as (reason, "pod X on node Y: message (and N more)").
fn pod_problem(pods: &[PodObserved], other: &'static str) -> Option<(&'static str, String)> {
    let failing: Vec<&PodObserved> = pods.iter().filter(|p| p.problem.is_some()).collect();
    let first = failing.first()?;
    let problem = first.problem.as_ref()?;
    let reason = match problem.kind {
        ProblemKind::BundleFetch => reason::BUNDLE_FETCH_FAILED,
        _ => other,
    };
    let more = match failing.len() {
        1 => String::new(),
        n => format!(" (and {} more pods)", n - 1),
    };
    Some((reason, format!("{}: {}{more}", first.describe(), problem.message)))
}

/// Ready edge pods that report their cloud link down, in a collaborative model.
fn links_down(observed: &Observed) -> Vec<&PodObserved> {
    if !observed.collaborative {
        return Vec::new();
    }
    observed
        .edge_pods
        .iter()
        .filter(|p| p.ready && p.cloud_link.as_ref().is_some_and(|l| !l.up))
        .collect()
}

/// "N edge pods cannot reach the cloud (pod X on node Y: why)".
fn links_down_message(down: &[&PodObserved]) -> String {
    let first = down[0];
    let why = first.cloud_link.as_ref().map(|l| l.message.as_str()).unwrap_or_default();
    format!(
        "{} edge pod{} cannot reach the cloud and answer{} alone ({}: {why})",
        down.len(),
        if down.len() == 1 { "" } else { "s" },
        if down.len() == 1 { "s" } else { "" },
        first.describe()
    )
}

fn edge_verdict(observed: &Observed) -> Verdict {
    let edge = observed.edge;
    let problem = pod_problem(&observed.edge_pods, reason::EDGE_PODS_FAILING);
    let (status, reason, message) = match edge {
        None => (
            Truth::False,
            reason::EDGE_DAEMON_SET_MISSING,
            "the edge DaemonSet does not exist yet".to_string(),
        ),
        Some(EdgeObserved { desired: 0, .. }) => (
            Truth::False,
            reason::NO_EDGE_NODES,
            "no node matches the edge nodeSelector and tolerations".to_string(),
        ),
        Some(EdgeObserved { desired, ready }) if ready >= desired => {
            let mut message = format!("{ready} of {desired} edge pods ready");
            let down = links_down(observed);
            if !down.is_empty() {
                message.push_str("; ");
                message.push_str(&links_down_message(&down));
            }
            (Truth::True, reason::EDGE_PODS_READY, message)
        }
        Some(EdgeObserved { desired, ready }) => match problem {
            Some((reason, why)) => {
                (Truth::False, reason, format!("{ready} of {desired} edge pods ready; {why}"))
            }
            None => (
                Truth::False,
                reason::EDGE_PODS_NOT_READY,
                format!("{ready} of {desired} edge pods ready"),
            ),
        },
    };
    Verdict { type_: EDGE_READY, status, reason, message }
}

fn cloud_verdict(cloud: &CloudObserved, pods: &[PodObserved]) -> Verdict {
    let (status, reason, message) = match cloud {
        CloudObserved::NotNeeded => (
            Truth::True,
            reason::NO_CLOUD_NEEDED,
            "standalone edge-only model: no cloud needed".to_string(),
        ),
        CloudObserved::External(endpoint) => (
            Truth::True,
            reason::EXTERNAL_CLOUD,
            format!("the cloud runs outside this cluster at {endpoint}"),
        ),
        CloudObserved::Missing => (
            Truth::False,
            reason::CLOUD_DEPLOYMENT_MISSING,
            "the cloud Deployment does not exist yet".to_string(),
        ),
        CloudObserved::Deployment { desired, available: 0 } => {
            match pod_problem(pods, reason::CLOUD_PODS_FAILING) {
                Some((reason, why)) => (
                    Truth::False,
                    reason,
                    format!("0 of {desired} cloud replicas available; {why}"),
                ),
                None => (
                    Truth::False,
                    reason::NO_CLOUD_REPLICA,
                    format!("0 of {desired} cloud replicas available"),
                ),
            }
        }
        CloudObserved::Deployment { desired, available } => (
            Truth::True,
            reason::CLOUD_AVAILABLE,
            format!("{available} of {desired} cloud replicas available"),
        ),
    };
    Verdict { type_: CLOUD_READY, status, reason, message }
}

fn context_verdict(context: ContextObserved) -> Verdict {
    let (status, reason, message) = match context {
        ContextObserved::NotNeeded => (
            Truth::True,
            reason::CONTEXT_NOT_NEEDED,
            "no cloud in this cluster keeps a context".to_string(),
        ),
        ContextObserved::Managed { ready: true } => {
            (Truth::True, reason::MANAGED_REDIS_READY, "the managed Redis is ready".to_string())
        }
        ContextObserved::Managed { ready: false } => (
            Truth::False,
            reason::MANAGED_REDIS_NOT_READY,
            "the managed Redis is not ready".to_string(),
        ),
        ContextObserved::External { reachable: Some(true) } => {
            (Truth::True, reason::REDIS_REACHABLE, "Redis answers".to_string())
        }
        ContextObserved::External { reachable: Some(false) } => {
            (Truth::False, reason::REDIS_UNREACHABLE, "Redis does not answer".to_string())
        }
        ContextObserved::External { reachable: None } => {
            (Truth::Unknown, reason::REDIS_NOT_PROBED, "Redis has not been probed yet".to_string())
        }
    };
    Verdict { type_: CONTEXT_READY, status, reason, message }
}

fn ready_verdict(parts: &[&Verdict]) -> Verdict {
    let blocking: Vec<String> = parts
        .iter()
        .filter(|v| v.status != Truth::True)
        .map(|v| format!("{}: {}", v.type_, v.message))
        .collect();
    if blocking.is_empty() {
        Verdict {
            type_: READY,
            status: Truth::True,
            reason: reason::ALL_READY,
            message: "edge, cloud and context are ready".to_string(),
        }
    } else {
        Verdict {
            type_: READY,
            status: Truth::False,
            reason: reason::COMPONENTS_NOT_READY,
            message: blocking.join("; "),
        }
    }
}

fn degraded_verdict(observed: &Observed) -> Verdict {
    let down = links_down(observed);
    let partial_edge = observed.edge.is_some_and(|e| e.ready > 0 && e.ready < e.desired);
    let partial_cloud = matches!(
        observed.cloud,
        CloudObserved::Deployment { desired, available } if available > 0 && available < desired
    );
    let (status, reason, message) = if let Some(err) = &observed.reconcile_error {
        (Truth::True, reason::RECONCILE_FAILED, err.clone())
    } else if !down.is_empty() {
        (Truth::True, reason::CLOUD_LINK_DOWN, links_down_message(&down))
    } else if partial_edge || partial_cloud {
        let mut parts = Vec::new();
        if let Some(e) = observed.edge.filter(|_| partial_edge) {
            parts.push(format!("{} of {} edge pods ready", e.ready, e.desired));
        }
        if let CloudObserved::Deployment { desired, available } = observed.cloud
            && partial_cloud
        {
            parts.push(format!("{available} of {desired} cloud replicas available"));
        }
        (Truth::True, reason::PARTIALLY_AVAILABLE, parts.join("; "))
    } else {
        (Truth::False, reason::AS_EXPECTED, "no component is partially available".to_string())
    };
    Verdict { type_: DEGRADED, status, reason, message }
}

/// The status for `generation`, given what was observed and the previous status (for stable
/// transition times). Conditions come in a fixed order: Ready, EdgeReady, CloudReady,
/// ContextReady, Degraded.
pub fn status(
    observed: &Observed,
    previous: Option<&CollabModelStatus>,
    generation: Option<i64>,
    now: &Time,
) -> CollabModelStatus {
    let edge = edge_verdict(observed);
    let cloud = cloud_verdict(&observed.cloud, &observed.cloud_pods);
    let context = context_verdict(observed.context);
    let down = links_down(observed);
    // A collaborative model whose edges cannot reach the cloud is not ready as specified, even
    // though its edge pods serve (alone).
    let link = Verdict {
        type_: "CloudLink",
        status: if down.is_empty() { Truth::True } else { Truth::False },
        reason: reason::CLOUD_LINK_DOWN,
        message: if down.is_empty() { String::new() } else { links_down_message(&down) },
    };
    let ready = ready_verdict(&[&edge, &cloud, &context, &link]);
    let degraded = degraded_verdict(observed);

    let previous_conditions = previous.map(|p| p.conditions.as_slice()).unwrap_or_default();
    let conditions = [ready, edge, cloud, context, degraded]
        .into_iter()
        .map(|v| condition(v, previous_conditions, generation, now))
        .collect();

    CollabModelStatus {
        conditions,
        observed_generation: generation,
        ready_edge_nodes: observed.edge.map_or(0, |e| e.ready),
        cloud_replicas: match observed.cloud {
            CloudObserved::Deployment { available, .. } => available,
            _ => 0,
        },
        cloud_endpoint: observed.cloud_endpoint.clone(),
    }
}

fn condition(
    verdict: Verdict,
    previous: &[Condition],
    generation: Option<i64>,
    now: &Time,
) -> Condition {
    let status = verdict.status.as_str();
    let last_transition_time = previous
        .iter()
        .find(|c| c.type_ == verdict.type_ && c.status == status)
        .map_or_else(|| now.clone(), |c| c.last_transition_time.clone());
    Condition {
        type_: verdict.type_.to_string(),
        status: status.to_string(),
        reason: verdict.reason.to_string(),
        message: verdict.message,
        observed_generation: generation,
        last_transition_time,
    }
}

#[cfg(test)]
mod tests;
