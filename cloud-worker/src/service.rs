//! `CloudService` over a context store and the cloud engine: authenticate, parse into validated
//! types, store or compute, and map every error through [`crate::Error`] once. Every call is
//! timed into [`WorkerMetrics`] and traced inside the per-request span the server opens (which
//! continues the edge's trace, see `serve`).

use std::pin::Pin;
use std::sync::{Arc, Mutex};

use collm_protocol::pb;
use collm_protocol::replies::{ack_missing, ack_persisted};
use collm_protocol::{
    Adjustment, Capabilities, CloudService, Limits, ProtocolError, SessionId, ValidGenerate,
    ValidNextToken, ValidUpload, ValidVerify,
};
use collm_runtime::EdgeAnswered;
use collm_runtime::adjust::{Generated, LogitAdjustment};
use collm_runtime::sampling::{self, SamplingParams};
use collm_runtime::speculate::{self, BATCH_ROUNDING, Checked, VerifyPasses};
use collm_telemetry::http::Readiness;
use collm_telemetry::metrics::Registry;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Code, Request, Response, Status, Streaming};
use tracing::{Instrument, Span, instrument};

use crate::clients::{ClientId, Clients};
use crate::context::{Appended, ContextStore};
use crate::engine::CloudEngine;
use crate::full::{Finished, FullModel};
use crate::infer::{self, DEFAULT_ROW_WAIT, RowsArrived, Run};
use crate::metrics::{Rpc, RpcTimer, WorkerMetrics};
use crate::{Error, Result};

pub struct CloudWorker<S> {
    clients: Arc<Clients>,
    store: Arc<S>,
    engine: Arc<Mutex<CloudEngine>>,
    limits: Limits,
    model_id: String,
    metrics: Arc<WorkerMetrics>,
    readiness: Readiness,
    full: Option<Arc<FullModel>>,
    capabilities: Capabilities,
    /// Bound on waiting for the rows a request needs.
    row_wait: std::time::Duration,
    arrived: RowsArrived,
    vocab_size: usize,
    /// How Verify runs a draft's positions, and the rounding a checked verdict allows for.
    verify: VerifyPasses,
    rounding: f32,
}

/// The sampling parameters of the runtime for validated wire ones.
fn params(s: collm_protocol::Sampling) -> SamplingParams {
    SamplingParams { temperature: s.temperature, top_k: s.top_k as usize, top_p: s.top_p }
}

/// A request's checked adjustment as the runtime applies it, with the generated tokens it
/// counts.
fn adjustment(a: &Adjustment) -> (LogitAdjustment, Generated) {
    let adjustment = LogitAdjustment {
        bias: a.bias.iter().copied().collect(),
        presence_penalty: a.presence_penalty,
        frequency_penalty: a.frequency_penalty,
    };
    (adjustment, Generated::from_counts(a.generated.iter().copied()))
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
            vocab_size: engine.vocab_size(),
            clients: Arc::new(clients),
            store: Arc::new(store),
            engine: Arc::new(Mutex::new(engine)),
            limits,
            model_id,
            // Counted even when nobody serves them, so a handler never checks.
            metrics: WorkerMetrics::register(&mut Registry::default()),
            readiness: Readiness::new(),
            full: None,
            capabilities: Capabilities::all(),
            row_wait: DEFAULT_ROW_WAIT,
            arrived: RowsArrived::default(),
            verify: VerifyPasses::default(),
            rounding: BATCH_ROUNDING,
        }
    }

    /// How Verify runs a draft's positions ([`VerifyPasses::Checked`] by default: one batched
    /// pass, positions from a near tie on again one at a time), and the rounding a checked
    /// verdict allows for (`CloudLayers::verify_passes` says both for a bundle).
    pub fn with_verify(mut self, verify: VerifyPasses, rounding: f32) -> Self {
        self.verify = verify;
        self.rounding = rounding;
        self
    }

    /// What this worker announces and serves beyond the original protocol (all by default;
    /// fewer to act as an older worker would, e.g. during a rolling upgrade).
    pub fn with_capabilities(mut self, capabilities: Capabilities) -> Self {
        self.capabilities = capabilities;
        self
    }

    /// How long a request waits for rows it needs that are not stored yet.
    pub fn with_row_wait(mut self, wait: std::time::Duration) -> Self {
        self.row_wait = wait;
        self
    }

    /// Counts into `metrics` (registered in the registry `/metrics` serves).
    pub fn with_metrics(mut self, metrics: Arc<WorkerMetrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// `Health` answers `serving: false` whenever `readiness` is not ready.
    pub fn with_readiness(mut self, readiness: Readiness) -> Self {
        self.readiness = readiness;
        self
    }

    /// Serves `Generate` with the full model (the cloud-only baseline).
    pub fn with_full_model(mut self, full: FullModel) -> Self {
        self.full = Some(Arc::new(full));
        self
    }

    /// The context store, shared, for the readiness checks.
    pub fn store(&self) -> Arc<S> {
        Arc::clone(&self.store)
    }

    /// The client the call's bearer token names, recorded on the call's span.
    fn admit<T>(&self, req: &Request<T>) -> Result<ClientId> {
        let client = self.clients.authenticate(req.metadata())?;
        Span::current().record("client", client.as_str());
        Ok(client)
    }

    /// How long a request may wait for its rows: without the `epochs` capability the worker
    /// behaves as before it had it, refusing at once what is not stored yet.
    fn row_wait(&self) -> std::time::Duration {
        if self.capabilities.epochs { self.row_wait } else { std::time::Duration::ZERO }
    }

    async fn next(&self, client: ClientId, req: ValidNextToken) -> Result<pb::NextTokenReply> {
        req.adjustment.check_vocab(u32::try_from(self.vocab_size).unwrap_or(u32::MAX))?;
        let needed = infer::RowsNeeded {
            client: &client,
            session: &req.session,
            branch: &req.branch,
            end: req.after + 1,
            what: "a next-token request",
        };
        let info =
            infer::wait_for_rows(&*self.store, &self.arrived, needed, self.row_wait()).await?;
        let edge_answered = EdgeAnswered::from_flat(&req.edge_answered)
            .map_err(ProtocolError::InvalidEdgeAnswers)?
            .with_prompt_len(req.prompt_len);
        let run = Run {
            client: &client,
            session: &req.session,
            branch: &req.branch,
            first: req.after,
            end: req.after + 1,
            edge_answered: &edge_answered,
            batched: true,
            from_at_most: None,
        };
        let (extended, cached) = infer::extend(&self.engine, &*self.store, run).await?;
        self.metrics.answered(extended.cache, extended.computed, extended.propagated, cached);
        tracing::debug!(cache = ?extended.cache, computed = extended.computed, "answered");
        let (params, u, top_k) = (params(req.sampling), req.u, req.top_k as usize);
        let (adjustment, seen) = adjustment(&req.adjustment);
        // Picking reads the whole vocabulary: off the async executor, outside the engine lock.
        let (pick, top) = tokio::task::spawn_blocking(move || {
            let logits = adjustment.apply(&extended.logits, &seen);
            let top = if top_k > 0 { sampling::top_k(&logits, top_k) } else { vec![] };
            (sampling::sample(&logits, &params, u), top)
        })
        .await
        .map_err(|e| Error::Internal(format!("picking task failed: {e}")))?;
        Ok(pb::NextTokenReply {
            token: pick.token,
            prob: pick.prob,
            top_k: top.iter().map(|p| pb::TokenProb { token: p.token, prob: p.prob }).collect(),
            persisted: info.persisted,
        })
    }

    async fn verify(&self, client: ClientId, req: ValidVerify) -> Result<pb::VerifyReply> {
        if !self.capabilities.verify {
            return Err(Error::Unsupported(Capabilities::VERIFY));
        }
        let vocab = self.vocab_size;
        if let Some((index, &id)) =
            req.draft.iter().enumerate().find(|(_, t)| **t as usize >= vocab)
        {
            return Err(ProtocolError::UnknownTokenId {
                what: "draft",
                index,
                id,
                vocab_size: vocab as u32,
            }
            .into());
        }
        let end = req.rows_end();
        let needed = infer::RowsNeeded {
            client: &client,
            session: &req.session,
            branch: &req.branch,
            end,
            what: "a verify request",
        };
        let info =
            infer::wait_for_rows(&*self.store, &self.arrived, needed, self.row_wait()).await?;
        let (accepted, pick) = self.judge(&client, &req, end).await?;
        self.metrics.verified(req.draft.len(), accepted);
        tracing::debug!(after = req.after, draft = ?req.draft, accepted, token = pick.token, "verified");
        // The cache keeps the accepted tokens' positions only; the rejected ones are recomputed
        // from their rewritten rows on the next request.
        let keep = req.after + 1 + accepted as u64;
        let (session, epoch) = (req.session.clone(), req.branch.epoch);
        infer::with_engine(&self.engine, move |e| e.truncate(&client, &session, epoch, keep))
            .await?;
        Ok(pb::VerifyReply {
            accepted: accepted as u32,
            token: pick.token,
            prob: pick.prob,
            persisted: info.persisted,
        })
    }

    /// Runs the draft's positions as `self.verify` says and judges them: in one batched pass
    /// whose verdict stands when no deciding pick is near enough a tie for the batch's
    /// rounding to swap it; else from the unsure position on again, one position at a time.
    async fn judge(
        &self,
        client: &ClientId,
        req: &ValidVerify,
        end: u64,
    ) -> Result<(usize, sampling::Pick)> {
        let (vocab, params) = (self.vocab_size, params(req.sampling));
        let no_edge = EdgeAnswered::default();
        let run = |first: u64, batched: bool, from_at_most: Option<u64>| Run {
            client,
            session: &req.session,
            branch: &req.branch,
            first,
            end,
            // Every drafted position runs exactly: the verdict is the full model's.
            edge_answered: &no_edge,
            batched,
            from_at_most,
        };
        let batched = self.verify != VerifyPasses::Singly;
        let (extended, cached) =
            infer::extend(&self.engine, &*self.store, run(req.after, batched, None)).await?;
        self.metrics.answered(extended.cache, extended.computed, extended.propagated, cached);
        let (draft, u) = (req.draft.clone(), req.u.clone());
        let (check, rounding) = (self.verify == VerifyPasses::Checked, self.rounding);
        let (from, logits) = (extended.from, extended.logits);
        let (checked, logits) = tokio::task::spawn_blocking(move || {
            let checked = if check {
                speculate::judge_checked(&logits, vocab, &draft, &u, &params, rounding)
            } else {
                let (accepted, pick) = speculate::judge(&logits, vocab, &draft, &u, &params);
                Checked::Verdict(accepted, pick)
            };
            (checked, logits)
        })
        .await
        .map_err(|e| Error::Internal(format!("verification task failed: {e}")))?;
        let unsure = match checked {
            Checked::Verdict(accepted, pick) => return Ok((accepted, pick)),
            Checked::Unsure(i) => i,
        };
        // The position before the draft ran with the catch-up before it: so again.
        let first = req.after + unsure as u64;
        let again = run(first, false, (unsure == 0).then_some(from));
        let (extended, cached) = infer::extend(&self.engine, &*self.store, again).await?;
        self.metrics.answered(extended.cache, extended.computed, extended.propagated, cached);
        self.metrics.verify_rechecked();
        tracing::debug!(after = req.after, unsure, "a near tie: judged again position by position");
        let (draft, u) = (req.draft.clone(), req.u.clone());
        tokio::task::spawn_blocking(move || {
            let mut rows = logits[..unsure * vocab].to_vec();
            rows.extend_from_slice(&extended.logits);
            speculate::judge(&rows, vocab, &draft, &u, &params)
        })
        .await
        .map_err(|e| Error::Internal(format!("verification task failed: {e}")))
    }

    async fn end(&self, client: ClientId, session: SessionId) -> Result<pb::EndSessionReply> {
        let existed = self.store.end(&client, &session).await?;
        let engine = Arc::clone(&self.engine);
        let cached = tokio::task::spawn_blocking(move || {
            engine.lock().ok().map(|mut engine| {
                engine.forget(&client, &session);
                engine.cached_sessions()
            })
        })
        .await
        .map_err(|e| Error::Internal(format!("forgetting the session failed: {e}")))?;
        if existed {
            self.metrics.session_ended();
        }
        if let Some(n) = cached {
            self.metrics.set_cached_sessions(n);
        }
        Ok(pb::EndSessionReply { existed })
    }

    /// The full model and the checked request, or why this call cannot generate.
    fn admit_generation(
        &self,
        req: Request<pb::GenerateRequest>,
    ) -> Result<(Arc<FullModel>, ValidGenerate)> {
        self.admit(&req)?;
        let full = self.full.as_ref().ok_or(Error::SplitOnly)?;
        let valid = ValidGenerate::parse(req.into_inner(), &full.limits())?;
        Ok((Arc::clone(full), valid))
    }

    /// Decodes on a blocking thread; the tokens arrive on the returned stream as they come.
    fn spawn_generation(
        &self,
        full: Arc<FullModel>,
        valid: ValidGenerate,
        timer: RpcTimer,
    ) -> GenerateStream {
        let (tx, rx) = tokio::sync::mpsc::channel(32);
        let metrics = Arc::clone(&self.metrics);
        let span = Span::current();
        tokio::task::spawn_blocking(move || {
            let _span = span.enter();
            let finished = full.generate(&valid, &mut |token, prob, alternatives| {
                metrics.generated();
                let top_k =
                    alternatives.iter().map(|p| pb::TokenProb { token: p.token, prob: p.prob });
                let token = pb::GeneratedToken { token, prob, top_k: top_k.collect() };
                tx.blocking_send(Ok(token)).is_ok()
            });
            match finished {
                Ok(Finished::Done(g)) => {
                    tracing::info!(tokens = g.tokens.len(), finish = %g.finish_reason, "generated");
                    timer.finish(Code::Ok);
                }
                Ok(Finished::Abandoned) => timer.finish(Code::Cancelled),
                Err(e) => {
                    let status = Status::from(e);
                    timer.finish(status.code());
                    let _ = tx.blocking_send(Err(status));
                }
            }
        });
        Box::pin(ReceiverStream::new(rx))
    }
}

type AckStream = Pin<Box<dyn Stream<Item = Result<pb::UploadAck, Status>> + Send>>;
type GenerateStream = Pin<Box<dyn Stream<Item = Result<pb::GeneratedToken, Status>> + Send>>;

impl<S: ContextStore> CloudWorker<S> {
    /// Runs a unary RPC's `work`, recording its duration and status code under `rpc`.
    async fn timed<T>(
        &self,
        rpc: Rpc,
        work: impl std::future::Future<Output = Result<T>>,
    ) -> Result<Response<T>, Status> {
        let timer = self.metrics.start(rpc);
        let result = work.await.map(Response::new).map_err(Status::from);
        timer.finish_with(&result);
        result
    }
}

#[tonic::async_trait]
impl<S: ContextStore> CloudService for CloudWorker<S> {
    type UploadStream = AckStream;

    #[instrument(skip_all, fields(client = tracing::field::Empty))]
    async fn upload(
        &self,
        req: Request<Streaming<pb::UploadChunk>>,
    ) -> Result<Response<AckStream>, Status> {
        let timer = self.metrics.start(Rpc::Upload);
        let client = match self.admit(&req) {
            Ok(client) => client,
            Err(e) => {
                let status = Status::from(e);
                timer.finish(status.code());
                return Err(status);
            }
        };
        let mut chunks = req.into_inner();
        let (store, metrics) = (Arc::clone(&self.store), Arc::clone(&self.metrics));
        let (limits, arrived, capabilities) =
            (self.limits, self.arrived.clone(), self.capabilities);
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let acks = async move {
            let mut code = Code::Ok;
            while let Some(chunk) = chunks.next().await {
                let ack = async {
                    let upload = ValidUpload::parse(chunk?, &limits).map_err(Error::from)?;
                    if upload.epoch > 0 && !capabilities.epochs {
                        return Err(Status::from(Error::Unsupported(Capabilities::EPOCHS)));
                    }
                    metrics.uploaded(upload.rows, upload.payload.len());
                    let (session, start, epoch) =
                        (upload.session.clone(), upload.start, upload.epoch);
                    let appended = store.append(&client, upload).await?;
                    arrived.ring();
                    Ok::<_, Status>(match appended {
                        Appended::Persisted(p) => {
                            if start == 0 && p > 0 {
                                metrics.session_opened();
                            }
                            ack_persisted(&session, p, epoch)
                        }
                        Appended::MissingFrom(p) => ack_missing(&session, p, epoch),
                    })
                }
                .await;
                if let Err(status) = &ack {
                    code = status.code();
                }
                let failed = ack.is_err();
                if tx.send(ack).await.is_err() {
                    code = Code::Cancelled;
                    break;
                }
                if failed {
                    break;
                }
            }
            timer.finish(code);
        };
        tokio::spawn(acks.in_current_span());
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    #[instrument(skip_all, fields(client = tracing::field::Empty))]
    async fn next_token(
        &self,
        req: Request<pb::NextTokenRequest>,
    ) -> Result<Response<pb::NextTokenReply>, Status> {
        self.timed(Rpc::NextToken, async {
            let client = self.admit(&req)?;
            let req = ValidNextToken::parse(req.into_inner(), &self.limits)?;
            self.next(client, req).await
        })
        .await
    }

    #[instrument(skip_all, fields(client = tracing::field::Empty))]
    async fn verify(
        &self,
        req: Request<pb::VerifyRequest>,
    ) -> Result<Response<pb::VerifyReply>, Status> {
        self.timed(Rpc::Verify, async {
            let client = self.admit(&req)?;
            let req = ValidVerify::parse(req.into_inner(), &self.limits)?;
            self.verify(client, req).await
        })
        .await
    }

    #[instrument(skip_all, fields(client = tracing::field::Empty))]
    async fn end_session(
        &self,
        req: Request<pb::EndSessionRequest>,
    ) -> Result<Response<pb::EndSessionReply>, Status> {
        self.timed(Rpc::EndSession, async {
            let client = self.admit(&req)?;
            let session = SessionId::parse(&req.get_ref().session_id)?;
            self.end(client, session).await
        })
        .await
    }

    #[instrument(skip_all, fields(client = tracing::field::Empty))]
    async fn health(
        &self,
        req: Request<pb::HealthRequest>,
    ) -> Result<Response<pb::HealthReply>, Status> {
        // Authenticated too: an edge learns that its credentials are wrong before it uploads.
        self.timed(Rpc::Health, async {
            self.admit(&req)?;
            let serving = self.readiness.is_ready();
            Ok(self.limits.health_reply(serving, self.model_id.clone(), self.capabilities))
        })
        .await
    }

    type GenerateStream = GenerateStream;

    #[instrument(skip_all, fields(client = tracing::field::Empty))]
    async fn generate(
        &self,
        req: Request<pb::GenerateRequest>,
    ) -> Result<Response<GenerateStream>, Status> {
        let timer = self.metrics.start(Rpc::Generate);
        match self.admit_generation(req) {
            Ok((full, valid)) => Ok(Response::new(self.spawn_generation(full, valid, timer))),
            Err(e) => {
                let status = Status::from(e);
                timer.finish(status.code());
                Err(status)
            }
        }
    }
}
