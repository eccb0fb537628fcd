//! Real processes on loopback for the edge agent's tests: a tiny bundle, `cloud-worker` and
//! `edge-agent` children (killed when their guards drop), and a small HTTP client for the API.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::{Value, json};

pub const PROMPT: &str =
    "<|im_start|>user\nhello there, tiny model<|im_end|>\n<|im_start|>assistant\n";
pub const TOKEN: &str = "tok-a";

/// A sibling binary of the edge agent in the workspace's target directory.
pub fn bin(name: &str) -> PathBuf {
    let agent = PathBuf::from(env!("CARGO_BIN_EXE_edge-agent"));
    let path = agent.with_file_name(name);
    assert!(
        path.exists(),
        "{} is missing: build the workspace first (cargo build --release --workspace)",
        path.display()
    );
    path
}

pub fn collm(args: &[&str]) -> Output {
    Command::new(bin("collm")).args(args).output().expect("collm runs")
}

pub fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// The tiny seeded model, split after layer 2 with exits at layers 1 and 2.
pub fn tiny_bundle(dir: &Path) -> PathBuf {
    collm_testkit::tiny_bundle(&bin("collm"), dir, "tiny")
}

/// `collm generate --json` in process (the reference the agent must reproduce).
pub fn in_process(bundle: &Path, extra: &[&str]) -> Value {
    let mut args = vec!["generate", "--bundle", path_str(bundle), "--prompt", PROMPT, "--json"];
    args.extend_from_slice(extra);
    let out = collm(&args);
    assert!(out.status.success(), "collm generate: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("one JSON object")
}

/// A child process that printed `<prefix><address>` as its first line; killed on drop.
pub struct Proc {
    child: Child,
    pub addr: String,
}

impl Proc {
    fn spawn(cmd: &mut Command, prefix: &str) -> Self {
        let mut child =
            cmd.stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn().expect("spawns");
        let stdout = child.stdout.take().expect("stdout piped");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            let _ = reader.read_line(&mut line);
            let _ = tx.send(line);
            // Keep draining so the child never blocks on a full pipe.
            let _ = std::io::copy(&mut reader, &mut std::io::sink());
        });
        let line = match rx.recv_timeout(Duration::from_secs(90)) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                panic!("{prefix}... not printed within 90 s");
            }
        };
        let addr = line
            .trim()
            .strip_prefix(prefix)
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_string();
        Self { child, addr }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills the process at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits at most 20 s for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().expect("kill runs");
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(std::time::Instant::now() < deadline, "ignored SIGTERM for 20 s");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A cloud worker on a free port, accepting `edge-a tok-a` and `edge-b tok-b`.
pub fn worker(bundle: &Path, dir: &Path, extra: &[&str]) -> Proc {
    worker_on(bundle, dir, "127.0.0.1:0", extra)
}

pub fn worker_on(bundle: &Path, dir: &Path, listen: &str, extra: &[&str]) -> Proc {
    let tokens = dir.join("tokens");
    std::fs::write(&tokens, "edge-a tok-a\nedge-b tok-b\n").expect("tokens file");
    let mut p = Proc::spawn(
        Command::new(bin("cloud-worker"))
            .args(["--bundle", path_str(bundle), "--listen", listen])
            .args(["--tokens", path_str(&tokens)])
            .args(extra),
        "cloud-worker listening on ",
    );
    p.addr = format!("http://{}", p.addr);
    p
}

/// An edge agent on a free port; `clouds` are its cloud endpoints in failover order.
pub fn agent(bundle: &Path, clouds: &[&str], extra: &[&str]) -> Proc {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_edge-agent"));
    cmd.args(["--bundle", path_str(bundle), "--listen", "127.0.0.1:0", "--model", "tiny"]);
    for c in clouds {
        cmd.args(["--cloud", c]);
    }
    if !clouds.is_empty() {
        cmd.args(["--token", TOKEN]);
    }
    cmd.args(extra);
    Proc::spawn(&mut cmd, "edge-agent listening on http://")
}

fn http() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(120)))
        .build()
        .into()
}

/// POSTs raw bytes; returns the status and the body parsed as JSON.
pub fn post_raw(base: &str, path: &str, body: &[u8]) -> (u16, Value) {
    let mut resp = http()
        .post(&format!("{base}{path}"))
        .header("content-type", "application/json")
        .send(body)
        .expect("the agent answers");
    let status = resp.status().as_u16();
    let text = resp.body_mut().read_to_string().expect("body");
    let value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text:?}"));
    (status, value)
}

pub fn post(base: &str, path: &str, body: &Value) -> (u16, Value) {
    post_raw(base, path, body.to_string().as_bytes())
}

pub fn get(base: &str, path: &str) -> (u16, String) {
    let mut resp = http().get(&format!("{base}{path}")).call().expect("the agent answers");
    (resp.status().as_u16(), resp.body_mut().read_to_string().expect("body"))
}

/// A streamed request: every `data:` payload in order (the last is `[DONE]`). `on_event` sees
/// each parsed event as it arrives (to act mid-stream).
pub fn stream(
    base: &str,
    path: &str,
    body: &Value,
    mut on_event: impl FnMut(usize, &Value),
) -> Vec<String> {
    let resp = http()
        .post(&format!("{base}{path}"))
        .header("content-type", "application/json")
        .send(body.to_string().as_bytes())
        .expect("the agent answers");
    assert_eq!(resp.status().as_u16(), 200, "stream refused");
    let content_type =
        resp.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    assert!(content_type.starts_with("text/event-stream"), "content-type {content_type}");
    let reader = BufReader::new(resp.into_body().into_reader());
    let mut events = vec![];
    for line in reader.lines() {
        let line = line.expect("stream line");
        if let Some(data) = line.strip_prefix("data: ") {
            if data != "[DONE]" {
                let v: Value = serde_json::from_str(data).expect("event is JSON");
                on_event(events.len(), &v);
            }
            events.push(data.to_string());
            if data == "[DONE]" {
                break;
            }
        }
    }
    events
}

/// A greedy completion request for the tiny prompt.
pub fn completion(max_tokens: usize, extra: Value) -> Value {
    let mut body =
        json!({"model": "tiny", "prompt": PROMPT, "max_tokens": max_tokens, "temperature": 0});
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            b.insert(k.clone(), v.clone());
        }
    }
    body
}

/// The token ids of a non-streamed answer.
pub fn tokens(answer: &Value) -> Vec<u64> {
    answer["collm"]["tokens"]
        .as_array()
        .unwrap_or_else(|| panic!("no collm.tokens in {answer}"))
        .iter()
        .map(|t| t.as_u64().expect("token id"))
        .collect()
}

pub fn ids(v: &Value, field: &str) -> Vec<u64> {
    v[field]
        .as_array()
        .unwrap_or_else(|| panic!("no {field} in {v}"))
        .iter()
        .map(|t| t.as_u64().expect("id"))
        .collect()
}

pub fn read_all(mut r: impl Read) -> String {
    let mut s = String::new();
    r.read_to_string(&mut s).expect("read");
    s
}

/// Spawns `cmd` and waits for its first line `<prefix><address>` (for tests that build their
/// own command lines).
pub fn spawn_until(cmd: &mut Command, prefix: &str) -> Proc {
    Proc::spawn(cmd, prefix)
}

/// Creates a directory in place (for a process's own files).
pub trait TapMkdir {
    fn tap_mkdir(self) -> Self;
}

impl TapMkdir for PathBuf {
    fn tap_mkdir(self) -> Self {
        std::fs::create_dir_all(&self).expect("mkdir");
        self
    }
}
