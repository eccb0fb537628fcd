//! The cloud context in Redis, shared by every worker replica: any replica continues any
//! session, and a worker restart loses nothing. Key layout: [`keys`]. Atomicity: every change
//! to a session is one Lua script on the session's slot ([`scripts`]); the per-client quota is
//! a second script on the client's slot, run only when a session is created.
//!
//! What is tested against a real `redis-server` (cloud-worker/tests/redis_*.rs): the store
//! contract shared with the in-memory store, on a single server and on a three-node cluster;
//! AUTH and TLS; restarts without persistence; a cut or silent link (toxiproxy).

mod args;
mod keys;
mod link;
mod scripts;

use std::ops::Range;
use std::path::PathBuf;
use std::time::Duration;

use collm_protocol::{Encoding, ProtocolError, SessionId, ValidUpload};
use redis::cluster::ClusterClientBuilder;
use redis::{AsyncConnectionConfig, TlsCertificates};
use tokio::task::JoinSet;

pub use args::RedisArgs;
pub use keys::KeySpace;

use self::keys::redact_url;
use self::link::{Connector, Link};
use super::{Appended, ContextStore, SessionInfo, StoreLimits};
use crate::clients::ClientId;
use crate::{Error, Result};

/// Where the store's Redis is and how to reach it.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// `redis://[user:password@]host:port[/db]` or `rediss://…` for TLS. Several URLs (or
    /// `cluster`) select Redis Cluster, the URLs being its seed nodes.
    pub urls: Vec<String>,
    pub cluster: bool,
    /// Start of every key (see [`keys`]).
    pub key_prefix: String,
    /// PEM CA certificate to trust for `rediss://` instead of the system's roots.
    pub ca_cert: Option<PathBuf>,
    /// PEM client certificate and key, for a Redis that requires TLS client authentication.
    pub client_cert: Option<(PathBuf, PathBuf)>,
    /// The most one store operation may take, reconnecting included.
    pub timeout: Duration,
}

impl RedisConfig {
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(3);

    pub fn new(url: impl Into<String>) -> Self {
        Self {
            urls: vec![url.into()],
            cluster: false,
            key_prefix: KeySpace::DEFAULT_PREFIX.to_owned(),
            ca_cert: None,
            client_cert: None,
            timeout: Self::DEFAULT_TIMEOUT,
        }
    }
}

/// A session created since this long is never pruned from its client's set: its first upload
/// may still be on its way.
const RESERVATION_GRACE: Duration = Duration::from_secs(5);

pub struct RedisStore {
    link: Link,
    keys: KeySpace,
    limits: StoreLimits,
}

impl RedisStore {
    /// A store over `config`; connects on first use (see [`RedisStore::check`]).
    pub fn new(config: &RedisConfig, limits: StoreLimits) -> Result<Self> {
        let keys = KeySpace::new(&config.key_prefix).map_err(Error::Store)?;
        let Some(first) = config.urls.first() else {
            return Err(Error::Store("no Redis URL given".into()));
        };
        let target = if config.urls.len() > 1 || config.cluster {
            format!(
                "{} (cluster)",
                config.urls.iter().map(|u| redact_url(u)).collect::<Vec<_>>().join(",")
            )
        } else {
            redact_url(first)
        };
        let bad = |e: redis::RedisError| Error::Store(format!("Redis URL {target}: {e}"));
        let tls = config.urls.iter().any(|u| u.starts_with("rediss://"));
        let certs = if tls {
            // rustls needs one process-wide crypto provider; another part of the worker may
            // have installed one already, which is as good.
            let _ = rustls::crypto::ring::default_provider().install_default();
            Some(tls_certificates(config)?)
        } else {
            None
        };
        let connector = if config.urls.len() > 1 || config.cluster {
            let mut builder = ClusterClientBuilder::new(config.urls.clone())
                .connection_timeout(config.timeout)
                .response_timeout(config.timeout)
                .retries(1);
            if let Some(certs) = certs {
                builder = builder.certs(certs);
            }
            Connector::Cluster(builder.build().map_err(bad)?)
        } else {
            let client = match certs {
                Some(certs) => redis::Client::build_with_tls(first.as_str(), certs),
                None => redis::Client::open(first.as_str()),
            }
            .map_err(bad)?;
            let conn = AsyncConnectionConfig::new()
                .set_connection_timeout(Some(config.timeout))
                .set_response_timeout(Some(config.timeout));
            Connector::Single(client, conn)
        };
        Ok(Self { link: Link::new(connector, target, config.timeout), keys, limits })
    }

    /// The key layout in use.
    pub fn keys(&self) -> &KeySpace {
        &self.keys
    }

    fn ttl_ms(&self) -> u64 {
        u64::try_from(self.limits.ttl.as_millis()).unwrap_or(u64::MAX).max(1)
    }

    async fn run_append(
        &self,
        client: &ClientId,
        upload: &ValidUpload,
        may_create: bool,
    ) -> Result<Vec<String>> {
        let (c, s) = (client.as_str(), upload.session.as_str());
        let (meta, rows) = (self.keys.session_meta(c, s), self.keys.session_rows(c, s));
        let row_bytes = upload.encoding.row_bytes(upload.hidden_size as usize);
        self.link
            .run("an upload", |mut conn| {
                let (meta, rows) = (&meta, &rows);
                async move {
                    scripts::APPEND
                        .key(meta)
                        .key(rows)
                        .arg(upload.start)
                        .arg(upload.rows)
                        .arg(upload.hidden_size)
                        .arg(upload.encoding.as_str())
                        .arg(row_bytes)
                        .arg(&upload.payload[..])
                        .arg(self.ttl_ms())
                        .arg(if may_create { "1" } else { "0" })
                        .invoke_async(&mut conn)
                        .await
                }
            })
            .await
    }

    /// Admits `session` under the client's sessions quota, pruning sessions whose keys expired
    /// or were lost when the quota looks full.
    async fn admit(&self, client: &ClientId, session: &SessionId) -> Result<()> {
        let index = self.keys.client_sessions(client.as_str());
        let max = self.limits.sessions_per_client;
        let reserve = || {
            self.link.run("a session quota check", |mut conn| {
                let index = &index;
                async move {
                    scripts::RESERVE
                        .key(index)
                        .arg(session.as_str())
                        .arg(max)
                        .invoke_async::<Vec<String>>(&mut conn)
                        .await
                }
            })
        };
        let mut reply = reserve().await?;
        if reply.first().map(String::as_str) == Some("full") {
            self.prune(client).await?;
            reply = reserve().await?;
        }
        match reply.first().map(String::as_str) {
            Some("ok") => {}
            Some("full") => {
                let held = reply.get(1).and_then(|h| h.parse().ok()).unwrap_or(max);
                return Err(Error::TooManySessions { held, max });
            }
            _ => return Err(Error::Store(format!("unexpected quota reply {reply:?}"))),
        }
        let clients = self.keys.clients();
        self.link
            .run("registering the client", |mut conn| {
                let clients = &clients;
                async move {
                    redis::cmd("SADD")
                        .arg(clients)
                        .arg(client.as_str())
                        .query_async::<()>(&mut conn)
                        .await
                }
            })
            .await
    }

    /// Drops from the client's set the sessions whose keys are gone (expired, ended elsewhere,
    /// evicted, flushed).
    async fn prune(&self, client: &ClientId) -> Result<()> {
        let index = self.keys.client_sessions(client.as_str());
        let members: Vec<String> = self
            .link
            .run("listing the client's sessions", |mut conn| {
                let index = &index;
                async move {
                    redis::cmd("ZRANGE").arg(index).arg(0).arg(-1).query_async(&mut conn).await
                }
            })
            .await?;
        let metas: Vec<(String, String)> =
            members.into_iter().map(|s| (self.keys.session_meta(client.as_str(), &s), s)).collect();
        let gone: Vec<String> = self
            .link
            .run("checking the client's sessions", |conn| {
                let metas = metas.clone();
                async move {
                    let mut checks = JoinSet::new();
                    for (meta, session) in metas {
                        let mut conn = conn.clone();
                        checks.spawn(async move {
                            let exists: bool =
                                redis::cmd("EXISTS").arg(&meta).query_async(&mut conn).await?;
                            Ok::<_, redis::RedisError>((!exists).then_some(session))
                        });
                    }
                    let mut gone = Vec::new();
                    while let Some(done) = checks.join_next().await {
                        let found = done.map_err(|e| {
                            redis::RedisError::from((
                                redis::ErrorKind::Client,
                                "task",
                                e.to_string(),
                            ))
                        })??;
                        gone.extend(found);
                    }
                    Ok(gone)
                }
            })
            .await?;
        if gone.is_empty() {
            return Ok(());
        }
        let grace = RESERVATION_GRACE.min(self.limits.ttl).as_millis() as u64;
        self.link
            .run("pruning the client's sessions", |mut conn| {
                let (index, gone) = (&index, &gone);
                async move {
                    scripts::PRUNE
                        .key(index)
                        .arg(grace)
                        .arg(gone)
                        .invoke_async::<u64>(&mut conn)
                        .await
                }
            })
            .await?;
        Ok(())
    }

    /// The session's metadata and the rows of `positions` (read together, atomically).
    async fn read(
        &self,
        client: &ClientId,
        session: &SessionId,
        positions: Range<u64>,
    ) -> Result<Option<(SessionInfo, Vec<u8>)>> {
        let (c, s) = (client.as_str(), session.as_str());
        let (meta, rows) = (self.keys.session_meta(c, s), self.keys.session_rows(c, s));
        let reply: Vec<Vec<u8>> = self
            .link
            .run("a context read", |mut conn| {
                let (meta, rows, positions) = (&meta, &rows, positions.clone());
                async move {
                    scripts::READ
                        .key(meta)
                        .key(rows)
                        .arg(positions.start)
                        .arg(positions.end)
                        .arg(self.ttl_ms())
                        .invoke_async(&mut conn)
                        .await
                }
            })
            .await?;
        if reply.is_empty() {
            return Ok(None);
        }
        let Ok([persisted, hidden_size, encoding, rows]) = <[Vec<u8>; 4]>::try_from(reply) else {
            return Err(Error::Store("unexpected reply to a context read".into()));
        };
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        let corrupt = |field: &str, v: &[u8]| {
            Error::Store(format!("session {session}: stored {field} {:?} is not valid", text(v)))
        };
        let info = SessionInfo {
            persisted: text(&persisted).parse().map_err(|_| corrupt("persisted", &persisted))?,
            hidden_size: text(&hidden_size)
                .parse()
                .map_err(|_| corrupt("hidden_size", &hidden_size))?,
            encoding: text(&encoding)
                .parse::<Encoding>()
                .map_err(|_| corrupt("encoding", &encoding))?,
        };
        Ok(Some((info, rows)))
    }

    /// Whether Redis answers (for startup and readiness checks).
    pub async fn ping(&self) -> Result<()> {
        self.link
            .run("PING", |mut conn| async move {
                redis::cmd("PING").query_async::<String>(&mut conn).await
            })
            .await
            .map(drop)
    }
}

fn tls_certificates(config: &RedisConfig) -> Result<TlsCertificates> {
    let read = |p: &PathBuf, what: &str| {
        std::fs::read(p).map_err(|e| {
            Error::Store(format!("cannot read the Redis TLS {what} {}: {e}", p.display()))
        })
    };
    let root_cert = config.ca_cert.as_ref().map(|p| read(p, "CA certificate")).transpose()?;
    let client_tls = match &config.client_cert {
        Some((cert, key)) => Some(redis::ClientTlsConfig {
            client_cert: read(cert, "client certificate")?,
            client_key: read(key, "client key")?,
        }),
        None => None,
    };
    Ok(TlsCertificates { client_tls, root_cert })
}

#[tonic::async_trait]
impl ContextStore for RedisStore {
    async fn append(&self, client: &ClientId, upload: ValidUpload) -> Result<Appended> {
        if upload.end() > self.limits.positions_per_session {
            return Err(Error::TooManyPositions {
                end: upload.end(),
                max: self.limits.positions_per_session,
            });
        }
        let mut reply = self.run_append(client, &upload, false).await?;
        if reply.first().map(String::as_str) == Some("create") {
            self.admit(client, &upload.session).await?;
            reply = self.run_append(client, &upload, true).await?;
        }
        let position = |r: &[String]| {
            r.get(1)
                .and_then(|p| p.parse().ok())
                .ok_or_else(|| Error::Store(format!("unexpected upload reply {r:?}")))
        };
        match reply.first().map(String::as_str) {
            Some("persisted") => Ok(Appended::Persisted(position(&reply)?)),
            Some("missing") => Ok(Appended::MissingFrom(position(&reply)?)),
            Some("layout") => Err(Error::SessionLayout {
                session: upload.session.to_string(),
                stored: format!(
                    "{} rows of {}",
                    reply.get(2).map_or("?", String::as_str),
                    reply.get(1).map_or("?", String::as_str)
                ),
                got: format!("{} rows of {}", upload.encoding.as_str(), upload.hidden_size),
            }),
            _ => Err(Error::Store(format!("unexpected upload reply {reply:?}"))),
        }
    }

    async fn session(&self, client: &ClientId, session: &SessionId) -> Result<Option<SessionInfo>> {
        Ok(self.read(client, session, 0..0).await?.map(|(info, _)| info))
    }

    async fn rows(
        &self,
        client: &ClientId,
        session: &SessionId,
        positions: Range<u64>,
    ) -> Result<Vec<ValidUpload>> {
        let (info, rows) = self
            .read(client, session, positions.clone())
            .await?
            .ok_or_else(|| Error::UnknownSession(session.as_str().to_owned()))?;
        if positions.end > info.persisted {
            return Err(ProtocolError::NotUploaded {
                after: positions.end.saturating_sub(1),
                persisted: info.persisted,
            }
            .into());
        }
        if positions.start >= positions.end {
            return Ok(vec![]);
        }
        let expected = info.encoding.row_bytes(info.hidden_size as usize) as u64
            * (positions.end - positions.start);
        if rows.len() as u64 != expected {
            return Err(Error::Store(format!(
                "session {session}: read {} bytes for positions {positions:?}, expected {expected}",
                rows.len()
            )));
        }
        Ok(vec![ValidUpload {
            session: session.clone(),
            start: positions.start,
            rows: (positions.end - positions.start) as u32,
            encoding: info.encoding,
            hidden_size: info.hidden_size,
            payload: rows.into(),
        }])
    }

    async fn end(&self, client: &ClientId, session: &SessionId) -> Result<bool> {
        let (c, s) = (client.as_str(), session.as_str());
        let (meta, rows) = (self.keys.session_meta(c, s), self.keys.session_rows(c, s));
        let index = self.keys.client_sessions(c);
        let deleted: u64 = self
            .link
            .run("ending a session", |mut conn| {
                let (meta, rows) = (&meta, &rows);
                async move { redis::cmd("DEL").arg(meta).arg(rows).query_async(&mut conn).await }
            })
            .await?;
        self.link
            .run("ending a session", |mut conn| {
                let index = &index;
                async move {
                    redis::cmd("ZREM").arg(index).arg(s).query_async::<u64>(&mut conn).await
                }
            })
            .await?;
        Ok(deleted > 0)
    }

    async fn check(&self) -> Result<()> {
        self.ping().await
    }

    /// Bytes of rows stored for every client under this prefix (metadata not counted): one
    /// `STRLEN` per session of every registered client, in parallel.
    async fn context_bytes(&self) -> Result<u64> {
        let clients_key = self.keys.clients();
        let clients: Vec<String> = self
            .link
            .run("listing clients", |mut conn| {
                let key = &clients_key;
                async move { redis::cmd("SMEMBERS").arg(key).query_async(&mut conn).await }
            })
            .await?;
        let keys = self.keys.clone();
        self.link
            .run("measuring the context", |conn| {
                let (clients, keys) = (clients.clone(), keys.clone());
                async move {
                    let mut sizes = JoinSet::new();
                    for client in clients {
                        let (mut conn, keys) = (conn.clone(), keys.clone());
                        sizes.spawn(async move {
                            let sessions: Vec<String> = redis::cmd("ZRANGE")
                                .arg(keys.client_sessions(&client))
                                .arg(0)
                                .arg(-1)
                                .query_async(&mut conn)
                                .await?;
                            let mut bytes = 0u64;
                            for s in sessions {
                                let len: u64 = redis::cmd("STRLEN")
                                    .arg(keys.session_rows(&client, &s))
                                    .query_async(&mut conn)
                                    .await?;
                                bytes += len;
                            }
                            Ok::<_, redis::RedisError>(bytes)
                        });
                    }
                    let mut total = 0;
                    while let Some(done) = sizes.join_next().await {
                        total += done.map_err(|e| {
                            redis::RedisError::from((
                                redis::ErrorKind::Client,
                                "task",
                                e.to_string(),
                            ))
                        })??;
                    }
                    Ok(total)
                }
            })
            .await
    }
}
