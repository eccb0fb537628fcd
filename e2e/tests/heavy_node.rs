//! Heavy: pods on a real node (`e2e/cluster/up --node`, or KUBECONFIG's cluster): the images
//! built from docker/*.Dockerfile run on a kubelet, a cloud worker loads a bundle with the ONNX
//! Runtime of its image and passes the kubelet's readiness probe, and its Service resolves
//! through cluster DNS and routes through kube-proxy, from pods and from the host. Each test
//! works in a fresh namespace.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use collm_e2e::node::{real_node, workspace_binary};
use collm_e2e::pods::{http_get, pod_ready};
use collm_e2e::process::eventually;
use serde_json::{Value, json};

/// Starting a pod includes unpacking its image on a busy 2-core machine.
const POD_START: Duration = Duration::from_secs(180);

fn check<T>(result: Result<T>) -> T {
    result.unwrap_or_else(|e| panic!("{e:#}"))
}

fn apply(manifest: &Value) -> Result<()> {
    real_node().admin.apply(&manifest.to_string()).map(|_| ())
}

/// A Job of one container that must exit 0; returns its log.
fn run_job(ns: &str, name: &str, image: &str, command: &[&str]) -> Result<String> {
    let node = real_node();
    apply(&json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "backoffLimit": 0,
            "template": {
                "metadata": {"labels": {"job": name}},
                "spec": {
                    "restartPolicy": "Never",
                    "enableServiceLinks": false,
                    "containers": [{
                        "name": "main",
                        "image": image,
                        "imagePullPolicy": "IfNotPresent",
                        "command": command,
                    }],
                },
            },
        },
    }))?;
    node.admin.wait_job_complete(ns, name, POD_START)?;
    let pods = node.admin.pods(ns, &format!("job={name}"))?;
    let pod = pods.first().and_then(|p| p["metadata"]["name"].as_str()).context("the Job's pod")?;
    node.admin.logs(ns, pod, None)
}

#[test]
fn the_three_images_run_to_completion_on_the_kubelet() {
    let node = real_node();
    let ns = check(node.admin.fresh_namespace("node-images"));
    let version = env!("CARGO_PKG_VERSION");
    for (name, image, binary) in [
        ("operator", &node.images.operator, "collm-operator"),
        ("edge-agent", &node.images.edge_agent, "edge-agent"),
        ("cloud-worker", &node.images.cloud_worker, "cloud-worker"),
    ] {
        // The entrypoint is the binary; its --version proves the image's binary and libraries
        // run in a container the kubelet started.
        let log =
            check(run_job(&ns, name, image, &[&format!("/usr/local/bin/{binary}"), "--version"]));
        assert_eq!(log.trim(), format!("{binary} {version}"), "{image} printed {log:?}");
    }
}

/// A tiny bundle as a ConfigMap (what the worker reads of it): small enough for one, and a
/// ConfigMap reaches the pod on any cluster.
fn bundle_config_map(ns: &str) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let collm = workspace_binary("collm")?;
    let bundle = collm_testkit::tiny_bundle(&collm, dir.path(), "bundle");
    let mut args = vec!["create", "configmap", "bundle", "-n", ns];
    // The manifest and every file it records but the edge partition's (graphs and weights).
    let manifest: Value = serde_json::from_slice(&std::fs::read(bundle.join("manifest.json"))?)?;
    let recorded = manifest["files"].as_object().map(|f| f.keys().cloned().collect::<Vec<_>>());
    let files: Vec<String> = std::iter::once("manifest.json".to_string())
        .chain(recorded.unwrap_or_default().into_iter().filter(|f| !f.starts_with("edge.")))
        .map(|f| format!("--from-file={}", bundle.join(f).display()))
        .collect();
    args.extend(files.iter().map(String::as_str));
    real_node().admin.run(&args).map(|_| ())
}

fn worker_manifests(ns: &str, image: &str) -> Vec<Value> {
    let deployment = json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "worker", "namespace": ns},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "worker"}},
            "template": {
                "metadata": {"labels": {"app": "worker"}},
                "spec": {
                    "enableServiceLinks": false,
                    "automountServiceAccountToken": false,
                    "securityContext": {"runAsNonRoot": true, "runAsUser": 65532},
                    "containers": [{
                        "name": "worker",
                        "image": image,
                        "imagePullPolicy": "IfNotPresent",
                        "args": [
                            "--bundle", "/var/lib/collm/bundle",
                            "--tokens", "/etc/collm/token/token",
                            "--listen", "0.0.0.0:50051",
                            "--http-listen", "0.0.0.0:8081",
                        ],
                        "ports": [
                            {"name": "grpc", "containerPort": 50051},
                            {"name": "http", "containerPort": 8081},
                        ],
                        "readinessProbe": {
                            "httpGet": {"path": "/readyz", "port": 8081},
                            "periodSeconds": 1,
                        },
                        "securityContext": {
                            "readOnlyRootFilesystem": true,
                            "allowPrivilegeEscalation": false,
                            "capabilities": {"drop": ["ALL"]},
                        },
                        "volumeMounts": [
                            {"name": "bundle", "mountPath": "/var/lib/collm/bundle", "readOnly": true},
                            {"name": "token", "mountPath": "/etc/collm/token", "readOnly": true},
                            {"name": "tmp", "mountPath": "/tmp"},
                        ],
                    }],
                    "volumes": [
                        {"name": "bundle", "configMap": {"name": "bundle"}},
                        {"name": "token", "secret": {"secretName": "token"}},
                        {"name": "tmp", "emptyDir": {}},
                    ],
                },
            },
        },
    });
    let service = json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "worker", "namespace": ns},
        "spec": {
            "selector": {"app": "worker"},
            "ports": [
                {"name": "grpc", "port": 50051, "targetPort": "grpc"},
                {"name": "http", "port": 8081, "targetPort": "http"},
            ],
        },
    });
    vec![deployment, service]
}

/// `GET /readyz` of the worker at `address` answers 200.
fn ready_at(address: SocketAddr) -> Result<()> {
    let (status, body) = http_get(address, "/readyz")?;
    ensure!(status == 200, "GET http://{address}/readyz: {status} {body}");
    Ok(())
}

#[test]
fn a_cloud_worker_pod_serves_a_bundle_behind_a_service_that_resolves_and_routes() {
    let node = real_node();
    let admin = &node.admin;
    let ns = check(admin.fresh_namespace("node-worker"));
    check(bundle_config_map(&ns));
    check(admin.run(&[
        "create",
        "secret",
        "generic",
        "token",
        "-n",
        &ns,
        "--from-literal=token=t0ken",
    ]));
    for manifest in worker_manifests(&ns, &node.images.cloud_worker) {
        check(apply(&manifest));
    }
    // Ready only once the worker loaded cloud.onnx with its image's ONNX Runtime and the
    // kubelet's probe reached /readyz.
    let pods = check(admin.wait_ready_pods(&ns, "app=worker", 1, POD_START));
    let pod_ip = pods[0]["status"]["podIP"].as_str().expect("a ready pod has an IP").to_string();
    let cluster_ip = check(admin.must_get(&ns, "service", "worker"))["spec"]["clusterIP"]
        .as_str()
        .expect("a ClusterIP Service")
        .to_string();

    // From a pod: the Service's names resolve through cluster DNS to its ClusterIP, and a
    // connection to that address (which only kube-proxy's rules lead anywhere) reaches the
    // worker. Names outside the cluster get no answer: the cluster DNS has no upstream.
    // On the local node, pods also reach a server of the test on this machine (as a bundle
    // server for pods would be reached).
    let host_server = node.host_address_for_pods().map(|ip| {
        let listener = std::net::TcpListener::bind((ip, 0)).expect("binding on the node address");
        let address = listener.local_addr().expect("a bound address");
        std::thread::spawn(move || {
            use std::io::{Read, Write};
            let Ok((mut stream, _)) = listener.accept() else { return };
            let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
            // The whole request is read before answering, and the client's end is read to
            // EOF before closing: a socket closed with unread bytes sends a reset, and the
            // pod would see "connection reset" instead of the answer.
            let (mut request, mut buf) = (Vec::new(), [0u8; 1024]);
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
            }
            let _ = stream.write_all(b"HTTP/1.0 200 OK\r\n\r\nhello from the host\n");
            let _ = stream.shutdown(std::net::Shutdown::Write);
            while matches!(stream.read(&mut buf), Ok(n) if n > 0) {}
        });
        address
    });
    // A second try, only after a failed first one, tells a lost first connection from a host
    // that pods cannot reach at all (the assertion holds to the first try either way).
    let host_check = host_server.map_or(String::new(), |a| {
        let get = format!(
            "exec 3<>/dev/tcp/{}/{}; printf 'GET / HTTP/1.0\\r\\n\\r\\n' >&3; tail -n1 <&3",
            a.ip(),
            a.port()
        );
        format!(
            r#"first="$(timeout 30 bash -c "{get}")"
echo "host: $first"
if [ "$first" != "hello from the host" ]; then
  sleep 5
  echo "host, second try: $(timeout 30 bash -c "{get}")"
fi
"#
        )
    });
    let image = node.images.redis.clone().unwrap_or_else(|| "debian:trixie-slim".to_string());
    let script = format!(
        r#"set -u
for host in worker.{ns}.svc.cluster.local worker.{ns}.svc worker; do
  echo "resolved $host $(getent hosts $host | cut -d' ' -f1)"
  exec 3<>/dev/tcp/$host/8081
  printf 'GET /readyz HTTP/1.0\r\n\r\n' >&3
  echo "answered $host $(head -n1 <&3 | tr -d '\r')"
  exec 3>&-
done
getent hosts example.com >/dev/null && echo "outside: resolved" || echo "outside: no answer"
{host_check}"#
    );
    let log = check(run_job(&ns, "client", &image, &["bash", "-c", &script]));
    for host in
        [format!("worker.{ns}.svc.cluster.local"), format!("worker.{ns}.svc"), "worker".into()]
    {
        assert!(
            log.contains(&format!("resolved {host} {cluster_ip}\n")),
            "{host} should resolve to the ClusterIP {cluster_ip}:\n{log}"
        );
        let answer = log.lines().find_map(|l| l.strip_prefix(&format!("answered {host} ")));
        assert!(
            answer.is_some_and(|status| status.starts_with("HTTP/") && status.ends_with(" 200 OK")),
            "the worker should answer through {host}:\n{log}"
        );
    }
    assert!(
        log.contains("outside: no answer"),
        "cluster DNS must not resolve outside names:\n{log}"
    );
    if host_server.is_some() {
        assert!(
            log.contains("host: hello from the host"),
            "a pod should reach the host:\n{log}\nthe host's network:\n{}",
            host_network()
        );
    }

    // From the host: on the local node, the pod's address and the ClusterIP (kube-proxy's
    // OUTPUT rules); on any cluster, a port-forward to the Service.
    if node.is_local() {
        check(ready_at(format!("{pod_ip}:8081").parse().expect("an address")));
        check(ready_at(format!("{cluster_ip}:8081").parse().expect("an address")));
    }
    let forward = check(admin.port_forward(&ns, "svc/worker", 8081, &node.log_dir));
    check(ready_at(forward.address));

    // A replaced pod: the Service follows it (new endpoints, new rules).
    check(admin.run(&["delete", "pod", "-n", &ns, "-l", "app=worker", "--wait=false"]));
    let replaced = eventually("a ready replacement worker pod", POD_START, || {
        let pods = admin.pods(&ns, "app=worker")?;
        let ips: Vec<&str> = pods
            .iter()
            .filter(|p| pod_ready(p))
            .filter_map(|p| p["status"]["podIP"].as_str())
            .collect();
        ensure!(ips.len() == 1 && ips[0] != pod_ip, "ready pods at {ips:?}, old one at {pod_ip}");
        Ok(ips[0].to_string())
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", admin.diagnose(&ns)));
    if node.is_local() {
        check(eventually("the ClusterIP to reach the new pod", Duration::from_secs(30), || {
            ready_at(format!("{cluster_ip}:8081").parse()?)
        }));
        eprintln!("ClusterIP {cluster_ip} now routes to {replaced}");
    }
    check(admin.run(&["delete", "namespace", &ns, "--wait=false"]));
}

/// This machine's addresses, routes, filter rules and listening sockets, for a failure that
/// depends on them.
fn host_network() -> String {
    let script = "ip -o -4 addr show; ip route; iptables-save -t filter; ss -ltn";
    match std::process::Command::new("sh").args(["-c", script]).output() {
        Ok(out) => String::from_utf8_lossy(&out.stdout).into_owned(),
        Err(e) => format!("(cannot run {script}: {e})"),
    }
}
