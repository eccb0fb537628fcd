//! The lossless speculative loop: the edge drafts a run of tokens from its deepest exit head
//! (each picked with its position's draw), uploading every drafted position's hidden state as
//! it goes; the cloud checks the whole run in one pass and keeps the full model's tokens. The
//! accepted draft tokens and the cloud's own token are committed; the positions after a
//! rejected token are rolled back on both sides. The output is the full model's.

use std::time::Instant;

use super::{GenerateOptions, Generation, Origin, TokenEvent, ms, next_session};
use crate::codec;
use crate::decoder::{EdgeDecoder, ReadyToPick};
use crate::partition::Partition;
use crate::sampling::{self, Pick};
use crate::speculate::DraftLength;
use crate::transport::{CloudTransport, SessionId, Upload, VerifyRequest};
use crate::{Error, Result};

/// Longest draft one verification checks.
pub const MAX_DRAFT: usize = 16;

/// A verification's cost at the start, in edge steps (an in-process cloud pass costs about
/// what a few edge steps do); measured costs take over after a few drafts.
const INITIAL_VERIFY_COST: f64 = 3.0;

pub(super) fn generate(
    edge: &mut Partition,
    deepest: usize,
    cloud: &mut dyn CloudTransport,
    prompt: &[u32],
    opts: &GenerateOptions,
    on_token: &mut dyn FnMut(&TokenEvent),
) -> Result<Generation> {
    // Verification has no adjustment on the wire: refuse rather than answer unadjusted.
    if !opts.adjustment.is_identity() {
        return Err(Error::Invalid(
            "logit bias and penalties are not supported with speculative decoding".into(),
        ));
    }
    let mut run = Run {
        decoder: EdgeDecoder::new(edge, &[deepest], prompt, opts.seed, true)?,
        session: next_session(),
        generation: Generation::new(prompt),
        first_token_at: None,
        done: false,
    };
    let start = Instant::now();
    let result = run.decode(edge, deepest, cloud, opts, on_token);
    cloud.end_session(run.session);
    result?;
    run.generation.finish(start, run.first_token_at);
    Ok(run.generation)
}

struct Run {
    decoder: EdgeDecoder,
    session: SessionId,
    generation: Generation,
    first_token_at: Option<Instant>,
    done: bool,
}

impl Run {
    fn decode(
        &mut self,
        edge: &mut Partition,
        deepest: usize,
        cloud: &mut dyn CloudTransport,
        opts: &GenerateOptions,
        on_token: &mut dyn FnMut(&TokenEvent),
    ) -> Result<()> {
        let max_new = opts.max_tokens.min(self.decoder.room());
        let mut lengths = DraftLength::new(MAX_DRAFT, INITIAL_VERIFY_COST);
        let mut ready = self.step_until_ready(edge, cloud, opts, &mut lengths)?;
        while !self.done && self.generation.tokens.len() < max_new {
            let left = max_new - self.generation.tokens.len();
            let n = lengths.next().min(left).min(self.decoder.room());
            if n == 0 {
                break;
            }
            // Draft: each token picked by the deepest head with its position's draw, then run
            // (its hidden state is what the cloud verifies from).
            let after = ready.after;
            let (mut draft, mut draws, mut probs) = (vec![], vec![], vec![]);
            while draft.len() < n {
                let pick = sampling::sample(ready.head(deepest), &opts.sampling, ready.u);
                draft.push(pick.token);
                draws.push(ready.u);
                probs.push(pick.prob);
                self.decoder.accept(pick.token)?;
                ready = self.step_until_ready(edge, cloud, opts, &mut lengths)?;
                if opts.stop_ids.contains(&pick.token) {
                    break;
                }
            }
            draws.push(ready.u);
            let t = Instant::now();
            let request =
                VerifyRequest { after, draft: draft.clone(), u: draws, params: opts.sampling };
            let verdict = cloud.verify(self.session, request)?;
            lengths.observe_verify(draft.len(), verdict.accepted, t.elapsed().as_secs_f64());
            self.generation.timings.cloud_ms += ms(t);
            self.generation.drafted += draft.len();
            self.generation.accepted += verdict.accepted;

            let accepted = draft[..verdict.accepted].iter().zip(&probs);
            for (&token, &prob) in accepted {
                self.commit(Pick { token, prob }, Origin::Edge, max_new, opts, on_token);
            }
            self.commit(verdict.pick, Origin::Cloud, max_new, opts, on_token);
            if self.done || self.generation.tokens.len() >= max_new {
                break;
            }
            if verdict.accepted < draft.len() {
                // Positions from the first rejected token on were decoded on a wrong guess.
                let keep = after + 1 + verdict.accepted;
                self.decoder.rollback(keep, verdict.pick.token)?;
                cloud.rollback(self.session, keep)?;
                self.generation.rollbacks += 1;
            } else {
                self.decoder.accept(verdict.pick.token)?;
            }
            ready = self.step_until_ready(edge, cloud, opts, &mut lengths)?;
        }
        Ok(())
    }

    /// Runs the edge over its pending tokens, uploading every hidden state, until the next
    /// token can be picked.
    fn step_until_ready(
        &mut self,
        edge: &mut Partition,
        cloud: &mut dyn CloudTransport,
        opts: &GenerateOptions,
        lengths: &mut DraftLength,
    ) -> Result<ReadyToPick> {
        let width = edge.shape.hidden_size;
        loop {
            let t = Instant::now();
            let step = self.decoder.step(edge)?;
            let rows = step.rows(width);
            if rows == 1 {
                lengths.observe_edge_step(t.elapsed().as_secs_f64());
            }
            self.generation.timings.edge_ms += ms(t);
            let payload = codec::encode(&step.hidden, width, opts.encoding);
            self.generation.upload_bytes += payload.len();
            let t = Instant::now();
            let upload = Upload { start: step.start, rows, encoding: opts.encoding, payload };
            cloud.upload(self.session, upload)?;
            self.generation.timings.cloud_ms += ms(t);
            if let Some(ready) = step.ready {
                return Ok(ready);
            }
            if self.decoder.pending().is_empty() {
                return Err(Error::Invalid(
                    "the edge stopped before a token could be picked".into(),
                ));
            }
        }
    }

    /// Adds a verified token to the output, unless the output is complete.
    fn commit(
        &mut self,
        pick: Pick,
        origin: Origin,
        max_new: usize,
        opts: &GenerateOptions,
        on_token: &mut dyn FnMut(&TokenEvent),
    ) {
        if self.done || self.generation.tokens.len() >= max_new {
            return;
        }
        let g = &mut self.generation;
        let index = g.tokens.len();
        g.tokens.push(pick.token);
        g.origins.push(origin);
        g.confidences.push(pick.prob);
        on_token(&TokenEvent { index, token: pick.token, origin, confidence: pick.prob });
        self.first_token_at.get_or_insert_with(Instant::now);
        if opts.stop_ids.contains(&pick.token) {
            g.finish_reason = "stop".into();
            self.done = true;
        }
    }
}
