//! What operating a worker looks like from outside: `/healthz`, `/readyz` and `/metrics` over
//! HTTP, the standard gRPC health service, metrics that count what the worker did, readiness
//! that follows the context store, and a SIGTERM that turns the worker not ready while it
//! finishes the call in flight. Real worker processes on loopback.

mod common;
mod serving_support;

use std::time::Duration;

use collm_protocol::outgoing::{encode_upload, next_token_request};
use collm_protocol::{BearerToken, CloudServiceClient, Encoding, Sampling, SessionId, pb};
use collm_testkit::RedisServer;
use common::{path_str, tiny_bundle};
use serving_support::*;
use tokio_stream::StreamExt;
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime")
}

/// Polls `/metrics` until `series` reads `value` (counters of streams land when they end).
fn metric_reaches(worker: &ServingWorker, series: &str, value: f64) -> String {
    let mut page = String::new();
    let reached = collm_testkit::wait_until(Duration::from_secs(10), || {
        page = worker.http_get("/metrics").1;
        sample(&page, series) == value
    });
    assert!(reached, "{series} never reached {value}:\n{page}");
    page
}

async fn grpc_health(url: &str) -> anyhow::Result<i32> {
    let channel = tonic::transport::Endpoint::from_shared(url.to_owned())?.connect().await?;
    let mut client = HealthClient::new(channel);
    let reply = client.check(HealthCheckRequest { service: String::new() }).await?;
    Ok(reply.into_inner().status)
}

async fn traffic(url: String) -> anyhow::Result<u32> {
    let channel = tonic::transport::Endpoint::from_shared(url)?.connect().await?;
    let mut a = CloudServiceClient::with_interceptor(channel.clone(), BearerToken::new("tok-a")?);
    let hidden = a.health(pb::HealthRequest {}).await?.into_inner().hidden_size;
    let rows: Vec<f32> = (0..4 * hidden).map(|i| ((i % 11) as f32 - 5.0) * 0.05).collect();
    let s = SessionId::parse("metered")?;
    let chunk = encode_upload(&s, 0, hidden, Encoding::F16, &rows);
    let acks: Vec<_> = a.upload(tokio_stream::iter([chunk])).await?.into_inner().collect().await;
    assert!(acks.iter().all(Result::is_ok), "{acks:?}");
    let ask = |after| next_token_request(&s, after, Sampling::default(), 0.5, 0);
    a.next_token(ask(3)).await?; // built: 4 positions computed
    a.next_token(ask(3)).await?; // the cache is past position 3: cut back, 1 more
    let unknown = SessionId::parse("never-uploaded")?;
    let err = a.next_token(next_token_request(&unknown, 0, Sampling::default(), 0.5, 0)).await;
    assert_eq!(err.expect_err("unknown session").code(), Code::NotFound);
    let mut stranger = CloudServiceClient::with_interceptor(channel, BearerToken::new("tok-x")?);
    let err = stranger.next_token(ask(3)).await.expect_err("unknown token");
    assert_eq!(err.code(), Code::Unauthenticated);
    Ok(hidden)
}

#[test]
fn metrics_count_calls_uploads_and_cache_use_and_both_health_endpoints_answer() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bundle = tiny_bundle(dir.path());
    let tokens = tokens_file(dir.path());
    let worker = ServingWorker::start(&[
        "--bundle",
        path_str(&bundle),
        "--tokens",
        path_str(&tokens),
        "--listen",
        "127.0.0.1:0",
        "--http-listen",
        "127.0.0.1:0",
        "--store-check-interval-ms",
        "100",
    ]);
    assert_eq!(worker.http_get("/healthz"), (200, "ok\n".into()));
    assert_eq!(worker.http_get("/readyz"), (200, "ready\n".into()));
    let rt = runtime();
    let status = rt.block_on(grpc_health(&worker.url())).expect("grpc health answers");
    assert_eq!(status, ServingStatus::Serving as i32);
    let hidden = rt.block_on(traffic(worker.url())).expect("traffic");

    let page =
        metric_reaches(&worker, r#"collm_cloud_rpc_requests_total{rpc="Upload",code="OK"}"#, 1.0);
    let row_bytes = 2.0 * f64::from(hidden);
    for (series, value) in [
        (r#"collm_cloud_rpc_requests_total{rpc="NextToken",code="OK"}"#, 2.0),
        (r#"collm_cloud_rpc_requests_total{rpc="NextToken",code="NOT_FOUND"}"#, 1.0),
        (r#"collm_cloud_rpc_requests_total{rpc="NextToken",code="UNAUTHENTICATED"}"#, 1.0),
        (r#"collm_cloud_rpc_requests_total{rpc="Health",code="OK"}"#, 1.0),
        (r#"collm_cloud_rpc_duration_seconds_count{rpc="NextToken",code="OK"}"#, 2.0),
        ("collm_cloud_rpc_in_flight", 0.0),
        ("collm_cloud_upload_rows_total", 4.0),
        ("collm_cloud_upload_bytes_total", 4.0 * row_bytes),
        ("collm_cloud_sessions_opened_total", 1.0),
        ("collm_cloud_kv_cache_hits_total", 1.0),
        ("collm_cloud_kv_cache_misses_total", 1.0),
        ("collm_cloud_kv_cache_rebuilds_total", 0.0),
        ("collm_cloud_positions_computed_total", 5.0),
        ("collm_cloud_kv_cached_sessions", 1.0),
    ] {
        assert_eq!(sample(&page, series), value, "{series} in\n{page}");
    }
    // The store is checked every 100 ms: its size shows up without any request.
    metric_reaches(&worker, "collm_cloud_context_bytes", 4.0 * row_bytes);
    metric_reaches(&worker, "collm_cloud_context_store_up", 1.0);
    let (code, _) = worker.http_get("/nothing-here");
    assert_eq!(code, 404);
}

#[test]
fn sigterm_turns_the_worker_not_ready_and_the_upload_in_flight_still_completes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bundle = tiny_bundle(dir.path());
    let tokens = tokens_file(dir.path());
    let mut worker = ServingWorker::start(&[
        "--bundle",
        path_str(&bundle),
        "--tokens",
        path_str(&tokens),
        "--listen",
        "127.0.0.1:0",
        "--http-listen",
        "127.0.0.1:0",
        "--drain-timeout",
        "30",
    ]);
    let rt = runtime();
    rt.block_on(async {
        let channel = tonic::transport::Endpoint::from_shared(worker.url())?.connect().await?;
        let mut a = CloudServiceClient::with_interceptor(channel, BearerToken::new("tok-a")?);
        let hidden = a.health(pb::HealthRequest {}).await?.into_inner().hidden_size;
        let rows: Vec<f32> = (0..2 * hidden).map(|i| (i % 7) as f32 * 0.1).collect();
        let s = SessionId::parse("in-flight")?;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let mut acks =
            a.upload(tokio_stream::wrappers::ReceiverStream::new(rx)).await?.into_inner();
        tx.send(encode_upload(&s, 0, hidden, Encoding::F16, &rows)).await?;
        assert_eq!(acks.message().await?.map(|a| a.persisted), Some(2));

        worker.signal_term();
        let mut readyz = (0, String::new());
        let drained = collm_testkit::wait_until(Duration::from_secs(10), || {
            readyz = worker.http_get("/readyz");
            readyz.0 == 503
        });
        assert!(drained, "/readyz still {readyz:?} after SIGTERM");
        assert_eq!(readyz.1, "not ready: shutting down\n");
        assert_eq!(worker.wait_exit(Duration::from_millis(300)), None, "left a call unfinished");

        // The stream opened before the signal is still served to its end.
        tx.send(encode_upload(&s, 2, hidden, Encoding::F16, &rows)).await?;
        assert_eq!(acks.message().await?.map(|a| a.persisted), Some(4));
        drop(tx);
        assert_eq!(acks.message().await?, None);
        anyhow::Ok(())
    })
    .expect("the in-flight upload completes");
    let status = worker.wait_exit(Duration::from_secs(10)).expect("exits once drained");
    assert!(status.success(), "worker exited with {status}");
}

#[test]
fn heavy_readiness_follows_the_context_store_and_recovers_with_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bundle = tiny_bundle(dir.path());
    let tokens = tokens_file(dir.path());
    let mut redis = RedisServer::start();
    let url = redis.url();
    let worker = ServingWorker::start(&[
        "--bundle",
        path_str(&bundle),
        "--tokens",
        path_str(&tokens),
        "--listen",
        "127.0.0.1:0",
        "--http-listen",
        "127.0.0.1:0",
        "--redis-url",
        &url,
        "--redis-timeout-ms",
        "300",
        "--store-check-interval-ms",
        "100",
    ]);
    let rt = runtime();
    let readyz_becomes = |code: u16| {
        let mut last = (0, String::new());
        let ok = collm_testkit::wait_until(Duration::from_secs(15), || {
            last = worker.http_get("/readyz");
            last.0 == code
        });
        assert!(ok, "/readyz never answered {code}, last {last:?}");
        last.1
    };
    readyz_becomes(200);
    metric_reaches(&worker, "collm_cloud_context_store_up", 1.0);

    redis.stop();
    let why = readyz_becomes(503);
    assert!(why.contains("context store"), "{why}");
    metric_reaches(&worker, "collm_cloud_context_store_up", 0.0);
    let status = rt.block_on(grpc_health(&worker.url())).expect("grpc health answers");
    assert_eq!(status, ServingStatus::NotServing as i32);
    let serving = rt.block_on(async {
        let channel = tonic::transport::Endpoint::from_shared(worker.url())?.connect().await?;
        let mut a = CloudServiceClient::with_interceptor(channel, BearerToken::new("tok-a")?);
        anyhow::Ok(a.health(pb::HealthRequest {}).await?.into_inner().serving)
    });
    assert!(!serving.expect("Health answers"), "Health says serving while the store is down");

    redis.restart();
    readyz_becomes(200);
    let status = rt.block_on(grpc_health(&worker.url())).expect("grpc health answers");
    assert_eq!(status, ServingStatus::Serving as i32);
}
