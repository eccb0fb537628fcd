//! W3C trace context across processes, read and written by the OpenTelemetry SDK's
//! [`TraceContextPropagator`] (`traceparent` and `tracestate`): a server span continues the
//! trace its caller names, keeping the caller's `tracestate`, and a client writes the current
//! span's context into the request it sends.
//!
//! Without trace export (no OTLP endpoint) spans carry no OpenTelemetry context: nothing is
//! injected, and a received `traceparent` is only recorded as the span's `trace_id` field so logs
//! still correlate with the caller's trace.

use opentelemetry::Context;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{SpanContext, TraceContextExt};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

pub use collm_protocol::trace::{Carrier, TRACEPARENT, TRACESTATE, TraceParent};

/// Our carriers (gRPC metadata, HTTP headers, maps) as the SDK's extractor and injector.
struct Adapter<'a, C: ?Sized>(&'a C);
struct AdapterMut<'a, C: ?Sized>(&'a mut C);

impl<C: Carrier + ?Sized> Extractor for Adapter<'_, C> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key)
    }
    fn keys(&self) -> Vec<&str> {
        // The trace-context propagator asks only for its two fields by name.
        [TRACEPARENT, TRACESTATE].into_iter().filter(|k| self.0.get(k).is_some()).collect()
    }
}

impl<C: Carrier + ?Sized> Injector for AdapterMut<'_, C> {
    fn set(&mut self, key: &str, value: String) {
        // An empty tracestate says nothing; W3C asks not to send one.
        if !(key == TRACESTATE && value.is_empty()) {
            self.0.set(key, value);
        }
    }
}

/// The caller's span context in `carrier` (its `traceparent` and `tracestate`), if valid.
fn remote_context(carrier: &impl Carrier) -> Option<SpanContext> {
    let cx = TraceContextPropagator::new().extract(&Adapter(carrier));
    let sc = cx.span().span_context().clone();
    sc.is_valid().then_some(sc)
}

fn to_traceparent(sc: &SpanContext) -> TraceParent {
    let state = sc.trace_state().header();
    TraceParent {
        trace_id: sc.trace_id().to_bytes(),
        parent_id: sc.span_id().to_bytes(),
        flags: sc.trace_flags().to_u8(),
        state: (!state.is_empty()).then_some(state),
    }
}

/// Makes `span` a child of the caller's span named by the carrier's `traceparent` (keeping its
/// `tracestate`), and records the trace id in the span's `trace_id` field (when it declares
/// one). Call before the span is first entered: a started span keeps the parent it started
/// with. Returns the caller's context, `None` when it sent none or a malformed one (the span
/// then starts a new trace).
pub fn continue_trace(span: &Span, carrier: &impl Carrier) -> Option<TraceParent> {
    let remote = remote_context(carrier);
    if let Some(sc) = &remote {
        // Fails only when no OpenTelemetry layer is installed (export off) or the span is
        // disabled or already started; the trace id is still recorded for the logs.
        let _ = span.set_parent(Context::new().with_remote_span_context(sc.clone()));
    }
    let parent = remote.as_ref().map(to_traceparent);
    let trace_id = traceparent(span).map(|t| t.trace_id).or(parent.as_ref().map(|p| p.trace_id));
    if let Some(id) = trace_id {
        span.record("trace_id", tracing::field::display(hex(&id)));
    }
    parent
}

/// The W3C context of `span` (its trace, its own span id and the trace's `tracestate`), `None`
/// when spans are not exported.
pub fn traceparent(span: &Span) -> Option<TraceParent> {
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    sc.is_valid().then(|| to_traceparent(&sc))
}

/// Writes `span`'s context (`traceparent`, and `tracestate` when the trace has one) into an
/// outgoing request's metadata or headers, so the receiver's spans join this trace. Does
/// nothing when spans are not exported.
pub fn inject(span: &Span, carrier: &mut impl Carrier) {
    TraceContextPropagator::new().inject_context(&span.context(), &mut AdapterMut(carrier));
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
