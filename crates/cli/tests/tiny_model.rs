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

/// Qwen2's Q/K/V biases reach the graph: the GGUF and Hugging Face forms of a tiny Qwen2 agree,
/// and the same model without its biases answers differently.
#[test]
fn qwen2_biases_are_applied_from_both_sources() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = collm_checkpoint::tiny::TinySpec { qkv_bias: true, ..Default::default() };
    let gguf = tiny_gguf_with(dir.path(), &spec, GgmlType::F32, 9);
    let hf = dir.path().join("qwen2-hf");
    collm_checkpoint::tiny::write_hf(&hf, &spec, 9).expect("tiny HF directory");
    let llama = tiny_gguf(dir.path(), GgmlType::F32, 9);
    let bundles = [("gguf", &gguf, "--gguf"), ("hf", &hf, "--hf"), ("llama", &llama, "--gguf")];
    let mut answers = Vec::new();
    for (name, src, flag) in bundles {
        let out = dir.path().join(format!("b-{name}"));
        let res =
            collm(&["export", flag, path_str(src), "--split-layer", "2", "--out", path_str(&out)]);
        assert!(res.status.success(), "{}", String::from_utf8_lossy(&res.stderr));
        let v = score(&out, PROMPT, "40,41,42,43,44,45");
        let probs: Vec<f64> = v["positions"]
            .as_array()
            .expect("positions")
            .iter()
            .map(|p| p["full"]["prob"].as_f64().expect("prob"))
            .collect();
        answers.push(probs);
    }
    for (a, b) in answers[0].iter().zip(&answers[1]) {
        assert!((a - b).abs() < 1e-4, "GGUF {a} vs HF {b}");
    }
    assert_ne!(answers[0], answers[2], "the biases must change what the model computes");
}

#[test]
fn export_states_how_each_source_type_is_stored() {
    let dir = tempfile::tempdir().expect("tempdir");
    let gguf = tiny_gguf(dir.path(), GgmlType::Q4_K, 4);
    let out = dir.path().join("bundle");
    let res = collm(&[
        "export",
        "--gguf",
        path_str(&gguf),
        "--split-layer",
        "2",
        "--out",
        path_str(&out),
    ]);
    assert!(res.status.success(), "{}", String::from_utf8_lossy(&res.stderr));
    let stdout = String::from_utf8_lossy(&res.stdout);
    // Rows of 64 and 128 are not whole super-blocks: llama.cpp's fallback for Q4_K is Q5_0.
    assert!(
        stdout.contains("Q5_0     28 matrices")
            && stdout.contains("MatMulNBits 8-bit, blocks of 32 (exact)"),
        "{stdout}"
    );
    let m = manifest(&out);
    let rows = m["weight_mappings"].as_array().expect("weight mappings");
    let q5 = rows.iter().find(|r| r["source_type"] == "Q5_0").expect("a Q5_0 row");
    assert_eq!(q5["conversion"], "exact");
    // 32 values: 22 bytes in Q5_0, 32 codes + one f32 scale stored.
    let (src, dst) =
        (q5["source_bytes"].as_f64().expect("bytes"), q5["bundle_bytes"].as_f64().expect("bytes"));
    assert!((dst / src - 36.0 / 22.0).abs() < 1e-9, "{src} → {dst}");
    // The Q8_0 embedding table keeps its codes: only the rows looked up are dequantized.
    let embd = rows
        .iter()
        .find(|r| r["stored_as"].as_str().is_some_and(|s| s.contains("(token embedding")))
        .expect("embedding");
    assert_eq!(embd["source_type"], "Q8_0");
    assert!(
        embd["stored_as"].as_str().is_some_and(|s| s.starts_with("GatherBlockQuantized 8-bit")),
        "{embd}"
    );

    // Other weight formats: what changed is said so.
    let mappings = |src: &std::path::Path, weights: &str| {
        let out = dir.path().join(format!("bundle-{weights}"));
        export(src, &out, &["--split-layer", "2", "--weights", weights]);
        manifest(&out)["weight_mappings"].as_array().expect("weight mappings").clone()
    };
    let q8 = mappings(&gguf, "q8");
    assert!(q8.iter().all(|r| r["conversion"] == "exact"), "8-bit blocks stay under q8: {q8:?}");
    let f32 = mappings(&gguf, "f32");
    let q5 = f32.iter().find(|r| r["source_type"] == "Q5_0").expect("a Q5_0 row");
    assert_eq!(
        (q5["stored_as"].as_str(), q5["conversion"].as_str()),
        (Some("float32 MatMul"), Some("exact, dequantized"))
    );
    let bf16 = mappings(&tiny_gguf(dir.path(), GgmlType::BF16, 4), "q4");
    let layers = bf16.iter().find(|r| r["matrices"] == 28).expect("the layer matrices");
    assert_eq!(
        (
            layers["source_type"].as_str(),
            layers["stored_as"].as_str(),
            layers["conversion"].as_str()
        ),
        (
            Some("BF16"),
            Some("MatMulNBits 4-bit, blocks of 32"),
            Some("re-quantized, round to nearest")
        )
    );
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

    // Without the repetition guard (which sends a token extending a loop to the cloud, however
    // confident the head), a threshold near 0 exits everywhere.
    let always_edge = generate(
        &bundle,
        PROMPT,
        &["--threshold", "0.000001", "--repetition-guard", "off", "--max-tokens", "16"],
    );
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

/// Block-quantized weights run as stored (MatMulNBits; types with per-block minimums through
/// the exact offset split, 5- and 6-bit codes widened to 8 bits) compute what the same weights
/// dequantized to f32 compute. The K-quant model has rows of 256 and 512 (whole super-blocks);
/// the default tiny model's rows of 64 make llama.cpp's fallbacks (Q5_0, Q5_1, IQ4_NL).
#[test]
fn native_block_weights_compute_exactly_what_their_dequantized_values_compute() {
    let dir = tempfile::tempdir().expect("tempdir");
    let k_spec = collm_checkpoint::tiny::TinySpec {
        hidden_size: 256,
        intermediate_size: 512,
        num_heads: 4,
        num_kv_heads: 2,
        head_dim: 64,
        ..Default::default()
    };
    let cases = [
        (GgmlType::Q4_0, false),
        (GgmlType::Q4_1, false),
        (GgmlType::Q8_0, false),
        (GgmlType::Q4_K, false),
        (GgmlType::Q5_K, false),
        (GgmlType::IQ4_NL, false),
        (GgmlType::Q4_K, true),
        (GgmlType::Q5_K, true),
        (GgmlType::Q6_K, true),
    ];
    for (ty, big) in cases {
        let gguf = if big {
            tiny_gguf_with(dir.path(), &k_spec, ty, 21)
        } else {
            tiny_gguf(dir.path(), ty, 21)
        };
        let ty = format!("{ty:?}{}", if big { "-256" } else { "" });
        let native = dir.path().join(format!("native-{ty}"));
        let dense = dir.path().join(format!("dense-{ty}"));
        export(&gguf, &native, &["--split-layer", "2", "--accuracy-level", "0"]);
        export(&gguf, &dense, &["--split-layer", "2", "--weights", "f32"]);
        let args = |b: &std::path::Path| score(b, PROMPT, "40,41,42,43,44,45");
        let (a, b) = (args(&native), args(&dense));
        for (p, q) in a["positions"]
            .as_array()
            .expect("positions")
            .iter()
            .zip(b["positions"].as_array().expect("positions"))
        {
            assert_eq!(p["full"]["id"], q["full"]["id"], "{ty}");
            let (x, y) = (
                p["full"]["prob"].as_f64().expect("prob"),
                q["full"]["prob"].as_f64().expect("prob"),
            );
            assert!((x - y).abs() < 1e-4, "{ty}: {x} vs {y}");
        }
    }
}

/// `collm generate --mode speculative` in process: the full model's tokens, greedy and seeded,
/// however the in-process cloud runs a draft's positions; drafts were checked, and the tiny
/// model's exit head was wrong sometimes (rollbacks).
#[test]
fn speculative_generation_in_process_gives_the_full_models_tokens() {
    let dir = tempfile::tempdir().expect("tempdir");
    let gguf = tiny_gguf(dir.path(), GgmlType::F32, 11);
    let bundle = dir.path().join("bundle");
    export(&gguf, &bundle, &["--split-layer", "2"]);
    let greedy = ["--max-tokens", "40", "--encoding", "f32"];
    let seeded =
        [&greedy[..], &["--temperature", "0.9", "--top-p", "0.95", "--seed", "3"]].concat();
    for sampling in [&greedy[..], &seeded[..]] {
        let full = generate(&bundle, PROMPT, &[&["--mode", "full"], sampling].concat());
        let (mut drafted, mut rollbacks) = (0, 0);
        for verify in ["checked", "batched", "singly"] {
            let args = [&["--mode", "speculative", "--verify", verify], sampling].concat();
            let speculated = generate(&bundle, PROMPT, &args);
            assert_eq!(tokens(&speculated), tokens(&full), "{verify} {sampling:?}");
            drafted += speculated["drafted"].as_u64().expect("drafted");
            rollbacks += speculated["rollbacks"].as_u64().expect("rollbacks");
        }
        assert!(drafted > 0 && rollbacks > 0, "drafted {drafted}, rollbacks {rollbacks}");
    }
}

/// Format 2 keeps each partition's weights in a data file next to its graph; a bundle written
/// by format 1 (every weight inside its graph) still loads and scores byte for byte the same.
#[test]
fn weights_live_next_to_each_graph_and_format_1_bundles_still_load() {
    let dir = tempfile::tempdir().expect("tempdir");
    let gguf = tiny_gguf(dir.path(), GgmlType::Q8_0, 3);
    let bundle = dir.path().join("v2");
    export(&gguf, &bundle, &["--split-layer", "2"]);
    let m = manifest(&bundle);
    assert_eq!(m["format_version"], 2);
    for part in ["edge", "cloud"] {
        let graph = format!("{part}.onnx");
        let data = format!("{graph}.data");
        assert_eq!(m[part]["data_file"], data.as_str(), "{}", m[part]);
        assert!(m["files"][&data].is_string(), "the data file's checksum is recorded");
        let size = |f: &str| std::fs::metadata(bundle.join(f)).expect("exists").len();
        assert!(size(&graph) * 4 < size(&data), "{graph}: the weights are in {data}");
    }
    let scores = |b: &std::path::Path| score(b, PROMPT, "5,17,42,9,3,77");
    let v2 = scores(&bundle);

    let old = dir.path().join("v1");
    std::fs::create_dir(&old).expect("mkdir");
    let mut man = collm_bundle::read_manifest(&bundle).expect("manifest");
    man.format_version = 1;
    std::fs::copy(bundle.join("tokenizer.json"), old.join("tokenizer.json")).expect("copy");
    let mut parts = vec![&mut man.edge, &mut man.cloud];
    parts.extend(man.cloud_kv.as_mut());
    let mut graphs = Vec::new();
    for p in parts {
        let whole = collm_bundle::read_partition(&bundle, &p.file).expect("reads");
        std::fs::write(old.join(&p.file), collm_bundle::onnx::encode(&whole)).expect("write");
        p.data_file = None;
        graphs.push(p.file.clone());
    }
    man.files.retain(|f, _| !f.ends_with(".data"));
    for f in graphs {
        let sha = collm_bundle::sha256_file(&old.join(&f)).expect("hash");
        man.files.insert(f, sha);
    }
    collm_bundle::write_manifest(&old, &man).expect("manifest");
    assert_eq!(scores(&old), v2, "format 1 and format 2 bundles answer the same");

    // A reader refuses formats it does not know, naming the ones it reads.
    man.format_version = 3;
    collm_bundle::write_manifest(&old, &man).expect("manifest");
    let out =
        collm(&["score", "--bundle", path_str(&old), "--prompt", "hi", "--continuation", "5"]);
    assert_clean_failure(&out, "this build reads versions 1 to 2");
}
