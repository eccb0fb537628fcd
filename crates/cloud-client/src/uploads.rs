//! One long-lived `Upload` stream per connection, shared by every session of the edge: chunks
//! go out through a channel, a background task folds the acks into per-session `persisted`
//! positions and epochs (what requests to an older cloud wait on, and what a rollback needs
//! to know the cloud has seen), and times each chunk for the latency model.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use collm_protocol::{SessionId, pb};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::UnboundedReceiverStream;

use crate::estimate::LatencyModel;
use crate::{Client, Error, Result};

/// What the acks said about one session.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SessionAcks {
    pub persisted: u64,
    /// Set when the cloud reported positions from here on missing.
    pub missing: Option<u64>,
    /// The session's epoch in the cloud's last ack.
    pub epoch: u64,
}

#[derive(Debug, Default)]
struct AckState {
    /// Sessions with acks on this stream, until they end ([`UploadPipe::forget`]).
    sessions: HashMap<String, SessionAcks>,
    /// The latest sessions ended, oldest first: an ack still in flight when its session ended
    /// must not bring the session back (ids are not used again).
    ended: VecDeque<String>,
    /// Why the stream ended, when it did.
    failed: Option<String>,
    /// Acks received so far (one per chunk, in order).
    acked: u64,
}

impl AckState {
    /// How many ended sessions are remembered: far more than can have acks in flight.
    const ENDED_MEMORY: usize = 1024;

    fn record(&mut self, ack: pb::UploadAck) {
        self.acked += 1;
        if self.ended.contains(&ack.session_id) {
            return;
        }
        let acks =
            SessionAcks { persisted: ack.persisted, missing: ack.missing_from, epoch: ack.epoch };
        self.sessions.insert(ack.session_id, acks);
    }

    fn end(&mut self, session: &str) {
        self.sessions.remove(session);
        if self.ended.len() >= Self::ENDED_MEMORY {
            self.ended.pop_front();
        }
        self.ended.push_back(session.to_owned());
    }
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
    /// Also held by the ack task; here to forget ended sessions.
    state: Arc<watch::Sender<AckState>>,
    in_flight: Arc<Mutex<InFlight>>,
    /// Chunks queued so far.
    sent: std::sync::atomic::AtomicU64,
}

impl UploadPipe {
    pub async fn open(mut client: Client, latency: Arc<Mutex<LatencyModel>>) -> Result<Self> {
        let (tx, rx) = mpsc::unbounded_channel();
        let (state_tx, state_rx) = watch::channel(AckState::default());
        let state_tx = Arc::new(state_tx);
        let state = Arc::clone(&state_tx);
        let outgoing = UnboundedReceiverStream::new(rx);
        let mut incoming = client.upload(outgoing).await?.into_inner();
        let in_flight = Arc::new(Mutex::new(InFlight::default()));
        let timing = in_flight.clone();
        tokio::spawn(async move {
            loop {
                match incoming.message().await {
                    Ok(Some(ack)) => {
                        record_ack(&timing, &latency);
                        state_tx.send_modify(|s| s.record(ack))
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
        Ok(Self { chunks: tx, acks: state_rx, state, in_flight, sent: 0.into() })
    }

    /// What the acks said about `session` so far (nothing yet: all zero).
    pub fn acks(&self, session: &SessionId) -> SessionAcks {
        self.acks.borrow().sessions.get(session.as_str()).copied().unwrap_or_default()
    }

    /// Forgets an ended session's acks (its id is not used again).
    pub fn forget(&self, session: &SessionId) {
        // Without notifying: nobody waits on an ended session.
        self.state.send_if_modified(|s| {
            s.end(session.as_str());
            false
        });
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
        let settled = self.wait(session, timeout, |s, _| s.acked >= target).await?;
        if settled.persisted >= end {
            return Ok(Coverage::Covered);
        }
        Ok(Coverage::MissingFrom(settled.persisted))
    }

    /// Waits until the cloud holds every position of `session` below `end`, or until it reports
    /// positions missing. Bounded by `timeout`.
    pub async fn wait_for(
        &self,
        session: &SessionId,
        end: u64,
        timeout: Duration,
    ) -> Result<Coverage> {
        let waited = self
            .wait(session, timeout, |_, a| {
                a.is_some_and(|a| a.missing.is_some() || a.persisted >= end)
            })
            .await?;
        if waited.persisted >= end {
            return Ok(Coverage::Covered);
        }
        Ok(Coverage::MissingFrom(waited.missing.unwrap_or(0)))
    }

    /// What the acks said about `session` once `done` holds (or the stream failed), within
    /// `timeout`. Only that session's entry is copied out.
    async fn wait(
        &self,
        session: &SessionId,
        timeout: Duration,
        done: impl Fn(&AckState, Option<&SessionAcks>) -> bool,
    ) -> Result<SessionAcks> {
        let key = session.as_str();
        let mut acks = self.acks.clone();
        let state = tokio::time::timeout(
            timeout,
            acks.wait_for(|s| s.failed.is_some() || done(s, s.sessions.get(key))),
        )
        .await
        .map_err(|_| Error::Link(format!("no upload acknowledgement within {timeout:?}")))?
        .map_err(|_| Error::Link("the upload stream ended".into()))?;
        match &state.failed {
            Some(err) => Err(Error::Link(err.clone())),
            None => Ok(state.sessions.get(key).copied().unwrap_or_default()),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn ack(session: &str, persisted: u64) -> pb::UploadAck {
        pb::UploadAck { session_id: session.into(), persisted, ..Default::default() }
    }

    #[test]
    fn ended_sessions_leave_no_entry_behind_even_when_an_ack_comes_late() {
        let mut state = AckState::default();
        state.record(ack("a", 4));
        state.record(ack("b", 2));
        assert_eq!(state.sessions["a"].persisted, 4);
        state.end("a");
        state.record(ack("a", 9)); // in flight when the session ended
        assert!(!state.sessions.contains_key("a"), "{state:?}");
        assert_eq!(state.sessions.len(), 1);
        assert_eq!(state.acked, 3, "every ack counts towards settling");
        // Many sessions later, only the ones alive are kept, and the memory of ended ones is
        // bounded.
        for i in 0..3000 {
            let id = format!("s{i}");
            state.record(ack(&id, 1));
            state.end(&id);
        }
        state.end("b");
        assert!(state.sessions.is_empty());
        assert_eq!(state.ended.len(), AckState::ENDED_MEMORY);
    }
}
