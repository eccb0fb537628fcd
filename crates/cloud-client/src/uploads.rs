//! One long-lived `Upload` stream shared by every session of the edge: chunks go out through a
//! channel, a background task folds the acks into per-session `persisted` positions that
//! `next_token` waits on.

use std::collections::HashMap;
use std::time::Duration;

use collm_protocol::{SessionId, pb};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::UnboundedReceiverStream;

use crate::{Client, Error, Result};

#[derive(Debug, Default, Clone)]
struct AckState {
    persisted: HashMap<String, u64>,
    /// Sessions the cloud reported missing positions for.
    missing: HashMap<String, u64>,
    /// Why the stream ended, when it did.
    failed: Option<String>,
    /// Acks received so far (one per chunk, in order).
    acked: u64,
}

/// Unbounded so that queueing a chunk never blocks the decode loop.
pub struct UploadPipe {
    chunks: mpsc::UnboundedSender<pb::UploadChunk>,
    acks: watch::Receiver<AckState>,
    /// Chunks queued so far.
    sent: std::sync::atomic::AtomicU64,
}

impl UploadPipe {
    pub async fn open(mut client: Client) -> Result<Self> {
        let (tx, rx) = mpsc::unbounded_channel();
        let (state_tx, state_rx) = watch::channel(AckState::default());
        let outgoing = UnboundedReceiverStream::new(rx);
        let mut incoming = client.upload(outgoing).await?.into_inner();
        tokio::spawn(async move {
            loop {
                match incoming.message().await {
                    Ok(Some(ack)) => state_tx.send_modify(|s| {
                        match ack.missing_from {
                            Some(from) => s.missing.insert(ack.session_id.clone(), from),
                            None => s.missing.remove(&ack.session_id),
                        };
                        s.persisted.insert(ack.session_id, ack.persisted);
                        s.acked += 1;
                    }),
                    Ok(None) => {
                        state_tx.send_modify(|s| {
                            s.failed = Some("the cloud closed the upload stream".into());
                        });
                        break;
                    }
                    Err(status) => {
                        let err = Error::from(status).to_string();
                        state_tx.send_modify(|s| s.failed = Some(err));
                        break;
                    }
                }
            }
        });
        Ok(Self { chunks: tx, acks: state_rx, sent: 0.into() })
    }

    pub fn send(&self, chunk: pb::UploadChunk) -> Result<()> {
        if let Some(err) = &self.acks.borrow().failed {
            return Err(Error::Io(err.clone()));
        }
        self.chunks.send(chunk).map_err(|_| Error::Io("the upload stream is closed".into()))?;
        self.sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// Waits until every chunk queued so far is acknowledged, then tells whether the cloud
    /// holds every position of `session` below `end`.
    pub async fn settle(
        &self,
        session: &SessionId,
        end: u64,
        timeout: Duration,
    ) -> Result<Coverage> {
        let target = self.sent.load(std::sync::atomic::Ordering::Relaxed);
        let mut acks = self.acks.clone();
        let settled = tokio::time::timeout(
            timeout,
            acks.wait_for(|s| s.failed.is_some() || s.acked >= target),
        )
        .await
        .map_err(|_| Error::Io(format!("no upload acknowledgement within {timeout:?}")))?
        .map_err(|_| Error::Io("the upload stream ended".into()))?;
        if let Some(err) = &settled.failed {
            return Err(Error::Io(err.clone()));
        }
        let key = session.as_str();
        if settled.persisted.get(key).is_some_and(|p| *p >= end) {
            return Ok(Coverage::Covered);
        }
        Ok(Coverage::MissingFrom(settled.persisted.get(key).copied().unwrap_or(0)))
    }

    /// What the cloud has acknowledged for `session` so far. Lost positions are not an error
    /// here: `next_token` re-uploads them when it needs them.
    pub fn persisted(&self, session: &SessionId) -> Result<u64> {
        let state = self.acks.borrow();
        if let Some(err) = &state.failed {
            return Err(Error::Io(err.clone()));
        }
        Ok(state.persisted.get(session.as_str()).copied().unwrap_or(0))
    }

    /// Waits until the cloud holds every position of `session` below `end`, or until it reports
    /// positions missing. Bounded by `timeout`.
    pub async fn wait_for(
        &self,
        session: &SessionId,
        end: u64,
        timeout: Duration,
    ) -> Result<Coverage> {
        let mut acks = self.acks.clone();
        let key = session.as_str();
        let waited = tokio::time::timeout(
            timeout,
            acks.wait_for(|s| {
                s.failed.is_some()
                    || s.missing.contains_key(key)
                    || s.persisted.get(key).is_some_and(|p| *p >= end)
            }),
        )
        .await
        .map_err(|_| Error::Io(format!("no upload acknowledgement within {timeout:?}")))?
        .map_err(|_| Error::Io("the upload stream ended".into()))?;
        if let Some(err) = &waited.failed {
            return Err(Error::Io(err.clone()));
        }
        if waited.persisted.get(key).is_some_and(|p| *p >= end) {
            return Ok(Coverage::Covered);
        }
        Ok(Coverage::MissingFrom(waited.missing.get(key).copied().unwrap_or(0)))
    }
}

/// Whether the cloud holds the positions a request needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coverage {
    Covered,
    /// The cloud lost (or never got) positions from here on: re-upload them.
    MissingFrom(u64),
}
