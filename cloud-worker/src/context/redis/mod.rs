//! The cloud context in Redis, shared by every worker replica: any replica continues any
//! session, and a worker restart loses nothing. Key layout: [`keys`]. Atomicity: every change
//! to a session is one Lua script on the session's slot ([`scripts`]); the per-client quota is
//! a second script on the client's slot, run only when a session is created.
//!
//! What is tested against a real `redis-server` (cloud-worker/tests/redis_*.rs): the store
//! contract shared with the in-memory store, on a single server and on a three-node cluster;
//! AUTH and TLS; restarts without persistence; a cut or silent link (toxiproxy).

mod args;
mod config;
mod keys;
mod link;
mod quota;
mod scripts;

use std::ops::Range;

use collm_protocol::{Encoding, ProtocolError, SessionId, ValidUpload};

pub use args::RedisArgs;
pub use config::RedisConfig;
pub use keys::KeySpace;

use self::link::Link;
use self::quota::in_parallel;
use super::{Appended, ContextStore, SessionInfo, StoreLimits, check_read};
use crate::clients::ClientId;
use crate::{Error, Result};

pub struct RedisStore {
    link: Link,
    keys: KeySpace,
    limits: StoreLimits,
}

impl RedisStore {
    /// A store over `config`; connects on first use (see [`RedisStore::ping`]).
    pub fn new(config: &RedisConfig, limits: StoreLimits) -> Result<Self> {
        let keys = KeySpace::new(&config.key_prefix).map_err(Error::Store)?;
        Ok(Self { link: config::link(config)?, keys, limits })
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
                        .arg(upload.epoch)
                        .arg(upload.rewrite_from)
                        .invoke_async(&mut conn)
                        .await
                }
            })
            .await
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
        let Ok([persisted, hidden_size, encoding, rows, epoch]) = <[Vec<u8>; 5]>::try_from(reply)
        else {
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
            epoch: text(&epoch).parse().map_err(|_| corrupt("epoch", &epoch))?,
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
            Some("stale") => Err(ProtocolError::StaleEpoch {
                what: "an upload",
                epoch: upload.epoch,
                current: position(&reply)?,
            }
            .into()),
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
        epoch: u64,
        positions: Range<u64>,
    ) -> Result<Vec<ValidUpload>> {
        let (info, rows) = self
            .read(client, session, positions.clone())
            .await?
            .ok_or_else(|| Error::UnknownSession(session.as_str().to_owned()))?;
        check_read(epoch, info.epoch, info.persisted, &positions)?;
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
            epoch,
            rewrite_from: 0,
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

    /// Bytes of rows stored for every client under this prefix (metadata not counted): the
    /// sessions of every registered client, then one `STRLEN` per session, all in parallel on
    /// the multiplexed connection. Every replica sharing the prefix reports the same total
    /// (aggregate with max, not sum).
    async fn context_bytes(&self) -> Result<u64> {
        let clients_key = self.keys.clients();
        let clients: Vec<String> = self
            .link
            .run("listing clients", |mut conn| {
                let key = &clients_key;
                async move { redis::cmd("SMEMBERS").arg(key).query_async(&mut conn).await }
            })
            .await?;
        let indexes: Vec<(String, String)> =
            clients.into_iter().map(|c| (self.keys.client_sessions(&c), c)).collect();
        let sessions: Vec<Vec<String>> = self
            .link
            .run("listing sessions", |conn| {
                let indexes = indexes.clone();
                in_parallel(indexes, move |(index, _)| {
                    let mut conn = conn.clone();
                    async move {
                        redis::cmd("ZRANGE").arg(index).arg(0).arg(-1).query_async(&mut conn).await
                    }
                })
            })
            .await?;
        let rows: Vec<String> = indexes
            .iter()
            .zip(sessions)
            .flat_map(|((_, client), sessions)| {
                sessions.into_iter().map(|s| self.keys.session_rows(client, &s))
            })
            .collect();
        let lengths: Vec<u64> = self
            .link
            .run("measuring the context", |conn| {
                in_parallel(rows.clone(), move |key| {
                    let mut conn = conn.clone();
                    async move { redis::cmd("STRLEN").arg(key).query_async(&mut conn).await }
                })
            })
            .await?;
        Ok(lengths.iter().sum())
    }
}
