//! Heavy: CollabModels on a real node (`e2e/cluster/up --node`), the way the README's
//! Kubernetes section runs them: the chart installed with the images built here (the operator
//! in its pod), bundles packed with `collm bundle pack` and served over HTTP from this machine,
//! the chart's examples applied with `kubectl apply`. Every condition comes from what the
//! kubelet reports of real pods; nothing here writes a status.
//!
//! One cluster and one chart install for the binary; each test works in namespaces of its own,
//! so the tests run side by side.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use collm_e2e::chat::{Stream, chat, count, model_ids};
use collm_e2e::cluster::{Kubectl, repo_root};
use collm_e2e::node::{real_node, workspace_binary};
use collm_e2e::pods::{http_get, pod_ready};
use collm_e2e::process::eventually;
use collm_e2e::stage::{POD_START, calibrate, example, export_smollm2, operator_log, stage};
use collm_e2e::{condition, merge};
use serde_json::{Value, json};

/// Port of the cloud worker's HTTP server (readiness, metrics) in its pod.
const CLOUD_HTTP_PORT: u16 = 8081;

fn check<T>(result: Result<T>) -> T {
    result
        .unwrap_or_else(|e| panic!("{e:#}\n\noperator log:\n{}", operator_log(&real_node().admin)))
}

/// A condition the model must show: type, status and (when given) reason.
type Want<'a> = (&'a str, &'a str, Option<&'a str>);

/// Waits until the model's conditions are as `want` says; returns the model. On timeout the
/// error has the conditions, the namespace's pods and warning events.
fn wait_conditions(
    admin: &Kubectl,
    ns: &str,
    name: &str,
    want: &[Want],
    timeout: Duration,
) -> Result<Value> {
    eventually(&format!("CollabModel {ns}/{name} to show {want:?}"), timeout, || {
        let model = admin.must_get(ns, "collabmodel", name)?;
        for (type_, status, reason) in want {
            let c = condition(&model, type_).with_context(|| format!("no {type_} yet"))?;
            ensure!(
                c.0 == *status && reason.is_none_or(|r| c.1 == r),
                "{type_} is {c:?}; conditions: {}",
                model["status"]["conditions"]
            );
        }
        Ok(model)
    })
    .map_err(|e| e.context(admin.diagnose(ns)))
}

const ALL_READY: &[Want] = &[
    ("EdgeReady", "True", None),
    ("CloudReady", "True", None),
    ("ContextReady", "True", None),
    ("Degraded", "False", None),
    ("Ready", "True", None),
];

/// Where the test reaches a Service's port: its ClusterIP, which only kube-proxy's rules lead
/// anywhere (the local node is this machine).
fn service_address(admin: &Kubectl, ns: &str, name: &str, port: u16) -> Result<SocketAddr> {
    let service = admin.must_get(ns, "service", name)?;
    let ip = service["spec"]["clusterIP"].as_str().context("a ClusterIP Service")?;
    Ok(format!("{ip}:{port}").parse()?)
}

fn selector(model: &str, component: &str) -> String {
    format!("app.kubernetes.io/instance={model},app.kubernetes.io/component={component}")
}

/// The ready pods of a component: (name, pod IP).
fn ready_pods(
    admin: &Kubectl,
    ns: &str,
    model: &str,
    component: &str,
) -> Result<Vec<(String, String)>> {
    Ok(admin
        .pods(ns, &selector(model, component))?
        .iter()
        .filter(|p| pod_ready(p) && p["metadata"]["deletionTimestamp"].is_null())
        .filter_map(|p| {
            Some((
                p["metadata"]["name"].as_str()?.to_string(),
                p["status"]["podIP"].as_str()?.to_string(),
            ))
        })
        .collect())
}

/// NextToken calls a cloud pod answered (its /metrics, read at the pod's address).
fn answered(pod_ip: &str) -> Result<f64> {
    let (status, page) = http_get(format!("{pod_ip}:{CLOUD_HTTP_PORT}").parse()?, "/metrics")?;
    ensure!(status == 200, "GET /metrics of {pod_ip}: {status}");
    Ok(page
        .lines()
        .find_map(|l| {
            l.strip_prefix(r#"collm_cloud_rpc_requests_total{rpc="NextToken",code="OK"} "#)
        })
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0))
}

/// The models the edge agent behind `address` serves, once its Service routes: kube-proxy
/// programs a Service's new endpoints a moment after the pod turns ready, which is when the
/// model's conditions may already say so.
fn served_models(address: SocketAddr) -> Result<Vec<String>> {
    eventually(&format!("GET http://{address}/v1/models"), Duration::from_secs(60), || {
        model_ids(address)
    })
}

fn chat_request(model: &str, prompt: &str, max_tokens: u32, extra: Value) -> Value {
    let mut request = json!({
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0,
    });
    merge(&mut request, extra);
    request
}

/// The pinned `openai` Python client (tools/api-clients-venv) driving the agent at `address`:
/// edge-agent/tests/openai_client.py, with no API key ("none": the example sets none).
fn openai_client(address: SocketAddr, model: &str) -> Result<Value> {
    let venv = Command::new(repo_root().join("tools/api-clients-venv")).output()?;
    let err = String::from_utf8_lossy(&venv.stderr);
    ensure!(venv.status.success(), "tools/api-clients-venv: {err}");
    let python = String::from_utf8(venv.stdout)?.trim().to_string();
    let out = Command::new(python)
        .arg(repo_root().join("edge-agent/tests/openai_client.py"))
        .args([&format!("http://{address}"), model, "none"])
        .output()?;
    ensure!(
        out.status.success(),
        "the openai client failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// A Secret's key, decoded.
fn secret_value(admin: &Kubectl, ns: &str, name: &str, key: &str) -> Result<String> {
    admin.run(&[
        "get",
        "secret",
        name,
        "-n",
        ns,
        "-o",
        &format!("go-template={{{{index .data \"{key}\" | base64decode}}}}"),
    ])
}

/// The README's path on the README's example: SmolLM2 packed and served over HTTP, the
/// example CollabModel with its url and sha256 (two cloud replicas; small CPU requests so that
/// three fit on a 2-core node; no latency budget, so that a greedy answer does not depend on the
/// machine's load) in a namespace at the `restricted` Pod Security level, as NOTES.txt says.
#[test]
fn heavy_the_readme_example_answers_survives_a_lost_replica_scales_and_goes_away() {
    let node = real_node();
    let admin = &node.admin;
    let stage = stage();
    let work = check(tempfile::tempdir().map_err(Into::into));
    let bundle = check(export_smollm2(work.path()));
    let (url, sha256) = check(stage.bundles.pack(&bundle, "smollm2"));

    let ns = restricted_namespace(admin, "readme");
    let (mut model, name) = named_example("collabmodel.yaml");
    merge(
        &mut model["spec"],
        json!({
            "bundle": {"url": url, "sha256": sha256},
            "latencyBudgetMs": null,
            "edge": {"resources": {"requests": {"cpu": "100m"}}},
            "cloud": {"minReplicas": 2, "resources": {"requests": {"cpu": "100m"}}},
        }),
    );
    let started = Instant::now();
    check(admin.run_with_input(&["apply", "-n", &ns, "-f", "-"], Some(&model.to_string())));
    check(wait_conditions(admin, &ns, &name, ALL_READY, POD_START * 2));
    // The autoscaler raises the Deployment to the model's minimum of two; the conditions follow.
    check(admin.wait_ready_pods(&ns, &selector(&name, "cloud"), 2, POD_START).map(|_| ()));
    let status = check(wait_conditions(admin, &ns, &name, ALL_READY, POD_START));
    assert_eq!(status["status"]["cloudReplicas"], 2, "{}", status["status"]);
    eprintln!(
        "{name}: every condition True {:.1?} after apply: {}",
        started.elapsed(),
        status["status"]
    );
    // The conditions say what the kubelet says of the pods.
    assert_eq!(
        check(ready_pods(admin, &ns, &name, "edge")).len(),
        1,
        "one edge node, one edge pod"
    );
    assert_eq!(check(ready_pods(admin, &ns, &name, "cloud")).len(), 2, "two cloud replicas");
    assert_eq!(check(ready_pods(admin, &ns, &name, "redis")).len(), 1, "the managed Redis");

    // Chat through the edge agent's Service: tokens from the edge and from the cloud.
    let edge = check(service_address(admin, &ns, &format!("{name}-edge"), 8080));
    let ids = check(served_models(edge));
    assert_eq!(ids.len(), 1, "{ids:?}");
    let id = &ids[0];
    let answer = check(chat(edge, &chat_request(id, "Name three primary colors.", 48, json!({}))));
    let usage = &answer["collm"];
    let text = answer["choices"][0]["message"]["content"].as_str().unwrap_or_default();
    eprintln!("answer: {text:?} {usage}");
    assert!(!text.trim().is_empty(), "{answer}");
    assert!(
        count(usage, "edge_tokens") > 0 && count(usage, "cloud_tokens") > 0,
        "tokens from both: {usage}"
    );
    assert_eq!(usage["degraded"], false, "{usage}");
    let report = check(openai_client(edge, id));
    eprintln!("the openai client: {report}");
    // The README's way in from outside the cluster: `kubectl port-forward svc/<model>-edge`.
    let forward = check(admin.port_forward(&ns, &format!("svc/{name}-edge"), 8080, &node.log_dir));
    let answer = check(chat(
        forward.address,
        &chat_request(id, "Name three primary colors.", 48, json!({})),
    ));
    assert_eq!(
        answer["choices"][0]["message"]["content"].as_str(),
        Some(text),
        "greedy, same answer"
    );
    drop(forward);

    the_cloud_pod_serving_a_stream_goes_and_the_stream_does_not_notice(admin, &ns, &name, edge, id);
    new_sessions_reach_a_third_replica(admin, &ns, &name, edge, id);
    deleting_the_model_removes_its_pods_secrets_and_context(admin, &ns, &name);
    check(admin.run(&["delete", "namespace", &ns, "--wait=false"]));
}

/// A long greedy answer, streamed: the cloud pod serving it is deleted after the first cloud
/// token; the stream goes on on the other replica, which rebuilds the session from Redis, and
/// carries on the same answer: token for token the uninterrupted one, each from the same half,
/// as long and ending the same way. (The rebuilt replica cuts the context where the edge's
/// asks did, so it computes the lost replica's keys and values to the bit; one batched pass
/// would round apart, with int8 activations, enough to swap nearly tied tokens.)
fn the_cloud_pod_serving_a_stream_goes_and_the_stream_does_not_notice(
    admin: &Kubectl,
    ns: &str,
    name: &str,
    edge: SocketAddr,
    id: &str,
) {
    // A threshold the exit head often misses, so that the cloud answers all along the stream.
    let request = chat_request(
        id,
        "Write a short story about a robot who learns to paint.",
        96,
        json!({"threshold": 0.99, "stream": true, "stream_options": {"include_usage": true}}),
    );
    let reference = check(Stream::start(edge, &request).and_then(Stream::finish));
    eprintln!("uninterrupted: {:?} {}", reference.text, reference.summary);
    assert!(count(&reference.summary, "cloud_tokens") > 0, "{}", reference.summary);

    let pods = check(ready_pods(admin, ns, name, "cloud"));
    assert_eq!(pods.len(), 2, "{pods:?}");
    let before: Vec<f64> = pods.iter().map(|(_, ip)| check(answered(ip))).collect();
    let mut stream = check(Stream::start(edge, &request));
    let serving = loop {
        assert!(check(stream.next_piece()), "the stream ended before the cloud answered");
        let now: Vec<f64> = pods.iter().map(|(_, ip)| check(answered(ip))).collect();
        let grown: Vec<usize> = (0..pods.len()).filter(|&i| now[i] > before[i]).collect();
        assert!(grown.len() <= 1, "one session, one replica: {before:?} -> {now:?}");
        if let Some(&i) = grown.first() {
            break i;
        }
    };
    let (victim, _) = &pods[serving];
    let (other, other_ip) = &pods[1 - serving];
    let at = stream.pieces.len();
    let other_before = check(answered(other_ip));
    check(admin.run(&["delete", "pod", victim, "-n", ns, "--wait=false"]));
    eprintln!("deleted {victim}, which served the stream, after {at} pieces");
    let interrupted = check(stream.finish());
    eprintln!("interrupted: {:?} {}", interrupted.text, interrupted.summary);
    assert!(interrupted.pieces.len() > at + 8, "the stream went on after the deletion");
    assert!(!reference.tokens.is_empty(), "the stream lists its token ids");
    assert!(at < 16, "the replica went early in the answer, after {at} pieces");
    assert_eq!(
        interrupted.tokens, reference.tokens,
        "the stream carried on the uninterrupted answer after the loss"
    );
    assert_eq!(interrupted.sources, reference.sources, "each from the same half");
    assert_eq!(interrupted.finish_reason, reference.finish_reason);
    assert_eq!(
        count(&interrupted.usage, "completion_tokens"),
        count(&reference.usage, "completion_tokens")
    );
    assert!(
        check(answered(other_ip)) > other_before,
        "the session moved to {other} when {victim} went"
    );
    // The Deployment replaces the pod.
    check(admin.wait_ready_pods(ns, &selector(name, "cloud"), 2, POD_START).map(|_| ()));
}

/// The model asks for a third replica (the autoscaler's minimum): once it is ready, new
/// sessions reach it.
fn new_sessions_reach_a_third_replica(
    admin: &Kubectl,
    ns: &str,
    name: &str,
    edge: SocketAddr,
    id: &str,
) {
    let old: Vec<String> = check(eventually("two ready cloud pods", POD_START, || {
        let pods = ready_pods(admin, ns, name, "cloud")?;
        ensure!(pods.len() == 2, "{pods:?}");
        Ok(pods.into_iter().map(|(n, _)| n).collect())
    }));
    check(admin.run(&[
        "patch",
        "collabmodel",
        name,
        "-n",
        ns,
        "--type=merge",
        "-p",
        r#"{"spec":{"cloud":{"minReplicas":3}}}"#,
    ]));
    let (new, new_ip) = check(eventually("a third ready cloud pod", POD_START, || {
        let pods = ready_pods(admin, ns, name, "cloud")?;
        ensure!(pods.len() == 3, "{pods:?}");
        pods.into_iter().find(|(n, _)| !old.contains(n)).context("no new pod")
    }));
    let ready_at = Instant::now();
    let before = check(answered(&new_ip));
    // Every token from the cloud (a threshold above 1 never exits), a few per session. Edges
    // see the replica once the cluster DNS lists it: its cache (30 s) and their 2 s lookups.
    let mut sessions = 0;
    check(eventually("a new session on the new replica", Duration::from_secs(60), || {
        sessions += 1;
        let prompt = format!("Count to {sessions}.");
        let answer = chat(edge, &chat_request(id, &prompt, 3, json!({"threshold": 1.5})))?;
        ensure!(count(&answer["collm"], "cloud_tokens") > 0, "{answer}");
        ensure!(answered(&new_ip)? > before, "{sessions} sessions, none on {new} yet");
        Ok(())
    }));
    eprintln!("{new} served session {sessions}, {:.1?} after it was ready", ready_at.elapsed());
    let model = check(admin.must_get(ns, "collabmodel", name));
    eprintln!("status after scaling: {}", model["status"]);
}

/// Deleting the model: its pods, the Secrets the operator generated and its keys in Redis go.
fn deleting_the_model_removes_its_pods_secrets_and_context(admin: &Kubectl, ns: &str, name: &str) {
    let generated = check(admin.run(&[
        "get",
        "secrets",
        "-n",
        ns,
        "-l",
        &format!("app.kubernetes.io/instance={name}"),
        "-o",
        "name",
    ]));
    assert!(!generated.trim().is_empty(), "the operator generated the Redis password Secret");
    // The managed Redis, reached at its pod's address with the password the operator made.
    let (_, redis_ip) = check(ready_pods(admin, ns, name, "redis")).pop().expect("a Redis pod");
    let url = check(secret_value(admin, ns, &format!("{name}-redis"), "url"));
    let password =
        url.split_once("://:").and_then(|(_, r)| r.split_once('@')).map(|(p, _)| p.to_string());
    let password = password.unwrap_or_else(|| panic!("no password in the Redis URL {url}"));
    let client =
        redis::Client::open(format!("redis://:{password}@{redis_ip}:6379/0")).expect("a Redis URL");
    let mut redis = client
        .get_connection_with_timeout(Duration::from_secs(5))
        .expect("the managed Redis answers");
    let prefix = format!("collm:{ns}:{name}:");
    // The sessions above ended; a context the workers keep until its TTL stands for one that
    // is still open.
    redis::cmd("SET")
        .arg(format!("{prefix}open-session"))
        .arg("x")
        .query::<()>(&mut redis)
        .expect("SET");
    let keys = |redis: &mut redis::Connection| -> redis::RedisResult<Vec<String>> {
        redis::cmd("KEYS").arg(format!("{prefix}*")).query(redis)
    };
    let stored = keys(&mut redis).expect("KEYS");
    eprintln!("{} keys under {prefix} before the deletion", stored.len());

    check(admin.run(&["delete", "collabmodel", name, "-n", ns, "--wait=false"]));
    // The finalizer deletes the keys while the Redis still runs; the Redis goes after it.
    let deadline = Instant::now() + POD_START;
    let mut emptied = false;
    while Instant::now() < deadline {
        match keys(&mut redis) {
            Ok(left) if left.is_empty() => {
                emptied = true;
                break;
            }
            Ok(_) => std::thread::sleep(Duration::from_millis(100)),
            Err(e) => panic!("the Redis went before its keys under {prefix} did: {e}"),
        }
    }
    assert!(emptied, "keys under {prefix} remained");
    check(eventually("the model and everything it made to be gone", POD_START, || {
        ensure!(admin.get(ns, "collabmodel", name)?.is_none(), "the model is still there");
        let left = admin.run(&[
            "get",
            "pods,secrets,configmaps,services,serviceaccounts,deployments,daemonsets,statefulsets",
            "-n",
            ns,
            "-l",
            &format!("app.kubernetes.io/instance={name}"),
            "-o",
            "name",
        ])?;
        ensure!(left.trim().is_empty(), "still there:\n{left}");
        Ok(())
    }));
}

/// A tiny collaborative model with a URL bundle; `spec` merged over it.
fn tiny_model(ns: &str, name: &str, spec: Value) -> Value {
    let mut model = json!({
        "apiVersion": "collm.dev/v1alpha1",
        "kind": "CollabModel",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "splitLayer": 2,
            "exitLayers": [2],
            "mode": "collaborative",
            "threshold": 0.5,
            "edge": {"resources": {"requests": {"cpu": "50m"}}},
            "cloud": {"minReplicas": 1, "maxReplicas": 1, "resources": {"requests": {"cpu": "50m"}}},
            "context": {"redis": {"managed": true}},
        },
    });
    merge(&mut model["spec"], spec);
    model
}

fn tiny_bundle(dir: &Path) -> std::path::PathBuf {
    let collm = check(workspace_binary("collm"));
    collm_testkit::tiny_bundle(&collm, dir, "tiny")
}

/// A wrong SHA-256 keeps every pod of the model unready, and the model says why (the URL and
/// both digests, from the init container's real termination message) in its conditions and a
/// Warning Event; the right one makes it recover.
#[test]
fn heavy_a_wrong_sha256_says_why_and_the_right_one_recovers() {
    let node = real_node();
    let admin = &node.admin;
    let stage = stage();
    let work = check(tempfile::tempdir().map_err(Into::into));
    let (url, sha256) = check(stage.bundles.pack(&tiny_bundle(work.path()), "tiny-checked"));
    let wrong = format!("{}{}", if sha256.starts_with('0') { "1" } else { "0" }, &sha256[1..]);
    let ns = restricted_namespace(admin, "sha");
    check(admin.apply(
        &tiny_model(&ns, "tiny", json!({"bundle": {"url": url, "sha256": wrong}})).to_string(),
    ));

    let model = check(wait_conditions(
        admin,
        &ns,
        "tiny",
        &[
            ("EdgeReady", "False", Some("BundleFetchFailed")),
            ("CloudReady", "False", Some("BundleFetchFailed")),
            ("Ready", "False", None),
        ],
        POD_START,
    ));
    for type_ in ["EdgeReady", "CloudReady"] {
        let (_, _, message) = condition(&model, type_).expect("the condition");
        assert!(
            message.contains(&url) && message.contains(&sha256) && message.contains(&wrong),
            "{type_} should name the URL and both digests: {message}"
        );
    }
    for component in ["edge", "cloud"] {
        let pods = check(admin.pods(&ns, &selector("tiny", component)));
        assert!(
            !pods.is_empty() && pods.iter().all(|p| !pod_ready(p)),
            "no {component} pod is ready"
        );
    }
    check(eventually("a BundleFetchFailed Warning Event naming the URL", POD_START, || {
        let events = admin.run(&[
            "get",
            "events",
            "-n",
            &ns,
            "--field-selector=type=Warning",
            "-o",
            "json",
        ])?;
        ensure!(events.contains("BundleFetchFailed") && events.contains(&url), "not yet");
        Ok(())
    }));

    check(admin.run(&[
        "patch",
        "collabmodel",
        "tiny",
        "-n",
        &ns,
        "--type=merge",
        "-p",
        &json!({"spec": {"bundle": {"sha256": sha256}}}).to_string(),
    ]));
    check(wait_conditions(admin, &ns, "tiny", ALL_READY, POD_START));
    let edge = check(service_address(admin, &ns, "tiny-edge", 8080));
    let id = check(served_models(edge)).remove(0);
    let answer = check(chat(edge, &chat_request(&id, "hello", 4, json!({"threshold": 1.5}))));
    assert_eq!(count(&answer["collm"], "cloud_tokens"), 4, "{answer}");
    check(admin.run(&["delete", "namespace", &ns, "--wait=false"]));
}

/// Makes `path` and its files readable by the pods' user (UID 65532) through a hostPath.
fn open_to_pods(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))?;
    for entry in std::fs::read_dir(path)? {
        let entry = entry?;
        let mode = if entry.file_type()?.is_dir() { 0o755 } else { 0o644 };
        std::fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(mode))?;
        if mode == 0o755 {
            open_to_pods(&entry.path())?;
        }
    }
    Ok(())
}

/// The edge-only example as its comment says to run it: a hostPath bundle on the device, the
/// API on a hostPort, a token Secret and the remote cloud's CA in Secrets, in a namespace at the
/// `privileged` Pod Security level. Its remote cloud does not answer here (the cluster's DNS
/// has no upstream), which is the state the comment promises: EdgeReady True, Degraded True
/// with reason CloudLinkDown, Ready False, and the edge answering alone on the node's port.
#[test]
fn heavy_the_edge_only_example_serves_alone_on_its_host_port_and_says_its_cloud_is_down() {
    let node = real_node();
    let admin = &node.admin;
    stage();
    let work = check(tempfile::tempdir().map_err(Into::into));
    let bundle = check(export_smollm2(work.path()));
    check(open_to_pods(work.path()));
    let tls = collm_testkit::TlsFiles::generate(work.path());
    let token = work.path().join("edge.token");
    check(std::fs::write(&token, "edge-device-token\n").map_err(Into::into));

    let ns = check(admin.fresh_namespace("edge-only"));
    check(admin.run(&["label", "namespace", &ns, "pod-security.kubernetes.io/enforce=privileged"]));
    let file = |name: &str, path: &Path| format!("--from-file={name}={}", path.display());
    check(admin.run(&[
        "create",
        "secret",
        "generic",
        "smollm2-edge-token",
        "-n",
        &ns,
        &file("token", &token),
    ]));
    check(admin.run(&[
        "create",
        "secret",
        "generic",
        "smollm2-cloud-tls",
        "-n",
        &ns,
        &file("ca.crt", &tls.ca_cert),
    ]));
    let (mut model, name) = named_example("edge-only.yaml");
    // The device's bundle directory: this machine's, as the node is this machine.
    model["spec"]["bundle"]["hostPath"]["path"] = json!(bundle.display().to_string());
    check(admin.run_with_input(&["apply", "-n", &ns, "-f", "-"], Some(&model.to_string())));
    let status = check(wait_conditions(
        admin,
        &ns,
        &name,
        &[
            ("EdgeReady", "True", None),
            ("Degraded", "True", Some("CloudLinkDown")),
            ("Ready", "False", None),
        ],
        POD_START,
    ));
    eprintln!("{name}: {}", status["status"]);

    // A client on the node's network: the node's address, the example's hostPort.
    let ip = node.host_address_for_pods().expect("a local node");
    let edge = SocketAddr::new(ip, 8080);
    let id = check(served_models(edge)).remove(0);
    let answer = check(chat(edge, &chat_request(&id, "Name three primary colors.", 12, json!({}))));
    assert!(count(&answer["usage"], "completion_tokens") > 0, "{answer}");
    let usage = &answer["collm"];
    assert_eq!(count(usage, "cloud_tokens"), 0, "alone: {usage}");
    assert_eq!(usage["degraded"], true, "the answer says the cloud was missing: {usage}");
    check(admin.run(&["delete", "namespace", &ns, "--wait=false"]));
}

/// The bundle sources a pod mounts as they are, each on a pod of ours: a PersistentVolumeClaim
/// (a volume bound to a directory of the node) and a ConfigMap. The cloud of the first runs
/// under a CPU limit of one core: its ONNX Runtime pool has one thread (the machine has two)
/// and does not spin.
#[test]
fn heavy_pvc_and_config_map_bundles_serve_from_pods() {
    let node = real_node();
    let admin = &node.admin;
    stage();
    let work = check(tempfile::tempdir().map_err(Into::into));
    let bundle = tiny_bundle(work.path());
    check(open_to_pods(work.path()));
    let ns = restricted_namespace(admin, "sources");

    // A PersistentVolume over the directory holding the bundle, claimed by name.
    let volume = format!("{ns}-bundles");
    check(
        admin.apply(
            &json!({
                "apiVersion": "v1",
                "kind": "PersistentVolume",
                "metadata": {"name": volume},
                "spec": {
                    "capacity": {"storage": "1Gi"},
                    "accessModes": ["ReadOnlyMany"],
                    "storageClassName": "",
                    "persistentVolumeReclaimPolicy": "Retain",
                    "hostPath": {"path": work.path().display().to_string(), "type": "Directory"},
                    "claimRef": {"namespace": ns, "name": "bundles"},
                },
            })
            .to_string(),
        ),
    );
    check(
        admin.apply(
            &json!({
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "metadata": {"name": "bundles", "namespace": ns},
                "spec": {
                    "accessModes": ["ReadOnlyMany"],
                    "storageClassName": "",
                    "volumeName": volume,
                    "resources": {"requests": {"storage": "1Gi"}},
                },
            })
            .to_string(),
        ),
    );
    check(
        admin.apply(
            &tiny_model(
                &ns,
                "from-pvc",
                json!({
                    "bundle": {"pvc": {"claimName": "bundles", "path": "tiny"}},
                    "cloud": {"resources": {"limits": {"cpu": "1"}}},
                }),
            )
            .to_string(),
        ),
    );

    // A ConfigMap of the bundle's files (binary ones as binaryData).
    let mut args = vec![
        "create".to_string(),
        "configmap".into(),
        "tiny-bundle".into(),
        "-n".into(),
        ns.clone(),
    ];
    for entry in check(std::fs::read_dir(&bundle).map_err(Into::into)) {
        let path = check(entry.map_err(Into::into)).path();
        args.push(format!("--from-file={}", path.display()));
    }
    check(admin.run(&args.iter().map(String::as_str).collect::<Vec<_>>()));
    check(
        admin.apply(
            &tiny_model(
                &ns,
                "from-config-map",
                json!({"bundle": {"configMap": {"name": "tiny-bundle"}}}),
            )
            .to_string(),
        ),
    );

    for name in ["from-pvc", "from-config-map"] {
        check(wait_conditions(admin, &ns, name, ALL_READY, POD_START));
        let edge = check(service_address(admin, &ns, &format!("{name}-edge"), 8080));
        let id = check(served_models(edge)).remove(0);
        let answer = check(chat(edge, &chat_request(&id, "hello", 4, json!({"threshold": 1.5}))));
        assert_eq!(count(&answer["collm"], "cloud_tokens"), 4, "{name}: {answer}");
    }

    // The limited cloud's own account of its thread pool, and the unlimited one's.
    for (name, threads) in [("from-pvc", 1), ("from-config-map", 2)] {
        let (pod, _) = check(ready_pods(admin, &ns, name, "cloud")).pop().expect("a cloud pod");
        let log = check(admin.logs(&ns, &pod, None));
        let line = log.lines().find(|l| l.contains("ONNX Runtime thread pool"));
        let line = line.unwrap_or_else(|| panic!("{pod} logged no thread pool:\n{log}"));
        assert!(
            line.contains(&format!("threads={threads}")) && line.contains("spin=false"),
            "{pod}: {line}"
        );
    }
    check(admin.run(&["delete", "namespace", &ns, "--wait=false"]));
    check(admin.run(&["delete", "persistentvolume", &volume, "--wait=false"]));
}

/// The observability example: a calibrated SmolLM2 (it asks for a target agreement), its
/// bundle served as the README says, JSON logs, spans exported to a collector that is not
/// there (exporting is best effort), and an autoscaler on a custom metric no adapter serves
/// here (it keeps the minimum). It reaches Ready, answers, and its pods log JSON.
#[test]
fn heavy_the_observability_example_reaches_ready_and_logs_json() {
    let node = real_node();
    let admin = &node.admin;
    let stage = stage();
    let work = check(tempfile::tempdir().map_err(Into::into));
    let bundle = check(export_smollm2(work.path()));
    check(calibrate(&bundle));
    let (url, sha256) = check(stage.bundles.pack(&bundle, "smollm2-calibrated"));

    let ns = restricted_namespace(admin, "observed");
    let (mut model, name) = named_example("observability.yaml");
    merge(
        &mut model["spec"],
        json!({
            "bundle": {"url": url, "sha256": sha256},
            "edge": {"resources": {"requests": {"cpu": "100m"}}},
            "cloud": {"resources": {"requests": {"cpu": "100m"}}},
        }),
    );
    check(admin.run_with_input(&["apply", "-n", &ns, "-f", "-"], Some(&model.to_string())));
    check(wait_conditions(admin, &ns, &name, ALL_READY, POD_START * 2));

    let edge = check(service_address(admin, &ns, &format!("{name}-edge"), 8080));
    let id = check(served_models(edge)).remove(0);
    let answer = check(chat(edge, &chat_request(&id, "Name three primary colors.", 24, json!({}))));
    assert!(count(&answer["usage"], "completion_tokens") > 0, "{answer}");
    assert_eq!(answer["collm"]["degraded"], false, "{answer}");
    for component in ["edge", "cloud"] {
        let (pod, _) = check(ready_pods(admin, &ns, &name, component)).pop().expect("a ready pod");
        let log = check(admin.logs(&ns, &pod, None));
        let records: Vec<Value> =
            log.lines().filter_map(|l| serde_json::from_str::<Value>(l).ok()).collect();
        assert!(
            records.iter().any(|r| r["level"].is_string()),
            "{pod} should log JSON objects:\n{log}"
        );
    }
    check(admin.run(&["delete", "namespace", &ns, "--wait=false"]));
}

/// A fresh namespace enforcing the `restricted` Pod Security level (what NOTES.txt recommends).
fn restricted_namespace(admin: &Kubectl, prefix: &str) -> String {
    let ns = check(admin.fresh_namespace(prefix));
    check(admin.run(&["label", "namespace", &ns, "pod-security.kubernetes.io/enforce=restricted"]));
    ns
}

/// The chart's example `file` and the CollabModel name it declares.
fn named_example(file: &str) -> (Value, String) {
    let model = check(example(file));
    let name = model["metadata"]["name"].as_str().expect("the example's name").to_string();
    (model, name)
}
