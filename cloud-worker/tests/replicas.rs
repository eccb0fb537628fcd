//! Traffic that follows the autoscaler, with real cloud workers sharing a real Redis: an edge
//! link that discovers its replicas spreads sessions over them, sends new sessions to a replica
//! that appears within seconds, and when one drains (SIGTERM, and it leaves discovery as it
//! leaves a headless Service's records) its sessions continue on the others with every answer
//! what an undisturbed session gives. Discovery here answers from a list the test controls (the
//! system resolver is tested on its own; in a cluster it resolves the headless Service).

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use collm_cloud_client::{Discovery, GrpcCloud, LinkConfig, Resolve};
use collm_runtime::transport::CloudTransport;
use common::*;

/// A resolver answering with the addresses the test puts in it.
#[derive(Default)]
struct Records(Mutex<Vec<SocketAddr>>);

impl Resolve for Records {
    fn resolve<'a>(
        &'a self,
        _host: &'a str,
        _port: u16,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = std::io::Result<Vec<SocketAddr>>> + Send + 'a>,
    > {
        let addrs = self.0.lock().expect("lock").clone();
        Box::pin(async move { Ok(addrs) })
    }
}

/// A worker with its gRPC and HTTP (metrics) addresses.
struct Replica {
    child: Child,
    grpc: SocketAddr,
    http: SocketAddr,
}

impl Replica {
    fn start(bundle: &Path, tokens: &Path, redis: &str) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_cloud-worker"))
            .args(["--bundle", path_str(bundle), "--tokens", path_str(tokens)])
            .args(["--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0", "--redis-url", redis])
            .args(["--store-check-interval-ms", "200", "--drain-timeout", "20"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("cloud-worker starts");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let mut next = |prefix: &str| -> SocketAddr {
            let line = lines.next().expect("a line").expect("utf-8");
            line.strip_prefix(prefix)
                .unwrap_or_else(|| panic!("{line:?}"))
                .parse()
                .expect("address")
        };
        let grpc = next("cloud-worker listening on ");
        let http = next("cloud-worker http on ");
        Self { child, grpc, http }
    }

    /// NextToken calls answered so far.
    fn answered(&self) -> f64 {
        let out = Command::new("curl")
            .args(["-fsS", "--max-time", "5", &format!("http://{}/metrics", self.http)])
            .output()
            .expect("curl");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| {
                l.strip_prefix(r#"collm_cloud_rpc_requests_total{rpc="NextToken",code="OK"} "#)
            })
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0)
    }

    fn terminate(&mut self) {
        Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().expect("kill");
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn sessions_spread_over_discovered_replicas_follow_a_new_one_and_survive_a_draining_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bundle = tiny_bundle(dir.path());
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, "edge-a tok-a\n").expect("tokens");
    let redis = collm_testkit::RedisServer::start();
    let mut replicas: Vec<Replica> =
        (0..3).map(|_| Replica::start(&bundle, &tokens, &redis.url())).collect();

    let hidden = 64;
    let rows: Vec<f32> = (0..8 * hidden).map(|i| ((i % 13) as f32 - 6.0) * 0.07).collect();
    // The answers of undisturbed sessions, from one replica alone.
    let mut alone = GrpcCloud::connect(&format!("http://{}", replicas[0].grpc), "tok-a", hidden)
        .expect("connects");
    alone.upload(1, upload(0, &rows[..4 * hidden], hidden)).expect("upload");
    let first = alone.next_token(1, ask(3)).expect("answer");
    alone.upload(1, upload(4, &rows[4 * hidden..], hidden)).expect("upload");
    let second = alone.next_token(1, ask(7)).expect("answer");
    alone.end_session(1);
    let before: Vec<f64> = replicas.iter().map(Replica::answered).collect();

    let records = Arc::new(Records::default());
    *records.0.lock().expect("lock") = vec![replicas[0].grpc, replicas[1].grpc];
    let mut config = LinkConfig::new(vec!["http://collm-cloud.test:50051".into()], "tok-a", hidden);
    config.discovery =
        Some(Discovery { host: "collm-cloud-pods.test".into(), resolver: records.clone() });
    config.discovery_interval = Duration::from_millis(200);
    let mut cloud = GrpcCloud::with_config(config).expect("the link connects through discovery");

    // Sessions spread over the two replicas discovery lists.
    for s in 0..16 {
        cloud.upload(s, upload(0, &rows[..4 * hidden], hidden)).expect("upload");
        assert_eq!(cloud.next_token(s, ask(3)).expect("answer"), first, "session {s}");
    }
    let served: Vec<f64> = replicas.iter().zip(&before).map(|(r, b)| r.answered() - b).collect();
    assert!(served[0] > 0.0 && served[1] > 0.0, "both listed replicas serve: {served:?}");
    assert_eq!(served[2], 0.0, "an unlisted replica gets nothing: {served:?}");

    // A replica becomes ready (joins the records): new sessions reach it within seconds.
    records.0.lock().expect("lock").push(replicas[2].grpc);
    let joined = Instant::now();
    let mut s = 100;
    while replicas[2].answered() == before[2] {
        assert!(
            joined.elapsed() < Duration::from_secs(10),
            "the new replica got no session within 10 s"
        );
        cloud.upload(s, upload(0, &rows[..4 * hidden], hidden)).expect("upload");
        assert_eq!(cloud.next_token(s, ask(3)).expect("answer"), first);
        cloud.end_session(s);
        s += 1;
    }
    eprintln!("a new replica served its first session {:.1?} after it appeared", joined.elapsed());

    // Replica 0 drains: it turns unready on SIGTERM and leaves the records. Every open session
    // goes on, those it served included, with the answers of undisturbed sessions.
    replicas[0].terminate();
    records.0.lock().expect("lock").retain(|a| *a != replicas[0].grpc);
    for s in 0..16 {
        cloud.upload(s, upload(4, &rows[4 * hidden..], hidden)).expect("upload");
        assert_eq!(cloud.next_token(s, ask(7)).expect("no lost answer"), second, "session {s}");
    }
    for s in 0..16 {
        cloud.end_session(s);
    }
}
