//! A real redis-server on a free loopback port.

use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::process::{Daemon, eventually, free_port};

pub struct RedisServer {
    pub url: String,
    _daemon: Daemon,
}

impl RedisServer {
    pub fn start(log_dir: &std::path::Path) -> Result<Self> {
        let binary = ["/usr/bin/redis-server", "/usr/local/bin/redis-server"]
            .into_iter()
            .find(|p| std::path::Path::new(p).is_file());
        let Some(binary) = binary else {
            bail!("redis-server is not installed: apt-get install -y redis-server");
        };
        let port = free_port()?;
        let daemon = Daemon::spawn(
            "redis-server",
            Command::new(binary).args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "no",
            ]),
            &log_dir.join("redis.log"),
        )?;
        let url = format!("redis://127.0.0.1:{port}/0");
        let server = Self { url, _daemon: daemon };
        eventually("redis-server to answer PING", Duration::from_secs(20), || {
            let mut con = server.connection()?;
            redis::cmd("PING").query::<String>(&mut con).context("PING")
        })?;
        Ok(server)
    }

    pub fn connection(&self) -> Result<redis::Connection> {
        let client = redis::Client::open(self.url.as_str())?;
        Ok(client.get_connection_with_timeout(Duration::from_secs(2))?)
    }

    pub fn set(&self, key: &str, value: &str) -> Result<()> {
        let mut con = self.connection()?;
        redis::cmd("SET").arg(key).arg(value).query::<()>(&mut con)?;
        Ok(())
    }

    /// Every key starting with `prefix`.
    pub fn keys(&self, prefix: &str) -> Result<Vec<String>> {
        let mut con = self.connection()?;
        let mut keys: Vec<String> = redis::cmd("KEYS").arg(format!("{prefix}*")).query(&mut con)?;
        keys.sort();
        Ok(keys)
    }
}
