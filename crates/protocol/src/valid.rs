//! Wire messages become validated values here, before anything else sees them: the cloud's
//! engine and context store only ever handle a [`ValidUpload`] or a [`ValidNextToken`], whose
//! lengths, shapes, enums, positions and numbers are known to be sound.
//!
//! What needs the session's state (gaps, positions never uploaded) cannot be decided from one
//! message; [`check_contiguous`] and [`check_uploaded`] decide it from the state the caller holds.

use prost::bytes::Bytes;
use sha2::Digest;

use crate::adjustment::Adjustment;
use crate::codec::{self, Encoding};
use crate::error::ChecksumKind;
use crate::pb;
use crate::{ProtocolError, Result, SessionId};

/// What one cloud replica accepts. The model fixes `hidden_size` and `max_context`; the rest are
/// operating limits that keep one message from exhausting a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Values per hidden-state row at the split layer.
    pub hidden_size: u32,
    /// Positions per session (the model's context length).
    pub max_context: u64,
    /// Largest `rows` in one upload chunk.
    pub max_chunk_rows: u32,
    /// Largest payload in one upload chunk, in bytes.
    pub max_chunk_bytes: usize,
    /// Largest number of alternatives a next-token reply may list.
    pub max_top_k: u32,
    /// Longest draft one Verify request may carry.
    pub max_draft: u32,
}

impl Limits {
    /// Default per-chunk payload limit: 3 MiB, below tonic's default 4 MiB message limit so an
    /// oversize chunk gets this crate's clear message rather than a transport error.
    pub const DEFAULT_MAX_CHUNK_BYTES: usize = 3 << 20;
    pub const DEFAULT_MAX_CHUNK_ROWS: u32 = 1024;
    pub const DEFAULT_MAX_TOP_K: u32 = 64;
    pub const DEFAULT_MAX_DRAFT: u32 = 64;

    /// Limits for a model, with default operating limits.
    pub fn new(hidden_size: u32, max_context: u64) -> Self {
        Self {
            hidden_size,
            max_context,
            max_chunk_rows: Self::DEFAULT_MAX_CHUNK_ROWS,
            max_chunk_bytes: Self::DEFAULT_MAX_CHUNK_BYTES,
            max_top_k: Self::DEFAULT_MAX_TOP_K,
            max_draft: Self::DEFAULT_MAX_DRAFT,
        }
    }

    /// Limits as a cloud advertises them in its `Health` reply, for an edge to size its chunks.
    pub fn from_health(reply: &pb::HealthReply) -> Self {
        Self {
            hidden_size: reply.hidden_size,
            max_context: reply.max_context,
            max_chunk_rows: reply.max_chunk_rows,
            max_chunk_bytes: usize::try_from(reply.max_chunk_bytes).unwrap_or(usize::MAX),
            max_top_k: Self::DEFAULT_MAX_TOP_K,
            max_draft: Self::DEFAULT_MAX_DRAFT,
        }
    }

    /// The most rows of `encoding` one chunk may carry under both the row and the byte limit
    /// (0 when not even one row fits).
    pub fn rows_per_chunk(&self, encoding: Encoding) -> u32 {
        let by_bytes = self.max_chunk_bytes / encoding.row_bytes(self.hidden_size as usize).max(1);
        self.max_chunk_rows.min(u32::try_from(by_bytes).unwrap_or(u32::MAX))
    }

    /// The `Health` reply describing these limits and what the cloud can do.
    pub fn health_reply(
        &self,
        serving: bool,
        model_id: impl Into<String>,
        capabilities: Capabilities,
    ) -> pb::HealthReply {
        pb::HealthReply {
            serving,
            model_id: model_id.into(),
            hidden_size: self.hidden_size,
            max_context: self.max_context,
            max_chunk_rows: self.max_chunk_rows,
            max_chunk_bytes: self.max_chunk_bytes as u64,
            capabilities: capabilities.to_wire(),
        }
    }
}

/// Hidden states of positions `[start, start + rows)` of one session, checked against the model:
/// right hidden size, a known encoding, a payload of exactly `rows` rows whose checksum matches,
/// within the chunk limits and the context, every value finite.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidUpload {
    pub session: SessionId,
    /// The branch the rows belong to (0 before any rollback).
    pub epoch: u64,
    /// When `epoch` is newer than the session's: stored rows from here on are dropped first.
    pub rewrite_from: u64,
    pub start: u64,
    pub rows: u32,
    pub encoding: Encoding,
    pub hidden_size: u32,
    /// The rows, still in their transport encoding (the cloud context stores them as they came).
    pub payload: Bytes,
}

impl ValidUpload {
    pub fn parse(chunk: pb::UploadChunk, limits: &Limits) -> Result<Self> {
        let session = SessionId::parse(&chunk.session_id)?;
        let encoding = codec::from_wire(chunk.encoding)
            .ok_or(ProtocolError::UnknownEncoding(chunk.encoding))?;
        if chunk.hidden_size != limits.hidden_size {
            return Err(ProtocolError::HiddenSizeMismatch {
                got: chunk.hidden_size,
                expected: limits.hidden_size,
            });
        }
        if chunk.rows == 0 {
            return Err(ProtocolError::EmptyUpload);
        }
        if chunk.rows > limits.max_chunk_rows {
            return Err(ProtocolError::TooManyRows {
                rows: chunk.rows,
                max: limits.max_chunk_rows,
            });
        }
        if chunk.payload.len() > limits.max_chunk_bytes {
            return Err(ProtocolError::PayloadTooLarge {
                bytes: chunk.payload.len(),
                max: limits.max_chunk_bytes,
            });
        }
        let row_bytes = encoding.row_bytes(chunk.hidden_size as usize) as u64;
        let expected = u64::from(chunk.rows) * row_bytes;
        if chunk.payload.len() as u64 != expected {
            return Err(ProtocolError::PayloadLength {
                encoding,
                rows: chunk.rows,
                hidden_size: chunk.hidden_size,
                got: chunk.payload.len(),
                expected,
            });
        }
        let end = chunk.start.saturating_add(u64::from(chunk.rows));
        if end > limits.max_context {
            return Err(ProtocolError::BeyondContext { end, max_context: limits.max_context });
        }
        verify_checksum(&chunk.payload, chunk.checksum.as_ref())?;
        let width = chunk.hidden_size as usize;
        if let Some(i) = codec::first_non_finite(&chunk.payload, width, encoding) {
            return Err(ProtocolError::NonFinite { position: chunk.start + (i / width) as u64 });
        }
        Ok(Self {
            session,
            epoch: chunk.epoch,
            rewrite_from: chunk.rewrite_from,
            start: chunk.start,
            rows: chunk.rows,
            encoding,
            hidden_size: chunk.hidden_size,
            payload: chunk.payload,
        })
    }

    /// One past the last position this upload holds.
    pub fn end(&self) -> u64 {
        self.start + u64::from(self.rows)
    }

    /// The rows as f32, row-major (`rows * hidden_size` values, all finite).
    pub fn decode(&self) -> Vec<f32> {
        codec::decode(&self.payload, self.hidden_size as usize, self.encoding)
    }

    /// The part of this upload the session does not hold yet, given its `persisted` position:
    /// `None` when every row is already stored (a retransmission), the tail otherwise. Fails
    /// with [`ProtocolError::Gap`] when the upload starts beyond `persisted`.
    pub fn unstored(self, persisted: u64) -> Result<Option<Self>> {
        let stored = check_contiguous(persisted, self.start)?;
        if stored >= u64::from(self.rows) {
            return Ok(None);
        }
        if stored == 0 {
            return Ok(Some(self));
        }
        let row_bytes = self.encoding.row_bytes(self.hidden_size as usize);
        let skip = stored as usize * row_bytes;
        Ok(Some(Self {
            start: persisted,
            rows: self.rows - stored as u32,
            payload: self.payload.slice(skip..),
            ..self
        }))
    }
}

fn verify_checksum(payload: &[u8], checksum: Option<&pb::upload_chunk::Checksum>) -> Result<()> {
    match checksum {
        None => Err(ProtocolError::MissingChecksum),
        Some(pb::upload_chunk::Checksum::Crc32c(sum)) => {
            if crc32c::crc32c(payload) == *sum {
                Ok(())
            } else {
                Err(ProtocolError::ChecksumMismatch(ChecksumKind::Crc32c))
            }
        }
        Some(pb::upload_chunk::Checksum::Sha256(sum)) => {
            if sum.len() != 32 {
                return Err(ProtocolError::MalformedSha256(sum.len()));
            }
            if sha2::Sha256::digest(payload).as_slice() == sum.as_slice() {
                Ok(())
            } else {
                Err(ProtocolError::ChecksumMismatch(ChecksumKind::Sha256))
            }
        }
    }
}

/// How the next token is picked; the semantics of the edge's own sampler.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampling {
    /// >= 0; 0 is greedy.
    pub temperature: f32,
    /// 0 is no top-k cut.
    pub top_k: u32,
    /// In (0, 1]; 1 is no nucleus cut.
    pub top_p: f32,
}

impl Default for Sampling {
    fn default() -> Self {
        Self { temperature: 0.0, top_k: 0, top_p: 1.0 }
    }
}

impl Sampling {
    pub fn parse(params: Option<&pb::SamplingParams>) -> Result<Self> {
        let Some(p) = params else { return Ok(Self::default()) };
        if !(p.temperature.is_finite() && p.temperature >= 0.0) {
            return Err(ProtocolError::InvalidTemperature(p.temperature));
        }
        let top_p = p.top_p.unwrap_or(1.0);
        if !(top_p > 0.0 && top_p <= 1.0) {
            return Err(ProtocolError::InvalidTopP(top_p));
        }
        Ok(Self { temperature: p.temperature, top_k: p.top_k, top_p })
    }

    pub fn to_wire(self) -> pb::SamplingParams {
        pb::SamplingParams {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: Some(self.top_p),
        }
    }
}

/// What the cloud can do beyond the original protocol, as its Health reply announces it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Capabilities {
    /// Asks wait for their rows; sessions have epochs; rows may be rewritten after a rollback.
    pub epochs: bool,
    /// The Verify RPC (lossless speculation).
    pub verify: bool,
}

impl Capabilities {
    pub const EPOCHS: &'static str = "epochs";
    pub const VERIFY: &'static str = "verify";

    /// Everything this version of the protocol defines.
    pub fn all() -> Self {
        Self { epochs: true, verify: true }
    }

    /// From a Health reply; names this version does not know are ignored.
    pub fn from_wire(names: &[String]) -> Self {
        let has = |n: &str| names.iter().any(|c| c == n);
        Self { epochs: has(Self::EPOCHS), verify: has(Self::VERIFY) }
    }

    pub fn to_wire(self) -> Vec<String> {
        [(self.epochs, Self::EPOCHS), (self.verify, Self::VERIFY)]
            .into_iter()
            .filter(|(on, _)| *on)
            .map(|(_, n)| n.to_owned())
            .collect()
    }
}

/// The branch a request is asked on: its epoch and, for every rollback so far, the first
/// position it rewrote (one per epoch, each inside the context).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Branch {
    pub epoch: u64,
    pub rollbacks: Vec<u64>,
}

impl Branch {
    pub fn parse(epoch: u64, rollbacks: Vec<u64>, limits: &Limits) -> Result<Self> {
        if rollbacks.len() as u64 != epoch {
            return Err(ProtocolError::InvalidRollbacks(format!(
                "epoch {epoch} needs one rollback position per epoch, got {}",
                rollbacks.len()
            )));
        }
        if let Some(p) = rollbacks.iter().find(|&&p| p >= limits.max_context) {
            return Err(ProtocolError::InvalidRollbacks(format!(
                "rollback position {p} is outside the context of {} positions",
                limits.max_context
            )));
        }
        Ok(Self { epoch, rollbacks })
    }

    /// The lowest position rewritten by a rollback after epoch `since` (`None` when no
    /// rollback happened since): keys and values computed on epoch `since` are good below it.
    pub fn rewritten_since(&self, since: u64) -> Option<u64> {
        let from = usize::try_from(since).unwrap_or(usize::MAX).min(self.rollbacks.len());
        self.rollbacks[from..].iter().copied().min()
    }
}

/// "Which token follows position `after`?", checked: a sound session id, a position inside the
/// context, sampling parameters in range, a uniform draw in [0, 1), a sound branch.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidNextToken {
    pub session: SessionId,
    pub branch: Branch,
    pub after: u64,
    pub sampling: Sampling,
    pub u: f64,
    /// Alternatives to return, at most `Limits::max_top_k`.
    pub top_k: u32,
    /// Positions the edge answered, `[start, end)` pairs flattened (bounded in size here; the
    /// runtime's `EdgeAnswered::from_flat` checks their order).
    pub edge_answered: Vec<u64>,
    /// Positions of the generation's prompt (0: the edge did not say), at most `after + 1`.
    pub prompt_len: u64,
    /// Token ids are checked by the cloud, which knows the vocabulary.
    pub adjustment: Adjustment,
}

impl ValidNextToken {
    pub fn parse(req: pb::NextTokenRequest, limits: &Limits) -> Result<Self> {
        let session = SessionId::parse(&req.session_id)?;
        if req.after >= limits.max_context {
            return Err(ProtocolError::BeyondContext {
                end: req.after.saturating_add(1),
                max_context: limits.max_context,
            });
        }
        let sampling = Sampling::parse(req.sampling.as_ref())?;
        if !(req.u >= 0.0 && req.u < 1.0) {
            return Err(ProtocolError::InvalidDraw(req.u));
        }
        if req.top_k > limits.max_top_k {
            return Err(ProtocolError::TopKTooLarge {
                requested: req.top_k,
                max: limits.max_top_k,
            });
        }
        if req.edge_answered.len() as u64 > limits.max_context.saturating_mul(2) {
            return Err(ProtocolError::TooManyEdgeAnswers {
                values: req.edge_answered.len(),
                max: limits.max_context.saturating_mul(2),
            });
        }
        if req.prompt_len > req.after + 1 {
            return Err(ProtocolError::PromptPastAsk {
                prompt_len: req.prompt_len,
                after: req.after,
            });
        }
        Ok(Self {
            session,
            branch: Branch::parse(req.epoch, req.rollbacks, limits)?,
            after: req.after,
            sampling,
            u: req.u,
            top_k: req.top_k,
            edge_answered: req.edge_answered,
            prompt_len: req.prompt_len,
            adjustment: Adjustment::parse(req.adjustment, limits.max_context)?,
        })
    }
}

/// "Would the full model have picked these tokens after `after`?", checked: a draft of 1 to
/// `max_draft` tokens inside the context, one draw in [0, 1) per draft token plus one.
/// (Token ids are checked against the vocabulary by the cloud, which knows it.)
#[derive(Debug, Clone, PartialEq)]
pub struct ValidVerify {
    pub session: SessionId,
    pub branch: Branch,
    pub after: u64,
    pub draft: Vec<u32>,
    pub u: Vec<f64>,
    pub sampling: Sampling,
}

impl ValidVerify {
    pub fn parse(req: pb::VerifyRequest, limits: &Limits) -> Result<Self> {
        let session = SessionId::parse(&req.session_id)?;
        let n = req.draft.len();
        if n == 0 || n > limits.max_draft as usize {
            return Err(ProtocolError::DraftLength { len: n, max: limits.max_draft });
        }
        let end = req.after.saturating_add(n as u64 + 1);
        if end > limits.max_context {
            return Err(ProtocolError::BeyondContext { end, max_context: limits.max_context });
        }
        if req.u.len() != n + 1 {
            return Err(ProtocolError::DrawCount { draws: req.u.len(), expected: n + 1 });
        }
        if let Some(&u) = req.u.iter().find(|u| !(**u >= 0.0 && **u < 1.0)) {
            return Err(ProtocolError::InvalidDraw(u));
        }
        Ok(Self {
            session,
            branch: Branch::parse(req.epoch, req.rollbacks, limits)?,
            after: req.after,
            sampling: Sampling::parse(req.sampling.as_ref())?,
            draft: req.draft,
            u: req.u,
        })
    }

    /// One past the last position the verification reads (the last draft token's).
    pub fn rows_end(&self) -> u64 {
        self.after + self.draft.len() as u64 + 1
    }
}

/// How many leading rows of an upload starting at `start` the session already holds, given its
/// `persisted` position (0 when the upload continues exactly where the session ends). An upload
/// starting beyond `persisted` would leave a gap: [`ProtocolError::Gap`].
pub fn check_contiguous(persisted: u64, start: u64) -> Result<u64> {
    if start > persisted {
        return Err(ProtocolError::Gap { persisted, start });
    }
    Ok(persisted - start)
}

/// Whether the next token after position `after` can be computed from a session holding every
/// position below `persisted`.
pub fn check_uploaded(persisted: u64, after: u64) -> Result<()> {
    if after >= persisted {
        return Err(ProtocolError::NotUploaded { after, persisted });
    }
    Ok(())
}
