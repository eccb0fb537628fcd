//! The edge's connection to the cloud: one of several endpoints at a time, replaced when it
//! fails. A background task probes the current endpoint (its round trip feeds the latency
//! model) and, while no endpoint answers, retries them in turn with exponential backoff, so the
//! edge keeps answering on its own meanwhile and resumes collaboration when a cloud is back.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use collm_protocol::{BearerToken, CloudServiceClient, Limits, pb};
use tokio::sync::Notify;

use crate::estimate::LatencyModel;
use crate::uploads::UploadPipe;
use crate::{Client, Error, Result, with_causes};

/// How to reach the cloud.
#[derive(Debug, Clone)]
pub struct LinkConfig {
    /// gRPC endpoints (`http://host:port` or `https://...`), tried in order; failover moves on
    /// to the next one.
    pub endpoints: Vec<String>,
    /// This edge's bearer token.
    pub token: String,
    /// Hidden-state width the edge produces; a cloud expecting another is refused.
    pub hidden_size: usize,
    /// The bundle's model id (SHA-256 of its manifest); a cloud serving another is refused.
    pub model_id: Option<String>,
    /// PEM files for TLS to the cloud.
    pub tls: Option<TlsFiles>,
    /// Bound on connecting to one endpoint and on each health probe.
    pub connect_timeout: Duration,
    /// Time between health probes of a connected endpoint.
    pub probe_interval: Duration,
    /// Bound on waiting for the acknowledgement of rows a request needs.
    pub ack_timeout: Duration,
}

impl LinkConfig {
    pub fn new(endpoints: Vec<String>, token: &str, hidden_size: usize) -> Self {
        Self {
            endpoints,
            token: token.to_owned(),
            hidden_size,
            model_id: None,
            tls: None,
            connect_timeout: Duration::from_secs(2),
            probe_interval: Duration::from_millis(500),
            ack_timeout: Duration::from_secs(30),
        }
    }
}

/// PEM files for TLS: the CA that signed the cloud's certificate and, for mutual TLS, this
/// edge's certificate and key.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub ca: std::path::PathBuf,
    pub identity: Option<(std::path::PathBuf, std::path::PathBuf)>,
}

/// One live connection: its own upload stream and the limits the endpoint announced.
pub struct Connection {
    /// Increases with every new connection, so a session notices it changed replica.
    pub generation: u64,
    pub endpoint: String,
    pub client: Client,
    pub pipe: UploadPipe,
    pub limits: Limits,
}

impl Connection {
    pub fn is_healthy(&self) -> bool {
        self.pipe.failure().is_none()
    }
}

/// What the link looks like now.
#[derive(Debug, Clone, PartialEq)]
pub struct LinkStatus {
    /// The endpoint in use, `None` while no cloud answers.
    pub endpoint: Option<String>,
    /// Expected next-token latency now (with the upload queue), `None` while disconnected.
    pub estimate: Option<Duration>,
    /// Failovers and reconnections so far.
    pub reconnects: u64,
}

/// Shared by every session of the edge; cheap to clone.
#[derive(Clone)]
pub struct CloudLink {
    inner: Arc<Inner>,
}

struct Inner {
    config: LinkConfig,
    token: BearerToken,
    current: Mutex<Option<Arc<Connection>>>,
    /// Index of the endpoint to try first on the next (re)connection.
    next_endpoint: AtomicUsize,
    generation: AtomicU64,
    latency: Arc<Mutex<LatencyModel>>,
    /// Serializes reconnection attempts: one task dials, the others wait for its result.
    dialing: tokio::sync::Mutex<()>,
    /// Wakes the background task when a connection fails.
    failed: Notify,
    /// When the last connection was lost, until another is made.
    lost_at: Mutex<Option<Instant>>,
}

const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How long after losing its connection the link still counts as failing over rather than
/// unreachable: long enough to dial the other endpoints once.
const FAILOVER_GRACE: Duration = Duration::from_secs(2);

impl CloudLink {
    /// A link that connects in the background; the edge works standalone until it does.
    /// Must be called inside a tokio runtime.
    pub fn new(config: LinkConfig) -> Result<Self> {
        if config.endpoints.is_empty() {
            return Err(Error::Config("no cloud endpoint given".into()));
        }
        let token = BearerToken::new(&config.token)?;
        let inner = Arc::new(Inner {
            config,
            token,
            current: Mutex::new(None),
            next_endpoint: AtomicUsize::new(0),
            generation: AtomicU64::new(0),
            latency: Arc::new(Mutex::new(LatencyModel::default())),
            dialing: tokio::sync::Mutex::new(()),
            failed: Notify::new(),
            lost_at: Mutex::new(None),
        });
        tokio::spawn(keep_alive(Arc::downgrade(&inner)));
        Ok(Self { inner })
    }

    /// A link with a first connection established: fails (saying why for every endpoint)
    /// when no endpoint can be used.
    pub async fn connect(config: LinkConfig) -> Result<Self> {
        let link = Self::new(config)?;
        link.reconnect_now().await?;
        Ok(link)
    }

    pub fn config(&self) -> &LinkConfig {
        &self.inner.config
    }

    /// The current connection when it is healthy. A failed one is dropped here and the
    /// background task asked to find another.
    pub fn connection(&self) -> Option<Arc<Connection>> {
        self.inner.current()
    }

    /// Drops `conn` (if still current) after a failure seen by a caller.
    pub fn mark_failed(&self, conn: &Connection) {
        self.inner.drop_connection(conn.generation);
    }

    /// Tries every endpoint once, starting after the last one used, and returns the first
    /// that serves this model. Concurrent callers share one attempt.
    pub async fn reconnect_now(&self) -> Result<Arc<Connection>> {
        self.inner.reconnect_now().await
    }

    pub fn latency(&self) -> &Mutex<LatencyModel> {
        &self.inner.latency
    }

    /// Whether the link has just lost its connection (within [`FAILOVER_GRACE`]) and has not
    /// made another yet: a caller that asks now fails over instead of giving up on the cloud.
    /// (A new connection clears the loss, so this holds only while none is made.)
    pub fn failing_over(&self) -> bool {
        self.inner
            .lost_at
            .lock()
            .ok()
            .and_then(|l| *l)
            .is_some_and(|at| at.elapsed() < FAILOVER_GRACE)
    }

    pub fn status(&self) -> LinkStatus {
        let conn = self.connection();
        let estimate = conn.as_ref().map(|c| {
            let pending = c.pipe.pending_bytes();
            self.inner.latency.lock().map(|m| m.estimate(pending)).unwrap_or_default()
        });
        LinkStatus {
            endpoint: conn.map(|c| c.endpoint.clone()),
            estimate,
            reconnects: self.inner.generation.load(Ordering::Relaxed).saturating_sub(1),
        }
    }
}

impl Inner {
    fn current(&self) -> Option<Arc<Connection>> {
        let mut current = self.current.lock().ok()?;
        match current.as_ref() {
            Some(conn) if conn.is_healthy() => Some(conn.clone()),
            Some(_) => {
                *current = None;
                self.lost_now();
                self.failed.notify_one();
                None
            }
            None => None,
        }
    }

    fn drop_connection(&self, generation: u64) {
        if let Ok(mut current) = self.current.lock() {
            if current.as_ref().is_some_and(|c| c.generation == generation) {
                *current = None;
                self.lost_now();
                // The next attempt starts with the following endpoint: failover.
                self.next_endpoint.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.failed.notify_one();
    }

    fn lost_now(&self) {
        if let Ok(mut lost) = self.lost_at.lock() {
            *lost = Some(Instant::now());
        }
    }

    async fn reconnect_now(&self) -> Result<Arc<Connection>> {
        let _dialing = self.dialing.lock().await;
        if let Some(conn) = self.current() {
            return Ok(conn);
        }
        let n = self.config.endpoints.len();
        let first = self.next_endpoint.load(Ordering::Relaxed);
        let mut reasons = Vec::new();
        for i in 0..n {
            let index = (first + i) % n;
            let url = &self.config.endpoints[index];
            match self.dial(url).await {
                Ok(conn) => {
                    let conn = Arc::new(conn);
                    self.next_endpoint.store(index, Ordering::Relaxed);
                    if let Ok(mut current) = self.current.lock() {
                        *current = Some(conn.clone());
                    }
                    if let Ok(mut lost) = self.lost_at.lock() {
                        *lost = None;
                    }
                    tracing::info!(endpoint = %url, generation = conn.generation, "cloud connected");
                    return Ok(conn);
                }
                Err(e) => reasons.push(format!("{url}: {e}")),
            }
        }
        Err(Error::Unreachable(reasons.join("; ")))
    }

    async fn dial(&self, url: &str) -> Result<Connection> {
        let cfg = &self.config;
        let connect_err = |e: &dyn std::error::Error| Error::Connect {
            url: url.to_owned(),
            reason: with_causes(e),
        };
        let mut endpoint = tonic::transport::Endpoint::from_shared(url.to_owned())
            .map_err(|e| connect_err(&e))?
            .connect_timeout(cfg.connect_timeout)
            .tcp_nodelay(true);
        if let Some(tls) = &cfg.tls {
            endpoint = endpoint
                .tls_config(crate::tls::client_config(tls)?)
                .map_err(|e| connect_err(&e))?;
        }
        let channel = tokio::time::timeout(cfg.connect_timeout, endpoint.connect())
            .await
            .map_err(|_| Error::Connect {
                url: url.to_owned(),
                reason: format!("no answer within {:?}", cfg.connect_timeout),
            })?
            .map_err(|e| connect_err(&e))?;
        let mut client = CloudServiceClient::with_interceptor(channel, self.token.clone());
        let t = Instant::now();
        let health = tokio::time::timeout(cfg.connect_timeout, client.health(pb::HealthRequest {}))
            .await
            .map_err(|_| Error::Connect {
                url: url.to_owned(),
                reason: "no health answer in time".into(),
            })??
            .into_inner();
        if let Ok(mut m) = self.latency.lock() {
            m.observe_rtt(t.elapsed());
        }
        if !health.serving {
            return Err(Error::NotServing);
        }
        if health.hidden_size as usize != cfg.hidden_size {
            return Err(Error::HiddenSize { cloud: health.hidden_size, edge: cfg.hidden_size });
        }
        if let Some(ours) = &cfg.model_id {
            if !health.model_id.is_empty() && &health.model_id != ours {
                return Err(Error::ModelMismatch { cloud: health.model_id, edge: ours.clone() });
            }
        }
        let limits = Limits::from_health(&health);
        let pipe = UploadPipe::open(client.clone(), self.latency.clone()).await?;
        let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        Ok(Connection { generation, endpoint: url.to_owned(), client, pipe, limits })
    }
}

/// Probes the connected endpoint; while none is connected, dials with exponential backoff.
/// Ends when the link is dropped.
async fn keep_alive(link: Weak<Inner>) {
    let mut backoff = MIN_BACKOFF;
    loop {
        let Some(inner) = link.upgrade() else { return };
        let wait = match inner.current() {
            Some(conn) => {
                backoff = MIN_BACKOFF;
                let mut client = conn.client.clone();
                let t = Instant::now();
                let probe = tokio::time::timeout(
                    inner.config.connect_timeout,
                    client.health(pb::HealthRequest {}),
                )
                .await;
                match probe {
                    Ok(Ok(reply)) if reply.get_ref().serving => {
                        if let Ok(mut m) = inner.latency.lock() {
                            m.observe_rtt(t.elapsed());
                        }
                    }
                    Ok(Ok(_)) => inner.drop_connection(conn.generation),
                    Ok(Err(status)) => {
                        tracing::warn!(endpoint = %conn.endpoint, %status, "cloud probe failed");
                        inner.drop_connection(conn.generation);
                    }
                    // A probe slower than the connect timeout: the link is crawling; the
                    // estimate says so and the edge stops waiting for this cloud.
                    Err(_) => {
                        if let Ok(mut m) = inner.latency.lock() {
                            m.observe_rtt(t.elapsed());
                        }
                    }
                }
                inner.config.probe_interval
            }
            None => match inner.reconnect_now().await {
                Ok(_) => Duration::ZERO,
                Err(e) => {
                    tracing::debug!(error = %e, "no cloud endpoint reachable");
                    let wait = backoff;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    wait
                }
            },
        };
        let notified = async {
            let inner = link.upgrade()?;
            inner.failed.notified().await;
            Some(())
        };
        drop(inner);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = notified => {}
        }
    }
}

impl CloudLink {
    /// The cloud-only baseline: the whole generation on a cloud worker serving the full model,
    /// streamed token by token. Fails over to the next endpoint when the current one cannot
    /// be reached before the stream starts.
    pub async fn generate_full(
        &self,
        req: pb::GenerateRequest,
        trace: Option<&collm_protocol::TraceParent>,
    ) -> Result<tonic::Streaming<pb::GeneratedToken>> {
        let mut failures = 0;
        loop {
            let conn = match self.connection() {
                Some(conn) => conn,
                None => self.reconnect_now().await?,
            };
            let mut request = tonic::Request::new(req.clone());
            if let Some(parent) = trace {
                collm_protocol::trace::inject(request.metadata_mut(), parent);
            }
            match conn.client.clone().generate(request).await.map_err(Error::from) {
                Ok(stream) => return Ok(stream.into_inner()),
                Err(e) if e.is_link_failure() && failures < self.config().endpoints.len() => {
                    self.mark_failed(&conn);
                    failures += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }
}
