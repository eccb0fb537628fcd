//! A real OpenAI client library (the `openai` Python package, pinned in `tools/openai-venv`)
//! works against the edge agent unchanged: listing models, chat (whole and streamed, with
//! usage), legacy completions, the `mode` extension through `extra_body`, and errors raised as
//! the library's own exception types.

mod common;

use std::process::Command;

use common::*;

#[test]
fn the_openai_python_client_works_unchanged() {
    let venv = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../tools/openai-venv"))
        .output()
        .expect("tools/openai-venv runs");
    assert!(venv.status.success(), "openai venv: {}", String::from_utf8_lossy(&venv.stderr));
    let python = String::from_utf8(venv.stdout).expect("utf-8").trim().to_string();

    let dir = tempfile::tempdir().expect("tempdir");
    let bundle = tiny_bundle(dir.path());
    let w = worker(&bundle, dir.path(), &[]);
    let a = agent(&bundle, &[&w.addr], &["--threshold", "0.02"]);
    let out = Command::new(&python)
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/openai_client.py"))
        .args([&format!("http://{}", a.addr), "tiny"])
        .output()
        .expect("python runs");
    assert!(
        out.status.success(),
        "the openai client failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON line");
    assert_eq!(report["ok"], true);
}
