//! The operational HTTP endpoints every service exposes:
//!
//! - `GET /healthz`: 200 while the process serves requests at all (liveness);
//! - `GET /readyz`: 200 when it should receive traffic, 503 with the reason otherwise;
//! - `GET /metrics`: the service's Prometheus registry.
//!
//! Readiness is a shared [`Readiness`] the service flips: not ready while starting, shutting
//! down, or while a dependency (a context store, a cloud endpoint) is unreachable.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::metrics::{self, Registry};

/// Whether the service should receive traffic, and why not. Clones share one state.
#[derive(Clone, Debug, Default)]
pub struct Readiness {
    state: Arc<Mutex<ReadyState>>,
}

#[derive(Debug, Default)]
struct ReadyState {
    shutting_down: bool,
    /// Why the service cannot serve now (a failing dependency); `None` when it can.
    blocked: Option<String>,
}

impl Readiness {
    /// Ready until told otherwise.
    pub fn new() -> Self {
        Self::default()
    }

    /// Ready, or the reason it is not.
    pub fn check(&self) -> Result<(), String> {
        let s = self.lock();
        if s.shutting_down {
            return Err("shutting down".into());
        }
        match &s.blocked {
            Some(why) => Err(why.clone()),
            None => Ok(()),
        }
    }

    pub fn is_ready(&self) -> bool {
        self.check().is_ok()
    }

    /// Not ready for good: the service is draining before it exits.
    pub fn begin_shutdown(&self) {
        self.lock().shutting_down = true;
    }

    pub fn is_shutting_down(&self) -> bool {
        self.lock().shutting_down
    }

    /// Records the outcome of a dependency check: `Err(reason)` makes the service not ready
    /// until a later `Ok(())`.
    pub fn set_dependency(&self, status: Result<(), String>) {
        self.lock().blocked = status.err();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ReadyState> {
        // A panic while holding this lock cannot leave the two fields inconsistent.
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[derive(Clone)]
struct Endpoints {
    registry: Arc<Registry>,
    readiness: Readiness,
}

/// `/healthz`, `/readyz` and `/metrics` over `registry` and `readiness`.
pub fn router(registry: Arc<Registry>, readiness: Readiness) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_page))
        .with_state(Endpoints { registry, readiness })
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(e): State<Endpoints>) -> (StatusCode, String) {
    match e.readiness.check() {
        Ok(()) => (StatusCode::OK, "ready\n".into()),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}\n")),
    }
}

/// OpenMetrics for a scraper that asks for it (Prometheus does), else the classic text format.
async fn metrics_page(State(e): State<Endpoints>, headers: HeaderMap) -> impl IntoResponse {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    if metrics::wants_openmetrics(accept) {
        ([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], metrics::render(&e.registry))
    } else {
        ([(header::CONTENT_TYPE, metrics::TEXT_CONTENT_TYPE)], metrics::render_text(&e.registry))
    }
}

/// A bound listener for [`serve`]; binding first lets the caller print the real port of `:0`.
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}

/// Serves `router` until `shutdown` resolves, then finishes the requests in flight.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router).with_graceful_shutdown(shutdown).await
}

/// Installs SIGTERM and SIGINT handlers now and returns a future that resolves on either: the
/// moment a service turns not ready, stops accepting and finishes what it serves. Call it before
/// announcing readiness, so a signal sent right after the announcement is not lost (until the
/// handlers exist, SIGTERM kills the process outright). Pending forever if the handlers cannot be
/// installed. Needs a Tokio runtime.
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    use tokio::signal::unix::{SignalKind, signal};
    let handlers =
        signal(SignalKind::terminate()).and_then(|t| Ok((t, signal(SignalKind::interrupt())?)));
    async move {
        let Ok((mut term, mut int)) = handlers else {
            return std::future::pending().await;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_reports_the_reason_and_shutdown_is_final() {
        let r = Readiness::new();
        assert!(r.is_ready());
        r.set_dependency(Err("context store unreachable: connection refused".into()));
        assert_eq!(r.check(), Err("context store unreachable: connection refused".into()));
        r.clone().set_dependency(Ok(()));
        assert!(r.is_ready(), "clones share one state");
        r.begin_shutdown();
        r.set_dependency(Ok(()));
        assert_eq!(r.check(), Err("shutting down".into()));
    }
}
