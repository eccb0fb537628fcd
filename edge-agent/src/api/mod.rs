//! The OpenAI-compatible HTTP API: `GET /v1/models`, `POST /v1/completions`,
//! `POST /v1/chat/completions` (optionally streamed as server-sent events ending in `[DONE]`),
//! next to `/healthz`, `/readyz` and `/metrics`. Every refusal — an unknown path (404), a wrong
//! method (405 with `Allow`), a missing API key (401), an oversized body (413) — has OpenAI's
//! error body.

pub mod auth;
pub mod capabilities;
pub mod error;
mod logprobs;
pub mod openai;
mod respond;

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{Method, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, post};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde_json::json;

use crate::generation::Generator;
use crate::metrics::{Metrics, RequestLabels};
use crate::mode::Mode;
use error::ApiError;
use openai::{ChatRequest, CompletionRequest};

/// Largest request body accepted.
pub const MAX_BODY_BYTES: usize = 4 << 20;

/// What the handlers share.
pub struct AppState {
    pub generator: Generator,
    /// The name clients use in `model`.
    pub model: String,
    /// The deployment's mode; a request may name another.
    pub mode: Mode,
    pub metrics: Metrics,
    pub created: u64,
    /// Every `/v1` request must present it, when set.
    pub api_key: Option<auth::ApiKey>,
}

pub fn router(state: Arc<AppState>) -> Router {
    let api = Router::new()
        .route("/v1/models", only(get(models), "GET"))
        .route("/v1/completions", only(post(completions), "POST"))
        .route("/v1/chat/completions", only(post(chat_completions), "POST"));
    let api = match &state.api_key {
        Some(key) => api.route_layer(axum::middleware::from_fn_with_state(
            Arc::new(key.clone()),
            auth::require_key,
        )),
        None => api,
    };
    // The handlers read the body themselves, at most the limit of it.
    api.layer(DefaultBodyLimit::disable()).fallback(not_found).with_state(state)
}

/// `route` answering every other method with 405, `Allow` and OpenAI's error body.
fn only(route: MethodRouter<Arc<AppState>>, allow: &'static str) -> MethodRouter<Arc<AppState>> {
    route.fallback(move |method: Method, uri: Uri| async move {
        ApiError::MethodNotAllowed { method: method.to_string(), path: uri.path().into(), allow }
            .into_response()
    })
}

async fn not_found(method: Method, uri: Uri) -> Response {
    ApiError::NoEndpoint { method: method.to_string(), path: uri.path().into() }.into_response()
}

async fn models(State(state): State<Arc<AppState>>) -> Response {
    axum::Json(json!({
        "object": "list",
        "data": [{
            "id": state.model,
            "object": "model",
            "created": state.created,
            "owned_by": "ce-collm",
        }],
    }))
    .into_response()
}

/// The body, read up to the limit and no further: a declared or actual length beyond it is
/// refused with 413 before more of it is buffered.
async fn bounded(body: Body, declared: Option<usize>) -> Result<Bytes, ApiError> {
    let too_large = ApiError::TooLarge { limit: MAX_BODY_BYTES };
    if declared.is_some_and(|n| n > MAX_BODY_BYTES) {
        return Err(too_large);
    }
    match Limited::new(body, MAX_BODY_BYTES).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<LengthLimitError>() => Err(too_large),
        Err(e) => Err(ApiError::invalid(format!("the request body could not be read: {e}"), None)),
    }
}

fn declared_length(headers: &axum::http::HeaderMap) -> Option<usize> {
    headers.get(header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

async fn chat_completions(
    State(state): State<Arc<AppState>>,
    req: axum::extract::Request,
) -> Response {
    let started = Instant::now();
    let declared = declared_length(req.headers());
    let valid = bounded(req.into_body(), declared).await.and_then(|body| {
        openai::parse::<ChatRequest>(&body).and_then(|r| r.validate(&state.model))
    });
    finish(&state, respond::Kind::Chat, valid, started).await
}

async fn completions(State(state): State<Arc<AppState>>, req: axum::extract::Request) -> Response {
    let started = Instant::now();
    let declared = declared_length(req.headers());
    let valid = bounded(req.into_body(), declared).await.and_then(|body| {
        openai::parse::<CompletionRequest>(&body).and_then(|r| r.validate(&state.model))
    });
    finish(&state, respond::Kind::Completion, valid, started).await
}

async fn finish(
    state: &Arc<AppState>,
    kind: respond::Kind,
    valid: Result<openai::ValidRequest, ApiError>,
    started: Instant,
) -> Response {
    let mode = valid.as_ref().ok().and_then(|v| v.mode).unwrap_or(state.mode);
    let response = match valid {
        Ok(v) => respond::respond(state.clone(), kind, v, started).await,
        Err(e) => Err(e),
    };
    let response = response.unwrap_or_else(|e| {
        tracing::debug!(error = %e, "request refused");
        e.into_response()
    });
    let labels = RequestLabels {
        endpoint: kind.endpoint().into(),
        mode: mode.as_str().into(),
        status: response.status().as_u16().to_string(),
    };
    state.metrics.requests.get_or_create(&labels).inc();
    // Streams are timed by their responder when they end; refusals and whole answers here.
    state.metrics.request_seconds.get_or_create(&labels).observe(started.elapsed().as_secs_f64());
    response
}
