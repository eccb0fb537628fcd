//! Decoding ahead of the cloud, with real processes on loopback and the tiny model (whose exit
//! heads guess wrong often, so rollbacks happen on nearly every generation):
//! - pipelined collaboration commits exactly what waiting for every answer commits (a worker
//!   without the `epochs` capability makes the agent wait, and is never sent rewritten rows);
//! - lossless speculation gives the full model's tokens, greedy and seeded-sampled, also when
//!   the worker cannot verify (the agent then asks token by token);
//! - rollbacks keep the cloud context right: a worker that keeps no KV cache rebuilds every
//!   answer from the stored rows (memory and Redis), and the answers stay the full model's;
//! - a worker killed mid-speculation is replaced by another sharing Redis without a changed
//!   token.

mod common;

use collm_testkit::{RedisServer, Toxiproxy};
use common::*;
use serde_json::{Value, json};

/// A worker that acts as one from before epochs and verification.
const OLD_WORKER: [&str; 4] = ["--without", "epochs", "--without", "verify"];

fn answer(base: &str, body: &Value) -> Value {
    let (status, answer) = post(base, "/v1/completions", body);
    assert_eq!(status, 200, "{answer}");
    answer
}

/// A count: OpenAI's from `usage`, ours from `collm`.
fn usage(answer: &Value, field: &str) -> u64 {
    answer["usage"][field]
        .as_u64()
        .or_else(|| answer["collm"][field].as_u64())
        .unwrap_or_else(|| panic!("no usage.{field} or collm.{field} in {answer}"))
}

/// Greedy and seeded-sampled completions of the tiny prompt.
fn bodies(mode: &str, max_tokens: usize) -> Vec<Value> {
    vec![
        completion(max_tokens, json!({"mode": mode})),
        completion(max_tokens, json!({"mode": mode, "temperature": 0.9, "seed": 7})),
        completion(max_tokens, json!({"mode": mode, "temperature": 1.2, "top_p": 0.9, "seed": 8})),
    ]
}

#[test]
fn pipelined_collaboration_commits_what_waiting_for_every_answer_commits() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bundle = tiny_bundle(dir.path());
    let new = worker(&bundle, &dir.path().join("new").tap_mkdir(), &[]);
    let old = worker(&bundle, &dir.path().join("old").tap_mkdir(), &OLD_WORKER);
    // θ > 1: the cloud answers every token, the edge guesses every one ahead of it.
    for threshold in ["1.5", "0.2"] {
        let flags = ["--encoding", "f16", "--threshold", threshold];
        let pipelined = agent(&bundle, &[&new.addr], &flags);
        let waiting = agent(&bundle, &[&old.addr], &flags);
        let (p, w) = (format!("http://{}", pipelined.addr), format!("http://{}", waiting.addr));
        let mut rollbacks = 0;
        for body in bodies("collaborative", 40) {
            let (ahead, waited) = (answer(&p, &body), answer(&w, &body));
            assert_eq!(tokens(&ahead), tokens(&waited), "θ {threshold}, {body}");
            assert_eq!(ahead["collm"]["sources"], waited["collm"]["sources"], "θ {threshold}");
            assert_eq!(usage(&waited, "rollbacks"), 0, "nothing to roll back when waiting");
            assert_eq!(ahead["collm"]["degraded"], false, "{ahead}");
            rollbacks += usage(&ahead, "rollbacks");
        }
        if threshold == "1.5" {
            assert!(rollbacks > 0, "the tiny model's guesses should have been wrong sometimes");
        }
    }
}

#[test]
fn speculation_gives_the_full_models_tokens_greedy_and_seeded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bundle = tiny_bundle(dir.path());
    let new = worker(&bundle, &dir.path().join("new").tap_mkdir(), &[]);
    let old = worker(&bundle, &dir.path().join("old").tap_mkdir(), &OLD_WORKER);
    let speculating = agent(&bundle, &[&new.addr], &["--encoding", "f32"]);
    let asking = agent(&bundle, &[&old.addr], &["--encoding", "f32"]);
    let (s, a) = (format!("http://{}", speculating.addr), format!("http://{}", asking.addr));
    let (mut drafted, mut accepted, mut rollbacks) = (0, 0, 0);
    for body in bodies("speculative", 48) {
        let mut args = vec!["--mode".to_owned(), "full".to_owned(), "--max-tokens".to_owned()];
        args.push(body["max_tokens"].to_string());
        for (flag, field) in
            [("--temperature", "temperature"), ("--top-p", "top_p"), ("--seed", "seed")]
        {
            if let Some(v) = body.get(field) {
                args.extend([flag.to_owned(), v.to_string()]);
            }
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let full = ids(&in_process(&bundle, &args), "tokens");
        let speculated = answer(&s, &body);
        assert_eq!(tokens(&speculated), full, "speculation changed the answer of {body}");
        drafted += usage(&speculated, "drafted_tokens");
        accepted += usage(&speculated, "accepted_draft_tokens");
        rollbacks += usage(&speculated, "rollbacks");
        let asked = answer(&a, &body);
        assert_eq!(tokens(&asked), full, "a worker that cannot verify changed the answer");
        assert_eq!(usage(&asked, "drafted_tokens"), 0, "nothing may be drafted for it");
    }
    assert!(drafted > 0 && accepted <= drafted, "drafted {drafted}, accepted {accepted}");
    assert!(rollbacks > 0, "the tiny model's drafts should have been rejected sometimes");
}

#[test]
fn rollbacks_keep_the_stored_context_right_in_memory_and_in_redis() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bundle = tiny_bundle(dir.path());
    let redis = RedisServer::start();
    let redis_url = redis.url();
    // No KV cache survives between requests: every answer is computed from the stored rows,
    // so a row left over from a rolled-back branch would change it.
    let uncached = ["--cached-sessions", "0"];
    let memory = worker(&bundle, &dir.path().join("m").tap_mkdir(), &uncached);
    let on_redis = worker(
        &bundle,
        &dir.path().join("r").tap_mkdir(),
        &["--cached-sessions", "0", "--redis-url", &redis_url],
    );
    let full = ids(&in_process(&bundle, &["--mode", "full", "--max-tokens", "40"]), "tokens");
    for w in [&memory, &on_redis] {
        let a = agent(&bundle, &[&w.addr], &["--encoding", "f32", "--threshold", "1.5"]);
        let base = format!("http://{}", a.addr);
        for mode in ["collaborative", "speculative"] {
            let answer = answer(&base, &completion(40, json!({"mode": mode})));
            assert_eq!(tokens(&answer), full, "{mode} on {}", w.addr);
            assert!(usage(&answer, "rollbacks") > 0, "{mode}: no rollback was forced");
        }
    }
}

#[test]
fn a_worker_killed_mid_speculation_is_replaced_without_a_changed_token() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bundle = tiny_bundle(dir.path());
    let redis = RedisServer::start();
    let shared = ["--redis-url", &redis.url()];
    let full = ids(&in_process(&bundle, &["--mode", "full", "--max-tokens", "120"]), "tokens");
    for mode in ["speculative", "collaborative"] {
        let mut w1 = worker(&bundle, &dir.path().join(format!("{mode}1")).tap_mkdir(), &shared);
        let w2 = worker(&bundle, &dir.path().join(format!("{mode}2")).tap_mkdir(), &shared);
        // A little latency on the first worker's link so the generation is still running when
        // it dies.
        let toxiproxy = Toxiproxy::start();
        let link = toxiproxy.proxy("w1", w1.addr.trim_start_matches("http://"));
        link.add_latency("lag", 3, 0);
        let first = format!("http://{}", link.listen());
        let a = agent(&bundle, &[&first, &w2.addr], &["--encoding", "f32", "--threshold", "1.5"]);
        let base = format!("http://{}", a.addr);
        let mut body = completion(120, json!({"stream": true, "mode": mode}));
        body["stream_options"] = json!({"include_usage": true});
        let mut got = vec![];
        let mut last_usage = Value::Null;
        stream(&base, "/v1/completions", &body, |i, ev| {
            if i == 10 {
                w1.kill();
            }
            got.extend(
                ev["collm"]["tokens"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|t| t.as_u64().expect("id")),
            );
            // The last chunk's `collm` says how the answer was made.
            if !ev["collm"]["mode"].is_null() {
                last_usage = ev["collm"].clone();
            }
        });
        assert_eq!(got, full, "{mode}: failover changed the answer");
        assert_eq!(last_usage["degraded"], false, "{mode}: {last_usage}");
    }
}
