//! Load through the local stack: `collm up` starts two cloud workers and one edge agent, then
//! `collm bench load` sends 32 concurrent streaming chat requests. Every request must complete
//! with `[DONE]` and no error; throughput and latency percentiles are reported, not judged
//! (timings on a shared 2-core machine are not assertions). Also proves `collm up` prints its
//! address line and stops its children on SIGTERM.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

#[test]
fn thirty_two_concurrent_streams_through_collm_up_all_complete() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bundle = tiny_bundle(dir.path());
    let mut up = Command::new(bin("collm"))
        .args(["up", "--bundle", path_str(&bundle), "--workers", "2", "--port", "0"])
        .args(["--agent-arg=--threshold=0.02", "--agent-arg=--model=tiny"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("collm up starts");
    let stdout = up.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx.recv_timeout(Duration::from_secs(120)).expect("collm up prints its edge line");
    let url = line
        .trim()
        .strip_prefix("edge: ")
        .unwrap_or_else(|| panic!("unexpected {line:?}"))
        .to_string();

    let out = Command::new(bin("collm"))
        .args(["bench", "load", "--url", &url, "--model", "tiny", "--concurrency", "32"])
        .args(["--requests", "64", "--max-tokens", "48", "--json"])
        .output()
        .expect("collm bench load runs");
    let _ = Command::new("kill").args(["-TERM", &up.id().to_string()]).status();
    let status = up.wait().expect("collm up exits");
    assert!(
        out.status.success(),
        "load failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    eprintln!("load report: {report}");
    assert_eq!(report["failed"], 0, "{report}");
    assert!(report["completion_tokens"].as_u64().expect("tokens") >= 64, "{report}");
    assert!(status.success(), "collm up did not stop cleanly on SIGTERM: {status}");
    let leftover = Command::new("pgrep").args(["-f", path_str(&bundle)]).output().expect("pgrep");
    assert!(
        leftover.stdout.is_empty(),
        "children left running: {}",
        String::from_utf8_lossy(&leftover.stdout)
    );
}
