//! A real `redis-server` per test: loopback, a free port, no persistence (`--save ""`,
//! `--appendonly no`), its own temporary directory, killed on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::tls::TlsFiles;
use crate::{free_port, wait_until};

const START_TIMEOUT: Duration = Duration::from_secs(20);

/// How to start a [`RedisServer`].
#[derive(Debug, Clone, Default)]
pub struct RedisServerBuilder {
    password: Option<String>,
    tls: bool,
    tls_client_auth: bool,
    cluster: bool,
}

impl RedisServerBuilder {
    /// Require `AUTH` with this password (`requirepass`, the `default` user).
    pub fn password(mut self, password: &str) -> Self {
        self.password = Some(password.to_owned());
        self
    }

    /// Serve TLS only (`--port 0 --tls-port P`) with a fresh test CA; clients need
    /// [`RedisServer::tls_files`]'s CA certificate.
    pub fn tls(mut self) -> Self {
        self.tls = true;
        self
    }

    /// With [`Self::tls`]: also require a client certificate signed by the test CA.
    pub fn tls_client_auth(mut self) -> Self {
        self.tls = true;
        self.tls_client_auth = true;
        self
    }

    fn cluster(mut self) -> Self {
        self.cluster = true;
        self
    }

    pub fn start(self) -> RedisServer {
        RedisServer::launch(self)
    }
}

/// A running `redis-server`.
pub struct RedisServer {
    child: Option<Child>,
    dir: tempfile::TempDir,
    port: u16,
    options: RedisServerBuilder,
    tls: Option<TlsFiles>,
}

impl RedisServer {
    /// A plain server: no password, no TLS.
    pub fn start() -> Self {
        Self::builder().start()
    }

    pub fn builder() -> RedisServerBuilder {
        RedisServerBuilder::default()
    }

    /// `redis-server` on PATH, or a panic saying how to get it.
    pub fn binary() -> PathBuf {
        which("redis-server").unwrap_or_else(|| {
            panic!(
                "redis-server is not on PATH: install Debian's redis-server \
                 (scripts/test does: apt-get install -y redis-server)"
            )
        })
    }

    fn launch(options: RedisServerBuilder) -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory for redis-server");
        let tls = options.tls.then(|| TlsFiles::generate(dir.path()));
        let mut server = Self { child: None, dir, port: free_port(), options, tls };
        // Another test may take the free port (or the cluster bus port) before this server
        // binds it: try a few fresh ones.
        for _ in 0..3 {
            match server.try_spawn() {
                Ok(()) => return server,
                Err(log) if log.contains("Address already in use") => server.port = free_port(),
                Err(log) => panic!("redis-server on port {} did not start:\n{log}", server.port),
            }
        }
        panic!("redis-server found no free port in three attempts");
    }

    fn args(&self) -> Vec<String> {
        let dir = self.dir.path().to_str().expect("utf-8 temp dir").to_owned();
        let mut args: Vec<String> = [
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
            "--protected-mode",
            "no",
            "--dir",
            &dir,
        ]
        .map(String::from)
        .to_vec();
        match &self.tls {
            Some(tls) => {
                let auth = if self.options.tls_client_auth { "yes" } else { "no" };
                args.extend(["--port".into(), "0".into(), "--tls-port".into()]);
                args.push(self.port.to_string());
                for (flag, path) in [
                    ("--tls-cert-file", &tls.server_cert),
                    ("--tls-key-file", &tls.server_key),
                    ("--tls-ca-cert-file", &tls.ca_cert),
                ] {
                    args.push(flag.into());
                    args.push(path.to_str().expect("utf-8 path").into());
                }
                args.extend(["--tls-auth-clients".into(), auth.into()]);
            }
            None => args.extend(["--port".into(), self.port.to_string()]),
        }
        if let Some(password) = &self.options.password {
            args.extend(["--requirepass".into(), password.clone()]);
        }
        if self.options.cluster {
            args.extend(
                ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]
                    .map(String::from),
            );
            args.extend(["--cluster-node-timeout".into(), "3000".into()]);
            args.extend(["--cluster-port".into(), free_port().to_string()]);
        }
        args
    }

    fn spawn(&mut self) {
        if let Err(log) = self.try_spawn() {
            panic!("redis-server on port {} did not start again:\n{log}", self.port);
        }
    }

    /// Starts the server and waits until it answers PING; its log when it does not.
    fn try_spawn(&mut self) -> Result<(), String> {
        let log_path = self.dir.path().join("redis.log");
        let log = std::fs::File::create(&log_path).expect("redis log file");
        let child = Command::new(Self::binary())
            .args(self.args())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        self.child = Some(child);
        let mut exited = false;
        let ready = wait_until(START_TIMEOUT, || {
            exited = self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(Some(_))));
            exited || self.try_cli(&["PING"]).as_deref() == Some("PONG")
        });
        if ready && !exited {
            return Ok(());
        }
        self.stop();
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        Err(if exited { log } else { format!("not ready within {START_TIMEOUT:?}:\n{log}") })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The URL a client uses: `redis://` or `rediss://`, with the password when there is one.
    pub fn url(&self) -> String {
        self.url_with_password(self.options.password.as_deref())
    }

    /// [`Self::url`] with another password (or none), e.g. to test a wrong one.
    pub fn url_with_password(&self, password: Option<&str>) -> String {
        let scheme = if self.tls.is_some() { "rediss" } else { "redis" };
        let auth = password.map(|p| format!(":{p}@")).unwrap_or_default();
        format!("{scheme}://{auth}{}", self.addr())
    }

    /// The test CA and certificates of a TLS server.
    pub fn tls_files(&self) -> Option<&TlsFiles> {
        self.tls.as_ref()
    }

    /// Kills the server (SIGKILL) and starts it again on the same port: every key is gone.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// Kills the server; [`Self::restart`] brings it back.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Deletes every key.
    pub fn flush(&self) {
        self.cli(&["FLUSHALL"]);
    }

    /// Runs `redis-cli` against this server; its trimmed output. Panics when it fails.
    pub fn cli(&self, args: &[&str]) -> String {
        self.try_cli(args).unwrap_or_else(|| panic!("redis-cli {args:?} failed on {}", self.addr()))
    }

    /// Runs `redis-cli`; `None` when it fails or the reply is an error.
    pub fn try_cli(&self, args: &[&str]) -> Option<String> {
        let mut cmd = Command::new("redis-cli");
        cmd.args(["-h", "127.0.0.1", "-p", &self.port.to_string()]);
        if let Some(password) = &self.options.password {
            cmd.args(["-a", password, "--no-auth-warning"]);
        }
        if let Some(tls) = &self.tls {
            cmd.arg("--tls").arg("--cacert").arg(&tls.ca_cert);
            cmd.arg("--cert").arg(&tls.client_cert).arg("--key").arg(&tls.client_key);
        }
        let out = cmd.args(args).stdin(Stdio::null()).output().ok()?;
        let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        (out.status.success() && !text.starts_with("ERR") && !text.starts_with("(error)"))
            .then_some(text)
    }

    /// The temporary directory the server runs in.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Several `redis-server`s joined into one Redis Cluster (masters only, slots spread evenly).
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// At least three nodes: Redis Cluster refuses fewer masters.
    pub fn start(nodes: usize) -> Self {
        let nodes: Vec<RedisServer> =
            (0..nodes.max(3)).map(|_| RedisServer::builder().cluster().start()).collect();
        let addrs: Vec<String> = nodes.iter().map(RedisServer::addr).collect();
        let out = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("redis-cli runs");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let ready = wait_until(START_TIMEOUT, || {
            nodes.iter().all(|n| {
                n.try_cli(&["CLUSTER", "INFO"]).is_some_and(|i| i.contains("cluster_state:ok"))
            })
        });
        assert!(ready, "the cluster of {addrs:?} did not reach cluster_state:ok");
        Self { nodes }
    }

    /// Seed URLs, one per node.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }

    /// Deletes every key on every node.
    pub fn flush(&self) {
        for n in &self.nodes {
            n.flush();
        }
    }
}

pub(crate) fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| Path::new(dir).join(program))
        .find(|p| p.is_file())
}
