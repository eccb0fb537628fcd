//! A `toxiproxy-server` per test and a small client for its HTTP API (hand-written HTTP/1.1:
//! a handful of JSON requests do not need an HTTP client crate).
//!
//! The binary is built from Go modules by `tools/build-go-tools` into the cache. It is found
//! through `COLLM_TOXIPROXY_SERVER`, else `$COLLM_BIN/toxiproxy-server`, else anywhere under
//! `$COLLM_CACHE/bin` (default `~/.cache/ce-collm/bin`), else on PATH.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime};

use serde_json::{Value, json};

use crate::redis_server::which;
use crate::{free_port, wait_until};

/// A running `toxiproxy-server`, killed on drop.
pub struct Toxiproxy {
    child: Child,
    api: String,
}

impl Toxiproxy {
    pub fn start() -> Self {
        let binary = Self::binary().unwrap_or_else(|e| panic!("{e}"));
        let port = free_port();
        let child = Command::new(&binary)
            .args(["-host", "127.0.0.1", "-port", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{} cannot start: {e}", binary.display()));
        let server = Self { child, api: format!("127.0.0.1:{port}") };
        let up = wait_until(Duration::from_secs(20), || {
            server.try_request("GET", "/version", None).is_ok_and(|(status, _)| status == 200)
        });
        assert!(up, "toxiproxy-server ({}) did not answer on {}", binary.display(), server.api);
        server
    }

    /// Where `toxiproxy-server` is, or why it cannot be found.
    pub fn binary() -> Result<PathBuf, String> {
        if let Some(path) = std::env::var_os("COLLM_TOXIPROXY_SERVER") {
            let path = PathBuf::from(path);
            return if path.is_file() {
                Ok(path)
            } else {
                Err(format!("COLLM_TOXIPROXY_SERVER={} is not a file", path.display()))
            };
        }
        if let Some(bin) = std::env::var_os("COLLM_BIN") {
            let path = Path::new(&bin).join("toxiproxy-server");
            if path.is_file() {
                return Ok(path);
            }
        }
        let cache = std::env::var_os("COLLM_CACHE")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache/ce-collm")));
        if let Some(found) = cache.and_then(|c| newest_named(&c.join("bin"), "toxiproxy-server")) {
            return Ok(found);
        }
        which("toxiproxy-server").ok_or_else(|| {
            "toxiproxy-server not found: build it with tools/build-go-tools (it lands under \
             $COLLM_CACHE/bin), or point COLLM_TOXIPROXY_SERVER at the binary"
                .to_owned()
        })
    }

    /// A proxy named `name` from a fresh loopback port to `upstream` (`host:port`), enabled.
    pub fn proxy(&self, name: &str, upstream: &str) -> Proxy {
        // Port 0: toxiproxy binds a port of its choosing and answers with its address.
        let body =
            json!({ "name": name, "listen": "127.0.0.1:0", "upstream": upstream, "enabled": true });
        let created = self.expect("POST", "/proxies", Some(body), 201);
        let listen = created["listen"]
            .as_str()
            .unwrap_or_else(|| panic!("a proxy without an address: {created}"))
            .to_owned();
        Proxy { api: self.api.clone(), name: name.to_owned(), listen }
    }

    fn expect(&self, method: &str, path: &str, body: Option<Value>, status: u16) -> Value {
        expect(&self.api, method, path, body, status)
    }

    fn try_request(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> std::io::Result<(u16, String)> {
        request(&self.api, method, path, body)
    }
}

impl Drop for Toxiproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One proxy of a [`Toxiproxy`]: connect to [`Proxy::listen`] instead of the upstream.
#[derive(Debug, Clone)]
pub struct Proxy {
    api: String,
    name: String,
    listen: String,
}

impl Proxy {
    /// `127.0.0.1:PORT` the proxy listens on.
    pub fn listen(&self) -> &str {
        &self.listen
    }

    /// Cuts the link: closes every connection through the proxy and refuses new ones.
    pub fn disable(&self) {
        self.set_enabled(false);
    }

    /// Restores the link.
    pub fn enable(&self) {
        self.set_enabled(true);
    }

    fn set_enabled(&self, enabled: bool) {
        let path = format!("/proxies/{}", self.name);
        expect(&self.api, "POST", &path, Some(json!({ "enabled": enabled })), 200);
    }

    /// Delays data in both directions by `latency_ms` (± `jitter_ms`).
    pub fn add_latency(&self, toxic: &str, latency_ms: u64, jitter_ms: u64) {
        for stream in ["upstream", "downstream"] {
            let attributes = json!({ "latency": latency_ms, "jitter": jitter_ms });
            self.add_toxic(&format!("{toxic}-{stream}"), "latency", stream, attributes);
        }
    }

    /// Limits both directions to `rate_kb_s` kilobytes per second.
    pub fn add_bandwidth(&self, toxic: &str, rate_kb_s: u64) {
        for stream in ["upstream", "downstream"] {
            let attributes = json!({ "rate": rate_kb_s });
            self.add_toxic(&format!("{toxic}-{stream}"), "bandwidth", stream, attributes);
        }
    }

    /// Silences the link without closing it: data toward the upstream is dropped, and with
    /// `close_after_ms` > 0 connections close after that long (0: never).
    pub fn add_blackhole(&self, toxic: &str, close_after_ms: u64) {
        self.add_toxic(toxic, "timeout", "upstream", json!({ "timeout": close_after_ms }));
    }

    /// Adds any toxic (`type`, `stream` = "upstream" or "downstream", its `attributes`).
    pub fn add_toxic(&self, toxic: &str, kind: &str, stream: &str, attributes: Value) {
        let body = json!({
            "name": toxic, "type": kind, "stream": stream, "toxicity": 1.0, "attributes": attributes,
        });
        expect(&self.api, "POST", &format!("/proxies/{}/toxics", self.name), Some(body), 200);
    }

    /// Removes a toxic added with [`Self::add_toxic`] or [`Self::add_blackhole`].
    pub fn remove_toxic(&self, toxic: &str) {
        let path = format!("/proxies/{}/toxics/{toxic}", self.name);
        expect(&self.api, "DELETE", &path, None, 204);
    }

    /// Removes both directions of a toxic added with [`Self::add_latency`] or
    /// [`Self::add_bandwidth`].
    pub fn remove_toxics(&self, toxic: &str) {
        for stream in ["upstream", "downstream"] {
            self.remove_toxic(&format!("{toxic}-{stream}"));
        }
    }
}

fn expect(api: &str, method: &str, path: &str, body: Option<Value>, status: u16) -> Value {
    let (got, text) = request(api, method, path, body.as_ref())
        .unwrap_or_else(|e| panic!("toxiproxy {method} {path}: {e}"));
    assert_eq!(got, status, "toxiproxy {method} {path} answered {got}: {text}");
    serde_json::from_str(&text).unwrap_or(Value::Null)
}

/// One HTTP/1.1 request with `Connection: close`; the status and the (de-chunked) body.
fn request(
    api: &str,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(api)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let body = body.map(Value::to_string).unwrap_or_default();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {api}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let bad = |what: &str| std::io::Error::other(format!("{what} in reply {text:?}"));
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(|| bad("no header end"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("no status"))?;
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    let body =
        if chunked { dechunk(body).ok_or_else(|| bad("bad chunking"))? } else { body.into() };
    Ok((status, body))
}

fn dechunk(mut body: &str) -> Option<String> {
    let mut out = String::new();
    loop {
        let (size, rest) = body.split_once("\r\n")?;
        let size = usize::from_str_radix(size.split(';').next()?.trim(), 16).ok()?;
        if size == 0 {
            return Some(out);
        }
        out.push_str(rest.get(..size)?);
        body = rest.get(size + 2..)?;
    }
}

/// The most recently modified file called `name` under `dir` (symlinks followed).
fn newest_named(dir: &Path, name: &str) -> Option<PathBuf> {
    let mut best: Option<(SystemTime, PathBuf)> = None;
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for entry in entries.flatten() {
            let path = entry.path();
            // `metadata` follows symlinks: the bin directories hold links to the builds.
            let Ok(meta) = std::fs::metadata(&path) else { continue };
            if meta.is_dir() {
                pending.push(path);
            } else if meta.is_file() && path.file_name().is_some_and(|n| n == name) {
                let modified = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
                if best.as_ref().is_none_or(|(t, _)| modified > *t) {
                    best = Some((modified, path));
                }
            }
        }
    }
    best.map(|(_, path)| path)
}
