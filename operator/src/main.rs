//! `collm-operator`: reconciles CollabModels while holding the leader Lease, and serves
//! `/metrics` and `/healthz`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use kube::Client;
use kube::runtime::events::{Recorder, Reporter};
use tokio::sync::watch;

use collm_operator::controller::{self, Context};
use collm_operator::leader::LeaderElector;
use collm_operator::lease::LeaseTiming;
use collm_operator::metrics::Metrics;
use collm_operator::render::{ClusterRoles, Images, OperatorPods, Settings};

/// Reconciles CollabModel resources into edge DaemonSets, autoscaled cloud Deployments and
/// their configuration. Connects to the cluster of the in-cluster ServiceAccount or KUBECONFIG.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Image of the edge agent (DaemonSet pods).
    #[arg(long, env = "COLLM_EDGE_AGENT_IMAGE")]
    edge_agent_image: String,
    /// Image of the cloud worker (Deployment pods).
    #[arg(long, env = "COLLM_CLOUD_WORKER_IMAGE")]
    cloud_worker_image: String,
    /// Image of the managed Redis.
    #[arg(long, env = "COLLM_REDIS_IMAGE")]
    redis_image: String,
    /// imagePullPolicy of every rendered container (Always, IfNotPresent, Never); unset keeps
    /// the Kubernetes default.
    #[arg(long, env = "COLLM_IMAGE_PULL_POLICY")]
    image_pull_policy: Option<String>,
    /// Image pull Secrets every model's pods get, by name (each must exist in the model's
    /// namespace; a model adds its own with spec.imagePullSecrets).
    #[arg(long = "image-pull-secret", env = "COLLM_IMAGE_PULL_SECRETS", value_delimiter = ',')]
    image_pull_secrets: Vec<String>,

    /// ClusterRole bound to every model's edge ServiceAccount in its namespace: read pods and
    /// patch pod status (edge agents report their cloud link on their own pod).
    #[arg(long, env = "COLLM_EDGE_CLUSTER_ROLE")]
    edge_cluster_role: String,
    /// ClusterRole bound to every model's cloud ServiceAccount: create TokenReviews (cloud
    /// workers check edge tokens).
    #[arg(long, env = "COLLM_CLOUD_CLUSTER_ROLE")]
    cloud_cluster_role: String,
    /// The operator's own namespace (with --operator-pod-labels): a managed Redis's
    /// NetworkPolicy admits these pods (the finalizer deletes the model's keys).
    #[arg(long, env = "POD_NAMESPACE")]
    operator_namespace: Option<String>,
    /// The operator pods' own labels, `k=v,k=v` (with --operator-namespace: whom a managed
    /// Redis's NetworkPolicy admits).
    #[arg(long, env = "COLLM_OPERATOR_POD_LABELS", value_delimiter = ',')]
    operator_pod_labels: Vec<String>,

    /// Reach Redis here instead of the URL the spec names (finalizer cleanup and probes), for
    /// an operator running outside the cluster.
    #[arg(long, env = "COLLM_REDIS_URL_OVERRIDE")]
    redis_url_override: Option<String>,
    /// Timeout of each Redis connection and command, in seconds.
    #[arg(long, env = "COLLM_REDIS_TIMEOUT_SECONDS", default_value_t = 3)]
    redis_timeout_seconds: u64,

    /// Only the holder of the leader Lease reconciles. Disable only with a single replica.
    #[arg(long, env = "COLLM_LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    leader_election: bool,
    /// Name of the leader Lease.
    #[arg(long, env = "COLLM_LEASE_NAME", default_value = "collm-operator")]
    lease_name: String,
    /// Namespace of the leader Lease (the operator's own namespace in a pod).
    #[arg(long, env = "COLLM_LEASE_NAMESPACE", default_value = "default")]
    lease_namespace: String,
    /// Seconds a Lease stays valid without renewal.
    #[arg(long, env = "COLLM_LEASE_DURATION_SECONDS", default_value_t = 15)]
    lease_duration_seconds: u64,
    /// Seconds a leader keeps trying to renew before it stops reconciling.
    #[arg(long, env = "COLLM_LEASE_RENEW_DEADLINE_SECONDS", default_value_t = 10)]
    lease_renew_deadline_seconds: u64,
    /// Seconds between renewals and between a candidate's attempts.
    #[arg(long, env = "COLLM_LEASE_RETRY_PERIOD_SECONDS", default_value_t = 2)]
    lease_retry_period_seconds: u64,
    /// This replica's identity in the Lease and Events (the pod name in a pod).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,

    /// Reconcile CollabModels of this namespace only (the chart then grants a Role there
    /// instead of a ClusterRole); unset watches every namespace.
    #[arg(long, env = "COLLM_WATCH_NAMESPACE")]
    watch_namespace: Option<String>,

    /// Address of the /metrics, /healthz and /readyz listener.
    #[arg(long, env = "COLLM_HTTP_ADDR", default_value = "0.0.0.0:8080")]
    http_addr: SocketAddr,
    /// OTLP/gRPC collector for traces (e.g. http://otel-collector:4317); unset exports none.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,
}

fn default_identity() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "collm-operator".to_string());
    format!("{host}-{}", std::process::id())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // One TLS provider for the Kubernetes client and rediss:// connections alike; an error
    // means one is installed already.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let _telemetry = collm_telemetry::init("collm-operator", args.otlp_endpoint.as_deref())?;
    let timing = LeaseTiming::new(
        Duration::from_secs(args.lease_duration_seconds),
        Duration::from_secs(args.lease_renew_deadline_seconds),
        Duration::from_secs(args.lease_retry_period_seconds),
    )
    .map_err(anyhow::Error::msg)
    .context("leader election timing")?;
    let identity = args.identity.clone().unwrap_or_else(default_identity);

    let client = Client::try_default().await.context("connecting to the Kubernetes API")?;
    let mut registry = collm_telemetry::metrics::Registry::default();
    let metrics = Arc::new(Metrics::new(&mut registry));
    let recorder = Recorder::new(
        client.clone(),
        Reporter { controller: "collm-operator".to_string(), instance: Some(identity.clone()) },
    );
    let images = Images {
        edge_agent: args.edge_agent_image,
        cloud_worker: args.cloud_worker_image,
        redis: args.redis_image,
        pull_policy: args.image_pull_policy,
    };
    let operator =
        match (args.operator_namespace.filter(|n| !n.is_empty()), &args.operator_pod_labels[..]) {
            (Some(namespace), labels) if !labels.is_empty() => Some(OperatorPods {
                namespace,
                labels: labels
                    .iter()
                    .map(|kv| {
                        kv.split_once('=')
                            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                            .with_context(|| {
                                format!("--operator-pod-labels: {kv:?} is not key=value")
                            })
                    })
                    .collect::<anyhow::Result<_>>()?,
            }),
            _ => None,
        };
    let settings = Settings {
        images,
        pull_secrets: args.image_pull_secrets.into_iter().filter(|s| !s.is_empty()).collect(),
        cluster_roles: ClusterRoles {
            edge: args.edge_cluster_role,
            cloud: args.cloud_cluster_role,
        },
        operator,
    };
    let ctx = Arc::new(Context::new(
        client.clone(),
        settings,
        recorder,
        metrics.clone(),
        args.redis_url_override,
        Duration::from_secs(args.redis_timeout_seconds),
    ));

    let signal = collm_telemetry::http::shutdown_signal();
    let readiness = collm_telemetry::http::Readiness::new();
    let router = collm_telemetry::http::router(Arc::new(registry), readiness.clone());
    let listener = collm_telemetry::http::bind(args.http_addr)
        .await
        .with_context(|| format!("binding {}", args.http_addr))?;
    tracing::info!(addr = %listener.local_addr()?, "serving /metrics, /healthz and /readyz");
    let (stop, stopped) = watch::channel(false);
    let http = {
        let mut stopped = stopped.clone();
        tokio::spawn(collm_telemetry::http::serve(listener, router, async move {
            let _ = stopped.changed().await;
        }))
    };
    tokio::spawn(async move {
        signal.await;
        tracing::info!("shutting down");
        readiness.begin_shutdown();
        let _ = stop.send(true);
    });

    // The controller future ends only if its watches end; an error (CRD missing, no permission)
    // ends the process so that the Deployment restarts it visibly.
    let (failed_tx, mut failed_rx) = watch::channel(None::<String>);
    let watch_namespace = args.watch_namespace.clone().filter(|ns| !ns.is_empty());
    let lead = {
        let ctx = ctx.clone();
        move || {
            let ctx = ctx.clone();
            let failed_tx = failed_tx.clone();
            let namespace = watch_namespace.clone();
            async move {
                if let Err(e) = controller::run(ctx, namespace.as_deref()).await {
                    let _ = failed_tx.send(Some(e.to_string()));
                }
            }
        }
    };
    if args.leader_election {
        let elector = LeaderElector::new(
            client,
            &args.lease_namespace,
            &args.lease_name,
            &identity,
            timing,
            metrics,
        );
        tracing::info!(lease = %args.lease_name, namespace = %args.lease_namespace, %identity, "competing for leadership");
        elector.run(stopped, lead).await;
    } else {
        let mut stopped = stopped;
        metrics.leader.set(1);
        tokio::select! {
            _ = lead() => {}
            _ = stopped.changed() => {}
        }
    }
    http.abort();
    if let Some(error) = failed_rx.borrow_and_update().clone() {
        anyhow::bail!("the controller stopped: {error}");
    }
    Ok(())
}
