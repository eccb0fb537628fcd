//! Pure rendering of a `CollabModel` into the objects that run it. One file per child; no I/O.
//!
//! Every child carries the standard labels and a controller owner reference, so deleting the
//! CollabModel garbage-collects it and `owns` watches map it back to its model.

mod cloud;
pub mod config;
mod edge;
mod pod;
mod redis;

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::Resource;

pub use config::{
    CONFIG_HASH_ANNOTATION, CloudRuntimeConfig, EdgeRuntimeConfig, RuntimeConfig,
    context_key_prefix,
};

use crate::crd::{BundleSource, CollabModel, Mode, RedisSpec, SecretKeyRef};
use crate::error::{Error, Result};

/// `app.kubernetes.io/name` of everything the operator renders.
pub const APP_NAME: &str = "collm";
/// `app.kubernetes.io/managed-by` of everything the operator renders.
pub const MANAGED_BY: &str = "collm-operator";

/// Container images, from the operator's configuration (Helm values), never from the CR.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Images {
    pub edge_agent: String,
    pub cloud_worker: String,
    pub redis: String,
    /// `imagePullPolicy` for all of them; `None` leaves the Kubernetes default.
    pub pull_policy: Option<String>,
}

/// Which child a label or name refers to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Component {
    Config,
    Edge,
    Cloud,
    Redis,
}

impl Component {
    pub fn as_str(self) -> &'static str {
        match self {
            Component::Config => "config",
            Component::Edge => "edge",
            Component::Cloud => "cloud",
            Component::Redis => "redis",
        }
    }
}

/// A stored CollabModel's identity: what every child needs to point back at it.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelRef {
    pub name: String,
    pub namespace: String,
    owner: OwnerReference,
}

impl ModelRef {
    /// Fails for objects that were never stored (no namespace or uid).
    pub fn of(model: &CollabModel) -> Result<Self> {
        let name = model.metadata.name.clone().ok_or(Error::MissingMetadata("name"))?;
        let namespace =
            model.metadata.namespace.clone().ok_or(Error::MissingMetadata("namespace"))?;
        let owner = model.controller_owner_ref(&()).ok_or(Error::MissingMetadata("uid"))?;
        Ok(Self { name, namespace, owner })
    }

    /// Name of a child: `<model>-<component>`.
    pub fn child_name(&self, component: Component) -> String {
        format!("{}-{}", self.name, component.as_str())
    }

    /// Labels that select a component's pods; stable for the life of the model because
    /// workload selectors are immutable.
    pub fn selector_labels(&self, component: Component) -> BTreeMap<String, String> {
        BTreeMap::from([
            ("app.kubernetes.io/name".to_string(), APP_NAME.to_string()),
            ("app.kubernetes.io/instance".to_string(), self.name.clone()),
            ("app.kubernetes.io/component".to_string(), component.as_str().to_string()),
        ])
    }

    /// Selector labels plus `managed-by`.
    pub fn labels(&self, component: Component) -> BTreeMap<String, String> {
        let mut labels = self.selector_labels(component);
        labels.insert("app.kubernetes.io/managed-by".to_string(), MANAGED_BY.to_string());
        labels
    }

    /// Metadata of a child: name, namespace, labels and the controller owner reference.
    pub fn child_meta(&self, component: Component) -> ObjectMeta {
        ObjectMeta {
            name: Some(self.child_name(component)),
            namespace: Some(self.namespace.clone()),
            labels: Some(self.labels(component)),
            owner_references: Some(vec![self.owner.clone()]),
            ..ObjectMeta::default()
        }
    }

    /// In-cluster gRPC address of the cloud Service.
    pub fn cloud_service_endpoint(&self, grpc_port: i32) -> String {
        format!("{}.{}.svc:{grpc_port}", self.child_name(Component::Cloud), self.namespace)
    }
}

/// The bundle source after the schema's "exactly one" rule.
#[derive(Clone, Debug, PartialEq)]
pub enum Bundle {
    Url { url: String, sha256: String },
    Pvc { claim_name: String, path: String },
    HostPath { path: String },
    ConfigMap { name: String },
}

impl TryFrom<&BundleSource> for Bundle {
    type Error = Error;

    fn try_from(source: &BundleSource) -> Result<Self> {
        let bundle = match (&source.url, &source.pvc, &source.host_path, &source.config_map) {
            (Some(url), None, None, None) => Bundle::Url {
                url: url.clone(),
                sha256: source
                    .sha256
                    .clone()
                    .ok_or_else(|| Error::InvalidSpec(crate::crd::RULE_BUNDLE_SHA.to_string()))?,
            },
            (None, Some(pvc), None, None) => {
                Bundle::Pvc { claim_name: pvc.claim_name.clone(), path: pvc.path.clone() }
            }
            (None, None, Some(host), None) => Bundle::HostPath { path: host.path.clone() },
            (None, None, None, Some(cm)) => Bundle::ConfigMap { name: cm.name.clone() },
            _ => return Err(Error::InvalidSpec(crate::crd::RULE_BUNDLE_ONE_SOURCE.to_string())),
        };
        Ok(bundle)
    }
}

/// The Redis connection after the schema's "exactly one" rule.
#[derive(Clone, Debug, PartialEq)]
pub enum Redis {
    Url(String),
    Secret(SecretKeyRef),
    Managed,
}

impl TryFrom<&RedisSpec> for Redis {
    type Error = Error;

    fn try_from(spec: &RedisSpec) -> Result<Self> {
        match (&spec.url, &spec.secret_ref, spec.managed.unwrap_or(false)) {
            (Some(url), None, false) => Ok(Redis::Url(url.clone())),
            (None, Some(secret), false) => Ok(Redis::Secret(secret.clone())),
            (None, None, true) => Ok(Redis::Managed),
            _ => Err(Error::InvalidSpec(crate::crd::RULE_REDIS_ONE_SOURCE.to_string())),
        }
    }
}

/// The cloud worker set, when this cluster runs one.
#[derive(Clone, Debug, PartialEq)]
pub struct CloudChildren {
    pub deployment: Deployment,
    pub service: Service,
    pub autoscaler: HorizontalPodAutoscaler,
    pub disruption_budget: PodDisruptionBudget,
}

/// The operator-run Redis.
#[derive(Clone, Debug, PartialEq)]
pub struct RedisChildren {
    pub stateful_set: StatefulSet,
    pub service: Service,
}

/// Everything one CollabModel renders into.
#[derive(Clone, Debug, PartialEq)]
pub struct Children {
    pub config_map: ConfigMap,
    pub edge: DaemonSet,
    /// Present when the edge API is exposed through a Service (`edge.exposure: service`).
    pub edge_service: Option<Service>,
    /// Absent for edge-only deployments.
    pub cloud: Option<CloudChildren>,
    /// Present with `context.redis.managed: true` and a cloud in this cluster.
    pub redis: Option<RedisChildren>,
}

/// Where edges send cloud requests: the external endpoint, the in-cluster Service, or nowhere
/// (a standalone edge-only deployment).
pub fn cloud_endpoint(model: &CollabModel, at: &ModelRef) -> Option<String> {
    let spec = &model.spec;
    if let Some(external) = &spec.external_cloud_endpoint {
        return Some(external.clone());
    }
    spec.cloud.enabled.then(|| at.cloud_service_endpoint(spec.cloud.grpc_port))
}

/// Renders every child of `model`. Fails only on a spec the schema should have rejected.
pub fn render(model: &CollabModel, images: &Images) -> Result<Children> {
    let at = ModelRef::of(model)?;
    let spec = &model.spec;
    let bundle = Bundle::try_from(&spec.bundle)?;
    let redis = match spec.context.as_ref().and_then(|c| c.redis.as_ref()) {
        Some(r) => Some(Redis::try_from(r)?),
        None => None,
    };
    if spec.cloud.enabled && redis.is_none() {
        return Err(Error::InvalidSpec(crate::crd::RULE_CLOUD_NEEDS_REDIS.to_string()));
    }
    let endpoint = cloud_endpoint(model, &at);
    if spec.mode == Mode::Collaborative && endpoint.is_none() {
        return Err(Error::InvalidSpec(crate::crd::RULE_EDGE_ONLY_ENDPOINT.to_string()));
    }

    let runtime = RuntimeConfig::new(spec, &at, &bundle, redis.as_ref(), endpoint);
    let config_map = config::config_map(&runtime, &at)?;
    let edge_hash = runtime.edge_hash()?;
    let edge = edge::daemon_set(spec, &at, &bundle, images, &edge_hash);
    let edge_service = edge::service(spec, &at);

    let cloud = if spec.cloud.enabled {
        let cloud_hash = runtime.cloud_hash()?;
        Some(cloud::children(spec, &at, &bundle, redis.as_ref(), images, &cloud_hash))
    } else {
        None
    };
    let redis = match (&cloud, redis) {
        (Some(_), Some(Redis::Managed)) => Some(redis::children(&at, images)),
        _ => None,
    };
    Ok(Children { config_map, edge, edge_service, cloud, redis })
}

#[cfg(test)]
mod tests;
