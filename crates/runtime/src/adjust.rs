//! How a request reshapes the model's logits before a token is picked: OpenAI's `logit_bias`,
//! `presence_penalty` and `frequency_penalty`. Whoever answers a position — an exit head on the
//! edge, the cloud answering or verifying, the full model in the cloud — applies the same
//! adjustment to its logits before its confidence, its pick and its reported probabilities, so
//! a request means the same thing whichever partition answers.
//!
//! For token `t` seen `c[t]` times among the tokens generated before the position (the prompt
//! does not count, as in OpenAI's definition):
//! `logit[t] += bias[t] - frequency_penalty * c[t] - presence_penalty * (c[t] > 0)`.

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Largest |bias| a request may give a token (OpenAI's range).
pub const MAX_BIAS: f32 = 100.0;
/// Largest |penalty| (OpenAI's range).
pub const MAX_PENALTY: f32 = 2.0;
/// Most tokens one request may bias (OpenAI's limit).
pub const MAX_BIASED_TOKENS: usize = 300;

/// A request's logit adjustment. The default changes nothing.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LogitAdjustment {
    /// Added to each listed token's logit; one entry per token, in token order.
    pub bias: BTreeMap<u32, f32>,
    pub presence_penalty: f32,
    pub frequency_penalty: f32,
}

impl LogitAdjustment {
    /// Whether applying it changes no logit (the common case: nothing is copied then).
    pub fn is_identity(&self) -> bool {
        self.bias.values().all(|&b| b == 0.0)
            && self.presence_penalty == 0.0
            && self.frequency_penalty == 0.0
    }

    /// Checks the ranges OpenAI allows and that every biased token is in the vocabulary.
    pub fn check(&self, vocab_size: usize) -> Result<(), String> {
        if self.bias.len() > MAX_BIASED_TOKENS {
            return Err(format!(
                "logit_bias holds {} tokens; at most {MAX_BIASED_TOKENS} are allowed",
                self.bias.len()
            ));
        }
        for (&token, &bias) in &self.bias {
            if token as usize >= vocab_size {
                return Err(format!(
                    "logit_bias names token {token}, outside the vocabulary of {vocab_size}"
                ));
            }
            if !(-MAX_BIAS..=MAX_BIAS).contains(&bias) {
                return Err(format!(
                    "logit_bias for token {token} is {bias}; it must be between -{MAX_BIAS} and {MAX_BIAS}"
                ));
            }
        }
        for (name, p) in [
            ("presence_penalty", self.presence_penalty),
            ("frequency_penalty", self.frequency_penalty),
        ] {
            if !(-MAX_PENALTY..=MAX_PENALTY).contains(&p) {
                return Err(format!(
                    "{name} is {p}; it must be between -{MAX_PENALTY} and {MAX_PENALTY}"
                ));
            }
        }
        Ok(())
    }

    /// The logits to pick from at a position whose earlier generated tokens are `seen`.
    pub fn apply<'a>(&self, logits: &'a [f32], seen: &Generated) -> Cow<'a, [f32]> {
        let penalised = self.presence_penalty != 0.0 || self.frequency_penalty != 0.0;
        if self.is_identity() || (self.bias.is_empty() && (!penalised || seen.is_empty())) {
            return Cow::Borrowed(logits);
        }
        let mut out = logits.to_vec();
        for (&token, &bias) in &self.bias {
            if let Some(l) = out.get_mut(token as usize) {
                *l += bias;
            }
        }
        if penalised {
            for (&token, &count) in &seen.counts {
                if let Some(l) = out.get_mut(token as usize) {
                    *l -= self.frequency_penalty * count as f32 + self.presence_penalty;
                }
            }
        }
        Cow::Owned(out)
    }
}

/// The tokens generated so far and how often each occurs: what the penalties look at. Keeps
/// the order so that a rollback can take tokens back.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Generated {
    tokens: Vec<u32>,
    counts: BTreeMap<u32, u32>,
}

impl Generated {
    /// Counts without an order (as the cloud receives them): only `push` may follow.
    pub fn from_counts(counts: impl IntoIterator<Item = (u32, u32)>) -> Self {
        let counts = counts.into_iter().filter(|&(_, c)| c > 0).collect();
        Self { tokens: vec![], counts }
    }

    pub fn push(&mut self, token: u32) {
        self.tokens.push(token);
        *self.counts.entry(token).or_default() += 1;
    }

    /// Keeps the first `len` tokens pushed (a rollback).
    pub fn truncate(&mut self, len: usize) {
        for token in self.tokens.drain(len.min(self.tokens.len())..) {
            if let Some(c) = self.counts.get_mut(&token) {
                *c -= 1;
                if *c == 0 {
                    self.counts.remove(&token);
                }
            }
        }
    }

    /// The tokens pushed, in order.
    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.counts.is_empty()
    }

    /// Each token seen, with its count, in token order.
    pub fn counts(&self) -> impl Iterator<Item = (u32, u32)> + '_ {
        self.counts.iter().map(|(&t, &c)| (t, c))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(tokens: &[u32]) -> Generated {
        let mut g = Generated::default();
        tokens.iter().for_each(|&t| g.push(t));
        g
    }

    #[test]
    fn bias_and_penalties_shift_the_logits_as_openai_defines() {
        let adj = LogitAdjustment {
            bias: BTreeMap::from([(0, 5.0), (3, -100.0)]),
            presence_penalty: 0.5,
            frequency_penalty: 0.25,
        };
        let out = adj.apply(&[1.0, 1.0, 1.0, 1.0], &seen(&[1, 1, 2]));
        // token 1: twice (-0.5 - 2 * 0.25), token 2: once (-0.5 - 0.25).
        assert_eq!(&out[..], &[6.0, 0.0, 0.25, -99.0]);
    }

    #[test]
    fn nothing_is_copied_when_nothing_changes() {
        let logits = [1.0, 2.0];
        let none = LogitAdjustment::default();
        assert!(matches!(none.apply(&logits, &seen(&[0])), Cow::Borrowed(_)));
        let penalties = LogitAdjustment { presence_penalty: 1.0, ..LogitAdjustment::default() };
        assert!(matches!(penalties.apply(&logits, &Generated::default()), Cow::Borrowed(_)));
        assert!(matches!(penalties.apply(&logits, &seen(&[1])), Cow::Owned(_)));
    }

    #[test]
    fn a_rollback_forgets_the_tokens_taken_back() {
        let mut g = seen(&[4, 5, 4, 6]);
        g.truncate(2);
        assert_eq!(g.counts().collect::<Vec<_>>(), vec![(4, 1), (5, 1)]);
        assert_eq!(g.len(), 2);
        g.truncate(0);
        assert!(g.is_empty());
    }

    #[test]
    fn out_of_range_requests_are_named() {
        let mut adj = LogitAdjustment { presence_penalty: 2.5, ..LogitAdjustment::default() };
        assert!(adj.check(10).unwrap_err().contains("presence_penalty"));
        adj.presence_penalty = 0.0;
        adj.bias.insert(10, 1.0);
        assert!(adj.check(10).unwrap_err().contains("vocabulary"));
        adj.bias = BTreeMap::from([(1, 101.0)]);
        assert!(adj.check(10).unwrap_err().contains("between"));
        adj.bias = (0..301).map(|t| (t, 1.0)).collect();
        assert!(adj.check(1000).unwrap_err().contains("300"));
    }
}
