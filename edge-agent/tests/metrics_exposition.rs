//! What Prometheus and Grafana get from a running edge agent and cloud worker: both `/metrics`
//! pages pass `promtool check metrics` (Prometheus' own linter: naming conventions, base units,
//! `_total` counters) and carry the metrics users watch; the chart's Grafana dashboard matches
//! Grafana's dashboard schema, its every query parses as PromQL and names a metric the processes
//! really serve; the autoscaling examples name a metric the cloud worker really serves.
//!
//! promtool and dashcheck are built from pinned Go modules by `tools/build-go-tools`.

mod common;

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A program `tools/build-go-tools` builds: from `$COLLM_BIN`, else from what the script
/// reports (it builds what is missing, and only that).
fn go_tool(name: &str) -> PathBuf {
    if let Some(bin) = std::env::var_os("COLLM_BIN") {
        let path = Path::new(&bin).join(name);
        if path.exists() {
            return path;
        }
    }
    let out = Command::new(repo().join("tools/build-go-tools"))
        .stderr(Stdio::inherit())
        .output()
        .expect("tools/build-go-tools runs");
    assert!(out.status.success(), "tools/build-go-tools failed");
    let dir = String::from_utf8(out.stdout).expect("utf-8");
    let path = Path::new(dir.trim()).join(name);
    assert!(path.exists(), "{name} is not in {} after tools/build-go-tools", dir.trim());
    path
}

/// Runs `program args` with `input` on stdin; (success, stdout, stderr).
fn run(program: &Path, args: &[&str], input: &str) -> (bool, String, String) {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e}", program.display()));
    child.stdin.take().expect("stdin").write_all(input.as_bytes()).expect("stdin written");
    let out = child.wait_with_output().expect("finishes");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The page at `url`, as a scraper that does not ask for OpenMetrics gets it (promtool reads
/// the classic text format). Waits for the listener, 60 s at most.
fn scrape(url: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match ureq::get(url).call() {
            Ok(mut resp) => {
                let kind = resp.headers().get("content-type").cloned();
                assert_eq!(
                    kind.as_ref().and_then(|v| v.to_str().ok()),
                    Some("text/plain; version=0.0.4; charset=utf-8"),
                    "{url}"
                );
                return resp.body_mut().read_to_string().expect("a text page");
            }
            Err(e) if Instant::now() > deadline => panic!("{url}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// Names of the samples on a page (histograms give `_bucket`, `_sum`, `_count`).
fn sample_names(page: &str) -> BTreeSet<String> {
    page.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap_or_default().to_string())
        .collect()
}

/// The value of the first sample whose line starts with `series`.
fn value(page: &str, series: &str) -> f64 {
    page.lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("{series} missing from:\n{page}"))
}

/// Metric names a PromQL expression uses (ours and the standard process ones).
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let word_start = i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_');
        if word_start && (expr[i..].starts_with("collm_") || expr[i..].starts_with("process_")) {
            let end = expr[i..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .map_or(expr.len(), |n| i + n);
            names.push(expr[i..end].to_string());
            i = end;
        } else {
            i += 1;
        }
    }
    names
}

#[test]
fn edge_and_cloud_metrics_pass_promtool_and_the_dashboard_queries_what_they_serve() {
    let promtool = go_tool("promtool");
    let dashcheck = go_tool("dashcheck");
    let dir = tempfile::tempdir().expect("tempdir");
    let bundle = tiny_bundle(dir.path());
    let http_port = collm_testkit::free_port().to_string();
    let http_listen = format!("127.0.0.1:{http_port}");
    let w = worker(&bundle, dir.path(), &["--http-listen", &http_listen]);
    // θ > 1: every token is the cloud's, so both sides count uploads, calls and tokens.
    let a = agent(&bundle, &[&w.addr], &["--threshold", "1.5"]);
    let base = format!("http://{}", a.addr);
    let (status, answer) = post(&base, "/v1/completions", &completion(6, json!({})));
    assert_eq!(status, 200, "{answer}");
    let events =
        stream(&base, "/v1/completions", &completion(6, json!({"stream": true})), |_, _| {});
    assert!(!events.is_empty(), "the stream answered");

    let edge = scrape(&format!("{base}/metrics"));
    let cloud = scrape(&format!("http://{http_listen}/metrics"));

    // Prometheus' own linter finds nothing to say about either page.
    for (who, page) in [("edge-agent", &edge), ("cloud-worker", &cloud)] {
        let (ok, out, err) = run(&promtool, &["check", "metrics"], page);
        assert!(
            ok && err.trim().is_empty(),
            "promtool check metrics on the {who}: {out}{err}\n{page}"
        );
    }

    // What a user watches is there, in base units, and counts what happened.
    let prompt_tokens = value(&edge, "collm_edge_prompt_tokens_total");
    assert!(prompt_tokens >= 2.0, "two prompts were read: {prompt_tokens}");
    assert!(value(&edge, "collm_edge_time_to_first_token_seconds_count") >= 2.0);
    // Two answers of up to six tokens: inter-token gaps are every token but each first one.
    let tokens: f64 = edge
        .lines()
        .filter(|l| l.starts_with("collm_edge_tokens_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(value(&edge, r#"collm_edge_tokens_total{source="cloud"}"#) >= 2.0, "{edge}");
    assert_eq!(
        value(&edge, "collm_edge_inter_token_latency_seconds_count"),
        tokens - 2.0,
        "{edge}"
    );
    assert_eq!(value(&edge, "collm_edge_engine_queue_depth"), 0.0, "nothing waits once idle");
    assert_eq!(value(&cloud, "collm_cloud_engine_queue_depth"), 0.0);
    for page in [&edge, &cloud] {
        assert!(value(page, "process_resident_memory_bytes") > 10e6, "{page}");
        assert!(value(page, "process_cpu_seconds_total") > 0.0, "{page}");
        assert!(value(page, "process_open_fds") > 3.0, "{page}");
    }
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        value(
            &edge,
            &format!(r#"collm_edge_build_info{{service="edge-agent",version="{version}"}}"#)
        ),
        1.0
    );
    assert_eq!(
        value(
            &cloud,
            &format!(r#"collm_cloud_build_info{{service="cloud-worker",version="{version}"}}"#)
        ),
        1.0
    );
    let served: BTreeSet<String> =
        sample_names(&edge).into_iter().chain(sample_names(&cloud)).collect();

    // The dashboard: Grafana's schema, then PromQL that parses and names served metrics.
    let dashboard = repo().join("charts/collm/dashboards/collm.json");
    let (ok, queries, err) = run(&dashcheck, &[dashboard.to_str().expect("utf-8")], "");
    assert!(ok, "the dashboard does not match Grafana's schema: {err}");
    let queries: Vec<(&str, &str)> =
        queries.lines().map(|l| l.split_once('\t').expect("title, tab, expr")).collect();
    for title in [
        "Edge share",
        "Tokens by source",
        "Time to first token",
        "Inter-token latency",
        "Cloud latency",
        "Degraded responses",
        "Uploads",
    ] {
        assert!(queries.iter().any(|(t, _)| *t == title), "no {title:?} panel: {queries:?}");
    }
    let mut rules = String::from("groups:\n  - name: collm-dashboard\n    rules:\n");
    for (n, (title, expr)) in queries.iter().enumerate() {
        // Grafana's variables, as Grafana substitutes them before Prometheus sees the query.
        let expr = expr
            .replace("$__rate_interval", "1m")
            .replace("$namespace", ".*")
            .replace("$model", ".*");
        rules.push_str(&format!(
            "      - record: collm:dashboard_query_{n}\n        expr: {}\n",
            json!(expr)
        ));
        for name in metric_names(&expr) {
            assert!(served.contains(&name), "panel {title:?} queries {name}, which nothing serves");
        }
    }
    let rules_file = dir.path().join("dashboard-rules.yaml");
    std::fs::write(&rules_file, &rules).expect("rules file");
    let (ok, out, err) =
        run(&promtool, &["check", "rules", rules_file.to_str().expect("utf-8")], "");
    assert!(ok, "the dashboard's queries do not all parse as PromQL: {out}{err}\n{rules}");

    // Autoscaling examples scale on a metric every cloud worker serves.
    let mut custom = Vec::new();
    for entry in std::fs::read_dir(repo().join("charts/collm/examples")).expect("examples") {
        let text = std::fs::read_to_string(entry.expect("entry").path()).expect("readable");
        let mut lines = text.lines().skip_while(|l| l.trim() != "customMetric:");
        if lines.next().is_some() {
            let name = lines
                .find_map(|l| l.trim().strip_prefix("name:"))
                .expect("customMetric has a name")
                .trim()
                .to_string();
            custom.push(name);
        }
    }
    assert!(!custom.is_empty(), "an example shows a custom autoscaling metric");
    for name in custom {
        assert!(
            sample_names(&cloud).contains(&name),
            "the example's {name} is not served:\n{cloud}"
        );
    }
}
