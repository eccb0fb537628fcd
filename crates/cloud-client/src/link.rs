//! The edge's connections to the cloud: one per cloud replica it knows, each with its own upload
//! stream. Replicas are an explicit endpoint list (a failover order) or found by discovery (the
//! DNS records of the cloud's headless Service), in which case sessions spread over them by
//! rendezvous hashing and each stays on its replica while that replica is healthy; see
//! [`crate::pool`]. A background task probes every connection (the round trips feed the latency
//! model; a replica that turns unready on SIGTERM is dropped at its next probe), dials replicas
//! that are missing with exponential backoff, and follows discovery; the edge answers alone
//! while no replica is reachable and resumes collaboration when one is.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use collm_protocol::{Capabilities, CloudServiceClient, Limits, pb};
use tokio::sync::Notify;

use crate::discovery::{self, Discovery};
use crate::estimate::LatencyModel;
use crate::pool::{Healthy, Policy, Pool, Target};
use crate::rendezvous;
use crate::token::EdgeToken;
use crate::uploads::UploadPipe;
use crate::{Client, Error, Result, with_causes};

/// How to reach the cloud.
#[derive(Debug, Clone)]
pub struct LinkConfig {
    /// gRPC endpoints (`http://host:port` or `https://...`). Without discovery: replicas in
    /// failover order. With discovery: the one Service URL the discovered replicas stand behind
    /// (used itself when discovery finds none).
    pub endpoints: Vec<String>,
    /// Spread sessions over the replicas this finds (the first endpoint's port and scheme).
    pub discovery: Option<Discovery>,
    /// This edge's bearer token.
    pub token: String,
    /// The file the token came from: read again as it is rotated.
    pub token_file: Option<PathBuf>,
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
    /// Time between discovery lookups.
    pub discovery_interval: Duration,
    /// Bound on waiting for the acknowledgement of rows a request needs.
    pub ack_timeout: Duration,
}

impl LinkConfig {
    pub fn new(endpoints: Vec<String>, token: &str, hidden_size: usize) -> Self {
        Self {
            endpoints,
            discovery: None,
            token: token.to_owned(),
            token_file: None,
            hidden_size,
            model_id: None,
            tls: None,
            connect_timeout: Duration::from_secs(2),
            probe_interval: Duration::from_millis(500),
            discovery_interval: Duration::from_secs(2),
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

/// One live connection to one replica: its own upload stream and the limits it announced.
pub struct Connection {
    /// Increases with every new connection, so a session notices it changed replica.
    pub generation: u64,
    /// The URL dialed (a discovered replica's address).
    pub endpoint: String,
    /// The replica's key in the pool.
    key: String,
    pub client: Client,
    pub pipe: UploadPipe,
    pub limits: Limits,
    /// What the endpoint announced beyond the original protocol.
    pub capabilities: Capabilities,
}

impl Connection {
    pub fn is_healthy(&self) -> bool {
        self.pipe.failure().is_none()
    }
}

impl Healthy for Connection {
    fn is_healthy(&self) -> bool {
        Connection::is_healthy(self)
    }
}

/// What the link looks like now.
#[derive(Debug, Clone, PartialEq)]
pub struct LinkStatus {
    /// An endpoint in use, `None` while no cloud answers.
    pub endpoint: Option<String>,
    /// Expected next-token latency now (with the upload queue), `None` while disconnected.
    pub estimate: Option<Duration>,
    /// Connections made after the first.
    pub reconnects: u64,
    /// The replicas connected now.
    pub connected: Vec<String>,
    /// The replicas known (connected or not).
    pub known: usize,
    /// Why the last dial failed, while no replica is connected.
    pub last_error: Option<String>,
}

/// Shared by every session of the edge; cheap to clone. A clone made for a session
/// ([`CloudLink::for_session`]) chooses that session's replica and keeps it.
#[derive(Clone)]
pub struct CloudLink {
    inner: Arc<Inner>,
    affinity: Option<Affinity>,
}

/// A session's hash key and the replica it is on.
#[derive(Clone)]
struct Affinity {
    key: u64,
    pinned: Arc<Mutex<Option<String>>>,
}

struct Inner {
    config: LinkConfig,
    token: EdgeToken,
    pool: Mutex<Pool<Connection>>,
    generation: AtomicU64,
    latency: Arc<Mutex<LatencyModel>>,
    /// Serializes dial rounds: one task dials, the others wait for its result.
    dialing: tokio::sync::Mutex<()>,
    /// Wakes the background task when a connection fails or the replica set changes.
    wake: Notify,
    /// When the last healthy connection was lost, until another is made.
    lost_at: Mutex<Option<Instant>>,
    last_error: Mutex<Option<String>>,
    /// Turns true once discovery has answered (or failed) for the first time: dialing before
    /// that would only try the Service URL.
    discovered: tokio::sync::watch::Sender<bool>,
}

/// How long after losing its last connection the link still counts as failing over rather than
/// unreachable: long enough to dial the other endpoints once.
const FAILOVER_GRACE: Duration = Duration::from_secs(2);

impl CloudLink {
    /// A link that connects in the background; the edge works standalone until it does.
    /// Must be called inside a tokio runtime.
    pub fn new(config: LinkConfig) -> Result<Self> {
        if config.endpoints.is_empty() {
            return Err(Error::Config("no cloud endpoint given".into()));
        }
        if config.discovery.is_some() && config.endpoints.len() != 1 {
            return Err(Error::Config(
                "discovery spreads over the replicas behind one Service URL: give exactly one endpoint".into(),
            ));
        }
        let token = EdgeToken::new(&config.token)?;
        if let Some(path) = &config.token_file {
            token.follow(path.clone());
        }
        let (policy, targets) = match &config.discovery {
            None => {
                (Policy::Failover, config.endpoints.iter().map(|e| Target::endpoint(e)).collect())
            }
            Some(_) => (Policy::Spread, vec![Target::endpoint(&config.endpoints[0])]),
        };
        let inner = Arc::new(Inner {
            config,
            token,
            pool: Mutex::new(Pool::new(policy, targets)),
            generation: AtomicU64::new(0),
            latency: Arc::new(Mutex::new(LatencyModel::default())),
            dialing: tokio::sync::Mutex::new(()),
            wake: Notify::new(),
            lost_at: Mutex::new(None),
            last_error: Mutex::new(None),
            discovered: tokio::sync::watch::Sender::new(false),
        });
        tokio::spawn(keep_alive(Arc::downgrade(&inner)));
        if inner.config.discovery.is_some() {
            tokio::spawn(discover(Arc::downgrade(&inner)));
        }
        Ok(Self { inner, affinity: None })
    }

    /// A link with a first connection established: fails (saying why for every endpoint)
    /// when no endpoint can be used.
    pub async fn connect(config: LinkConfig) -> Result<Self> {
        let link = Self::new(config)?;
        link.reconnect_now().await?;
        Ok(link)
    }

    /// The link as one session sees it: its replica is its rendezvous choice when it first
    /// asks, and stays its replica while that replica is healthy.
    pub fn for_session(&self, session: &str) -> Self {
        Self {
            inner: self.inner.clone(),
            affinity: Some(Affinity {
                key: rendezvous::session_key(session),
                pinned: Arc::new(Mutex::new(None)),
            }),
        }
    }

    pub fn config(&self) -> &LinkConfig {
        &self.inner.config
    }

    /// The connection to use now, when one is healthy. Failed ones are dropped here and the
    /// background task asked to replace them.
    pub fn connection(&self) -> Option<Arc<Connection>> {
        self.inner.prune();
        let pool = self.inner.pool.lock().ok()?;
        let pinned = self.affinity.as_ref().and_then(|a| a.pinned.lock().ok()?.clone());
        let (key, conn) = pool.choose(self.affinity.as_ref().map(|a| a.key), pinned.as_deref())?;
        if let Some(affinity) = &self.affinity
            && let Ok(mut pin) = affinity.pinned.lock()
        {
            *pin = Some(key);
        }
        Some(conn)
    }

    /// Drops `conn` (if still in use) after a failure seen by a caller.
    pub fn mark_failed(&self, conn: &Connection) {
        self.inner.drop_connection(conn);
    }

    /// Dials every known replica not connected now, then returns the connection this link
    /// uses; fails (saying why for each replica) when none can be used. Concurrent callers
    /// share one round.
    pub async fn reconnect_now(&self) -> Result<Arc<Connection>> {
        if let Some(conn) = self.connection() {
            return Ok(conn);
        }
        if self.inner.config.discovery.is_some() {
            let mut discovered = self.inner.discovered.subscribe();
            let first = discovered.wait_for(|done| *done);
            let _ = tokio::time::timeout(self.inner.config.connect_timeout, first).await;
        }
        let mut reasons = Vec::new();
        // A second round when the first failed for no reason: the replica set changed under it
        // (discovery's first answer), and the new replicas are not dialed yet.
        for _ in 0..2 {
            reasons = Inner::dial_round(&self.inner, false).await;
            if let Some(conn) = self.connection() {
                return Ok(conn);
            }
            if !reasons.is_empty() {
                break;
            }
        }
        Err(Error::Unreachable(reasons.join("; ")))
    }

    pub fn latency(&self) -> &Mutex<LatencyModel> {
        &self.inner.latency
    }

    /// Whether the link has just lost its last connection (within [`FAILOVER_GRACE`]) and has
    /// not made another yet: a caller that asks now fails over instead of giving up on the
    /// cloud. (A new connection clears the loss, so this holds only while none is made.)
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
        let (connected, known) = match self.inner.pool.lock() {
            Ok(pool) => {
                (pool.healthy().iter().map(|(t, _)| t.url.clone()).collect(), pool.targets().len())
            }
            Err(_) => (Vec::new(), 0),
        };
        let last_error = match conn {
            Some(_) => None,
            None => self.inner.last_error.lock().ok().and_then(|e| e.clone()),
        };
        LinkStatus {
            endpoint: conn.map(|c| c.endpoint.clone()),
            estimate,
            reconnects: self.inner.generation.load(Ordering::Relaxed).saturating_sub(1),
            connected,
            known,
            last_error,
        }
    }
}

impl Inner {
    /// Forgets failed connections; notes a loss of the last one.
    fn prune(&self) {
        let Ok(mut pool) = self.pool.lock() else { return };
        if pool.prune() > 0 {
            if pool.healthy().is_empty() {
                self.lost_now();
            }
            self.wake.notify_one();
        }
    }

    fn drop_connection(&self, conn: &Connection) {
        if let Ok(mut pool) = self.pool.lock()
            && pool.drop_if(&conn.key, |c| c.generation == conn.generation)
            && pool.healthy().is_empty()
        {
            self.lost_now();
        }
        self.wake.notify_one();
    }

    fn lost_now(&self) {
        if let Ok(mut lost) = self.lost_at.lock() {
            *lost = Some(Instant::now());
        }
    }

    /// Dials the missing replicas (only those due, unless `all`); returns why dials failed.
    async fn dial_round(inner: &Arc<Inner>, due_only: bool) -> Vec<String> {
        let _dialing = inner.dialing.lock().await;
        let targets = match inner.pool.lock() {
            Ok(pool) if due_only => pool.due(Instant::now()),
            Ok(pool) => pool.missing(),
            Err(_) => return vec!["the replica pool is poisoned".into()],
        };
        let mut dials = tokio::task::JoinSet::new();
        for target in targets {
            let inner = inner.clone();
            dials.spawn(async move {
                let dialed = inner.dial(&target).await;
                (target, dialed)
            });
        }
        let mut reasons = Vec::new();
        while let Some(joined) = dials.join_next().await {
            let Ok((target, dialed)) = joined else { continue };
            match dialed {
                Ok(conn) => {
                    let generation = conn.generation;
                    let joined = inner
                        .pool
                        .lock()
                        .map(|mut pool| pool.connected(&target.key, Arc::new(conn)))
                        .unwrap_or(false);
                    if joined {
                        if let Ok(mut lost) = inner.lost_at.lock() {
                            *lost = None;
                        }
                        tracing::info!(endpoint = %target.url, generation, "cloud connected");
                    }
                }
                Err(e) => {
                    let reason = format!("{}: {e}", target.url);
                    if let Ok(mut pool) = inner.pool.lock() {
                        pool.dial_failed(&target.key, Instant::now());
                    }
                    if let Ok(mut last) = inner.last_error.lock() {
                        *last = Some(reason.clone());
                    }
                    reasons.push(reason);
                }
            }
        }
        reasons
    }

    async fn dial(&self, target: &Target) -> Result<Connection> {
        let cfg = &self.config;
        let url = target.url.as_str();
        let connect_err = |e: &dyn std::error::Error| Error::Connect {
            url: url.to_owned(),
            reason: with_causes(e),
        };
        let mut endpoint = tonic::transport::Endpoint::from_shared(url.to_owned())
            .map_err(|e| connect_err(&e))?
            .connect_timeout(cfg.connect_timeout)
            .tcp_nodelay(true);
        if let Some(origin) = &target.origin {
            // Requests to the pod carry the Service's name, as if sent to the Service.
            let uri: http::Uri = origin.parse().map_err(|e| connect_err(&e))?;
            endpoint = endpoint.origin(uri);
        }
        if let Some(tls) = &cfg.tls {
            let mut tls_config = crate::tls::client_config(tls)?;
            if let Some(host) = target.origin.as_deref().and_then(host_of) {
                // The certificate names the Service, not the pod's address.
                tls_config = tls_config.domain_name(host);
            }
            endpoint = endpoint.tls_config(tls_config).map_err(|e| connect_err(&e))?;
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
        if let Some(ours) = &cfg.model_id
            && !health.model_id.is_empty()
            && &health.model_id != ours
        {
            return Err(Error::ModelMismatch { cloud: health.model_id, edge: ours.clone() });
        }
        let limits = Limits::from_health(&health);
        let capabilities = Capabilities::from_wire(&health.capabilities);
        let pipe = UploadPipe::open(client.clone(), self.latency.clone()).await?;
        let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        Ok(Connection {
            generation,
            endpoint: url.to_owned(),
            key: target.key.clone(),
            client,
            pipe,
            limits,
            capabilities,
        })
    }
}

/// The host of a URL (without port or brackets).
fn host_of(url: &str) -> Option<String> {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split('/').next()?;
    let host = match authority.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => authority,
    };
    Some(host.trim_start_matches('[').trim_end_matches(']').to_string())
}

/// Probes every connection; dials missing replicas as they come due (backing off per replica).
/// Ends when the link is dropped.
async fn keep_alive(link: Weak<Inner>) {
    loop {
        let Some(inner) = link.upgrade() else { return };
        inner.prune();
        let conns: Vec<Arc<Connection>> = match inner.pool.lock() {
            Ok(pool) => pool.healthy().into_iter().map(|(_, c)| c.clone()).collect(),
            Err(_) => return,
        };
        for conn in conns {
            probe(&inner, &conn).await;
        }
        let missing = inner.pool.lock().map(|p| !p.missing().is_empty()).unwrap_or(false);
        if missing {
            let reasons = Inner::dial_round(&inner, true).await;
            if !reasons.is_empty() {
                tracing::debug!(reasons = %reasons.join("; "), "cloud replicas unreachable");
            }
        }
        let next_dial = inner.pool.lock().ok().and_then(|p| p.next_due());
        let mut wait = inner.config.probe_interval;
        if let Some(at) = next_dial {
            wait = wait.min(at.saturating_duration_since(Instant::now()));
        }
        let notified = async {
            let inner = link.upgrade()?;
            inner.wake.notified().await;
            Some(())
        };
        drop(inner);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = notified => {}
        }
    }
}

/// One health probe: its round trip feeds the latency model; a replica that says it is not
/// serving (draining on SIGTERM) or does not answer is dropped.
async fn probe(inner: &Inner, conn: &Arc<Connection>) {
    let mut client = conn.client.clone();
    let t = Instant::now();
    let probe =
        tokio::time::timeout(inner.config.connect_timeout, client.health(pb::HealthRequest {}))
            .await;
    match probe {
        Ok(Ok(reply)) if reply.get_ref().serving => {
            if let Ok(mut m) = inner.latency.lock() {
                m.observe_rtt(t.elapsed());
            }
        }
        Ok(Ok(_)) => {
            tracing::info!(endpoint = %conn.endpoint, "cloud replica draining; moving its sessions");
            inner.drop_connection(conn);
        }
        Ok(Err(status)) => {
            tracing::warn!(endpoint = %conn.endpoint, %status, "cloud probe failed");
            inner.drop_connection(conn);
        }
        // A probe slower than the connect timeout: the link is crawling; the estimate says so
        // and the edge stops waiting for this cloud.
        Err(_) => {
            if let Ok(mut m) = inner.latency.lock() {
                m.observe_rtt(t.elapsed());
            }
        }
    }
}

/// Follows the replica set: resolves the discovery name every `discovery_interval`. A lookup
/// that fails keeps the set as it was; one that finds nothing falls back to the Service URL.
async fn discover(link: Weak<Inner>) {
    loop {
        let Some(inner) = link.upgrade() else { return };
        let Some(discovery) = inner.config.discovery.clone() else { return };
        let service = inner.config.endpoints[0].clone();
        let port = discovery::port_of(&service).unwrap_or(if service.starts_with("https") {
            443
        } else {
            80
        });
        match discovery.resolver.resolve(&discovery.host, port).await {
            Ok(addrs) => {
                let targets = discovery::targets(&service, addrs);
                let changed =
                    inner.pool.lock().map(|mut p| p.set_targets(targets.clone())).unwrap_or(false);
                if changed {
                    let urls: Vec<&str> = targets.iter().map(|t| t.url.as_str()).collect();
                    tracing::info!(replicas = %urls.join(", "), "cloud replicas changed");
                    inner.wake.notify_one();
                }
            }
            Err(e) => {
                tracing::warn!(host = %discovery.host, error = %e, "cannot resolve the cloud replicas")
            }
        }
        let wait = inner.config.discovery_interval;
        drop(inner);
        tokio::time::sleep(wait).await;
    }
}

impl CloudLink {
    /// The cloud-only baseline: the whole generation on a cloud worker serving the full model,
    /// streamed token by token. Fails over to another replica when the current one cannot be
    /// reached before the stream starts.
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
                Err(e) if e.is_link_failure() && failures < self.replicas() => {
                    self.mark_failed(&conn);
                    failures += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// How many replicas the link knows (at least one): how often a call may fail over.
    pub fn replicas(&self) -> usize {
        self.inner.pool.lock().map(|p| p.targets().len()).unwrap_or(1).max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tls_name_of_a_discovered_replica_is_its_services_host() {
        assert_eq!(host_of("https://m-cloud.ns.svc:50051").as_deref(), Some("m-cloud.ns.svc"));
        assert_eq!(host_of("https://[fd00::1]:443").as_deref(), Some("fd00::1"));
        assert_eq!(host_of("http://host").as_deref(), Some("host"));
    }
}
