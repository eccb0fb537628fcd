//! Everything the worker can refuse, and its single mapping to a gRPC status.

use collm_protocol::ProtocolError;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Protocol(#[from] ProtocolError),

    #[error("authentication failed: the bearer token is not known to this cloud worker")]
    UnknownToken,

    #[error("authentication failed: {0}")]
    TokenRefused(String),

    #[error("client {0} is revoked")]
    Revoked(String),

    #[error(
        "quota exceeded: the client already holds {held} sessions, the limit is {max}; end a session first"
    )]
    TooManySessions { held: usize, max: usize },

    #[error(
        "quota exceeded: positions up to {end} exceed the limit of {max} positions per session"
    )]
    TooManyPositions { end: u64, max: u64 },

    #[error("unknown session {0}: it was never uploaded, has ended or has expired")]
    UnknownSession(String),

    #[error(
        "session {session} stores {stored}; this upload has {got}: a session keeps the encoding of its first upload"
    )]
    SessionLayout { session: String, stored: String, got: String },

    /// The context store cannot serve now (unreachable, timed out, busy); the message names it.
    #[error("the cloud context store is unavailable: {0}")]
    StoreUnavailable(String),

    /// The context store refuses this worker's credentials: an operator must fix them.
    #[error("the cloud context store is unavailable: {0}")]
    StoreCredentials(String),

    #[error("cloud context store: {0}")]
    Store(String),

    #[error(
        "this worker serves only the cloud partition of the model; Generate needs a worker started with --full"
    )]
    SplitOnly,

    #[error(
        "this worker does not offer `{0}` (it is not in its Health capabilities); an edge must not use it here"
    )]
    Unsupported(&'static str),

    #[error("cloud partition: {0}")]
    Runtime(#[from] collm_runtime::Error),

    #[error("internal error: {0}")]
    Internal(String),
}

impl From<Error> for tonic::Status {
    fn from(err: Error) -> Self {
        use tonic::Code;
        let code = match &err {
            Error::Protocol(p) => p.code(),
            Error::UnknownToken | Error::TokenRefused(_) => Code::Unauthenticated,
            Error::Revoked(_) => Code::PermissionDenied,
            Error::TooManySessions { .. } | Error::TooManyPositions { .. } => {
                Code::ResourceExhausted
            }
            Error::UnknownSession(_) => Code::NotFound,
            Error::SplitOnly | Error::Unsupported(_) => Code::FailedPrecondition,
            Error::SessionLayout { .. } => Code::InvalidArgument,
            Error::StoreUnavailable(_) | Error::StoreCredentials(_) => Code::Unavailable,
            Error::Store(_) | Error::Runtime(_) | Error::Internal(_) => Code::Internal,
        };
        tonic::Status::new(code, err.to_string())
    }
}
