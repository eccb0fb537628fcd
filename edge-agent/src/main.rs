//! `edge-agent`: the OpenAI-compatible API of one edge node, over the edge half of a bundle.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use collm_cloud_client::{CloudLink, Discovery, LinkConfig, TlsFiles};
use collm_edge_agent::api::{self, AppState};
use collm_edge_agent::config::{EdgeFile, Flags, Settings, read_token_file};
use collm_edge_agent::engine::EdgeEngine;
use collm_edge_agent::generation::Generator;
use collm_edge_agent::link_report::{self, PodRef};
use collm_edge_agent::metrics::Metrics;
use collm_edge_agent::mode::Mode;
use collm_runtime::codec::Encoding;
use collm_telemetry::http::Readiness;
use collm_telemetry::metrics::Registry;
use tracing::Instrument;

#[derive(Parser)]
#[command(
    name = "edge-agent",
    version,
    about = "The edge half of a split model, as an OpenAI-compatible API",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: Args,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Download, verify and unpack the bundle archive the configuration names, then exit (a
    /// pod's init container).
    FetchBundle(collm_fetch::FetchArgs),
}

#[derive(clap::Args)]
struct Args {
    /// The operator's runtime configuration (`edge.json`); flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Bundle directory (only manifest.json, tokenizer.json and the edge partition, edge.onnx and
    /// edge.onnx.data, are read).
    #[arg(long)]
    bundle: Option<PathBuf>,
    /// Address of the HTTP API [default: 127.0.0.1:8080, or 0.0.0.0:<api_port> from --config].
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Name clients give as `model` [default: the bundle directory's name].
    #[arg(long)]
    model: Option<String>,
    /// Who answers the tokens (requests may name another mode) [default: collaborative].
    #[arg(long, value_enum)]
    mode: Option<Mode>,
    /// Raw exit confidence threshold θ (> 1 never exits).
    #[arg(long)]
    threshold: Option<f32>,
    /// Pick θ per head for this agreement with the full model (calibrated bundles).
    #[arg(long)]
    target_agreement: Option<f32>,
    /// Per-token latency budget: when the cloud is expected to take longer, the edge answers.
    #[arg(long)]
    latency_budget_ms: Option<u64>,
    /// Hidden-state encoding on the wire: f32, f16 or int8.
    #[arg(long)]
    encoding: Option<Encoding>,
    /// Cloud worker endpoint (repeat for failover, in order of preference).
    #[arg(long = "cloud")]
    cloud: Vec<String>,
    /// A DNS name whose records are the cloud replicas behind the one --cloud URL (a headless
    /// Service): sessions spread over them, each staying on its replica.
    #[arg(long)]
    cloud_discovery: Option<String>,
    /// This edge's bearer token for the cloud.
    #[arg(long, conflicts_with = "token_file")]
    token: Option<String>,
    /// A file holding the bearer token, read again whenever it changes (a rotated Kubernetes
    /// ServiceAccount token).
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// CA certificate (PEM) of the cloud's TLS certificate; use https:// endpoints with it.
    #[arg(long)]
    tls_ca: Option<PathBuf>,
    /// This edge's certificate and key (PEM) for mutual TLS.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Require this key (`Authorization: Bearer <key>`) on every /v1 request; /healthz,
    /// /readyz and /metrics stay open. Prefer the environment variable: arguments are visible
    /// to every user of the machine.
    #[arg(long, env = "COLLM_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// OTLP/gRPC collector for traces (also OTEL_EXPORTER_OTLP_ENDPOINT); off by default.
    #[arg(long)]
    otlp_endpoint: Option<String>,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    if let Some(Command::FetchBundle(args)) = cli.command {
        return collm_fetch::run(args, collm_bundle::Parts::Edge);
    }
    match run(cli.serve) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", format!("{e:#}").replace('\n', " "));
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(a: Args) -> Result<()> {
    // One TLS provider for the cloud link and the Kubernetes API.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let _telemetry = collm_telemetry::init("edge-agent", a.otlp_endpoint.as_deref())?;
    let file = match &a.config {
        Some(path) => EdgeFile::read(path)?,
        None => EdgeFile::default(),
    };
    let flags = Flags {
        bundle: a.bundle,
        listen: a.listen,
        model: a.model,
        mode: a.mode,
        threshold: a.threshold,
        target_agreement: a.target_agreement,
        latency_budget_ms: a.latency_budget_ms,
        encoding: a.encoding,
        cloud: a.cloud,
        cloud_discovery: a.cloud_discovery,
        token: a.token,
        token_file: a.token_file,
        tls_ca: a.tls_ca,
        tls_cert: a.tls_cert,
        tls_key: a.tls_key,
    };
    let s = Settings::resolve(flags, file, read_token_file)?;
    let api_key = match a.api_key.as_deref().map(str::trim) {
        Some("") => anyhow::bail!("the API key is empty: give a key or none"),
        Some(key) => Some(api::auth::ApiKey::new(key)),
        None => None,
    };
    let engine = EdgeEngine::load(&s.bundle, s.threshold, s.target_agreement)
        .with_context(|| format!("loading the bundle {}", s.bundle.display()))?;
    if !engine.manifest.encodings.iter().any(|e| e == s.encoding.as_str()) {
        anyhow::bail!(
            "the bundle allows the encodings {:?}, not {}",
            engine.manifest.encodings,
            s.encoding.as_str()
        );
    }
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(serve(s, engine, api_key))
}

async fn serve(s: Settings, engine: EdgeEngine, api_key: Option<api::auth::ApiKey>) -> Result<()> {
    let mut registry = Registry::default();
    let metrics = Metrics::register(&mut registry, engine.waiting.clone());
    let link = match (&s.cloud[..], &s.token) {
        ([], _) | (_, None) => None,
        (endpoints, Some(token)) => {
            let mut config = LinkConfig::new(endpoints.to_vec(), token, engine.hidden_size);
            config.model_id = Some(engine.model_id.clone());
            config.token_file = s.token_file.clone();
            config.discovery = s.cloud_discovery.as_deref().map(Discovery::dns);
            config.tls =
                s.tls_ca.clone().map(|ca| TlsFiles { ca, identity: s.tls_identity.clone() });
            // Try once before serving, so the first requests find the cloud; if none answers,
            // the edge answers on its own (degraded) while the link keeps dialing.
            let link = CloudLink::new(config)?;
            if let Err(e) = link.reconnect_now().await {
                tracing::warn!(error = %e, "no cloud yet: answering alone until one is reachable");
            }
            Some(link)
        }
    };
    if let (Some(link), Some(pod)) = (link.clone(), PodRef::from_env()) {
        tokio::spawn(link_report::run(link, pod));
    }
    if let Some(link) = link.clone() {
        let connected = metrics.cloud_connected.clone();
        tokio::spawn(async move {
            loop {
                connected.set(i64::from(link.status().endpoint.is_some()));
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
    }
    let created = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    let state = Arc::new(AppState {
        generator: Generator::new(
            Arc::new(engine),
            link,
            s.encoding,
            s.latency_budget,
            metrics.clone(),
        ),
        model: s.model.clone(),
        mode: s.mode,
        metrics,
        created,
        api_key,
    });
    let readiness = Readiness::new();
    let app = api::router(state)
        .layer(axum::middleware::from_fn(traced))
        .merge(collm_telemetry::http::router(Arc::new(registry), readiness.clone()));
    let listener = collm_telemetry::http::bind(s.listen)
        .await
        .with_context(|| format!("cannot listen on {}", s.listen))?;
    let signal = collm_telemetry::http::shutdown_signal();
    println!("edge-agent listening on http://{}", listener.local_addr()?);
    let shutdown = async move {
        signal.await;
        readiness.begin_shutdown();
    };
    collm_telemetry::http::serve(listener, app, shutdown).await?;
    Ok(())
}

/// Every API request in a span that continues the caller's trace.
async fn traced(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let span = collm_telemetry::propagation::http_server_span(&req);
    next.run(req).instrument(span).await
}
