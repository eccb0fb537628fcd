//! The seam between the edge and the cloud. The edge streams hidden states of every position it
//! processes, then asks for the next token after a position (or has a drafted run of tokens
//! verified); the cloud answers from its layers. A rollback takes back uploaded rows the edge
//! computed on a rejected draft. The in-process transport is here; the gRPC one implements
//! the same trait.

use std::collections::HashMap;

use crate::adjust::{Generated, LogitAdjustment};
use crate::catch_up::EdgeAnswered;
use crate::cloud_layers::CloudLayers;
use crate::codec::{self, Encoding};
use crate::partition::{KvCache, Partition};
use crate::sampling::{self, Pick, SamplingParams};
use crate::speculate;
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
    /// Applied to the logits before the pick, its probability and the alternatives.
    pub adjustment: LogitAdjustment,
    /// The tokens generated before position `after + 1` (what the penalties count).
    pub seen: Generated,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CloudAnswer {
    pub pick: Pick,
    pub top_k: Vec<Pick>,
}

/// "Would the full model pick these tokens after position `after`?": a draft for positions
/// `after + 1 ..`, whose rows are uploaded, and the draws of positions `after + 1 ..=
/// after + 1 + draft.len()`.
#[derive(Debug, Clone, PartialEq)]
pub struct VerifyRequest {
    pub after: usize,
    pub draft: Vec<u32>,
    pub u: Vec<f64>,
    pub params: SamplingParams,
}

/// How many leading draft tokens the full model picks too, and its own pick after them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Verdict {
    pub accepted: usize,
    pub pick: Pick,
}

pub type SessionId = u64;

pub trait CloudTransport {
    fn upload(&mut self, session: SessionId, upload: Upload) -> Result<UploadAck>;
    fn next_token(&mut self, session: SessionId, req: NextTokenRequest) -> Result<CloudAnswer>;
    /// Checks a draft against the full model in one pass over its positions.
    fn verify(&mut self, session: SessionId, req: VerifyRequest) -> Result<Verdict>;
    /// Takes back every uploaded row from position `len` on (computed on a rejected draft);
    /// the next upload starts at `len`.
    fn rollback(&mut self, session: SessionId, len: usize) -> Result<()>;
    fn end_session(&mut self, session: SessionId);
    /// Whether `verify` and `rollback` are served (an older remote cloud serves neither).
    fn can_speculate(&self) -> bool {
        true
    }
}

/// Per-session cloud state: every uploaded row (decoded) and the keys and values of the ones
/// run through the cloud layers so far.
struct CloudSession {
    cache: KvCache,
    rows: Vec<f32>,
}

impl CloudSession {
    fn uploaded(&self, width: usize) -> usize {
        self.rows.len() / width.max(1)
    }
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

impl InProcessCloud {
    /// Runs the session's rows up to position `last` on top of its cache (cut back to `first`
    /// when it is past it) and returns the logits of positions `first..=last`.
    fn logits(&mut self, session: SessionId, first: usize, last: usize) -> Result<Vec<f32>> {
        let width = self.layers.partition().shape.hidden_size;
        let s = self.sessions.get_mut(&session).ok_or(Error::UnknownSession(session))?;
        if last >= s.uploaded(width) {
            return Err(Error::Invalid(format!(
                "position {last} requested but only positions below {} were uploaded",
                s.uploaded(width)
            )));
        }
        s.cache.truncate(first)?;
        let from = s.cache.len();
        let rows = &s.rows[from * width..(last + 1) * width];
        let no_edge = EdgeAnswered::default();
        Ok(self.layers.step_one_by_one(&mut s.cache, rows, &no_edge, last + 1 - first)?.logits)
    }
}

impl CloudTransport for InProcessCloud {
    fn upload(&mut self, session: SessionId, upload: Upload) -> Result<UploadAck> {
        let width = self.layers.partition().shape.hidden_size;
        if !self.sessions.contains_key(&session) {
            let cache = self.layers.empty_cache()?;
            self.sessions.insert(session, CloudSession { cache, rows: Vec::new() });
        }
        let s = self.sessions.get_mut(&session).ok_or(Error::UnknownSession(session))?;
        if upload.start != s.uploaded(width) {
            return Err(Error::Invalid(format!(
                "upload starts at position {} but the cloud holds positions below {}",
                upload.start,
                s.uploaded(width)
            )));
        }
        let rows = codec::decode(&upload.payload, upload.rows, width, upload.encoding)?;
        s.rows.extend_from_slice(&rows);
        Ok(UploadAck { persisted: s.uploaded(width) })
    }

    fn next_token(&mut self, session: SessionId, req: NextTokenRequest) -> Result<CloudAnswer> {
        let width = self.layers.partition().shape.hidden_size;
        let s = self.sessions.get_mut(&session).ok_or(Error::UnknownSession(session))?;
        if req.after >= s.uploaded(width) {
            return Err(Error::Invalid(format!(
                "next token after position {} requested but only positions below {} were uploaded",
                req.after,
                s.uploaded(width)
            )));
        }
        // Catch up on every uploaded position up to `after`, as the cloud's catch-up mode says.
        let first = s.cache.len().min(req.after);
        s.cache.truncate(first)?;
        let rows = &s.rows[first * width..(req.after + 1) * width];
        let logits = self.layers.step(&mut s.cache, rows, &req.edge_answered, 1)?.logits;
        let logits = req.adjustment.apply(&logits, &req.seen);
        Ok(CloudAnswer {
            pick: sampling::sample(&logits, &req.params, req.u),
            top_k: if req.top_k > 0 { sampling::top_k(&logits, req.top_k) } else { vec![] },
        })
    }

    fn verify(&mut self, session: SessionId, req: VerifyRequest) -> Result<Verdict> {
        let n = req.draft.len();
        if n == 0 || req.u.len() != n + 1 {
            return Err(Error::Invalid(format!(
                "a draft of {n} tokens needs {} draws, got {}",
                n + 1,
                req.u.len()
            )));
        }
        let vocab = self.layers.partition().shape.vocab_size;
        let logits = self.logits(session, req.after, req.after + n)?;
        let (accepted, pick) = speculate::judge(&logits, vocab, &req.draft, &req.u, &req.params);
        let s = self.sessions.get_mut(&session).ok_or(Error::UnknownSession(session))?;
        s.cache.truncate(req.after + 1 + accepted)?;
        Ok(Verdict { accepted, pick })
    }

    fn rollback(&mut self, session: SessionId, len: usize) -> Result<()> {
        let width = self.layers.partition().shape.hidden_size;
        let s = self.sessions.get_mut(&session).ok_or(Error::UnknownSession(session))?;
        s.rows.truncate(len * width);
        s.cache.truncate(len)
    }

    fn end_session(&mut self, session: SessionId) {
        self.sessions.remove(&session);
    }
}
