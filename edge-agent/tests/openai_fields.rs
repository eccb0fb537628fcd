//! The OpenAI fields beyond plain generation, through a real edge agent and cloud worker on the
//! tiny model: `logit_bias` and the penalties mean the same whichever partition answers (the
//! cloud's answers equal the full model's under the same adjustment), log probabilities come
//! from the answering partition in OpenAI's shapes (stream and not), and every refusal — a
//! capability this server lacks, a missing API key, a wrong method, an unknown path, an
//! oversized body — has OpenAI's error body.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::{Value, json};

fn sources(answer: &Value) -> Vec<String> {
    answer["collm"]["sources"]
        .as_array()
        .expect("sources")
        .iter()
        .map(|s| s.as_str().expect("source").to_owned())
        .collect()
}

fn ok(base: &str, path: &str, body: &Value) -> Value {
    let (status, answer) = post(base, path, body);
    assert_eq!(status, 200, "{body} -> {answer}");
    answer
}

#[test]
fn logit_bias_and_penalties_mean_the_same_on_the_edge_and_in_the_cloud() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bundle = tiny_bundle(dir.path());
    // One worker serves both the cloud partition and the whole model (the `cloud` mode).
    let w = worker(&bundle, dir.path(), &["--full"]);
    // Never exiting, with lossless uploads: every token is the cloud's NextToken answer.
    let all_cloud = agent(&bundle, &[&w.addr], &["--encoding", "f32", "--threshold", "1.5"]);
    let base = format!("http://{}", all_cloud.addr);

    let plain = ok(&base, "/v1/completions", &completion(24, json!({})));
    let first = tokens(&plain)[0];
    let adjusted_body = |mode: &str| {
        completion(
            24,
            json!({
                "mode": mode,
                "logit_bias": {first.to_string(): -100},
                "frequency_penalty": 1.5,
                "presence_penalty": 0.5,
            }),
        )
    };
    let asked = ok(&base, "/v1/completions", &adjusted_body("collaborative"));
    let whole = ok(&base, "/v1/completions", &adjusted_body("cloud"));
    assert_ne!(tokens(&asked), tokens(&plain), "the adjustment changed nothing");
    assert!(!tokens(&asked).contains(&first), "a banned token was picked: {asked}");
    // NextToken with the edge's counts of generated tokens = the full model counting its own.
    assert_eq!(tokens(&asked), tokens(&whole), "the two cloud paths disagree");
    assert!(sources(&asked).iter().all(|s| s == "cloud"), "{asked}");
    drop(all_cloud);

    // Exiting often: exit heads answer too, under the same adjustment.
    let mixed = agent(&bundle, &[&w.addr], &["--encoding", "f32", "--threshold", "0.02"]);
    let base = format!("http://{}", mixed.addr);
    let mut body = adjusted_body("collaborative");
    body["temperature"] = json!(0.8);
    body["seed"] = json!(11);
    body["max_tokens"] = json!(32);
    let answer = ok(&base, "/v1/completions", &body);
    let by = sources(&answer);
    assert!(by.iter().any(|s| s == "edge") && by.iter().any(|s| s == "cloud"), "{by:?}");
    assert!(!tokens(&answer).contains(&first), "a banned token was picked: {answer}");

    // Standalone: a bias of +100 makes one token the only choice at every position.
    let forced = tokens(&plain)[1];
    let body =
        completion(6, json!({"mode": "standalone", "logit_bias": {forced.to_string(): 100}}));
    let answer = ok(&base, "/v1/completions", &body);
    assert_eq!(tokens(&answer), vec![forced; 6], "{answer}");
    // A penalty that forbids any repetition: every token differs.
    // (The tiny model soon says its end-of-turn token: banned here, so both answers run long.)
    let short = ok(&base, "/v1/completions", &completion(16, json!({"mode": "standalone"})));
    let end = *tokens(&short).last().expect("a token");
    let no_end = json!({end.to_string(): -100});
    let body = completion(16, json!({"mode": "standalone", "logit_bias": no_end}));
    let free = ok(&base, "/v1/completions", &body);
    let body =
        completion(16, json!({"mode": "standalone", "presence_penalty": 2, "logit_bias": no_end}));
    let strict = ok(&base, "/v1/completions", &body);
    let distinct = |a: &Value| {
        let mut t = tokens(a);
        t.sort_unstable();
        t.dedup();
        t.len()
    };
    assert_ne!(tokens(&strict), tokens(&free), "the penalty changed nothing");
    assert!(distinct(&strict) >= distinct(&free), "{strict} vs {free}");
    assert_eq!(distinct(&strict), 16, "a token came twice despite the penalty: {strict}");

    // A token outside the vocabulary is named in the error.
    let body = completion(4, json!({"logit_bias": {"999999": 1}}));
    let (status, err) = post(&base, "/v1/completions", &body);
    assert_eq!(status, 400, "{err}");
    assert_eq!(err["error"]["param"], "logit_bias");
    assert!(err["error"]["message"].as_str().expect("message").contains("vocabulary"), "{err}");
}

/// Two answers' logprob entries agree: the same tokens, bytes and alternatives in the same
/// order, each probability to 1e-5. Not to the last bit: the cloud runs the positions between
/// its answers in batches whose bounds depend on when the pipelined asks arrive, and a batched
/// pass rounds differently from one-position passes (seen: 2e-7 apart).
fn assert_same_logprobs(a: &[Value], b: &[Value]) {
    fn close(x: &Value, y: &Value) -> bool {
        let lp = |v: &Value| v["logprob"].as_f64().unwrap_or(f64::NAN);
        x["token"] == y["token"] && x["bytes"] == y["bytes"] && (lp(x) - lp(y)).abs() < 1e-5
    }
    assert_eq!(a.len(), b.len(), "{a:?} vs {b:?}");
    for (x, y) in a.iter().zip(b) {
        let (tx, ty) = (x["top_logprobs"].as_array(), y["top_logprobs"].as_array());
        let tops = match (tx, ty) {
            (Some(tx), Some(ty)) => {
                tx.len() == ty.len() && tx.iter().zip(ty).all(|(p, q)| close(p, q))
            }
            (tx, ty) => tx == ty,
        };
        assert!(close(x, y) && tops, "{x} vs {y}");
    }
}

#[test]
fn logprobs_come_from_the_answering_partition_in_openais_shapes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bundle = tiny_bundle(dir.path());
    let w = worker(&bundle, dir.path(), &["--full"]);
    let a = agent(&bundle, &[&w.addr], &["--encoding", "f32", "--threshold", "0.02"]);
    let base = format!("http://{}", a.addr);
    let body = json!({
        "model": "tiny", "messages": [{"role": "user", "content": "Say something."}],
        "max_tokens": 16, "temperature": 0, "logprobs": true, "top_logprobs": 3,
    });
    let whole = ok(&base, "/v1/chat/completions", &body);
    let content = whole["choices"][0]["logprobs"]["content"].as_array().expect("content").clone();
    assert_eq!(content.len() as u64, whole["usage"]["completion_tokens"].as_u64().expect("n"));
    let by = sources(&whole);
    assert!(by.iter().any(|s| s == "edge") && by.iter().any(|s| s == "cloud"), "{by:?}");
    for (entry, source) in content.iter().zip(&by) {
        let logprob = entry["logprob"].as_f64().expect("logprob");
        assert!(logprob <= 0.0, "{entry}");
        assert!(entry["token"].is_string() && entry["bytes"].is_array(), "{entry}");
        let top = entry["top_logprobs"].as_array().expect("top_logprobs");
        assert_eq!(top.len(), 3, "{source}: {entry}");
        let tops: Vec<f64> = top.iter().map(|t| t["logprob"].as_f64().expect("lp")).collect();
        assert!(tops.windows(2).all(|w| w[0] >= w[1]), "most likely first: {entry}");
        // Greedy: the token is its partition's most likely one.
        assert_eq!(top[0]["token"], entry["token"], "{source}: {entry}");
        assert!((tops[0] - logprob).abs() < 1e-6, "{source}: {entry}");
    }

    // Streamed: the chunks' entries, in order, are the whole answer's.
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let mut entries = vec![];
    stream(&base, "/v1/chat/completions", &streamed, |_, ev| {
        if let Some(c) = ev["choices"][0]["logprobs"]["content"].as_array() {
            entries.extend(c.iter().cloned());
        }
    });
    assert_same_logprobs(&entries, &content);

    // A cloud answer's probabilities are the full model's: all-cloud collaboration reports what
    // the cloud-only baseline does.
    let never = agent(&bundle, &[&w.addr], &["--encoding", "f32", "--threshold", "1.5"]);
    let never_base = format!("http://{}", never.addr);
    let legacy = |mode: &str| {
        let body = completion(10, json!({"mode": mode, "logprobs": 2}));
        ok(&never_base, "/v1/completions", &body)
    };
    let (asked, baseline) = (legacy("collaborative"), legacy("cloud"));
    assert_eq!(tokens(&asked), tokens(&baseline));
    let lp = |a: &Value| a["choices"][0]["logprobs"].clone();
    let (x, y) = (lp(&asked), lp(&baseline));
    assert_eq!(x["tokens"], y["tokens"]);
    assert_eq!(x["top_logprobs"].as_array().map(Vec::len), Some(10));
    for (p, q) in x["token_logprobs"]
        .as_array()
        .expect("lps")
        .iter()
        .zip(y["token_logprobs"].as_array().expect("lps"))
    {
        let (p, q) = (p.as_f64().expect("p"), q.as_f64().expect("q"));
        assert!((p - q).abs() < 1e-4, "{x} vs {y}");
    }
    let offsets = x["text_offset"].as_array().expect("offsets");
    assert_eq!(offsets[0], 0);
    assert!(offsets.windows(2).all(|w| w[0].as_u64() <= w[1].as_u64()), "{x}");

    // Speculation's verdicts carry no distribution: refused, not made up.
    let body = completion(4, json!({"mode": "speculative", "logprobs": 1}));
    let (status, err) = post(&never_base, "/v1/completions", &body);
    assert_eq!(status, 400, "{err}");
    assert_eq!(err["error"]["param"], "logprobs", "{err}");
    // So are logit adjustments; the error names the field the request set.
    for (field, value) in [
        ("logit_bias", json!({"5": 1.0})),
        ("presence_penalty", json!(0.5)),
        ("frequency_penalty", json!(0.5)),
    ] {
        let body = completion(4, json!({"mode": "speculative", field: value}));
        let (status, err) = post(&never_base, "/v1/completions", &body);
        assert_eq!(status, 400, "{err}");
        assert_eq!(err["error"]["param"], field, "{err}");
    }
}

fn request(
    method: &str,
    url: &str,
    key: Option<&str>,
    body: Option<&Value>,
) -> (u16, Value, String) {
    let agent: ureq::Agent =
        ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let mut resp = match (method, body) {
        ("GET", _) => {
            let r = agent.get(url);
            match key {
                Some(k) => r.header("authorization", &format!("Bearer {k}")).call(),
                None => r.call(),
            }
        }
        (_, body) => {
            let r = match method {
                "POST" => agent.post(url),
                "PUT" => agent.put(url),
                other => panic!("no {other} here"),
            };
            let r = match key {
                Some(k) => r.header("authorization", &format!("Bearer {k}")),
                None => r,
            };
            r.header("content-type", "application/json")
                .send(body.map(Value::to_string).unwrap_or_default().as_bytes())
        }
    }
    .expect("the agent answers");
    let status = resp.status().as_u16();
    let allow = resp.headers().get("allow").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    let text = resp.body_mut().read_to_string().expect("body");
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)), allow)
}

/// OpenAI's error body, with the status's code.
fn assert_openai_error(what: &str, got: (u16, Value, String), status: u16, code: &str) -> Value {
    assert_eq!(got.0, status, "{what}: {}", got.1);
    let e = &got.1["error"];
    assert!(e["message"].is_string(), "{what}: {}", got.1);
    assert!(e["type"].is_string(), "{what}: {}", got.1);
    assert!(e.get("param").is_some(), "{what}: {}", got.1);
    assert_eq!(e["code"], code, "{what}: {}", got.1);
    got.1
}

/// Sends `head` and `chunk` over a raw connection and reads what comes back.
fn raw_exchange(addr: &str, head: &str, chunk: &[u8]) -> String {
    let mut conn = TcpStream::connect(addr).expect("connects");
    conn.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
    conn.write_all(head.as_bytes()).expect("head");
    // The server may answer (and close) before the body is through: that is the point.
    let _ = conn.write_all(chunk);
    let mut reply = vec![0; 4096];
    let n = conn.read(&mut reply).expect("a reply before the body is complete");
    String::from_utf8_lossy(&reply[..n]).into_owned()
}

#[test]
fn refusals_have_openais_error_shape_and_the_api_key_guards_v1() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bundle = tiny_bundle(dir.path());
    // The key through the environment, as the operator passes it from a Secret.
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_edge-agent"));
    cmd.args(["--bundle", path_str(&bundle), "--listen", "127.0.0.1:0", "--model", "tiny"])
        .args(["--mode", "standalone"])
        .env("COLLM_API_KEY", "s3cret");
    let a = spawn_until(&mut cmd, "edge-agent listening on http://");
    let base = format!("http://{}", a.addr);
    let chat = format!("{base}/v1/chat/completions");
    let hello =
        json!({"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2});

    // The key.
    assert_openai_error(
        "no key",
        request("POST", &chat, None, Some(&hello)),
        401,
        "invalid_api_key",
    );
    let wrong = request("POST", &chat, Some("s3cret!"), Some(&hello));
    assert_openai_error("wrong key", wrong, 401, "invalid_api_key");
    let models = request("GET", &format!("{base}/v1/models"), None, None);
    assert_openai_error("models without key", models, 401, "invalid_api_key");
    assert_eq!(request("POST", &chat, Some("s3cret"), Some(&hello)).0, 200);
    assert_eq!(get(&base, "/healthz").0, 200, "probes carry no key");
    assert_eq!(get(&base, "/metrics").0, 200, "scrapers carry no key");

    // Capabilities this server lacks.
    let key = Some("s3cret");
    let with = |extra: Value| {
        let mut b = hello.clone();
        for (k, v) in extra.as_object().expect("object") {
            b[k] = v.clone();
        }
        b
    };
    let tool = json!([{"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}}]);
    for (what, extra, param) in [
        ("tools", json!({"tools": tool}), "tools"),
        ("tools, auto", json!({"tools": tool, "tool_choice": "auto"}), "tools"),
        (
            "a named tool",
            json!({"tool_choice": {"type": "function", "function": {"name": "add"}}}),
            "tool_choice",
        ),
        ("JSON mode", json!({"response_format": {"type": "json_object"}}), "response_format"),
        (
            "a JSON schema",
            json!({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}),
            "response_format",
        ),
        ("two choices", json!({"n": 2}), "n"),
        ("audio", json!({"modalities": ["text", "audio"]}), "modalities"),
    ] {
        let got = request("POST", &chat, key, Some(&with(extra)));
        let body = assert_openai_error(what, got, 400, "unsupported_parameter");
        assert_eq!(body["error"]["type"], "invalid_request_error", "{what}");
        assert_eq!(body["error"]["param"], param, "{what}: {body}");
    }
    // Tools the request forbids using change nothing: answered.
    let got =
        request("POST", &chat, key, Some(&with(json!({"tools": tool, "tool_choice": "none"}))));
    assert_eq!(got.0, 200, "{}", got.1);

    // Methods and paths.
    let got = request("GET", &chat, key, None);
    assert_eq!(got.2, "POST", "Allow names the method");
    assert_openai_error("GET chat", got, 405, "method_not_allowed");
    let got = request("POST", &format!("{base}/v1/models"), key, Some(&json!({})));
    assert_eq!(got.2, "GET");
    assert_openai_error("POST models", got, 405, "method_not_allowed");
    let got = request("POST", &format!("{base}/v1/embeddings"), key, Some(&json!({})));
    assert_openai_error("unknown path", got, 404, "unknown_url");

    // A declared length beyond the limit is refused before the body is sent.
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer s3cret\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        1u64 << 30
    );
    let reply = raw_exchange(&a.addr, &head, b"{\"model\":");
    assert!(reply.starts_with("HTTP/1.1 413"), "{reply}");
    assert!(reply.contains("request_too_large"), "{reply}");
    // A chunked body (no length declared) is cut off once it passes the limit.
    let head = "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer s3cret\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n";
    let mut chunks = Vec::new();
    for _ in 0..5 {
        chunks.extend_from_slice(format!("{:x}\r\n", 1 << 20).as_bytes());
        chunks.extend(std::iter::repeat_n(b' ', 1 << 20));
        chunks.extend_from_slice(b"\r\n");
    }
    let reply = raw_exchange(&a.addr, head, &chunks);
    assert!(reply.starts_with("HTTP/1.1 413"), "{reply}");
    // And the agent keeps serving.
    assert_eq!(request("POST", &chat, key, Some(&hello)).0, 200);
}
