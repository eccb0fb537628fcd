//! Who edge and cloud pods are, and how edges prove it to the cloud.
//!
//! Without a token Secret in the spec, every edge pod presents its own ServiceAccount token: a
//! projected token for the model's audience, issued by the kubelet for that pod (bound to the
//! pod and its node, rotated before it expires, useless against the API server because of its
//! audience). The cloud checks it with the TokenReview API and names the client after the node
//! the token is bound to, so each edge device is its own client (its own session quota; one
//! device revoked by `credentials.revokedEdgeNodes` or by taking its node out of the model).
//! No secret material is distributed at all. A token Secret (`credentials.edgeTokenSecretRef`)
//! replaces this for clouds in another cluster, which cannot review this cluster's tokens.
//!
//! RBAC: edge pods may read and patch the status of pods (to report their cloud link on their
//! own pod; the chart's admission policy holds each edge to its own pod), through a RoleBinding
//! in the model's namespace to the chart's edge ClusterRole. Cloud pods may create TokenReviews,
//! through a ClusterRoleBinding (TokenReviews are cluster-scoped) to the chart's cloud
//! ClusterRole. A namespaced model cannot own a cluster-scoped object, so that binding carries
//! the model's identity in labels and the finalizer deletes it.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{ClusterRoleBinding, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::{Component, ModelRef};
use crate::crd::{CollabModelSpec, SecretKeyRef};

/// Label of cluster-scoped children naming the model's UID (they cannot have owner references).
pub const OWNER_UID_LABEL: &str = "collm.dev/owner-uid";
/// Labels of cluster-scoped children naming the model.
pub const OWNER_NAMESPACE_LABEL: &str = "collm.dev/owner-namespace";
pub const OWNER_NAME_LABEL: &str = "collm.dev/owner-name";

/// Prefix of the client ids the cloud gives to ServiceAccount-authenticated edges.
pub const NODE_CLIENT_PREFIX: &str = "node/";

/// Lifetime the kubelet gives an edge pod's projected token (it renews at 80%).
pub const EDGE_TOKEN_SECONDS: i64 = 3600;

/// How edges authenticate to the cloud.
#[derive(Clone, Debug, PartialEq)]
pub enum EdgeAuth {
    /// Each edge pod's own projected ServiceAccount token for this audience, reviewed by the
    /// cloud.
    ServiceAccountToken { audience: String },
    /// A token (or tokens file) from a user's Secret, mounted on both sides.
    Secret(SecretKeyRef),
    /// No cloud to authenticate to (a standalone edge-only model).
    Nothing,
}

impl EdgeAuth {
    /// A token Secret when the spec names one; otherwise ServiceAccount tokens when this cluster
    /// runs the cloud (only it can review them); otherwise nothing.
    pub fn of(spec: &CollabModelSpec, at: &ModelRef) -> Self {
        let secret = spec.credentials.as_ref().and_then(|c| c.edge_token_secret_ref.clone());
        match secret {
            Some(secret) => Self::Secret(secret),
            None if spec.cloud.enabled => Self::ServiceAccountToken { audience: audience(at) },
            None => Self::Nothing,
        }
    }
}

/// The audience of the model's edge tokens: only this model's cloud accepts them.
pub fn audience(at: &ModelRef) -> String {
    format!("collm.dev/{}/{}", at.namespace, at.name)
}

/// The Kubernetes user name of the model's edge ServiceAccount.
pub fn edge_user(at: &ModelRef) -> String {
    format!("system:serviceaccount:{}:{}", at.namespace, at.child_name(Component::Edge))
}

/// The client id the cloud gives an edge node.
pub fn node_client(node: &str) -> String {
    format!("{NODE_CLIENT_PREFIX}{node}")
}

/// The cluster roles the chart installs for the pods the operator renders.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterRoles {
    /// Read pods, patch pod status (edge pods report their cloud link).
    pub edge: String,
    /// Create TokenReviews (cloud pods check edge tokens).
    pub cloud: String,
}

/// A ServiceAccount of the model's edge or cloud pods.
pub fn service_account(at: &ModelRef, component: Component) -> ServiceAccount {
    ServiceAccount {
        metadata: at.child_meta(component),
        // Pods say for themselves whether they mount an API token.
        automount_service_account_token: Some(false),
        ..ServiceAccount::default()
    }
}

/// Binds the edge ServiceAccount to the chart's edge ClusterRole in the model's namespace.
pub fn edge_role_binding(at: &ModelRef, roles: &ClusterRoles) -> RoleBinding {
    RoleBinding {
        metadata: at.child_meta(Component::Edge),
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".to_string(),
            kind: "ClusterRole".to_string(),
            name: roles.edge.clone(),
        },
        subjects: Some(vec![subject(at, Component::Edge)]),
    }
}

/// Name of the model's cluster-scoped TokenReview binding.
pub fn token_review_binding_name(at: &ModelRef) -> String {
    format!("collm-{}-{}-tokenreview", at.namespace, at.name)
}

/// Labels that tie a cluster-scoped child to its model.
pub fn owner_labels(at: &ModelRef, uid: &str) -> BTreeMap<String, String> {
    let mut labels = at.labels(Component::Cloud);
    labels.insert(OWNER_UID_LABEL.to_string(), uid.to_string());
    labels.insert(OWNER_NAMESPACE_LABEL.to_string(), at.namespace.clone());
    labels.insert(OWNER_NAME_LABEL.to_string(), at.name.clone());
    labels
}

/// Lets the cloud ServiceAccount create TokenReviews.
pub fn token_review_binding(at: &ModelRef, uid: &str, roles: &ClusterRoles) -> ClusterRoleBinding {
    ClusterRoleBinding {
        metadata: ObjectMeta {
            name: Some(token_review_binding_name(at)),
            labels: Some(owner_labels(at, uid)),
            ..ObjectMeta::default()
        },
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".to_string(),
            kind: "ClusterRole".to_string(),
            name: roles.cloud.clone(),
        },
        subjects: Some(vec![subject(at, Component::Cloud)]),
    }
}

fn subject(at: &ModelRef, component: Component) -> Subject {
    Subject {
        kind: "ServiceAccount".to_string(),
        name: at.child_name(component),
        namespace: Some(at.namespace.clone()),
        api_group: None,
    }
}
