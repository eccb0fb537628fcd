//! Serving a [`CloudWorker`]: the gRPC server (TLS when configured) with one span per call that
//! continues the edge's trace, the standard `grpc.health.v1.Health` service (what Kubernetes
//! gRPC probes ask), the HTTP `/healthz`, `/readyz`, `/metrics`, periodic checks of the context
//! store feeding readiness, and a graceful shutdown: on the signal the worker turns not ready,
//! stops accepting calls and finishes those in flight (for at most the drain timeout).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use collm_protocol::CloudServiceServer;
use collm_protocol::pb::cloud_service_server::SERVICE_NAME;
use collm_telemetry::http::Readiness;
use collm_telemetry::metrics::Registry;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::transport::ServerTlsConfig;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::config::ConfigError;
use crate::context::ContextStore;
use crate::metrics::WorkerMetrics;
use crate::service::CloudWorker;
use crate::tls::TlsFiles;
use crate::token_review::{ReviewLayer, TokenReviewer};

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },

    #[error(transparent)]
    Config(#[from] ConfigError),

    #[error("TLS: {0}")]
    Tls(String),

    #[error("gRPC server: {0}")]
    Grpc(String),

    #[error("HTTP server: {0}")]
    Http(std::io::Error),
}

/// Where and how the worker serves.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub grpc: SocketAddr,
    /// `/healthz`, `/readyz`, `/metrics`; off when `None`.
    pub http: Option<SocketAddr>,
    pub tls: Option<TlsFiles>,
    /// How long calls in flight may run on after the shutdown signal before the worker exits
    /// anyway (an edge's upload stream lasts as long as its session).
    pub drain_timeout: Duration,
    /// How often the context store is checked for readiness and its size.
    pub check_interval: Duration,
}

/// The listeners, bound: their addresses are known (for `:0`) before anything is served.
pub struct Bound {
    grpc: TcpListener,
    http: Option<TcpListener>,
    tls: Option<ServerTlsConfig>,
    opts: ServeOptions,
    review: ReviewLayer,
}

impl Bound {
    /// Checks the TLS settings, then binds; nothing is bound when the TLS files are unusable.
    pub async fn bind(opts: ServeOptions) -> Result<Self, ServeError> {
        let tls = match &opts.tls {
            Some(files) => {
                let config = files.server_config()?;
                // rustls parses the PEM here: a bad key or certificate fails before any port opens.
                tonic::transport::Server::builder()
                    .tls_config(config.clone())
                    .map_err(|e| ServeError::Tls(error_chain(&e)))?;
                Some(config)
            }
            None => None,
        };
        let bind = |addr: SocketAddr| async move {
            TcpListener::bind(addr).await.map_err(|source| ServeError::Bind { addr, source })
        };
        let grpc = bind(opts.grpc).await?;
        let http = match opts.http {
            Some(addr) => Some(bind(addr).await?),
            None => None,
        };
        Ok(Self { grpc, http, tls, opts, review: ReviewLayer::new(None) })
    }

    /// Reviews edges' ServiceAccount tokens before calls reach the service.
    pub fn reviewing(mut self, reviewer: Option<TokenReviewer>) -> Self {
        self.review = ReviewLayer::new(reviewer);
        self
    }

    pub fn grpc_addr(&self) -> Option<SocketAddr> {
        self.grpc.local_addr().ok()
    }

    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Serves until `shutdown` resolves and the calls in flight are done.
    pub async fn serve<S: ContextStore>(
        self,
        worker: CloudWorker<S>,
        registry: Registry,
        metrics: Arc<WorkerMetrics>,
        readiness: Readiness,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServeError> {
        let Self { grpc, http, tls, opts, review } = self;
        let (reporter, health) = tonic_health::server::health_reporter();
        let (stop, stopping) = watch::channel(false);

        let checks = tokio::spawn(check_store(
            worker.store(),
            readiness.clone(),
            reporter.clone(),
            Arc::clone(&metrics),
            opts.check_interval,
            stopping.clone(),
        ));
        let (http_stop, http_stopping) = watch::channel(false);
        let http_task = http.map(|listener| {
            let router = collm_telemetry::http::router(Arc::new(registry), readiness.clone());
            // Answers (503 on /readyz while draining) until the gRPC side is done.
            tokio::spawn(collm_telemetry::http::serve(listener, router, stopped(http_stopping)))
        });
        tokio::spawn({
            let (readiness, reporter) = (readiness.clone(), reporter.clone());
            async move {
                shutdown.await;
                tracing::info!("shutting down: not ready, finishing calls in flight");
                readiness.begin_shutdown();
                reporter.set_service_status("", ServingStatus::NotServing).await;
                reporter.set_service_status(SERVICE_NAME, ServingStatus::NotServing).await;
                let _ = stop.send(true);
            }
        });

        let mut builder = tonic::transport::Server::builder()
            .trace_fn(collm_telemetry::propagation::grpc_server_span);
        if let Some(tls) = tls {
            builder = builder.tls_config(tls).map_err(|e| ServeError::Tls(error_chain(&e)))?;
        }
        let server = builder
            .layer(review)
            .add_service(health)
            .add_service(CloudServiceServer::new(worker))
            .serve_with_incoming_shutdown(without_delay(grpc), stopped(stopping.clone()));
        let drain_limit = {
            let stopping = stopping.clone();
            async move {
                stopped(stopping).await;
                tokio::time::sleep(opts.drain_timeout).await;
            }
        };
        let served = tokio::select! {
            served = server => served.map_err(|e| ServeError::Grpc(error_chain(&e))),
            () = drain_limit => {
                tracing::warn!(
                    "calls still in flight {} s after the shutdown signal; exiting anyway",
                    opts.drain_timeout.as_secs()
                );
                Ok(())
            }
        };
        checks.abort();
        let _ = http_stop.send(true);
        if let Some(task) = http_task
            && let Ok(Ok(Err(e))) = tokio::time::timeout(Duration::from_secs(5), task).await
        {
            return Err(ServeError::Http(e));
        }
        served
    }
}

/// The accepted connections with Nagle's algorithm off: a next-token answer is a few dozen
/// bytes that must leave at once, not wait for the edge's delayed ACK (tonic applies its own
/// `tcp_nodelay` setting only to listeners it binds itself, not to an incoming stream).
fn without_delay(
    listener: TcpListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    use tokio_stream::StreamExt;
    tokio_stream::wrappers::TcpListenerStream::new(listener).map(|accepted| {
        let stream = accepted?;
        if let Err(e) = stream.set_nodelay(true) {
            tracing::warn!(error = %e, "cannot turn off Nagle's algorithm on a connection");
        }
        Ok(stream)
    })
}

/// Resolves once the flag turns true (or its sender is gone).
async fn stopped(mut flag: watch::Receiver<bool>) {
    let _ = flag.wait_for(|stop| *stop).await;
}

/// Checks the context store every `interval` until shutdown: readiness (HTTP and gRPC health)
/// follows whether it answers, and the metrics get the bytes it holds.
async fn check_store<S: ContextStore>(
    store: Arc<S>,
    readiness: Readiness,
    reporter: HealthReporter,
    metrics: Arc<WorkerMetrics>,
    interval: Duration,
    stopping: watch::Receiver<bool>,
) {
    let limit = interval.max(Duration::from_secs(1));
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        if *stopping.borrow() {
            return;
        }
        let checked = match tokio::time::timeout(limit, store.check()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(format!("context store unreachable: {e}")),
            Err(_) => Err(format!("context store did not answer within {} s", limit.as_secs())),
        };
        let bytes = match &checked {
            Ok(()) => {
                tokio::time::timeout(limit, store.context_bytes()).await.ok().and_then(Result::ok)
            }
            Err(_) => None,
        };
        metrics.context_store(checked.is_ok(), bytes);
        if let Err(why) = &checked
            && readiness.is_ready()
        {
            tracing::warn!("not ready: {why}");
        }
        readiness.set_dependency(checked);
        let status =
            if readiness.is_ready() { ServingStatus::Serving } else { ServingStatus::NotServing };
        reporter.set_service_status("", status).await;
        // The server's health ("") is what a probe without a service name asks.
        reporter.set_service_status(SERVICE_NAME, status).await;
    }
}

/// An error and its causes on one line (tonic's transport errors hide the useful part).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cause = c.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use tokio_stream::StreamExt;

    use super::*;

    #[test]
    fn accepted_connections_send_small_answers_at_once() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("rt");
        rt.block_on(async {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let addr = listener.local_addr().expect("address");
            let mut incoming = Box::pin(without_delay(listener));
            let _edge = tokio::net::TcpStream::connect(addr).await.expect("connect");
            let accepted = incoming.next().await.expect("a connection").expect("accepted");
            assert!(accepted.nodelay().expect("socket option"), "Nagle's algorithm is on");
        });
    }
}
