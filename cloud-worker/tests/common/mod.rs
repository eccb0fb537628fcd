//! Real processes on loopback: a tiny bundle, a `cloud-worker` child that is killed when its
//! guard drops, and `collm` (built by the same workspace build, next to the worker binary).
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

pub const PROMPT: &str =
    "<|im_start|>user\nhello there, tiny model<|im_end|>\n<|im_start|>assistant\n";

/// `collm`, from the target directory the worker binary was built into.
pub fn collm_bin() -> PathBuf {
    let worker = PathBuf::from(env!("CARGO_BIN_EXE_cloud-worker"));
    let collm = worker.with_file_name("collm");
    assert!(
        collm.exists(),
        "{} is missing: build the workspace first (cargo build --release --workspace)",
        collm.display()
    );
    collm
}

pub fn collm(args: &[&str]) -> Output {
    Command::new(collm_bin()).args(args).output().expect("collm runs")
}

pub fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// The tiny seeded model, split after layer 2 with exits at layers 1 and 2.
pub fn tiny_bundle(dir: &Path) -> PathBuf {
    collm_testkit::tiny_bundle(&collm_bin(), dir, "bundle")
}

/// A running `cloud-worker`; killed (and reaped) on drop so no test leaves a process behind.
pub struct Worker {
    child: Child,
    pub url: String,
}

impl Worker {
    /// Starts a worker on a free loopback port with clients `edge-a tok-a` and `edge-b tok-b`.
    pub fn start(bundle: &Path, dir: &Path) -> Self {
        Self::start_with(bundle, dir, &[])
    }

    /// As [`Worker::start`], with extra `cloud-worker` flags.
    pub fn start_with(bundle: &Path, dir: &Path, extra: &[&str]) -> Self {
        let tokens = dir.join("tokens");
        std::fs::write(&tokens, "edge-a tok-a\nedge-b tok-b\n").expect("tokens file");
        let mut child = Command::new(env!("CARGO_BIN_EXE_cloud-worker"))
            .args(["--bundle", path_str(bundle), "--listen", "127.0.0.1:0"])
            .args(["--tokens", path_str(&tokens)])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("cloud-worker starts");
        let stdout = child.stdout.take().expect("stdout piped");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let mut worker = Self { child, url: String::new() };
        let line = rx.recv_timeout(Duration::from_secs(60)).expect("worker ready within 60 s");
        let addr = line
            .trim()
            .strip_prefix("cloud-worker listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
        worker.url = format!("http://{addr}");
        worker
    }
}

impl Worker {
    /// Sends SIGTERM and waits (at most 20 s) for the worker to exit on its own.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status().expect("kill runs");
        assert!(sent.success(), "SIGTERM could not be sent");
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(std::time::Instant::now() < deadline, "worker ignored SIGTERM for 20 s");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `collm generate --json` on the tiny prompt.
pub fn generate(bundle: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["generate", "--bundle", path_str(bundle), "--prompt", PROMPT, "--json"];
    args.extend_from_slice(extra);
    collm(&args)
}

pub fn generate_json(bundle: &Path, extra: &[&str]) -> serde_json::Value {
    let out = generate(bundle, extra);
    assert!(
        out.status.success(),
        "collm generate {extra:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("stdout is one JSON object")
}

pub fn field(v: &serde_json::Value, name: &str) -> Vec<serde_json::Value> {
    v[name].as_array().unwrap_or_else(|| panic!("no {name} in {v}")).clone()
}

/// "The token after `after`", greedy with three alternatives, as the in-process edge asks it.
pub fn ask(after: usize) -> collm_runtime::transport::NextTokenRequest {
    collm_runtime::transport::NextTokenRequest {
        after,
        params: collm_runtime::SamplingParams::default(),
        u: 0.5,
        top_k: 3,
        edge_answered: Default::default(),
        adjustment: Default::default(),
        seen: Default::default(),
    }
}

/// Rows `start..` of `rows` (each `hidden` wide), f32-encoded, as the in-process edge uploads.
pub fn upload(start: usize, rows: &[f32], hidden: usize) -> collm_runtime::transport::Upload {
    use collm_runtime::{Encoding, codec};
    collm_runtime::transport::Upload {
        start,
        rows: rows.len() / hidden,
        encoding: Encoding::F32,
        payload: codec::encode(rows, hidden, Encoding::F32),
    }
}
