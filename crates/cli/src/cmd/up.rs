//! `collm up`: a local stack on loopback — N cloud workers and one edge agent as child
//! processes sharing a fresh bearer token — in the foreground until SIGINT/SIGTERM, which stops
//! the children cleanly. Without `--redis` the workers keep the cloud context in memory (each
//! its own); with it they share it, as in a cluster.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;

#[derive(Parser)]
pub struct Args {
    /// Bundle directory.
    #[arg(long)]
    bundle: PathBuf,
    /// Redis URL for a shared cloud context (default: in-memory context per worker).
    #[arg(long)]
    redis: Option<String>,
    /// Cloud workers to start (the edge fails over between them in order).
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// Port of the edge agent's OpenAI API on 127.0.0.1 (0: any free port).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Extra flags for the edge agent (e.g. --agent-arg=--threshold=0.6), repeatable.
    #[arg(long = "agent-arg", allow_hyphen_values = true)]
    agent_args: Vec<String>,
    /// Extra flags for every cloud worker, repeatable.
    #[arg(long = "worker-arg", allow_hyphen_values = true)]
    worker_args: Vec<String>,
}

/// How long a child may take to print its address.
const START_TIMEOUT: Duration = Duration::from_secs(120);

pub fn run(a: Args) -> Result<()> {
    if a.workers == 0 {
        bail!("--workers must be at least 1");
    }
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, stop.clone()).context("installing signal handlers")?;
    }
    let dir = tempfile::tempdir().context("creating a directory for the stack's token")?;
    let token = fresh_token();
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, format!("local-edge {token}\n")).context("writing the token file")?;

    let mut children = Children::default();
    for i in 0..a.workers {
        let mut cmd = Command::new(sibling("cloud-worker")?);
        share_cores(&mut cmd);
        cmd.arg("--bundle").arg(&a.bundle).args(["--listen", "127.0.0.1:0"]);
        cmd.arg("--tokens").arg(&tokens).args(&a.worker_args);
        if let Some(url) = &a.redis {
            cmd.args(["--redis-url", url]);
        }
        let addr = children.start(
            &format!("cloud-worker {i}"),
            cmd,
            "cloud-worker listening on ",
            &stop,
        )?;
        eprintln!("cloud-worker {i}: http://{addr}");
    }
    let mut cmd = Command::new(sibling("edge-agent")?);
    share_cores(&mut cmd);
    cmd.arg("--bundle").arg(&a.bundle).args(["--listen", &format!("127.0.0.1:{}", a.port)]);
    cmd.args(["--token", &token]);
    for addr in children.addrs.clone() {
        cmd.args(["--cloud", &format!("http://{addr}")]);
    }
    cmd.args(&a.agent_args);
    let edge = children.start("edge-agent", cmd, "edge-agent listening on http://", &stop)?;
    println!("edge: http://{edge}");

    let outcome = children.watch(&stop);
    children.stop_all();
    outcome
}

#[derive(Default)]
struct Children {
    running: Vec<(String, Child)>,
    addrs: Vec<String>,
}

impl Children {
    /// Spawns `cmd` and waits for its first stdout line `<prefix><address>`.
    fn start(
        &mut self,
        name: &str,
        mut cmd: Command,
        prefix: &str,
        stop: &AtomicBool,
    ) -> Result<String> {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        let stdout = child.stdout.take().context("child stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            let _ = reader.read_line(&mut line);
            let _ = tx.send(line);
            // Pass anything else the child prints through.
            let _ = std::io::copy(&mut reader, &mut std::io::stderr());
        });
        self.running.push((name.to_owned(), child));
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if stop.load(Ordering::Relaxed) {
                self.stop_all();
                bail!("interrupted while starting {name}");
            }
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(line) => {
                    let Some(addr) = line.trim().strip_prefix(prefix) else {
                        self.stop_all();
                        bail!("{name} did not start (its output: {:?})", line.trim());
                    };
                    self.addrs.push(addr.to_owned());
                    return Ok(addr.to_owned());
                }
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    self.stop_all();
                    bail!("{name} exited before it was ready (see its error above)");
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) if Instant::now() > deadline => {
                    self.stop_all();
                    bail!("{name} was not ready within {START_TIMEOUT:?}");
                }
                Err(_) => {}
            }
        }
    }

    /// Until a signal (Ok) or a child's unexpected exit (Err).
    fn watch(&mut self, stop: &AtomicBool) -> Result<()> {
        while !stop.load(Ordering::Relaxed) {
            for (name, child) in &mut self.running {
                if let Ok(Some(status)) = child.try_wait() {
                    bail!("{name} exited unexpectedly ({status}); stopping the stack");
                }
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        eprintln!("stopping the local stack");
        Ok(())
    }

    /// SIGTERM to every child (edge first, so it stops sending), then SIGKILL after 20 s.
    fn stop_all(&mut self) {
        for (_, child) in self.running.iter().rev() {
            let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        for (name, child) in self.running.iter_mut().rev() {
            loop {
                match child.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() > deadline => {
                        eprintln!("{name} ignored SIGTERM; killing it");
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        }
        self.running.clear();
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        self.stop_all();
    }
}

/// The children share this machine's cores: ONNX Runtime threads spinning for work in one would
/// take the cores the others compute on. Unless the user chose (`COLLM_SPIN`), they do not spin.
fn share_cores(cmd: &mut Command) {
    if std::env::var_os("COLLM_SPIN").is_none() {
        cmd.env("COLLM_SPIN", "0");
    }
}

/// A binary installed next to `collm`.
fn sibling(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locating collm")?;
    let path = exe.with_file_name(name);
    if !path.exists() {
        bail!(
            "{} not found next to collm: build the workspace (cargo build --release --workspace)",
            path.display()
        );
    }
    Ok(path)
}

/// A token nobody else knows: 128 bits from the OS's random source.
fn fresh_token() -> String {
    let mut bytes = [0u8; 16];
    let read = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes));
    if read.is_err() {
        // Loopback only and short-lived; time and pid still make it unguessable enough.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        bytes[..16].copy_from_slice(&(nanos ^ u128::from(std::process::id())).to_le_bytes());
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
