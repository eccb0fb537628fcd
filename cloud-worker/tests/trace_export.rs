//! With an OTLP endpoint, a worker exports a span per call that continues the edge's trace: the
//! call's span has the edge's trace id and the edge's span as parent, the handler's span nests
//! in it, and every span names the service `cloud-worker`. A fake OTLP/gRPC collector in the
//! test receives what a real one would; spans still buffered are flushed when SIGTERM stops the
//! worker.

mod common;
mod serving_support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use collm_protocol::outgoing::{encode_upload, next_token_request};
use collm_protocol::trace::{self, TraceParent};
use collm_protocol::{BearerToken, CloudServiceClient, Encoding, Sampling, SessionId, pb};
use common::{path_str, tiny_bundle};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use serving_support::*;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status};

/// A received span: its service, name, trace, own and parent ids.
#[derive(Debug, Clone)]
struct Received {
    service: String,
    name: String,
    trace_id: Vec<u8>,
    span_id: Vec<u8>,
    parent_span_id: Vec<u8>,
}

#[derive(Default, Clone)]
struct Collector {
    spans: Arc<Mutex<Vec<Received>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        req: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let mut spans = self.spans.lock().map_err(|_| Status::internal("poisoned"))?;
        for rs in req.into_inner().resource_spans {
            let service = rs
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| kv.value.as_ref()?.value.clone())
                .map(|v| match v {
                    Value::StringValue(s) => s,
                    other => format!("{other:?}"),
                })
                .unwrap_or_default();
            for span in rs.scope_spans.into_iter().flat_map(|s| s.spans) {
                spans.push(Received {
                    service: service.clone(),
                    name: span.name,
                    trace_id: span.trace_id,
                    span_id: span.span_id,
                    parent_span_id: span.parent_span_id,
                });
            }
        }
        Ok(Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

const EDGE: TraceParent = TraceParent { trace_id: [0x5a; 16], parent_id: [0x1b; 8], flags: 1 };

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
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let collector = Collector::default();
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).expect("bind");
    let otlp = format!("http://{}", listener.local_addr().expect("addr"));
    rt.spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(collector.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );

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

    let spans = collector.spans.lock().expect("spans").clone();
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
