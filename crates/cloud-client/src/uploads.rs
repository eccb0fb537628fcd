//! One long-lived `Upload` stream per connection, shared by every session of the edge: chunks
//! go out through a channel, a background task folds the acks into per-session `persisted`
//! positions that `next_token` waits on, and times each chunk for the latency model.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use collm_protocol::{SessionId, pb};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::UnboundedReceiverStream;

use crate::estimate::LatencyModel;
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

/// Chunks sent and not yet acknowledged, oldest first: their sizes and send times.
#[derive(Default)]
struct InFlight {
    chunks: VecDeque<(usize, Instant)>,
    bytes: usize,
    last_ack: Option<Instant>,
}

/// Unbounded so that queueing a chunk never blocks the decode loop.
pub struct UploadPipe {
    chunks: mpsc::UnboundedSender<pb::UploadChunk>,
    acks: watch::Receiver<AckState>,
    in_flight: Arc<Mutex<InFlight>>,
    /// Chunks queued so far.
    sent: std::sync::atomic::AtomicU64,
}

impl UploadPipe {
    pub async fn open(mut client: Client, latency: Arc<Mutex<LatencyModel>>) -> Result<Self> {
        let (tx, rx) = mpsc::unbounded_channel();
        let (state_tx, state_rx) = watch::channel(AckState::default());
        let outgoing = UnboundedReceiverStream::new(rx);
        let mut incoming = client.upload(outgoing).await?.into_inner();
        let in_flight = Arc::new(Mutex::new(InFlight::default()));
        let timing = in_flight.clone();
        tokio::spawn(async move {
            loop {
                match incoming.message().await {
                    Ok(Some(ack)) => {
                        record_ack(&timing, &latency);
                        state_tx.send_modify(|s| {
                            match ack.missing_from {
                                Some(from) => s.missing.insert(ack.session_id.clone(), from),
                                None => s.missing.remove(&ack.session_id),
                            };
                            s.persisted.insert(ack.session_id, ack.persisted);
                            s.acked += 1;
                        })
                    }
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
        Ok(Self { chunks: tx, acks: state_rx, in_flight, sent: 0.into() })
    }

    /// Why the stream ended, if it did.
    pub fn failure(&self) -> Option<String> {
        self.acks.borrow().failed.clone()
    }

    pub fn send(&self, chunk: pb::UploadChunk) -> Result<()> {
        if let Some(err) = self.failure() {
            return Err(Error::Link(err));
        }
        let bytes = chunk.payload.len();
        self.chunks.send(chunk).map_err(|_| Error::Link("the upload stream is closed".into()))?;
        if let Ok(mut f) = self.in_flight.lock() {
            f.chunks.push_back((bytes, Instant::now()));
            f.bytes += bytes;
        }
        self.sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// Payload bytes queued or travelling, not yet acknowledged.
    pub fn pending_bytes(&self) -> usize {
        self.in_flight.lock().map(|f| f.bytes).unwrap_or(0)
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
        let settled = self.wait(timeout, |s| s.acked >= target).await?;
        let key = session.as_str();
        if settled.persisted.get(key).is_some_and(|p| *p >= end) {
            return Ok(Coverage::Covered);
        }
        Ok(Coverage::MissingFrom(settled.persisted.get(key).copied().unwrap_or(0)))
    }

    /// Waits until the cloud holds every position of `session` below `end`, or until it reports
    /// positions missing. Bounded by `timeout`.
    pub async fn wait_for(
        &self,
        session: &SessionId,
        end: u64,
        timeout: Duration,
    ) -> Result<Coverage> {
        let key = session.as_str();
        let waited = self
            .wait(timeout, |s| {
                s.missing.contains_key(key) || s.persisted.get(key).is_some_and(|p| *p >= end)
            })
            .await?;
        if waited.persisted.get(key).is_some_and(|p| *p >= end) {
            return Ok(Coverage::Covered);
        }
        Ok(Coverage::MissingFrom(waited.missing.get(key).copied().unwrap_or(0)))
    }

    /// The ack state once `done` holds (or the stream failed), within `timeout`.
    async fn wait(&self, timeout: Duration, done: impl Fn(&AckState) -> bool) -> Result<AckState> {
        let mut acks = self.acks.clone();
        let state = tokio::time::timeout(timeout, acks.wait_for(|s| s.failed.is_some() || done(s)))
            .await
            .map_err(|_| Error::Link(format!("no upload acknowledgement within {timeout:?}")))?
            .map_err(|_| Error::Link("the upload stream ended".into()))?
            .clone();
        match &state.failed {
            Some(err) => Err(Error::Link(err.clone())),
            None => Ok(state),
        }
    }
}

/// The oldest in-flight chunk is acknowledged: time it and forget it.
fn record_ack(in_flight: &Mutex<InFlight>, latency: &Mutex<LatencyModel>) {
    let Ok(mut f) = in_flight.lock() else { return };
    let Some((bytes, sent_at)) = f.chunks.pop_front() else { return };
    f.bytes -= bytes;
    let now = Instant::now();
    // A chunk queued behind others only starts moving when the previous one is through.
    let began = f.last_ack.map_or(sent_at, |prev| prev.max(sent_at));
    f.last_ack = Some(now);
    if let Ok(mut model) = latency.lock() {
        model.observe_upload(bytes, now - began);
    }
}

/// Whether the cloud holds the positions a request needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coverage {
    Covered,
    /// The cloud lost (or never got) positions from here on: re-upload them.
    MissingFrom(u64),
}
