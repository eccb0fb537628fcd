//! The cloud context: per (client, session), the uploaded hidden rows in their transport
//! encoding, the `persisted` position, session metadata, a TTL and per-client quotas. The worker
//! talks to it through [`ContextStore`] so that the in-memory store (one worker, tests) and the
//! Redis store (shared by replicas) obey the same contract: rows are appended contiguously, read
//! back by position range, and a session is only ever visible to the client that created it.
//!
//! Epochs: a session is on one branch at a time (its epoch, 0 until the edge first rolls
//! back). An upload of a newer epoch moves the session to it, first dropping the rows from
//! its `rewrite_from` on; an upload or a read of an older epoch is refused
//! ([`ProtocolError::StaleEpoch`](collm_protocol::ProtocolError::StaleEpoch)), so rows of a
//! rolled-back branch are never read as current. Same-epoch uploads of stored rows remain
//! harmless retransmissions.
//! The contract tests in `cloud-worker/tests/redis_store_contract.rs` run against both.

mod memory;
mod redis;

use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use collm_protocol::{Encoding, ProtocolError, SessionId, ValidUpload};

use crate::Result;
use crate::clients::ClientId;

pub use self::redis::{KeySpace, RedisArgs, RedisConfig, RedisStore};
pub use memory::InMemoryStore;

/// Quotas and expiry every store enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreLimits {
    /// Positions one session may hold.
    pub positions_per_session: u64,
    /// Sessions one client may hold at once.
    pub sessions_per_client: usize,
    /// A session untouched for this long is forgotten.
    pub ttl: Duration,
}

impl StoreLimits {
    pub fn new(positions_per_session: u64) -> Self {
        Self { positions_per_session, sessions_per_client: 256, ttl: Duration::from_secs(3600) }
    }
}

/// What an append did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    /// Every position below `persisted` is stored (the upload's new rows included).
    Persisted(u64),
    /// The upload started beyond what the store holds and was not stored: re-upload from here.
    MissingFrom(u64),
}

/// Metadata of a stored session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionInfo {
    /// Every position below it is stored.
    pub persisted: u64,
    /// Hidden-state width of the stored rows.
    pub hidden_size: u32,
    /// Encoding of the stored rows (a session keeps the encoding of its first upload).
    pub encoding: Encoding,
    /// The branch the stored rows belong to.
    pub epoch: u64,
}

#[tonic::async_trait]
pub trait ContextStore: Send + Sync + 'static {
    /// Stores the part of `upload` the session does not hold yet, creating the session on its
    /// first upload (subject to the sessions-per-client quota). An upload in another encoding
    /// or width than the session's is refused, and so is one of an older epoch; one of a newer
    /// epoch first drops the rows from its `rewrite_from` on.
    async fn append(&self, client: &ClientId, upload: ValidUpload) -> Result<Appended>;

    /// The session's metadata, `None` when it does not exist (never created, ended, expired).
    async fn session(&self, client: &ClientId, session: &SessionId) -> Result<Option<SessionInfo>>;

    /// The stored rows of `positions` on branch `epoch`, in order, as uploaded (segments
    /// trimmed to the range). Fails when part of the range is not stored, and when the
    /// session is on another epoch (an older one: the rows are not there yet; a newer one: the
    /// reader is stale).
    async fn rows(
        &self,
        client: &ClientId,
        session: &SessionId,
        epoch: u64,
        positions: Range<u64>,
    ) -> Result<Vec<ValidUpload>>;

    /// Forgets the session; whether it existed.
    async fn end(&self, client: &ClientId, session: &SessionId) -> Result<bool>;

    /// Whether the store can serve now (startup and readiness checks).
    async fn check(&self) -> Result<()> {
        Ok(())
    }

    /// Bytes of hidden-state rows held for every client, for a gauge.
    async fn context_bytes(&self) -> Result<u64>;
}

/// A shared store is a store: the worker and, say, a metrics task can hold the same one, and
/// the store can be chosen at startup (`Arc<dyn ContextStore>`).
#[tonic::async_trait]
impl<S: ContextStore + ?Sized> ContextStore for Arc<S> {
    async fn append(&self, client: &ClientId, upload: ValidUpload) -> Result<Appended> {
        (**self).append(client, upload).await
    }

    async fn session(&self, client: &ClientId, session: &SessionId) -> Result<Option<SessionInfo>> {
        (**self).session(client, session).await
    }

    async fn rows(
        &self,
        client: &ClientId,
        session: &SessionId,
        epoch: u64,
        positions: Range<u64>,
    ) -> Result<Vec<ValidUpload>> {
        (**self).rows(client, session, epoch, positions).await
    }

    async fn end(&self, client: &ClientId, session: &SessionId) -> Result<bool> {
        (**self).end(client, session).await
    }

    async fn check(&self) -> Result<()> {
        (**self).check().await
    }

    async fn context_bytes(&self) -> Result<u64> {
        (**self).context_bytes().await
    }
}

/// Whether rows of branch `epoch` may be read from a session on branch `current` that holds
/// positions below `persisted`, for `positions`.
pub fn check_read(epoch: u64, current: u64, persisted: u64, positions: &Range<u64>) -> Result<()> {
    if current > epoch {
        return Err(ProtocolError::StaleEpoch { what: "a read", epoch, current }.into());
    }
    // An older stored epoch holds none of the asked branch's rewritten rows yet.
    let persisted = if current < epoch { 0 } else { persisted };
    if positions.end > persisted {
        return Err(ProtocolError::NotUploaded {
            after: positions.end.saturating_sub(1),
            persisted,
        }
        .into());
    }
    Ok(())
}

/// The rows of `segment` that fall inside `positions` (`None` when none do).
pub fn trim(segment: &ValidUpload, positions: &Range<u64>) -> Option<ValidUpload> {
    let start = segment.start.max(positions.start);
    let end = segment.end().min(positions.end);
    if start >= end {
        return None;
    }
    let row_bytes = segment.encoding.row_bytes(segment.hidden_size as usize);
    let from = (start - segment.start) as usize * row_bytes;
    let to = (end - segment.start) as usize * row_bytes;
    Some(ValidUpload {
        start,
        rows: (end - start) as u32,
        payload: segment.payload.slice(from..to),
        ..segment.clone()
    })
}
