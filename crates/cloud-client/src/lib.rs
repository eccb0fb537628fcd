//! The edge side of the edge <-> cloud gRPC protocol.
//!
//! [`CloudLink`] is the edge's connection to the cloud: several endpoints, failover,
//! reconnection with backoff, health probes feeding a latency model. [`CloudSession`] is one
//! generation's conversation over it: uploads are pipelined (queued at once, acknowledged in the
//! background, so the edge keeps decoding while its hidden states travel) and only a
//! next-token request waits, for the acks covering the positions it needs. The session keeps
//! every row it uploaded, so whatever the cloud loses costs a re-upload, not the session.
//!
//! [`GrpcCloud`] wraps both into the runtime's synchronous [`CloudTransport`] for the CLI.

pub mod convert;
pub mod discovery;
pub mod estimate;
pub mod link;
pub mod pool;
mod rendezvous;
pub mod session;
mod tls;
pub mod token;
mod uploads;

use std::collections::HashMap;
use std::time::Duration;

use collm_protocol::{CloudServiceClient, ProtocolError, SessionId};
use collm_runtime::transport::{
    self, CloudAnswer, CloudTransport, NextTokenRequest, Upload, UploadAck, Verdict, VerifyRequest,
};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

pub use discovery::{Discovery, Resolve};
pub use link::{CloudLink, LinkConfig, LinkStatus, TlsFiles};
pub use session::{CloudSession, Verdict as CloudVerdict};

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot reach the cloud at {url}: {reason}")]
    Connect { url: String, reason: String },
    #[error("no cloud endpoint can be used: {0}")]
    Unreachable(String),
    #[error("the cloud refused the credentials: {0}")]
    Unauthenticated(String),
    #[error("the cloud refused the request: {0}")]
    Refused(String),
    #[error("the cloud is unavailable: {0}")]
    Unavailable(String),
    #[error("the cloud no longer holds the session: {0}")]
    Lost(String),
    #[error(
        "the cloud serves hidden states of {cloud} values but this edge produces {edge}: edge and cloud run different models or splits"
    )]
    HiddenSize { cloud: u32, edge: usize },
    #[error("the cloud serves model {cloud} but this edge runs {edge}")]
    ModelMismatch { cloud: String, edge: String },
    #[error("the cloud is not serving")]
    NotServing,
    #[error("the cloud lost positions from {0} on of this session")]
    Missing(u64),
    #[error("no answer from the cloud within {0:?}")]
    Timeout(Duration),
    #[error("the link to the cloud failed: {0}")]
    Link(String),
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    #[error("cloud transport: {0}")]
    Io(String),
}

impl Error {
    /// Whether another endpoint (or this one, reconnected) might do better.
    pub fn is_link_failure(&self) -> bool {
        matches!(
            self,
            Error::Connect { .. } | Error::Unavailable(_) | Error::Link(_) | Error::NotServing
        )
    }

    /// A next-token request's failure: a lost session is worth a re-upload.
    fn from_answer(status: tonic::Status) -> Self {
        match status.code() {
            tonic::Code::NotFound | tonic::Code::FailedPrecondition => {
                Error::Lost(status.message().to_owned())
            }
            _ => Error::from(status),
        }
    }
}

impl From<tonic::Status> for Error {
    fn from(status: tonic::Status) -> Self {
        match status.code() {
            tonic::Code::Unauthenticated | tonic::Code::PermissionDenied => {
                Error::Unauthenticated(status.message().to_owned())
            }
            tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled => {
                Error::Unavailable(status.message().to_owned())
            }
            _ => Error::Refused(format!("{:?}: {}", status.code(), status.message())),
        }
    }
}

impl From<Error> for collm_runtime::Error {
    fn from(err: Error) -> Self {
        collm_runtime::Error::Invalid(err.to_string())
    }
}

/// An error and its causes on one line (tonic's own message is only "transport error").
fn with_causes(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        // Some layers already print their cause in their own message.
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

type Client = CloudServiceClient<InterceptedService<Channel, token::EdgeToken>>;

/// The cloud behind gRPC endpoints as the runtime's synchronous transport: owns a small tokio
/// runtime and blocks on it.
pub struct GrpcCloud {
    rt: tokio::runtime::Runtime,
    link: CloudLink,
    /// Distinguishes this edge process's sessions from earlier ones of the same client.
    prefix: String,
    sessions: HashMap<transport::SessionId, CloudSession>,
}

impl GrpcCloud {
    /// Connects to `url`, checks the cloud is serving the hidden size this edge produces.
    pub fn connect(url: &str, token: &str, hidden_size: usize) -> Result<Self> {
        Self::with_config(LinkConfig::new(vec![url.to_owned()], token, hidden_size))
    }

    pub fn with_config(config: LinkConfig) -> Result<Self> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .map_err(|e| Error::Io(e.to_string()))?;
        let link = rt.block_on(CloudLink::connect(config))?;
        Ok(Self { rt, link, prefix: session_prefix(), sessions: HashMap::new() })
    }

    /// The session id this transport uses on the wire for the runtime's `session`.
    pub fn wire_session_id(&self, session: transport::SessionId) -> Result<SessionId> {
        Ok(SessionId::parse(&format!("{}-{session}", self.prefix))?)
    }
}

/// A prefix unique to this process and moment, for session ids.
pub fn session_prefix() -> String {
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("{:x}-{:x}", std::process::id(), nonce)
}

impl CloudTransport for GrpcCloud {
    fn upload(
        &mut self,
        session: transport::SessionId,
        upload: Upload,
    ) -> collm_runtime::Result<UploadAck> {
        let _rt = self.rt.enter();
        let entry = match self.sessions.entry(session) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => {
                let id =
                    SessionId::parse(&format!("{}-{session}", self.prefix)).map_err(Error::from)?;
                v.insert(CloudSession::new(self.link.clone(), id, upload.encoding))
            }
        };
        entry.upload(upload.start, &upload.payload)?;
        Ok(UploadAck { persisted: upload.start + upload.rows })
    }

    fn next_token(
        &mut self,
        session: transport::SessionId,
        req: NextTokenRequest,
    ) -> collm_runtime::Result<CloudAnswer> {
        let timeout = self.link.config().ack_timeout;
        let s =
            self.sessions.get_mut(&session).ok_or(collm_runtime::Error::UnknownSession(session))?;
        Ok(self.rt.block_on(s.next_token(req, timeout))?)
    }

    fn verify(
        &mut self,
        session: transport::SessionId,
        req: VerifyRequest,
    ) -> collm_runtime::Result<Verdict> {
        let timeout = self.link.config().ack_timeout;
        let s =
            self.sessions.get_mut(&session).ok_or(collm_runtime::Error::UnknownSession(session))?;
        let v = self.rt.block_on(s.verify(req.after, &req.draft, &req.u, &req.params, timeout))?;
        Ok(Verdict { accepted: v.accepted, pick: v.pick })
    }

    fn rollback(&mut self, session: transport::SessionId, len: usize) -> collm_runtime::Result<()> {
        let _rt = self.rt.enter();
        let s =
            self.sessions.get_mut(&session).ok_or(collm_runtime::Error::UnknownSession(session))?;
        Ok(s.rollback(len)?)
    }

    fn can_speculate(&self) -> bool {
        let _rt = self.rt.enter();
        self.link.connection().is_some_and(|c| c.capabilities.epochs && c.capabilities.verify)
    }

    fn end_session(&mut self, session: transport::SessionId) {
        if let Some(s) = self.sessions.remove(&session) {
            self.rt.block_on(s.end());
        }
    }
}
