//! What `spec.observability` renders into a pod's environment is what the binaries obey:
//! `RUST_LOG` sets the levels, `COLLM_LOG_FORMAT=json` makes every line one JSON object, and
//! `OTEL_EXPORTER_OTLP_ENDPOINT` sends spans to that collector, for the edge agent and the
//! cloud worker alike; a format they do not know stops them with a message naming it.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use collm_testkit::FakeCollector;
use common::*;
use serde_json::{Value, json};

/// Runs `cmd` with the observability environment until its first stdout line (the address),
/// then `act(address)`, then SIGTERM; returns its stderr lines.
fn with_env(cmd: &mut Command, env: &[(&str, &str)], act: impl FnOnce(&str)) -> Vec<String> {
    let stderr = tempfile::NamedTempFile::new().expect("stderr file");
    let mut child = cmd
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(stderr.reopen().expect("reopen"))
        .spawn()
        .expect("spawns");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let first = lines.next().and_then(Result::ok).unwrap_or_default();
    std::thread::spawn(move || lines.for_each(drop));
    let addr = first.rsplit(' ').next().unwrap_or_default().to_string();
    if !addr.is_empty() {
        act(&addr);
    }
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while child.try_wait().expect("try_wait").is_none() {
        assert!(std::time::Instant::now() < deadline, "ignored SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
    let text = std::fs::read_to_string(stderr.path()).expect("stderr");
    assert!(!addr.is_empty(), "no address printed; stderr:\n{text}");
    text.lines().map(str::to_owned).collect()
}

fn assert_json_logs(who: &str, lines: &[String]) {
    assert!(!lines.is_empty(), "{who} logged nothing");
    let objects: Vec<Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{who}: not JSON ({e}): {l}")))
        .collect();
    assert!(objects.iter().all(|o| o["level"].is_string() && o["timestamp"].is_string()), "{who}");
    // The binaries' default filter keeps ONNX Runtime at warnings; RUST_LOG lets its info in.
    assert!(
        objects
            .iter()
            .any(|o| o["level"] == "INFO"
                && o["target"].as_str().is_some_and(|t| t.starts_with("ort"))),
        "{who}: RUST_LOG=info,ort=info let no ONNX Runtime info line through: {lines:#?}"
    );
}

fn worker_cmd(bundle: &Path, dir: &Path) -> Command {
    let tokens = dir.join("tokens");
    std::fs::write(&tokens, "edge-a tok-a\n").expect("tokens");
    let mut cmd = Command::new(bin("cloud-worker"));
    cmd.args(["--bundle", path_str(bundle), "--listen", "127.0.0.1:0"])
        .args(["--tokens", path_str(&tokens)]);
    cmd
}

#[test]
fn both_binaries_obey_the_rendered_log_and_trace_environment() {
    let collector = FakeCollector::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let bundle = tiny_bundle(dir.path());
    let env = [
        ("RUST_LOG", "info,ort=info"),
        ("COLLM_LOG_FORMAT", "json"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", collector.endpoint.as_str()),
    ];

    let cloud = with_env(&mut worker_cmd(&bundle, dir.path()), &env, |_| {});
    assert_json_logs("cloud-worker", &cloud);

    let mut agent = Command::new(env!("CARGO_BIN_EXE_edge-agent"));
    agent.args(["--bundle", path_str(&bundle), "--listen", "127.0.0.1:0", "--model", "tiny"]);
    agent.args(["--mode", "standalone"]);
    let edge = with_env(&mut agent, &env, |addr| {
        let (status, answer) = post(addr, "/v1/completions", &completion(3, json!({})));
        assert_eq!(status, 200, "{answer}");
    });
    assert_json_logs("edge-agent", &edge);
    let spans = collector.spans();
    assert!(
        spans.iter().any(|s| s.service == "edge-agent" && s.name.contains("/v1/completions")),
        "the agent's request span did not reach the collector the environment names: {spans:#?}"
    );
}

#[test]
fn an_unknown_log_format_stops_the_binaries_with_its_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bundle = tiny_bundle(dir.path());
    let mut agent = Command::new(env!("CARGO_BIN_EXE_edge-agent"));
    agent.args(["--bundle", path_str(&bundle), "--listen", "127.0.0.1:0", "--mode", "standalone"]);
    for (who, mut cmd) in [("edge-agent", agent), ("cloud-worker", worker_cmd(&bundle, dir.path()))]
    {
        let out = cmd.env("COLLM_LOG_FORMAT", "yaml").output().expect("runs");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{who} started with COLLM_LOG_FORMAT=yaml");
        assert!(err.contains("COLLM_LOG_FORMAT \"yaml\""), "{who}: {err}");
    }
}
