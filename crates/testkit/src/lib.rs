//! Test support for integration tests across crates: real servers on loopback, started on free
//! ports in temporary directories and killed when their guard drops.
//!
//! - [`free_port`]: a loopback TCP port nothing listens on right now;
//! - [`RedisServer`]: a `redis-server` (Debian package) without persistence, optionally with a
//!   password or TLS; [`RedisCluster`]: several of them joined into a Redis Cluster;
//! - [`Toxiproxy`]: a `toxiproxy-server` (built from Go modules by `tools/build-go-tools`) and a
//!   small client for its HTTP API, to cut, slow or silence a link.
//!
//! - [`tiny_bundle`]: the tiny seeded model exported as a bundle by `collm`;
//! - [`FakeCollector`]: an OTLP/gRPC trace collector that keeps what it receives.
//!
//! Everything here panics with a message saying what is missing: it only runs inside tests.

mod otlp;
mod redis_server;
mod tiny;
mod tls;
mod toxiproxy;

use std::net::TcpListener;
use std::time::{Duration, Instant};

pub use otlp::{FakeCollector, ReceivedSpan};
pub use redis_server::{RedisCluster, RedisServer, RedisServerBuilder};
pub use tiny::tiny_bundle;
pub use tls::TlsFiles;
pub use toxiproxy::{Proxy, Toxiproxy};

/// A loopback port that was free a moment ago (the usual race applies: bind it soon).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

/// Polls `ready` every 20 ms until it holds or `timeout` passes; whether it held.
pub fn wait_until(timeout: Duration, mut ready: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if ready() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
