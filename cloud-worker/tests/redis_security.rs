//! Redis AUTH and TLS between a real `cloud-worker` and a real `redis-server`: the password and
//! certificates in the worker's settings are used, and wrong credentials stop the worker at
//! startup with one line naming Redis and the credentials (never printing the password).
//! Heavy: each test exports the tiny model and starts workers.

mod common;
mod redis_support;

use collm_testkit::RedisServer;
use common::*;
use redis_support::*;

/// A session uploaded and answered through `worker`, i.e. the worker really used its Redis.
fn serves_a_session(worker: &Worker) {
    let mut raw = RawCloud::connect(&worker.url, "tok-a");
    let all = rows(3, raw.hidden, 5);
    assert_eq!(raw.upload("s", 0, &all).expect("stored in Redis").persisted, 3);
    raw.next("s", 2).expect("answered from Redis");
}

#[test]
fn heavy_redis_auth_uses_the_password_and_a_wrong_one_stops_the_worker_at_startup() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bundle = tiny_bundle(dir.path());
    let redis = RedisServer::builder().password("s3cret-pw").start();
    let worker = Worker::start_with(&bundle, dir.path(), &["--redis-url", &redis.url()]);
    serves_a_session(&worker);
    assert!(redis.cli(&["DBSIZE"]).parse::<u64>().expect("count") > 0, "keys were written");

    for (url, what) in [
        (redis.url_with_password(Some("wrong-pw")), "a wrong password"),
        (redis.url_with_password(None), "no password"),
    ] {
        let stderr = startup_error(&bundle, dir.path(), &["--redis-url", &url]);
        let lines: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error: ")).collect();
        assert_eq!(lines.len(), 1, "{what}: one error line expected: {stderr}");
        assert!(lines[0].contains("Redis") && lines[0].contains("credentials"), "{what}: {stderr}");
        assert!(!stderr.contains("wrong-pw"), "{what}: the password must not be printed: {stderr}");
    }
}

#[test]
fn heavy_redis_over_tls_with_a_private_ca_and_client_certificates() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bundle = tiny_bundle(dir.path());
    let redis = RedisServer::builder().tls_client_auth().password("tls-pw").start();
    let tls = redis.tls_files().expect("tls files").clone();
    let path = |p: &std::path::Path| p.to_str().expect("utf-8").to_owned();
    let (ca, cert, key) = (path(&tls.ca_cert), path(&tls.client_cert), path(&tls.client_key));
    assert!(redis.url().starts_with("rediss://"));
    let worker = Worker::start_with(
        &bundle,
        dir.path(),
        &[
            "--redis-url",
            &redis.url(),
            "--redis-ca-cert",
            &ca,
            "--redis-client-cert",
            &cert,
            "--redis-client-key",
            &key,
        ],
    );
    serves_a_session(&worker);

    // Without the private CA the server's certificate is not trusted: requests fail as
    // UNAVAILABLE, saying why, instead of talking to an unverified server.
    let untrusting = Worker::start_with(
        &bundle,
        dir.path(),
        &["--redis-url", &redis.url(), "--redis-client-cert", &cert, "--redis-client-key", &key],
    );
    let mut raw = RawCloud::connect(&untrusting.url, "tok-a");
    let status = raw.upload("s", 0, &rows(1, raw.hidden, 6)).expect_err("untrusted server");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(
        status.message().contains("Redis") && status.message().contains("certificate"),
        "{status:?}"
    );
}
