//! Heavy: `e2e/cluster/down` takes a real node (`up --node`) down without leaving anything of
//! it on the host, after pods that mounted volumes, got a hostPort and sat behind a Service.
//! Local only: this is about the node on this machine, so it runs its own cluster whatever
//! KUBECONFIG says.

use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};
use collm_e2e::cluster::{Cluster, Mode, repo_root};
use serde_json::json;

/// The machine-wide lock of the real node (e2e/cluster/node.sh): what the host shows is read
/// under it, so another cluster's node coming up meanwhile cannot be mistaken for ours.
const NODE_LOCK: &str = "/run/lock/collm-e2e-node.lock";

/// What a real node can leave on the host, one line per item. The cluster directory goes in
/// through the environment, so that no command line of the probe itself contains it. `locked`:
/// read under the node lock (when no cluster of this test holds it).
fn host_state(dir: &str, locked: bool) -> Result<String> {
    let script = r#"
pgrep -af -- "$CLUSTER_DIR" | sed "s/^/process /"
grep -F "$CLUSTER_DIR/" /proc/self/mountinfo | sed "s/^/mount /"
for t in filter nat mangle; do
  iptables-save -t $t | grep -E "^:(KUBE|CNI-HOSTPORT|CNI-DN|COLLM)" | sed "s/^/iptables $t /"
done
ip -o link show | grep collm0 | sed "s/^/link /"
ls /run/netns 2>/dev/null | grep "^cni-" | sed "s/^/netns /"
ip route | grep collm0 | sed "s/^/route /"
ls -d /sys/fs/cgroup/*/kubepods 2>/dev/null | sed "s/^/cgroup /"
echo "ip_forward $(cat /proc/sys/net/ipv4/ip_forward)"
"#;
    let mut probe = Command::new(if locked { "flock" } else { "sh" });
    if locked {
        probe.args([NODE_LOCK, "sh"]);
    }
    let out =
        probe.args(["-c", script]).env("CLUSTER_DIR", dir).output().context("running flock sh")?;
    // This process's exit watcher (process::on_exit) names the directory, to take the
    // cluster down should the test die; it is no leftover of the node.
    let watcher = format!("while kill -0 {} ", std::process::id());
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !(l.starts_with("process ") && l.contains(&watcher)))
        .map(|l| format!("{l}\n"))
        .collect())
}

#[test]
fn down_leaves_no_process_mount_rule_link_or_cgroup_of_the_node() {
    let before = host_state("/nonexistent-cluster-dir", true).expect("reading the host");
    let cluster = Cluster::start_local(Mode::RealNode).expect("a real-node cluster");
    let dir = cluster.local_dir.clone().expect("a local cluster");
    let dir_text = dir.display().to_string();
    let admin = cluster.kubectl();

    // A pod with every kind of volume mount the kubelet makes (configMap, secret, emptyDir in
    // memory, projected service-account token), a hostPort (the portmap plugin's chains) and a
    // Service (kube-proxy's chains); the pause image runs until it is stopped.
    let images = std::fs::read_to_string(dir.join("env")).expect("the cluster's env");
    let images_dir = images
        .lines()
        .find_map(|l| l.strip_prefix("export COLLM_NODE_IMAGES="))
        .expect("COLLM_NODE_IMAGES in env");
    let pause = std::fs::read_to_string(format!("{images_dir}/pause.ref")).expect("pause.ref");
    admin.run(&["create", "configmap", "config", "--from-literal=a=b"]).expect("configmap");
    admin.run(&["create", "secret", "generic", "secret", "--from-literal=c=d"]).expect("secret");
    let pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "holder", "namespace": "default", "labels": {"app": "holder"}},
        "spec": {
            "containers": [{
                "name": "pause",
                "image": pause.trim(),
                "imagePullPolicy": "Never",
                "ports": [{"containerPort": 8080, "hostPort": 18080}],
                "volumeMounts": [
                    {"name": "config", "mountPath": "/config"},
                    {"name": "secret", "mountPath": "/secret"},
                    {"name": "scratch", "mountPath": "/scratch"},
                ],
            }],
            "volumes": [
                {"name": "config", "configMap": {"name": "config"}},
                {"name": "secret", "secret": {"secretName": "secret"}},
                {"name": "scratch", "emptyDir": {"medium": "Memory"}},
            ],
        },
    });
    admin.apply(&pod.to_string()).expect("applying the pod");
    admin.run(&["expose", "pod", "holder", "--port=8080"]).expect("a Service");
    admin.wait_ready_pods("default", "app=holder", 1, Duration::from_secs(180)).expect("pod ready");
    let running = host_state(&dir_text, false).expect("reading the host");
    assert!(running.contains("mount "), "the pod's volumes should be mounted:\n{running}");
    assert!(running.contains("iptables nat :KUBE-SVC"), "kube-proxy should program:\n{running}");
    assert!(running.contains("iptables nat :CNI-HOSTPORT"), "portmap should program:\n{running}");

    let out = Command::new(repo_root().join("e2e/cluster/down"))
        .arg(&dir)
        .output()
        .expect("running e2e/cluster/down");
    assert!(out.status.success(), "down failed: {}", String::from_utf8_lossy(&out.stderr));
    assert!(!dir.exists(), "down should delete {dir_text}");
    let after = host_state(&dir_text, true).expect("reading the host");
    assert_eq!(after, before, "down should leave the host as it found it");
}
