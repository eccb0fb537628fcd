//! Free-running answer quality against a reference answer (the full model's): whether an
//! answer is identical, where it first differs, whether it ends in a loop (as the caller's
//! detector says), and how likely the full model finds it. Teacher-forced agreement misses
//! what these see: one early wrong token changes everything after it, and a head that is
//! confidently wrong in repetitive states drags a whole answer into a loop.

use serde::Serialize;

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
    /// Whether the answer's text ends in a loop (the caller's detector decides).
    pub looped: bool,
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
    pub fn add(&mut self, answer: &Answer<'_>, reference: &[u32]) {
        let prefix = common_prefix(answer.tokens, reference);
        let identical = answer.tokens == reference;
        self.prompts += 1;
        self.identical += usize::from(identical);
        self.common_prefix_tokens += prefix;
        if !identical {
            self.first_difference_sum += prefix;
        }
        self.loops += usize::from(answer.looped);
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

/// How likely a mode that loops no more often than the reference would show this much excess
/// or more, over paired answers to the same prompts: `only_mode` prompts where the mode's answer
/// loops and the reference's does not, `only_reference` the reverse (prompts where both or
/// neither loop say nothing about which loops more). The exact one-sided sign test: under
/// "no more often", each discordant prompt is at most a fair coin. A small value is evidence the
/// mode loops more; a single draw of a few loops is not.
pub fn excess_loops_p_value(only_mode: usize, only_reference: usize) -> f64 {
    let n = only_mode + only_reference;
    // P(X >= only_mode) for X ~ Binomial(n, 1/2); each term in log space, so no n overflows.
    let ln_choose =
        |k: usize| -> f64 { (1..=k).map(|i| ((n - k + i) as f64).ln() - (i as f64).ln()).sum() };
    (only_mode..=n).map(|k| (ln_choose(k) - n as f64 * std::f64::consts::LN_2).exp()).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn excess_loops_are_judged_by_the_discordant_prompts() {
        let close = |a: f64, b: f64| (a - b).abs() < 1e-12;
        assert!(close(excess_loops_p_value(0, 0), 1.0), "no discordant prompt, no evidence");
        assert!(close(excess_loops_p_value(0, 3), 1.0));
        assert!(close(excess_loops_p_value(1, 0), 0.5), "one extra loop is a coin toss");
        assert!(close(excess_loops_p_value(4, 0), 1.0 / 16.0));
        assert!(close(excess_loops_p_value(5, 0), 1.0 / 32.0));
        // 6 of 7 discordant prompts: (C(7,6) + C(7,7)) / 2^7.
        assert!(close(excess_loops_p_value(6, 1), 8.0 / 128.0));
        assert!(close(excess_loops_p_value(2, 3), 26.0 / 32.0));
        assert!(excess_loops_p_value(60, 30) < 0.01, "large samples stay finite and exact enough");
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

    fn answer<'a>(tokens: &'a [u32], looped: bool, edge: usize, lp: &'a [f64]) -> Answer<'a> {
        Answer { tokens, looped, edge_tokens: edge, logprobs: lp }
    }

    #[test]
    fn a_tally_compares_answers_with_the_reference() {
        let reference_a = [1u32, 2, 3, 4];
        let reference_b: Vec<u32> = (10..40).collect();
        let mut full = QualityTally::default();
        full.add(&answer(&reference_a, false, 0, &[-0.5; 4]), &reference_a);
        full.add(&answer(&reference_b, false, 0, &[-0.5; 30]), &reference_b);
        assert_eq!(full.identical_share(), 1.0);
        assert_eq!(full.mean_first_difference(), None);
        assert_eq!(full.likelihood.mean(), 0.5);

        let looping: Vec<u32> = [10, 11].iter().copied().cycle().take(20).collect();
        let mut mode = QualityTally::default();
        mode.add(&answer(&reference_a, false, 2, &[-0.5; 4]), &reference_a);
        mode.add(&answer(&looping, true, 15, &[-1.0; 20]), &reference_b);
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
