//! Heavy: edge identities and the cloud link against a real API server, with real edge-agent
//! and cloud-worker processes. A model with a cloud and no Secret: the operator gives its pods
//! ServiceAccounts and binds their roles; each edge presents a token the API server issued for
//! its own pod (as the kubelet projects it), the worker reviews it (TokenReview, with the
//! operator's binding) and names the client after the edge's node, so revoking one node refuses
//! that edge only. Each edge agent reports its cloud link as a condition on its own pod (and the
//! chart's admission policy keeps it from touching another pod), which the operator turns into
//! `Degraded`/`CloudLinkDown` when the cloud goes away. Deleting the model deletes the
//! cluster-scoped binding. (No kubelet here: the test issues the pod-bound tokens a kubelet
//! would mount, and marks pods ready as the other control-plane tests do.)

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use collm_e2e::process::{Daemon, eventually, free_port};
use collm_e2e::{condition, env, model};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(90);

fn check<T>(result: Result<T>) -> T {
    match result {
        Ok(value) => value,
        Err(e) => panic!("{e:#}\n\noperator logs:\n{}", env().operator_logs()),
    }
}

/// A binary of this workspace's build (the profile the tests run in).
fn binary(name: &str) -> PathBuf {
    let operator = collm_e2e::operator::operator_binary().expect("the operator binary");
    let path = operator.with_file_name(name);
    assert!(path.is_file(), "{} is missing: build the workspace first", path.display());
    path
}

/// A kubeconfig for the admin kubeconfig's cluster that authenticates with `token`.
fn kubeconfig_with(token: &str, path: &Path) -> PathBuf {
    let view: Value = serde_json::from_str(&check(env().admin.run(&[
        "config",
        "view",
        "--raw",
        "--minify",
        "--flatten",
        "-o",
        "json",
    ])))
    .expect("JSON");
    let config = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "e2e", "cluster": view["clusters"][0]["cluster"]}],
        "users": [{"name": "sa", "user": {"token": token}}],
        "contexts": [{"name": "e2e", "context": {"cluster": "e2e", "user": "sa"}}],
        "current-context": "e2e",
    });
    std::fs::write(path, serde_json::to_vec_pretty(&config).expect("JSON")).expect("kubeconfig");
    path.to_path_buf()
}

/// A token for `account`, bound to `pod` when given (as the kubelet issues a pod's token).
fn token(ns: &str, account: &str, audience: Option<&str>, pod: Option<&str>) -> String {
    let mut args = vec!["create", "token", account, "-n", ns, "--duration=1h"];
    let audience_arg;
    if let Some(a) = audience {
        audience_arg = format!("--audience={a}");
        args.push(&audience_arg);
    }
    let pod_arg;
    if let Some(p) = pod {
        pod_arg = format!("--bound-object-name={p}");
        args.extend(["--bound-object-kind=Pod", &pod_arg]);
    }
    check(env().admin.run(&args)).trim().to_string()
}

/// The edge pods the DaemonSet made, as (pod, node), sorted by node.
fn edge_pods(ns: &str) -> Result<Vec<(String, String)>> {
    let pods: Value = serde_json::from_str(&env().admin.run(&[
        "get",
        "pods",
        "-n",
        ns,
        "-l",
        "app.kubernetes.io/component=edge",
        "-o",
        "json",
    ])?)?;
    let mut found: Vec<(String, String)> = pods["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| {
            Some((
                p["metadata"]["name"].as_str()?.to_string(),
                p["spec"]["nodeName"].as_str()?.to_string(),
            ))
        })
        .collect();
    found.sort_by(|a, b| a.1.cmp(&b.1));
    ensure!(found.len() == 2, "expected an edge pod on each of the two edge nodes, got {found:?}");
    Ok(found)
}

fn tiny_bundle(dir: &Path) -> PathBuf {
    collm_testkit::tiny_bundle(&binary("collm"), dir, "tiny")
}

/// Starts a process and waits for its `<prefix><address>` line in its log.
fn daemon(name: &str, cmd: &mut Command, dir: &Path, prefix: &str) -> (Daemon, String) {
    let log = dir.join(format!("{name}.log"));
    let daemon = check(Daemon::spawn(name, cmd, &log));
    let addr = check(eventually(&format!("{name} to listen"), WAIT, || {
        let text = std::fs::read_to_string(&log)?;
        text.lines()
            .find_map(|l| l.strip_prefix(prefix).map(|a| a.trim().to_string()))
            .with_context(|| format!("not yet; log:\n{text}"))
    }));
    (daemon, addr)
}

/// A greedy completion through an edge agent: (cloud tokens, degraded).
fn complete(edge: &str) -> Result<(u64, bool)> {
    let body = json!({"model": "tiny", "prompt": "hello there", "max_tokens": 8, "temperature": 0});
    let out = Command::new("curl")
        .args(["-fsS", "--max-time", "60", "-H", "content-type: application/json"])
        .args(["-d", &body.to_string(), &format!("http://{edge}/v1/completions")])
        .output()?;
    ensure!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let answer: Value = serde_json::from_slice(&out.stdout)?;
    Ok((answer["collm"]["cloud_tokens"].as_u64().unwrap_or(0), answer["collm"]["degraded"] == true))
}

/// The worker, from the cloud.json the operator rendered, with this machine's bundle and ports
/// in place of the pod's.
fn start_worker(ns: &str, bundle: &Path, dir: &Path, kubeconfig: &Path, grpc: u16) -> Daemon {
    let config = check(env().admin.must_get(ns, "configmap", "chat-config"));
    let mut cloud: Value =
        serde_json::from_str(config["data"]["cloud.json"].as_str().expect("cloud.json"))
            .expect("JSON");
    assert!(cloud.get("edge_token_file").is_none(), "no token Secret: {cloud}");
    cloud["bundle"] = json!({"dir": bundle});
    cloud["grpc_port"] = json!(grpc);
    cloud["http_port"] = json!(free_port().expect("port"));
    let path = dir.join("cloud.json");
    std::fs::write(&path, cloud.to_string()).expect("cloud.json");
    let (worker, _) = daemon(
        "cloud-worker",
        Command::new(binary("cloud-worker"))
            .arg("--config")
            .arg(&path)
            .env("KUBECONFIG", kubeconfig),
        dir,
        "cloud-worker listening on ",
    );
    worker
}

#[test]
fn heavy_edges_are_their_own_clients_report_their_cloud_link_and_revocation_is_per_node() {
    let env = env();
    let ns = check(env.admin.fresh_namespace("identity"));
    let dir = tempfile::tempdir().expect("tempdir");
    let bundle = tiny_bundle(dir.path());
    check(
        env.admin.apply(
            &model(
                &ns,
                "chat",
                json!({"url": env.redis.url}),
                json!({"splitLayer": 2, "exitLayers": [1, 2], "threshold": 1.0}),
            )
            .to_string(),
        ),
    );

    // What the operator made for the pods' identities.
    for (kind, name) in [
        ("serviceaccount", "chat-edge"),
        ("serviceaccount", "chat-cloud"),
        ("rolebinding", "chat-edge"),
    ] {
        check(eventually(&format!("{kind} {name}"), WAIT, || env.admin.must_get(&ns, kind, name)));
    }
    let binding = format!("collm-{ns}-chat-tokenreview");
    check(eventually("the TokenReview binding", WAIT, || {
        env.admin.run(&["get", "clusterrolebinding", &binding]).map(|_| ())
    }));
    let pods = check(eventually("edge pods on both edge nodes", WAIT, || edge_pods(&ns)));

    // The cloud worker reviews tokens as the cloud's ServiceAccount.
    let cloud_kubeconfig = kubeconfig_with(
        &token(&ns, "chat-cloud", None, None),
        &dir.path().join("cloud.kubeconfig"),
    );
    let grpc = check(free_port());
    let mut worker = start_worker(&ns, &bundle, dir.path(), &cloud_kubeconfig, grpc);

    // One edge agent per edge pod, each with the tokens the kubelet would give its pod.
    let audience = format!("collm.dev/{ns}/chat");
    let mut edges = Vec::new();
    for (pod, node) in &pods {
        let token_file = dir.path().join(format!("{node}.token"));
        std::fs::write(&token_file, token(&ns, "chat-edge", Some(&audience), Some(pod)))
            .expect("token");
        let api = kubeconfig_with(
            &token(&ns, "chat-edge", None, Some(pod)),
            &dir.path().join(format!("{node}.kubeconfig")),
        );
        let (agent, addr) = daemon(
            &format!("edge-{node}"),
            Command::new(binary("edge-agent"))
                .args([
                    "--bundle",
                    bundle.to_str().expect("utf-8"),
                    "--listen",
                    "127.0.0.1:0",
                    "--model",
                    "tiny",
                ])
                .args([
                    "--cloud",
                    &format!("http://127.0.0.1:{grpc}"),
                    "--encoding",
                    "f32",
                    "--threshold",
                    "1.0",
                ])
                .arg("--token-file")
                .arg(&token_file)
                .env("KUBECONFIG", &api)
                .env("POD_NAME", pod)
                .env("POD_NAMESPACE", &ns),
            dir.path(),
            "edge-agent listening on http://",
        );
        edges.push((agent, addr, pod.clone(), node.clone(), api));
    }
    for (_, addr, _, node, _) in &edges {
        let (cloud_tokens, degraded) = check(complete(addr));
        assert_eq!(
            (cloud_tokens, degraded),
            (8, false),
            "{node}: the cloud accepted its pod's token"
        );
    }
    // Each edge reports a live link on its own pod.
    for (_, _, pod, node, _) in &edges {
        check(eventually(&format!("{node}'s CloudLink condition"), WAIT, || {
            let p = env.admin.must_get(&ns, "pod", pod)?;
            let c = condition(&p, "collm.dev/CloudLink").context("no condition yet")?;
            ensure!(c.0 == "True" && c.1 == "CloudReachable", "{c:?}");
            Ok(())
        }));
    }
    // ...and may not touch another edge's pod.
    let edge_one = collm_e2e::cluster::Kubectl { kubeconfig: edges[0].4.clone() };
    let patch = json!({"status": {"conditions": [{"type": "collm.dev/CloudLink", "status": "False", "reason": "Forged", "message": "forged"}]}}).to_string();
    let forged = edge_one.run(&[
        "patch",
        "pod",
        &edges[1].2,
        "-n",
        &ns,
        "--subresource=status",
        "--type=strategic",
        "-p",
        &patch,
    ]);
    let refusal = format!("{:#}", forged.expect_err("an edge cannot patch another edge's pod"));
    assert!(refusal.contains("its own pod only"), "{refusal}");

    // Revoking one node: the rendered config names it; a worker started from it (the rollout)
    // refuses that edge only.
    let (revoked_node, kept_node) = (edges[1].3.clone(), edges[0].3.clone());
    let patch = json!({"spec": {"credentials": {"revokedEdgeNodes": [revoked_node]}}}).to_string();
    check(
        env.admin
            .run(&["patch", "cmodel", "chat", "-n", &ns, "--type=merge", "-p", &patch])
            .map(|_| ()),
    );
    check(eventually("the revocation in cloud.json", WAIT, || {
        let config = env.admin.must_get(&ns, "configmap", "chat-config")?;
        let text = config["data"]["cloud.json"].as_str().unwrap_or_default().to_string();
        ensure!(text.contains(&format!("node/{revoked_node}")), "{text}");
        Ok(())
    }));
    assert!(worker.terminate(Duration::from_secs(30)), "the worker stops on SIGTERM");
    let mut worker = start_worker(&ns, &bundle, dir.path(), &cloud_kubeconfig, grpc);
    check(eventually(&format!("{kept_node} to reach the new worker"), WAIT, || {
        let (cloud_tokens, _) = complete(&edges[0].1)?;
        ensure!(cloud_tokens == 8, "{cloud_tokens} cloud tokens");
        Ok(())
    }));
    let (cloud_tokens, degraded) = check(complete(&edges[1].1));
    assert_eq!(cloud_tokens, 0, "{revoked_node} is refused and answers alone");
    assert!(degraded, "and says so");

    // The cloud goes away: the edges keep serving alone and report it; the model shows it.
    worker.kill();
    for (_, _, pod, node, _) in &edges {
        check(eventually(&format!("{node} to report the link down"), WAIT, || {
            let p = env.admin.must_get(&ns, "pod", pod)?;
            let c = condition(&p, "collm.dev/CloudLink").context("no condition")?;
            ensure!(c.0 == "False", "{c:?}");
            Ok(())
        }));
    }
    mark_ready(&ns, &pods);
    // One status that shows both: the operator may first see one pod marked ready, then both.
    let status = check(eventually("Degraded with CloudLinkDown, both edges serving", WAIT, || {
        let m = env.admin.must_get(&ns, "collabmodel", "chat")?;
        let d = condition(&m, "Degraded").context("no Degraded")?;
        ensure!(d.0 == "True" && d.1 == "CloudLinkDown", "{d:?}");
        let edge = condition(&m, "EdgeReady").context("no EdgeReady")?;
        ensure!(edge.0 == "True", "the edges serve: {edge:?}");
        Ok(m)
    }));
    let edge = condition(&status, "EdgeReady").expect("EdgeReady");
    assert!(edge.2.contains("cannot reach the cloud"), "{edge:?}");
    assert_eq!(condition(&status, "Ready").map(|c| c.0).as_deref(), Some("False"));

    // Deleting the model deletes its cluster-scoped binding too.
    check(env.admin.run(&["delete", "cmodel", "chat", "-n", &ns, "--timeout=60s"]).map(|_| ()));
    check(eventually("the TokenReview binding to go", WAIT, || {
        let left = env.admin.run(&[
            "get",
            "clusterrolebinding",
            &binding,
            "--ignore-not-found",
            "-o",
            "name",
        ])?;
        ensure!(left.trim().is_empty(), "still there: {left}");
        Ok(())
    }));
}

/// Marks the edge pods Running and Ready: there is no kubelet to do it.
fn mark_ready(ns: &str, pods: &[(String, String)]) {
    let now = "2026-01-01T00:00:00Z";
    let patch = json!({"status": {"phase": "Running", "conditions": [
        {"type": "Ready", "status": "True", "lastTransitionTime": now},
        {"type": "ContainersReady", "status": "True", "lastTransitionTime": now},
    ]}})
    .to_string();
    for (pod, _) in pods {
        check(
            env()
                .admin
                .run(&[
                    "patch",
                    "pod",
                    pod,
                    "-n",
                    ns,
                    "--subresource=status",
                    "--type=strategic",
                    "-p",
                    &patch,
                ])
                .map(|_| ()),
        );
    }
}
