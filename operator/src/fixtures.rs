//! Test builders: a stored-looking CollabModel with a complete, valid spec.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::crd::{BundleSource, CloudSpec, CollabModel, CollabModelSpec, ContextSpec, RedisSpec};
use std::collections::BTreeMap;

use crate::render::{ClusterRoles, Images, OperatorPods, Settings};

impl CollabModel {
    /// A collaborative model with a URL bundle, a managed Redis and default placement, as the
    /// API server would store it (name, namespace, uid, generation set).
    pub fn fixture() -> Self {
        let spec = CollabModelSpec {
            bundle: BundleSource {
                url: Some("https://models.example/smollm2-135m.tar".to_string()),
                sha256: Some("ab".repeat(32)),
                ..BundleSource::default()
            },
            split_layer: 12,
            exit_layers: vec![6, 12],
            mode: Default::default(),
            threshold: Some(0.8),
            target_agreement: None,
            latency_budget_ms: Some(250),
            edge: Default::default(),
            cloud: CloudSpec { min_replicas: 2, max_replicas: 6, ..CloudSpec::default() },
            catch_up: Default::default(),
            encoding: Default::default(),
            context: Some(ContextSpec {
                redis: Some(RedisSpec { managed: Some(true), ..RedisSpec::default() }),
                ttl_seconds: 600,
                max_positions_per_session: 4096,
                max_sessions_per_client: 8,
            }),
            credentials: None,
            external_cloud_endpoint: None,
            image_pull_secrets: Vec::new(),
            observability: None,
        };
        let mut model = CollabModel::new("chat", spec);
        model.metadata = ObjectMeta {
            name: Some("chat".to_string()),
            namespace: Some("models".to_string()),
            uid: Some("0b5e4f2a-1111-4222-8333-944445555666".to_string()),
            generation: Some(3),
            ..ObjectMeta::default()
        };
        model
    }
}

pub fn images() -> Images {
    Images {
        edge_agent: "registry.example/collm/edge-agent:0.1.0".to_string(),
        cloud_worker: "registry.example/collm/cloud-worker:0.1.0".to_string(),
        redis: "docker.io/library/redis:7.4".to_string(),
        pull_policy: Some("IfNotPresent".to_string()),
    }
}

pub fn settings() -> Settings {
    Settings {
        images: images(),
        pull_secrets: vec!["regcred".to_string()],
        cluster_roles: ClusterRoles {
            edge: "collm-edge-agent".to_string(),
            cloud: "collm-cloud-worker".to_string(),
        },
        operator: Some(OperatorPods {
            namespace: "collm-system".to_string(),
            labels: BTreeMap::from([(
                "app.kubernetes.io/name".to_string(),
                "collm-operator".to_string(),
            )]),
        }),
    }
}
