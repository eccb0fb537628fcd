use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{PodSpec, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::*;
use crate::crd::{
    CloudSpec, Credentials, CustomMetricTarget, EdgeExposure, HostPathBundle, Mode, SecretKeyRef,
    SecretRef,
};
use crate::fixtures::settings;

fn rendered(model: &CollabModel) -> Children {
    render(model, &settings(), &Generated::default()).expect("fixture renders")
}

fn pod(template: &PodTemplateSpec) -> &PodSpec {
    template.spec.as_ref().expect("pod spec")
}

fn edge_template(children: &Children) -> &PodTemplateSpec {
    &children.edge.spec.as_ref().expect("daemonset spec").template
}

fn cloud(children: &Children) -> &CloudChildren {
    children.cloud.as_ref().expect("cloud rendered")
}

fn cloud_template(children: &Children) -> &PodTemplateSpec {
    &cloud(children).deployment.spec.as_ref().expect("deployment spec").template
}

fn config_hash(template: &PodTemplateSpec) -> String {
    template.metadata.as_ref().and_then(|m| m.annotations.as_ref()).expect("annotations")
        [CONFIG_HASH_ANNOTATION]
        .clone()
}

fn edge_config(children: &Children) -> serde_json::Value {
    let data = children.config_map.data.as_ref().expect("config data");
    serde_json::from_str(&data["edge.json"]).expect("edge.json is JSON")
}

fn cloud_config(children: &Children) -> serde_json::Value {
    let data = children.config_map.data.as_ref().expect("config data");
    serde_json::from_str(&data["cloud.json"]).expect("cloud.json is JSON")
}

/// Every object the model renders, with its metadata.
fn all_metadata(children: &Children) -> Vec<(&'static str, &ObjectMeta)> {
    let mut all = vec![("ConfigMap", &children.config_map.metadata)];
    all.push(("DaemonSet", &children.edge.metadata));
    if let Some(svc) = &children.edge_service {
        all.push(("edge Service", &svc.metadata));
    }
    all.push(("edge ServiceAccount", &children.edge_identity.service_account.metadata));
    all.push(("edge RoleBinding", &children.edge_identity.role_binding.metadata));
    let cloud = cloud(children);
    all.push(("Deployment", &cloud.deployment.metadata));
    all.push(("cloud Service", &cloud.service.metadata));
    all.push(("cloud pods Service", &cloud.pods_service.metadata));
    all.push(("cloud ServiceAccount", &cloud.service_account.metadata));
    all.push(("HorizontalPodAutoscaler", &cloud.autoscaler.metadata));
    all.push(("PodDisruptionBudget", &cloud.disruption_budget.metadata));
    let redis = children.redis.as_ref().expect("managed redis rendered");
    all.push(("StatefulSet", &redis.stateful_set.metadata));
    all.push(("redis Service", &redis.service.metadata));
    all.push(("redis NetworkPolicy", &redis.network_policy.metadata));
    all
}

#[test]
fn every_child_is_owned_by_the_model_and_labelled() {
    let model = CollabModel::fixture();
    let children = rendered(&model);
    for (kind, meta) in all_metadata(&children) {
        let owners = meta.owner_references.as_ref().expect("owner refs");
        assert_eq!(owners.len(), 1, "{kind}");
        let owner = &owners[0];
        assert_eq!(owner.api_version, "collm.dev/v1alpha1", "{kind}");
        assert_eq!(owner.kind, "CollabModel", "{kind}");
        assert_eq!(owner.name, "chat", "{kind}");
        assert_eq!(Some(&owner.uid), model.metadata.uid.as_ref(), "{kind}");
        assert_eq!(owner.controller, Some(true), "{kind}");
        assert_eq!(meta.namespace.as_deref(), Some("models"), "{kind}");
        let labels = meta.labels.as_ref().expect("labels");
        assert_eq!(labels["app.kubernetes.io/name"], "collm", "{kind}");
        assert_eq!(labels["app.kubernetes.io/instance"], "chat", "{kind}");
        assert_eq!(labels["app.kubernetes.io/managed-by"], "collm-operator", "{kind}");
        assert!(labels.contains_key("app.kubernetes.io/component"), "{kind}");
    }
}

#[test]
fn rendered_objects_carry_the_spec_settings() {
    let mut model = CollabModel::fixture();
    model.spec.cloud.target_cpu_utilization = Some(55);
    model.spec.edge.tolerations = vec![k8s_openapi::api::core::v1::Toleration {
        key: Some("collm.dev/edge".to_string()),
        operator: Some("Exists".to_string()),
        effect: Some("NoSchedule".to_string()),
        ..Default::default()
    }];
    let children = rendered(&model);

    let edge = edge_config(&children);
    assert_eq!(edge["threshold"], 0.8);
    assert_eq!(edge["mode"], "collaborative");
    assert_eq!(edge["split_layer"], 12);
    assert_eq!(edge["exit_layers"], serde_json::json!([6, 12]));
    assert_eq!(edge["latency_budget_ms"], 250);
    assert_eq!(edge["encoding"], "f32");
    assert_eq!(edge["cloud_endpoint"], "http://chat-cloud.models.svc:50051");
    assert_eq!(edge["cloud_discovery"], "chat-cloud-pods.models.svc");
    assert_eq!(edge["bundle"]["download"]["sha256"], "ab".repeat(32));
    assert_eq!(edge["bundle"]["dir"], "/var/lib/collm/fetched/bundle");

    let cloud_cfg = cloud_config(&children);
    assert_eq!(cloud_cfg["catch_up"], "exact");
    assert_eq!(cloud_cfg["http_port"], 8081);
    // Probes go to the worker's HTTP port, which the config tells it to serve.
    let worker = &pod(cloud_template(&children)).containers[0];
    let http =
        worker.ports.as_ref().expect("ports").iter().find(|p| p.name.as_deref() == Some("http"));
    assert_eq!(http.map(|p| p.container_port), Some(8081));
    for (probe, path) in [
        (&worker.readiness_probe, "/readyz"),
        (&worker.liveness_probe, "/healthz"),
        (&worker.startup_probe, "/healthz"),
    ] {
        let get = probe.as_ref().and_then(|p| p.http_get.as_ref()).expect("an HTTP probe");
        assert_eq!(
            (get.path.as_deref(), &get.port),
            (Some(path), &IntOrString::String("http".into()))
        );
    }
    assert_eq!(cloud_cfg["context"]["ttl_seconds"], 600);
    assert_eq!(cloud_cfg["context"]["max_sessions_per_client"], 8);
    // The managed Redis's URL carries its password: it comes from the generated Secret.
    assert!(cloud_cfg["context"].get("redis_url").is_none());
    assert_eq!(cloud_cfg["context"]["redis_url_env"], "COLLM_REDIS_URL");
    assert_eq!(cloud_cfg["context"]["key_prefix"], "collm:models:chat:");

    let edge_pod = pod(edge_template(&children));
    assert_eq!(edge_pod.node_selector.as_ref().expect("selector")["collm.dev/edge"], "true");
    assert_eq!(edge_pod.tolerations.as_ref().expect("tolerations"), &model.spec.edge.tolerations);
    assert_eq!(
        edge_pod.containers[0].image.as_deref(),
        Some("registry.example/collm/edge-agent:0.1.0")
    );

    let cloud = cloud(&children);
    let hpa = cloud.autoscaler.spec.as_ref().expect("hpa spec");
    assert_eq!(hpa.min_replicas, Some(2));
    assert_eq!(hpa.max_replicas, 6);
    assert_eq!(hpa.scale_target_ref.name, "chat-cloud");
    let metric = &hpa.metrics.as_ref().expect("metrics")[0];
    assert_eq!(metric.resource.as_ref().expect("cpu").target.average_utilization, Some(55));
    // The autoscaler owns replicas; the Deployment must not claim them.
    assert_eq!(cloud.deployment.spec.as_ref().expect("spec").replicas, None);
    assert_eq!(
        pod(cloud_template(&children)).containers[0].image.as_deref(),
        Some("registry.example/collm/cloud-worker:0.1.0")
    );
    assert_eq!(
        cloud.service.spec.as_ref().expect("svc").ports.as_ref().expect("ports")[0].port,
        50051
    );
}

#[test]
fn custom_metric_replaces_cpu_target() {
    let mut model = CollabModel::fixture();
    model.spec.cloud.custom_metric = Some(CustomMetricTarget {
        name: "collm_cloud_rpc_in_flight".to_string(),
        average_value: "4".to_string(),
    });
    let children = rendered(&model);
    let hpa = cloud(&children).autoscaler.spec.clone().expect("hpa spec");
    let metrics = hpa.metrics.expect("metrics");
    assert_eq!(metrics.len(), 1);
    let pods = metrics[0].pods.as_ref().expect("pods metric");
    assert_eq!(pods.metric.name, "collm_cloud_rpc_in_flight");
    assert_eq!(pods.target.average_value.as_ref().map(|q| q.0.as_str()), Some("4"));
}

#[test]
fn threshold_change_rolls_only_edge_pods() {
    let before = rendered(&CollabModel::fixture());
    let mut model = CollabModel::fixture();
    model.spec.threshold = Some(0.9);
    let after = rendered(&model);

    assert_ne!(config_hash(edge_template(&before)), config_hash(edge_template(&after)));
    assert_eq!(cloud(&before), cloud(&after), "cloud objects must not change");
    assert_eq!(before.redis, after.redis);
}

#[test]
fn mode_change_rolls_only_edge_pods() {
    let before = rendered(&CollabModel::fixture());
    let mut model = CollabModel::fixture();
    model.spec.mode = Mode::Standalone;
    let after = rendered(&model);

    assert_ne!(config_hash(edge_template(&before)), config_hash(edge_template(&after)));
    assert_eq!(cloud_template(&before), cloud_template(&after));
}

#[test]
fn cloud_setting_changes_leave_the_edge_untouched() {
    let before = rendered(&CollabModel::fixture());
    let mut model = CollabModel::fixture();
    model.spec.cloud.max_replicas = 10;
    model.spec.catch_up = crate::crd::CatchUp::Propagate;
    if let Some(ctx) = model.spec.context.as_mut() {
        ctx.ttl_seconds = 7200;
    }
    let after = rendered(&model);

    assert_eq!(before.edge, after.edge, "edge DaemonSet must not change");
    assert_ne!(config_hash(cloud_template(&before)), config_hash(cloud_template(&after)));
}

#[test]
fn identical_specs_render_identically() {
    assert_eq!(rendered(&CollabModel::fixture()), rendered(&CollabModel::fixture()));
}

#[test]
fn edge_and_cloud_hashes_differ() {
    let children = rendered(&CollabModel::fixture());
    assert_ne!(config_hash(edge_template(&children)), config_hash(cloud_template(&children)));
}

fn assert_restricted(what: &str, template: &PodTemplateSpec) {
    let spec = pod(template);
    let pod_sc = spec.security_context.as_ref().expect("pod security context");
    assert_eq!(pod_sc.run_as_non_root, Some(true), "{what}");
    assert_eq!(
        pod_sc.seccomp_profile.as_ref().map(|p| p.type_.as_str()),
        Some("RuntimeDefault"),
        "{what}"
    );
    assert!(pod_sc.run_as_user.is_some_and(|uid| uid != 0), "{what}");
    for c in &spec.containers {
        let sc = c.security_context.as_ref().expect("container security context");
        assert_eq!(sc.allow_privilege_escalation, Some(false), "{what}/{}", c.name);
        assert_eq!(sc.read_only_root_filesystem, Some(true), "{what}/{}", c.name);
        assert_eq!(sc.privileged, None, "{what}/{}", c.name);
        let caps = sc.capabilities.as_ref().expect("capabilities");
        assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_string()][..]), "{what}/{}", c.name);
        assert_eq!(caps.add, None, "{what}/{}", c.name);
    }
    assert!(spec.host_network.is_none() && spec.host_pid.is_none(), "{what}");
}

#[test]
fn pods_follow_the_restricted_pod_security_standard() {
    let children = rendered(&CollabModel::fixture());
    assert_restricted("edge", edge_template(&children));
    assert_restricted("cloud", cloud_template(&children));
    let redis = children.redis.as_ref().expect("redis");
    assert_restricted("redis", &redis.stateful_set.spec.as_ref().expect("sts").template);
    // Default exposure is a Service, not a host port (host ports break the restricted level).
    let ports = pod(edge_template(&children)).containers[0].ports.clone().expect("ports");
    assert_eq!(ports[0].host_port, None);
}

#[test]
fn host_port_exposure_opens_the_api_port_on_the_node() {
    let mut model = CollabModel::fixture();
    model.spec.edge.exposure = EdgeExposure::HostPort;
    model.spec.edge.api_port = 9000;
    let children = rendered(&model);
    let ports = pod(edge_template(&children)).containers[0].ports.clone().expect("ports");
    assert_eq!((ports[0].container_port, ports[0].host_port), (9000, Some(9000)));
    assert!(children.edge_service.is_none());
}

#[test]
fn edge_only_model_renders_no_cloud_and_points_at_the_external_endpoint() {
    let mut model = CollabModel::fixture();
    model.spec.cloud = CloudSpec { enabled: false, ..CloudSpec::default() };
    model.spec.context = None;
    model.spec.external_cloud_endpoint = Some("cloud.example:443".to_string());
    model.spec.credentials = Some(Credentials {
        edge_token_secret_ref: Some(SecretKeyRef { name: "t".into(), key: "token".into() }),
        ..Credentials::default()
    });
    let children = rendered(&model);
    assert!(children.cloud.is_none());
    assert!(children.redis.is_none());
    assert_eq!(edge_config(&children)["cloud_endpoint"], "http://cloud.example:443");
    assert!(edge_config(&children).get("cloud_discovery").is_none(), "the remote side balances");
    // With TLS the same host:port becomes https.
    model.spec.credentials.as_mut().expect("creds").tls_secret_ref =
        Some(SecretRef { name: "ca".into() });
    assert_eq!(edge_config(&rendered(&model))["cloud_endpoint"], "https://cloud.example:443");
    // Without a token Secret nobody could check the edges' ServiceAccount tokens.
    model.spec.credentials = None;
    let err = render(&model, &settings(), &Generated::default()).expect_err("no token");
    assert!(err.to_string().contains("edgeTokenSecretRef"), "{err}");
}

#[test]
fn collaborative_edge_without_any_cloud_is_refused() {
    let mut model = CollabModel::fixture();
    model.spec.cloud.enabled = false;
    let err = render(&model, &settings(), &Generated::default()).expect_err("no cloud to talk to");
    assert!(err.to_string().contains("externalCloudEndpoint"), "{err}");
}

#[test]
fn unstored_model_is_refused() {
    let mut model = CollabModel::fixture();
    model.metadata.uid = None;
    assert!(matches!(
        render(&model, &settings(), &Generated::default()),
        Err(Error::MissingMetadata("uid"))
    ));
}

#[test]
fn secret_redis_url_reaches_the_worker_as_an_env_var() {
    let mut model = CollabModel::fixture();
    model.spec.context.as_mut().expect("ctx").redis = Some(crate::crd::RedisSpec {
        secret_ref: Some(SecretKeyRef { name: "redis-auth".to_string(), key: "url".to_string() }),
        ..Default::default()
    });
    let children = rendered(&model);
    assert!(children.redis.is_none(), "no managed Redis for an external one");
    let env = pod(cloud_template(&children)).containers[0].env.clone().expect("env");
    let redis = env.iter().find(|e| e.name == "COLLM_REDIS_URL").expect("the Redis URL");
    let from = redis.value_from.as_ref().and_then(|v| v.secret_key_ref.as_ref()).expect("ref");
    assert_eq!((from.name.as_str(), from.key.as_str()), ("redis-auth", "url"));
    assert_eq!(cloud_config(&children)["context"]["redis_url_env"], redis.name);
}

#[test]
fn credentials_are_mounted_where_the_config_says() {
    let mut model = CollabModel::fixture();
    model.spec.credentials = Some(Credentials {
        edge_token_secret_ref: Some(SecretKeyRef {
            name: "edge-tokens".to_string(),
            key: "chat".to_string(),
        }),
        tls_secret_ref: Some(SecretRef { name: "cloud-tls".to_string() }),
        ..Credentials::default()
    });
    let children = rendered(&model);
    let edge_cfg = edge_config(&children);
    let token_file = edge_cfg["edge_token_file"].as_str().expect("token file");
    let mounts = pod(edge_template(&children)).containers[0].volume_mounts.clone().expect("m");
    assert!(mounts.iter().any(|m| token_file.starts_with(&m.mount_path) && m.name == "edge-token"));
    let ca_file = edge_cfg["tls_ca_file"].as_str().expect("ca file");
    assert!(mounts.iter().any(|m| ca_file.starts_with(&m.mount_path) && m.name == "tls"));
    assert!(cloud_config(&children)["tls_key_file"].is_string());
}

#[test]
fn host_path_bundle_mounts_the_node_directory_read_only() {
    let mut model = CollabModel::fixture();
    model.spec.bundle = crate::crd::BundleSource {
        host_path: Some(HostPathBundle { path: "/opt/collm/smollm2".to_string() }),
        ..Default::default()
    };
    let children = rendered(&model);
    let spec = pod(edge_template(&children));
    let volume = spec.volumes.as_ref().expect("volumes").iter().find(|v| v.name == "bundle");
    let host = volume.and_then(|v| v.host_path.as_ref()).expect("hostPath volume");
    assert_eq!(host.path, "/opt/collm/smollm2");
    let mount = spec.containers[0].volume_mounts.as_ref().expect("mounts");
    assert!(mount.iter().any(|m| m.name == "bundle" && m.read_only == Some(true)));
    assert!(edge_config(&children)["bundle"].get("download").is_none());
}

#[test]
fn edge_pods_read_only_their_half_of_the_config() {
    let children = rendered(&CollabModel::fixture());
    let edge_volume: Vec<_> = pod(edge_template(&children))
        .volumes
        .iter()
        .flatten()
        .filter_map(|v| v.config_map.as_ref())
        .filter(|cm| cm.name == "chat-config")
        .flat_map(|cm| cm.items.clone().unwrap_or_default())
        .map(|item| item.key)
        .collect();
    assert_eq!(edge_volume, vec!["edge.json".to_string()]);
}

#[test]
fn daemon_set_selector_matches_its_pods() {
    let children = rendered(&CollabModel::fixture());
    let ds: &DaemonSet = &children.edge;
    let selector = ds.spec.as_ref().and_then(|s| s.selector.match_labels.clone()).expect("sel");
    let labels = edge_template(&children).metadata.as_ref().and_then(|m| m.labels.clone());
    let labels = labels.expect("pod labels");
    assert!(selector.iter().all(|(k, v)| labels.get(k) == Some(v)));
}

#[test]
fn observability_settings_reach_the_runtime_containers_and_roll_their_pods() {
    use crate::crd::{LogFormat, ObservabilitySpec, SideObservability};
    let before = rendered(&CollabModel::fixture());
    let mut model = CollabModel::fixture();
    model.spec.observability = Some(ObservabilitySpec {
        log_format: Some(LogFormat::Json),
        otlp_endpoint: Some("http://otel-collector.observability:4317".to_string()),
        cloud: Some(SideObservability {
            log_level: Some("info,collm_cloud_worker=debug".to_string()),
            ..SideObservability::default()
        }),
        ..ObservabilitySpec::default()
    });
    let after = rendered(&model);
    let env = |template: &PodTemplateSpec| -> BTreeMap<String, String> {
        pod(template).containers[0]
            .env
            .iter()
            .flatten()
            .filter_map(|e| Some((e.name.clone(), e.value.clone()?)))
            .collect()
    };
    let (edge, cloud) = (env(edge_template(&after)), env(cloud_template(&after)));
    for side in [&edge, &cloud] {
        assert_eq!(side["COLLM_LOG_FORMAT"], "json");
        assert_eq!(side["OTEL_EXPORTER_OTLP_ENDPOINT"], "http://otel-collector.observability:4317");
    }
    assert_eq!(cloud["RUST_LOG"], "info,collm_cloud_worker=debug");
    assert!(!edge.contains_key("RUST_LOG"), "the edge keeps the binary's default level");
    assert!(
        !env(edge_template(&before)).contains_key("COLLM_LOG_FORMAT"),
        "nothing set, nothing added"
    );
    // The pod template changes, so a changed setting rolls the pods.
    assert_ne!(edge_template(&before), edge_template(&after));
}

#[test]
fn an_api_key_secret_reaches_the_edge_agent_as_its_environment_variable() {
    let mut model = CollabModel::fixture();
    let env = |children: &Children| {
        pod(edge_template(children)).containers[0].env.clone().unwrap_or_default()
    };
    assert!(
        env(&rendered(&model)).iter().all(|e| e.name != super::edge::API_KEY_ENV),
        "no key is asked for unless the spec names one"
    );
    model.spec.edge.api_key_secret_ref =
        Some(SecretKeyRef { name: "edge-api".into(), key: "key".into() });
    let env = env(&rendered(&model));
    let var = env.iter().find(|e| e.name == "COLLM_API_KEY").expect("the key's variable");
    assert_eq!(var.value, None, "the key itself never lands in the pod spec");
    let from = var.value_from.as_ref().and_then(|v| v.secret_key_ref.as_ref()).expect("a secret");
    assert_eq!((from.name.as_str(), from.key.as_str()), ("edge-api", "key"));
    assert_eq!(from.optional, Some(false), "a missing Secret keeps the pod from starting");
}
