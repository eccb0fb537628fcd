//! Pure rendering of a `CollabModel` into the objects that run it. One file per child; no I/O.
//!
//! Every child carries the standard labels and a controller owner reference, so deleting the
//! CollabModel garbage-collects it and `owns` watches map it back to its model.

pub mod cloud;
pub mod config;
pub mod edge;
pub mod endpoint;
pub mod identity;
pub mod observability;
pub mod pod;
pub mod redis;

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRoleBinding, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::Resource;

pub use config::{
    CONFIG_HASH_ANNOTATION, CloudRuntimeConfig, EdgeRuntimeConfig, RuntimeConfig,
    context_key_prefix,
};

pub use endpoint::CloudEndpoint;
pub use identity::{ClusterRoles, EdgeAuth};

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

/// The operator's own pods, which the managed Redis's NetworkPolicy admits (for the finalizer's
/// cleanup).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OperatorPods {
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
}

/// What the operator's deployment decides, never the CR: images and their pull Secrets, the
/// cluster roles the chart made for edge and cloud pods, and who the operator is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    pub images: Images,
    /// Names of image pull Secrets every model's pods get (each must exist in the model's
    /// namespace).
    pub pull_secrets: Vec<String>,
    pub cluster_roles: ClusterRoles,
    /// `None` when unknown (an operator outside the cluster): the Redis admits cloud pods only.
    pub operator: Option<OperatorPods>,
}

/// Values the controller keeps in Secrets it generates, as far as rendering needs them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Generated {
    /// Hash of the managed Redis's password: pods that use it roll when it changes.
    pub redis_password_hash: Option<String>,
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

    /// In-cluster DNS name of the cloud Service.
    pub fn cloud_service_host(&self) -> String {
        format!("{}.{}.svc", self.child_name(Component::Cloud), self.namespace)
    }

    /// Name of the headless Service listing the ready cloud pods.
    pub fn cloud_pods_service_name(&self) -> String {
        format!("{}-pods", self.child_name(Component::Cloud))
    }

    /// In-cluster DNS name of the headless Service (one record per ready cloud pod).
    pub fn cloud_pods_host(&self) -> String {
        format!("{}.{}.svc", self.cloud_pods_service_name(), self.namespace)
    }

    /// The model's UID (stored models always have one).
    pub fn uid(&self) -> &str {
        &self.owner.uid
    }
}

/// The bundle source after the schema's "exactly one" rule.
#[derive(Clone, Debug, PartialEq)]
pub enum Bundle {
    Url { url: String, sha256: String, max_bytes: Option<u64> },
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
                max_bytes: source.max_bytes.and_then(|b| u64::try_from(b).ok()),
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
    /// Headless: one DNS record per ready cloud pod, for edges to spread sessions over.
    pub pods_service: Service,
    pub autoscaler: HorizontalPodAutoscaler,
    pub disruption_budget: PodDisruptionBudget,
    pub service_account: ServiceAccount,
    /// Lets the cloud review edge tokens (ServiceAccount-token authentication only).
    pub token_review_binding: Option<ClusterRoleBinding>,
}

/// The operator-run Redis. Its password Secret is created by the controller (never applied:
/// it is generated once and kept), see [`redis::password_secret`].
#[derive(Clone, Debug, PartialEq)]
pub struct RedisChildren {
    pub stateful_set: StatefulSet,
    pub service: Service,
    pub network_policy: NetworkPolicy,
}

/// Who edge pods are and what they may do.
#[derive(Clone, Debug, PartialEq)]
pub struct EdgeIdentity {
    pub service_account: ServiceAccount,
    pub role_binding: RoleBinding,
}

/// Everything one CollabModel renders into.
#[derive(Clone, Debug, PartialEq)]
pub struct Children {
    pub config_map: ConfigMap,
    pub edge: DaemonSet,
    /// Present when the edge API is exposed through a Service (`edge.exposure: service`).
    pub edge_service: Option<Service>,
    pub edge_identity: EdgeIdentity,
    /// Absent for edge-only deployments.
    pub cloud: Option<CloudChildren>,
    /// Present with `context.redis.managed: true` and a cloud in this cluster.
    pub redis: Option<RedisChildren>,
}

/// Whether the cloud serves TLS.
fn cloud_tls(model: &CollabModel) -> bool {
    model.spec.credentials.as_ref().is_some_and(|c| c.tls_secret_ref.is_some())
}

/// Where edges send cloud requests: the external endpoint, the in-cluster Service (with its
/// pods for discovery), or nowhere (a standalone edge-only deployment).
pub fn cloud_endpoint(model: &CollabModel, at: &ModelRef) -> Option<CloudEndpoint> {
    let spec = &model.spec;
    let tls = cloud_tls(model);
    if let Some(external) = &spec.external_cloud_endpoint {
        return Some(CloudEndpoint { url: endpoint::normalise(external, tls), discovery: None });
    }
    spec.cloud.enabled.then(|| {
        endpoint::in_cluster(
            &at.cloud_service_host(),
            &at.cloud_pods_host(),
            spec.cloud.grpc_port,
            tls,
        )
    })
}

/// Renders every child of `model`. Fails only on a spec the schema should have rejected.
pub fn render(model: &CollabModel, settings: &Settings, generated: &Generated) -> Result<Children> {
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
    let auth = EdgeAuth::of(spec, &at);
    if spec.external_cloud_endpoint.is_some() && !matches!(auth, EdgeAuth::Secret(_)) {
        return Err(Error::InvalidSpec(crate::crd::RULE_EXTERNAL_NEEDS_TOKEN.to_string()));
    }
    let creds = spec.credentials.clone().unwrap_or_default();
    if (creds.client_ca_secret_ref.is_some() || creds.edge_cert_secret_ref.is_some())
        && creds.tls_secret_ref.is_none()
    {
        return Err(Error::InvalidSpec(crate::crd::RULE_MUTUAL_TLS_NEEDS_TLS.to_string()));
    }

    let runtime = RuntimeConfig::new(spec, &at, &bundle, redis.as_ref(), endpoint.as_ref(), &auth);
    let config_map = config::config_map(&runtime, &at)?;
    let edge_hash = runtime.edge_hash()?;
    let edge = edge::daemon_set(spec, &at, &bundle, &auth, settings, &edge_hash);
    let edge_service = edge::service(spec, &at);
    let edge_identity = EdgeIdentity {
        service_account: identity::service_account(&at, Component::Edge),
        role_binding: identity::edge_role_binding(&at, &settings.cluster_roles),
    };

    let managed = matches!(redis, Some(Redis::Managed));
    let cloud = if spec.cloud.enabled {
        let pod = cloud::CloudPod {
            bundle: &bundle,
            redis: redis.as_ref(),
            auth: &auth,
            settings,
            config_hash: &runtime.cloud_hash()?,
            secret_hash: if managed { generated.redis_password_hash.as_deref() } else { None },
        };
        Some(cloud::children(spec, &at, &pod))
    } else {
        None
    };
    let redis = match &cloud {
        Some(_) if managed => Some(redis::children(
            &at,
            spec.context.as_ref().and_then(|c| c.redis.as_ref()),
            settings,
            spec,
            generated.redis_password_hash.as_deref(),
        )),
        _ => None,
    };
    Ok(Children { config_map, edge, edge_service, edge_identity, cloud, redis })
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod pod_tests;
