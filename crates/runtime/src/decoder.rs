//! The edge side of one generation, advanced one partition run at a time so that a server can
//! interleave many generations on one edge partition and do its network work (uploads, cloud
//! requests) between runs. `generate` drives it in a plain loop; the edge agent drives it from
//! async tasks.
//!
//! A step runs the edge partition over pending tokens: the prompt in chunks of
//! [`PREFILL_CHUNK`] positions (so the first chunk's hidden states travel to the cloud while
//! the next is computed), then one chosen token at a time. The step that reaches the last
//! pending token carries the exit heads' logits for that position and the uniform draw that
//! will pick the next token: a pure function of the seed and the position it fills
//! ([`crate::draw::uniform`]), so a position decoded again after a rollback gets the same draw.

use crate::draw;
use crate::partition::{KvCache, Partition, PartitionInput};
use crate::{Error, Result};
use collm_bundle::graph::names;

/// Prompt positions per prefill run.
pub const PREFILL_CHUNK: usize = 64;

/// What one edge run produced.
pub struct EdgeStep {
    /// Position of the first hidden row.
    pub start: usize,
    /// Hidden states at the split layer of positions `start..start + rows`, row-major.
    pub hidden: Vec<f32>,
    /// Set when every pending token has been run: the next token can be chosen.
    pub ready: Option<ReadyToPick>,
}

impl EdgeStep {
    pub fn rows(&self, width: usize) -> usize {
        self.hidden.len() / width.max(1)
    }
}

/// Everything needed to choose the token after position `after`.
pub struct ReadyToPick {
    /// The last position run; the token chosen now goes to `after + 1`.
    pub after: usize,
    /// `(exit layer, logits)` of every exit head at `after`; empty when heads were not needed.
    pub heads: Vec<(usize, Vec<f32>)>,
    /// The uniform draw in [0, 1) that picks this token, whoever answers.
    pub u: f64,
}

impl ReadyToPick {
    /// The logits of the head at `layer` (empty when the head did not run).
    pub fn head(&self, layer: usize) -> &[f32] {
        self.heads.iter().find(|(l, _)| *l == layer).map(|(_, v)| v.as_slice()).unwrap_or(&[])
    }
}

/// One generation's edge state: KV cache, seed and the tokens not yet run.
pub struct EdgeDecoder {
    cache: KvCache,
    seed: u64,
    pending: Vec<u32>,
    exits: Vec<usize>,
    heads_needed: bool,
    /// Output names asked of the partition: exit logits, then the hidden state.
    wanted: Vec<String>,
    context: usize,
}

impl EdgeDecoder {
    /// Starts a generation of `prompt`. `heads_needed` is false when no token will ever come
    /// from an exit head (the full model), which spares the heads' work.
    pub fn new(
        edge: &Partition,
        exits: &[usize],
        prompt: &[u32],
        seed: u64,
        heads_needed: bool,
    ) -> Result<Self> {
        let context = edge.shape.max_position;
        if prompt.is_empty() {
            return Err(Error::Invalid("the prompt is empty".into()));
        }
        if prompt.len() >= context {
            return Err(Error::ContextFull { needed: prompt.len() + 1, context });
        }
        if let Some(bad) = prompt.iter().find(|&&t| t as usize >= edge.shape.vocab_size) {
            return Err(Error::Invalid(format!(
                "token id {bad} is outside the vocabulary of {}",
                edge.shape.vocab_size
            )));
        }
        let wanted = exits
            .iter()
            .map(|&l| names::exit_logits(l))
            .chain([names::HIDDEN.to_string()])
            .collect();
        Ok(Self {
            cache: edge.empty_cache()?,
            seed,
            pending: prompt.to_vec(),
            exits: exits.to_vec(),
            heads_needed,
            wanted,
            context,
        })
    }

    /// Positions run so far.
    pub fn positions(&self) -> usize {
        self.cache.len()
    }

    /// Positions still free in the model's context after the pending tokens.
    pub fn room(&self) -> usize {
        self.context.saturating_sub(self.cache.len() + self.pending.len())
    }

    /// Runs the edge partition over the next pending tokens.
    pub fn step(&mut self, edge: &mut Partition) -> Result<EdgeStep> {
        if self.pending.is_empty() {
            return Err(Error::Invalid("no pending token: accept a token before stepping".into()));
        }
        let take = self.pending.len().min(PREFILL_CHUNK);
        let last = take == self.pending.len();
        let feed: Vec<u32> = self.pending.drain(..take).collect();
        let start = self.cache.len();
        let wanted: Vec<&str> = self.wanted.iter().map(String::as_str).collect();
        let logits_count = usize::from(last && self.heads_needed);
        let mut out =
            edge.run(&mut self.cache, PartitionInput::Tokens(&feed), logits_count, &wanted)?;
        let hidden = out.take(names::HIDDEN).unwrap_or_default();
        let ready = last.then(|| ReadyToPick {
            after: self.cache.len() - 1,
            heads: if self.heads_needed {
                self.exits
                    .iter()
                    .map(|&l| (l, out.take(&names::exit_logits(l)).unwrap_or_default()))
                    .collect()
            } else {
                vec![]
            },
            u: draw::uniform(self.seed, self.cache.len() as u64),
        });
        Ok(EdgeStep { start, hidden, ready })
    }

    /// The draw that picks the token placed at `position` (the same one [`ReadyToPick::u`]
    /// carries for that position).
    pub fn uniform(&self, position: usize) -> f64 {
        draw::uniform(self.seed, position as u64)
    }

    /// Tokens queued and not yet run.
    pub fn pending(&self) -> &[u32] {
        &self.pending
    }

    /// Goes back to the state after position `len - 1` with `token` chosen for position `len`:
    /// the positions from `len` on (a rejected guess or draft) are forgotten and `token` is
    /// queued in their place. `len` must not exceed the positions run.
    pub fn rollback(&mut self, len: usize, token: u32) -> Result<()> {
        if len > self.cache.len() || len == 0 {
            return Err(Error::Invalid(format!(
                "cannot roll back to {len} positions: {} were run",
                self.cache.len()
            )));
        }
        self.cache.truncate(len)?;
        self.pending.clear();
        self.pending.push(token);
        Ok(())
    }

    /// Queues the chosen token to be run next. Fails when the context is full.
    pub fn accept(&mut self, token: u32) -> Result<()> {
        if self.room() == 0 {
            return Err(Error::ContextFull { needed: self.context + 1, context: self.context });
        }
        self.pending.push(token);
        Ok(())
    }
}
