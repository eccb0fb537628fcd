//! Heavy: why pods do not run reaches the CollabModel, against a real API server. There is no
//! kubelet here, so the test writes the pod status a kubelet writes when a pod's fetch-bundle
//! init container fails (its termination message, CrashLoopBackOff); the operator, watching the
//! model's pods, must show it as the reason of EdgeReady and in a Warning Event.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use collm_e2e::process::eventually;
use collm_e2e::{condition, env, model};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(60);

fn check<T>(result: Result<T>) -> T {
    match result {
        Ok(value) => value,
        Err(e) => panic!("{e:#}\n\noperator logs:\n{}", env().operator_logs()),
    }
}

#[test]
fn heavy_a_bundle_that_cannot_be_fetched_is_the_models_reason_and_an_event() {
    let env = env();
    let ns = check(env.admin.fresh_namespace("fetch"));
    check(
        env.admin.apply(&model(&ns, "chat", json!({"url": env.redis.url}), json!({})).to_string()),
    );
    let pod = check(eventually("a scheduled edge pod", WAIT, || {
        let pods: Value = serde_json::from_str(&env.admin.run(&[
            "get",
            "pods",
            "-n",
            &ns,
            "-l",
            "app.kubernetes.io/component=edge",
            "-o",
            "json",
        ])?)?;
        pods["items"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["spec"]["nodeName"].is_string())
            .and_then(|p| p["metadata"]["name"].as_str().map(str::to_string))
            .context("no scheduled edge pod yet")
    }));
    let init = check(env.admin.must_get(&ns, "pod", &pod))["spec"]["initContainers"][0].clone();
    assert_eq!(init["name"], "fetch-bundle", "a URL bundle is fetched by an init container");
    assert_eq!(init["terminationMessagePolicy"], "FallbackToLogsOnError");

    let url = "https://models.example/smollm2-135m.tar";
    let message = format!(
        "bundle {url}: SHA-256 mismatch: the download has {}, the model expects {}",
        "12".repeat(32),
        "ab".repeat(32)
    );
    let status = json!({"status": {
        "phase": "Pending",
        "initContainerStatuses": [{
            "name": "fetch-bundle",
            "image": init["image"],
            "imageID": "",
            "ready": false,
            "restartCount": 2,
            "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 20s restarting failed container"}},
            "lastState": {"terminated": {"exitCode": 1, "reason": "Error", "message": message}},
        }],
    }});
    check(
        env.admin
            .run(&[
                "patch",
                "pod",
                &pod,
                "-n",
                &ns,
                "--subresource=status",
                "--type=merge",
                "-p",
                &status.to_string(),
            ])
            .map(|_| ()),
    );
    let edge = check(eventually("EdgeReady to name the failed fetch", WAIT, || {
        let m = env.admin.must_get(&ns, "collabmodel", "chat")?;
        let c = condition(&m, "EdgeReady").context("no EdgeReady")?;
        ensure!(c.1 == "BundleFetchFailed", "{c:?}");
        Ok(c)
    }));
    assert_eq!(edge.0, "False");
    assert!(
        edge.2.contains(&pod) && edge.2.contains(url) && edge.2.contains(&"ab".repeat(32)),
        "{edge:?}"
    );
    check(eventually("a BundleFetchFailed Warning Event", WAIT, || {
        let events = env.admin.run(&["get", "events", "-n", &ns, "-o", "json"])?;
        ensure!(events.contains("BundleFetchFailed") && events.contains(url), "not yet");
        Ok(())
    }));
    let ready =
        condition(&check(env.admin.must_get(&ns, "collabmodel", "chat")), "Ready").expect("Ready");
    assert_eq!(ready.0, "False");
    assert!(ready.2.contains("SHA-256 mismatch"), "{ready:?}");
}
