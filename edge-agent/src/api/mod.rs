//! The OpenAI-compatible HTTP API: `GET /v1/models`, `POST /v1/completions`,
//! `POST /v1/chat/completions` (optionally streamed as server-sent events ending in `[DONE]`),
//! next to `/healthz`, `/readyz` and `/metrics`.

pub mod error;
pub mod openai;
mod respond;

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
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
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/models", get(models))
        .route("/v1/completions", post(completions))
        .route("/v1/chat/completions", post(chat_completions))
        .layer(DefaultBodyLimit::disable())
        .fallback(not_found)
        .with_state(state)
}

async fn not_found() -> Response {
    let body = json!({"error": {"message": "no such endpoint", "type": "invalid_request_error", "param": null, "code": "not_found"}});
    (StatusCode::NOT_FOUND, axum::Json(body)).into_response()
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

/// The body, bounded: a larger one is refused with 413 before it is parsed.
fn bounded(body: &Bytes) -> Result<&[u8], ApiError> {
    if body.len() > MAX_BODY_BYTES {
        return Err(ApiError::TooLarge { limit: MAX_BODY_BYTES });
    }
    Ok(body)
}

async fn chat_completions(State(state): State<Arc<AppState>>, body: Bytes) -> Response {
    let started = Instant::now();
    let valid = bounded(&body)
        .and_then(openai::parse::<ChatRequest>)
        .and_then(|r| r.validate(&state.model));
    finish(&state, respond::Kind::Chat, valid, started).await
}

async fn completions(State(state): State<Arc<AppState>>, body: Bytes) -> Response {
    let started = Instant::now();
    let valid = bounded(&body)
        .and_then(openai::parse::<CompletionRequest>)
        .and_then(|r| r.validate(&state.model));
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
