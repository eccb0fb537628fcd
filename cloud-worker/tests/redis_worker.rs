//! Real `cloud-worker` processes over a real `redis-server`: a Redis-backed worker answers as
//! the in-memory one does, any replica sharing the Redis continues any session, and a Redis
//! that lost everything costs the edge a re-upload, not its answer. Heavy: each test exports the
//! tiny model and starts worker processes.

mod common;
mod redis_support;

use collm_cloud_client::GrpcCloud;
use collm_runtime::transport::CloudTransport;
use collm_testkit::{RedisCluster, RedisServer};
use common::*;
use redis_support::*;

#[test]
fn heavy_a_redis_backed_worker_answers_as_the_in_memory_worker_and_the_full_model() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bundle = tiny_bundle(dir.path());
    let redis = RedisServer::start();
    let prefix = "collm:test-ns:tiny:";
    let url = redis.url();
    let in_redis = Worker::start_with(
        &bundle,
        dir.path(),
        &["--redis-url", &url, "--redis-key-prefix", prefix],
    );
    let in_memory = Worker::start(&bundle, dir.path());

    let full = generate_json(&bundle, &["--mode", "full", "--max-tokens", "24"]);
    let never_exit = ["--threshold", "1.5", "--encoding", "f32", "--max-tokens", "24"];
    let remote = |worker: &Worker| {
        let mut args = never_exit.to_vec();
        args.extend(["--cloud", &worker.url, "--token", "tok-a"]);
        generate_json(&bundle, &args)
    };
    let (redis_run, memory_run) = (remote(&in_redis), remote(&in_memory));
    assert!(!field(&full, "tokens").is_empty());
    assert_eq!(
        field(&redis_run, "tokens"),
        field(&full, "tokens"),
        "f32 at θ > 1 is the full model"
    );
    assert_eq!(field(&redis_run, "tokens"), field(&memory_run, "tokens"));

    // Mixed edge and cloud tokens (θ at the median exit confidence), seeded sampling, f16.
    let standalone = generate_json(&bundle, &["--mode", "standalone", "--max-tokens", "16"]);
    let mut confidences: Vec<f64> =
        field(&standalone, "confidences").iter().filter_map(|c| c.as_f64()).collect();
    confidences.sort_by(f64::total_cmp);
    let median = confidences[confidences.len() / 2].to_string();
    let mixed =
        ["--threshold", &median, "--encoding", "f16", "--temperature", "0.8", "--seed", "5"];
    let mixed_run = |worker: &Worker| {
        let mut args = mixed.to_vec();
        args.extend(["--max-tokens", "16", "--cloud", &worker.url, "--token", "tok-b"]);
        generate_json(&bundle, &args)
    };
    let (a, b) = (mixed_run(&in_redis), mixed_run(&in_memory));
    let origins = field(&a, "origins");
    assert!(
        origins.iter().any(|o| o == "edge") && origins.iter().any(|o| o == "cloud"),
        "{origins:?}"
    );
    assert_eq!(field(&a, "tokens"), field(&b, "tokens"));
    assert_eq!(field(&a, "origins"), field(&b, "origins"));

    // Everything the worker wrote is under its prefix; ended sessions left no rows behind.
    let keys = redis.cli(&["--scan", "--pattern", "*"]);
    let keys: Vec<&str> = keys.lines().collect();
    assert!(!keys.is_empty(), "the worker used Redis");
    assert!(keys.iter().all(|k| k.starts_with(prefix)), "{keys:?}");
    assert!(!keys.iter().any(|k| k.ends_with(":rows")), "sessions were ended: {keys:?}");
}

#[test]
fn heavy_a_worker_on_redis_cluster_answers_as_the_full_model() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bundle = tiny_bundle(dir.path());
    let cluster = RedisCluster::start(3);
    let seeds = cluster.urls().join(",");
    let worker = Worker::start_with(&bundle, dir.path(), &["--redis-url", &seeds]);
    let full = generate_json(&bundle, &["--mode", "full", "--max-tokens", "16"]);
    let remote = generate_json(
        &bundle,
        &["--threshold", "1.5", "--encoding", "f32", "--max-tokens", "16"]
            .into_iter()
            .chain(["--cloud", &worker.url, "--token", "tok-a"])
            .collect::<Vec<_>>(),
    );
    assert_eq!(field(&remote, "tokens"), field(&full, "tokens"));
    // Sessions spread over the nodes by their hash tag; the client's own keys live on one.
    let mut raw = RawCloud::connect(&worker.url, "tok-a");
    let all = rows(2, raw.hidden, 9);
    for s in 0..12 {
        raw.upload(&format!("spread-{s}"), 0, &all).expect("stored");
    }
    let holding: Vec<u64> =
        cluster.nodes().iter().map(|n| n.cli(&["DBSIZE"]).parse().expect("count")).collect();
    assert!(holding.iter().filter(|&&n| n > 0).count() >= 2, "keys per node: {holding:?}");
}

#[test]
fn heavy_a_session_continues_on_another_replica_sharing_redis() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bundle = tiny_bundle(dir.path());
    let redis = RedisServer::start();
    let url = redis.url();
    let one = Worker::start_with(&bundle, dir.path(), &["--redis-url", &url]);
    let two = Worker::start_with(&bundle, dir.path(), &["--redis-url", &url]);
    let (mut w1, mut w2) =
        (RawCloud::connect(&one.url, "tok-a"), RawCloud::connect(&two.url, "tok-a"));
    let h = w1.hidden;
    let all = rows(8, h, 1);

    // Part of the session goes to worker 1 only; worker 2 answers from what Redis holds.
    assert_eq!(w1.upload("chat", 0, first(&all, 5, h)).expect("ack").persisted, 5);
    let from_two = w2.next("chat", 4).expect("worker 2 continues the session");
    let from_one = w1.next("chat", 4).expect("worker 1 answers too");
    assert_eq!(from_two, from_one, "another replica gives the same answer");

    // The session grows on worker 2 and both continue from their caches to the same answer.
    assert_eq!(w2.upload("chat", 5, span(&all, 5, 8, h)).expect("ack").persisted, 8);
    let (on_two, on_one) =
        (w2.next("chat", 7).expect("answer"), w1.next("chat", 7).expect("answer"));
    assert_eq!(on_two, on_one);
    assert_eq!(on_one.persisted, 8);

    // A retransmission through either replica stores nothing twice.
    assert_eq!(w1.upload("chat", 3, span(&all, 3, 8, h)).expect("ack").persisted, 8);
    // Another client cannot see the session on any replica.
    let mut b = RawCloud::connect(&two.url, "tok-b");
    assert_eq!(b.next("chat", 4).expect_err("not b's").code(), tonic::Code::NotFound);
    // Ending on one replica ends it everywhere.
    assert!(w2.end("chat").expect("ends"));
    assert_eq!(w1.next("chat", 4).expect_err("ended").code(), tonic::Code::NotFound);
}

#[test]
fn heavy_a_redis_restart_without_persistence_costs_a_reupload_not_the_answer() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bundle = tiny_bundle(dir.path());
    let mut redis = RedisServer::start();
    let worker = Worker::start_with(&bundle, dir.path(), &["--redis-url", &redis.url()]);
    let hidden = RawCloud::connect(&worker.url, "tok-a").hidden as usize;
    let rows = rows(4, hidden as u32, 2);
    let mut cloud = GrpcCloud::connect(&worker.url, "tok-a", hidden).expect("connects");

    // The references: sessions that are never interrupted, computed as the worker will
    // compute the interrupted one: extending its KV cache by one row, or from position 0.
    cloud.upload(2, upload(0, &rows[..3 * hidden], hidden)).expect("upload");
    cloud.next_token(2, ask(2)).expect("answer");
    cloud.upload(2, upload(3, &rows[3 * hidden..], hidden)).expect("upload");
    let extended = cloud.next_token(2, ask(3)).expect("answer");
    cloud.upload(3, upload(0, &rows, hidden)).expect("upload");
    let from_scratch = cloud.next_token(3, ask(3)).expect("answer");
    assert_eq!(extended.pick.token, from_scratch.pick.token);

    cloud.upload(1, upload(0, &rows[..3 * hidden], hidden)).expect("upload");
    cloud.next_token(1, ask(2)).expect("answer");
    // Redis restarts empty before the next upload: the cloud answers it with `missing_from`.
    redis.restart();
    cloud.upload(1, upload(3, &rows[3 * hidden..], hidden)).expect("upload");
    // The worker's KV cache still covers positions 0..3: it extends it by the re-uploaded row.
    assert_eq!(cloud.next_token(1, ask(3)).expect("answer after re-upload"), extended);

    // Redis restarts empty after every row was acknowledged: the request finds nothing, the
    // edge uploads everything again, and the worker (its cache already past position 3) cuts
    // its cache back to position 3 and runs it again: the extended session's answer.
    redis.restart();
    assert_eq!(cloud.next_token(1, ask(3)).expect("answer after re-upload"), extended);
    for session in 1..=3 {
        cloud.end_session(session);
    }
}
