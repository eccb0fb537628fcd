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
use crate::speculate::{self, Checked, VerifyPasses};
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
    /// As asked; `checked` comes to `singly` on layers whose batched passes compute more than
    /// rounding away from one-position ones (see [`CloudLayers::verify_passes`]), decided at
    /// the first verification.
    verify: VerifyPasses,
    verify_settled: bool,
    /// The rounding a checked verdict allows for (see [`CloudLayers::verify_passes`]).
    rounding: f32,
    /// Verifications whose batched verdict was too close to call and ran again.
    rechecked: usize,
}

impl InProcessCloud {
    pub fn new(layers: CloudLayers) -> Self {
        Self {
            layers,
            sessions: HashMap::new(),
            verify: VerifyPasses::default(),
            verify_settled: false,
            rounding: speculate::BATCH_ROUNDING,
            rechecked: 0,
        }
    }

    /// How verifications run the draft's positions ([`VerifyPasses::Checked`] by default).
    pub fn with_verify(mut self, verify: VerifyPasses) -> Self {
        self.verify = verify;
        self.verify_settled = false;
        self
    }

    /// Verifications whose batched verdict was too close to call, so their positions from
    /// the unsure one on ran again one at a time.
    pub fn rechecked(&self) -> usize {
        self.rechecked
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
    /// Runs the session's rows up to position `last` on top of its cache (cut back to `from`
    /// when it is past it) and returns where the run started and the logits of positions
    /// `first..=last`: in one pass, or the ones after `first` one position at a time.
    fn logits(
        &mut self,
        session: SessionId,
        from: usize,
        first: usize,
        last: usize,
        batched: bool,
    ) -> Result<(usize, Vec<f32>)> {
        let width = self.layers.partition().shape.hidden_size;
        let s = self.sessions.get_mut(&session).ok_or(Error::UnknownSession(session))?;
        if last >= s.uploaded(width) {
            return Err(Error::Invalid(format!(
                "position {last} requested but only positions below {} were uploaded",
                s.uploaded(width)
            )));
        }
        s.cache.truncate(from)?;
        let from = s.cache.len();
        let rows = &s.rows[from * width..(last + 1) * width];
        let no_edge = EdgeAnswered::default();
        let count = last + 1 - first;
        let stepped = if batched {
            self.layers.step(&mut s.cache, rows, &no_edge, count)?
        } else {
            self.layers.step_one_by_one(&mut s.cache, rows, &no_edge, count)?
        };
        Ok((from, stepped.logits))
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
        // Catch up on every uploaded position up to `after`, as the cloud's catch-up mode says
        // (a cache already past the asked position is cut back to where its piece begins).
        let first = s.cache.len().min(req.edge_answered.run_start(req.after as u64) as usize);
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
        let (first, last) = (req.after, req.after + n);
        let judge =
            |logits: &[f32]| speculate::judge(logits, vocab, &req.draft, &req.u, &req.params);
        if !self.verify_settled {
            (self.verify, self.rounding) = self.layers.verify_passes(self.verify)?;
            self.verify_settled = true;
        }
        let (accepted, pick) = match self.verify {
            VerifyPasses::Singly => judge(&self.logits(session, first, first, last, false)?.1),
            VerifyPasses::Batched => judge(&self.logits(session, first, first, last, true)?.1),
            VerifyPasses::Checked => {
                let (from, logits) = self.logits(session, first, first, last, true)?;
                let rounding = self.rounding;
                match speculate::judge_checked(
                    &logits,
                    vocab,
                    &req.draft,
                    &req.u,
                    &req.params,
                    rounding,
                ) {
                    Checked::Verdict(accepted, pick) => (accepted, pick),
                    Checked::Unsure(i) => {
                        // From the unsure position on, one position at a time (the one before
                        // the draft with the catch-up before it, as the single pass ran it).
                        let again = if i == 0 { from } else { first + i };
                        let (_, singles) = self.logits(session, again, first + i, last, false)?;
                        let mut rows = logits[..i * vocab].to_vec();
                        rows.extend_from_slice(&singles);
                        self.rechecked += 1;
                        judge(&rows)
                    }
                }
            }
        };
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
