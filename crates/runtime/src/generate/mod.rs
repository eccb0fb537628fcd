//! The decoding loop of the split model: the edge runs every position, streams its split
//! hidden states to the cloud, and answers from an exit head when confident — or, in the
//! lossless speculative mode ([`speculative`]), drafts runs of tokens that the cloud verifies.

mod speculative;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::adjust::{Generated, LogitAdjustment};
use crate::catch_up::EdgeAnswered;
use crate::codec::{self, Encoding};
use crate::decoder::EdgeDecoder;
use crate::exit::ExitPolicy;
use crate::partition::Partition;
use crate::sampling::{self, SamplingParams};
use crate::transport::{CloudTransport, NextTokenRequest, SessionId, Upload};
use crate::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Every token from the full model (edge partition then cloud partition), no exits.
    Full,
    /// Every token from the edge's deepest exit head; the cloud is never asked.
    Standalone,
    /// The edge answers when an exit head is confident, the cloud otherwise.
    Collaborative,
    /// Lossless: the edge drafts runs of tokens from its deepest exit head, the cloud checks
    /// each run in one pass and keeps the full model's tokens, so the output is the full
    /// model's.
    Speculative,
}

impl std::str::FromStr for Mode {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "full" => Ok(Self::Full),
            "standalone" => Ok(Self::Standalone),
            "collaborative" => Ok(Self::Collaborative),
            "speculative" => Ok(Self::Speculative),
            other => Err(Error::Invalid(format!(
                "unknown mode {other:?} (expected full, standalone, collaborative or speculative)"
            ))),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    Edge,
    Cloud,
}

#[derive(Debug, Clone)]
pub struct GenerateOptions {
    pub max_tokens: usize,
    pub mode: Mode,
    pub policy: ExitPolicy,
    pub sampling: SamplingParams,
    pub seed: u64,
    pub encoding: Encoding,
    pub stop_ids: Vec<u32>,
    /// `logit_bias` and penalties, applied by whichever partition picks a token.
    pub adjustment: LogitAdjustment,
    /// Alternatives the cloud is asked to return with each answer (a transport wrapping the
    /// cloud may pass them on; the loop itself does not use them).
    pub top_k: usize,
}

impl GenerateOptions {
    /// Greedy decoding with no logit adjustment and no alternatives asked of the cloud: what
    /// the measuring commands (calibration, quality, benchmarks) run.
    pub fn greedy(
        max_tokens: usize,
        mode: Mode,
        policy: ExitPolicy,
        encoding: Encoding,
        stop_ids: Vec<u32>,
    ) -> Self {
        Self {
            max_tokens,
            mode,
            policy,
            sampling: SamplingParams::default(),
            seed: 0,
            encoding,
            stop_ids,
            adjustment: LogitAdjustment::default(),
            top_k: 0,
        }
    }
}

/// One generated token as it is produced.
#[derive(Debug, Clone, Copy)]
pub struct TokenEvent {
    pub index: usize,
    pub token: u32,
    pub origin: Origin,
    pub confidence: f32,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Timings {
    /// Prompt processing up to the first token.
    pub prefill_ms: f64,
    /// Everything after the first token.
    pub decode_ms: f64,
    pub total_ms: f64,
    pub edge_ms: f64,
    pub cloud_ms: f64,
    /// Tokens after the first one, per second of decode time.
    pub decode_tokens_per_s: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Generation {
    pub prompt_ids: Vec<u32>,
    pub tokens: Vec<u32>,
    pub origins: Vec<Origin>,
    pub confidences: Vec<f32>,
    pub edge_share: f64,
    pub upload_bytes: usize,
    /// `stop` (an end-of-turn token), `length` (max tokens or context reached).
    pub finish_reason: String,
    pub timings: Timings,
    /// Times the edge took back positions it had decoded ahead (a rejected draft token).
    pub rollbacks: usize,
    /// Draft tokens sent for verification, and how many the full model accepted
    /// (speculative mode).
    pub drafted: usize,
    pub accepted: usize,
}

static NEXT_SESSION: AtomicU64 = AtomicU64::new(1);

fn next_session() -> SessionId {
    NEXT_SESSION.fetch_add(1, Ordering::Relaxed)
}

/// Generates up to `opts.max_tokens` tokens after `prompt`. `cloud` is required unless the mode
/// is standalone. `on_token` hears every token as soon as it is chosen.
pub fn generate(
    edge: &mut Partition,
    exits: &[usize],
    mut cloud: Option<&mut dyn CloudTransport>,
    prompt: &[u32],
    opts: &GenerateOptions,
    on_token: &mut dyn FnMut(&TokenEvent),
) -> Result<Generation> {
    let deepest =
        *exits.last().ok_or_else(|| Error::Invalid("the bundle has no exit head".into()))?;
    if opts.mode != Mode::Standalone && cloud.is_none() {
        return Err(Error::Invalid(format!("{:?} mode needs a cloud transport", opts.mode)));
    }
    let mut opts = std::borrow::Cow::Borrowed(opts);
    if opts.mode == Mode::Speculative {
        match cloud.as_deref_mut() {
            Some(cloud) if cloud.can_speculate() => {
                return speculative::generate(edge, deepest, cloud, prompt, &opts, on_token);
            }
            // A cloud that cannot verify: the same tokens, one cloud answer at a time.
            _ => opts.to_mut().mode = Mode::Full,
        }
    }
    let opts = opts.as_ref();
    // Full mode never reads the exit heads: ask for no exit logits, sparing their work.
    let mut decoder = EdgeDecoder::new(edge, exits, prompt, opts.seed, opts.mode != Mode::Full)?;
    let width = edge.shape.hidden_size;
    let session = next_session();
    let encoding = if opts.mode == Mode::Full { Encoding::F32 } else { opts.encoding };

    let mut generation = Generation::new(prompt);
    let start = Instant::now();
    let mut first_token_at = None;
    let max_new = opts.max_tokens.min(decoder.room());
    let mut edge_answered = EdgeAnswered::after_prompt(prompt.len() as u64);
    let mut seen = Generated::default();
    let result = (|| {
        let mut index = 0;
        while index < max_new {
            let t_edge = Instant::now();
            let step = decoder.step(edge)?;
            generation.timings.edge_ms += ms(t_edge);
            if let Some(cloud) = cloud.as_deref_mut().filter(|_| opts.mode != Mode::Standalone) {
                let payload = codec::encode(&step.hidden, width, encoding);
                generation.upload_bytes += payload.len();
                let t_cloud = Instant::now();
                let rows = step.rows(width);
                cloud.upload(session, Upload { start: step.start, rows, encoding, payload })?;
                generation.timings.cloud_ms += ms(t_cloud);
            }
            let Some(ready) = step.ready else { continue };
            let u = ready.u;
            let head = |layer| opts.adjustment.apply(ready.head(layer), &seen);
            let (pick, origin) = match opts.mode {
                Mode::Speculative => unreachable!("speculative generations run on their own loop"),
                Mode::Standalone => {
                    (sampling::sample(&head(deepest), &opts.sampling, u), Origin::Edge)
                }
                Mode::Full | Mode::Collaborative => {
                    let confident = if opts.mode == Mode::Full {
                        None
                    } else {
                        let heads: Vec<(usize, sampling::Pick)> = ready
                            .heads
                            .iter()
                            .map(|(l, _)| (*l, sampling::top1(&head(*l))))
                            .collect();
                        opts.policy.decide(&heads, &generation.tokens)
                    };
                    match (confident, cloud.as_deref_mut()) {
                        (Some(layer), _) => {
                            edge_answered.push(ready.after as u64);
                            (sampling::sample(&head(layer), &opts.sampling, u), Origin::Edge)
                        }
                        (None, Some(cloud)) => {
                            let t_cloud = Instant::now();
                            let answer = cloud.next_token(
                                session,
                                NextTokenRequest {
                                    after: ready.after,
                                    params: opts.sampling,
                                    u,
                                    top_k: opts.top_k,
                                    edge_answered: edge_answered.clone(),
                                    adjustment: opts.adjustment.clone(),
                                    seen: seen.clone(),
                                },
                            )?;
                            generation.timings.cloud_ms += ms(t_cloud);
                            (answer.pick, Origin::Cloud)
                        }
                        (None, None) => {
                            unreachable!("checked above: non-standalone modes have a cloud")
                        }
                    }
                }
            };
            seen.push(pick.token);
            generation.tokens.push(pick.token);
            generation.origins.push(origin);
            generation.confidences.push(pick.prob);
            on_token(&TokenEvent { index, token: pick.token, origin, confidence: pick.prob });
            if first_token_at.is_none() {
                first_token_at = Some(Instant::now());
            }
            index += 1;
            if opts.stop_ids.contains(&pick.token) {
                generation.finish_reason = "stop".into();
                break;
            }
            if index < max_new {
                decoder.accept(pick.token)?;
            }
        }
        Ok::<(), Error>(())
    })();
    if let Some(cloud) = cloud {
        cloud.end_session(session);
    }
    result?;
    generation.finish(start, first_token_at);
    Ok(generation)
}

impl Generation {
    fn new(prompt: &[u32]) -> Self {
        Self {
            prompt_ids: prompt.to_vec(),
            tokens: vec![],
            origins: vec![],
            confidences: vec![],
            edge_share: 0.0,
            upload_bytes: 0,
            finish_reason: "length".into(),
            timings: Timings::default(),
            rollbacks: 0,
            drafted: 0,
            accepted: 0,
        }
    }

    /// Timings and shares, once the last token is in.
    fn finish(&mut self, start: Instant, first_token_at: Option<Instant>) {
        let first = first_token_at.unwrap_or_else(Instant::now);
        self.timings.prefill_ms = (first - start).as_secs_f64() * 1e3;
        self.timings.total_ms = ms(start);
        self.timings.decode_ms = self.timings.total_ms - self.timings.prefill_ms;
        if self.tokens.len() > 1 && self.timings.decode_ms > 0.0 {
            self.timings.decode_tokens_per_s =
                (self.tokens.len() - 1) as f64 / (self.timings.decode_ms / 1e3);
        }
        let edge_count = self.origins.iter().filter(|o| **o == Origin::Edge).count();
        self.edge_share =
            if self.tokens.is_empty() { 0.0 } else { edge_count as f64 / self.tokens.len() as f64 };
    }
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1e3
}
