//! The chart's PodMonitor finds what the operator renders: its selector's labels are on every
//! edge and cloud pod, and the port it scrapes is a port both runtime containers name. And the
//! observability example's settings arrive in both containers' environment.

use std::path::Path;

use collm_operator::CollabModel;
use collm_operator::render::{
    APP_NAME, ClusterRoles, Generated, Images, MANAGED_BY, Settings, render,
};
use k8s_openapi::api::core::v1::PodTemplateSpec;

fn repo_file(relative: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn settings() -> Settings {
    Settings {
        images: Images {
            edge_agent: "collm/edge-agent:test".to_string(),
            cloud_worker: "collm/cloud-worker:test".to_string(),
            redis: "redis:test".to_string(),
            pull_policy: None,
        },
        pull_secrets: Vec::new(),
        cluster_roles: ClusterRoles { edge: "edge".to_string(), cloud: "cloud".to_string() },
        operator: None,
    }
}

#[test]
fn the_pod_monitor_selects_the_rendered_pods_and_scrapes_a_port_they_name() {
    let template = repo_file("charts/collm/templates/podmonitor.yaml");
    let mut model: CollabModel =
        serde_yaml::from_str(&repo_file("charts/collm/examples/observability.yaml"))
            .expect("the example is a CollabModel");
    model.metadata.namespace = Some("examples".to_string());
    model.metadata.uid = Some("00000000-0000-4000-8000-000000000000".to_string());
    model.metadata.generation = Some(1);
    let children = render(&model, &settings(), &Generated::default()).expect("renders");
    let edge = &children.edge.spec.as_ref().expect("spec").template;
    let cloud =
        &children.cloud.as_ref().expect("cloud").deployment.spec.as_ref().expect("spec").template;

    for line in [
        format!("app.kubernetes.io/name: {APP_NAME}"),
        format!("app.kubernetes.io/managed-by: {MANAGED_BY}"),
        "values: [edge, cloud]".to_string(),
        "- port: http".to_string(),
    ] {
        assert!(template.contains(&line), "the PodMonitor lacks {line:?}:\n{template}");
    }
    for (side, pods) in [("edge", edge), ("cloud", cloud)] {
        let labels = pods.metadata.as_ref().and_then(|m| m.labels.clone()).unwrap_or_default();
        assert_eq!(labels["app.kubernetes.io/name"], APP_NAME, "{side}");
        assert_eq!(labels["app.kubernetes.io/managed-by"], MANAGED_BY, "{side}");
        assert_eq!(labels["app.kubernetes.io/component"], side);
        let container = &pods.spec.as_ref().expect("pod spec").containers[0];
        let ports = container.ports.iter().flatten();
        assert!(
            ports.clone().any(|p| p.name.as_deref() == Some("http")),
            "{side}: {ports:?}",
            ports = ports.collect::<Vec<_>>()
        );
        let env = env(pods);
        assert_eq!(env("COLLM_LOG_FORMAT").as_deref(), Some("json"), "{side}");
        assert_eq!(
            env("OTEL_EXPORTER_OTLP_ENDPOINT").as_deref(),
            Some("http://otel-collector.observability:4317"),
            "{side}"
        );
    }
    assert_eq!(env(cloud)("RUST_LOG").as_deref(), Some("info,collm_cloud_worker=debug"));
    assert_eq!(env(edge)("RUST_LOG").as_deref(), Some("info"));
}

fn env(pods: &PodTemplateSpec) -> impl Fn(&str) -> Option<String> + '_ {
    move |name| {
        pods.spec.as_ref()?.containers[0]
            .env
            .iter()
            .flatten()
            .find(|e| e.name == name)
            .and_then(|e| e.value.clone())
    }
}
