//! Lossless speculation at the edge: draft a run of tokens on the deepest exit head (each
//! picked with its position's draw, its hidden state uploaded as it is decoded), have the cloud
//! verify the run in one pass, send the accepted tokens and the cloud's own token to the
//! client, and roll the rejected positions back on both sides. The draft length follows the
//! measured acceptance rate and round trip ([`DraftLength`]). The output is the full model's.

use std::time::Instant;

use collm_cloud_client::CloudSession;
use collm_runtime::decoder::{EdgeDecoder, ReadyToPick};
use collm_runtime::sampling::{self, Pick};
use collm_runtime::speculate::DraftLength;
use tokio::sync::mpsc;

use crate::decide::UNBUDGETED_TIMEOUT;
use crate::generation::{Finish, GenerationRequest, Generator, Source, Summary, Token};
use crate::{Error, Result};

/// Longest draft one verification checks.
pub const MAX_DRAFT: usize = 16;

/// A verification's cost at the start, in edge steps, before any is measured.
const INITIAL_VERIFY_COST: f64 = 4.0;

/// Tokens committed so far and where the generation stands.
struct Output<'a> {
    tokens: &'a mpsc::Sender<Token>,
    stop_ids: Vec<u32>,
    max_new: usize,
    committed: usize,
    finish: Option<Finish>,
    summary: Summary,
}

impl Output<'_> {
    async fn commit(&mut self, pick: Pick, source: Source) {
        if self.finish.is_some() {
            return;
        }
        self.summary.count(source);
        self.committed += 1;
        // Speculative answers carry no alternatives: the cloud's verdict holds no distribution
        // (the API refuses log probabilities in this mode).
        let token = Token { id: pick.token, source, prob: pick.prob, alternatives: vec![] };
        if self.tokens.send(token).await.is_err() {
            self.finish = Some(Finish::Cancelled);
        } else if self.stop_ids.contains(&pick.token) {
            self.finish = Some(Finish::Stop);
        } else if self.committed >= self.max_new {
            self.finish = Some(Finish::Length);
        }
    }
}

impl Generator {
    pub(crate) async fn run_speculative(
        &self,
        req: &GenerationRequest,
        tokens: &mpsc::Sender<Token>,
        session: &mut CloudSession,
    ) -> Result<(Finish, Summary)> {
        let engine = &self.engine;
        let deepest = engine.deepest_exit();
        let mut decoder = engine.decoder(&req.prompt, req.seed).await?;
        let mut out = Output {
            tokens,
            stop_ids: engine.text.stop_ids().to_vec(),
            max_new: req.max_tokens.min(decoder.room()),
            committed: 0,
            finish: None,
            summary: Summary::default(),
        };
        if out.max_new == 0 {
            return Ok((Finish::Length, out.summary));
        }
        let mut lengths = DraftLength::new(MAX_DRAFT, INITIAL_VERIFY_COST);
        let mut ready;
        (decoder, ready) = self.step_until_ready(decoder, session, &mut lengths).await?;
        loop {
            let left = out.max_new - out.committed;
            // Every drafted token runs on the edge (the cloud verifies from its hidden state).
            let n = lengths.next().min(left).min(decoder.room());
            if n == 0 {
                return Ok((Finish::Length, out.summary));
            }
            let after = ready.after;
            let (mut draft, mut draws, mut picks) = (vec![], vec![], vec![]);
            while draft.len() < n {
                let pick = sampling::sample(ready.head(deepest), &req.sampling, ready.u);
                draft.push(pick.token);
                draws.push(ready.u);
                picks.push(pick);
                decoder.accept(pick.token)?;
                (decoder, ready) = self.step_until_ready(decoder, session, &mut lengths).await?;
                if out.stop_ids.contains(&pick.token) {
                    break;
                }
            }
            draws.push(ready.u);
            let t = Instant::now();
            let verdict =
                session.verify(after, &draft, &draws, &req.sampling, UNBUDGETED_TIMEOUT).await;
            self.metrics.cloud_request_seconds.observe(t.elapsed().as_secs_f64());
            let verdict = match verdict {
                Ok(v) => v,
                Err(e) => {
                    // No verdict: the draft stands unverified, as the edge's fallback.
                    tracing::warn!(error = %e, "the cloud did not verify; the edge's draft stands");
                    self.metrics.cloud_errors.inc();
                    out.summary.degraded |= !matches!(e, collm_cloud_client::Error::Timeout(_));
                    for &pick in &picks {
                        out.commit(pick, Source::EdgeFallback).await;
                    }
                    match out.finish {
                        Some(finish) => return Ok((finish, out.summary)),
                        None => continue,
                    }
                }
            };
            lengths.observe_verify(draft.len(), verdict.accepted, t.elapsed().as_secs_f64());
            out.summary.drafted += draft.len();
            out.summary.accepted += verdict.accepted;
            for &pick in &picks[..verdict.accepted] {
                out.commit(pick, Source::Edge).await;
            }
            out.commit(verdict.pick, Source::Cloud).await;
            if let Some(finish) = out.finish {
                return Ok((finish, out.summary));
            }
            if verdict.accepted < draft.len() {
                // Positions from the first rejected token on were decoded on a wrong draft.
                let keep = after + 1 + verdict.accepted;
                decoder.rollback(keep, verdict.pick.token)?;
                session.rollback(keep)?;
                out.summary.rollbacks += 1;
            } else {
                decoder.accept(verdict.pick.token)?;
            }
            (decoder, ready) = self.step_until_ready(decoder, session, &mut lengths).await?;
        }
    }

    /// Runs the edge over its pending tokens, uploading every hidden state, until the next
    /// token can be picked.
    async fn step_until_ready(
        &self,
        mut decoder: EdgeDecoder,
        session: &mut CloudSession,
        lengths: &mut DraftLength,
    ) -> Result<(EdgeDecoder, ReadyToPick)> {
        let width = self.engine.hidden_size;
        loop {
            let t = Instant::now();
            let step;
            (decoder, step) = self.engine.step(decoder).await?;
            let rows = step.rows(width);
            if rows == 1 {
                lengths.observe_edge_step(t.elapsed().as_secs_f64());
            }
            let payload = collm_runtime::codec::encode(&step.hidden, width, self.encoding);
            session.upload(step.start, &payload)?;
            if let Some(ready) = step.ready {
                return Ok((decoder, ready));
            }
            if decoder.pending().is_empty() {
                return Err(Error::Internal(
                    "the edge stopped before a token could be picked".into(),
                ));
            }
        }
    }
}
