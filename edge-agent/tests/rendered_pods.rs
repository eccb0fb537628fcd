//! The pods the operator renders, run as a kubelet would run them (see `pod_support`): the
//! chart's example CollabModel with a URL bundle packed by `collm bundle pack` and served by
//! `python3 -m http.server`, its init containers fetching the bundle, then the cloud worker and
//! the edge agent started with exactly the rendered arguments and configuration files. The edge
//! answers collaboratively; a wrong SHA-256 stops the pod before any runtime starts, with the
//! message the operator shows.

mod common;
mod pod_support;

use std::collections::BTreeMap;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use collm_operator::CollabModel;
use collm_operator::render::{ClusterRoles, Generated, Images, Settings, render};
use common::*;
use pod_support::LocalPod;
use serde_json::{Value, json};

const TOKEN_SECRET: &str = "edge-tokens";

fn repo_file(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(relative)
}

fn settings() -> Settings {
    Settings {
        images: Images {
            edge_agent: "collm/edge-agent:test".into(),
            cloud_worker: "collm/cloud-worker:test".into(),
            redis: "redis:test".into(),
            pull_policy: None,
        },
        pull_secrets: Vec::new(),
        cluster_roles: ClusterRoles { edge: "edge".into(), cloud: "cloud".into() },
        operator: None,
    }
}

/// `python3 -m http.server` serving `dir`, as the README says to serve bundles.
struct StaticServer(Child);

impl StaticServer {
    fn start(dir: &Path, port: u16) -> Self {
        let child = Command::new("python3")
            .args(["-m", "http.server", "--bind", "127.0.0.1", &port.to_string()])
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 runs");
        assert!(
            collm_testkit::wait_until(Duration::from_secs(20), || TcpStream::connect((
                "127.0.0.1",
                port
            ))
            .is_ok()),
            "python3 -m http.server did not listen"
        );
        Self(child)
    }
}

impl Drop for StaticServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `collm bundle pack`, as a user runs it: the archive and the printed SHA-256.
fn pack(bundle: &Path, out: &Path, url: &str) -> String {
    let printed =
        collm(&["bundle", "pack", path_str(bundle), "--out", path_str(out), "--url", url]);
    assert!(printed.status.success(), "{}", String::from_utf8_lossy(&printed.stderr));
    let stdout = String::from_utf8_lossy(&printed.stdout).to_string();
    assert!(stdout.contains(&format!("url: {url}")), "{stdout}");
    stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("sha256: "))
        .map(|v| v.trim_matches('"').to_string())
        .unwrap_or_else(|| panic!("no sha256 in {stdout}"))
}

/// The chart's example model with this test's bundle, split, Redis, ports and token Secret.
fn example_model(url: &str, sha256: &str, redis: &str, grpc: u16, api: u16) -> CollabModel {
    let text = std::fs::read_to_string(repo_file("charts/collm/examples/collabmodel.yaml"))
        .expect("example");
    let mut example: Value = serde_yaml::from_str(&text).expect("YAML");
    let spec = &mut example["spec"];
    spec["bundle"] = json!({"url": url, "sha256": sha256});
    spec["splitLayer"] = json!(2);
    spec["exitLayers"] = json!([1, 2]);
    // Every token the cloud's: the answer must be the full model's.
    spec["threshold"] = json!(1.0);
    spec["latencyBudgetMs"] = Value::Null;
    spec["encoding"] = json!("f32");
    spec["cloud"]["grpcPort"] = json!(grpc);
    spec["edge"]["apiPort"] = json!(api);
    spec["context"]["redis"] = json!({"url": redis});
    spec["credentials"] = json!({"edgeTokenSecretRef": {"name": TOKEN_SECRET, "key": "token"}});
    let mut model: CollabModel = serde_json::from_value(example).expect("a CollabModel");
    model.metadata.name = Some("chat".into());
    model.metadata.namespace = Some("models".into());
    model.metadata.uid = Some("00000000-0000-4000-8000-000000000001".into());
    model.metadata.generation = Some(1);
    model
}

struct Rendered {
    cloud: LocalPod,
    cloud_spec: k8s_openapi::api::core::v1::PodSpec,
    edge: LocalPod,
    edge_spec: k8s_openapi::api::core::v1::PodSpec,
    api: u16,
    health: u16,
}

fn lay_out(dir: &Path, model: &CollabModel, grpc: u16, api: u16) -> Rendered {
    let children = render(model, &settings(), &Generated::default()).expect("renders");
    let cloud_spec = children
        .cloud
        .as_ref()
        .and_then(|c| c.deployment.spec.as_ref())
        .and_then(|d| d.template.spec.clone())
        .expect("cloud pod");
    let edge_spec =
        children.edge.spec.as_ref().and_then(|d| d.template.spec.clone()).expect("edge pod");
    let health = collm_testkit::free_port();
    let network = vec![
        (format!("chat-cloud.models.svc:{grpc}"), format!("127.0.0.1:{grpc}")),
        // The headless Service's name: real DNS resolution, of a name that resolves here.
        ("chat-cloud-pods.models.svc".to_string(), "localhost".to_string()),
        ("\"http_port\": 8081".to_string(), format!("\"http_port\": {health}")),
    ];
    let secrets = BTreeMap::from([(
        TOKEN_SECRET.to_string(),
        BTreeMap::from([("token".to_string(), "pod-test-token-1".to_string())]),
    )]);
    let pods = dir.join("pods");
    let cloud = LocalPod::prepare(
        &pods,
        "chat-cloud-7d9f",
        "models",
        &cloud_spec,
        &children.config_map,
        &secrets,
        network.clone(),
    );
    let edge = LocalPod::prepare(
        &pods,
        "chat-edge-x2k4",
        "models",
        &edge_spec,
        &children.config_map,
        &secrets,
        network,
    );
    Rendered { cloud, cloud_spec, edge, edge_spec, api, health }
}

#[test]
fn pods_started_from_the_rendered_config_fetch_their_bundle_and_answer_collaboratively() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bundle = tiny_bundle(dir.path());
    let served = dir.path().join("served");
    std::fs::create_dir(&served).expect("mkdir");
    let port = collm_testkit::free_port();
    let url = format!("http://127.0.0.1:{port}/tiny.tar");
    let sha256 = pack(&bundle, &served.join("tiny.tar"), &url);
    let _server = StaticServer::start(&served, port);
    let redis = collm_testkit::RedisServer::start();
    let (grpc, api) = (collm_testkit::free_port(), collm_testkit::free_port());
    let model = example_model(&url, &sha256, &redis.url(), grpc, api);
    let pods = lay_out(dir.path(), &model, grpc, api);

    // The kubelet runs each pod's init container first: both fetch and verify the bundle.
    for (pod, spec, program) in [
        (&pods.cloud, &pods.cloud_spec, bin("cloud-worker")),
        (&pods.edge, &pods.edge_spec, bin("edge-agent")),
    ] {
        let init = &spec.init_containers.as_ref().expect("a bundle URL means an init container")[0];
        let log = pod.run_init(&program, init);
        assert!(log.contains("bundle ready"), "{log}");
        let fetched = pod.mounted("/var/lib/collm/fetched").join("bundle");
        assert_eq!(
            std::fs::read_to_string(fetched.join(".collm-archive-sha256")).expect("marker"),
            sha256
        );
    }

    // Then the containers, with the rendered arguments only.
    let _cloud = spawn_until(
        &mut pods.cloud.command(&bin("cloud-worker"), &pods.cloud_spec.containers[0]),
        "cloud-worker listening on ",
    );
    let edge = spawn_until(
        &mut pods.edge.command(&bin("edge-agent"), &pods.edge_spec.containers[0]),
        "edge-agent listening on http://",
    );
    assert!(
        edge.addr.ends_with(&format!(":{}", pods.api)),
        "the edge listens on apiPort: {}",
        edge.addr
    );
    let base = format!("http://127.0.0.1:{}", pods.api);
    let (status, _) = get(&format!("http://127.0.0.1:{}", pods.health), "/readyz");
    assert_eq!(status, 200, "the cloud pod's readiness probe passes");
    let (status, _) = get(&base, "/healthz");
    assert_eq!(status, 200, "the edge pod's readiness probe passes");

    let body = json!({"model": "chat", "prompt": PROMPT, "max_tokens": 16, "temperature": 0});
    let (status, answer) = post(&base, "/v1/completions", &body);
    assert_eq!(status, 200, "{answer}");
    let usage = &answer["collm"];
    assert_eq!(usage["mode"], "collaborative", "{usage}");
    assert_eq!(usage["cloud_tokens"], 16, "every token came from the cloud: {usage}");
    assert_eq!(usage["degraded"], false, "{usage}");
    let fetched = pods.cloud.mounted("/var/lib/collm/fetched").join("bundle");
    let full = in_process(&fetched, &["--mode", "full", "--max-tokens", "16"]);
    assert_eq!(tokens(&answer), ids(&full, "tokens"), "the full model's answer, through the cloud");

    // With a lower bar per request the edge answers some tokens itself: a mix.
    let body = json!({"model": "chat", "prompt": PROMPT, "max_tokens": 32, "temperature": 0.8,
                      "seed": 11, "threshold": 0.02});
    let (status, mixed) = post(&base, "/v1/completions", &body);
    assert_eq!(status, 200, "{mixed}");
    let sources = mixed["collm"]["sources"].as_array().expect("sources");
    assert!(
        sources.iter().any(|s| s == "edge") && sources.iter().any(|s| s == "cloud"),
        "{sources:?}"
    );
}

#[test]
fn a_wrong_sha256_stops_the_pod_in_its_init_container_with_the_url_and_both_digests() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bundle = tiny_bundle(dir.path());
    let served = dir.path().join("served");
    std::fs::create_dir(&served).expect("mkdir");
    let port = collm_testkit::free_port();
    let url = format!("http://127.0.0.1:{port}/tiny.tar");
    let sha256 = pack(&bundle, &served.join("tiny.tar"), &url);
    let _server = StaticServer::start(&served, port);
    let wrong = "f".repeat(64);
    let (grpc, api) = (collm_testkit::free_port(), collm_testkit::free_port());
    let model = example_model(&url, &wrong, "redis://127.0.0.1:1", grpc, api);
    let pods = lay_out(dir.path(), &model, grpc, api);

    let init = &pods.edge_spec.init_containers.as_ref().expect("init")[0];
    let out = pods.edge.command(&bin("edge-agent"), init).output().expect("runs");
    assert!(!out.status.success(), "a mismatch fails the init container");
    let message = pods.edge.termination_message();
    assert!(
        message.contains(&url) && message.contains(&sha256) && message.contains(&wrong),
        "{message}"
    );
    assert!(
        !pods.edge.mounted("/var/lib/collm/fetched").join("bundle").exists(),
        "no bundle for the runtime to half-load"
    );
    // The runtime, were it started anyway, refuses to run without its bundle.
    let out = pods
        .edge
        .command(&bin("edge-agent"), &pods.edge_spec.containers[0])
        .output()
        .expect("runs");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("bundle"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
