//! The sessions-per-client quota: a session is admitted on the client's slot (a sorted set of
//! its sessions) before its first rows are stored on the session's slot. Sessions whose keys are
//! gone are pruned from the set lazily, when the client looks full.

use std::future::Future;
use std::time::Duration;

use collm_protocol::SessionId;
use tokio::task::JoinSet;

use super::{RedisStore, scripts};
use crate::clients::ClientId;
use crate::{Error, Result};

/// A session created since this long is never pruned from its client's set: its first upload
/// may still be on its way.
const RESERVATION_GRACE: Duration = Duration::from_secs(5);

impl RedisStore {
    /// Admits `session` under the client's sessions quota, pruning sessions whose keys expired
    /// or were lost when the quota looks full.
    pub(super) async fn admit(&self, client: &ClientId, session: &SessionId) -> Result<()> {
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
                    let found = in_parallel(metas, move |(meta, session)| {
                        let mut conn = conn.clone();
                        async move {
                            let exists: bool =
                                redis::cmd("EXISTS").arg(meta).query_async(&mut conn).await?;
                            Ok((!exists).then_some(session))
                        }
                    })
                    .await?;
                    Ok(found.into_iter().flatten().collect())
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
}

/// Runs `op` on every item concurrently (on tasks sharing the multiplexed connection: one
/// round trip for all); the results in the items' order, or the first error.
pub(super) async fn in_parallel<I, T, F, Fut>(items: Vec<I>, op: F) -> redis::RedisResult<Vec<T>>
where
    I: Send + 'static,
    T: Send + 'static,
    F: Fn(I) -> Fut,
    Fut: Future<Output = redis::RedisResult<T>> + Send + 'static,
{
    let mut tasks = JoinSet::new();
    let count = items.len();
    for (i, item) in items.into_iter().enumerate() {
        let run = op(item);
        tasks.spawn(async move { run.await.map(|v| (i, v)) });
    }
    let mut results: Vec<Option<T>> = (0..count).map(|_| None).collect();
    while let Some(done) = tasks.join_next().await {
        let (i, v) = done.map_err(|e| {
            redis::RedisError::from((redis::ErrorKind::Client, "task failed", e.to_string()))
        })??;
        results[i] = Some(v);
    }
    Ok(results.into_iter().flatten().collect())
}
