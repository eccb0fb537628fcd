//! W3C trace context across processes. The header format is the protocol crate's
//! [`TraceParent`]; here it is tied to spans: a server span continues the trace its caller
//! names, and a client writes the current span's context into the request it sends.
//!
//! Without trace export (no OTLP endpoint) spans carry no OpenTelemetry context: nothing is
//! injected, and a received `traceparent` is only recorded as the span's `trace_id` field so logs
//! still correlate with the caller's trace.

use opentelemetry::Context;
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

pub use collm_protocol::trace::{Carrier, TRACEPARENT, TraceParent};

/// Makes `span` a child of the caller's span named by the carrier's `traceparent`, and records
/// the trace id in the span's `trace_id` field (when it declares one). Call before the span is
/// first entered: a started span keeps the parent it started with. Returns the caller's
/// context, `None` when it sent none or a malformed one (the span then starts a new trace).
pub fn continue_trace(span: &Span, carrier: &impl Carrier) -> Option<TraceParent> {
    let parent = collm_protocol::trace::extract(carrier);
    if let Some(p) = &parent {
        let remote = SpanContext::new(
            TraceId::from_bytes(p.trace_id),
            SpanId::from_bytes(p.parent_id),
            TraceFlags::new(p.flags),
            true,
            TraceState::default(),
        );
        // Fails only when no OpenTelemetry layer is installed (export off) or the span is
        // disabled or already started; the trace id is still recorded for the logs.
        let _ = span.set_parent(Context::new().with_remote_span_context(remote));
    }
    let trace_id = traceparent(span).map(|t| t.trace_id).or(parent.map(|p| p.trace_id));
    if let Some(id) = trace_id {
        span.record("trace_id", tracing::field::display(hex(&id)));
    }
    parent
}

/// The W3C context of `span` (its trace and its own span id), `None` when spans are not exported.
pub fn traceparent(span: &Span) -> Option<TraceParent> {
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    sc.is_valid().then(|| TraceParent {
        trace_id: sc.trace_id().to_bytes(),
        parent_id: sc.span_id().to_bytes(),
        flags: sc.trace_flags().to_u8(),
    })
}

/// Writes `span`'s context into an outgoing request's metadata or headers, so the receiver's
/// spans join this trace. Does nothing when spans are not exported.
pub fn inject(span: &Span, carrier: &mut impl Carrier) {
    if let Some(tp) = traceparent(span) {
        collm_protocol::trace::inject(carrier, &tp);
    }
}

/// [`inject`] with the current span: for a tonic interceptor or a request builder.
pub fn inject_current(carrier: &mut impl Carrier) {
    inject(&Span::current(), carrier);
}

/// The span of one inbound gRPC call (for tonic's `Server::trace_fn`): named after the method,
/// a child of the caller's span when it sent a `traceparent`. Every handler span nests in it.
pub fn grpc_server_span(req: &http::Request<()>) -> Span {
    let method = req.uri().path();
    let span = tracing::info_span!(
        "grpc",
        otel.name = method.trim_start_matches('/'),
        otel.kind = "server",
        rpc.system = "grpc",
        rpc.method = method,
        trace_id = tracing::field::Empty,
    );
    continue_trace(&span, req.headers());
    span
}

/// The span of one inbound HTTP request (for an axum/tower middleware), continuing the
/// caller's trace like [`grpc_server_span`].
pub fn http_server_span<B>(req: &http::Request<B>) -> Span {
    let span = tracing::info_span!(
        "http",
        otel.name = format!("{} {}", req.method(), req.uri().path()),
        otel.kind = "server",
        http.request.method = %req.method(),
        url.path = req.uri().path(),
        trace_id = tracing::field::Empty,
    );
    continue_trace(&span, req.headers());
    span
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
