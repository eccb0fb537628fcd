//! One trace per request, spanning edge and cloud: a caller's `traceparent` is continued by the
//! edge agent's HTTP span, the agent's calls to the cloud worker carry it on (with the caller's
//! `tracestate`, unchanged), and both processes export their spans to one OTLP collector (a fake
//! one, receiving what a real one would).

mod common;

use collm_testkit::{FakeCollector, ReceivedSpan};
use common::*;
use serde_json::json;

const TRACE_ID: [u8; 16] = [0x4b; 16];
const CALLER_SPAN: [u8; 8] = [0x2c; 8];
/// What a traced gateway in front of the agent might have added.
const CALLER_STATE: &str = "gateway=ab12cd,vendor2=x:y";

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn a_request_is_one_trace_across_the_edge_agent_and_the_cloud_worker() {
    let collector = FakeCollector::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let bundle = tiny_bundle(dir.path());
    let otlp = ["--otlp-endpoint", collector.endpoint.as_str()];
    let mut w = worker(&bundle, dir.path(), &otlp);
    // θ > 1: every token is the cloud's, so the request certainly calls the worker.
    let mut extra = vec!["--threshold", "1.5"];
    extra.extend(otlp);
    let mut a = agent(&bundle, &[&w.addr], &extra);

    let traceparent = format!("00-{}-{}-01", hex(&TRACE_ID), hex(&CALLER_SPAN));
    let body = completion(6, json!({})).to_string();
    let mut resp = ureq::post(&format!("http://{}/v1/completions", a.addr))
        .header("content-type", "application/json")
        .header("traceparent", &traceparent)
        .header("tracestate", CALLER_STATE)
        .send(body.as_bytes())
        .expect("the agent answers");
    assert_eq!(resp.status().as_u16(), 200, "{:?}", resp.body_mut().read_to_string());
    // Both flush what they buffered when they stop; the agent first, so its link closes.
    assert!(a.terminate().success());
    assert!(w.terminate().success());

    let spans = collector.spans();
    let in_trace: Vec<&ReceivedSpan> =
        spans.iter().filter(|s| s.trace_id == TRACE_ID.to_vec()).collect();
    let of = |service: &str| -> Vec<&ReceivedSpan> {
        in_trace.iter().copied().filter(|s| s.service == service).collect()
    };
    let (edge, cloud) = (of("edge-agent"), of("cloud-worker"));
    assert!(!edge.is_empty(), "no edge-agent span in the caller's trace: {spans:#?}");
    let request = edge
        .iter()
        .find(|s| s.parent_span_id == CALLER_SPAN.to_vec())
        .unwrap_or_else(|| panic!("no edge span is the caller's child: {edge:#?}"));
    let asked = cloud
        .iter()
        .find(|s| s.name == "collm.v1.CloudService/NextToken")
        .unwrap_or_else(|| panic!("no NextToken span in the caller's trace: {spans:#?}"));
    // The cloud's call hangs off a span of the edge agent, within the same trace.
    let edge_ids: Vec<&Vec<u8>> = edge.iter().map(|s| &s.span_id).collect();
    assert!(
        edge_ids.contains(&&asked.parent_span_id),
        "the cloud's NextToken span's parent is not an edge span: {asked:#?} vs {edge:#?}"
    );
    assert!(!request.name.is_empty());
    // The caller's tracestate reaches the cloud worker's spans, as it reached the edge's.
    assert_eq!(request.trace_state, CALLER_STATE, "{request:#?}");
    assert_eq!(asked.trace_state, CALLER_STATE, "the worker's NextToken span: {asked:#?}");
}
