//! What the status is computed from, folded from the workloads the API server returned. Pure.

use k8s_openapi::api::core::v1::Pod;

use crate::conditions::{CloudObserved, ContextObserved, EdgeObserved, Observed};
use crate::crd::{CollabModel, Mode};
use crate::pods::PodObserved;
use crate::render::{Component, ModelRef, cloud_endpoint};

use super::apply::Applied;

/// The model's pods of one component, as the status needs them.
fn pods_of(pods: &[Pod], component: Component) -> Vec<PodObserved> {
    let mut found: Vec<PodObserved> = pods
        .iter()
        .filter(|p| {
            p.metadata.labels.as_ref().and_then(|l| l.get("app.kubernetes.io/component"))
                == Some(&component.as_str().to_string())
        })
        .map(PodObserved::from_pod)
        .collect();
    // Deterministic messages: the same pods in the same order every time.
    found.sort_by(|a, b| a.name.cmp(&b.name));
    found
}

pub fn observed(
    model: &CollabModel,
    at: &ModelRef,
    workloads: &Applied,
    context: ContextObserved,
    reconcile_error: Option<String>,
    pods: &[Pod],
) -> Observed {
    let spec = &model.spec;
    let cloud = if let Some(endpoint) = &spec.external_cloud_endpoint {
        CloudObserved::External(endpoint.clone())
    } else if !spec.cloud.enabled {
        CloudObserved::NotNeeded
    } else {
        workloads.cloud.as_ref().map_or(CloudObserved::Missing, CloudObserved::from_deployment)
    };
    Observed {
        edge: workloads.edge.as_ref().map(EdgeObserved::from_daemon_set),
        cloud,
        context: if spec.cloud.enabled { context } else { ContextObserved::NotNeeded },
        cloud_endpoint: cloud_endpoint(model, at).map(|e| e.url),
        reconcile_error,
        edge_pods: pods_of(pods, Component::Edge),
        cloud_pods: pods_of(pods, Component::Cloud),
        collaborative: spec.mode == Mode::Collaborative,
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::apps::v1::{
        DaemonSet, DaemonSetStatus, Deployment, DeploymentSpec, DeploymentStatus,
    };

    use super::*;
    use crate::crd::Mode;

    fn at(model: &CollabModel) -> ModelRef {
        ModelRef::of(model).expect("stored")
    }

    fn workloads(edge_ready: i32, cloud_available: i32) -> Applied {
        Applied {
            edge: Some(DaemonSet {
                status: Some(DaemonSetStatus {
                    desired_number_scheduled: 2,
                    number_ready: edge_ready,
                    ..DaemonSetStatus::default()
                }),
                ..DaemonSet::default()
            }),
            cloud: Some(Deployment {
                spec: Some(DeploymentSpec { replicas: Some(2), ..DeploymentSpec::default() }),
                status: Some(DeploymentStatus {
                    available_replicas: Some(cloud_available),
                    ..DeploymentStatus::default()
                }),
                ..Deployment::default()
            }),
            ..Applied::default()
        }
    }

    #[test]
    fn applied_workloads_become_the_observed_edge_cloud_and_endpoint() {
        let model = CollabModel::fixture();
        let seen = observed(
            &model,
            &at(&model),
            &workloads(1, 2),
            ContextObserved::Managed { ready: true },
            None,
            &[],
        );
        assert_eq!(seen.edge, Some(EdgeObserved { desired: 2, ready: 1 }));
        assert_eq!(seen.cloud, CloudObserved::Deployment { desired: 2, available: 2 });
        assert_eq!(seen.cloud_endpoint.as_deref(), Some("http://chat-cloud.models.svc:50051"));
    }

    #[test]
    fn a_cloud_that_failed_to_apply_is_missing_and_the_error_is_kept() {
        let model = CollabModel::fixture();
        let seen = observed(
            &model,
            &at(&model),
            &Applied::default(),
            ContextObserved::Managed { ready: false },
            Some("boom".into()),
            &[],
        );
        assert_eq!(seen.edge, None);
        assert_eq!(seen.cloud, CloudObserved::Missing);
        assert_eq!(seen.reconcile_error.as_deref(), Some("boom"));
    }

    #[test]
    fn edge_only_models_need_no_local_cloud_or_context() {
        let mut model = CollabModel::fixture();
        model.spec.cloud.enabled = false;
        model.spec.external_cloud_endpoint = Some("cloud.example:443".into());
        let seen = observed(
            &model,
            &at(&model),
            &workloads(2, 0),
            ContextObserved::Managed { ready: false },
            None,
            &[],
        );
        assert_eq!(seen.cloud, CloudObserved::External("cloud.example:443".into()));
        assert_eq!(seen.cloud_endpoint.as_deref(), Some("http://cloud.example:443"));
        assert_eq!(seen.context, ContextObserved::NotNeeded);

        model.spec.external_cloud_endpoint = None;
        model.spec.mode = Mode::Standalone;
        let seen =
            observed(&model, &at(&model), &workloads(2, 0), ContextObserved::NotNeeded, None, &[]);
        assert_eq!(seen.cloud, CloudObserved::NotNeeded);
        assert_eq!(seen.cloud_endpoint, None);
    }
}
