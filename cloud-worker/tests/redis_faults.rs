//! The worker <-> Redis link fails under real processes (toxiproxy between a `cloud-worker` and a
//! `redis-server`): requests fail fast as UNAVAILABLE naming Redis instead of hanging, and the
//! session recovers once the link is back, with a re-upload when Redis lost it meanwhile. Heavy:
//! each test exports the tiny model and starts a worker.

mod common;
mod redis_support;

use std::time::{Duration, Instant};

use collm_cloud_client::GrpcCloud;
use collm_runtime::transport::CloudTransport;
use collm_testkit::{RedisServer, Toxiproxy};
use common::*;
use redis_support::*;

/// What the worker waits for Redis, at most, per context operation.
const REDIS_TIMEOUT_MS: &str = "1000";
/// Well above one operation's limit, well below anything that looks like a hang.
const FAST: Duration = Duration::from_secs(4);

fn assert_unavailable_naming_redis(
    result: Result<impl std::fmt::Debug, tonic::Status>,
    took: Duration,
) {
    let status = result.expect_err("Redis is out of reach");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(status.message().contains("Redis"), "the message names Redis: {}", status.message());
    assert!(took < FAST, "failed after {took:?}: that is a hang, not a fast failure");
}

#[test]
fn heavy_a_cut_redis_link_fails_fast_as_unavailable_and_the_session_recovers_with_a_reupload() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bundle = tiny_bundle(dir.path());
    let mut redis = RedisServer::start();
    let toxiproxy = Toxiproxy::start();
    let link = toxiproxy.proxy("worker-redis", &redis.addr());
    let url = format!("redis://{}", link.listen());
    let worker = Worker::start_with(
        &bundle,
        dir.path(),
        &["--redis-url", &url, "--redis-timeout-ms", REDIS_TIMEOUT_MS],
    );
    let mut raw = RawCloud::connect(&worker.url, "tok-a");
    let hidden = raw.hidden as usize;
    let rows = rows(4, raw.hidden, 3);
    let mut cloud = GrpcCloud::connect(&worker.url, "tok-a", hidden).expect("connects");

    // The reference: a session that is never interrupted, asked at the same positions.
    cloud.upload(2, upload(0, &rows[..3 * hidden], hidden)).expect("upload");
    cloud.next_token(2, ask(2)).expect("answer");
    cloud.upload(2, upload(3, &rows[3 * hidden..], hidden)).expect("upload");
    let reference = cloud.next_token(2, ask(3)).expect("answer");

    cloud.upload(1, upload(0, &rows[..3 * hidden], hidden)).expect("upload");
    cloud.next_token(1, ask(2)).expect("answer");
    let id = cloud.wire_session_id(1).expect("id").to_string();

    link.disable();
    let started = Instant::now();
    let asked = raw.next(&id, 2);
    assert_unavailable_naming_redis(asked, started.elapsed());
    let started = Instant::now();
    let uploaded = raw.upload(&id, 3, &rows[3 * hidden..]);
    assert_unavailable_naming_redis(uploaded, started.elapsed());
    // The worker itself keeps serving what needs no context.
    RawCloud::connect(&worker.url, "tok-b");

    // Redis loses everything while the worker cannot reach it.
    redis.restart();
    link.enable();
    cloud.upload(1, upload(3, &rows[3 * hidden..], hidden)).expect("upload");
    assert_eq!(cloud.next_token(1, ask(3)).expect("answer after the link returns"), reference);
    cloud.end_session(1);
    cloud.end_session(2);
}

#[test]
fn heavy_a_silent_or_slow_redis_link_never_hangs_a_request() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bundle = tiny_bundle(dir.path());
    let redis = RedisServer::start();
    let toxiproxy = Toxiproxy::start();
    let link = toxiproxy.proxy("worker-redis", &redis.addr());
    let url = format!("redis://{}", link.listen());
    let worker = Worker::start_with(
        &bundle,
        dir.path(),
        &["--redis-url", &url, "--redis-timeout-ms", REDIS_TIMEOUT_MS],
    );
    let mut raw = RawCloud::connect(&worker.url, "tok-a");
    let all = rows(4, raw.hidden, 4);
    assert_eq!(raw.upload("s", 0, first(&all, 3, raw.hidden)).expect("ack").persisted, 3);
    raw.next("s", 2).expect("answer");
    // Asked again, as every later request asks: the cached positions cut back to 2 and
    // position 2 run alone (a batched first pass rounds differently in the last bits).
    let reference = raw.next("s", 2).expect("answer");

    // Slow but within the limit: answered, just later.
    link.add_latency("slow", 100, 0);
    let started = Instant::now();
    assert_eq!(raw.next("s", 2).expect("a slow Redis still answers"), reference);
    assert!(started.elapsed() >= Duration::from_millis(200), "the latency toxic was in the way");
    link.remove_toxics("slow");

    // Silent: the link stays open but nothing comes back. Each request fails after the limit.
    link.add_blackhole("silent", 0);
    for _ in 0..2 {
        let started = Instant::now();
        let asked = raw.next("s", 2);
        assert_unavailable_naming_redis(asked, started.elapsed());
    }
    let started = Instant::now();
    let uploaded = raw.upload("s", 3, span(&all, 3, 4, raw.hidden));
    assert_unavailable_naming_redis(uploaded, started.elapsed());

    link.remove_toxic("silent");
    assert_eq!(raw.next("s", 2).expect("answered once Redis speaks again"), reference);
    assert_eq!(raw.upload("s", 3, span(&all, 3, 4, raw.hidden)).expect("ack").persisted, 4);
}
