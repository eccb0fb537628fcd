//! `collm up` behaves like the cluster: a cloud worker killed with SIGKILL is restarted on its
//! address (as a Deployment replaces a pod) while the stack keeps answering through the other
//! worker, and SIGTERM still stops everything cleanly.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::json;

/// The pids of `parent`'s children whose command line names `program`, oldest first.
fn children_running(parent: u32, program: &str) -> Vec<u32> {
    let out = Command::new("pgrep").args(["-P", &parent.to_string()]).output().expect("pgrep");
    let mut pids: Vec<u32> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(program))
                .unwrap_or(false)
        })
        .collect();
    pids.sort_unstable();
    pids
}

#[test]
fn a_killed_worker_is_restarted_on_its_address_while_the_stack_keeps_serving() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bundle = tiny_bundle(dir.path());
    let log = dir.path().join("up.log");
    let mut up = Command::new(bin("collm"))
        .args(["up", "--bundle", path_str(&bundle), "--workers", "2", "--port", "0"])
        .args(["--agent-arg=--threshold=1.5", "--agent-arg=--model=tiny"])
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).expect("log"))
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
    let base = line.trim().strip_prefix("edge: ").unwrap_or_else(|| panic!("{line:?}")).to_string();
    let text = || std::fs::read_to_string(&log).unwrap_or_default();
    let address_of = |n: usize| {
        text()
            .lines()
            .find_map(|l| l.strip_prefix(&format!("cloud-worker {n}: http://")).map(str::to_string))
            .unwrap_or_else(|| panic!("no address for worker {n} in:\n{}", text()))
    };
    let addresses = [address_of(0), address_of(1)];

    let ask = || {
        let (status, answer) = post(&base, "/v1/completions", &completion(8, json!({})));
        assert_eq!(status, 200, "{answer}");
        answer
    };
    assert_eq!(ask()["collm"]["cloud_tokens"], 8);

    let workers = children_running(up.id(), "cloud-worker");
    assert_eq!(workers.len(), 2, "two workers run");
    Command::new("kill").args(["-KILL", &workers[0].to_string()]).status().expect("kill");

    // The stack answers meanwhile, through the other worker.
    let answer = ask();
    assert_eq!(answer["collm"]["cloud_tokens"], 8, "{answer}");
    assert_eq!(answer["collm"]["degraded"], false, "{answer}");

    assert!(
        collm_testkit::wait_until(Duration::from_secs(60), || text().contains("restarted on")),
        "no restart:\n{}",
        text()
    );
    let log_text = text();
    let exited =
        log_text.lines().find(|l| l.contains("exited unexpectedly")).expect("an exit line");
    assert!(exited.contains("signal: 9") && exited.contains("keeps serving"), "{exited}");
    let restarted = log_text.lines().find(|l| l.contains("restarted on")).expect("a restart line");
    let n: usize = restarted
        .strip_prefix("cloud-worker ")
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{restarted}"));
    assert!(
        restarted.ends_with(&addresses[n]),
        "the same address: {restarted} vs {}",
        addresses[n]
    );
    assert_eq!(children_running(up.id(), "cloud-worker").len(), 2, "two workers again");
    assert!(up.try_wait().expect("try_wait").is_none(), "collm up keeps running");
    assert_eq!(ask()["collm"]["cloud_tokens"], 8);

    let _ = Command::new("kill").args(["-TERM", &up.id().to_string()]).status();
    let status = up.wait().expect("collm up exits");
    assert!(status.success(), "collm up did not stop cleanly on SIGTERM: {status}\n{}", text());
    let leftover = Command::new("pgrep").args(["-f", path_str(&bundle)]).output().expect("pgrep");
    assert!(
        leftover.stdout.is_empty(),
        "children left running: {}",
        String::from_utf8_lossy(&leftover.stdout)
    );
}
