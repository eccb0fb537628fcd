//! Calibration on the tiny model: translators land in the bundle, the bundle stays valid, and
//! the recorded thresholds drive generation by target agreement.

mod common;

use collm_gguf::GgmlType;
use common::*;

#[test]
fn calibration_stores_translators_and_a_tradeoff_table_per_exit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let gguf = tiny_gguf(dir.path(), GgmlType::F32, 9);
    let bundle = dir.path().join("bundle");
    export(&gguf, &bundle, &["--split-layer", "3", "--exit-layers", "1,3"]);
    let before = manifest(&bundle);
    let out = collm(&[
        "generate",
        "--bundle",
        path_str(&bundle),
        "--prompt",
        "hi",
        "--target-agreement",
        "0.9",
    ]);
    assert_clean_failure(&out, "not calibrated");

    calibrate_small(&bundle, 12, 8);
    let after = manifest(&bundle);
    assert_ne!(
        before["files"]["edge.onnx"], after["files"]["edge.onnx"],
        "translators were written"
    );
    assert_eq!(
        before["files"]["cloud.onnx"], after["files"]["cloud.onnx"],
        "the cloud is untouched"
    );
    for exit in after["exits"].as_array().expect("exits") {
        let cal = &exit["calibration"];
        assert_eq!(cal["method"], "kl");
        assert_eq!(cal["tradeoff"].as_array().expect("tradeoff").len(), 6);
        assert!(cal["train_positions"].as_u64().expect("positions") > 0);
        for row in cal["tradeoff"].as_array().expect("rows") {
            let share = row["exit_share"].as_f64().expect("share");
            assert!((0.0..=1.0).contains(&share));
        }
    }
    assert!(bundle.join("calibration.md").exists());
    // The bundle verifies (new hash recorded) and generates by target agreement.
    let v = generate(
        &bundle,
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
        &["--target-agreement", "0.9", "--max-tokens", "8"],
    );
    assert!(!tokens(&v).is_empty());
}

#[test]
fn calibration_chooses_a_default_operating_point_on_free_running_answers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let gguf = tiny_gguf(dir.path(), GgmlType::F32, 5);
    let bundle = dir.path().join("bundle");
    export(&gguf, &bundle, &["--split-layer", "3", "--exit-layers", "3"]);
    calibrate_small(&bundle, 12, 8);
    let point = &manifest(&bundle)["operating_point"];
    let candidates = point["candidates"].as_array().expect("candidates");
    assert!(!candidates.is_empty(), "{point}");
    assert_eq!(candidates[0]["target_agreement"].as_f64(), Some(0.98), "{point}");
    let chosen = point["target_agreement"].as_f64().expect("target");
    assert!(candidates.iter().any(|c| c["target_agreement"].as_f64() == Some(chosen)), "{point}");
    assert_eq!(point["repetition_guard"], true);
    // calibrate_small asks for 4 ShareGPT prompts and 2 ChatterBot questions.
    assert_eq!(point["prompts"], 6);
    let report = std::fs::read_to_string(bundle.join("calibration.md")).expect("report");
    assert!(report.contains("Default operating point (free-running)"), "{report}");
}

/// Bytes of the edge partition: its graph and its weights' data file.
fn edge_bytes(bundle: &std::path::Path) -> u64 {
    ["edge.onnx", "edge.onnx.data"]
        .iter()
        .filter_map(|f| std::fs::metadata(bundle.join(f)).ok())
        .map(|m| m.len())
        .sum()
}

/// The shortlist ids stored in the edge graph of a calibrated bundle.
fn shortlist_ids(bundle: &std::path::Path, layer: usize) -> Vec<u32> {
    let edge = collm_bundle::onnx::decode(&std::fs::read(bundle.join("edge.onnx")).expect("edge"))
        .expect("decodes");
    let name = format!("exit.{layer}.shortlist/ids");
    let t = edge
        .graph
        .as_ref()
        .and_then(|g| g.initializer.iter().find(|t| t.name == name))
        .unwrap_or_else(|| panic!("no initializer {name}"));
    t.raw_data
        .chunks_exact(8)
        .map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes")) as u32)
        .collect()
}

fn score_ids(bundle: &std::path::Path, continuation: &[u32]) -> serde_json::Value {
    let ids: Vec<String> = continuation.iter().map(u32::to_string).collect();
    score(bundle, "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n", &ids.join(","))
}

/// Every form an LM head is exported in: dense, 8-bit blocks (SmolLM2's tied head), 4-bit
/// blocks with the Q4_1 offset correction.
#[test]
fn a_shortlist_head_answers_only_its_tokens_and_agrees_with_the_full_head_on_them() {
    for ty in [GgmlType::F32, GgmlType::Q8_0, GgmlType::Q4_1] {
        check_shortlist_head(ty);
    }
}

fn check_shortlist_head(ty: GgmlType) {
    let dir = tempfile::tempdir().expect("tempdir");
    let gguf = tiny_gguf(dir.path(), ty, 3);
    let full = dir.path().join("full");
    export(&gguf, &full, &["--split-layer", "3", "--exit-layers", "3"]);
    let short = dir.path().join("short");
    export(&gguf, &short, &["--split-layer", "3", "--exit-layers", "3"]);
    calibrate_small(&full, 12, 8);
    calibrate_small_with(&short, 12, 8, &["--shortlist", "64"]);
    let cal = &manifest(&short)["exits"][0]["calibration"];
    assert_eq!(cal["shortlist"]["size"], 64, "{cal}");
    let ids = shortlist_ids(&short, 3);
    assert_eq!(ids.len(), 64);
    assert!(ids.contains(&2), "the stop token is always in the shortlist");
    assert!(edge_bytes(&short) < edge_bytes(&full), "the full LM head left the edge partition");

    // Every token once: the shortlist head gives probability 0 exactly to the others, and its
    // top-1 is the full head's wherever the full head's top-1 is on the shortlist.
    let continuation: Vec<u32> = (3..200).collect();
    let (s, f) = (score_ids(&short, &continuation), score_ids(&full, &continuation));
    let (mut compared, mut same) = (0, 0);
    for (ps, pf) in s["positions"]
        .as_array()
        .expect("positions")
        .iter()
        .zip(f["positions"].as_array().expect("positions"))
    {
        let target = ps["target"].as_u64().expect("target") as u32;
        let exit = &ps["exits"][0];
        let prob = exit["target_prob"].as_f64().expect("prob");
        assert_eq!(prob > 0.0, ids.contains(&target), "{ty:?} token {target}: {exit}");
        let top = exit["id"].as_u64().expect("id") as u32;
        assert!(ids.contains(&top), "top-1 {top} is not on the shortlist");
        assert_eq!(ps["full"], pf["full"], "the cloud's answer does not change");
        let full_top = pf["exits"][0]["id"].as_u64().expect("id") as u32;
        if ids.contains(&full_top) {
            compared += 1;
            same += usize::from(full_top == top);
        }
    }
    assert!(compared > 0);
    assert_eq!(same, compared, "{ty:?}: the shortlist head ranks its tokens as the full head does");

    // The shortlisted bundle verifies, answers standalone, and refuses a second shortlist.
    let v = generate(
        &short,
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
        &["--mode", "standalone", "--max-tokens", "16"],
    );
    assert!(tokens(&v).iter().all(|t| ids.contains(&(*t as u32))), "{v}");
    let out = collm(&[
        "calibrate",
        "--bundle",
        path_str(&short),
        "--data",
        path_str(&sharegpt()),
        "--prompts",
        "4",
        "--heldout",
        "4",
    ]);
    assert_clean_failure(&out, "already have a shortlist");
}
