//! Rendering of what makes pods work in a cluster: bundle delivery, identities and credentials,
//! the managed Redis's protection, resources and scraping.

use k8s_openapi::api::core::v1::{Container, PodSpec, PodTemplateSpec};

use super::*;
use crate::crd::{BundleSource, ConfigMapBundle, Credentials, PvcBundle, SecretKeyRef, SecretRef};
use crate::fixtures::settings;

fn rendered(model: &CollabModel) -> Children {
    render(model, &settings(), &Generated { redis_password_hash: Some("h4sh".into()) })
        .expect("renders")
}

fn edge_pod(children: &Children) -> &PodSpec {
    children.edge.spec.as_ref().and_then(|s| s.template.spec.as_ref()).expect("edge pod")
}

fn cloud_template(children: &Children) -> &PodTemplateSpec {
    &children.cloud.as_ref().and_then(|c| c.deployment.spec.as_ref()).expect("cloud").template
}

fn cloud_pod(children: &Children) -> &PodSpec {
    cloud_template(children).spec.as_ref().expect("cloud pod")
}

fn config(children: &Children, key: &str) -> serde_json::Value {
    let data = children.config_map.data.as_ref().expect("data");
    serde_json::from_str(&data[key]).expect("JSON")
}

fn mount_of<'a>(
    c: &'a Container,
    name: &str,
) -> Option<&'a k8s_openapi::api::core::v1::VolumeMount> {
    c.volume_mounts.iter().flatten().find(|m| m.name == name)
}

fn secret_items(spec: &PodSpec, volume: &str) -> Vec<String> {
    spec.volumes
        .iter()
        .flatten()
        .find(|v| v.name == volume)
        .and_then(|v| v.secret.as_ref())
        .and_then(|s| s.items.clone())
        .unwrap_or_default()
        .into_iter()
        .map(|i| i.key)
        .collect()
}

#[test]
fn a_url_bundle_is_fetched_by_an_init_container_into_a_volume_the_runtime_only_reads() {
    let children = rendered(&CollabModel::fixture());
    for (what, spec, key, binary_image) in [
        ("edge", edge_pod(&children), "edge.json", "edge-agent"),
        ("cloud", cloud_pod(&children), "cloud.json", "cloud-worker"),
    ] {
        let init = spec.init_containers.as_ref().expect("an init container");
        assert_eq!(init.len(), 1, "{what}");
        let fetch = &init[0];
        assert_eq!(fetch.name, pod::FETCH_CONTAINER);
        assert!(
            fetch.image.as_deref().is_some_and(|i| i.contains(binary_image)),
            "{what}: own image"
        );
        assert_eq!(
            fetch.args.clone().expect("args"),
            [
                "fetch-bundle",
                "--config",
                &format!("/etc/collm/{key}"),
                "--termination-log",
                "/dev/termination-log"
            ]
        );
        assert_eq!(fetch.termination_message_policy.as_deref(), Some("FallbackToLogsOnError"));
        let writes = mount_of(fetch, "bundle").expect("the fetcher mounts the bundle volume");
        assert_eq!(
            (writes.mount_path.as_str(), writes.read_only),
            ("/var/lib/collm/fetched", Some(false))
        );
        let reads = mount_of(&spec.containers[0], "bundle").expect("the runtime mounts it too");
        assert_eq!(reads.read_only, Some(true), "{what}: the runtime cannot change its bundle");
        let volume = spec.volumes.iter().flatten().find(|v| v.name == "bundle").expect("volume");
        assert!(volume.empty_dir.is_some(), "{what}");
        // What the init container reads names the directory the runtime loads.
        let cfg = config(&children, key);
        assert_eq!(cfg["bundle"]["dir"], "/var/lib/collm/fetched/bundle");
        assert_eq!(cfg["bundle"]["download"]["url"], "https://models.example/smollm2-135m.tar");
    }
}

#[test]
fn mounted_bundles_need_no_init_container_and_keep_their_source() {
    let cases = [
        BundleSource {
            pvc: Some(PvcBundle { claim_name: "models".into(), path: "/smollm2/".into() }),
            ..BundleSource::default()
        },
        BundleSource {
            config_map: Some(ConfigMapBundle { name: "tiny-bundle".into() }),
            ..BundleSource::default()
        },
    ];
    for source in cases {
        let mut model = CollabModel::fixture();
        model.spec.bundle = source.clone();
        let children = rendered(&model);
        let spec = edge_pod(&children);
        assert!(spec.init_containers.is_none(), "{source:?}");
        let mount = mount_of(&spec.containers[0], "bundle").expect("bundle mount");
        assert_eq!(
            (mount.mount_path.as_str(), mount.read_only),
            ("/var/lib/collm/bundle", Some(true))
        );
        assert_eq!(config(&children, "edge.json")["bundle"]["dir"], "/var/lib/collm/bundle");
        if source.pvc.is_some() {
            assert_eq!(mount.sub_path.as_deref(), Some("smollm2"));
        }
    }
}

#[test]
fn without_a_token_secret_each_edge_pod_presents_its_own_projected_token_the_cloud_reviews() {
    let children = rendered(&CollabModel::fixture());
    let edge = edge_pod(&children);
    assert_eq!(edge.service_account_name.as_deref(), Some("chat-edge"));
    let token =
        edge.volumes.iter().flatten().find(|v| v.name == "edge-token").expect("token volume");
    let projection = token.projected.as_ref().and_then(|p| p.sources.as_ref()).expect("projected")
        [0]
    .service_account_token
    .clone()
    .expect("a service account token");
    assert_eq!(projection.audience.as_deref(), Some("collm.dev/models/chat"));
    assert_eq!(projection.path, "token");
    let edge_cfg = config(&children, "edge.json");
    assert_eq!(edge_cfg["edge_token_file"], "/var/run/secrets/collm/edge-token/token");

    let cloud_cfg = config(&children, "cloud.json");
    assert!(cloud_cfg.get("edge_token_file").is_none(), "no token file: tokens are reviewed");
    assert_eq!(cloud_cfg["token_review"]["audience"], "collm.dev/models/chat");
    assert_eq!(
        cloud_cfg["token_review"]["users"],
        serde_json::json!(["system:serviceaccount:models:chat-edge"])
    );
    let cloud = cloud_pod(&children);
    assert_eq!(cloud.service_account_name.as_deref(), Some("chat-cloud"));
    assert_eq!(cloud.automount_service_account_token, Some(true), "to call the TokenReview API");
    assert!(cloud.volumes.iter().flatten().all(|v| v.name != "edge-token"));

    let binding =
        children.cloud.as_ref().and_then(|c| c.token_review_binding.clone()).expect("binding");
    assert_eq!(binding.role_ref.name, "collm-cloud-worker");
    let subject = &binding.subjects.expect("subjects")[0];
    assert_eq!(
        (subject.name.as_str(), subject.namespace.as_deref()),
        ("chat-cloud", Some("models"))
    );
    let labels = binding.metadata.labels.expect("labels");
    assert_eq!(labels[identity::OWNER_UID_LABEL], "0b5e4f2a-1111-4222-8333-944445555666");
    assert!(binding.metadata.owner_references.is_none(), "cluster-scoped: no namespaced owner");

    let role = &children.edge_identity.role_binding;
    assert_eq!(role.role_ref.name, "collm-edge-agent");
    assert_eq!(role.subjects.as_ref().expect("subjects")[0].name, "chat-edge");
}

#[test]
fn a_token_secret_replaces_reviews_and_revoked_nodes_reach_the_cloud() {
    let mut model = CollabModel::fixture();
    model.spec.credentials = Some(Credentials {
        edge_token_secret_ref: Some(SecretKeyRef { name: "tokens".into(), key: "list".into() }),
        revoked_edge_nodes: vec!["edge-9".into(), "edge-3".into(), "edge-9".into()],
        ..Credentials::default()
    });
    let children = rendered(&model);
    let cloud_cfg = config(&children, "cloud.json");
    assert_eq!(cloud_cfg["edge_token_file"], "/var/run/secrets/collm/edge-token/token");
    assert!(cloud_cfg.get("token_review").is_none());
    assert_eq!(cloud_cfg["revoked_clients"], serde_json::json!(["node/edge-3", "node/edge-9"]));
    assert!(children.cloud.as_ref().expect("cloud").token_review_binding.is_none());
    assert_eq!(cloud_pod(&children).automount_service_account_token, Some(false));
    for spec in [edge_pod(&children), cloud_pod(&children)] {
        assert_eq!(secret_items(spec, "edge-token"), ["list"]);
    }
}

#[test]
fn the_edge_gets_the_cloud_ca_but_never_its_key_and_mutual_tls_is_rendered_on_both_sides() {
    let mut model = CollabModel::fixture();
    model.spec.credentials = Some(Credentials {
        tls_secret_ref: Some(SecretRef { name: "cloud-tls".into() }),
        client_ca_secret_ref: Some(SecretRef { name: "edge-ca".into() }),
        edge_cert_secret_ref: Some(SecretRef { name: "edge-cert".into() }),
        ..Credentials::default()
    });
    let children = rendered(&model);
    assert_eq!(secret_items(edge_pod(&children), "tls"), ["ca.crt"]);
    assert_eq!(secret_items(cloud_pod(&children), "tls"), ["tls.crt", "tls.key"]);
    assert_eq!(secret_items(edge_pod(&children), "edge-cert"), ["tls.crt", "tls.key"]);
    assert_eq!(secret_items(cloud_pod(&children), "client-ca"), ["ca.crt"]);
    assert!(secret_items(cloud_pod(&children), "edge-cert").is_empty());

    let edge_cfg = config(&children, "edge.json");
    assert_eq!(edge_cfg["cloud_endpoint"], "https://chat-cloud.models.svc:50051");
    assert_eq!(edge_cfg["tls_ca_file"], "/var/run/secrets/collm/tls/ca.crt");
    assert_eq!(edge_cfg["tls_cert_file"], "/var/run/secrets/collm/edge-cert/tls.crt");
    assert_eq!(edge_cfg["tls_key_file"], "/var/run/secrets/collm/edge-cert/tls.key");
    let cloud_cfg = config(&children, "cloud.json");
    assert_eq!(cloud_cfg["tls_client_ca_file"], "/var/run/secrets/collm/client-ca/ca.crt");
    assert_eq!(cloud_cfg["tls_key_file"], "/var/run/secrets/collm/tls/tls.key");

    model.spec.credentials = Some(Credentials {
        client_ca_secret_ref: Some(SecretRef { name: "edge-ca".into() }),
        ..Credentials::default()
    });
    let err = render(&model, &settings(), &Generated::default()).expect_err("mTLS without TLS");
    assert!(err.to_string().contains("tlsSecretRef"), "{err}");
}

#[test]
fn the_managed_redis_has_a_password_a_memory_bound_and_admits_only_cloud_pods_and_the_operator() {
    let mut model = CollabModel::fixture();
    model.spec.context.as_mut().and_then(|c| c.redis.as_mut()).expect("redis").max_memory_mib =
        Some(512);
    let children = rendered(&model);
    let redis = children.redis.as_ref().expect("managed");
    let template = &redis.stateful_set.spec.as_ref().expect("sts").template;
    let container = &template.spec.as_ref().expect("pod").containers[0];
    let args = container.args.clone().expect("args").join(" ");
    assert!(args.contains("--requirepass $(REDIS_PASSWORD)"), "{args}");
    assert!(args.contains("--maxmemory 512mb") && args.contains("allkeys-lru"), "{args}");
    let env = container.env.clone().expect("env");
    for var in ["REDIS_PASSWORD", "REDISCLI_AUTH"] {
        let from = env.iter().find(|e| e.name == var).and_then(|e| e.value_from.clone());
        let secret = from.and_then(|f| f.secret_key_ref).expect(var);
        assert_eq!((secret.name.as_str(), secret.key.as_str()), ("chat-redis", "password"));
    }
    let limits = container.resources.as_ref().and_then(|r| r.limits.clone()).expect("limits");
    assert_eq!(limits["memory"].0, "672Mi");
    let annotations = template.metadata.as_ref().and_then(|m| m.annotations.clone()).expect("a");
    assert_eq!(annotations[redis::SECRET_HASH_ANNOTATION], "h4sh");
    // The cloud reads the URL with the password from the same Secret and rolls with it.
    let worker = &cloud_pod(&children).containers[0];
    let url = worker.env.iter().flatten().find(|e| e.name == "COLLM_REDIS_URL").expect("url env");
    let from = url.value_from.as_ref().and_then(|f| f.secret_key_ref.clone()).expect("secret");
    assert_eq!((from.name.as_str(), from.key.as_str()), ("chat-redis", "url"));
    let cloud_annotations =
        cloud_template(&children).metadata.as_ref().and_then(|m| m.annotations.clone());
    assert_eq!(cloud_annotations.expect("a")[redis::SECRET_HASH_ANNOTATION], "h4sh");

    let policy = redis.network_policy.spec.as_ref().expect("policy");
    let from = policy.ingress.as_ref().expect("ingress")[0].from.clone().expect("from");
    assert_eq!(from.len(), 2);
    let cloud_labels =
        from[0].pod_selector.as_ref().and_then(|s| s.match_labels.clone()).expect("pods");
    assert_eq!(cloud_labels["app.kubernetes.io/component"], "cloud");
    assert_eq!(cloud_labels["app.kubernetes.io/instance"], "chat");
    let ns = from[1].namespace_selector.as_ref().and_then(|s| s.match_labels.clone()).expect("ns");
    assert_eq!(ns["kubernetes.io/metadata.name"], "collm-system");

    let secret = redis::password_secret(&ModelRef::of(&model).expect("stored"), "s3cr3t");
    let data = secret.data.expect("data");
    assert_eq!(data["url"].0, b"redis://:s3cr3t@chat-redis.models.svc:6379");
    assert_eq!(secret.metadata.owner_references.expect("owned")[0].name, "chat");
}

#[test]
fn pods_get_cpu_requests_pull_secrets_a_scrape_target_and_do_not_spin() {
    let mut model = CollabModel::fixture();
    model.spec.image_pull_secrets =
        vec![k8s_openapi::api::core::v1::LocalObjectReference { name: "model-regcred".into() }];
    let children = rendered(&model);
    for (what, spec) in [("edge", edge_pod(&children)), ("cloud", cloud_pod(&children))] {
        let worker = &spec.containers[0];
        let requests = worker.resources.as_ref().and_then(|r| r.requests.clone()).expect(what);
        assert!(requests.contains_key("cpu"), "{what}: a CPU request for scheduling and the HPA");
        let names: Vec<_> =
            spec.image_pull_secrets.iter().flatten().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["regcred", "model-regcred"], "{what}");
        let env = worker.env.clone().expect("env");
        assert!(
            env.iter().any(|e| e.name == "COLLM_SPIN" && e.value.as_deref() == Some("0")),
            "{what}"
        );
        assert!(env.iter().any(|e| e.name == "POD_NAME"), "{what}");
    }
    for (what, template, port) in [
        ("edge", &children.edge.spec.as_ref().expect("ds").template, "8080"),
        ("cloud", cloud_template(&children), "8081"),
    ] {
        let annotations =
            template.metadata.as_ref().and_then(|m| m.annotations.clone()).expect(what);
        assert_eq!(annotations["prometheus.io/scrape"], "true", "{what}");
        assert_eq!(annotations["prometheus.io/port"], port, "{what}");
    }
    let cloud = children.cloud.as_ref().expect("cloud");
    let ports = cloud.service.spec.as_ref().and_then(|s| s.ports.clone()).expect("ports");
    assert!(ports.iter().any(|p| p.name.as_deref() == Some("metrics") && p.port == 8081));

    // A spec with resources but no CPU request still gets one.
    model.spec.cloud.resources = Some(k8s_openapi::api::core::v1::ResourceRequirements {
        limits: Some(std::collections::BTreeMap::from([(
            "memory".to_string(),
            k8s_openapi::apimachinery::pkg::api::resource::Quantity("2Gi".into()),
        )])),
        ..Default::default()
    });
    let children = rendered(&model);
    let resources = cloud_pod(&children).containers[0].resources.clone().expect("resources");
    assert_eq!(resources.requests.expect("requests")["cpu"].0, "500m");
    assert_eq!(resources.limits.expect("limits")["memory"].0, "2Gi");
}

#[test]
fn a_headless_service_lists_the_cloud_pods_for_edges_to_spread_sessions_over() {
    let children = rendered(&CollabModel::fixture());
    let pods = &children.cloud.as_ref().expect("cloud").pods_service;
    assert_eq!(pods.metadata.name.as_deref(), Some("chat-cloud-pods"));
    let spec = pods.spec.as_ref().expect("spec");
    assert_eq!(spec.cluster_ip.as_deref(), Some("None"));
    assert_eq!(spec.publish_not_ready_addresses, Some(false), "draining pods leave the records");
    assert_eq!(spec.selector.as_ref().expect("selector")["app.kubernetes.io/component"], "cloud");
}
