//! Free-running answer quality against a reference answer (the full model's): whether an
//! answer is identical, where it first differs, whether it ends in a loop, and how likely the
//! full model finds it. Teacher-forced agreement misses what these see: one early wrong token
//! changes everything after it, and a head that is confidently wrong in repetitive states
//! drags a whole answer into a loop.

use serde::Serialize;

/// When an answer "falls into a loop": its tail is periodic with a period of at most
/// `max_period` tokens (every token equals the one `period` tokens before it), and that
/// periodic tail spans at least `max(min_repeats · period, min_span)` tokens. A loop that the
/// answer escaped before its end does not count; an answer that ends in a repetition and then
/// a stop token does (the caller strips stop tokens first).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct LoopDetector {
    pub max_period: usize,
    pub min_repeats: usize,
    pub min_span: usize,
}

impl Default for LoopDetector {
    /// Phrases of up to 32 tokens; at least three copies and 16 tokens of repetition, so a
    /// doubled word or a repeated list marker is not a loop while "health conditions like"
    /// five times over is.
    fn default() -> Self {
        Self { max_period: 32, min_repeats: 3, min_span: 16 }
    }
}

/// A loop found at the end of an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Loop {
    /// Tokens per repetition (the smallest period that qualifies).
    pub period: usize,
    /// Tokens at the end of the answer covered by the repetition (including its first copy).
    pub span: usize,
}

impl LoopDetector {
    /// The loop `tokens` ends in, if any.
    pub fn find(&self, tokens: &[u32]) -> Option<Loop> {
        let n = tokens.len();
        (1..=self.max_period.min(n / 2)).find_map(|period| {
            let repeated =
                (period..n).rev().take_while(|&i| tokens[i] == tokens[i - period]).count();
            let span = repeated + period;
            (span >= (self.min_repeats * period).max(self.min_span))
                .then_some(Loop { period, span })
        })
    }
}

/// Tokens two answers share before their first difference (the shorter length when one is a
/// prefix of the other).
pub fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// Negative log-likelihood summed over tokens (natural log).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Likelihood {
    pub nll: f64,
    pub tokens: usize,
}

impl Likelihood {
    /// Adds one token scored with natural-log probability `logprob` (≤ 0).
    pub fn add(&mut self, logprob: f64) {
        self.nll -= logprob;
        self.tokens += 1;
    }

    pub fn merge(&mut self, other: Likelihood) {
        self.nll += other.nll;
        self.tokens += other.tokens;
    }

    /// Mean NLL per token (0 when nothing was scored).
    pub fn mean(&self) -> f64 {
        if self.tokens == 0 { 0.0 } else { self.nll / self.tokens as f64 }
    }
}

/// One answer of a mode, next to the reference answer to the same prompt.
#[derive(Debug, Clone)]
pub struct Answer<'a> {
    /// Generated tokens, as compared with the reference's.
    pub tokens: &'a [u32],
    /// The part of `tokens` that is text, where a loop is looked for (without a final stop
    /// token).
    pub text: &'a [u32],
    /// Tokens the edge answered.
    pub edge_tokens: usize,
    /// The reference model's log-probability of each of `tokens`, in context.
    pub logprobs: &'a [f64],
}

/// A mode's answers over a prompt set, compared with the reference's.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct QualityTally {
    pub prompts: usize,
    /// Answers equal to the reference, token for token.
    pub identical: usize,
    /// Over all answers: tokens before the first difference (an identical answer counts its
    /// whole length).
    pub common_prefix_tokens: usize,
    /// Over the answers that differ: the index of the first differing token.
    pub first_difference_sum: usize,
    pub loops: usize,
    pub tokens: usize,
    pub edge_tokens: usize,
    pub likelihood: Likelihood,
}

impl QualityTally {
    pub fn add(&mut self, answer: &Answer<'_>, reference: &[u32], detector: &LoopDetector) {
        let prefix = common_prefix(answer.tokens, reference);
        let identical = answer.tokens == reference;
        self.prompts += 1;
        self.identical += usize::from(identical);
        self.common_prefix_tokens += prefix;
        if !identical {
            self.first_difference_sum += prefix;
        }
        self.loops += usize::from(detector.find(answer.text).is_some());
        self.tokens += answer.tokens.len();
        self.edge_tokens += answer.edge_tokens;
        for &lp in answer.logprobs {
            self.likelihood.add(lp);
        }
    }

    pub fn identical_share(&self) -> f64 {
        ratio(self.identical, self.prompts)
    }

    /// Mean index of the first differing token, over answers that differ (`None` if all are
    /// identical).
    pub fn mean_first_difference(&self) -> Option<f64> {
        let differing = self.prompts - self.identical;
        (differing > 0).then(|| self.first_difference_sum as f64 / differing as f64)
    }

    pub fn loop_share(&self) -> f64 {
        ratio(self.loops, self.prompts)
    }

    pub fn edge_share(&self) -> f64 {
        ratio(self.edge_tokens, self.tokens)
    }

    /// Mean NLL per token of this mode's answers divided by the reference's.
    pub fn nll_ratio(&self, reference: &QualityTally) -> f64 {
        self.likelihood.mean() / reference.likelihood.mean().max(f64::MIN_POSITIVE)
    }
}

fn ratio(a: usize, b: usize) -> f64 {
    if b == 0 { 0.0 } else { a as f64 / b as f64 }
}

/// Whether an operating point keeps quality: its answers loop no more often than the
/// reference's, and the reference model finds them at most `max_nll_ratio` times less likely
/// per token (in mean NLL).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct QualityTarget {
    pub max_nll_ratio: f64,
}

impl QualityTarget {
    pub fn met_by(&self, mode: &QualityTally, reference: &QualityTally) -> bool {
        mode.loops <= reference.loops && mode.nll_ratio(reference) <= self.max_nll_ratio
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repeat(phrase: &[u32], times: usize) -> Vec<u32> {
        phrase.iter().copied().cycle().take(phrase.len() * times).collect()
    }

    #[test]
    fn a_tail_repeating_a_phrase_is_a_loop() {
        let mut answer = vec![7, 8, 9, 10];
        answer.extend(repeat(&[1, 2, 3], 6));
        let found = LoopDetector::default().find(&answer).expect("a loop");
        assert_eq!(found, Loop { period: 3, span: 18 });
        // A cut-off final copy still belongs to the loop.
        answer.push(1);
        assert_eq!(LoopDetector::default().find(&answer), Some(Loop { period: 3, span: 19 }));
    }

    #[test]
    fn a_repeated_token_needs_the_minimum_span() {
        let d = LoopDetector::default();
        let mut answer = vec![5, 6];
        answer.extend(repeat(&[4], 15));
        assert_eq!(d.find(&answer), None, "15 copies of one token are under the 16-token span");
        answer.push(4);
        assert_eq!(d.find(&answer), Some(Loop { period: 1, span: 16 }));
    }

    #[test]
    fn long_periods_need_three_copies() {
        let d = LoopDetector::default();
        let phrase: Vec<u32> = (100..120).collect();
        assert_eq!(d.find(&repeat(&phrase, 2)), None);
        assert_eq!(d.find(&repeat(&phrase, 3)), Some(Loop { period: 20, span: 60 }));
        let too_long: Vec<u32> = (100..140).collect();
        assert_eq!(d.find(&repeat(&too_long, 4)), None, "period 40 is over the maximum of 32");
    }

    #[test]
    fn ordinary_text_and_an_escaped_repetition_are_not_loops() {
        let d = LoopDetector::default();
        let text: Vec<u32> = (0..200).map(|i| (i * 7919 % 1000) as u32).collect();
        assert_eq!(d.find(&text), None);
        let mut escaped = repeat(&[1, 2], 20);
        escaped.extend([3, 4, 5, 6]);
        assert_eq!(d.find(&escaped), None);
        assert_eq!(d.find(&[]), None);
        assert_eq!(d.find(&[1]), None);
    }

    #[test]
    fn common_prefix_stops_at_the_first_difference() {
        assert_eq!(common_prefix(&[1, 2, 3], &[1, 2, 4]), 2);
        assert_eq!(common_prefix(&[1, 2], &[1, 2, 3]), 2);
        assert_eq!(common_prefix(&[9], &[1]), 0);
    }

    #[test]
    fn likelihood_averages_per_token() {
        let mut l = Likelihood::default();
        l.add(-1.0);
        l.add(-3.0);
        assert_eq!(l.mean(), 2.0);
        let mut m = Likelihood::default();
        m.add(-0.5);
        l.merge(m);
        assert_eq!(l, Likelihood { nll: 4.5, tokens: 3 });
        assert_eq!(Likelihood::default().mean(), 0.0);
    }

    #[test]
    fn a_tally_compares_answers_with_the_reference() {
        let d = LoopDetector::default();
        let reference_a = [1u32, 2, 3, 4];
        let reference_b: Vec<u32> = (10..40).collect();
        let mut full = QualityTally::default();
        full.add(
            &Answer {
                tokens: &reference_a,
                text: &reference_a,
                edge_tokens: 0,
                logprobs: &[-0.5; 4],
            },
            &reference_a,
            &d,
        );
        full.add(
            &Answer {
                tokens: &reference_b,
                text: &reference_b,
                edge_tokens: 0,
                logprobs: &[-0.5; 30],
            },
            &reference_b,
            &d,
        );
        assert_eq!(full.identical_share(), 1.0);
        assert_eq!(full.mean_first_difference(), None);
        assert_eq!(full.likelihood.mean(), 0.5);

        let looping = repeat(&[10, 11], 10);
        let mut mode = QualityTally::default();
        mode.add(
            &Answer {
                tokens: &reference_a,
                text: &reference_a,
                edge_tokens: 2,
                logprobs: &[-0.5; 4],
            },
            &reference_a,
            &d,
        );
        mode.add(
            &Answer { tokens: &looping, text: &looping, edge_tokens: 15, logprobs: &[-1.0; 20] },
            &reference_b,
            &d,
        );
        assert_eq!(mode.identical_share(), 0.5);
        assert_eq!(mode.common_prefix_tokens, 4 + 2);
        assert_eq!(mode.mean_first_difference(), Some(2.0));
        assert_eq!(mode.loop_share(), 0.5);
        assert_eq!(mode.edge_share(), 17.0 / 24.0);
        assert!((mode.nll_ratio(&full) - (22.0 / 24.0) / 0.5).abs() < 1e-12);

        let target = QualityTarget { max_nll_ratio: 1.15 };
        assert!(target.met_by(&full, &full));
        assert!(!target.met_by(&mode, &full), "it loops where the reference does not");
    }
}
