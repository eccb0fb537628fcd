//! What one reconcile writes: the rendered children to apply, in dependency order, and the
//! children this model may have had before but no longer renders, to delete. Pure.

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRoleBinding, RoleBinding};

use crate::render::identity::token_review_binding_name;
use crate::render::{Children, Component, ModelRef};

/// The kinds of object a CollabModel owns.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ChildKind {
    ConfigMap,
    DaemonSet,
    Deployment,
    Service,
    HorizontalPodAutoscaler,
    PodDisruptionBudget,
    StatefulSet,
    ServiceAccount,
    RoleBinding,
    NetworkPolicy,
    /// Cluster-scoped: tied to the model by labels, not an owner reference.
    ClusterRoleBinding,
}

impl ChildKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ChildKind::ConfigMap => "ConfigMap",
            ChildKind::DaemonSet => "DaemonSet",
            ChildKind::Deployment => "Deployment",
            ChildKind::Service => "Service",
            ChildKind::HorizontalPodAutoscaler => "HorizontalPodAutoscaler",
            ChildKind::PodDisruptionBudget => "PodDisruptionBudget",
            ChildKind::StatefulSet => "StatefulSet",
            ChildKind::ServiceAccount => "ServiceAccount",
            ChildKind::RoleBinding => "RoleBinding",
            ChildKind::NetworkPolicy => "NetworkPolicy",
            ChildKind::ClusterRoleBinding => "ClusterRoleBinding",
        }
    }
}

/// A child by kind and name (always in the model's namespace).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChildId {
    pub kind: ChildKind,
    pub name: String,
}

impl std::fmt::Display for ChildId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.kind.as_str(), self.name)
    }
}

/// One rendered child, ready for server-side apply.
#[derive(Clone, Debug, PartialEq)]
pub enum DesiredChild {
    ConfigMap(ConfigMap),
    DaemonSet(DaemonSet),
    Deployment(Deployment),
    Service(Service),
    HorizontalPodAutoscaler(HorizontalPodAutoscaler),
    PodDisruptionBudget(PodDisruptionBudget),
    StatefulSet(StatefulSet),
    ServiceAccount(ServiceAccount),
    RoleBinding(RoleBinding),
    NetworkPolicy(NetworkPolicy),
    ClusterRoleBinding(ClusterRoleBinding),
}

impl DesiredChild {
    pub fn id(&self) -> ChildId {
        let (kind, meta) = match self {
            DesiredChild::ConfigMap(o) => (ChildKind::ConfigMap, &o.metadata),
            DesiredChild::DaemonSet(o) => (ChildKind::DaemonSet, &o.metadata),
            DesiredChild::Deployment(o) => (ChildKind::Deployment, &o.metadata),
            DesiredChild::Service(o) => (ChildKind::Service, &o.metadata),
            DesiredChild::HorizontalPodAutoscaler(o) => {
                (ChildKind::HorizontalPodAutoscaler, &o.metadata)
            }
            DesiredChild::PodDisruptionBudget(o) => (ChildKind::PodDisruptionBudget, &o.metadata),
            DesiredChild::StatefulSet(o) => (ChildKind::StatefulSet, &o.metadata),
            DesiredChild::ServiceAccount(o) => (ChildKind::ServiceAccount, &o.metadata),
            DesiredChild::RoleBinding(o) => (ChildKind::RoleBinding, &o.metadata),
            DesiredChild::NetworkPolicy(o) => (ChildKind::NetworkPolicy, &o.metadata),
            DesiredChild::ClusterRoleBinding(o) => (ChildKind::ClusterRoleBinding, &o.metadata),
        };
        ChildId { kind, name: meta.name.clone().unwrap_or_default() }
    }
}

/// The writes of one reconcile.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// Applied in this order: configuration and identities first, then the context store, the
    /// cloud and the edge, so pods that start find what they read and may do what they need.
    pub apply: Vec<DesiredChild>,
    /// Children the model may own from an earlier spec (cloud disabled, Redis no longer
    /// managed, edge exposed through host ports) that must go.
    pub prune: Vec<ChildId>,
}

/// Every child a model named like `at` can ever have.
pub fn possible_children(at: &ModelRef) -> Vec<ChildId> {
    let id = |kind, component| ChildId { kind, name: at.child_name(component) };
    vec![
        id(ChildKind::ConfigMap, Component::Config),
        id(ChildKind::ServiceAccount, Component::Edge),
        id(ChildKind::RoleBinding, Component::Edge),
        id(ChildKind::ServiceAccount, Component::Cloud),
        ChildId { kind: ChildKind::ClusterRoleBinding, name: token_review_binding_name(at) },
        id(ChildKind::NetworkPolicy, Component::Redis),
        id(ChildKind::StatefulSet, Component::Redis),
        id(ChildKind::Service, Component::Redis),
        id(ChildKind::Deployment, Component::Cloud),
        id(ChildKind::Service, Component::Cloud),
        ChildId { kind: ChildKind::Service, name: at.cloud_pods_service_name() },
        id(ChildKind::HorizontalPodAutoscaler, Component::Cloud),
        id(ChildKind::PodDisruptionBudget, Component::Cloud),
        id(ChildKind::DaemonSet, Component::Edge),
        id(ChildKind::Service, Component::Edge),
    ]
}

pub fn plan(at: &ModelRef, children: Children) -> Plan {
    let Children { config_map, edge, edge_service, edge_identity, cloud, redis } = children;
    let mut apply = vec![
        DesiredChild::ConfigMap(config_map),
        DesiredChild::ServiceAccount(edge_identity.service_account),
        DesiredChild::RoleBinding(edge_identity.role_binding),
    ];
    if let Some(cloud) = &cloud {
        apply.push(DesiredChild::ServiceAccount(cloud.service_account.clone()));
        if let Some(binding) = &cloud.token_review_binding {
            apply.push(DesiredChild::ClusterRoleBinding(binding.clone()));
        }
    }
    if let Some(redis) = redis {
        apply.push(DesiredChild::NetworkPolicy(redis.network_policy));
        apply.push(DesiredChild::StatefulSet(redis.stateful_set));
        apply.push(DesiredChild::Service(redis.service));
    }
    if let Some(cloud) = cloud {
        apply.push(DesiredChild::Deployment(cloud.deployment));
        apply.push(DesiredChild::Service(cloud.service));
        apply.push(DesiredChild::Service(cloud.pods_service));
        apply.push(DesiredChild::HorizontalPodAutoscaler(cloud.autoscaler));
        apply.push(DesiredChild::PodDisruptionBudget(cloud.disruption_budget));
    }
    apply.push(DesiredChild::DaemonSet(edge));
    if let Some(service) = edge_service {
        apply.push(DesiredChild::Service(service));
    }
    let applied: Vec<ChildId> = apply.iter().map(DesiredChild::id).collect();
    let prune = possible_children(at).into_iter().filter(|id| !applied.contains(id)).collect();
    Plan { apply, prune }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::CollabModel;
    use crate::crd::{EdgeExposure, Mode};
    use crate::fixtures::settings;
    use crate::render::render;

    fn plan_of(model: &CollabModel) -> Plan {
        let at = ModelRef::of(model).expect("stored model");
        plan(&at, render(model, &settings(), &Default::default()).expect("renders"))
    }

    fn ids(children: &[DesiredChild]) -> Vec<String> {
        children.iter().map(|c| c.id().to_string()).collect()
    }

    #[test]
    fn a_full_model_applies_every_child_config_first_and_prunes_nothing() {
        let plan = plan_of(&CollabModel::fixture());
        assert_eq!(
            ids(&plan.apply),
            [
                "ConfigMap/chat-config",
                "ServiceAccount/chat-edge",
                "RoleBinding/chat-edge",
                "ServiceAccount/chat-cloud",
                "ClusterRoleBinding/collm-models-chat-tokenreview",
                "NetworkPolicy/chat-redis",
                "StatefulSet/chat-redis",
                "Service/chat-redis",
                "Deployment/chat-cloud",
                "Service/chat-cloud",
                "Service/chat-cloud-pods",
                "HorizontalPodAutoscaler/chat-cloud",
                "PodDisruptionBudget/chat-cloud",
                "DaemonSet/chat-edge",
                "Service/chat-edge",
            ]
        );
        assert!(plan.prune.is_empty(), "{:?}", plan.prune);
    }

    #[test]
    fn disabling_the_cloud_prunes_the_cloud_and_its_managed_redis() {
        let mut model = CollabModel::fixture();
        model.spec.cloud.enabled = false;
        model.spec.mode = Mode::Standalone;
        let plan = plan_of(&model);
        assert_eq!(
            ids(&plan.apply),
            [
                "ConfigMap/chat-config",
                "ServiceAccount/chat-edge",
                "RoleBinding/chat-edge",
                "DaemonSet/chat-edge",
                "Service/chat-edge"
            ]
        );
        let pruned: Vec<String> = plan.prune.iter().map(ToString::to_string).collect();
        assert_eq!(
            pruned,
            [
                "ServiceAccount/chat-cloud",
                "ClusterRoleBinding/collm-models-chat-tokenreview",
                "NetworkPolicy/chat-redis",
                "StatefulSet/chat-redis",
                "Service/chat-redis",
                "Deployment/chat-cloud",
                "Service/chat-cloud",
                "Service/chat-cloud-pods",
                "HorizontalPodAutoscaler/chat-cloud",
                "PodDisruptionBudget/chat-cloud",
            ]
        );
    }

    #[test]
    fn host_port_exposure_prunes_the_edge_service_only() {
        let mut model = CollabModel::fixture();
        model.spec.edge.exposure = EdgeExposure::HostPort;
        let plan = plan_of(&model);
        assert_eq!(plan.prune, [ChildId { kind: ChildKind::Service, name: "chat-edge".into() }]);
    }

    #[test]
    fn applied_and_pruned_children_together_are_every_possible_child() {
        let mut model = CollabModel::fixture();
        model.spec.context.as_mut().and_then(|c| c.redis.as_mut()).expect("redis").managed = None;
        model.spec.context.as_mut().and_then(|c| c.redis.as_mut()).expect("redis").url =
            Some("redis://redis.infra:6379".into());
        let at = ModelRef::of(&model).expect("stored");
        let plan = plan_of(&model);
        let mut all: Vec<ChildId> = plan.apply.iter().map(DesiredChild::id).collect();
        all.extend(plan.prune.clone());
        all.sort();
        let mut possible = possible_children(&at);
        possible.sort();
        assert_eq!(all, possible);
        assert_eq!(plan.prune.len(), 3, "only the managed Redis goes: {:?}", plan.prune);
    }
}
