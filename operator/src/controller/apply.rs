//! Server-side apply of a [`Plan`] and deletion of pruned children: the controller's writes.

use std::fmt::Debug;

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRoleBinding, RoleBinding};
use kube::api::{DeleteParams, Patch, PatchParams, Preconditions};
use kube::{Api, Client, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, Result};
use crate::plan::{ChildId, ChildKind, DesiredChild, Plan};
use crate::render::identity::OWNER_UID_LABEL;

/// The one field manager of everything the operator writes.
pub const FIELD_MANAGER: &str = "collm-operator";

/// The workloads as the API server returned them after apply, status included.
#[derive(Clone, Debug, Default)]
pub struct Applied {
    pub edge: Option<DaemonSet>,
    pub cloud: Option<Deployment>,
    pub redis: Option<StatefulSet>,
    /// Children that were applied, in order.
    pub children: Vec<ChildId>,
}

trait Child:
    Resource<Scope = NamespaceResourceScope, DynamicType = ()>
    + Clone
    + Debug
    + Serialize
    + DeserializeOwned
{
}
impl<K> Child for K where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + Debug
        + Serialize
        + DeserializeOwned
{
}

async fn apply<K: Child>(client: &Client, namespace: &str, object: &K) -> Result<K> {
    let name = object.meta().name.clone().unwrap_or_default();
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    let params = PatchParams::apply(FIELD_MANAGER).force();
    api.patch(&name, &params, &Patch::Apply(object))
        .await
        .map_err(Error::kube(format!("applying {} {namespace}/{name}", K::kind(&()))))
}

/// Server-side apply of a cluster-scoped child.
async fn apply_cluster(client: &Client, object: &ClusterRoleBinding) -> Result<()> {
    let name = object.meta().name.clone().unwrap_or_default();
    let api: Api<ClusterRoleBinding> = Api::all(client.clone());
    let params = PatchParams::apply(FIELD_MANAGER).force();
    api.patch(&name, &params, &Patch::Apply(object))
        .await
        .map_err(Error::kube(format!("applying ClusterRoleBinding {name}")))?;
    Ok(())
}

/// Applies every child of `plan` in order, then deletes the pruned children this model owns.
pub async fn apply_plan(client: &Client, namespace: &str, plan: &Plan) -> Result<Applied> {
    let mut applied = Applied::default();
    for child in &plan.apply {
        match child {
            DesiredChild::ConfigMap(o) => drop(apply(client, namespace, o).await?),
            DesiredChild::ServiceAccount(o) => drop(apply(client, namespace, o).await?),
            DesiredChild::RoleBinding(o) => drop(apply(client, namespace, o).await?),
            DesiredChild::NetworkPolicy(o) => drop(apply(client, namespace, o).await?),
            DesiredChild::ClusterRoleBinding(o) => apply_cluster(client, o).await?,
            DesiredChild::DaemonSet(o) => applied.edge = Some(apply(client, namespace, o).await?),
            DesiredChild::Deployment(o) => applied.cloud = Some(apply(client, namespace, o).await?),
            DesiredChild::Service(o) => drop(apply(client, namespace, o).await?),
            DesiredChild::HorizontalPodAutoscaler(o) => drop(apply(client, namespace, o).await?),
            DesiredChild::PodDisruptionBudget(o) => drop(apply(client, namespace, o).await?),
            DesiredChild::StatefulSet(o) => {
                applied.redis = Some(apply(client, namespace, o).await?)
            }
        }
        applied.children.push(child.id());
    }
    Ok(applied)
}

async fn delete_if_owned<K: Child>(
    client: &Client,
    namespace: &str,
    name: &str,
    owner_uid: &str,
) -> Result<bool> {
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    let what = || format!("{} {namespace}/{name}", K::kind(&()));
    let Some(existing) =
        api.get_opt(name).await.map_err(Error::kube(format!("reading {}", what())))?
    else {
        return Ok(false);
    };
    // Never delete an object of the same name that somebody else made.
    let owned = existing
        .meta()
        .owner_references
        .iter()
        .flatten()
        .any(|o| o.controller == Some(true) && o.uid == owner_uid);
    if !owned {
        return Ok(false);
    }
    let params = DeleteParams {
        preconditions: Some(Preconditions {
            uid: existing.meta().uid.clone(),
            resource_version: None,
        }),
        ..DeleteParams::background()
    };
    match api.delete(name, &params).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(false),
        Err(e) => Err(Error::kube(format!("deleting {}", what()))(e)),
    }
}

/// Deletes the model's cluster-scoped binding `name` when its labels say it is the model's
/// (cluster-scoped objects cannot carry a namespaced owner reference).
pub async fn delete_cluster_binding(client: &Client, name: &str, owner_uid: &str) -> Result<bool> {
    let api: Api<ClusterRoleBinding> = Api::all(client.clone());
    let Some(existing) = api
        .get_opt(name)
        .await
        .map_err(Error::kube(format!("reading ClusterRoleBinding {name}")))?
    else {
        return Ok(false);
    };
    let ours = existing.metadata.labels.as_ref().and_then(|l| l.get(OWNER_UID_LABEL))
        == Some(&owner_uid.to_string());
    if !ours {
        return Ok(false);
    }
    let params = DeleteParams {
        preconditions: Some(Preconditions {
            uid: existing.metadata.uid.clone(),
            resource_version: None,
        }),
        ..DeleteParams::background()
    };
    match api.delete(name, &params).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(false),
        Err(e) => Err(Error::kube(format!("deleting ClusterRoleBinding {name}"))(e)),
    }
}

/// Deletes the children of `plan.prune` that this model owns; returns those deleted.
pub async fn prune(
    client: &Client,
    namespace: &str,
    owner_uid: &str,
    plan: &Plan,
) -> Result<Vec<ChildId>> {
    let mut deleted = Vec::new();
    for id in &plan.prune {
        let name = id.name.as_str();
        let gone = match id.kind {
            ChildKind::ConfigMap => {
                delete_if_owned::<ConfigMap>(client, namespace, name, owner_uid).await?
            }
            ChildKind::DaemonSet => {
                delete_if_owned::<DaemonSet>(client, namespace, name, owner_uid).await?
            }
            ChildKind::Deployment => {
                delete_if_owned::<Deployment>(client, namespace, name, owner_uid).await?
            }
            ChildKind::Service => {
                delete_if_owned::<Service>(client, namespace, name, owner_uid).await?
            }
            ChildKind::HorizontalPodAutoscaler => {
                delete_if_owned::<HorizontalPodAutoscaler>(client, namespace, name, owner_uid)
                    .await?
            }
            ChildKind::PodDisruptionBudget => {
                delete_if_owned::<PodDisruptionBudget>(client, namespace, name, owner_uid).await?
            }
            ChildKind::StatefulSet => {
                delete_if_owned::<StatefulSet>(client, namespace, name, owner_uid).await?
            }
            ChildKind::ServiceAccount => {
                delete_if_owned::<ServiceAccount>(client, namespace, name, owner_uid).await?
            }
            ChildKind::RoleBinding => {
                delete_if_owned::<RoleBinding>(client, namespace, name, owner_uid).await?
            }
            ChildKind::NetworkPolicy => {
                delete_if_owned::<NetworkPolicy>(client, namespace, name, owner_uid).await?
            }
            ChildKind::ClusterRoleBinding => {
                delete_cluster_binding(client, name, owner_uid).await?
            }
        };
        if gone {
            deleted.push(id.clone());
        }
    }
    Ok(deleted)
}

/// The workloads as they are now, for a status written after a failed apply.
pub async fn observe_existing(client: &Client, namespace: &str, plan_ids: &[ChildId]) -> Applied {
    let mut observed = Applied::default();
    for id in plan_ids {
        match id.kind {
            ChildKind::DaemonSet => observed.edge = get(client, namespace, &id.name).await,
            ChildKind::Deployment => observed.cloud = get(client, namespace, &id.name).await,
            ChildKind::StatefulSet => observed.redis = get(client, namespace, &id.name).await,
            _ => {}
        }
    }
    observed
}

async fn get<K: Child>(client: &Client, namespace: &str, name: &str) -> Option<K> {
    Api::<K>::namespaced(client.clone(), namespace).get_opt(name).await.ok().flatten()
}
