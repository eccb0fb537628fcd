//! The seam between the edge and the cloud. The edge streams hidden states of every position it
//! processes, then asks for the next token after a position; the cloud answers from its layers.
//! This issue ships the in-process transport; the gRPC one implements the same trait.

use std::collections::HashMap;

use crate::catch_up::EdgeAnswered;
use crate::cloud_layers::CloudLayers;
use crate::codec::{self, Encoding};
use crate::partition::{KvCache, Partition};
use crate::sampling::{self, Pick, SamplingParams};
use crate::{Error, Result};

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
/// uniform draw `u` (so a seeded generation is the same whoever answers), and the positions
/// whose next token the edge answered so far (what `propagate` catch-up may propagate).
#[derive(Debug, Clone)]
pub struct NextTokenRequest {
    pub after: usize,
    pub params: SamplingParams,
    pub u: f64,
    pub top_k: usize,
    pub edge_answered: EdgeAnswered,
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

/// The cloud layers in the edge's own process.
pub struct InProcessCloud {
    layers: CloudLayers,
    sessions: HashMap<SessionId, CloudSession>,
}

impl InProcessCloud {
    pub fn new(layers: CloudLayers) -> Self {
        Self { layers, sessions: HashMap::new() }
    }

    /// The cloud partition itself, for whole-sequence passes (scoring, calibration).
    pub fn partition_mut(&mut self) -> &mut Partition {
        self.layers.partition_mut()
    }

    pub fn layers_mut(&mut self) -> &mut CloudLayers {
        &mut self.layers
    }
}

impl CloudTransport for InProcessCloud {
    fn upload(&mut self, session: SessionId, upload: Upload) -> Result<UploadAck> {
        let width = self.layers.partition().shape.hidden_size;
        if !self.sessions.contains_key(&session) {
            let cache = self.layers.empty_cache()?;
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
        let width = self.layers.partition().shape.hidden_size;
        let s = self.sessions.get_mut(&session).ok_or(Error::UnknownSession(session))?;
        if req.after >= s.uploaded {
            return Err(Error::Invalid(format!(
                "next token after position {} requested but only positions below {} were uploaded",
                req.after, s.uploaded
            )));
        }
        // Catch up on every uploaded position up to `after`, as the cloud's catch-up mode says.
        let processed = s.cache.len();
        if req.after < processed {
            return Err(Error::Invalid(format!("position {} was already answered", req.after)));
        }
        let n = req.after + 1 - processed;
        let rows: Vec<f32> = s.pending.drain(..n * width).collect();
        let logits = self.layers.step(&mut s.cache, &rows, &req.edge_answered)?.logits;
        Ok(CloudAnswer {
            pick: sampling::sample(&logits, &req.params, req.u),
            top_k: if req.top_k > 0 { sampling::top_k(&logits, req.top_k) } else { vec![] },
        })
    }

    fn end_session(&mut self, session: SessionId) {
        self.sessions.remove(&session);
    }
}
