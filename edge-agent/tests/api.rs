//! The OpenAI API of a real edge agent process talking to a real cloud worker over gRPC, on
//! the tiny model: answers equal the in-process ones, streaming follows the OpenAI wire format,
//! and every kind of bad input gets a clear error without hurting the server.

mod common;

use common::*;
use serde_json::json;

#[test]
fn collaboration_over_http_and_grpc_equals_the_in_process_answer() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bundle = tiny_bundle(dir.path());
    let w = worker(&bundle, dir.path(), &[]);

    // Never exiting with lossless uploads: exactly the full model.
    let a = agent(&bundle, &[&w.addr], &["--encoding", "f32", "--threshold", "1.5"]);
    let full = in_process(&bundle, &["--mode", "full", "--max-tokens", "24"]);
    let (status, answer) =
        post(&format!("http://{}", a.addr), "/v1/completions", &completion(24, json!({})));
    assert_eq!(status, 200, "{answer}");
    assert_eq!(tokens(&answer), ids(&full, "tokens"));
    let usage = &answer["collm"];
    assert_eq!(usage["cloud_tokens"], json!(ids(&full, "tokens").len()));
    assert_eq!(usage["edge_tokens"], 0);
    assert_eq!(usage["mode"], "collaborative");
    assert_eq!(usage["degraded"], false);
    assert!(usage["uploaded_bytes"].as_u64().expect("bytes") > 0);
    drop(a);

    // Exiting with f16 uploads and sampling: the in-process collaborative answer, token for
    // token, with both sources used.
    let a = agent(&bundle, &[&w.addr], &["--encoding", "f16", "--threshold", "0.02"]);
    let reference = in_process(
        &bundle,
        &["--max-tokens", "32", "--threshold", "0.02", "--temperature", "0.8", "--seed", "11"],
    );
    let body = completion(32, json!({"temperature": 0.8, "seed": 11}));
    let (status, answer) = post(&format!("http://{}", a.addr), "/v1/completions", &body);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(tokens(&answer), ids(&reference, "tokens"));
    let sources = answer["collm"]["sources"].as_array().expect("sources");
    assert!(
        sources.iter().any(|s| s == "edge") && sources.iter().any(|s| s == "cloud"),
        "{sources:?}"
    );

    // Naive collaboration computes the same answer but ships the whole context every time.
    let naive = json!({"temperature": 0.8, "seed": 11, "mode": "naive"});
    let (status, naive) =
        post(&format!("http://{}", a.addr), "/v1/completions", &completion(32, naive));
    assert_eq!(status, 200, "{naive}");
    assert_eq!(tokens(&naive), tokens(&answer));
    assert!(
        naive["collm"]["uploaded_bytes"].as_u64() > answer["collm"]["uploaded_bytes"].as_u64(),
        "naive {} vs collaborative {}",
        naive["usage"],
        answer["usage"]
    );
}

#[test]
fn a_propagating_cloud_behind_the_agent_answers_as_the_in_process_propagating_cloud() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bundle = tiny_bundle(dir.path());
    let w = worker(&bundle, dir.path(), &["--catch-up", "propagate"]);
    let a = agent(&bundle, &[&w.addr], &["--encoding", "f16", "--threshold", "0.02"]);
    let args =
        ["--max-tokens", "32", "--threshold", "0.02", "--temperature", "0.8", "--seed", "11"];
    let mut propagate = args.to_vec();
    propagate.extend(["--catch-up", "propagate"]);
    let reference = in_process(&bundle, &propagate);
    let exact = in_process(&bundle, &args);
    assert_ne!(ids(&exact, "tokens"), ids(&reference, "tokens"), "these settings must tell apart");
    let body = completion(32, json!({"temperature": 0.8, "seed": 11}));
    let (status, answer) = post(&format!("http://{}", a.addr), "/v1/completions", &body);
    assert_eq!(status, 200, "{answer}");
    // The agent told the cloud which positions it answered, exactly as the in-process loop does.
    assert_eq!(tokens(&answer), ids(&reference, "tokens"));
    let sources = answer["collm"]["sources"].as_array().expect("sources");
    assert!(sources.iter().any(|s| s == "edge") && sources.iter().any(|s| s == "cloud"));
}

#[test]
fn standalone_needs_no_cloud_and_the_cloud_baseline_runs_the_full_model_remotely() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bundle = tiny_bundle(dir.path());
    let a = agent(&bundle, &[], &["--mode", "standalone"]);
    let base = format!("http://{}", a.addr);
    let reference = in_process(&bundle, &["--mode", "standalone", "--max-tokens", "20"]);
    let (status, answer) = post(&base, "/v1/completions", &completion(20, json!({})));
    assert_eq!(status, 200, "{answer}");
    assert_eq!(tokens(&answer), ids(&reference, "tokens"));
    assert_eq!(answer["collm"]["cloud_tokens"], 0);
    // A standalone agent cannot serve the cloud modes: it says so.
    let (status, err) =
        post(&base, "/v1/completions", &completion(4, json!({"mode": "collaborative"})));
    assert_eq!(status, 503, "{err}");
    assert_eq!(err["error"]["code"], "cloud_unavailable");
    drop(a);

    let w = worker(&bundle, dir.path(), &["--full"]);
    let a = agent(&bundle, &[&w.addr], &["--mode", "cloud"]);
    let full = in_process(&bundle, &["--mode", "full", "--max-tokens", "20", "--encoding", "f32"]);
    let (status, answer) =
        post(&format!("http://{}", a.addr), "/v1/completions", &completion(20, json!({})));
    assert_eq!(status, 200, "{answer}");
    assert_eq!(tokens(&answer), ids(&full, "tokens"));
    assert_eq!(answer["collm"]["mode"], "cloud");
    assert_eq!(answer["collm"]["uploaded_bytes"], 0);
}

#[test]
fn streamed_chat_follows_the_openai_format_and_matches_the_whole_answer() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bundle = tiny_bundle(dir.path());
    let w = worker(&bundle, dir.path(), &[]);
    let a = agent(&bundle, &[&w.addr], &["--threshold", "0.05"]);
    let base = format!("http://{}", a.addr);
    let body = json!({
        "model": "tiny",
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say something."}],
        "max_tokens": 40, "temperature": 0.7, "seed": 3,
    });
    let (status, whole) = post(&base, "/v1/chat/completions", &body);
    assert_eq!(status, 200, "{whole}");
    assert_eq!(whole["object"], "chat.completion");
    assert_eq!(whole["choices"][0]["message"]["role"], "assistant");
    let content = whole["choices"][0]["message"]["content"].as_str().expect("content").to_string();

    let mut streamed = json!(body);
    streamed["stream"] = json!(true);
    streamed["stream_options"] = json!({"include_usage": true});
    let mut text = String::new();
    let mut token_ids = vec![];
    let mut finish = None;
    let mut usage = None;
    let events = stream(&base, "/v1/chat/completions", &streamed, |i, ev| {
        assert_eq!(ev["object"], "chat.completion.chunk");
        if i == 0 {
            assert_eq!(ev["choices"][0]["delta"]["role"], "assistant");
        }
        if let Some(choice) = ev["choices"].get(0) {
            text.push_str(choice["delta"]["content"].as_str().unwrap_or(""));
            if !choice["finish_reason"].is_null() {
                finish = Some(choice["finish_reason"].clone());
            }
        } else {
            usage = Some(ev["usage"].clone());
        }
        token_ids.extend(
            ev["collm"]["tokens"].as_array().into_iter().flatten().map(|t| t.as_u64().expect("id")),
        );
    });
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    assert_eq!(text, content);
    assert_eq!(token_ids, tokens(&whole));
    assert_eq!(finish, Some(whole["choices"][0]["finish_reason"].clone()));
    let usage = usage.expect("a usage chunk when include_usage is set");
    assert_eq!(usage["completion_tokens"], whole["usage"]["completion_tokens"]);

    // A stop string ends the text before it.
    let (_, first) = post(&base, "/v1/completions", &completion(30, json!({})));
    let full_text = first["choices"][0]["text"].as_str().expect("text").to_string();
    if let Some(cut) = full_text.char_indices().nth(6).map(|(i, _)| i) {
        let stop = &full_text[cut..full_text.len().min(cut + 3)];
        if !stop.is_empty() && full_text.find(stop) == Some(cut) {
            let (_, stopped) =
                post(&base, "/v1/completions", &completion(30, json!({"stop": stop})));
            assert_eq!(stopped["choices"][0]["text"], json!(&full_text[..cut]));
            assert_eq!(stopped["choices"][0]["finish_reason"], "stop");
        }
    }
}

#[test]
fn models_health_and_metrics_are_served() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bundle = tiny_bundle(dir.path());
    let a = agent(&bundle, &[], &["--mode", "standalone"]);
    let base = format!("http://{}", a.addr);
    let (status, models) = get(&base, "/v1/models");
    assert_eq!(status, 200);
    let models: serde_json::Value = serde_json::from_str(&models).expect("json");
    assert_eq!(models["data"][0]["id"], "tiny");
    assert_eq!(get(&base, "/healthz").0, 200);
    assert_eq!(get(&base, "/readyz").0, 200);
    let (_, answer) = post(&base, "/v1/completions", &completion(5, json!({})));
    let n = answer["usage"]["completion_tokens"].as_u64().expect("count");
    let (status, metrics) = get(&base, "/metrics");
    assert_eq!(status, 200);
    let line = format!("collm_edge_tokens_total{{source=\"edge\"}} {n}");
    assert!(metrics.contains(&line), "{line} missing from {metrics}");
    assert!(metrics.contains("collm_edge_requests_total{"), "{metrics}");
}

#[test]
fn bad_requests_get_openai_errors_and_the_agent_keeps_serving() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bundle = tiny_bundle(dir.path());
    let a = agent(&bundle, &[], &["--mode", "standalone"]);
    let base = format!("http://{}", a.addr);
    let chat = "/v1/chat/completions";
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        (
            "malformed JSON",
            b"{\"model\": \"tiny\", \"messages\": [".to_vec(),
            400,
            "not valid JSON",
        ),
        ("not an object", b"[1, 2]".to_vec(), 400, "JSON object"),
        (
            "wrong type",
            br#"{"model":"tiny","messages":[{"role":"user","content":"hi"}],"max_tokens":"many"}"#
                .to_vec(),
            400,
            "max_tokens",
        ),
        (
            "unknown model",
            br#"{"model":"gpt-9","messages":[{"role":"user","content":"hi"}]}"#.to_vec(),
            404,
            "gpt-9",
        ),
        (
            "empty messages",
            br#"{"model":"tiny","messages":[]}"#.to_vec(),
            400,
            "at least one message",
        ),
        (
            "max_tokens beyond the context",
            br#"{"model":"tiny","messages":[{"role":"user","content":"hi"}],"max_tokens":100000}"#
                .to_vec(),
            400,
            "context",
        ),
        (
            "invalid UTF-8",
            b"{\"model\":\"tiny\",\"messages\":[{\"role\":\"user\",\"content\":\"\xc3\x28\"}]}"
                .to_vec(),
            400,
            "UTF-8",
        ),
        ("empty body", vec![], 400, "empty"),
        // An oversized body is answered 413 from its Content-Length, before it is read (the
        // client then sees a closed connection): openai_fields checks that, chunked bodies too.
    ];
    for (what, body, status, needle) in cases {
        let (got, err) = post_raw(&base, chat, &body);
        assert_eq!(got, status, "{what}: {err}");
        let message = err["error"]["message"]
            .as_str()
            .unwrap_or_else(|| panic!("{what}: no message in {err}"));
        assert!(message.contains(needle), "{what}: {message:?} lacks {needle:?}");
        assert!(err["error"]["type"].is_string(), "{what}: {err}");
    }
    let (status, err) =
        post(&base, "/v1/completions", &json!({"model": "tiny", "prompt": [1, 999999]}));
    assert_eq!(status, 400, "{err}");
    assert!(err["error"]["message"].as_str().expect("message").contains("vocabulary"));
    let (status, _) = post(&base, "/v1/nothing", &json!({}));
    assert_eq!(status, 404);
    let (status, answer) = post(&base, "/v1/completions", &completion(4, json!({})));
    assert_eq!(status, 200, "still serving after bad input: {answer}");
}
