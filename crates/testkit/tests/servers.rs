//! The test servers behave as the tests that use them assume: Redis restarts empty and keeps
//! its port, a password is required when set, a cluster serves every slot; toxiproxy delays,
//! throttles, cuts and silences a link and restores it.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use collm_testkit::{RedisCluster, RedisServer, Toxiproxy};

#[test]
fn redis_restarts_empty_on_the_same_port_and_flushes() {
    let mut redis = RedisServer::start();
    let port = redis.port();
    assert_eq!(redis.cli(&["SET", "k", "v"]), "OK");
    redis.flush();
    assert_eq!(redis.cli(&["EXISTS", "k"]), "0");
    redis.cli(&["SET", "k", "v"]);
    redis.restart();
    assert_eq!(redis.port(), port);
    assert_eq!(redis.cli(&["EXISTS", "k"]), "0", "no persistence: a restart loses every key");
    redis.stop();
    assert!(redis.try_cli(&["PING"]).is_none(), "stopped");
}

#[test]
fn a_password_is_required_when_set_and_tls_serves_with_the_test_ca() {
    let redis = RedisServer::builder().password("pw").start();
    assert_eq!(redis.cli(&["PING"]), "PONG");
    assert_eq!(redis.url(), format!("redis://:pw@127.0.0.1:{}", redis.port()));
    let anonymous = std::process::Command::new("redis-cli")
        .args(["-p", &redis.port().to_string(), "PING"])
        .output()
        .expect("redis-cli");
    assert!(String::from_utf8_lossy(&anonymous.stdout).contains("NOAUTH"));

    let tls = RedisServer::builder().tls().start();
    assert_eq!(tls.cli(&["PING"]), "PONG");
    assert!(tls.url().starts_with("rediss://127.0.0.1:"));
    assert!(tls.tls_files().expect("files").ca_cert.exists());
}

#[test]
fn a_cluster_serves_every_slot() {
    let cluster = RedisCluster::start(3);
    assert_eq!(cluster.urls().len(), 3);
    let info = cluster.nodes()[0].cli(&["CLUSTER", "INFO"]);
    assert!(info.contains("cluster_slots_assigned:16384"), "{info}");
}

/// A TCP echo server on a free port, for the duration of the test process.
fn echo_server() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut stream = stream;
                let mut buf = [0u8; 64 * 1024];
                while let Ok(n) = stream.read(&mut buf) {
                    if n == 0 || stream.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

/// Sends `bytes` through `addr` and reads them back; how long that took.
fn round_trip(addr: &str, bytes: usize) -> std::io::Result<Duration> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    let started = Instant::now();
    let sent = vec![7u8; bytes];
    let writer = {
        let mut stream = stream.try_clone()?;
        std::thread::spawn(move || stream.write_all(&sent))
    };
    let mut got = vec![0u8; bytes];
    stream.read_exact(&mut got)?;
    writer.join().map_err(|_| std::io::Error::other("writer panicked"))??;
    Ok(started.elapsed())
}

#[test]
fn toxiproxy_delays_throttles_cuts_and_silences_a_link() {
    let toxiproxy = Toxiproxy::start();
    let proxy = toxiproxy.proxy("echo", &echo_server());
    let fast = round_trip(proxy.listen(), 10).expect("through the proxy");
    assert!(fast < Duration::from_millis(200), "{fast:?}");

    proxy.add_latency("lag", 150, 0);
    let slow = round_trip(proxy.listen(), 10).expect("delayed");
    assert!(slow >= Duration::from_millis(300), "150 ms each way: {slow:?}");
    proxy.remove_toxics("lag");

    // 64 KB/s each way: 64 KiB takes about a second.
    proxy.add_bandwidth("thin", 64);
    let throttled = round_trip(proxy.listen(), 64 * 1024).expect("throttled");
    assert!(throttled >= Duration::from_millis(700), "{throttled:?}");
    proxy.remove_toxics("thin");

    proxy.disable();
    assert!(round_trip(proxy.listen(), 10).is_err(), "a disabled proxy refuses connections");
    proxy.enable();
    round_trip(proxy.listen(), 10).expect("enabled again");

    proxy.add_blackhole("void", 0);
    assert!(round_trip(proxy.listen(), 10).is_err(), "nothing comes back through a blackhole");
    proxy.remove_toxic("void");
    round_trip(proxy.listen(), 10).expect("speaking again");
}
