//! `CloudService` over a context store and the cloud engine: authenticate, parse into validated
//! types, store or compute, and map every error through [`crate::Error`] once.

use std::pin::Pin;
use std::sync::{Arc, Mutex};

use collm_protocol::pb;
use collm_protocol::replies::{ack_missing, ack_persisted};
use collm_protocol::{
    CloudService, Limits, SessionId, ValidNextToken, ValidUpload, check_uploaded,
};
use collm_runtime::sampling::SamplingParams;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};
use tracing::instrument;

use crate::clients::{ClientId, Clients};
use crate::context::{Appended, ContextStore};
use crate::engine::CloudEngine;
use crate::{Error, Result};

pub struct CloudWorker<S> {
    clients: Arc<Clients>,
    store: Arc<S>,
    engine: Arc<Mutex<CloudEngine>>,
    limits: Limits,
    model_id: String,
}

impl<S: ContextStore> CloudWorker<S> {
    pub fn new(
        clients: Clients,
        store: S,
        engine: CloudEngine,
        limits: Limits,
        model_id: String,
    ) -> Self {
        Self {
            clients: Arc::new(clients),
            store: Arc::new(store),
            engine: Arc::new(Mutex::new(engine)),
            limits,
            model_id,
        }
    }

    fn admit<T>(&self, req: &Request<T>) -> Result<ClientId> {
        self.clients.authenticate(req.metadata())
    }

    async fn next(&self, client: ClientId, req: ValidNextToken) -> Result<pb::NextTokenReply> {
        let info = self
            .store
            .session(&client, &req.session)
            .await?
            .ok_or_else(|| Error::UnknownSession(req.session.as_str().to_owned()))?;
        check_uploaded(info.persisted, req.after)?;
        let params = SamplingParams {
            temperature: req.sampling.temperature,
            top_k: req.sampling.top_k as usize,
            top_p: req.sampling.top_p,
        };
        let (engine, store) = (Arc::clone(&self.engine), Arc::clone(&self.store));
        let handle = tokio::runtime::Handle::current();
        // The engine lock is taken on a blocking thread only, and held from reading the cache's
        // length to extending it, so concurrent requests can never interleave on one cache.
        let picked = tokio::task::spawn_blocking(move || {
            let mut engine =
                engine.lock().map_err(|_| Error::Internal("engine poisoned".into()))?;
            let from = engine.usable_prefix(&client, &req.session, req.after);
            let segments =
                handle.block_on(store.rows(&client, &req.session, from..req.after + 1))?;
            let rows: Vec<f32> = segments.iter().flat_map(ValidUpload::decode).collect();
            engine.next_token(
                &client,
                &req.session,
                from,
                &rows,
                &params,
                req.u,
                req.top_k as usize,
            )
        })
        .await
        .map_err(|e| Error::Internal(format!("inference task failed: {e}")))??;
        Ok(pb::NextTokenReply {
            token: picked.pick.token,
            prob: picked.pick.prob,
            top_k: picked
                .top_k
                .iter()
                .map(|p| pb::TokenProb { token: p.token, prob: p.prob })
                .collect(),
            persisted: info.persisted,
        })
    }
}

type AckStream = Pin<Box<dyn Stream<Item = Result<pb::UploadAck, Status>> + Send>>;

#[tonic::async_trait]
impl<S: ContextStore> CloudService for CloudWorker<S> {
    type UploadStream = AckStream;

    #[instrument(skip_all)]
    async fn upload(
        &self,
        req: Request<Streaming<pb::UploadChunk>>,
    ) -> Result<Response<AckStream>, Status> {
        let client = self.admit(&req)?;
        let mut chunks = req.into_inner();
        let store = Arc::clone(&self.store);
        let limits = self.limits;
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        tokio::spawn(async move {
            while let Some(chunk) = chunks.next().await {
                let ack = async {
                    let upload = ValidUpload::parse(chunk?, &limits).map_err(Error::from)?;
                    let session = upload.session.clone();
                    Ok::<_, Status>(match store.append(&client, upload).await? {
                        Appended::Persisted(p) => ack_persisted(&session, p),
                        Appended::MissingFrom(p) => ack_missing(&session, p),
                    })
                }
                .await;
                let failed = ack.is_err();
                if tx.send(ack).await.is_err() || failed {
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    #[instrument(skip_all)]
    async fn next_token(
        &self,
        req: Request<pb::NextTokenRequest>,
    ) -> Result<Response<pb::NextTokenReply>, Status> {
        let client = self.admit(&req)?;
        let req = ValidNextToken::parse(req.into_inner(), &self.limits).map_err(Error::from)?;
        Ok(Response::new(self.next(client, req).await?))
    }

    #[instrument(skip_all)]
    async fn end_session(
        &self,
        req: Request<pb::EndSessionRequest>,
    ) -> Result<Response<pb::EndSessionReply>, Status> {
        let client = self.admit(&req)?;
        let session = SessionId::parse(&req.get_ref().session_id).map_err(Error::from)?;
        let existed = self.store.end(&client, &session).await?;
        let engine = Arc::clone(&self.engine);
        tokio::task::spawn_blocking(move || {
            if let Ok(mut engine) = engine.lock() {
                engine.forget(&client, &session);
            }
        })
        .await
        .map_err(|e| Error::Internal(format!("forgetting the session failed: {e}")))?;
        Ok(Response::new(pb::EndSessionReply { existed }))
    }

    #[instrument(skip_all)]
    async fn health(
        &self,
        req: Request<pb::HealthRequest>,
    ) -> Result<Response<pb::HealthReply>, Status> {
        // Authenticated too: an edge learns that its credentials are wrong before it uploads.
        self.admit(&req)?;
        Ok(Response::new(self.limits.health_reply(true, self.model_id.clone())))
    }

    type GenerateStream =
        Pin<Box<dyn Stream<Item = Result<pb::GeneratedToken, Status>> + Send>>;

    #[instrument(skip_all)]
    async fn generate(
        &self,
        req: Request<pb::GenerateRequest>,
    ) -> Result<Response<Self::GenerateStream>, Status> {
        self.admit(&req)?;
        Err(Status::failed_precondition(
            "this worker serves only the cloud partition; start it with --full to serve Generate",
        ))
    }
}
