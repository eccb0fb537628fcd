//! A `cloud-worker` started with any flags, whose printed addresses (gRPC, and HTTP when
//! served) are read from its stdout, plus a bare HTTP/1.1 GET for its operational endpoints.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A running worker; killed (and reaped) on drop.
pub struct ServingWorker {
    child: Child,
    /// As printed: the bound address (`0.0.0.0:P` when listening on every interface).
    pub grpc: SocketAddr,
    pub http: Option<SocketAddr>,
}

/// The clients of every worker started here: `edge-a tok-a` and `edge-b tok-b`.
pub fn tokens_file(dir: &Path) -> std::path::PathBuf {
    let tokens = dir.join("tokens");
    std::fs::write(&tokens, "edge-a tok-a\nedge-b tok-b\n").expect("tokens file");
    tokens
}

impl ServingWorker {
    /// Starts `cloud-worker ARGS` and waits (60 s at most) for its address lines (the HTTP one
    /// when ARGS has `--http-listen`).
    pub fn start(args: &[&str]) -> Self {
        Self::try_start(args, args.contains(&"--http-listen"))
            .unwrap_or_else(|e| panic!("cloud-worker {args:?}: {e}"))
    }

    /// As [`ServingWorker::start`], saying whether an HTTP address will be printed (a config
    /// file may ask for one); the worker's error output when it exits instead.
    pub fn try_start(args: &[&str], expect_http: bool) -> Result<Self, String> {
        let mut child = Command::new(env!("CARGO_BIN_EXE_cloud-worker"))
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start: {e}"))?;
        let stdout = child.stdout.take().expect("stdout piped");
        let mut stderr = child.stderr.take().expect("stderr piped");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            // Reads every line for the life of the worker, so its stdout never breaks.
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let (etx, erx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut all = String::new();
            let mut buf = [0u8; 4096];
            while let Ok(n) = stderr.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                eprint!("{text}");
                all.push_str(&text);
                let _ = etx.send(all.clone());
            }
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        let (mut grpc, mut http) = (None, None);
        while grpc.is_none() || (expect_http && http.is_none()) {
            if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
                std::thread::sleep(Duration::from_millis(200));
                let err = erx.try_iter().last().unwrap_or_default();
                return Err(format!("exited with {status}: {err}"));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                return Err("no address printed within 60 s".into());
            }
            if let Ok(line) = rx.recv_timeout(Duration::from_millis(100)) {
                let addr = |a: &str| a.trim().parse().map_err(|e| format!("{line:?}: {e}"));
                if let Some(a) = line.strip_prefix("cloud-worker listening on ") {
                    grpc = Some(addr(a)?);
                } else if let Some(a) = line.strip_prefix("cloud-worker http on ") {
                    http = Some(addr(a)?);
                }
            }
        }
        let grpc = grpc.ok_or("no gRPC address printed")?;
        Ok(Self { child, grpc, http })
    }

    /// `http://127.0.0.1:PORT` of the gRPC server.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.grpc.port())
    }

    pub fn http_get(&self, path: &str) -> (u16, String) {
        let addr = self.http.expect("started with an HTTP address");
        http_get(SocketAddr::from(([127, 0, 0, 1], addr.port())), path)
    }

    /// Sends SIGTERM.
    pub fn signal_term(&self) {
        let sent = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(sent.success(), "SIGTERM could not be sent");
    }

    /// The exit status, waiting at most `timeout`; `None` while it still runs.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for ServingWorker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `GET path` over HTTP/1.1: the status code and the body.
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    stream.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")
        .expect("request sent");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("response read");
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    (code, body.to_owned())
}

/// The value of one sample line of a metrics page (`name{labels} value`), 0 when absent.
pub fn sample(page: &str, series: &str) -> f64 {
    page.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}
