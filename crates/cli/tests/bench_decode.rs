//! `collm bench decode` as a user runs it, small: the real SmolLM2 bundle against llama.cpp
//! (llama-cpp-python from the reference venv) on the GGUF it was exported from, each engine in
//! its own process. Speeds are not asserted (a timed test flakes); what a reader of the
//! report relies on is: every engine measured, ratios read within rounds, the machine and the
//! versions named.

mod common;

use common::*;

#[test]
fn heavy_smollm2_bench_decode_reports_every_engine_against_llama_cpp() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bundle = dir.path().join("smollm2");
    export(&smollm2_gguf(), &bundle, &["--split-layer", "24"]);
    let report = dir.path().join("decode.md");
    // From a directory outside the source tree: the llama.cpp script travels in the binary.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_collm"))
        .current_dir(dir.path())
        .args(["bench", "decode", "--bundle", path_str(&bundle), "--gguf"])
        .arg(smollm2_gguf())
        .args(["--new-tokens", "8", "--runs", "1", "--rounds", "2", "--report"])
        .arg(&report)
        .output()
        .expect("run collm");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "bench decode failed: {stderr}");
    let md = std::fs::read_to_string(&report).expect("report");
    assert!(md.contains("CPU: ") && md.contains("vector extensions: "), "{md}");
    assert!(md.contains("ONNX Runtime: ORT Build Info"), "{md}");
    assert!(md.contains("llama-cpp-python 0.3.36") && md.contains("its kernels: CPU :"), "{md}");
    let rows: Vec<Vec<&str>> = md
        .lines()
        .filter(|l| l.starts_with("| ce-collm") || l.starts_with("| llama.cpp"))
        .map(|l| l.trim_matches('|').split('|').map(str::trim).collect())
        .collect();
    let engines: Vec<&str> = rows.iter().map(|r| r[0]).collect();
    assert_eq!(
        engines,
        ["ce-collm full", "ce-collm collaborative", "ce-collm standalone", "llama.cpp"],
        "{md}"
    );
    for row in &rows {
        let speed: f64 = row[1].parse().unwrap_or_else(|_| panic!("speed in {row:?}"));
        assert!(speed > 0.0, "{row:?}");
        // Two rounds, two ratios; llama.cpp against itself is 1 in each.
        let each: Vec<f64> =
            row[3].split(", ").map(|x| x.parse().expect("a ratio per round")).collect();
        assert_eq!(each.len(), 2, "{row:?}");
        if row[0] == "llama.cpp" {
            assert_eq!(each, [1.0, 1.0], "{row:?}");
        }
        let rss: f64 = row[6].parse().unwrap_or_else(|_| panic!("RSS in {row:?}"));
        assert!(rss > 50.0, "{row:?}");
    }
    // The standalone engine answers every token at the edge, full mode none.
    assert_eq!(rows[0][7], "0%", "{md}");
    assert_eq!(rows[2][7], "100%", "{md}");
}
