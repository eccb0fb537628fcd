//! One long-lived `Upload` stream shared by every session of the edge: chunks go out through a
//! channel, a background task folds the acks into per-session `persisted` positions that
//! `next_token` waits on.

use std::collections::HashMap;

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
}

/// Unbounded so that queueing a chunk never blocks the decode loop.
pub struct UploadPipe {
    chunks: mpsc::UnboundedSender<pb::UploadChunk>,
    acks: watch::Receiver<AckState>,
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
                        if let Some(from) = ack.missing_from {
                            s.missing.insert(ack.session_id.clone(), from);
                        }
                        s.persisted.insert(ack.session_id, ack.persisted);
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
        Ok(Self { chunks: tx, acks: state_rx })
    }

    pub fn send(&self, chunk: pb::UploadChunk) -> Result<()> {
        if let Some(err) = &self.acks.borrow().failed {
            return Err(Error::Io(err.clone()));
        }
        self.chunks.send(chunk).map_err(|_| Error::Io("the upload stream is closed".into()))
    }

    /// What the cloud has acknowledged for `session` so far.
    pub fn persisted(&self, session: &SessionId) -> Result<u64> {
        let state = self.acks.borrow();
        check(&state, session)?;
        Ok(state.persisted.get(session.as_str()).copied().unwrap_or(0))
    }

    /// Waits until the cloud holds every position of `session` below `end`.
    pub async fn wait_for(&self, session: &SessionId, end: u64) -> Result<()> {
        let mut acks = self.acks.clone();
        let key = session.as_str();
        let state = acks
            .wait_for(|s| {
                s.failed.is_some()
                    || s.missing.contains_key(key)
                    || s.persisted.get(key).is_some_and(|p| *p >= end)
            })
            .await
            .map_err(|_| Error::Io("the upload stream ended".into()))?;
        check(&state, session)
    }
}

fn check(state: &AckState, session: &SessionId) -> Result<()> {
    if let Some(err) = &state.failed {
        return Err(Error::Io(err.clone()));
    }
    if let Some(from) = state.missing.get(session.as_str()) {
        return Err(Error::Missing(*from));
    }
    Ok(())
}
