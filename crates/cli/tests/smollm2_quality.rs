//! Heavy tests on the real SmolLM2-135M-Instruct: answers at the calibrated default operating
//! point keep the full model's quality free-running on held-out prompts, and the shortlist exit
//! head (`collm calibrate --shortlist`) verifies and agrees with the full model as often as
//! calibration measured.

mod common;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use common::*;

/// SmolLM2 split at 24, calibrated as `collm calibrate` does by default but on fewer prompts
/// (the default operating point chosen on 16 free-running answers of 64 tokens).
fn calibrated() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        calibrated_with(
            "smollm2-quality-default",
            &["--prompts", "96", "--heldout", "24", "--free-prompts", "16", "--free-tokens", "64"],
        )
    })
}

/// SmolLM2 split at 24, exported and calibrated with `flags` (and 3 epochs) into the fixture
/// directory `name`.
fn calibrated_with(name: &str, flags: &[&str]) -> PathBuf {
    let dir = fixture_dir(name);
    let out = dir.join("smollm2");
    export(&smollm2_gguf(), &out, &["--split-layer", "24"]);
    let data = sharegpt();
    let mut args =
        vec!["calibrate", "--bundle", path_str(&out), "--data", path_str(&data), "--epochs", "3"];
    args.extend_from_slice(flags);
    let res = collm(&args);
    assert!(res.status.success(), "calibrate failed: {}", String::from_utf8_lossy(&res.stderr));
    out
}

/// Held-out prompts the default operating point is judged on. Loops are rare (the full model's
/// answers loop on about one prompt in twenty): on 24 prompts "no more loops" was decided by a
/// single answer (CI saw 1 against 0; on an AVX2 machine the same prompt looped with all but one
/// of its looping tokens chosen by the cloud, while 96 prompts gave 4 loops against the full
/// model's 5). So the test takes four times as many and asks whether the excess is more than
/// chance.
const HELD_OUT_PROMPTS: &str = "96";

#[test]
fn heavy_smollm2_default_operating_point_keeps_quality_free_running() {
    let bundle = calibrated();
    let point = &manifest(bundle)["operating_point"];
    assert!(point["target_agreement"].as_f64().is_some(), "no calibrated default: {point}");
    let dir = tempfile::tempdir().expect("tempdir");
    let json = dir.path().join("quality.json");
    let answers = dir.path().join("answers.jsonl");
    let data = sharegpt();
    // Prompts 1000.. of ShareGPT: calibration read the first 136.
    let out = collm(&[
        "bench",
        "quality",
        "--bundle",
        path_str(bundle),
        "--data",
        path_str(&data),
        "--prompts",
        HELD_OUT_PROMPTS,
        "--new-tokens",
        "64",
        "--modes",
        "collaborative",
        "--json",
        path_str(&json),
        "--answers",
        path_str(&answers),
    ]);
    assert!(out.status.success(), "bench quality failed: {}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("json")).expect("JSON");
    let modes = v["modes"].as_array().expect("modes");
    let (full, collab) = (&modes[0], &modes[1]);
    eprintln!("{}", String::from_utf8_lossy(&out.stdout));
    let f = |m: &serde_json::Value, k: &str| m[k].as_f64().unwrap_or_else(|| panic!("{k}: {m}"));
    assert!(f(collab, "edge_share") > 0.1, "the edge hardly answers: {collab}");
    assert!(f(collab, "nll_ratio") <= 1.15, "the full model finds the answers unlikely: {collab}");

    // Loops, prompt by prompt: where one mode's answer loops and the other's does not.
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&answers)
        .expect("answers")
        .lines()
        .map(|l| serde_json::from_str(l).expect("answer line"))
        .collect();
    let looped = |mode: &str| -> Vec<bool> {
        let mut rows: Vec<(u64, bool)> = lines
            .iter()
            .filter(|a| a["mode"] == mode)
            .map(|a| (a["prompt"].as_u64().expect("prompt"), a["looped"] == true))
            .collect();
        rows.sort();
        rows.into_iter().map(|(_, l)| l).collect()
    };
    let (full_loops, collab_loops) = (looped("full"), looped("collaborative"));
    assert_eq!(full_loops.len(), collab_loops.len(), "one answer per prompt and mode");
    let only_collab = full_loops.iter().zip(&collab_loops).filter(|(f, c)| **c && !**f).count();
    let only_full = full_loops.iter().zip(&collab_loops).filter(|(f, c)| **f && !**c).count();
    let p = collm_calibrate::quality::excess_loops_p_value(only_collab, only_full);
    eprintln!(
        "loops: collaborative {} and full {} of {} answers; only collaborative's {only_collab}, \
         only the full model's {only_full} (one-sided sign test p = {p:.3})",
        collab_loops.iter().filter(|l| **l).count(),
        full_loops.iter().filter(|l| **l).count(),
        full_loops.len(),
    );
    assert!(
        p >= 0.05,
        "collaborative answers loop more often than the full model's: {only_collab} prompts loop \
         only collaboratively, {only_full} only with the full model (p = {p:.4}): {collab} vs {full}"
    );
}

#[test]
fn heavy_smollm2_shortlist_head_verifies_and_agrees_with_the_full_model_as_calibrated() {
    // The shortlist is opt-in (it did not win on this model, bench/results/quality.md); the
    // default operating point is not what this test is about.
    let bundle = &calibrated_with(
        "smollm2-quality-shortlist",
        &["--prompts", "64", "--heldout", "16", "--shortlist", "8192", "--free-prompts", "0"],
    );
    let m = manifest(bundle);
    let cal = &m["exits"][0]["calibration"];
    let size = cal["shortlist"]["size"].as_u64().expect("calibration gives a shortlist head");
    assert!(size < m["config"]["vocab_size"].as_u64().expect("vocab"));
    let measured = cal["agreement"].as_f64().expect("agreement");
    // The full model's greedy answers to held-out prompts, teacher-forced through the bundle
    // (which `collm score` opens and verifies): how often the exit head's top-1 is the full
    // model's.
    let data = sharegpt();
    let prompts = collm_calibrate::first_prompts(&data, 1100, 8, 400).expect("prompts");
    let (mut agree, mut total) = (0usize, 0usize);
    for p in &prompts {
        let chat = format!("<|im_start|>user\n{p}<|im_end|>\n<|im_start|>assistant\n");
        let full = generate(bundle, &chat, &["--mode", "full", "--max-tokens", "32"]);
        let ids: Vec<String> = tokens(&full).iter().map(u64::to_string).collect();
        let scored = collm_json(&[
            "score",
            "--bundle",
            path_str(bundle),
            "--prompt",
            &chat,
            "--continuation",
            &ids.join(","),
        ]);
        for pos in scored["positions"].as_array().expect("positions") {
            total += 1;
            agree += usize::from(pos["exits"][0]["id"] == pos["full"]["id"]);
        }
        // Standalone answers come from the shortlist head alone.
        let standalone = generate(bundle, &chat, &["--mode", "standalone", "--max-tokens", "16"]);
        assert!(!tokens(&standalone).is_empty());
    }
    let rate = agree as f64 / total as f64;
    eprintln!(
        "shortlist head ({size} tokens): agreement {rate:.3} over {total} answer positions, calibration measured {measured:.3}"
    );
    // Calibration's figure includes prompt positions, which are harder than answer positions:
    // answers agree at least as often, give or take the sample.
    assert!(rate >= measured - 0.05, "agreement {rate:.3} vs calibrated {measured:.3}");
}
