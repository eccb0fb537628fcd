//! The edge agent under faults, with real processes: a cloud that is not there yet, a slow or
//! cut edge↔cloud link (toxiproxy), a cloud worker killed mid-generation, and a context store
//! flushed mid-generation. The edge keeps answering throughout, says when it was degraded, and
//! whenever the cloud does answer, the tokens are exactly those of an undisturbed run.

mod common;

use std::time::{Duration, Instant};

use collm_testkit::{RedisServer, Toxiproxy, free_port};
use common::*;
use serde_json::{Value, json};

/// Posts until `done` holds for the answer (or panics after `limit`).
fn until(base: &str, body: &Value, limit: Duration, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        let (status, answer) = post(base, "/v1/completions", body);
        assert_eq!(status, 200, "{answer}");
        if done(&answer) {
            return answer;
        }
        assert!(Instant::now() < deadline, "condition not reached within {limit:?}: last {answer}");
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// A count: OpenAI's from `usage`, ours from `collm`.
fn usage(answer: &Value, field: &str) -> u64 {
    answer["usage"][field]
        .as_u64()
        .or_else(|| answer["collm"][field].as_u64())
        .unwrap_or_else(|| panic!("no usage.{field} or collm.{field} in {answer}"))
}

#[test]
fn an_absent_cloud_degrades_the_answer_and_a_cloud_that_appears_is_used() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bundle = tiny_bundle(dir.path());
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let a = agent(&bundle, &[&url], &["--encoding", "f32", "--threshold", "1.5"]);
    let base = format!("http://{}", a.addr);
    let body = completion(12, json!({}));

    let (status, answer) = post(&base, "/v1/completions", &body);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["collm"]["degraded"], true, "{answer}");
    assert_eq!(usage(&answer, "latency_fallback_tokens"), usage(&answer, "completion_tokens"));
    let standalone = in_process(&bundle, &["--mode", "standalone", "--max-tokens", "12"]);
    assert_eq!(
        tokens(&answer),
        ids(&standalone, "tokens"),
        "the fallback is the deepest exit head"
    );

    let _w = worker_on(&bundle, dir.path(), &format!("127.0.0.1:{port}"), &[]);
    let answer = until(&base, &body, Duration::from_secs(20), |a| a["collm"]["degraded"] == false);
    let full = in_process(&bundle, &["--mode", "full", "--max-tokens", "12"]);
    assert_eq!(tokens(&answer), ids(&full, "tokens"));
    assert_eq!(usage(&answer, "cloud_tokens"), usage(&answer, "completion_tokens"));
}

#[test]
fn a_slow_link_is_answered_by_the_edge_within_the_budget_and_a_cut_one_degrades() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bundle = tiny_bundle(dir.path());
    let w = worker(&bundle, dir.path(), &[]);
    let toxiproxy = Toxiproxy::start();
    let link = toxiproxy.proxy("edge-cloud", w.addr.trim_start_matches("http://"));
    let cloud = format!("http://{}", link.listen());
    let a = agent(
        &bundle,
        &[&cloud],
        &["--encoding", "f32", "--threshold", "1.5", "--latency-budget-ms", "100"],
    );
    let base = format!("http://{}", a.addr);
    let body = completion(10, json!({}));
    let full = ids(&in_process(&bundle, &["--mode", "full", "--max-tokens", "10"]), "tokens");

    let answer = until(&base, &body, Duration::from_secs(10), |a| {
        a["collm"]["cloud_tokens"] == a["usage"]["completion_tokens"]
    });
    assert_eq!(tokens(&answer), full);

    // 300 ms each way: far beyond the 100 ms budget. The health probes notice; the edge answers
    // alone, quickly, without calling the response degraded (the cloud is there, just slow).
    link.add_latency("slow", 300, 0);
    let slow = until(&base, &body, Duration::from_secs(20), |a| {
        usage(a, "latency_fallback_tokens") == usage(a, "completion_tokens")
    });
    assert_eq!(slow["collm"]["degraded"], false, "{slow}");
    let t = Instant::now();
    post(&base, "/v1/completions", &body);
    assert!(
        t.elapsed() < Duration::from_millis(1500),
        "a slow cloud held the edge up: {:?}",
        t.elapsed()
    );

    link.remove_toxics("slow");
    let answer = until(&base, &body, Duration::from_secs(20), |a| {
        a["collm"]["cloud_tokens"] == a["usage"]["completion_tokens"]
    });
    assert_eq!(tokens(&answer), full, "collaboration resumes with the full model's tokens");

    link.disable();
    let cut = until(&base, &body, Duration::from_secs(20), |a| a["collm"]["degraded"] == true);
    assert_eq!(usage(&cut, "cloud_tokens"), 0, "{cut}");
    link.enable();
    let answer = until(&base, &body, Duration::from_secs(30), |a| {
        a["collm"]["degraded"] == false
            && a["collm"]["cloud_tokens"] == a["usage"]["completion_tokens"]
    });
    assert_eq!(tokens(&answer), full);
}

/// Streams a long greedy generation, calling `disrupt` once after the 10th event; returns
/// every token id and the last usage.
fn disrupted(base: &str, max_tokens: usize, mut disrupt: impl FnMut()) -> (Vec<u64>, Value) {
    let mut body = completion(max_tokens, json!({"stream": true}));
    body["stream_options"] = json!({"include_usage": true});
    let mut ids = vec![];
    let mut usage = Value::Null;
    stream(base, "/v1/completions", &body, |i, ev| {
        if i == 10 {
            disrupt();
        }
        ids.extend(
            ev["collm"]["tokens"].as_array().into_iter().flatten().map(|t| t.as_u64().expect("id")),
        );
        // The last chunk's `collm` says how the answer was made.
        if !ev["collm"]["mode"].is_null() {
            usage = ev["collm"].clone();
        }
    });
    (ids, usage)
}

#[test]
fn a_worker_killed_mid_generation_is_replaced_by_another_with_identical_tokens() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bundle = tiny_bundle(dir.path());
    let redis = RedisServer::start();
    let shared = ["--redis-url", &redis.url()];
    let mut w1 = worker(&bundle, &dir.path().join("w1").tap_mkdir(), &shared);
    let w2 = worker(&bundle, &dir.path().join("w2").tap_mkdir(), &shared);
    // A little latency on the first worker's link so the generation is still running when it
    // dies.
    let toxiproxy = Toxiproxy::start();
    let link = toxiproxy.proxy("w1", w1.addr.trim_start_matches("http://"));
    link.add_latency("lag", 3, 0);
    let first = format!("http://{}", link.listen());
    let a = agent(&bundle, &[&first, &w2.addr], &["--encoding", "f32", "--threshold", "1.5"]);
    let base = format!("http://{}", a.addr);

    let (ids, usage) = disrupted(&base, 120, || w1.kill());
    let full = in_process(&bundle, &["--mode", "full", "--max-tokens", "120"]);
    assert_eq!(ids, common::ids(&full, "tokens"), "failover changed the answer");
    assert_eq!(usage["cloud_tokens"], json!(120), "{usage}");
    assert_eq!(usage["degraded"], false, "{usage}");
}

#[test]
fn a_context_store_flushed_mid_generation_loses_no_session() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bundle = tiny_bundle(dir.path());
    let redis = RedisServer::start();
    // No KV cache survives between requests, so every answer needs the stored context.
    let w = worker(&bundle, dir.path(), &["--redis-url", &redis.url(), "--cached-sessions", "0"]);
    let toxiproxy = Toxiproxy::start();
    let link = toxiproxy.proxy("cloud", w.addr.trim_start_matches("http://"));
    link.add_latency("lag", 3, 0);
    let a = agent(
        &bundle,
        &[&format!("http://{}", link.listen())],
        &["--encoding", "f32", "--threshold", "1.5"],
    );
    let base = format!("http://{}", a.addr);

    let (ids, usage) = disrupted(&base, 80, || redis.flush());
    let full = in_process(&bundle, &["--mode", "full", "--max-tokens", "80"]);
    assert_eq!(ids, common::ids(&full, "tokens"), "a flushed context changed the answer");
    assert_eq!(usage["cloud_tokens"], json!(80), "{usage}");
}
