//! `collm up`: a local stack on loopback — N cloud workers and one edge agent as child
//! processes sharing a fresh bearer token — in the foreground until SIGINT/SIGTERM, which stops
//! the children cleanly. Without `--redis` the workers keep the cloud context in memory (each
//! its own); with it they share it, as in a cluster.
//!
//! Like a Deployment, the stack outlives its members: a child that dies is started again on
//! the same address, after a backoff that grows while it keeps dying (1 s, 2 s, 4 s, … 30 s,
//! reset once it has run for a minute). Meanwhile the edge fails over to the other workers, and
//! answers alone if none is left, so the stack keeps serving.

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
/// Restart backoff: first wait, cap, and how long a child must run for the wait to reset.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
const STABLE_AFTER: Duration = Duration::from_secs(60);

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
        let mut spec = ChildSpec::new(&format!("cloud-worker {i}"), sibling("cloud-worker")?);
        spec.args.extend(["--bundle".into(), a.bundle.display().to_string()]);
        spec.args.extend(["--tokens".into(), tokens.display().to_string()]);
        spec.args.extend(a.worker_args.iter().cloned());
        if let Some(url) = &a.redis {
            spec.args.extend(["--redis-url".into(), url.clone()]);
        }
        spec.listen = "127.0.0.1:0".into();
        spec.listen_flag = "--listen";
        spec.ready_prefix = "cloud-worker listening on ";
        let addr = children.start(spec, &stop)?;
        eprintln!("cloud-worker {i}: http://{addr}");
    }
    let mut spec = ChildSpec::new("edge-agent", sibling("edge-agent")?);
    spec.args.extend(["--bundle".into(), a.bundle.display().to_string()]);
    spec.args.extend(["--token".into(), token]);
    for addr in children.addrs() {
        spec.args.extend(["--cloud".into(), format!("http://{addr}")]);
    }
    spec.args.extend(a.agent_args.iter().cloned());
    spec.listen = format!("127.0.0.1:{}", a.port);
    spec.listen_flag = "--listen";
    spec.ready_prefix = "edge-agent listening on http://";
    let edge = children.start(spec, &stop)?;
    println!("edge: http://{edge}");

    children.supervise(&stop);
    children.stop_all();
    Ok(())
}

/// How to (re)start one child.
struct ChildSpec {
    name: String,
    program: PathBuf,
    args: Vec<String>,
    listen_flag: &'static str,
    /// The address to listen on: `:0` the first time, the address it got afterwards, so the
    /// others still find it after a restart.
    listen: String,
    /// Its first stdout line, before the address.
    ready_prefix: &'static str,
}

impl ChildSpec {
    fn new(name: &str, program: PathBuf) -> Self {
        Self {
            name: name.to_string(),
            program,
            args: Vec::new(),
            listen_flag: "--listen",
            listen: String::new(),
            ready_prefix: "",
        }
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.program);
        share_cores(&mut cmd);
        cmd.args(&self.args).args([self.listen_flag, &self.listen]);
        cmd
    }
}

/// A running child and how it is restarted.
struct Member {
    spec: ChildSpec,
    child: Option<Child>,
    started: Instant,
    backoff: Duration,
    /// When a dead child is started again.
    restart_at: Option<Instant>,
}

#[derive(Default)]
struct Children {
    members: Vec<Member>,
}

impl Children {
    fn addrs(&self) -> Vec<String> {
        self.members.iter().map(|m| m.spec.listen.clone()).collect()
    }

    /// Starts a new member and waits until it prints its address.
    fn start(&mut self, mut spec: ChildSpec, stop: &AtomicBool) -> Result<String> {
        let (child, addr) = match launch(&spec, stop) {
            Ok(started) => started,
            Err(e) => {
                self.stop_all();
                return Err(e);
            }
        };
        spec.listen = addr.clone();
        self.members.push(Member {
            spec,
            child: Some(child),
            started: Instant::now(),
            backoff: FIRST_BACKOFF,
            restart_at: None,
        });
        Ok(addr)
    }

    /// Until a signal: restarts members that die, with backoff.
    fn supervise(&mut self, stop: &AtomicBool) {
        while !stop.load(Ordering::Relaxed) {
            for m in &mut self.members {
                if let Some(child) = m.child.as_mut()
                    && let Ok(Some(status)) = child.try_wait()
                {
                    m.child = None;
                    if m.started.elapsed() >= STABLE_AFTER {
                        m.backoff = FIRST_BACKOFF;
                    }
                    eprintln!(
                        "{} exited unexpectedly ({status}); restarting it in {:?}, the stack keeps serving",
                        m.spec.name, m.backoff
                    );
                    m.restart_at = Some(Instant::now() + m.backoff);
                    m.backoff = (m.backoff * 2).min(MAX_BACKOFF);
                }
                if m.child.is_none() && m.restart_at.is_some_and(|at| Instant::now() >= at) {
                    m.restart_at = None;
                    match launch(&m.spec, stop) {
                        Ok((child, addr)) => {
                            eprintln!("{} restarted on {addr}", m.spec.name);
                            m.child = Some(child);
                            m.started = Instant::now();
                        }
                        Err(e) => {
                            eprintln!(
                                "{} did not restart: {e:#}; trying again in {:?}",
                                m.spec.name, m.backoff
                            );
                            m.restart_at = Some(Instant::now() + m.backoff);
                            m.backoff = (m.backoff * 2).min(MAX_BACKOFF);
                        }
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        eprintln!("stopping the local stack");
    }

    /// SIGTERM to every child (edge first, so it stops sending), then SIGKILL after 20 s.
    fn stop_all(&mut self) {
        for m in self.members.iter().rev() {
            if let Some(child) = &m.child {
                let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
            }
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        for m in self.members.iter_mut().rev() {
            let Some(child) = m.child.as_mut() else { continue };
            loop {
                match child.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() > deadline => {
                        eprintln!("{} ignored SIGTERM; killing it", m.spec.name);
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
            m.child = None;
        }
        self.members.clear();
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        self.stop_all();
    }
}

/// Spawns the child and waits for its first stdout line `<prefix><address>`.
fn launch(spec: &ChildSpec, stop: &AtomicBool) -> Result<(Child, String)> {
    let mut child = spec
        .command()
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("starting {}", spec.name))?;
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
    let deadline = Instant::now() + START_TIMEOUT;
    let fail = |mut child: Child, why: String| -> Result<(Child, String)> {
        let _ = child.kill();
        let _ = child.wait();
        bail!(why)
    };
    loop {
        if stop.load(Ordering::Relaxed) {
            return fail(child, format!("interrupted while starting {}", spec.name));
        }
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(line) => {
                return match line.trim().strip_prefix(spec.ready_prefix) {
                    Some(addr) => Ok((child, addr.to_owned())),
                    None => fail(
                        child,
                        format!("{} did not start (its output: {:?})", spec.name, line.trim()),
                    ),
                };
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                return fail(
                    child,
                    format!("{} exited before it was ready (see its error above)", spec.name),
                );
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) if Instant::now() > deadline => {
                return fail(
                    child,
                    format!("{} was not ready within {START_TIMEOUT:?}", spec.name),
                );
            }
            Err(_) => {}
        }
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
