//! One generation, token by token: the edge partition runs every position (on the shared
//! engine), its hidden states go to the cloud in the background, and each token comes from a
//! confident exit head, the cloud, or — when the cloud is too slow or unreachable — the deepest
//! exit head. Tokens are sent on a channel as they are chosen; a dropped receiver (client gone,
//! stop string reached) ends the generation.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use collm_cloud_client::{CloudLink, CloudSession};
use collm_protocol::{SessionId, TraceParent, pb};
use collm_runtime::adjust::{Generated, LogitAdjustment};
use collm_runtime::codec::{self, Encoding};
use collm_runtime::sampling::{Pick, SamplingParams};
use collm_runtime::transport::{CloudAnswer, NextTokenRequest};
use collm_runtime::{EdgeAnswered, ExitPolicy};
use serde::Serialize;
use tokio::sync::mpsc;

use crate::decide::{self, Choice, CloudView, Fallback};
use crate::engine::EdgeEngine;
use crate::metrics::{Metrics, SourceLabels};
use crate::mode::Mode;
use crate::{Error, Result};

/// Who answered a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Source {
    /// A confident exit head.
    Edge,
    Cloud,
    /// The deepest exit head, because the cloud was too slow or unreachable.
    EdgeFallback,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Edge => "edge",
            Source::Cloud => "cloud",
            Source::EdgeFallback => "edge-fallback",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Token {
    pub id: u32,
    pub source: Source,
    /// Under the answering partition's untempered softmax, after the request's adjustment.
    pub prob: f32,
    /// The most likely tokens at this position (most likely first), as many as the request
    /// asked for log probabilities of; empty otherwise.
    pub alternatives: Vec<Pick>,
}

impl Token {
    /// A token the cloud picked.
    pub fn from_cloud(answer: CloudAnswer, source: Source) -> Self {
        Token { id: answer.pick.token, source, prob: answer.pick.prob, alternatives: answer.top_k }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// An end-of-turn token.
    Stop,
    /// `max_tokens` or the context reached.
    Length,
    /// The receiver went away (client disconnected or a stop string ended the text).
    Cancelled,
}

/// A validated generation request.
pub struct GenerationRequest {
    pub prompt: Vec<u32>,
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    pub seed: u64,
    pub mode: Mode,
    pub policy: ExitPolicy,
    pub trace: Option<TraceParent>,
    /// `logit_bias` and the penalties, applied by whichever partition answers a token.
    pub adjustment: LogitAdjustment,
    /// Alternatives to report with each token (`None`: no log probabilities asked for).
    pub alternatives: Option<usize>,
}

/// What a finished generation did, for `usage` and the metrics.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Summary {
    pub edge_tokens: usize,
    pub cloud_tokens: usize,
    pub latency_fallback_tokens: usize,
    pub uploaded_bytes: u64,
    /// The cloud could not be reached for at least one token the edge was unsure of.
    pub degraded: bool,
    /// Times the edge took back tokens it had decoded ahead of the cloud.
    pub rollbacks: usize,
    /// Draft tokens verified, and accepted by the cloud (speculative mode).
    pub drafted: usize,
    pub accepted: usize,
}

impl Summary {
    /// Counts a committed token.
    pub fn count(&mut self, source: Source) {
        match source {
            Source::Edge => self.edge_tokens += 1,
            Source::Cloud => self.cloud_tokens += 1,
            Source::EdgeFallback => self.latency_fallback_tokens += 1,
        }
    }
}

pub struct Generator {
    pub(crate) engine: Arc<EdgeEngine>,
    link: Option<CloudLink>,
    pub(crate) encoding: Encoding,
    pub(crate) budget: Option<Duration>,
    pub(crate) metrics: Metrics,
    session_prefix: String,
    sessions: AtomicU64,
}

impl Generator {
    pub fn new(
        engine: Arc<EdgeEngine>,
        link: Option<CloudLink>,
        encoding: Encoding,
        budget: Option<Duration>,
        metrics: Metrics,
    ) -> Self {
        Self {
            engine,
            link,
            encoding,
            budget,
            metrics,
            session_prefix: collm_cloud_client::session_prefix(),
            sessions: AtomicU64::new(0),
        }
    }

    pub fn engine(&self) -> &EdgeEngine {
        &self.engine
    }

    pub fn link(&self) -> Option<&CloudLink> {
        self.link.as_ref()
    }

    /// Runs `req`, sending each token on `tokens` as soon as it is chosen.
    pub async fn run(
        &self,
        req: GenerationRequest,
        tokens: mpsc::Sender<Token>,
    ) -> Result<(Finish, Summary)> {
        self.metrics.active_generations.inc();
        self.metrics.prompt_tokens.inc_by(req.prompt.len() as u64);
        let result = if req.mode == Mode::Cloud {
            self.run_in_cloud(&req, &tokens).await
        } else {
            self.run_on_edge(&req, &tokens).await
        };
        self.metrics.active_generations.dec();
        let summary = result.as_ref().map(|(_, s)| s.clone()).unwrap_or_default();
        for (source, n) in [
            (Source::Edge, summary.edge_tokens),
            (Source::Cloud, summary.cloud_tokens),
            (Source::EdgeFallback, summary.latency_fallback_tokens),
        ] {
            let labels = SourceLabels { source: source.as_str().into() };
            self.metrics.tokens.get_or_create(&labels).inc_by(n as u64);
        }
        self.metrics.uploaded_bytes.inc_by(summary.uploaded_bytes);
        self.metrics.rollbacks.inc_by(summary.rollbacks as u64);
        self.metrics.drafted_tokens.inc_by(summary.drafted as u64);
        self.metrics.accepted_draft_tokens.inc_by(summary.accepted as u64);
        if summary.degraded {
            self.metrics.degraded_responses.inc();
        }
        result
    }

    async fn run_on_edge(
        &self,
        req: &GenerationRequest,
        tokens: &mpsc::Sender<Token>,
    ) -> Result<(Finish, Summary)> {
        let mut session = match (req.mode, &self.link) {
            (Mode::Standalone, _) | (_, None) => None,
            (_, Some(link)) => {
                let n = self.sessions.fetch_add(1, Ordering::Relaxed);
                let id = SessionId::parse(&format!("{}-{n}", self.session_prefix))?;
                let mut s = CloudSession::new(link.clone(), id, self.encoding);
                s.set_trace(req.trace.clone());
                Some(s)
            }
        };
        // Decoding ahead of the cloud needs a cloud that takes rows back; with an older one
        // (or none connected yet) every uncertain token waits for its answer.
        let capabilities = session.as_ref().and_then(CloudSession::capabilities);
        let result = match (req.mode, capabilities, session.as_mut()) {
            (Mode::Speculative, Some(c), Some(s)) if c.verify && c.epochs => {
                self.run_speculative(req, tokens, s).await
            }
            (Mode::Collaborative, Some(c), Some(s)) if c.epochs => {
                self.run_pipelined(req, tokens, s).await
            }
            (_, _, s) => self.run_sequential(req, tokens, s).await,
        };
        let mut session_bytes = 0;
        if let Some(s) = session {
            session_bytes = s.uploaded_bytes();
            // Ending the cloud session is housekeeping: the client does not wait for it.
            tokio::spawn(s.end());
        }
        let (finish, mut summary) = result?;
        summary.uploaded_bytes = session_bytes;
        Ok((finish, summary))
    }

    /// Every uncertain token waits for the cloud's answer before the next is decoded.
    async fn run_sequential(
        &self,
        req: &GenerationRequest,
        tokens: &mpsc::Sender<Token>,
        mut session: Option<&mut CloudSession>,
    ) -> Result<(Finish, Summary)> {
        let engine = &self.engine;
        let width = engine.hidden_size;
        let deepest = engine.deepest_exit();
        let stop_ids = engine.text.stop_ids().to_vec();
        let mut summary = Summary::default();
        let mut decoder = engine.decoder(&req.prompt, req.seed).await?;
        let max_new = req.max_tokens.min(decoder.room());
        let mut produced = 0;
        let mut finish = Finish::Length;
        // Positions whose token the edge picked without asking: a `propagate` cloud derives
        // their deeper K/V from the uploaded state. Positions the cloud was asked about stay
        // out even when it failed to answer, so every replica runs them exactly.
        let mut edge_answered = EdgeAnswered::after_prompt(req.prompt.len() as u64);
        // The tokens answered so far, in order: the request's penalties count them and the exit
        // policy keeps the edge from repeating them.
        let mut seen = Generated::default();
        while produced < max_new {
            let (next, step) = engine.step(decoder).await?;
            decoder = next;
            if let Some(s) = session.as_deref_mut() {
                let payload = codec::encode(&step.hidden, width, self.encoding);
                match req.mode {
                    Mode::Naive => s.keep(step.start, &payload)?,
                    _ => s.upload(step.start, &payload)?,
                }
            }
            let Some(ready) = step.ready else { continue };
            let heads = req.heads(&ready, &seen);
            let view = match session.as_deref().and_then(CloudSession::estimate) {
                Some(estimate) => CloudView::Connected { estimate },
                None => CloudView::Unreachable,
            };
            let choice = decide::choose(
                req.mode,
                req.policy.decide(&heads, seen.tokens()),
                deepest,
                view,
                self.budget,
            );
            let edge_pick = |layer, source| req.pick(ready.head(layer), ready.u, &seen, source);
            let token = match choice {
                Choice::Exit(layer) => {
                    edge_answered.push(ready.after as u64);
                    edge_pick(layer, Source::Edge)
                }
                Choice::Fallback(why) => {
                    edge_answered.push(ready.after as u64);
                    summary.degraded |= why == Fallback::Unreachable;
                    edge_pick(deepest, Source::EdgeFallback)
                }
                Choice::AskCloud { timeout } => {
                    let Some(s) = session.as_deref_mut() else {
                        return Err(Error::Internal("a cloud choice without a session".into()));
                    };
                    let ask = NextTokenRequest {
                        after: ready.after,
                        params: req.sampling,
                        u: ready.u,
                        top_k: req.cloud_alternatives(),
                        edge_answered: edge_answered.clone(),
                        adjustment: req.adjustment.clone(),
                        seen: seen.clone(),
                    };
                    match self.ask(s, req.mode, ask, timeout).await {
                        Ok(answer) => Token::from_cloud(answer, Source::Cloud),
                        Err(e) => {
                            tracing::warn!(error = %e, "the cloud did not answer; the edge does");
                            summary.degraded |= !matches!(e, collm_cloud_client::Error::Timeout(_));
                            edge_pick(deepest, Source::EdgeFallback)
                        }
                    }
                }
            };
            summary.count(token.source);
            produced += 1;
            let id = token.id;
            seen.push(id);
            if tokens.send(token).await.is_err() {
                finish = Finish::Cancelled;
                break;
            }
            if stop_ids.contains(&id) {
                finish = Finish::Stop;
                break;
            }
            if produced < max_new {
                decoder.accept(id)?;
            }
        }
        Ok((finish, summary))
    }

    pub(crate) async fn ask(
        &self,
        session: &mut CloudSession,
        mode: Mode,
        req: NextTokenRequest,
        timeout: Duration,
    ) -> collm_cloud_client::Result<CloudAnswer> {
        let t = Instant::now();
        let answer = match mode {
            Mode::Naive => session.ask_naive(req, timeout).await,
            _ => session.next_token(req, timeout).await,
        };
        let elapsed = t.elapsed();
        self.metrics.cloud_request_seconds.observe(elapsed.as_secs_f64());
        if answer.is_err() {
            self.metrics.cloud_errors.inc();
            if let Some(link) = &self.link {
                // A timed-out request still tells how slow the cloud is.
                if let Ok(mut model) = link.latency().lock() {
                    model.observe_answer(elapsed);
                }
            }
        }
        answer
    }

    /// The cloud-only baseline: forward the whole request to a worker running the full model.
    async fn run_in_cloud(
        &self,
        req: &GenerationRequest,
        tokens: &mpsc::Sender<Token>,
    ) -> Result<(Finish, Summary)> {
        let link = self.link.as_ref().ok_or(Error::NoCloud)?;
        let stop_ids = self.engine.text.stop_ids().to_vec();
        let wire = pb::GenerateRequest {
            prompt_ids: req.prompt.clone(),
            max_tokens: req.max_tokens as u32,
            sampling: Some(pb::SamplingParams {
                temperature: req.sampling.temperature,
                top_k: req.sampling.top_k as u32,
                top_p: Some(req.sampling.top_p),
            }),
            seed: req.seed,
            stop_ids: stop_ids.clone(),
            adjustment: collm_cloud_client::convert::adjustment(
                &req.adjustment,
                &Generated::default(),
            ),
            top_k: req.cloud_alternatives() as u32,
        };
        let mut stream =
            link.generate_full(wire, req.trace.as_ref()).await.map_err(Error::Cloud)?;
        let mut summary = Summary::default();
        let mut finish = Finish::Length;
        while let Some(t) = stream.message().await.map_err(|s| Error::Cloud(s.into()))? {
            summary.cloud_tokens += 1;
            let alternatives =
                t.top_k.iter().map(|p| Pick { token: p.token, prob: p.prob }).collect();
            let token = Token { id: t.token, source: Source::Cloud, prob: t.prob, alternatives };
            if tokens.send(token).await.is_err() {
                finish = Finish::Cancelled;
                break;
            }
            if stop_ids.contains(&t.token) {
                finish = Finish::Stop;
            }
        }
        Ok((finish, summary))
    }
}
