//! The seam between the edge and the cloud. The edge streams hidden states of every position it
//! processes, then asks for the next token after a position; the cloud answers from its layers.
//! This issue ships the in-process transport; the gRPC one implements the same trait.

use std::collections::HashMap;

use crate::codec::{self, Encoding};
use crate::partition::{KvCache, Partition, PartitionInput};
use crate::sampling::{self, Pick, SamplingParams};
use crate::{Error, Result};
use collm_bundle::graph::names;

/// Hidden states of positions `[start, start + rows)` in a transport encoding.
#[derive(Debug, Clone)]
pub struct Upload {
    pub start: usize,
    pub rows: usize,
    pub encoding: Encoding,
    pub payload: Vec<u8>,
}

/// The cloud's acknowledgement: every position below `persisted` is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UploadAck {
    pub persisted: usize,
}

/// What the edge asks: the token following position `after`, picked with `params` and the
/// uniform draw `u` (so a seeded generation is the same whoever answers).
#[derive(Debug, Clone, Copy)]
pub struct NextTokenRequest {
    pub after: usize,
    pub params: SamplingParams,
    pub u: f64,
    pub top_k: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CloudAnswer {
    pub pick: Pick,
    pub top_k: Vec<Pick>,
}

pub type SessionId = u64;

pub trait CloudTransport {
    fn upload(&mut self, session: SessionId, upload: Upload) -> Result<UploadAck>;
    fn next_token(&mut self, session: SessionId, req: NextTokenRequest) -> Result<CloudAnswer>;
    fn end_session(&mut self, session: SessionId);
}

/// Per-session cloud state: decoded hidden rows not yet run through the cloud layers.
struct CloudSession {
    cache: KvCache,
    pending: Vec<f32>,
    uploaded: usize,
}

/// The cloud partition in the edge's own process.
pub struct InProcessCloud {
    partition: Partition,
    sessions: HashMap<SessionId, CloudSession>,
}

impl InProcessCloud {
    pub fn new(partition: Partition) -> Self {
        Self { partition, sessions: HashMap::new() }
    }

    /// The cloud partition itself, for whole-sequence passes (scoring, calibration).
    pub fn partition_mut(&mut self) -> &mut Partition {
        &mut self.partition
    }
}

impl CloudTransport for InProcessCloud {
    fn upload(&mut self, session: SessionId, upload: Upload) -> Result<UploadAck> {
        let width = self.partition.shape.hidden_size;
        if !self.sessions.contains_key(&session) {
            let cache = self.partition.empty_cache()?;
            self.sessions.insert(session, CloudSession { cache, pending: Vec::new(), uploaded: 0 });
        }
        let s = self.sessions.get_mut(&session).ok_or(Error::UnknownSession(session))?;
        if upload.start != s.uploaded {
            return Err(Error::Invalid(format!(
                "upload starts at position {} but the cloud holds positions below {}",
                upload.start, s.uploaded
            )));
        }
        let rows = codec::decode(&upload.payload, upload.rows, width, upload.encoding)?;
        s.pending.extend_from_slice(&rows);
        s.uploaded += upload.rows;
        Ok(UploadAck { persisted: s.uploaded })
    }

    fn next_token(&mut self, session: SessionId, req: NextTokenRequest) -> Result<CloudAnswer> {
        let width = self.partition.shape.hidden_size;
        let s = self.sessions.get_mut(&session).ok_or(Error::UnknownSession(session))?;
        if req.after >= s.uploaded {
            return Err(Error::Invalid(format!(
                "next token after position {} requested but only positions below {} were uploaded",
                req.after, s.uploaded
            )));
        }
        // Exact catch-up: every uploaded position up to `after` goes through the cloud layers.
        let processed = s.cache.len();
        if req.after < processed {
            return Err(Error::Invalid(format!("position {} was already answered", req.after)));
        }
        let n = req.after + 1 - processed;
        let rows: Vec<f32> = s.pending.drain(..n * width).collect();
        let mut out =
            self.partition.run(&mut s.cache, PartitionInput::Hidden(&rows), 1, &[names::LOGITS])?;
        let logits = out.take(names::LOGITS).unwrap_or_default();
        Ok(CloudAnswer {
            pick: sampling::sample(&logits, &req.params, req.u),
            top_k: if req.top_k > 0 { sampling::top_k(&logits, req.top_k) } else { vec![] },
        })
    }

    fn end_session(&mut self, session: SessionId) {
        self.sessions.remove(&session);
    }
}
