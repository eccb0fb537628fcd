//! One shared, multiplexed connection to Redis (a single server or a cluster), made on first
//! use and made again after it breaks, with every operation bounded in time: an unreachable or
//! silent Redis costs a request at most [`Link::timeout`], never a hang.
//!
//! Not the crate's `ConnectionManager`: a command that times out leaves its reply owed on the
//! multiplexed connection, so this link drops a connection on a timeout as well as on an I/O
//! error rather than keep using it.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{AsyncConnectionConfig, Cmd, ErrorKind, Pipeline, RedisError, RedisFuture, Value};

use crate::Error;

/// A live connection; cheap to clone (clones share the socket).
#[derive(Clone)]
pub enum Conn {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// How to make a connection.
pub enum Connector {
    Single(redis::Client, AsyncConnectionConfig),
    Cluster(ClusterClient),
}

impl Connector {
    async fn connect(&self) -> redis::RedisResult<Conn> {
        match self {
            Connector::Single(client, config) => {
                Ok(Conn::Single(client.get_multiplexed_async_connection_with_config(config).await?))
            }
            Connector::Cluster(client) => Ok(Conn::Cluster(client.get_async_connection().await?)),
        }
    }
}

pub struct Link {
    connector: Connector,
    /// The connection in use and its generation, so that a failure seen on an old connection
    /// does not drop a newer one.
    current: tokio::sync::Mutex<Option<(u64, Conn)>>,
    generations: AtomicU64,
    /// What the messages call this Redis (its URL without the password).
    target: String,
    /// The most one operation may take, reconnecting included.
    timeout: Duration,
}

impl Link {
    pub fn new(connector: Connector, target: String, timeout: Duration) -> Self {
        Self {
            connector,
            current: tokio::sync::Mutex::new(None),
            generations: AtomicU64::new(0),
            target,
            timeout,
        }
    }

    /// Runs `op` on the connection within the time limit. An operation that failed because its
    /// connection broke runs once more on a fresh one, so the first request after a Redis
    /// restart succeeds; every operation of the store is safe to repeat.
    pub async fn run<T, F, Fut>(&self, what: &str, op: F) -> crate::Result<T>
    where
        F: Fn(Conn) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let attempts = async {
            let mut last = None;
            for _ in 0..2 {
                let (generation, conn) = self.connection().await?;
                match op(conn).await {
                    Ok(v) => return Ok(v),
                    Err(e) if breaks_connection(&e) => {
                        self.discard(Some(generation));
                        last = Some(e);
                    }
                    Err(e) => return Err(e),
                }
            }
            Err(last.unwrap_or_else(|| RedisError::from((ErrorKind::Io, "no attempt made"))))
        };
        match tokio::time::timeout(self.timeout, attempts).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(self.error(what, &e)),
            Err(_) => {
                self.discard(None);
                Err(Error::StoreUnavailable(format!(
                    "Redis at {} did not answer {what} within {} ms; retry later",
                    self.target,
                    self.timeout.as_millis()
                )))
            }
        }
    }

    async fn connection(&self) -> redis::RedisResult<(u64, Conn)> {
        let mut current = self.current.lock().await;
        if let Some((generation, conn)) = &*current {
            return Ok((*generation, conn.clone()));
        }
        let conn = self.connector.connect().await?;
        let generation = self.generations.fetch_add(1, Ordering::Relaxed) + 1;
        *current = Some((generation, conn.clone()));
        Ok((generation, conn))
    }

    /// Forgets the connection of `generation` (any, when `None`). Skipped while another task is
    /// connecting: that task is making the fresh connection this one would.
    fn discard(&self, generation: Option<u64>) {
        if let Ok(mut current) = self.current.try_lock()
            && current.as_ref().is_some_and(|(g, _)| generation.is_none_or(|want| want == *g))
        {
            *current = None;
        }
    }

    /// One error of the crate for a Redis error: unreachable, refusing or busy servers are
    /// `StoreUnavailable` (the request may succeed later); anything else is a store fault.
    pub fn error(&self, what: &str, e: &RedisError) -> Error {
        let target = &self.target;
        if refuses_credentials(e) {
            return Error::StoreCredentials(format!(
                "Redis at {target} refused this worker's credentials ({e}); check the password or ACL user in the Redis URL"
            ));
        }
        if e.code() == Some("OOM") {
            return Error::StoreUnavailable(format!(
                "Redis at {target} is full (maxmemory reached, {what} refused); free memory or raise maxmemory"
            ));
        }
        if breaks_connection(e) || is_transient(e) {
            return Error::StoreUnavailable(format!(
                "Redis at {target} is unreachable ({what}: {e}); retry later"
            ));
        }
        Error::Store(format!("Redis at {target} failed {what}: {e}"))
    }
}

/// Whether the connection the error came from can no longer be trusted.
fn breaks_connection(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_unrecoverable_error()
        || e.kind() == ErrorKind::ClusterConnectionNotFound
}

/// Errors of a server that is up but cannot serve right now.
fn is_transient(e: &RedisError) -> bool {
    use redis::ServerErrorKind as S;
    matches!(
        e.kind(),
        ErrorKind::Server(S::BusyLoading | S::TryAgain | S::ClusterDown | S::MasterDown)
    )
}

/// Wrong password, unknown ACL user, or a user without the rights the store needs.
pub fn refuses_credentials(e: &RedisError) -> bool {
    e.kind() == ErrorKind::AuthenticationFailed
        || matches!(e.code(), Some("WRONGPASS" | "NOAUTH" | "NOPERM"))
        || e.kind() == ErrorKind::Server(redis::ServerErrorKind::NoPerm)
}
