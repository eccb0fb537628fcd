//! What tests on a node whose pods really run need: waiting for pods and Jobs, their logs, exec,
//! port-forwarding, and a failure report that says why a pod is not running.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use serde_json::Value;

use crate::cluster::Kubectl;
use crate::process::{Daemon, eventually, free_port};

/// Whether a pod's Ready condition is True.
pub fn pod_ready(pod: &Value) -> bool {
    pod["status"]["conditions"]
        .as_array()
        .is_some_and(|cs| cs.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
}

/// Why a pod is not running, in one line per container that is not (waiting reasons such as
/// ImagePullBackOff or CrashLoopBackOff, termination reasons and exit codes).
pub fn pod_problems(pod: &Value) -> Vec<String> {
    let name = pod["metadata"]["name"].as_str().unwrap_or("?");
    let mut problems = Vec::new();
    for key in ["initContainerStatuses", "containerStatuses"] {
        for status in pod["status"][key].as_array().into_iter().flatten() {
            let container = status["name"].as_str().unwrap_or("?");
            let state = &status["state"];
            if let Some(waiting) = state["waiting"].as_object() {
                problems.push(format!(
                    "{name}/{container} waiting: {} {}",
                    waiting.get("reason").and_then(Value::as_str).unwrap_or(""),
                    waiting.get("message").and_then(Value::as_str).unwrap_or("")
                ));
            }
            if let Some(done) = state["terminated"].as_object()
                && done.get("exitCode").and_then(Value::as_i64) != Some(0)
            {
                problems.push(format!(
                    "{name}/{container} terminated: {} exit {}",
                    done.get("reason").and_then(Value::as_str).unwrap_or(""),
                    done.get("exitCode").and_then(Value::as_i64).unwrap_or(-1)
                ));
            }
        }
    }
    if problems.is_empty() && !pod_ready(pod) {
        problems.push(format!(
            "{name}: phase {}, not ready",
            pod["status"]["phase"].as_str().unwrap_or("unknown")
        ));
    }
    problems
}

impl Kubectl {
    /// The pods of `namespace` matching a label `selector` (e.g. `app=worker`).
    pub fn pods(&self, namespace: &str, selector: &str) -> Result<Vec<Value>> {
        let out = self.run(&["get", "pods", "-n", namespace, "-l", selector, "-o", "json"])?;
        let list: Value = serde_json::from_str(&out)?;
        Ok(list["items"].as_array().cloned().unwrap_or_default())
    }

    /// Waits until `count` pods matching `selector` are Ready; returns them. On timeout the
    /// error carries [`Kubectl::diagnose`] of the namespace.
    pub fn wait_ready_pods(
        &self,
        namespace: &str,
        selector: &str,
        count: usize,
        timeout: Duration,
    ) -> Result<Vec<Value>> {
        let what = format!("{count} ready pod(s) {selector} in {namespace}");
        eventually(&what, timeout, || {
            let pods = self.pods(namespace, selector)?;
            let ready: Vec<Value> = pods.iter().filter(|p| pod_ready(p)).cloned().collect();
            ensure!(
                ready.len() >= count,
                "{} of {count} ready: {}",
                ready.len(),
                pods.iter().flat_map(pod_problems).collect::<Vec<_>>().join("; ")
            );
            Ok(ready)
        })
        .map_err(|e| e.context(self.diagnose(namespace)))
    }

    /// Waits until Job `name` has succeeded (and fails at once when it has failed).
    pub fn wait_job_complete(&self, namespace: &str, name: &str, timeout: Duration) -> Result<()> {
        let succeeded = eventually(&format!("Job {namespace}/{name} to finish"), timeout, || {
            let job = self.must_get(namespace, "job", name)?;
            let conditions = job["status"]["conditions"].as_array().cloned().unwrap_or_default();
            let has = |t: &str| conditions.iter().any(|c| c["type"] == t && c["status"] == "True");
            ensure!(has("Complete") || has("Failed"), "still running (status {})", job["status"]);
            Ok(has("Complete"))
        })
        .map_err(|e| e.context(self.diagnose(namespace)))?;
        ensure!(succeeded, "Job {namespace}/{name} failed\n{}", self.diagnose(namespace));
        Ok(())
    }

    /// A container's log (`container` None: the pod's only container).
    pub fn logs(&self, namespace: &str, pod: &str, container: Option<&str>) -> Result<String> {
        let mut args = vec!["logs", "-n", namespace, pod];
        if let Some(c) = container {
            args.extend(["-c", c]);
        }
        self.run(&args)
    }

    /// Runs `command` in a pod's (first) container; returns its stdout.
    pub fn exec(&self, namespace: &str, pod: &str, command: &[&str]) -> Result<String> {
        let mut args = vec!["exec", "-n", namespace, pod, "--"];
        args.extend_from_slice(command);
        self.run(&args)
    }

    /// What a failure message needs to say why pods do not run: every pod's phase and
    /// container problems, the namespace's warning events, and the last log lines (and the
    /// previous run's, after a restart) of every container that is not ready.
    pub fn diagnose(&self, namespace: &str) -> String {
        let mut report = format!("--- namespace {namespace} ---\n");
        match self.pods(namespace, "") {
            Ok(pods) => {
                for pod in &pods {
                    let name = pod["metadata"]["name"].as_str().unwrap_or("?");
                    report.push_str(&format!(
                        "pod {name}: {} on {} ({})\n",
                        pod["status"]["phase"].as_str().unwrap_or("?"),
                        pod["spec"]["nodeName"].as_str().unwrap_or("no node"),
                        if pod_ready(pod) { "ready" } else { "not ready" }
                    ));
                    for problem in pod_problems(pod) {
                        report.push_str(&format!("  {problem}\n"));
                    }
                    if pod_ready(pod) {
                        continue;
                    }
                    for status in
                        pod["status"]["containerStatuses"].as_array().into_iter().flatten()
                    {
                        let container = status["name"].as_str().unwrap_or_default();
                        for previous in [false, true] {
                            if previous && status["restartCount"].as_u64().unwrap_or(0) == 0 {
                                continue;
                            }
                            let mut args =
                                vec!["logs", "-n", namespace, name, "-c", container, "--tail=30"];
                            if previous {
                                args.push("--previous");
                            }
                            let log = self.run(&args).unwrap_or_else(|e| format!("({e})"));
                            report.push_str(&format!(
                                "  {}log of {container}:\n{}\n",
                                if previous { "previous " } else { "" },
                                indent(&log)
                            ));
                        }
                    }
                }
            }
            Err(e) => report.push_str(&format!("(pods: {e:#})\n")),
        }
        let events = self
            .run(&[
                "get",
                "events",
                "-n",
                namespace,
                "--field-selector=type=Warning",
                "-o",
                "custom-columns=OBJECT:.involvedObject.name,REASON:.reason,MESSAGE:.message",
            ])
            .unwrap_or_else(|e| format!("({e})"));
        report.push_str(&format!("warning events:\n{}\n", indent(&events)));
        report
    }

    /// `kubectl port-forward` of `target` (`pod/NAME`, `svc/NAME`, ...) to a free loopback
    /// port, once it accepts connections. Stops when dropped.
    pub fn port_forward(
        &self,
        namespace: &str,
        target: &str,
        remote_port: u16,
        log_dir: &Path,
    ) -> Result<PortForward> {
        let local_port = free_port()?;
        let log = log_dir.join(format!(
            "port-forward-{namespace}-{}-{remote_port}.log",
            target.replace('/', "-")
        ));
        let mut daemon = Daemon::spawn(
            "kubectl port-forward",
            Command::new("kubectl").arg("--kubeconfig").arg(&self.kubeconfig).args([
                "port-forward",
                "-n",
                namespace,
                "--address=127.0.0.1",
                target,
                &format!("{local_port}:{remote_port}"),
            ]),
            &log,
        )?;
        let address = SocketAddr::from(([127, 0, 0, 1], local_port));
        eventually(&format!("port-forward to {target}"), Duration::from_secs(30), || {
            ensure!(daemon.is_running(), "kubectl port-forward exited: {}", daemon.log_tail(5));
            ensure!(
                std::fs::read_to_string(&log).unwrap_or_default().contains("Forwarding from"),
                "not forwarding yet"
            );
            Ok(())
        })?;
        Ok(PortForward { address, _daemon: daemon })
    }
}

/// A local port forwarded into the cluster.
pub struct PortForward {
    pub address: SocketAddr,
    _daemon: Daemon,
}

/// A plain HTTP/1.0 GET: (status code, body). For health endpoints and small JSON answers.
pub fn http_get(address: SocketAddr, path: &str) -> Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(5))
        .with_context(|| format!("connecting to {address}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {address}\r\nConnection: close\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("no HTTP status in {response:?}"))?;
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Ok((status, body))
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("    {l}")).collect::<Vec<_>>().join("\n")
}
