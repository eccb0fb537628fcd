//! The split model end to end on a tiny seeded random checkpoint: export from every supported
//! source format, then the invariants a user relies on.

mod common;

use collm_gguf::GgmlType;
use common::*;

const PROMPT: &str = "<|im_start|>user\nhello there, tiny model<|im_end|>\n<|im_start|>assistant\n";

#[test]
fn never_exiting_collaboration_reproduces_the_full_model_for_every_weight_type() {
    let dir = tempfile::tempdir().expect("tempdir");
    for ty in [GgmlType::F32, GgmlType::F16, GgmlType::Q8_0, GgmlType::Q4_0, GgmlType::Q4_1] {
        let gguf = tiny_gguf(dir.path(), ty, 7);
        let bundle = dir.path().join(format!("bundle-{ty:?}"));
        export(&gguf, &bundle, &["--split-layer", "2", "--exit-layers", "1,2"]);
        let full = generate(&bundle, PROMPT, &["--mode", "full", "--max-tokens", "24"]);
        let collab = generate(
            &bundle,
            PROMPT,
            &[
                "--mode",
                "collaborative",
                "--threshold",
                "1.5",
                "--encoding",
                "f32",
                "--max-tokens",
                "24",
            ],
        );
        assert!(!tokens(&full).is_empty(), "{ty:?}: no tokens generated");
        assert_eq!(tokens(&full), tokens(&collab), "{ty:?}: split changed the answer");
        assert_eq!(collab["edge_share"], 0.0, "{ty:?}: θ > 1 must never exit");
    }
}

#[test]
fn gguf_and_hugging_face_sources_give_the_same_answer() {
    let dir = tempfile::tempdir().expect("tempdir");
    let gguf = dir.path().join("tiny.gguf");
    let hf = dir.path().join("tiny-hf");
    let out = collm(&["tiny", "--out", path_str(&gguf), "--hf-out", path_str(&hf), "--seed", "3"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let from_gguf = dir.path().join("b-gguf");
    let from_hf = dir.path().join("b-hf");
    export(&gguf, &from_gguf, &["--split-layer", "2"]);
    let res = collm(&[
        "export",
        "--hf",
        path_str(&hf),
        "--split-layer",
        "2",
        "--out",
        path_str(&from_hf),
    ]);
    assert!(res.status.success(), "{}", String::from_utf8_lossy(&res.stderr));
    let a = generate(&from_gguf, PROMPT, &["--mode", "full", "--max-tokens", "20"]);
    let b = generate(&from_hf, PROMPT, &["--mode", "full", "--max-tokens", "20"]);
    assert_eq!(a["prompt_ids"], b["prompt_ids"]);
    assert_eq!(tokens(&a), tokens(&b));
}

#[test]
fn modes_route_tokens_and_uploads_as_documented() {
    let dir = tempfile::tempdir().expect("tempdir");
    let gguf = tiny_gguf(dir.path(), GgmlType::F32, 11);
    let bundle = dir.path().join("bundle");
    export(&gguf, &bundle, &["--split-layer", "2"]);
    let standalone = generate(&bundle, PROMPT, &["--mode", "standalone", "--max-tokens", "16"]);
    assert!(standalone["origins"].as_array().expect("origins").iter().all(|o| o == "edge"));
    assert_eq!(standalone["upload_bytes"], 0, "standalone never talks to the cloud");

    let always_edge = generate(&bundle, PROMPT, &["--threshold", "0.000001", "--max-tokens", "16"]);
    assert_eq!(always_edge["edge_share"], 1.0);
    assert_eq!(tokens(&always_edge), tokens(&standalone), "exiting everywhere is standalone");
    assert!(always_edge["upload_bytes"].as_u64().expect("bytes") > 0, "uploads still stream");

    let hidden = 64u64;
    let prompt_len = always_edge["prompt_ids"].as_array().expect("ids").len() as u64;
    let n = tokens(&always_edge).len() as u64;
    let positions = prompt_len + n - 1;
    for (enc, row_bytes) in [("f32", 4 * hidden), ("f16", 2 * hidden), ("int8", 4 + hidden)] {
        let v = generate(
            &bundle,
            PROMPT,
            &["--threshold", "0.000001", "--max-tokens", "16", "--encoding", enc],
        );
        assert_eq!(v["upload_bytes"].as_u64(), Some(positions * row_bytes), "{enc} payload size");
    }
}

#[test]
fn sampling_is_reproducible_for_a_seed_and_varies_across_seeds() {
    let dir = tempfile::tempdir().expect("tempdir");
    let gguf = tiny_gguf(dir.path(), GgmlType::F32, 5);
    let bundle = dir.path().join("bundle");
    export(&gguf, &bundle, &["--split-layer", "2"]);
    let args = |seed: &'static str| {
        [
            "--mode",
            "full",
            "--temperature",
            "1.0",
            "--top-p",
            "0.95",
            "--max-tokens",
            "24",
            "--seed",
            seed,
        ]
    };
    let a = generate(&bundle, PROMPT, &args("1"));
    let b = generate(&bundle, PROMPT, &args("1"));
    let c = generate(&bundle, PROMPT, &args("2"));
    assert_eq!(tokens(&a), tokens(&b));
    assert_ne!(tokens(&a), tokens(&c), "a random tiny model should sample differently per seed");
}

/// Block-quantized weights run as stored (MatMulNBits, Q4_1 through the exact offset split)
/// compute what the same weights dequantized to f32 compute.
#[test]
fn native_block_weights_compute_exactly_what_their_dequantized_values_compute() {
    let dir = tempfile::tempdir().expect("tempdir");
    for ty in [GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q8_0] {
        let gguf = tiny_gguf(dir.path(), ty, 21);
        let native = dir.path().join(format!("native-{ty:?}"));
        let dense = dir.path().join(format!("dense-{ty:?}"));
        export(&gguf, &native, &["--split-layer", "2", "--accuracy-level", "0"]);
        export(&gguf, &dense, &["--split-layer", "2", "--weights", "f32"]);
        let args = |b: &std::path::Path| {
            collm_json(&[
                "score",
                "--bundle",
                path_str(b),
                "--prompt",
                PROMPT,
                "--continuation",
                "40,41,42,43,44,45",
            ])
        };
        let (a, b) = (args(&native), args(&dense));
        for (p, q) in a["positions"]
            .as_array()
            .expect("positions")
            .iter()
            .zip(b["positions"].as_array().expect("positions"))
        {
            assert_eq!(p["full"]["id"], q["full"]["id"], "{ty:?}");
            let (x, y) = (
                p["full"]["prob"].as_f64().expect("prob"),
                q["full"]["prob"].as_f64().expect("prob"),
            );
            assert!((x - y).abs() < 1e-4, "{ty:?}: {x} vs {y}");
        }
    }
}
