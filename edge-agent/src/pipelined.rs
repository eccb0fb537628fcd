//! Collaboration with the latency hidden: when the edge is unsure of a token it asks the cloud
//! and, while the answer is in flight, goes on decoding on its deepest exit head's guess for
//! that token (picked with the draw the cloud will use, so the guess is the cloud's own pick
//! whenever the two agree). An answer equal to the guess costs nothing; a different one takes
//! back every position after it, on the edge and (through a new epoch) in the cloud, and
//! decoding continues from the cloud's token. Tokens reach the client only once committed:
//! when no unanswered guess comes before them. The committed output is exactly what waiting
//! for every answer would give.

use std::collections::VecDeque;
use std::time::Duration;

use collm_cloud_client::CloudSession;
use collm_runtime::EdgeAnswered;
use collm_runtime::adjust::Generated;
use collm_runtime::transport::{CloudAnswer, NextTokenRequest};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::Result;
use crate::decide::{self, Choice, CloudView, Fallback};
use crate::generation::{Finish, GenerationRequest, Generator, Source, Summary, Token};

/// Unanswered asks the edge decodes ahead of, at most: beyond this a wrong early guess wastes
/// more edge work than waiting costs.
const MAX_IN_FLIGHT: usize = 4;

/// A token decided and not yet sent to the client.
struct Decided {
    token: Token,
    /// Position the token goes to.
    position: usize,
    /// The token is a guess until the ask for it is answered.
    guess: bool,
}

/// An ask for the token at `position`, answered in the background.
struct InFlight {
    position: usize,
    request: NextTokenRequest,
    timeout: Duration,
    answer: JoinHandle<collm_cloud_client::Result<CloudAnswer>>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        // An ask overtaken by a rollback is of no use any more.
        self.answer.abort();
    }
}

impl Generator {
    pub(crate) async fn run_pipelined(
        &self,
        req: &GenerationRequest,
        tokens: &mpsc::Sender<Token>,
        session: &mut CloudSession,
    ) -> Result<(Finish, Summary)> {
        let engine = &self.engine;
        let (width, deepest) = (engine.hidden_size, engine.deepest_exit());
        let stop_ids = engine.text.stop_ids().to_vec();
        let mut summary = Summary::default();
        let mut decoder = Some(engine.decoder(&req.prompt, req.seed).await?);
        let max_new = req.max_tokens.min(decoder.as_ref().map_or(0, |d| d.room()));
        let prompt_len = req.prompt.len();
        let mut committed = 0;
        let mut queue: VecDeque<Decided> = VecDeque::new();
        let mut flights: VecDeque<InFlight> = VecDeque::new();
        let mut edge_answered = EdgeAnswered::after_prompt(prompt_len as u64);
        // Every decided token (committed or queued), in order: the answer so far, which the
        // request's penalties count and the exit policy keeps the edge from repeating.
        let mut seen = Generated::default();
        // Whether the decoder has a token queued to run (the last decided one).
        let mut to_run = true;
        loop {
            // Commit every token no unanswered guess precedes.
            while queue.front().is_some_and(|d| !d.guess) {
                let Some(d) = queue.pop_front() else { break };
                summary.count(d.token.source);
                committed += 1;
                let id = d.token.id;
                if tokens.send(d.token).await.is_err() {
                    return Ok((Finish::Cancelled, summary));
                }
                if stop_ids.contains(&id) {
                    return Ok((Finish::Stop, summary));
                }
                if committed >= max_new {
                    return Ok((Finish::Length, summary));
                }
            }
            let decided = committed + queue.len();
            let ended = decided >= max_new
                || queue.back().is_some_and(|d| stop_ids.contains(&d.token.id))
                || !to_run;
            // Settle the oldest ask: at once when the edge cannot go further, else only if
            // its answer is already in.
            let settle = match flights.front() {
                Some(f) => ended || flights.len() >= MAX_IN_FLIGHT || f.answer.is_finished(),
                None => false,
            };
            if settle {
                let Some(mut flight) = flights.pop_front() else { continue };
                let guessed = queue.iter().position(|d| d.position == flight.position);
                let answer = match (&mut flight.answer).await {
                    Ok(Ok(answer)) => Ok(answer),
                    // The quick ask failed (lost rows, a failed replica...): ask again the
                    // thorough way, which re-uploads and fails over.
                    Ok(Err(_)) | Err(_) => {
                        let (request, timeout) = (flight.request.clone(), flight.timeout);
                        self.ask(session, req.mode, request, timeout).await
                    }
                };
                let Some(i) = guessed else { continue };
                match answer {
                    Ok(answer) if answer.pick.token == queue[i].token.id => {
                        queue[i].token = Token::from_cloud(answer, Source::Cloud);
                        queue[i].guess = false;
                    }
                    Ok(answer) => {
                        // Every position after the cloud's token was decoded on a wrong guess.
                        let position = flight.position;
                        let pick = answer.pick;
                        queue.truncate(i + 1);
                        queue[i] = Decided {
                            token: Token::from_cloud(answer, Source::Cloud),
                            position,
                            guess: false,
                        };
                        seen.truncate(committed + i);
                        seen.push(pick.token);
                        flights.clear();
                        edge_answered.truncate(position as u64);
                        let d = decoder.as_mut().ok_or_else(lost_decoder)?;
                        d.rollback(position, pick.token)?;
                        session.rollback(position)?;
                        summary.rollbacks += 1;
                        to_run =
                            committed + queue.len() < max_new && !stop_ids.contains(&pick.token);
                    }
                    Err(e) => {
                        // No answer: the guess stands, as the deepest head's fallback.
                        tracing::warn!(error = %e, "the cloud did not answer; the edge does");
                        summary.degraded |= !matches!(e, collm_cloud_client::Error::Timeout(_));
                        queue[i].token.source = Source::EdgeFallback;
                        queue[i].guess = false;
                    }
                }
                continue;
            }
            if ended {
                if flights.is_empty() && queue.iter().all(|d| !d.guess) && queue.is_empty() {
                    return Ok((Finish::Length, summary));
                }
                if flights.is_empty() {
                    // Guesses whose asks were dropped cannot be committed: nothing is left
                    // to wait for, so what is committed is the answer.
                    return Ok((Finish::Length, summary));
                }
                continue;
            }
            // Decode the next position.
            let d = decoder.take().ok_or_else(lost_decoder)?;
            let (d, step) = engine.step(d).await?;
            decoder = Some(d);
            let payload = collm_runtime::codec::encode(&step.hidden, width, self.encoding);
            session.upload(step.start, &payload)?;
            let Some(ready) = step.ready else { continue };
            let position = ready.after + 1;
            debug_assert_eq!(position, prompt_len + committed + queue.len());
            let heads = req.heads(&ready, &seen);
            let view = match session.estimate() {
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
            let (token, guess): (Token, bool) = match choice {
                Choice::Exit(layer) => {
                    edge_answered.push(ready.after as u64);
                    (edge_pick(layer, Source::Edge), false)
                }
                Choice::Fallback(why) => {
                    edge_answered.push(ready.after as u64);
                    summary.degraded |= why == Fallback::Unreachable;
                    (edge_pick(deepest, Source::EdgeFallback), false)
                }
                Choice::AskCloud { timeout } => {
                    let request = NextTokenRequest {
                        after: ready.after,
                        params: req.sampling,
                        u: ready.u,
                        top_k: req.cloud_alternatives(),
                        edge_answered: edge_answered.clone(),
                        adjustment: req.adjustment.clone(),
                        seen: seen.clone(),
                    };
                    let guess = edge_pick(deepest, Source::Cloud);
                    match session.ask_ahead(&request, timeout)? {
                        Some(asked) => {
                            let answer = tokio::spawn(asked);
                            flights.push_back(InFlight { position, request, timeout, answer });
                            (guess, true)
                        }
                        // No cloud to ask ahead of: ask and wait, as without pipelining.
                        None => match self.ask(session, req.mode, request, timeout).await {
                            Ok(answer) => (Token::from_cloud(answer, Source::Cloud), false),
                            Err(e) => {
                                tracing::warn!(error = %e, "the cloud did not answer; the edge does");
                                summary.degraded |=
                                    !matches!(e, collm_cloud_client::Error::Timeout(_));
                                (Token { source: Source::EdgeFallback, ..guess }, false)
                            }
                        },
                    }
                }
            };
            let id = token.id;
            seen.push(id);
            queue.push_back(Decided { token, position, guess });
            let decided = committed + queue.len();
            to_run = decided < max_new && !stop_ids.contains(&id);
            if to_run {
                decoder.as_mut().ok_or_else(lost_decoder)?.accept(id)?;
            }
        }
    }
}

fn lost_decoder() -> crate::Error {
    crate::Error::Internal("the edge decoder went missing".into())
}
