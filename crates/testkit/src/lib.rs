//! Test support for integration tests across crates: real servers on loopback, started on free
//! ports in temporary directories and killed when their guard drops.
//!
//! - [`free_port`]: a TCP port nothing listens on right now, outside the kernel's ephemeral range;
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

/// A port that was free a moment ago, on every address, to hand to a server that binds it soon.
///
/// Picked below the kernel's ephemeral range (`ip_local_port_range`): a port from inside it can
/// be taken between the pick and the server's bind by any outgoing connection of any process as
/// its source port, which failed runs with "Address already in use". Below that range (and below
/// Kubernetes' NodePorts) only other pickers compete: ports are handed out in turn from a start
/// that differs per process, and each is checked bindable before it is returned.
pub fn free_port() -> u16 {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU32, Ordering};
    /// The window's lowest port and width, and the next offset to hand out; `None` when the
    /// ephemeral range leaves no room below it.
    static WINDOW: OnceLock<Option<(u32, u32, AtomicU32)>> = OnceLock::new();

    let window = WINDOW.get_or_init(|| {
        let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse::<u32>().ok())
            .unwrap_or(32768);
        // Below Kubernetes' NodePort range (30000-32767) too, and above the ports of well-known
        // servers (a kubelet's 10250, ...) that a test may start after the pick.
        let (low, high) = (20_000, ephemeral_low.min(30_000));
        let span = high.checked_sub(low).filter(|&span| span >= 1_000)?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let start = (std::process::id().wrapping_mul(7_919) ^ nanos) % span;
        Some((low, span, AtomicU32::new(start)))
    });
    let Some((low, span, next)) = window else {
        return ephemeral_port();
    };
    for _ in 0..*span {
        let port = low + next.fetch_add(1, Ordering::Relaxed) % span;
        let port = u16::try_from(port).expect("below the ephemeral range");
        if TcpListener::bind(("0.0.0.0", port)).is_ok() {
            return port;
        }
    }
    ephemeral_port()
}

fn ephemeral_port() -> u16 {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_are_distinct_bindable_and_below_the_ephemeral_range() {
        let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .expect("a Linux host");
        let ephemeral_low: u16 = range.split_whitespace().next().unwrap().parse().unwrap();
        let ports: Vec<u16> = (0..50).map(|_| free_port()).collect();
        let distinct: std::collections::BTreeSet<_> = ports.iter().collect();
        assert_eq!(distinct.len(), ports.len(), "{ports:?}");
        for port in ports {
            assert!(port < ephemeral_low, "{port} could be any connection's source port");
            TcpListener::bind(("0.0.0.0", port)).expect("still free");
        }
    }
}
