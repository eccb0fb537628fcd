//! With an OTLP endpoint, a worker exports a span per call that continues the edge's trace: the
//! call's span has the edge's trace id and the edge's span as parent, the handler's span nests
//! in it, and every span names the service `cloud-worker`. A fake OTLP/gRPC collector
//! (`collm_testkit::FakeCollector`) receives what a real one would; spans still buffered are flushed when SIGTERM stops the
//! worker.

mod common;
mod serving_support;

use std::time::Duration;

use collm_protocol::outgoing::{encode_upload, next_token_request};
use collm_protocol::trace::{self, TraceParent};
use collm_protocol::{BearerToken, CloudServiceClient, Encoding, Sampling, SessionId, pb};
use collm_testkit::FakeCollector;
use common::{path_str, tiny_bundle};
use serving_support::*;
use tokio_stream::StreamExt;
use tonic::Request;

const EDGE: TraceParent =
    TraceParent { trace_id: [0x5a; 16], parent_id: [0x1b; 8], flags: 1, state: None };

async fn edge_calls(url: String) -> anyhow::Result<()> {
    let channel = tonic::transport::Endpoint::from_shared(url)?.connect().await?;
    let mut a = CloudServiceClient::with_interceptor(channel, BearerToken::new("tok-a")?);
    let mut health = Request::new(pb::HealthRequest {});
    trace::inject(health.metadata_mut(), &EDGE);
    let hidden = a.health(health).await?.into_inner().hidden_size;
    let s = SessionId::parse("traced")?;
    let rows: Vec<f32> = (0..2 * hidden).map(|i| (i % 3) as f32 * 0.2).collect();
    let chunk = encode_upload(&s, 0, hidden, Encoding::F32, &rows);
    let _: Vec<_> = a.upload(tokio_stream::iter([chunk])).await?.into_inner().collect().await;
    let mut ask = Request::new(next_token_request(&s, 1, Sampling::default(), 0.5, 0));
    trace::inject(ask.metadata_mut(), &EDGE);
    a.next_token(ask).await?;
    Ok(())
}

#[test]
fn spans_continue_the_edges_trace_and_reach_the_otlp_collector() {
    // Multi-threaded, so the client's connection closes once the calls are done and the
    // worker's graceful shutdown does not wait for it.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let collector = FakeCollector::start();
    let otlp = collector.endpoint.clone();

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
        "--otlp-endpoint",
        &otlp,
    ]);
    rt.block_on(edge_calls(worker.url())).expect("the edge's calls are answered");
    worker.signal_term();
    let status = worker.wait_exit(Duration::from_secs(20)).expect("exits");
    assert!(status.success(), "{status}");

    let spans = collector.spans();
    assert!(spans.iter().all(|s| s.service == "cloud-worker"), "{spans:#?}");
    let in_edge_trace: Vec<_> =
        spans.iter().filter(|s| s.trace_id == EDGE.trace_id.to_vec()).collect();
    let call = |name: &str| {
        in_edge_trace
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("no {name} span in the edge's trace: {spans:#?}"))
    };
    for rpc in ["collm.v1.CloudService/Health", "collm.v1.CloudService/NextToken"] {
        assert_eq!(call(rpc).parent_span_id, EDGE.parent_id.to_vec(), "{rpc}'s parent");
    }
    let handler = call("next_token");
    assert_eq!(handler.parent_span_id, call("collm.v1.CloudService/NextToken").span_id);
    let upload = spans
        .iter()
        .find(|s| s.name == "collm.v1.CloudService/Upload")
        .expect("the upload without trace context is traced too");
    assert_ne!(upload.trace_id, EDGE.trace_id.to_vec(), "a call without context starts a trace");
}
