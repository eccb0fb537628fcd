//! The processes the paper comparison runs: a cloud worker (also serving the full model for
//! cloud-only requests) pinned to one core, an edge agent pinned to another, and a
//! toxiproxy between them shaping the link. Each process is killed when the stack drops.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::json;

use super::figures::CpuSeconds;

/// Where each side runs.
pub struct Placement {
    pub edge_core: usize,
    pub cloud_core: usize,
    /// The edge's upload encoding (f32, f16, int8).
    pub encoding: String,
}

pub struct Stack {
    worker: Child,
    agent: Child,
    toxiproxy: Child,
    toxiproxy_api: String,
    /// The edge agent's OpenAI API.
    pub edge_url: String,
    ticks_per_s: f64,
}

/// A link profile: round-trip time added, and optionally a bandwidth limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Profile {
    pub rtt_ms: u32,
    pub bandwidth_kbit: Option<u32>,
}

impl Profile {
    pub fn label(&self) -> String {
        match self.bandwidth_kbit {
            Some(k) => format!("{} ms, {} kbit/s", self.rtt_ms, k),
            None => format!("{} ms", self.rtt_ms),
        }
    }
}

impl Stack {
    /// Starts the worker, toxiproxy and the agent, each process waited for until it serves.
    pub fn start(
        bins: &Path,
        toxiproxy: &Path,
        bundle: &Path,
        at: &Placement,
        scratch: &Path,
    ) -> Result<Self> {
        let tokens = scratch.join("tokens");
        std::fs::write(&tokens, "edge-a paper-bench-token\n")?;
        let mut worker = pinned(at.cloud_core, &bins.join("cloud-worker"))
            .arg("--bundle")
            .arg(bundle)
            .args(["--listen", "127.0.0.1:0", "--full", "--tokens"])
            .arg(&tokens)
            .stdout(Stdio::piped())
            .stderr(log(scratch, "worker.err")?)
            .spawn()
            .context("starting the cloud worker")?;
        let worker_addr = announced(&mut worker, "cloud-worker listening on ", "the cloud worker")?;
        let (toxi, api_port) = start_toxiproxy(toxiproxy, scratch)?;
        let mut stack = Self {
            worker,
            // Replaced below; a placeholder child keeps Drop simple.
            agent: Command::new("true").spawn()?,
            toxiproxy: toxi,
            toxiproxy_api: format!("http://127.0.0.1:{api_port}"),
            edge_url: String::new(),
            ticks_per_s: clock_ticks()?,
        };
        // Port 0: toxiproxy binds a port of its choosing and answers with its address.
        let created = stack.toxi_json(
            "/proxies",
            json!({"name": "link", "listen": "127.0.0.1:0", "upstream": worker_addr}),
        )?;
        let listen = created["listen"]
            .as_str()
            .with_context(|| format!("toxiproxy created a proxy without an address: {created}"))?
            .to_owned();
        let mut agent = pinned(at.edge_core, &bins.join("edge-agent"))
            .arg("--bundle")
            .arg(bundle)
            .args([
                "--listen",
                "127.0.0.1:0",
                "--model",
                super::MODEL,
                "--token",
                "paper-bench-token",
            ])
            .args(["--encoding", &at.encoding])
            .arg("--cloud")
            .arg(format!("http://{listen}"))
            .stdout(Stdio::piped())
            .stderr(log(scratch, "agent.err")?)
            .spawn()
            .context("starting the edge agent")?;
        let url = announced(&mut agent, "edge-agent listening on ", "the edge agent");
        let _ = stack.agent.wait();
        stack.agent = agent;
        stack.edge_url = url?;
        Ok(stack)
    }

    /// Shapes the link: half the round trip each way, and the bandwidth limit if any.
    pub fn shape(&self, p: Profile) -> Result<()> {
        for stream in ["upstream", "downstream"] {
            for kind in ["latency", "bandwidth"] {
                // Absent on the first profile: a 404 is fine.
                let _ = self.toxi("DELETE", &format!("/proxies/link/toxics/{kind}-{stream}"), None);
            }
            if p.rtt_ms > 0 {
                let half = f64::from(p.rtt_ms) / 2.0;
                self.toxi(
                    "POST",
                    "/proxies/link/toxics",
                    Some(json!({"name": format!("latency-{stream}"), "type": "latency",
                        "stream": stream, "attributes": {"latency": half.round() as u64}})),
                )?;
            }
            if let Some(kbit) = p.bandwidth_kbit {
                // toxiproxy's rate is in KB/s.
                let rate = (kbit / 8).max(1);
                self.toxi(
                    "POST",
                    "/proxies/link/toxics",
                    Some(json!({"name": format!("bandwidth-{stream}"), "type": "bandwidth",
                        "stream": stream, "attributes": {"rate": rate}})),
                )?;
            }
        }
        Ok(())
    }

    /// CPU-seconds each side has used so far (user + system, from /proc/PID/stat).
    pub fn cpu(&self) -> Result<CpuSeconds> {
        Ok(CpuSeconds {
            edge: cpu_ticks(self.agent.id())? / self.ticks_per_s,
            cloud: cpu_ticks(self.worker.id())? / self.ticks_per_s,
        })
    }

    /// POSTs `body` to toxiproxy's `path` and returns the JSON it answers.
    fn toxi_json(&self, path: &str, body: serde_json::Value) -> Result<serde_json::Value> {
        let url = format!("{}{path}", self.toxiproxy_api);
        let agent = http_agent(Duration::from_secs(10));
        agent
            .post(&url)
            .send_json(body)
            .and_then(|mut r| r.body_mut().read_json())
            .with_context(|| format!("toxiproxy POST {path}"))
    }

    fn toxi(&self, method: &str, path: &str, body: Option<serde_json::Value>) -> Result<()> {
        let url = format!("{}{path}", self.toxiproxy_api);
        let agent = http_agent(Duration::from_secs(10));
        let res = match (method, body) {
            ("POST", Some(b)) => agent.post(&url).send_json(b).map(drop),
            ("DELETE", _) => agent.delete(&url).call().map(drop),
            _ => agent.get(&url).call().map(drop),
        };
        res.with_context(|| format!("toxiproxy {method} {path}"))
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        for child in [&mut self.agent, &mut self.worker, &mut self.toxiproxy] {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `program` pinned to `core` with `taskset`, which execs it (same PID, so /proc/PID/stat is
/// the program's own accounting), with one ONNX Runtime thread that does not spin (a core
/// each), unless the environment says otherwise.
fn pinned(core: usize, program: &Path) -> Command {
    let mut c = Command::new("taskset");
    c.arg("-c").arg(core.to_string()).arg(program).stdin(Stdio::null());
    for (k, v) in RUNTIME_ENV {
        if std::env::var_os(k).is_none() {
            c.env(k, v);
        }
    }
    c
}

/// What each pinned process gets by default.
pub const RUNTIME_ENV: [(&str, &str); 2] = [("COLLM_THREADS", "1"), ("COLLM_SPIN", "0")];

/// The runtime settings the pinned processes run with, for the report.
pub fn runtime_env() -> String {
    RUNTIME_ENV
        .iter()
        .map(|(k, v)| format!("{k}={}", std::env::var(k).unwrap_or_else(|_| (*v).to_owned())))
        .collect::<Vec<_>>()
        .join(" ")
}

fn log(dir: &Path, name: &str) -> Result<std::fs::File> {
    std::fs::File::create(dir.join(name)).with_context(|| format!("creating {name}"))
}

/// Reads the child's stdout until it prints `prefix` and the address after it (bounded).
fn announced(child: &mut Child, prefix: &str, what: &str) -> Result<String> {
    let stdout = child.stdout.take().context("piped stdout")?;
    let (tx, rx) = mpsc::channel();
    let prefix = prefix.to_owned();
    std::thread::spawn(move || {
        let mut found = false;
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if !found && let Some(addr) = line.strip_prefix(&prefix) {
                found = true;
                let _ = tx.send(addr.trim().to_owned());
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(300))
        .with_context(|| format!("{what} did not start within 5 minutes (see its log)"))
}

/// `toxiproxy-server` on a loopback port, and the port. It cannot announce a port it chose
/// itself, so one is picked first; if another process takes it before toxiproxy binds it,
/// toxiproxy logs so (and keeps running without its API), and is started again on another.
fn start_toxiproxy(binary: &Path, scratch: &Path) -> Result<(Child, u16)> {
    const ATTEMPTS: usize = 5;
    let log_path = scratch.join("toxiproxy.log");
    let agent = http_agent(Duration::from_secs(1));
    for _ in 0..ATTEMPTS {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let mut child = Command::new(binary)
            .args(["-host", "127.0.0.1", "-port", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(log(scratch, "toxiproxy.log")?)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let version = format!("http://127.0.0.1:{port}/version");
        for _ in 0..200 {
            let lost = std::fs::read_to_string(&log_path)
                .is_ok_and(|log| log.contains("address already in use"));
            if lost || child.try_wait()?.is_some() {
                break;
            }
            if agent.get(&version).call().is_ok() {
                return Ok((child, port));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    bail!(
        "toxiproxy ({}) did not serve in {ATTEMPTS} attempts: see {}",
        binary.display(),
        log_path.display()
    )
}

/// An HTTP client whose every request gives up after `timeout`.
fn http_agent(timeout: Duration) -> ureq::Agent {
    ureq::Agent::config_builder().timeout_global(Some(timeout)).build().into()
}

fn clock_ticks() -> Result<f64> {
    let out = Command::new("getconf").arg("CLK_TCK").output().context("getconf CLK_TCK")?;
    String::from_utf8_lossy(&out.stdout).trim().parse().context("CLK_TCK")
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("process {pid} is gone"))?;
    stat_ticks(&stat).with_context(|| format!("/proc/{pid}/stat: {stat}"))
}

/// utime + stime from a /proc/PID/stat line (fields 14 and 15; the command name in
/// parentheses may hold spaces, so fields are counted after its closing parenthesis).
fn stat_ticks(stat: &str) -> Option<f64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state): utime is field 14, stime 15.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// The toxiproxy server binary: `$COLLM_TOXIPROXY_SERVER`, `$COLLM_BIN/toxiproxy-server`, or
/// the newest one under `$COLLM_CACHE/bin` (where tools/build-go-tools builds it).
pub fn toxiproxy_binary() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("COLLM_TOXIPROXY_SERVER") {
        return Ok(PathBuf::from(p));
    }
    if let Some(bin) = std::env::var_os("COLLM_BIN") {
        let p = Path::new(&bin).join("toxiproxy-server");
        if p.is_file() {
            return Ok(p);
        }
    }
    let root = collm_runtime::ort_env::cache_dir().join("bin");
    let mut found: Vec<(std::time::SystemTime, PathBuf)> = vec![];
    for dir in std::fs::read_dir(&root).into_iter().flatten().flatten() {
        let p = dir.path().join("toxiproxy-server");
        if let Ok(m) = p.metadata() {
            found.push((m.modified()?, p));
        }
    }
    found.sort();
    found.pop().map(|(_, p)| p).with_context(|| {
        format!(
            "toxiproxy-server not found under {} (build it with tools/build-go-tools)",
            root.display()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_are_utime_plus_stime_even_with_spaces_in_the_name() {
        let stat =
            "4242 (edge agent) S 1 4242 4242 0 -1 4194560 500 0 0 0 731 120 0 0 20 0 9 0 100 0";
        assert_eq!(stat_ticks(stat), Some(851.0));
        assert_eq!(stat_ticks("garbage"), None);
    }
}
