//! With spans exported, a server span continues the trace its caller sent (same trace id, the
//! caller's span as parent), and what a client injects names the span it sends from. Spans go
//! to an in-memory exporter so the test sees exactly what a collector would receive.

use std::collections::HashMap;

use collm_telemetry::propagation::{
    TRACEPARENT, TRACESTATE, TraceParent, continue_trace, grpc_server_span, inject, traceparent,
};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
use tracing_subscriber::layer::SubscriberExt;

const CALLER: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
/// Two vendors' entries, as a caller behind a traced gateway sends them.
const CALLER_STATE: &str = "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7";

fn exporting() -> (SdkTracerProvider, InMemorySpanExporter, impl tracing::Subscriber) {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder().with_simple_exporter(exporter.clone()).build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
    (provider, exporter, subscriber)
}

#[test]
fn a_server_span_continues_the_callers_trace_and_injects_its_own_span() -> anyhow::Result<()> {
    let (provider, exporter, subscriber) = exporting();
    let caller =
        TraceParent { state: Some(CALLER_STATE.to_owned()), ..TraceParent::parse(CALLER)? };
    let sent = tracing::subscriber::with_default(subscriber, || {
        let span = tracing::info_span!("handle", trace_id = tracing::field::Empty);
        let carrier = HashMap::from([
            (TRACEPARENT.to_owned(), CALLER.to_owned()),
            (TRACESTATE.to_owned(), CALLER_STATE.to_owned()),
        ]);
        assert_eq!(continue_trace(&span, &carrier).as_ref(), Some(&caller));
        let _entered = span.enter();
        let child = tracing::info_span!("call_downstream");
        let mut outgoing = HashMap::new();
        inject(&child, &mut outgoing);
        let own = traceparent(&child);
        (outgoing, own)
    });
    provider.force_flush()?;
    let spans = exporter.get_finished_spans()?;
    let handle = spans.iter().find(|s| s.name == "handle").expect("handle span exported");
    assert_eq!(handle.span_context.trace_id().to_bytes(), caller.trace_id);
    assert_eq!(handle.parent_span_id.to_bytes(), caller.parent_id);
    assert!(handle.parent_span_is_remote);
    assert_eq!(handle.span_context.trace_state().header(), CALLER_STATE, "tracestate kept");

    let (outgoing, own) = sent;
    let mut injected =
        TraceParent::parse(outgoing.get(TRACEPARENT).expect("traceparent injected"))?;
    assert_eq!(outgoing.get(TRACESTATE).map(String::as_str), Some(CALLER_STATE), "sent on");
    injected.state = outgoing.get(TRACESTATE).cloned();
    assert_eq!(Some(&injected), own.as_ref());
    assert_eq!(injected.trace_id, caller.trace_id, "the downstream call stays in the trace");
    let child = spans.iter().find(|s| s.name == "call_downstream").expect("child exported");
    assert_eq!(child.span_context.span_id().to_bytes(), injected.parent_id);
    assert_eq!(child.parent_span_id, handle.span_context.span_id());
    Ok(())
}

#[test]
fn a_grpc_request_span_is_named_after_the_method_and_joins_the_trace() -> anyhow::Result<()> {
    let (provider, exporter, subscriber) = exporting();
    let request = http::Request::builder()
        .uri("http://cloud/collm.v1.CloudService/NextToken")
        .header(TRACEPARENT, CALLER)
        .body(())?;
    tracing::subscriber::with_default(subscriber, || {
        let span = grpc_server_span(&request);
        span.in_scope(|| tracing::info!("answered"));
    });
    provider.force_flush()?;
    let spans = exporter.get_finished_spans()?;
    let [span] = spans.as_slice() else { panic!("one span expected, got {spans:?}") };
    assert_eq!(span.name, "collm.v1.CloudService/NextToken");
    assert_eq!(span.span_kind, opentelemetry::trace::SpanKind::Server);
    assert_eq!(span.span_context.trace_id().to_bytes(), TraceParent::parse(CALLER)?.trace_id);
    Ok(())
}

#[test]
fn without_export_nothing_is_injected_and_a_missing_context_is_no_error() {
    let span = tracing::info_span!("no subscriber");
    let mut outgoing: HashMap<String, String> = HashMap::new();
    inject(&span, &mut outgoing);
    assert!(outgoing.is_empty());
    assert_eq!(continue_trace(&span, &HashMap::new()), None);
}
