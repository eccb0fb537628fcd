//! `collm bench paper` as a user runs it, small: the real SmolLM2 bundle served by a real cloud
//! worker and edge agent (pinned to their cores), toxiproxy shaping the link, every mode over
//! two RTTs and the bandwidth-limited profile, two prompts from a JSON-lines file.

mod common;

use common::*;

#[test]
fn heavy_smollm2_bench_paper_measures_every_mode_on_every_profile() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bundle = dir.path().join("smollm2");
    export(&smollm2_gguf(), &bundle, &["--split-layer", "24"]);
    calibrate_small(&bundle, 12, 8);
    let prompts = dir.path().join("prompts.jsonl");
    std::fs::write(
        &prompts,
        "{\"messages\": [{\"role\": \"user\", \"content\": \"Give me three tips for staying healthy.\"}]}\n\
         {\"messages\": [{\"role\": \"user\", \"content\": \"What is the capital of France?\"}]}\n",
    )
    .expect("prompts");
    let (json, report) = (dir.path().join("paper.json"), dir.path().join("paper.md"));
    let out = collm(&[
        "bench",
        "paper",
        "--bundle",
        path_str(&bundle),
        "--prompts",
        path_str(&prompts),
        "--count",
        "2",
        "--rtt-ms",
        "0,20",
        "--bandwidth-kbit",
        "1000",
        "--max-tokens",
        "12",
        "--json",
        path_str(&json),
        "--report",
        path_str(&report),
    ]);
    assert!(out.status.success(), "bench paper failed: {}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("json")).expect("JSON");
    let runs = v["runs"].as_array().expect("runs");
    let profiles = [(0, None), (20, None), (20, Some(1000))];
    let modes = ["cloud", "naive", "standalone", "collaborative", "speculative"];
    assert_eq!(runs.len(), profiles.len() * modes.len(), "{v}");
    let f = |r: &serde_json::Value, k: &str| r[k].as_f64().unwrap_or_else(|| panic!("{k}: {r}"));
    for (rtt, bw) in profiles {
        let row = |mode: &str| {
            runs.iter()
                .find(|r| {
                    r["mode"] == mode && r["rtt_ms"] == rtt && r["bandwidth_kbit"].as_u64() == bw
                })
                .unwrap_or_else(|| panic!("no {mode} row at {rtt} ms {bw:?}: {v}"))
        };
        for mode in modes {
            let r = row(mode);
            assert_eq!(r["failed"], 0, "{r}");
            assert!(f(r, "e2e_p50_s") > 0.0 && f(r, "tokens_per_s") > 0.0, "{r}");
            assert!(f(r, "ttft_p50_s") <= f(r, "e2e_p50_s"), "{r}");
        }
        let (cloud, standalone) = (row("cloud"), row("standalone"));
        // The full model answers cloud-only requests, on the cloud's core only.
        assert_eq!(f(cloud, "identical_share"), 1.0, "{cloud}");
        assert_eq!((f(cloud, "edge_share"), f(cloud, "upload_bytes_per_token")), (0.0, 0.0));
        assert!(f(cloud, "cloud_cpu_s_per_request") > 0.0, "{cloud}");
        assert_eq!(f(cloud, "e2e_vs_cloud"), 1.0);
        // Standalone never reaches the cloud.
        assert_eq!(f(standalone, "edge_share"), 1.0, "{standalone}");
        assert!(
            f(standalone, "cloud_cpu_s_per_request") < 0.2 * f(cloud, "cloud_cpu_s_per_request"),
            "standalone used the cloud: {standalone} vs {cloud}"
        );
        assert!(f(standalone, "edge_cpu_s_per_request") > 0.0);
        // Lossless with f32 uploads: the full model's answers.
        assert_eq!(f(row("speculative"), "identical_share"), 1.0, "{}", row("speculative"));
        // Naive ships the whole context with each ask; collaboration uploads each row once.
        let (naive, collab) = (row("naive"), row("collaborative"));
        if f(naive, "edge_share") < 1.0 && f(collab, "edge_share") < 1.0 {
            assert!(
                f(naive, "upload_bytes_per_token") > f(collab, "upload_bytes_per_token"),
                "{naive} vs {collab}"
            );
        }
    }
    let md = std::fs::read_to_string(&report).expect("report");
    for needle in
        ["## RTT 0 ms", "## RTT 20 ms, 1000 kbit/s each way", "## The issue's targets", "taskset"]
    {
        assert!(md.contains(needle), "{needle} missing from the report:\n{md}");
    }
}

#[test]
fn bench_paper_refuses_a_bad_prompts_file_in_one_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let prompts = dir.path().join("prompts.jsonl");
    std::fs::write(
        &prompts,
        "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}]}\n{\"prompt\": \"x\"}\n",
    )
    .expect("prompts");
    let out = collm(&["bench", "paper", "--prompts", path_str(&prompts), "--count", "2"]);
    assert_clean_failure(&out, "line 2");
}
