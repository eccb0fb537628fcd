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
