//! A [`CloudTransport`] over gRPC. The trait is synchronous (the edge's decode loop is), so the
//! transport owns a small tokio runtime and blocks on it.
//!
//! Uploads are pipelined: every session shares one long-lived `Upload` stream; `upload` queues
//! the chunks and returns at once with what the cloud has acknowledged so far, so the edge keeps
//! decoding while its hidden states travel. Only `next_token` waits, for the ack covering the
//! requested position, because the cloud can only answer once it holds every position up to
//! it. A token the edge answers alone therefore never waits for the network.
//!
//! The transport keeps every row it uploaded until the session ends: when the cloud reports
//! positions missing (an ack with `missing_from`) or no longer knows the session at `next_token`
//! time, it uploads them again and asks once more, so a lost cloud context costs a re-upload,
//! not the session.

mod convert;
mod uploads;

use std::collections::HashMap;
use std::time::Duration;

use collm_protocol::pb;
use collm_protocol::{BearerToken, CloudServiceClient, Limits, ProtocolError, SessionId};
use collm_runtime::transport::{
    self, CloudAnswer, CloudTransport, NextTokenRequest, Upload, UploadAck,
};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use uploads::{Coverage, UploadPipe};

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot reach the cloud at {url}: {reason}")]
    Connect { url: String, reason: String },
    #[error("the cloud refused the credentials: {0}")]
    Unauthenticated(String),
    #[error("the cloud refused the request: {0}")]
    Refused(String),
    #[error(
        "the cloud serves hidden states of {cloud} values but this edge produces {edge}: edge and cloud run different models or splits"
    )]
    HiddenSize { cloud: u32, edge: usize },
    #[error("the cloud is not serving")]
    NotServing,
    #[error("the cloud lost positions from {0} on of this session")]
    Missing(u64),
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    #[error("cloud transport: {0}")]
    Io(String),
}

impl From<tonic::Status> for Error {
    fn from(status: tonic::Status) -> Self {
        match status.code() {
            tonic::Code::Unauthenticated | tonic::Code::PermissionDenied => {
                Error::Unauthenticated(status.message().to_owned())
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

type Client = CloudServiceClient<InterceptedService<Channel, BearerToken>>;

/// The cloud behind a gRPC endpoint, authenticated with one bearer token.
pub struct GrpcCloud {
    rt: tokio::runtime::Runtime,
    client: Client,
    limits: Limits,
    uploads: UploadPipe,
    /// Distinguishes this edge process's sessions from earlier ones of the same client.
    prefix: String,
    /// Every row uploaded per session, kept for the life of the session so that whatever the
    /// cloud loses (expiry, eviction, a flushed store) can be uploaded again.
    kept: HashMap<transport::SessionId, KeptRows>,
}

struct KeptRows {
    encoding: collm_protocol::Encoding,
    bytes: Vec<u8>,
}

/// How long `next_token` waits for the acknowledgement of the rows it needs.
const ACK_TIMEOUT: Duration = Duration::from_secs(30);

impl GrpcCloud {
    /// Connects to `url`, checks the cloud is serving the hidden size this edge produces.
    pub fn connect(url: &str, token: &str, hidden_size: usize) -> Result<Self> {
        let token = BearerToken::new(token)?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .map_err(|e| Error::Io(e.to_string()))?;
        let connect_err =
            |e: &dyn std::error::Error| Error::Connect { url: url.into(), reason: with_causes(e) };
        let endpoint = tonic::transport::Endpoint::from_shared(url.to_owned())
            .map_err(|e| connect_err(&e))?
            .connect_timeout(Duration::from_secs(10));
        let channel = rt.block_on(endpoint.connect()).map_err(|e| connect_err(&e))?;
        let mut client = CloudServiceClient::with_interceptor(channel, token);
        let health = rt.block_on(client.health(pb::HealthRequest {}))?.into_inner();
        if !health.serving {
            return Err(Error::NotServing);
        }
        if health.hidden_size as usize != hidden_size {
            return Err(Error::HiddenSize { cloud: health.hidden_size, edge: hidden_size });
        }
        let limits = Limits::from_health(&health);
        let uploads = rt.block_on(UploadPipe::open(client.clone()))?;
        let nonce = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let prefix = format!("{:x}-{:x}", std::process::id(), nonce);
        Ok(Self { rt, client, limits, uploads, prefix, kept: HashMap::new() })
    }

    /// The session id this transport uses on the wire for the runtime's `session`.
    pub fn wire_session_id(&self, session: transport::SessionId) -> Result<SessionId> {
        Ok(SessionId::parse(&format!("{}-{session}", self.prefix))?)
    }

    /// Queues rows `[start, start + n)` of `bytes` (whole rows of `encoding`) in chunks.
    fn send_rows(
        &self,
        id: &SessionId,
        start: usize,
        encoding: collm_protocol::Encoding,
        bytes: &[u8],
    ) -> Result<()> {
        let row_bytes = encoding.row_bytes(self.limits.hidden_size as usize);
        let per_chunk = (self.limits.rows_per_chunk(encoding) as usize).max(1);
        for (i, rows) in bytes.chunks(per_chunk * row_bytes).enumerate() {
            let chunk = collm_protocol::outgoing::upload_chunk(
                id,
                (start + i * per_chunk) as u64,
                (rows.len() / row_bytes) as u32,
                self.limits.hidden_size,
                encoding,
                rows.to_vec().into(),
            );
            self.uploads.send(chunk)?;
        }
        Ok(())
    }

    /// Uploads again every kept row of `session` from position `from` on.
    fn resend(&self, session: transport::SessionId, id: &SessionId, from: u64) -> Result<()> {
        let Some(kept) = self.kept.get(&session) else { return Ok(()) };
        let row_bytes = kept.encoding.row_bytes(self.limits.hidden_size as usize);
        let skip = (from as usize * row_bytes).min(kept.bytes.len());
        self.send_rows(id, from as usize, kept.encoding, &kept.bytes[skip..])
    }

    /// Makes sure the cloud holds every position of `session` below `end`, re-uploading what
    /// it reports missing.
    fn ensure_uploaded(
        &self,
        session: transport::SessionId,
        id: &SessionId,
        end: u64,
    ) -> Result<()> {
        match self.rt.block_on(self.uploads.wait_for(id, end, ACK_TIMEOUT))? {
            Coverage::Covered => Ok(()),
            Coverage::MissingFrom(from) => {
                self.resend(session, id, from)?;
                match self.rt.block_on(self.uploads.settle(id, end, ACK_TIMEOUT))? {
                    Coverage::Covered => Ok(()),
                    Coverage::MissingFrom(from) => Err(Error::Missing(from)),
                }
            }
        }
    }
}

impl CloudTransport for GrpcCloud {
    fn upload(
        &mut self,
        session: transport::SessionId,
        upload: Upload,
    ) -> collm_runtime::Result<UploadAck> {
        let id = self.wire_session_id(session)?;
        let encoding = upload.encoding;
        let row_bytes = encoding.row_bytes(self.limits.hidden_size as usize);
        let kept = self.kept.entry(session).or_insert(KeptRows { encoding, bytes: Vec::new() });
        if kept.encoding != encoding {
            kept.encoding = encoding;
            kept.bytes.clear();
        }
        kept.bytes.truncate(upload.start * row_bytes);
        kept.bytes.extend_from_slice(&upload.payload);
        self.send_rows(&id, upload.start, encoding, &upload.payload)?;
        let persisted = self.uploads.persisted(&id)?;
        Ok(UploadAck { persisted: persisted as usize })
    }

    fn next_token(
        &mut self,
        session: transport::SessionId,
        req: NextTokenRequest,
    ) -> collm_runtime::Result<CloudAnswer> {
        let id = self.wire_session_id(session)?;
        let after = req.after as u64;
        self.ensure_uploaded(session, &id, after + 1)?;
        let wire = collm_protocol::outgoing::next_token_request(
            &id,
            after,
            convert::sampling(&req.params),
            req.u,
            req.top_k as u32,
        );
        let reply = match self.rt.block_on(self.client.next_token(wire.clone())) {
            Ok(reply) => reply,
            // The cloud lost the session or part of it since it acknowledged the rows (expiry,
            // eviction, another replica's store): upload everything again and ask once more.
            Err(status)
                if matches!(
                    status.code(),
                    tonic::Code::NotFound | tonic::Code::FailedPrecondition
                ) =>
            {
                self.resend(session, &id, 0)?;
                match self.rt.block_on(self.uploads.settle(&id, after + 1, ACK_TIMEOUT))? {
                    Coverage::Covered => {}
                    Coverage::MissingFrom(from) => return Err(Error::Missing(from).into()),
                }
                self.rt.block_on(self.client.next_token(wire)).map_err(Error::from)?
            }
            Err(status) => return Err(Error::from(status).into()),
        };
        Ok(convert::answer(&reply.into_inner()))
    }

    fn end_session(&mut self, session: transport::SessionId) {
        self.kept.remove(&session);
        let Ok(id) = self.wire_session_id(session) else { return };
        let req = pb::EndSessionRequest { session_id: id.as_str().to_owned() };
        // Best effort: an unreachable cloud forgets the session when its TTL expires.
        let _ = self.rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(5), self.client.end_session(req)).await
        });
    }
}
