//! `cloud-worker`: serves the cloud partition of a bundle over gRPC on one address.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Parser;
use collm_bundle::{Bundle, Parts};
use collm_cloud_worker::clients::Clients;
use collm_cloud_worker::context::{RedisArgs, StoreLimits};
use collm_cloud_worker::engine::CloudEngine;
use collm_cloud_worker::service::CloudWorker;
use collm_protocol::{CloudServiceServer, Limits};
use collm_runtime::partition::{Partition, PartitionShape};
use sha2::Digest;

#[derive(Parser)]
#[command(name = "cloud-worker", version, about = "The cloud half of a split model, over gRPC")]
struct Args {
    /// Bundle directory (only manifest.json, tokenizer.json and cloud.onnx are read).
    #[arg(long)]
    bundle: PathBuf,
    #[arg(long, default_value = "127.0.0.1:50051")]
    listen: SocketAddr,
    /// Clients allowed to call: one `client-id token` per line.
    #[arg(long)]
    tokens: PathBuf,
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
    #[command(flatten)]
    redis: RedisArgs,
}

fn main() -> std::process::ExitCode {
    match run(Args::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", format!("{e:#}").replace('\n', " "));
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(a: Args) -> Result<()> {
    let clients = Clients::load(&a.tokens)?;
    let bundle = Bundle::open(&a.bundle, Parts::Cloud)?;
    let m = &bundle.manifest;
    let partition = Partition::load(
        &bundle.path(&m.cloud.file),
        PartitionShape::new(&m.config, m.cloud.first_layer..m.cloud.end_layer),
    )?;
    let manifest = std::fs::read(a.bundle.join("manifest.json")).context("reading manifest")?;
    let model_id = hex::encode(sha2::Sha256::digest(&manifest));
    let engine = CloudEngine::new(partition, a.cached_sessions);
    let limits = Limits::new(engine.hidden_size() as u32, engine.max_context() as u64);
    let store = a.redis.open_store(StoreLimits {
        positions_per_session: a
            .positions_per_session
            .map_or(limits.max_context, |p| p.min(limits.max_context)),
        sessions_per_client: a.sessions_per_client,
        ttl: std::time::Duration::from_secs(a.session_ttl),
    })?;
    let worker = CloudWorker::new(clients, store, engine, limits, model_id);

    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(a.listen)
            .await
            .with_context(|| format!("cannot listen on {}", a.listen))?;
        println!("cloud-worker listening on {}", listener.local_addr()?);
        tonic::transport::Server::builder()
            .add_service(CloudServiceServer::new(worker))
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                shutdown_signal(),
            )
            .await?;
        Ok(())
    })
}

/// Resolves on SIGTERM or SIGINT; tonic then stops accepting and finishes in-flight calls.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) =
        (signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
    else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
