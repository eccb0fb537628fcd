//! Heavy: the operator against a real API server (a local control plane, or KUBECONFIG's
//! cluster): the chart installed with helm, two operator replicas running as the chart's
//! ServiceAccount, a real redis-server. Each test works in a fresh namespace.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use collm_e2e::process::eventually;
use collm_e2e::{condition, env, model};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(60);

fn apply(manifest: &Value) -> Result<()> {
    env().admin.apply(&manifest.to_string()).map(|_| ())
}

fn redis_url() -> Value {
    json!({"url": env().redis.url})
}

fn get(ns: &str, kind: &str, name: &str) -> Result<Value> {
    env().admin.must_get(ns, kind, name)
}

/// Fails with the operator logs attached.
fn check<T>(result: Result<T>) -> T {
    match result {
        Ok(value) => value,
        Err(e) => panic!("{e:#}\n\noperator logs:\n{}", env().operator_logs()),
    }
}

/// The model's status once it describes the current generation.
fn current_status(ns: &str, name: &str) -> Result<Value> {
    eventually("status for the current generation", WAIT, || {
        let model = get(ns, "collabmodel", name)?;
        ensure!(
            model["status"]["observedGeneration"] == model["metadata"]["generation"],
            "observedGeneration {} != generation {}",
            model["status"]["observedGeneration"],
            model["metadata"]["generation"]
        );
        Ok(model)
    })
}

fn pod_template_hash(object: &Value) -> String {
    object["spec"]["template"]["metadata"]["annotations"]["collm.dev/config-hash"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

const CHILDREN: [(&str, &str); 7] = [
    ("configmap", "config"),
    ("daemonset", "edge"),
    ("service", "edge"),
    ("deployment", "cloud"),
    ("service", "cloud"),
    ("horizontalpodautoscaler", "cloud"),
    ("poddisruptionbudget", "cloud"),
];

#[test]
fn a_model_applied_with_kubectl_gets_every_child_with_its_settings_and_owner() {
    let env = env();
    let ns = check(env.admin.fresh_namespace("children"));
    check(apply(&model(&ns, "chat", redis_url(), json!({}))));

    let owner = check(eventually("the model's uid", WAIT, || {
        get(&ns, "collabmodel", "chat")?["metadata"]["uid"]
            .as_str()
            .map(str::to_string)
            .context("uid")
    }));
    for (kind, component) in CHILDREN {
        let name = format!("chat-{component}");
        let child = check(eventually(&format!("{kind} {name}"), WAIT, || get(&ns, kind, &name)));
        let refs = &child["metadata"]["ownerReferences"];
        assert_eq!(refs[0]["uid"], owner.as_str(), "{kind} {name} is owned by the model: {refs}");
        assert_eq!(refs[0]["controller"], true, "{kind} {name}: {refs}");
        assert_eq!(refs[0]["kind"], "CollabModel");
        let with_fields: Value = serde_json::from_str(&check(env.admin.run(&[
            "get",
            "-n",
            &ns,
            kind,
            &name,
            "-o",
            "json",
            "--show-managed-fields",
        ])))
        .expect("JSON");
        let managers: Vec<&str> = with_fields["metadata"]["managedFields"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|f| f["operation"] == "Apply")
            .filter_map(|f| f["manager"].as_str())
            .collect();
        assert_eq!(
            managers,
            ["collm-operator"],
            "{kind} {name} is server-side applied by one manager"
        );
    }

    let config = check(get(&ns, "configmap", "chat-config"));
    let edge: Value =
        serde_json::from_str(config["data"]["edge.json"].as_str().expect("edge.json"))
            .expect("JSON");
    assert_eq!(edge["threshold"], 0.8);
    assert_eq!(edge["mode"], "collaborative");
    assert_eq!(edge["cloud_endpoint"], format!("http://chat-cloud.{ns}.svc:50051"));
    let cloud: Value =
        serde_json::from_str(config["data"]["cloud.json"].as_str().expect("cloud.json"))
            .expect("JSON");
    assert_eq!(cloud["context"]["key_prefix"], format!("collm:{ns}:chat:"));
    assert_eq!(cloud["context"]["redis_url"], env.redis.url.as_str());

    let edge = check(get(&ns, "daemonset", "chat-edge"));
    assert_eq!(edge["spec"]["template"]["spec"]["nodeSelector"], json!({"collm.dev/edge": "true"}));
    assert!(!pod_template_hash(&edge).is_empty(), "the edge template carries its config hash");
    let image =
        edge["spec"]["template"]["spec"]["containers"][0]["image"].as_str().unwrap_or_default();
    assert!(image.contains("edge-agent"), "the image comes from the operator's flags: {image}");
    let hpa = check(get(&ns, "horizontalpodautoscaler", "chat-cloud"));
    assert_eq!(
        (hpa["spec"]["minReplicas"].as_i64(), hpa["spec"]["maxReplicas"].as_i64()),
        (Some(1), Some(3))
    );
    assert_eq!(check(get(&ns, "service", "chat-cloud"))["spec"]["ports"][0]["port"], 50051);
    // A literal Redis URL: no managed Redis.
    assert!(check(env.admin.get(&ns, "statefulset", "chat-redis")).is_none());

    let model = check(get(&ns, "collabmodel", "chat"));
    assert_eq!(model["metadata"]["finalizers"], json!(["collm.dev/cloud-context"]));
    check(eventually("an Applied event", WAIT, || {
        let events = env.admin.run(&["get", "events", "-n", &ns, "-o", "json"])?;
        ensure!(events.contains("\"Applied\""), "no Applied event yet");
        Ok(())
    }));
}

#[test]
fn managed_redis_is_rendered_and_dropping_it_prunes_it() {
    let env = env();
    let ns = check(env.admin.fresh_namespace("managed"));
    check(apply(&model(&ns, "chat", json!({"managed": true}), json!({}))));
    check(eventually("the managed Redis", WAIT, || get(&ns, "statefulset", "chat-redis")));
    check(eventually("the managed Redis Service", WAIT, || get(&ns, "service", "chat-redis")));
    let status = check(eventually("ContextReady for the managed Redis", WAIT, || {
        let model = get(&ns, "collabmodel", "chat")?;
        let context = condition(&model, "ContextReady").context("no ContextReady")?;
        ensure!(context.1.starts_with("ManagedRedis"), "{context:?}");
        Ok(context)
    }));
    if env.cluster.local_dir.is_some() {
        assert_eq!(status.0, "False", "no kubelet runs the Redis pod: {status:?}");
    }

    // Deleting a managed model whose Redis never ran has nothing to clean.
    check(apply(&model(&ns, "other", json!({"managed": true}), json!({}))));
    check(eventually("the other managed Redis", WAIT, || get(&ns, "statefulset", "other-redis")));
    if env.cluster.local_dir.is_some() {
        check(
            env.admin.run(&["delete", "cmodel", "other", "-n", &ns, "--timeout=60s"]).map(|_| ()),
        );
        let events = check(env.admin.run(&["get", "events", "-n", &ns, "-o", "json"]));
        assert!(events.contains("no ready replica"), "{events}");
    }

    check(apply(&model(&ns, "chat", redis_url(), json!({}))));
    check(eventually("the managed Redis to be pruned", WAIT, || {
        ensure!(
            env.admin.get(&ns, "statefulset", "chat-redis")?.is_none(),
            "StatefulSet still there"
        );
        ensure!(env.admin.get(&ns, "service", "chat-redis")?.is_none(), "Service still there");
        Ok(())
    }));
    check(get(&ns, "deployment", "chat-cloud"));
}

/// Marks the pods matching `selector` Running and Ready once at least `want` are scheduled:
/// there is no kubelet to do it.
fn make_pods_ready(ns: &str, selector: &str, want: usize) -> Result<usize> {
    let pods: Value = serde_json::from_str(
        &env().admin.run(&["get", "pods", "-n", ns, "-l", selector, "-o", "json"])?,
    )?;
    let (scheduled, pending): (Vec<&Value>, Vec<&Value>) = pods["items"]
        .as_array()
        .into_iter()
        .flatten()
        .partition(|p| p["spec"]["nodeName"].is_string());
    let names: Vec<String> = scheduled
        .iter()
        .filter_map(|p| p["metadata"]["name"].as_str().map(str::to_string))
        .collect();
    // A DaemonSet creates its pods one by one: marking the first alone would leave the other
    // never ready.
    ensure!(
        names.len() >= want,
        "{} of {want} pods matching {selector} scheduled yet; pending: {}",
        names.len(),
        pending.iter().map(|p| why_pending(p)).collect::<Vec<_>>().join("; ")
    );
    let now = "2026-01-01T00:00:00Z";
    let patch = json!({"status": {
        "phase": "Running",
        "conditions": [
            {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
            {"type": "Initialized", "status": "True", "lastTransitionTime": now},
            {"type": "ContainersReady", "status": "True", "lastTransitionTime": now},
            {"type": "Ready", "status": "True", "lastTransitionTime": now},
        ],
    }})
    .to_string();
    for name in &names {
        env().admin.run(&[
            "patch",
            "pod",
            "-n",
            ns,
            name,
            "--subresource=status",
            "--type=merge",
            "-p",
            &patch,
        ])?;
    }
    Ok(names.len())
}

/// A pending pod's name and what the scheduler said about it.
fn why_pending(pod: &Value) -> String {
    let scheduled = pod["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == "PodScheduled");
    format!(
        "{} ({})",
        pod["metadata"]["name"].as_str().unwrap_or("?"),
        scheduled.and_then(|c| c["message"].as_str()).unwrap_or("no scheduling decision yet")
    )
}

#[test]
fn status_conditions_and_printer_columns_follow_the_children() {
    let env = env();
    let ns = check(env.admin.fresh_namespace("status"));
    check(apply(&model(&ns, "chat", redis_url(), json!({}))));

    let model = check(eventually("EdgeReady false with a reason", WAIT, || {
        let model = current_status(&ns, "chat")?;
        let edge = condition(&model, "EdgeReady").context("no EdgeReady")?;
        ensure!(edge.0 == "False" && !edge.1.is_empty(), "{edge:?}");
        Ok(model)
    }));
    let (_, edge_reason, edge_message) = condition(&model, "EdgeReady").expect("EdgeReady");
    assert!(
        ["EdgePodsNotReady", "NoEdgeNodes", "EdgeDaemonSetMissing"].contains(&edge_reason.as_str()),
        "{edge_reason}: {edge_message}"
    );
    assert_eq!(condition(&model, "Ready").map(|c| c.0).as_deref(), Some("False"));
    assert_eq!(
        condition(&model, "ContextReady").map(|c| (c.0, c.1)),
        Some(("True".into(), "RedisReachable".into()))
    );
    assert_eq!(model["status"]["cloudEndpoint"], format!("http://chat-cloud.{ns}.svc:50051"));
    for type_ in ["Ready", "EdgeReady", "CloudReady", "ContextReady", "Degraded"] {
        assert!(condition(&model, type_).is_some(), "{type_} is reported");
    }
    let table = check(env.admin.run(&["get", "cmodel", "chat", "-n", &ns]));
    let header = table.lines().next().unwrap_or_default();
    for column in ["MODE", "THRESHOLD", "EDGE READY", "CLOUD", "READY", "AGE"] {
        assert!(header.contains(column), "printer column {column}: {table}");
    }
    assert!(
        table.contains("collaborative") && table.contains("0.8") && table.contains("False"),
        "{table}"
    );

    if env.cluster.local_dir.is_none() {
        return; // Only the local cluster has pods that never start, which the test marks ready.
    }
    check(eventually("edge pods to be scheduled and marked ready", WAIT, || {
        make_pods_ready(&ns, "app.kubernetes.io/instance=chat,app.kubernetes.io/component=edge", 2)
    }));
    check(eventually("the cloud pod to be scheduled and marked ready", WAIT, || {
        make_pods_ready(&ns, "app.kubernetes.io/instance=chat,app.kubernetes.io/component=cloud", 1)
    }));
    let model = check(eventually("Ready to flip to True", WAIT, || {
        let model = get(&ns, "collabmodel", "chat")?;
        for type_ in ["EdgeReady", "CloudReady", "ContextReady", "Ready"] {
            let c = condition(&model, type_).context("missing")?;
            ensure!(c.0 == "True", "{type_}: {c:?}");
        }
        Ok(model)
    }));
    assert_eq!(model["status"]["readyEdgeNodes"], 2, "two edge nodes");
    assert_eq!(model["status"]["cloudReplicas"], 1);
    let table = check(env.admin.run(&["get", "cmodel", "chat", "-n", &ns, "--no-headers"]));
    let row: Vec<&str> = table.split_whitespace().collect();
    assert_eq!(&row[..6], ["chat", "collaborative", "0.8", "2", "1", "True"], "{table}");
}

#[test]
fn a_threshold_or_mode_change_rolls_only_the_edge_and_a_cloud_change_only_the_cloud() {
    let env = env();
    let ns = check(env.admin.fresh_namespace("rollout"));
    check(apply(&model(&ns, "chat", redis_url(), json!({}))));
    let edge_before =
        check(eventually("the edge DaemonSet", WAIT, || get(&ns, "daemonset", "chat-edge")));
    let cloud_before =
        check(eventually("the cloud Deployment", WAIT, || get(&ns, "deployment", "chat-cloud")));

    check(
        env.admin
            .run(&[
                "patch",
                "cmodel",
                "chat",
                "-n",
                &ns,
                "--type=merge",
                "-p",
                r#"{"spec":{"threshold":0.9}}"#,
            ])
            .map(|_| ()),
    );
    let edge_after = check(eventually("the edge template to change", WAIT, || {
        let edge = get(&ns, "daemonset", "chat-edge")?;
        ensure!(pod_template_hash(&edge) != pod_template_hash(&edge_before), "same config hash");
        Ok(edge)
    }));
    current_status(&ns, "chat").map(|_| ()).unwrap_or_else(|e| panic!("{e:#}"));
    let cloud_after = check(get(&ns, "deployment", "chat-cloud"));
    assert_eq!(
        cloud_after["spec"]["template"], cloud_before["spec"]["template"],
        "the cloud template is untouched"
    );
    assert_eq!(
        cloud_after["metadata"]["generation"], cloud_before["metadata"]["generation"],
        "no cloud rollout"
    );
    let config = check(get(&ns, "configmap", "chat-config"));
    assert!(config["data"]["edge.json"].as_str().unwrap_or_default().contains("0.9"));

    check(
        env.admin
            .run(&[
                "patch",
                "cmodel",
                "chat",
                "-n",
                &ns,
                "--type=merge",
                "-p",
                r#"{"spec":{"mode":"standalone"}}"#,
            ])
            .map(|_| ()),
    );
    check(eventually("the edge template to change again", WAIT, || {
        let edge = get(&ns, "daemonset", "chat-edge")?;
        ensure!(pod_template_hash(&edge) != pod_template_hash(&edge_after), "same config hash");
        Ok(())
    }));
    current_status(&ns, "chat").map(|_| ()).unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(
        check(get(&ns, "deployment", "chat-cloud"))["metadata"]["generation"],
        cloud_before["metadata"]["generation"]
    );

    let edge_now = check(get(&ns, "daemonset", "chat-edge"));
    check(
        env.admin
            .run(&[
                "patch",
                "cmodel",
                "chat",
                "-n",
                &ns,
                "--type=merge",
                "-p",
                r#"{"spec":{"catchUp":"propagate"}}"#,
            ])
            .map(|_| ()),
    );
    check(eventually("the cloud template to change", WAIT, || {
        let cloud = get(&ns, "deployment", "chat-cloud")?;
        ensure!(
            pod_template_hash(&cloud) != pod_template_hash(&cloud_before),
            "same cloud config hash"
        );
        Ok(())
    }));
    let edge_final = check(get(&ns, "daemonset", "chat-edge"));
    assert_eq!(
        edge_final["spec"]["template"], edge_now["spec"]["template"],
        "a cloud change leaves the edge alone"
    );
    assert_eq!(edge_final["metadata"]["generation"], edge_now["metadata"]["generation"]);
}

#[test]
fn deleted_or_edited_children_are_repaired() {
    let env = env();
    let ns = check(env.admin.fresh_namespace("drift"));
    check(apply(&model(&ns, "chat", redis_url(), json!({}))));
    for (kind, component) in [
        ("configmap", "config"),
        ("deployment", "cloud"),
        ("daemonset", "edge"),
        ("service", "cloud"),
    ] {
        let name = format!("chat-{component}");
        let before = check(eventually(&format!("{kind} {name}"), WAIT, || get(&ns, kind, &name)));
        check(env.admin.run(&["delete", kind, &name, "-n", &ns, "--wait=false"]).map(|_| ()));
        check(eventually(&format!("{kind} {name} to be recreated"), WAIT, || {
            let after = get(&ns, kind, &name)?;
            ensure!(after["metadata"]["uid"] != before["metadata"]["uid"], "still the old object");
            ensure!(after["metadata"]["deletionTimestamp"].is_null(), "still terminating");
            Ok(())
        }));
    }
    // An edit by hand to an applied field is reverted.
    check(
        env.admin
            .run(&[
                "patch",
                "hpa",
                "chat-cloud",
                "-n",
                &ns,
                "--type=merge",
                "-p",
                r#"{"spec":{"maxReplicas":9}}"#,
            ])
            .map(|_| ()),
    );
    check(eventually("maxReplicas to be restored", WAIT, || {
        let hpa = get(&ns, "hpa", "chat-cloud")?;
        ensure!(hpa["spec"]["maxReplicas"] == 3, "maxReplicas {}", hpa["spec"]["maxReplicas"]);
        Ok(())
    }));
}

#[test]
fn deleting_a_model_collects_its_children_and_deletes_only_its_redis_keys() {
    let env = env();
    let ns = check(env.admin.fresh_namespace("delete"));
    check(apply(&model(&ns, "chat", redis_url(), json!({}))));
    check(apply(&model(&ns, "chat2", redis_url(), json!({}))));
    check(eventually("both models' status", WAIT, || {
        current_status(&ns, "chat")?;
        current_status(&ns, "chat2").map(|_| ())
    }));
    let mine = format!("collm:{ns}:chat:");
    let theirs = format!("collm:{ns}:chat2:");
    for key in ["{client-a:s1}:meta", "{client-a:s1}:rows", "{client-b:s9}:rows"] {
        check(env.redis.set(&format!("{mine}{key}"), "x"));
        check(env.redis.set(&format!("{theirs}{key}"), "x"));
    }
    check(env.redis.set("collm:other-namespace:chat:{c:s}:rows", "x"));

    let started = Instant::now();
    check(env.admin.run(&["delete", "cmodel", "chat", "-n", &ns, "--wait=false"]).map(|_| ()));
    check(eventually("the model to go", WAIT, || {
        ensure!(env.admin.get(&ns, "collabmodel", "chat")?.is_none(), "still there");
        Ok(())
    }));
    eprintln!("model deleted in {:.1?}", started.elapsed());
    assert_eq!(check(env.redis.keys(&mine)), Vec::<String>::new(), "the model's keys are gone");
    assert_eq!(check(env.redis.keys(&theirs)).len(), 3, "the other model's keys survive");
    assert_eq!(
        check(env.redis.keys("collm:other-namespace:")).len(),
        1,
        "other namespaces' keys survive"
    );
    for (kind, component) in CHILDREN {
        let name = format!("chat-{component}");
        check(eventually(&format!("{kind} {name} to be garbage-collected"), WAIT, || {
            ensure!(env.admin.get(&ns, kind, &name)?.is_none(), "still there");
            Ok(())
        }));
    }
    check(get(&ns, "deployment", "chat2-cloud"));
    let events = check(env.admin.run(&["get", "events", "-n", &ns, "-o", "json"]));
    assert!(events.contains("ContextDeleted") && events.contains("deleted 3 keys"), "{events}");
}

#[test]
fn an_unreachable_redis_keeps_the_model_until_its_keys_can_be_deleted() {
    let env = env();
    let ns = check(env.admin.fresh_namespace("unreachable"));
    let dead = format!("redis://127.0.0.1:{}/0", collm_e2e::process::free_port().expect("port"));
    check(apply(&model(&ns, "chat", json!({"url": dead}), json!({}))));
    check(eventually("ContextReady false: Redis unreachable", WAIT, || {
        let model = get(&ns, "collabmodel", "chat")?;
        let c = condition(&model, "ContextReady").context("no ContextReady")?;
        ensure!(c.0 == "False" && c.1 == "RedisUnreachable", "{c:?}");
        Ok(())
    }));
    let prefix = format!("collm:{ns}:chat:");
    check(env.redis.set(&format!("{prefix}{{c:s}}:rows"), "x"));

    check(env.admin.run(&["delete", "cmodel", "chat", "-n", &ns, "--wait=false"]).map(|_| ()));
    check(eventually("a Warning event about the failed cleanup", WAIT, || {
        let events = env.admin.run(&["get", "events", "-n", &ns, "-o", "json"])?;
        ensure!(events.contains("ContextCleanupFailed"), "no ContextCleanupFailed event yet");
        Ok(())
    }));
    std::thread::sleep(Duration::from_secs(3));
    let model = check(get(&ns, "collabmodel", "chat"));
    assert!(model["metadata"]["deletionTimestamp"].is_string(), "the model is being deleted");
    assert_eq!(
        model["metadata"]["finalizers"],
        json!(["collm.dev/cloud-context"]),
        "the finalizer stays"
    );

    // Pointing the terminating model at the reachable Redis lets the finalizer finish.
    let patch = json!({"spec": {"context": {"redis": {"url": env.redis.url}}}}).to_string();
    check(
        env.admin
            .run(&["patch", "cmodel", "chat", "-n", &ns, "--type=merge", "-p", &patch])
            .map(|_| ()),
    );
    check(eventually("the model to go", WAIT, || {
        ensure!(env.admin.get(&ns, "collabmodel", "chat")?.is_none(), "still there");
        Ok(())
    }));
    assert!(check(env.redis.keys(&prefix)).is_empty());
}

#[test]
fn a_redis_url_in_a_secret_is_read_for_probes_and_cleanup() {
    let env = env();
    let ns = check(env.admin.fresh_namespace("secret"));
    check(
        env.admin
            .run(&[
                "create",
                "secret",
                "generic",
                "redis",
                "-n",
                &ns,
                &format!("--from-literal=url={}", env.redis.url),
            ])
            .map(|_| ()),
    );
    let secret_ref = json!({"secretRef": {"name": "redis", "key": "url"}});
    check(apply(&model(&ns, "chat", secret_ref, json!({}))));
    check(eventually("ContextReady from the Secret's URL", WAIT, || {
        let model = get(&ns, "collabmodel", "chat")?;
        let c = condition(&model, "ContextReady").context("no ContextReady")?;
        ensure!(c.0 == "True" && c.1 == "RedisReachable", "{c:?}");
        Ok(())
    }));
    let prefix = format!("collm:{ns}:chat:");
    check(env.redis.set(&format!("{prefix}{{c:s}}:rows"), "x"));
    check(env.admin.run(&["delete", "cmodel", "chat", "-n", &ns, "--timeout=60s"]).map(|_| ()));
    assert!(check(env.redis.keys(&prefix)).is_empty(), "keys deleted through the Secret's URL");
}

#[test]
fn a_model_without_context_is_deleted_without_redis() {
    let env = env();
    let ns = check(env.admin.fresh_namespace("standalone"));
    let manifest = model(
        &ns,
        "edge-only",
        json!({}),
        json!({"mode": "standalone", "cloud": {"enabled": false}, "context": null}),
    );
    check(apply(&manifest));
    let status = check(eventually("status", WAIT, || current_status(&ns, "edge-only")));
    assert_eq!(
        condition(&status, "CloudReady").map(|c| c.1).as_deref(),
        Some("StandaloneWithoutCloud")
    );
    assert!(check(env.admin.get(&ns, "deployment", "edge-only-cloud")).is_none());
    check(
        env.admin.run(&["delete", "cmodel", "edge-only", "-n", &ns, "--timeout=60s"]).map(|_| ()),
    );
}

#[test]
fn invalid_manifests_are_rejected_with_the_rule_they_break() {
    use collm_operator::crd::*;
    let env = env();
    let ns = check(env.admin.fresh_namespace("invalid"));
    let cases: Vec<(&str, Value, Value)> = vec![
        (RULE_REPLICAS, redis_url(), json!({"cloud": {"minReplicas": 5, "maxReplicas": 2}})),
        (RULE_GRPC_PORT, redis_url(), json!({"cloud": {"grpcPort": 8081}})),
        (RULE_THRESHOLD, redis_url(), json!({"threshold": 1.5})),
        (RULE_THRESHOLD, redis_url(), json!({"threshold": 0})),
        (RULE_AGREEMENT, redis_url(), json!({"threshold": null, "targetAgreement": 1.2})),
        (RULE_THRESHOLD_XOR_AGREEMENT, redis_url(), json!({"targetAgreement": 0.9})),
        (RULE_EXIT_LAYERS, redis_url(), json!({"exitLayers": [12, 30]})),
        (RULE_BUNDLE_ONE_SOURCE, redis_url(), json!({"bundle": {"pvc": {"claimName": "models"}}})),
        (RULE_BUNDLE_SHA, redis_url(), json!({"bundle": {"sha256": null}})),
        (RULE_EDGE_ONLY_ENDPOINT, redis_url(), json!({"cloud": {"enabled": false}})),
        (
            RULE_ENDPOINT_XOR_CLOUD,
            redis_url(),
            json!({"externalCloudEndpoint": "cloud.example:443"}),
        ),
        (RULE_CLOUD_NEEDS_REDIS, json!({}), json!({"context": {"redis": null}})),
        (RULE_REDIS_ONE_SOURCE, json!({"url": "redis://r:6379", "managed": true}), json!({})),
        (
            RULE_ONE_METRIC,
            redis_url(),
            json!({"cloud": {"targetCpuUtilization": 60, "customMetric": {"name": "q", "averageValue": "4"}}}),
        ),
    ];
    let mut failures = Vec::new();
    for (i, (rule, redis, spec)) in cases.into_iter().enumerate() {
        let manifest = model(&ns, &format!("bad-{i}"), redis, spec);
        match env.admin.run_with_input(&["create", "-f", "-"], Some(&manifest.to_string())) {
            Ok(_) => failures.push(format!("case {i} was accepted; expected: {rule}")),
            Err(e) if format!("{e:#}").contains(rule) => {}
            Err(e) => failures.push(format!("case {i}: expected {rule:?}, got {e:#}")),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    let valid = model(&ns, "good", redis_url(), json!({}));
    check(
        env.admin
            .run_with_input(&["create", "--dry-run=server", "-f", "-"], Some(&valid.to_string()))
            .map(|_| ()),
    );
}

#[test]
fn exactly_one_of_two_replicas_leads_and_the_other_takes_over_when_it_dies() {
    let env = env();
    let leader = check(env.wait_for_leader(WAIT));
    let follower_before = {
        let replicas = env.replicas();
        let running: Vec<&collm_e2e::operator::Replica> = replicas.iter().collect();
        let leaders: Vec<bool> = running.iter().map(|r| r.is_leader().unwrap_or(false)).collect();
        assert_eq!(leaders.iter().filter(|l| **l).count(), 1, "exactly one replica leads");
        let follower = running.iter().find(|r| r.identity != leader).expect("a second replica");
        (follower.identity.clone(), follower.reconciliations().unwrap_or(-1.0))
    };

    // The follower does not reconcile: a new model is handled by the leader alone.
    let ns = check(env.admin.fresh_namespace("leader"));
    check(apply(&model(&ns, "first", redis_url(), json!({}))));
    check(current_status(&ns, "first").map(|_| ()));
    {
        let replicas = env.replicas();
        let follower = replicas.iter().find(|r| r.identity == follower_before.0).expect("follower");
        assert_eq!(
            check(follower.reconciliations()),
            follower_before.1,
            "the follower reconciled nothing"
        );
        assert!(!check(follower.is_leader()));
    }

    // Kill the leader without a chance to release the Lease.
    let killed_at = Instant::now();
    {
        let mut replicas = env.replicas();
        let dead = replicas.iter_mut().find(|r| r.identity == leader).expect("leader");
        dead.daemon.kill();
    }
    let successor = check(eventually("the follower to take over", WAIT, || {
        let holder = env.lease_holder()?.context("nobody holds the Lease")?;
        ensure!(holder == follower_before.0, "the Lease is still held by {holder}");
        let replicas = env.replicas();
        let follower = replicas.iter().find(|r| r.identity == holder).context("holder")?;
        ensure!(follower.is_leader()?, "{holder} holds the Lease but does not say it leads");
        Ok(holder)
    }));
    eprintln!("{successor} took over {:.1?} after {leader} was killed", killed_at.elapsed());
    assert!(
        killed_at.elapsed() >= Duration::from_secs(collm_e2e::operator::LEASE_DURATION_SECONDS - 1)
    );

    // The new leader reconciles.
    check(apply(&model(&ns, "second", redis_url(), json!({}))));
    check(current_status(&ns, "second").map(|_| ()));
    check(eventually("the new leader to count reconciliations", WAIT, || {
        let replicas = env.replicas();
        let now = replicas
            .iter()
            .find(|r| r.identity == successor)
            .context("successor")?
            .reconciliations()?;
        ensure!(now > follower_before.1, "no reconciliation counted");
        Ok(())
    }));

    // Back to two replicas for whatever runs next; the newcomer follows.
    env.replicas().retain(|r| r.identity != leader);
    let newcomer = check(env.start_replica());
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        check(env.lease_holder()).as_deref(),
        Some(successor.as_str()),
        "{newcomer} does not steal the Lease"
    );

    // A leader told to stop (SIGTERM, as on a rollout) releases the Lease: the newcomer takes
    // over at its next retry instead of after a whole lease duration.
    let stopped_at = Instant::now();
    {
        let mut replicas = env.replicas();
        let current = replicas.iter_mut().find(|r| r.identity == successor).expect("successor");
        assert!(current.daemon.terminate(Duration::from_secs(10)), "{successor} exits on SIGTERM");
    }
    check(eventually("the newcomer to take over the released Lease", WAIT, || {
        ensure!(env.lease_holder()?.as_deref() == Some(newcomer.as_str()), "not yet");
        Ok(())
    }));
    let handover = stopped_at.elapsed();
    eprintln!("{newcomer} took over {handover:.1?} after {successor} stopped");
    assert!(
        handover < Duration::from_secs(collm_e2e::operator::LEASE_DURATION_SECONDS),
        "a released Lease is taken before it would expire: {handover:?}"
    );
    env.replicas().retain(|r| r.identity != successor);
    check(env.start_replica());

    // A leader that finds the Lease taken (here by hand, as after a partition) stops leading
    // at its next renewal; once the intruder's lease expires, a replica leads again.
    let installed = &env.installed;
    let patch =
        json!({"spec": {"holderIdentity": "intruder", "leaseDurationSeconds": 3}}).to_string();
    check(
        env.admin
            .run(&[
                "patch",
                "lease",
                &installed.lease_name,
                "-n",
                &installed.lease_namespace,
                "--type=merge",
                "-p",
                &patch,
            ])
            .map(|_| ()),
    );
    check(eventually("the deposed leader to stop leading", Duration::from_secs(10), || {
        let replicas = env.replicas();
        let deposed = replicas.iter().find(|r| r.identity == newcomer).context("newcomer")?;
        ensure!(!deposed.is_leader()?, "{newcomer} still says it leads");
        Ok(())
    }));
    check(env.wait_for_leader(WAIT).map(|_| ()));
}

#[test]
fn the_operator_runs_with_only_the_charts_permissions() {
    let env = env();
    let can = |verb: &str, resource: &str| {
        env.operator_kubectl
            .run(&["auth", "can-i", verb, resource, "-A"])
            .map(|o| o.trim() == "yes")
            .unwrap_or(false)
    };
    assert!(can("patch", "collabmodels.collm.dev"));
    assert!(can("patch", "deployments.apps"));
    assert!(!can("delete", "nodes"), "the operator cannot delete nodes");
    assert!(!can("create", "pods"), "the operator cannot create pods");
    assert!(!can("list", "secrets"), "the operator reads single Secrets, never lists them");
}

/// Every values file in the chart's `ci/` (the defaults, and every optional path at once) passes
/// `helm lint --strict` and renders. With everything on, the monitoring objects come out as
/// Prometheus and Grafana read them: a PodMonitor for the models' edge and cloud pods on the
/// port they name, a ServiceMonitor for the operator, and the dashboard's JSON unchanged in a
/// ConfigMap carrying Grafana's sidecar label.
#[test]
fn every_ci_values_file_lints_and_renders_the_monitoring_objects_it_asks_for() {
    let env = env();
    let chart = collm_e2e::chart::chart_dir();
    let kubeconfig = &env.admin.kubeconfig;
    let chart_str = chart.to_str().expect("path");
    let mut files: Vec<_> = check(std::fs::read_dir(chart.join("ci")).map_err(Into::into))
        .map(|e| e.expect("entry").path())
        .collect();
    files.sort();
    assert!(files.len() >= 2, "{files:?}");
    for file in &files {
        let values = file.to_str().expect("path");
        check(
            collm_e2e::chart::helm(kubeconfig, &["lint", "--strict", chart_str, "-f", values])
                .map(|_| ()),
        );
        check(
            collm_e2e::chart::helm(kubeconfig, &["template", "ci", chart_str, "-f", values])
                .map(|_| ()),
        );
    }
    let full = chart.join("ci/full-values.yaml");
    let rendered = check(collm_e2e::chart::helm(
        kubeconfig,
        &["template", "ci", chart_str, "-f", full.to_str().expect("path")],
    ));
    let docs: Vec<serde_json::Value> = rendered
        .split("\n---")
        .map(|d| serde_yaml::from_str(d).unwrap_or_else(|e| panic!("{e}: {d}")))
        .filter(|v: &serde_json::Value| !v.is_null())
        .collect();
    let of_kind = |kind: &str| -> Vec<&serde_json::Value> {
        docs.iter().filter(|d| d["kind"] == kind).collect()
    };
    let pod_monitors = of_kind("PodMonitor");
    assert_eq!(pod_monitors.len(), 1, "{rendered}");
    let spec = &pod_monitors[0]["spec"];
    assert_eq!(spec["podMetricsEndpoints"][0]["port"], "http", "{spec}");
    assert_eq!(
        spec["selector"]["matchExpressions"][0]["values"],
        serde_json::json!(["edge", "cloud"])
    );
    assert_eq!(spec["namespaceSelector"]["matchNames"], serde_json::json!(["models"]), "{spec}");
    assert_eq!(of_kind("ServiceMonitor").len(), 1, "{rendered}");
    let dashboards: Vec<_> = of_kind("ConfigMap")
        .into_iter()
        .filter(|c| c["metadata"]["labels"]["grafana_dashboard"] == "1")
        .collect();
    assert_eq!(dashboards.len(), 1, "{rendered}");
    assert_eq!(dashboards[0]["metadata"]["namespace"], "monitoring");
    let shipped: serde_json::Value = serde_json::from_str(
        dashboards[0]["data"]["collm.json"].as_str().expect("the dashboard's JSON"),
    )
    .expect("the ConfigMap holds valid JSON");
    let source: serde_json::Value = serde_json::from_str(&check(
        std::fs::read_to_string(chart.join("dashboards/collm.json")).map_err(Into::into),
    ))
    .expect("dashboards/collm.json");
    assert_eq!(shipped, source, "the dashboard reaches Grafana as written");
}

#[test]
fn the_chart_passes_helm_lint_and_a_server_side_dry_run() {
    let env = env();
    let chart = collm_e2e::chart::chart_dir();
    let chart = chart.to_str().expect("path");
    let kubeconfig = &env.admin.kubeconfig;
    check(collm_e2e::chart::helm(kubeconfig, &["lint", "--strict", chart]).map(|_| ()));
    let rendered = check(collm_e2e::chart::helm(
        kubeconfig,
        &[
            "template",
            "dry",
            chart,
            "--namespace",
            collm_e2e::chart::RELEASE_NAMESPACE,
            "--include-crds",
        ],
    ));
    let out =
        check(env.admin.run_with_input(&["apply", "--dry-run=server", "-f", "-"], Some(&rendered)));
    for kind in ["customresourcedefinition", "deployment", "serviceaccount", "clusterrole", "role"]
    {
        assert!(out.to_lowercase().contains(kind), "{kind} accepted: {out}");
    }
}
