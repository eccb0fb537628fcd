use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

use super::*;
use crate::pods::PodObserved;

fn at(second: i64) -> Time {
    Time(Timestamp::from_second(1_760_000_000 + second).expect("valid time"))
}

fn observed(edge: Option<EdgeObserved>, cloud: CloudObserved) -> Observed {
    Observed {
        edge,
        cloud,
        context: ContextObserved::Managed { ready: true },
        cloud_endpoint: Some("chat-cloud.models.svc:50051".to_string()),
        reconcile_error: None,
        edge_pods: Vec::new(),
        cloud_pods: Vec::new(),
        collaborative: true,
    }
}

fn all_up() -> Observed {
    observed(
        Some(EdgeObserved { desired: 3, ready: 3 }),
        CloudObserved::Deployment { desired: 2, available: 2 },
    )
}

fn get<'a>(status: &'a CollabModelStatus, type_: &str) -> &'a Condition {
    status.conditions.iter().find(|c| c.type_ == type_).expect("condition present")
}

#[test]
fn everything_up_is_ready_and_not_degraded() {
    let status = status(&all_up(), None, Some(4), &at(0));
    for type_ in [READY, EDGE_READY, CLOUD_READY, CONTEXT_READY] {
        assert_eq!(get(&status, type_).status, "True", "{type_}");
    }
    assert_eq!(get(&status, DEGRADED).status, "False");
    assert_eq!((status.ready_edge_nodes, status.cloud_replicas), (3, 2));
    assert_eq!(status.cloud_endpoint.as_deref(), Some("chat-cloud.models.svc:50051"));
}

#[test]
fn edge_not_ready_while_no_edge_pod_is_ready() {
    let obs = observed(
        Some(EdgeObserved { desired: 3, ready: 0 }),
        CloudObserved::Deployment { desired: 2, available: 2 },
    );
    let status = status(&obs, None, Some(1), &at(0));
    let edge = get(&status, EDGE_READY);
    assert_eq!(edge.status, "False");
    assert_eq!(edge.reason, reason::EDGE_PODS_NOT_READY);
    assert_eq!(edge.message, "0 of 3 edge pods ready");
    let ready = get(&status, READY);
    assert_eq!(ready.status, "False");
    assert_eq!(ready.message, "EdgeReady: 0 of 3 edge pods ready");
    assert_eq!(status.ready_edge_nodes, 0);
}

#[test]
fn no_matching_edge_node_says_so() {
    let obs = observed(
        Some(EdgeObserved { desired: 0, ready: 0 }),
        CloudObserved::Deployment { desired: 1, available: 1 },
    );
    let edge = get(&status(&obs, None, Some(1), &at(0)), EDGE_READY).clone();
    assert_eq!((edge.status.as_str(), edge.reason.as_str()), ("False", reason::NO_EDGE_NODES));
    assert!(edge.message.contains("nodeSelector"));
}

#[test]
fn missing_children_are_not_ready_with_their_own_reasons() {
    let obs = Observed {
        context: ContextObserved::from_managed(None),
        ..observed(None, CloudObserved::Missing)
    };
    let status = status(&obs, None, Some(1), &at(0));
    assert_eq!(get(&status, EDGE_READY).reason, reason::EDGE_DAEMON_SET_MISSING);
    assert_eq!(get(&status, CLOUD_READY).reason, reason::CLOUD_DEPLOYMENT_MISSING);
    assert_eq!(get(&status, CONTEXT_READY).reason, reason::MANAGED_REDIS_NOT_READY);
    assert_eq!(
        get(&status, READY).message,
        "EdgeReady: the edge DaemonSet does not exist yet; \
         CloudReady: the cloud Deployment does not exist yet; \
         ContextReady: the managed Redis is not ready"
    );
}

#[test]
fn cloud_without_available_replicas_is_not_ready() {
    let obs = observed(
        Some(EdgeObserved { desired: 1, ready: 1 }),
        CloudObserved::Deployment { desired: 2, available: 0 },
    );
    let cloud = get(&status(&obs, None, Some(1), &at(0)), CLOUD_READY).clone();
    assert_eq!((cloud.status.as_str(), cloud.reason.as_str()), ("False", reason::NO_CLOUD_REPLICA));
}

#[test]
fn partial_availability_is_degraded_not_down() {
    let obs = observed(
        Some(EdgeObserved { desired: 4, ready: 3 }),
        CloudObserved::Deployment { desired: 3, available: 1 },
    );
    let status = status(&obs, None, Some(1), &at(0));
    let degraded = get(&status, DEGRADED);
    assert_eq!(degraded.status, "True");
    assert_eq!(degraded.reason, reason::PARTIALLY_AVAILABLE);
    assert_eq!(degraded.message, "3 of 4 edge pods ready; 1 of 3 cloud replicas available");
    assert_eq!(get(&status, CLOUD_READY).status, "True");
}

#[test]
fn reconcile_error_is_reported_as_degraded() {
    let obs =
        Observed { reconcile_error: Some("applying chat-edge: forbidden".into()), ..all_up() };
    let degraded = get(&status(&obs, None, Some(1), &at(0)), DEGRADED).clone();
    assert_eq!(degraded.status, "True");
    assert_eq!(degraded.reason, reason::RECONCILE_FAILED);
    assert_eq!(degraded.message, "applying chat-edge: forbidden");
}

#[test]
fn external_redis_is_unknown_until_probed() {
    let obs = Observed { context: ContextObserved::External { reachable: None }, ..all_up() };
    let status = status(&obs, None, Some(1), &at(0));
    assert_eq!(get(&status, CONTEXT_READY).status, "Unknown");
    assert_eq!(get(&status, READY).status, "False");
}

#[test]
fn edge_only_models_do_not_wait_for_a_local_cloud() {
    let obs = Observed {
        context: ContextObserved::NotNeeded,
        ..observed(
            Some(EdgeObserved { desired: 2, ready: 2 }),
            CloudObserved::External("cloud.example:443".to_string()),
        )
    };
    let status = status(&obs, None, Some(1), &at(0));
    assert_eq!(get(&status, READY).status, "True");
    assert_eq!(get(&status, CLOUD_READY).reason, reason::EXTERNAL_CLOUD);
}

#[test]
fn identical_reconciles_keep_transition_times() {
    let first = status(&all_up(), None, Some(1), &at(0));
    let second = status(&all_up(), Some(&first), Some(1), &at(60));
    assert_eq!(first, second, "nothing changed, so the status must not change");
}

#[test]
fn transition_time_moves_only_for_the_condition_that_flipped() {
    let first = status(&all_up(), None, Some(1), &at(0));
    let edge_down = observed(
        Some(EdgeObserved { desired: 3, ready: 0 }),
        CloudObserved::Deployment { desired: 2, available: 2 },
    );
    let second = status(&edge_down, Some(&first), Some(2), &at(60));
    assert_eq!(get(&second, EDGE_READY).last_transition_time, at(60));
    assert_eq!(get(&second, READY).last_transition_time, at(60));
    assert_eq!(get(&second, CLOUD_READY).last_transition_time, at(0));
    assert_eq!(get(&second, DEGRADED).last_transition_time, at(0));
    // A message change without a flip keeps the time too.
    let edge_still_down = observed(
        Some(EdgeObserved { desired: 4, ready: 0 }),
        CloudObserved::Deployment { desired: 2, available: 2 },
    );
    let third = status(&edge_still_down, Some(&second), Some(2), &at(120));
    assert_eq!(get(&third, EDGE_READY).last_transition_time, at(60));
    assert_eq!(get(&third, EDGE_READY).message, "0 of 4 edge pods ready");
}

#[test]
fn every_condition_carries_the_observed_generation() {
    let status = status(&all_up(), None, Some(7), &at(0));
    assert_eq!(status.observed_generation, Some(7));
    assert_eq!(status.conditions.len(), 5);
    assert!(status.conditions.iter().all(|c| c.observed_generation == Some(7)));
}

#[test]
fn observations_come_from_child_status() {
    use k8s_openapi::api::apps::v1::{DaemonSetStatus, DeploymentSpec, DeploymentStatus};
    let ds = DaemonSet {
        status: Some(DaemonSetStatus {
            desired_number_scheduled: 5,
            number_ready: 2,
            ..DaemonSetStatus::default()
        }),
        ..DaemonSet::default()
    };
    assert_eq!(EdgeObserved::from_daemon_set(&ds), EdgeObserved { desired: 5, ready: 2 });
    let deploy = Deployment {
        spec: Some(DeploymentSpec { replicas: Some(3), ..DeploymentSpec::default() }),
        status: Some(DeploymentStatus { available_replicas: Some(2), ..Default::default() }),
        ..Deployment::default()
    };
    assert_eq!(
        CloudObserved::from_deployment(&deploy),
        CloudObserved::Deployment { desired: 3, available: 2 }
    );
}

fn edge_pod(name: &str, ready: bool, link_up: Option<bool>) -> PodObserved {
    PodObserved {
        name: name.to_string(),
        node: Some(format!("node-{name}")),
        ready,
        problem: None,
        cloud_link: link_up.map(|up| crate::pods::LinkObserved {
            up,
            message: if up { "connected".into() } else { "no cloud replica answers".into() },
        }),
    }
}

#[test]
fn an_edge_that_cannot_reach_its_cloud_serves_but_the_model_is_degraded_and_not_ready() {
    let mut obs = all_up();
    obs.edge_pods = vec![
        edge_pod("a", true, Some(true)),
        edge_pod("b", true, Some(false)),
        edge_pod("c", true, None),
    ];
    let status = status(&obs, None, Some(2), &at(0));
    let edge = get(&status, EDGE_READY);
    assert_eq!(edge.status, "True", "the pods serve, standalone");
    assert!(edge.message.contains("1 edge pod cannot reach the cloud"), "{}", edge.message);
    assert!(edge.message.contains("node-b") && edge.message.contains("no cloud replica answers"));
    let degraded = get(&status, DEGRADED);
    assert_eq!(
        (degraded.status.as_str(), degraded.reason.as_str()),
        ("True", reason::CLOUD_LINK_DOWN)
    );
    let ready = get(&status, READY);
    assert_eq!(ready.status, "False");
    assert!(ready.message.contains("cannot reach the cloud"), "{}", ready.message);

    // A standalone model never asks the cloud: its link is nobody's concern.
    obs.collaborative = false;
    let standalone = super::status(&obs, None, Some(2), &at(0));
    assert_eq!(get(&standalone, READY).status, "True");
    assert_eq!(get(&standalone, DEGRADED).status, "False");
}

#[test]
fn a_bundle_that_cannot_be_fetched_is_the_reason_pods_are_not_ready() {
    let mut obs = observed(
        Some(EdgeObserved { desired: 2, ready: 0 }),
        CloudObserved::Deployment { desired: 1, available: 0 },
    );
    let why = "bundle http://b/m.tar: SHA-256 mismatch: the download has 12, the model expects 34";
    let failing = |name: &str| PodObserved {
        problem: Some(crate::pods::PodProblem {
            kind: crate::pods::ProblemKind::BundleFetch,
            message: why.to_string(),
        }),
        ..edge_pod(name, false, None)
    };
    obs.edge_pods = vec![failing("a"), failing("b")];
    obs.cloud_pods = vec![failing("c")];
    let status = status(&obs, None, Some(2), &at(0));
    let edge = get(&status, EDGE_READY);
    assert_eq!(
        (edge.status.as_str(), edge.reason.as_str()),
        ("False", reason::BUNDLE_FETCH_FAILED)
    );
    assert_eq!(
        edge.message,
        format!("0 of 2 edge pods ready; pod a on node node-a: {why} (and 1 more pods)")
    );
    let cloud = get(&status, CLOUD_READY);
    assert_eq!(cloud.reason, reason::BUNDLE_FETCH_FAILED);
    assert!(cloud.message.contains("http://b/m.tar") && cloud.message.contains("34"));
    assert!(get(&status, READY).message.contains("SHA-256 mismatch"));
}
