//! `cloud-worker`: serves the cloud partition of a bundle over gRPC on one address (and, with
//! `--full`, the whole model for the cloud-only baseline). `--config cloud.json` gives every
//! setting the operator renders; a flag given on the command line (or through its environment
//! variable) wins over the file.

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser};
use collm_bundle::{Bundle, Parts};
use collm_cloud_worker::clients::Clients;
use collm_cloud_worker::config::{CatchUp, CloudConfig, load_clients};
use collm_cloud_worker::context::{RedisArgs, StoreLimits};
use collm_cloud_worker::engine::CloudEngine;
use collm_cloud_worker::full::FullModel;
use collm_cloud_worker::metrics::WorkerMetrics;
use collm_cloud_worker::serve::{Bound, ServeOptions};
use collm_cloud_worker::service::CloudWorker;
use collm_cloud_worker::tls::TlsFiles;
use collm_cloud_worker::token_review::{ReviewCache, ReviewPolicy, TokenReviewer};
use collm_protocol::{Capabilities, Limits};
use collm_runtime::CloudLayers;
use collm_runtime::partition::{Partition, PartitionShape};
use collm_runtime::speculate::VerifyPasses;
use collm_telemetry::http::Readiness;
use collm_telemetry::metrics::Registry;
use sha2::Digest;

const DEFAULT_LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 50051);

#[derive(Parser)]
#[command(
    name = "cloud-worker",
    version,
    about = "The cloud half of a split model, over gRPC",
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
    /// The operator's runtime configuration (`/etc/collm/cloud.json`); flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Bundle directory (only manifest.json, tokenizer.json and cloud.onnx are read, with
    /// cloud_kv.onnx for propagate catch-up and edge.onnx with --full).
    #[arg(long)]
    bundle: Option<PathBuf>,
    /// gRPC address [default: 127.0.0.1:50051, or every interface at the config's grpc_port].
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Serve /healthz, /readyz and /metrics over HTTP on this address (port 0: any free port,
    /// printed as `cloud-worker http on ADDR`). Off by default.
    #[arg(long)]
    http_listen: Option<SocketAddr>,
    /// Clients allowed to call: one `client-id token` per line, or a file holding one bare
    /// token (a Secret's value) which identifies the client `edge`.
    #[arg(long)]
    tokens: Option<PathBuf>,
    /// Serve gRPC over TLS with this PEM certificate chain (requires --tls-key).
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Mutual TLS: require client certificates signed by this PEM CA.
    #[arg(long)]
    tls_client_ca: Option<PathBuf>,
    /// Export traces to this OTLP/gRPC collector (default: $OTEL_EXPORTER_OTLP_ENDPOINT; off
    /// when neither is set).
    #[arg(long)]
    otlp_endpoint: Option<String>,
    /// Also load the edge partition and serve Generate with the whole model (the cloud-only
    /// baseline); the cloud partition is then loaded twice.
    #[arg(long)]
    full: bool,
    /// How positions the cloud has not run yet are caught up before it answers: `exact` (through
    /// the cloud layers: answers equal the full model's) or `propagate` (positions the edge
    /// answered get their K/V from the uploaded hidden state: far less compute, approximate)
    /// [default: the config's catch_up, else exact].
    #[arg(long)]
    catch_up: Option<CatchUp>,
    /// Sessions whose KV cache stays in memory (least recently used are dropped and rebuilt).
    #[arg(long, default_value_t = 64)]
    cached_sessions: usize,
    /// Sessions one client may hold at once.
    #[arg(long, default_value_t = 256)]
    sessions_per_client: usize,
    /// Positions one session may hold (default and maximum: the model's context).
    #[arg(long)]
    positions_per_session: Option<u64>,
    /// Seconds an idle session is kept.
    #[arg(long, default_value_t = 3600)]
    session_ttl: u64,
    /// Seconds calls in flight may run on after SIGTERM before the worker exits anyway.
    #[arg(long, default_value_t = 30)]
    drain_timeout: u64,
    /// Milliseconds between checks of the context store (readiness, context bytes).
    #[arg(long, default_value_t = 2000)]
    store_check_interval_ms: u64,
    /// Milliseconds a next-token or verify request waits for rows it needs that are not
    /// stored yet (an edge asks without waiting for its uploads' acknowledgements); then it
    /// fails naming the first missing position, and the edge re-uploads from there.
    #[arg(long, default_value_t = 2000)]
    row_wait_ms: u64,
    /// How Verify runs a draft's positions: `checked` (one batched pass; where a deciding
    /// pick is close enough to a tie for the batch's rounding to swap it, the positions from
    /// there run again one at a time, so the verdict is decoding token by token's), `batched`
    /// (one pass, near ties left to rounding: speculative answers may differ from the full
    /// model's) or `singly` (one position at a time, the dearest).
    #[arg(long, default_value = "checked", value_parser = parse_verify)]
    verify: VerifyPasses,
    /// The rounding a checked verdict allows for, instead of the probed one (a large bound
    /// re-runs every verdict one position at a time: for testing that path).
    #[arg(long, hide = true)]
    verify_rounding: Option<f32>,
    /// Act as a worker from before a capability (`epochs` or `verify`): it is not announced
    /// and not served. For rolling upgrades and for testing edges against older workers.
    #[arg(long, value_name = "CAPABILITY", hide = true)]
    without: Vec<String>,
    #[command(flatten)]
    redis: RedisArgs,
}

fn main() -> std::process::ExitCode {
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    if let Some(Command::FetchBundle(args)) = cli.command {
        return collm_fetch::run(args, collm_bundle::Parts::Cloud);
    }
    // One TLS provider for gRPC, Redis and the Kubernetes API.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args = cli.serve;
    let result = collm_telemetry::init("cloud-worker", args.otlp_endpoint.as_deref())
        .map_err(anyhow::Error::from)
        .and_then(|_telemetry| run(args, &matches));
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", format!("{e:#}").replace('\n', " "));
            std::process::ExitCode::FAILURE
        }
    }
}

/// Whether the user gave this argument (command line or environment), rather than its default.
fn given(matches: &ArgMatches, id: &str) -> bool {
    matches!(matches.value_source(id), Some(ValueSource::CommandLine | ValueSource::EnvVariable))
}

/// Fills every setting the user did not give from the config file.
fn apply_config(a: &mut Args, matches: &ArgMatches, c: &CloudConfig) -> Result<()> {
    let any = |port: u16| SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::UNSPECIFIED), port);
    a.bundle = a.bundle.take().or_else(|| c.bundle.dir.clone());
    a.listen = a.listen.or(c.grpc_port.map(any));
    a.http_listen = a.http_listen.or(c.http_port.map(any));
    a.tokens = a.tokens.take().or_else(|| c.edge_token_file.clone());
    a.tls_cert = a.tls_cert.take().or_else(|| c.tls_cert_file.clone());
    a.tls_key = a.tls_key.take().or_else(|| c.tls_key_file.clone());
    a.tls_client_ca = a.tls_client_ca.take().or_else(|| c.tls_client_ca_file.clone());
    a.catch_up = a.catch_up.or(Some(c.catch_up));
    if let Some(ctx) = &c.context {
        if !given(matches, "sessions_per_client")
            && let Some(n) = ctx.max_sessions_per_client
        {
            a.sessions_per_client = n;
        }
        if !given(matches, "session_ttl")
            && let Some(t) = ctx.ttl_seconds
        {
            a.session_ttl = t;
        }
        a.positions_per_session = a.positions_per_session.or(ctx.max_positions_per_session);
        if !given(matches, "urls")
            && let Some(url) = ctx.redis_url()?
        {
            a.redis.urls = vec![url];
        }
        if !given(matches, "key_prefix")
            && let Some(prefix) = &ctx.key_prefix
        {
            a.redis.key_prefix = prefix.clone();
        }
    }
    Ok(())
}

/// Every capability but those named in `without`.
fn parse_verify(s: &str) -> std::result::Result<VerifyPasses, String> {
    s.parse().map_err(|e: collm_runtime::Error| e.to_string())
}

fn capabilities(without: &[String]) -> Result<Capabilities> {
    let mut c = Capabilities::all();
    for name in without {
        match name.as_str() {
            Capabilities::EPOCHS => c.epochs = false,
            Capabilities::VERIFY => c.verify = false,
            other => bail!(
                "unknown capability {other:?} in --without (expected {} or {})",
                Capabilities::EPOCHS,
                Capabilities::VERIFY
            ),
        }
    }
    Ok(c)
}

fn run(mut a: Args, matches: &ArgMatches) -> Result<()> {
    let config = a.config.as_deref().map(CloudConfig::load).transpose()?;
    if let Some(c) = &config {
        apply_config(&mut a, matches, c)?;
    }
    let Some(bundle_dir) = a.bundle.clone() else {
        bail!("no bundle: give --bundle DIR or bundle.dir in --config");
    };
    let review = config
        .as_ref()
        .and_then(|c| c.token_review.clone())
        .map(|r| ReviewPolicy { audience: r.audience, users: r.users });
    let review_cache = std::sync::Arc::new(ReviewCache::default());
    let clients = match (&a.tokens, &review) {
        (Some(tokens), None) => load_clients(tokens)?,
        (Some(tokens), Some(_)) => load_clients(tokens)?.with_reviews(review_cache.clone()),
        (None, Some(_)) => Clients::reviewed(review_cache.clone()),
        (None, None) => {
            bail!("no clients: give --tokens FILE, or edge_token_file or token_review in --config")
        }
    };
    let clients =
        clients.revoking(config.as_ref().map(|c| c.revoked_clients.clone()).unwrap_or_default());
    let bundle = Bundle::open(&bundle_dir, Parts::Cloud)?;
    let m = &bundle.manifest;
    if let Some(c) = &config {
        c.check_split(m.split_layer)?;
    }
    let partition = Partition::load(
        &bundle.path(&m.cloud.file),
        PartitionShape::new(&m.config, m.cloud.first_layer..m.cloud.end_layer),
    )?;
    let manifest = std::fs::read(bundle_dir.join("manifest.json")).context("reading manifest")?;
    let model_id = hex::encode(sha2::Sha256::digest(&manifest));
    let catch_up = a.catch_up.unwrap_or_default();
    let propagation = match catch_up {
        CatchUp::Exact => None,
        CatchUp::Propagate => collm_runtime::split::load_propagation(&bundle_dir, m)?,
    };
    let mut layers = CloudLayers::new(partition, propagation, catch_up)?;
    let (verify, rounding) = match a.verify_rounding {
        Some(r) => (a.verify, r),
        None => layers.verify_passes(a.verify)?,
    };
    if verify != a.verify {
        eprintln!(
            "cloud-worker: batched passes of this bundle's cloud layers differ from one-position passes by more than rounding (quantized weights with int8 activations; export with --accuracy-level 0 for float ones): drafts are verified one position at a time"
        );
    }
    let engine = CloudEngine::new(layers, a.cached_sessions);
    let limits = Limits::new(engine.hidden_size() as u32, engine.max_context() as u64);
    let store = a.redis.open_store(StoreLimits {
        positions_per_session: a
            .positions_per_session
            .map_or(limits.max_context, |p| p.min(limits.max_context)),
        sessions_per_client: a.sessions_per_client,
        ttl: Duration::from_secs(a.session_ttl),
    })?;
    let mut registry = Registry::default();
    let metrics = WorkerMetrics::register(&mut registry);
    let readiness = Readiness::new();
    let known = clients.clone();
    let mut worker = CloudWorker::new(clients, store, engine, limits, model_id)
        .with_metrics(std::sync::Arc::clone(&metrics))
        .with_readiness(readiness.clone())
        .with_row_wait(Duration::from_millis(a.row_wait_ms))
        .with_verify(verify, rounding)
        .with_capabilities(capabilities(&a.without)?);
    if a.full {
        worker = worker.with_full_model(FullModel::load(&bundle_dir)?);
    }
    let tls = match (a.tls_cert.clone(), a.tls_key.clone()) {
        (Some(cert), Some(key)) => Some(TlsFiles { cert, key, client_ca: a.tls_client_ca.clone() }),
        (None, None) if a.tls_client_ca.is_some() => {
            bail!("--tls-client-ca needs --tls-cert and --tls-key: mutual TLS is TLS first")
        }
        _ => None,
    };
    let opts = ServeOptions {
        grpc: a.listen.unwrap_or(DEFAULT_LISTEN),
        http: a.http_listen,
        tls,
        drain_timeout: Duration::from_secs(a.drain_timeout),
        check_interval: Duration::from_millis(a.store_check_interval_ms.max(100)),
    };

    tracing::info!(
        model = config.as_ref().and_then(|c| c.model.as_deref()).unwrap_or("-"),
        bundle = %bundle_dir.display(),
        split_layer = m.split_layer,
        catch_up = %catch_up,
        full = a.full,
        tls = opts.tls.is_some(),
        mutual_tls = a.tls_client_ca.is_some(),
        "starting"
    );
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        let reviewer = match review {
            Some(policy) => Some(
                TokenReviewer::connect(policy, review_cache, known)
                    .await
                    .map_err(anyhow::Error::msg)?,
            ),
            None => None,
        };
        let bound = Bound::bind(opts).await?.reviewing(reviewer);
        let shutdown = collm_telemetry::http::shutdown_signal();
        // Tests and `collm up` read these lines; a closed stdout must not stop the worker.
        let mut out = std::io::stdout();
        if let Some(addr) = bound.grpc_addr() {
            let _ = writeln!(out, "cloud-worker listening on {addr}");
        }
        if let Some(addr) = bound.http_addr() {
            let _ = writeln!(out, "cloud-worker http on {addr}");
        }
        let _ = out.flush();
        bound.serve(worker, registry, metrics, readiness, shutdown).await?;
        tracing::info!("stopped");
        Ok(())
    })
}
