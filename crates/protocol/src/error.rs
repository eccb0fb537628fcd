//! Everything the protocol layer can refuse, and its single mapping to a gRPC status.

use crate::codec::Encoding;

pub type Result<T, E = ProtocolError> = std::result::Result<T, E>;

/// Which integrity check a payload failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChecksumKind {
    Crc32c,
    Sha256,
}

impl std::fmt::Display for ChecksumKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Crc32c => "CRC-32C",
            Self::Sha256 => "SHA-256",
        })
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ProtocolError {
    #[error("invalid session id: {0}")]
    InvalidSessionId(String),

    #[error(
        "unknown hidden-state encoding {0} (expected ENCODING_F32, ENCODING_F16 or ENCODING_INT8)"
    )]
    UnknownEncoding(i32),

    #[error("hidden size {got} does not match the model's hidden size {expected}")]
    HiddenSizeMismatch { got: u32, expected: u32 },

    #[error("upload chunk holds no rows (rows must be at least 1)")]
    EmptyUpload,

    #[error(
        "{} payload of {got} bytes does not hold {rows} rows of {hidden_size} values (expected {expected} bytes)",
        encoding.as_str()
    )]
    PayloadLength { encoding: Encoding, rows: u32, hidden_size: u32, got: usize, expected: u64 },

    #[error("upload chunk has no checksum (set crc32c or sha256 of the payload)")]
    MissingChecksum,

    #[error("sha256 checksum must be 32 bytes, got {0}")]
    MalformedSha256(usize),

    #[error("payload {0} checksum mismatch: the chunk was corrupted in transit, resend it")]
    ChecksumMismatch(ChecksumKind),

    #[error("upload chunk of {rows} rows exceeds the limit of {max} rows per chunk; split it")]
    TooManyRows { rows: u32, max: u32 },

    #[error("upload payload of {bytes} bytes exceeds the limit of {max} bytes per chunk; split it")]
    PayloadTooLarge { bytes: usize, max: usize },

    #[error("positions up to {end} exceed the context of {max_context} positions per session")]
    BeyondContext { end: u64, max_context: u64 },

    #[error("hidden state at position {position} holds a non-finite value (NaN or infinity)")]
    NonFinite { position: u64 },

    #[error(
        "upload starts at position {start} but the cloud holds only positions below {persisted}; re-upload from {persisted}"
    )]
    Gap { persisted: u64, start: u64 },

    #[error(
        "next token after position {after} requested but the cloud holds only positions below {persisted}; upload up to {after} first"
    )]
    NotUploaded { after: u64, persisted: u64 },

    #[error("temperature must be a finite number >= 0, got {0}")]
    InvalidTemperature(f32),

    #[error("top_p must be in (0, 1], got {0}")]
    InvalidTopP(f32),

    #[error("uniform draw u must be in [0, 1), got {0}")]
    InvalidDraw(f64),

    #[error("invalid edge_answered: {0}")]
    InvalidEdgeAnswers(String),

    #[error(
        "edge_answered holds {values} values, more than the {max} ([start, end) pairs) a session's context can need"
    )]
    TooManyEdgeAnswers { values: usize, max: u64 },

    #[error(
        "prompt_len {prompt_len} puts the asked position {after} inside the prompt: the edge asks about the prompt's last position or a later one"
    )]
    PromptPastAsk { prompt_len: u64, after: u64 },

    #[error("invalid rollbacks: {0}")]
    InvalidRollbacks(String),

    #[error(
        "{what} of epoch {epoch} refused: the session is on epoch {current}, so it comes from a rolled-back branch or a stale connection"
    )]
    StaleEpoch { what: &'static str, epoch: u64, current: u64 },

    #[error("a draft holds {len} tokens; send 1 to {max}")]
    DraftLength { len: usize, max: u32 },

    #[error("a draft of n tokens needs n + 1 uniform draws, got {draws} (expected {expected})")]
    DrawCount { draws: usize, expected: usize },

    #[error("top_k of {requested} alternatives exceeds the limit of {max}")]
    TopKTooLarge { requested: u32, max: u32 },

    #[error("the prompt is empty: send at least one token id")]
    EmptyPrompt,

    #[error("invalid logit adjustment: {0}")]
    InvalidAdjustment(String),

    #[error(
        "the prompt of {len} tokens leaves no room to generate in the context of {max_context} positions"
    )]
    PromptTooLong { len: u64, max_context: u64 },

    #[error("{what}[{index}] = {id} is not a token of this model (vocabulary of {vocab_size})")]
    UnknownTokenId { what: &'static str, index: usize, id: u32, vocab_size: u32 },

    #[error("max_tokens must be at least 1")]
    NoTokensAsked,

    #[error("malformed traceparent header: {0}")]
    MalformedTraceparent(String),

    #[error("missing credentials: send `authorization: Bearer <token>` metadata")]
    MissingCredentials,

    #[error("malformed credentials: {0}")]
    MalformedCredentials(String),
}

impl ProtocolError {
    /// The gRPC code of this error: the one place that decides it.
    pub fn code(&self) -> tonic::Code {
        use ProtocolError::*;
        match self {
            InvalidSessionId(_)
            | UnknownEncoding(_)
            | HiddenSizeMismatch { .. }
            | EmptyUpload
            | PayloadLength { .. }
            | MissingChecksum
            | MalformedSha256(_)
            | ChecksumMismatch(_)
            | NonFinite { .. }
            | InvalidTemperature(_)
            | InvalidTopP(_)
            | InvalidDraw(_)
            | InvalidEdgeAnswers(_)
            | PromptPastAsk { .. }
            | InvalidRollbacks(_)
            | DraftLength { .. }
            | DrawCount { .. }
            | TopKTooLarge { .. }
            | EmptyPrompt
            | InvalidAdjustment(_)
            | PromptTooLong { .. }
            | UnknownTokenId { .. }
            | NoTokensAsked
            | MalformedTraceparent(_) => tonic::Code::InvalidArgument,
            TooManyRows { .. } | PayloadTooLarge { .. } | TooManyEdgeAnswers { .. } => {
                tonic::Code::ResourceExhausted
            }
            BeyondContext { .. } => tonic::Code::OutOfRange,
            Gap { .. } | NotUploaded { .. } => tonic::Code::FailedPrecondition,
            StaleEpoch { .. } => tonic::Code::Aborted,
            MissingCredentials | MalformedCredentials(_) => tonic::Code::Unauthenticated,
        }
    }
}

impl From<ProtocolError> for tonic::Status {
    fn from(err: ProtocolError) -> Self {
        tonic::Status::new(err.code(), err.to_string())
    }
}
