//! What the model's pods say about themselves, folded into what the status needs: whether each
//! is ready, why one does not run (a bundle that cannot be fetched, a runtime that exits, an
//! image that cannot be pulled), and an edge pod's own report of its cloud link. Pure.

use k8s_openapi::api::core::v1::{ContainerStatus, Pod};

use crate::render::edge::CLOUD_LINK_CONDITION;
use crate::render::pod::FETCH_CONTAINER;

/// Why a pod does not run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProblemKind {
    /// The fetch-bundle init container failed: wrong SHA-256, unreachable URL, corrupt archive.
    BundleFetch,
    /// The runtime container exits (a bad bundle, configuration or credentials).
    Crash,
    /// The image cannot be pulled.
    Image,
    /// The pod cannot be started as specified (a missing Secret or ConfigMap, ...).
    Config,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodProblem {
    pub kind: ProblemKind,
    pub message: String,
}

/// An edge agent's report of its link to the cloud (the pod condition it sets on its own pod).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkObserved {
    pub up: bool,
    pub message: String,
}

/// One pod of the model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodObserved {
    pub name: String,
    pub node: Option<String>,
    pub ready: bool,
    pub problem: Option<PodProblem>,
    pub cloud_link: Option<LinkObserved>,
}

impl PodObserved {
    pub fn from_pod(pod: &Pod) -> Self {
        let status = pod.status.as_ref();
        let condition = |type_: &str| {
            status
                .and_then(|s| s.conditions.as_ref())
                .and_then(|cs| cs.iter().find(|c| c.type_ == type_))
        };
        let ready = condition("Ready").is_some_and(|c| c.status == "True");
        let cloud_link = condition(CLOUD_LINK_CONDITION).map(|c| LinkObserved {
            up: c.status == "True",
            message: c.message.clone().unwrap_or_default(),
        });
        let init = status.and_then(|s| s.init_container_statuses.as_deref()).unwrap_or_default();
        let main = status.and_then(|s| s.container_statuses.as_deref()).unwrap_or_default();
        let problem = if ready {
            None
        } else {
            init.iter()
                .find(|c| c.name == FETCH_CONTAINER)
                .and_then(|c| container_problem(c, ProblemKind::BundleFetch))
                .or_else(|| init.iter().find_map(|c| container_problem(c, ProblemKind::Crash)))
                .or_else(|| main.iter().find_map(|c| container_problem(c, ProblemKind::Crash)))
        };
        Self {
            name: pod.metadata.name.clone().unwrap_or_default(),
            node: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
            ready,
            problem,
            cloud_link,
        }
    }

    /// `pod NAME on node NODE`.
    pub fn describe(&self) -> String {
        match &self.node {
            Some(node) => format!("pod {} on node {node}", self.name),
            None => format!("pod {}", self.name),
        }
    }
}

/// A container's failure: the message of its last failed run (the runtime's termination
/// message, or its last log lines), or why it cannot start.
fn container_problem(status: &ContainerStatus, exit_kind: ProblemKind) -> Option<PodProblem> {
    let state = status.state.as_ref();
    if let Some(waiting) = state.and_then(|s| s.waiting.as_ref()) {
        let reason = waiting.reason.as_deref().unwrap_or_default();
        let kind = match reason {
            "ErrImagePull" | "ImagePullBackOff" | "InvalidImageName" => Some(ProblemKind::Image),
            "CreateContainerConfigError" | "CreateContainerError" => Some(ProblemKind::Config),
            _ => None,
        };
        if let Some(kind) = kind {
            let message = waiting.message.clone().unwrap_or_else(|| reason.to_string());
            return Some(PodProblem { kind, message: one_line(&message) });
        }
    }
    // The current run failed, or the last one did and the container waits to restart.
    let failed = [state, status.last_state.as_ref()]
        .into_iter()
        .flatten()
        .filter_map(|s| s.terminated.as_ref())
        .find(|t| t.exit_code != 0)?;
    let message = failed
        .message
        .as_deref()
        .map(one_line)
        .filter(|m| !m.is_empty())
        .unwrap_or_else(|| format!("{} exited with code {}", status.name, failed.exit_code));
    Some(PodProblem { kind: exit_kind, message })
}

/// The last non-empty line of a termination message (a log tail may hold several), trimmed of
/// the `error: ` the runtimes start their one-line failures with, and cut to a readable length.
fn one_line(text: &str) -> String {
    let line = text.lines().rev().map(str::trim).find(|l| !l.is_empty()).unwrap_or_default();
    let line = line.strip_prefix("error: ").unwrap_or(line);
    let mut line = line.to_string();
    if line.len() > 600 {
        let mut end = 600;
        while !line.is_char_boundary(end) {
            end -= 1;
        }
        line.truncate(end);
        line.push('…');
    }
    line
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{
        ContainerState, ContainerStateTerminated, ContainerStateWaiting, PodCondition, PodSpec,
        PodStatus,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::*;

    fn pod(status: PodStatus) -> Pod {
        Pod {
            metadata: ObjectMeta { name: Some("chat-edge-x".into()), ..ObjectMeta::default() },
            spec: Some(PodSpec { node_name: Some("edge-1".into()), ..PodSpec::default() }),
            status: Some(status),
        }
    }

    fn condition(type_: &str, status: &str, message: &str) -> PodCondition {
        PodCondition {
            type_: type_.into(),
            status: status.into(),
            message: Some(message.into()),
            ..PodCondition::default()
        }
    }

    fn terminated(name: &str, code: i32, message: &str, now: bool) -> ContainerStatus {
        let t = ContainerState {
            terminated: Some(ContainerStateTerminated {
                exit_code: code,
                message: Some(message.into()),
                ..ContainerStateTerminated::default()
            }),
            ..ContainerState::default()
        };
        let waiting = ContainerState {
            waiting: Some(ContainerStateWaiting {
                reason: Some("CrashLoopBackOff".into()),
                ..ContainerStateWaiting::default()
            }),
            ..ContainerState::default()
        };
        ContainerStatus {
            name: name.into(),
            state: Some(if now { t.clone() } else { waiting }),
            last_state: (!now).then_some(t),
            ..ContainerStatus::default()
        }
    }

    #[test]
    fn a_failing_fetch_is_read_from_the_init_containers_termination_message() {
        let message =
            "bundle http://b/m.tar: SHA-256 mismatch: the download has 12, the model expects 34";
        let p = PodObserved::from_pod(&pod(PodStatus {
            init_container_statuses: Some(vec![terminated(FETCH_CONTAINER, 1, message, false)]),
            ..PodStatus::default()
        }));
        assert!(!p.ready);
        assert_eq!(
            p.problem,
            Some(PodProblem { kind: ProblemKind::BundleFetch, message: message.into() })
        );
        assert_eq!(p.describe(), "pod chat-edge-x on node edge-1");
    }

    #[test]
    fn a_crashing_runtime_an_unpullable_image_and_a_missing_secret_are_told_apart() {
        let crash = PodObserved::from_pod(&pod(PodStatus {
            container_statuses: Some(vec![terminated(
                "edge-agent",
                1,
                "loading\nerror: loading the bundle: manifest.json is missing\n",
                true,
            )]),
            ..PodStatus::default()
        }));
        let problem = crash.problem.expect("a problem");
        assert_eq!(problem.kind, ProblemKind::Crash);
        assert_eq!(problem.message, "loading the bundle: manifest.json is missing");

        let waiting = |reason: &str| ContainerStatus {
            name: "edge-agent".into(),
            state: Some(ContainerState {
                waiting: Some(ContainerStateWaiting {
                    reason: Some(reason.into()),
                    message: Some(format!("{reason}: details")),
                }),
                ..ContainerState::default()
            }),
            ..ContainerStatus::default()
        };
        for (reason, kind) in [
            ("ImagePullBackOff", ProblemKind::Image),
            ("CreateContainerConfigError", ProblemKind::Config),
        ] {
            let p = PodObserved::from_pod(&pod(PodStatus {
                container_statuses: Some(vec![waiting(reason)]),
                ..PodStatus::default()
            }));
            assert_eq!(p.problem.map(|p| p.kind), Some(kind), "{reason}");
        }
    }

    #[test]
    fn ready_pods_have_no_problem_and_report_their_cloud_link() {
        let p = PodObserved::from_pod(&pod(PodStatus {
            conditions: Some(vec![
                condition("Ready", "True", ""),
                condition(CLOUD_LINK_CONDITION, "False", "no cloud replica answers"),
            ]),
            // A restart long ago does not make a ready pod a problem.
            container_statuses: Some(vec![terminated("edge-agent", 1, "old", false)]),
            ..PodStatus::default()
        }));
        assert!(p.ready);
        assert_eq!(p.problem, None);
        assert_eq!(
            p.cloud_link,
            Some(LinkObserved { up: false, message: "no cloud replica answers".into() })
        );
    }
}
