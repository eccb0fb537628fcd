//! Choosing the next token from logits: greedy, or temperature / top-k / top-p driven by a
//! uniform draw that the caller supplies (so edge and cloud pick identically for one seed).

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SamplingParams {
    /// 0 means greedy.
    pub temperature: f32,
    /// 0 means no top-k cut.
    pub top_k: usize,
    /// 1 means no nucleus cut.
    pub top_p: f32,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self { temperature: 0.0, top_k: 0, top_p: 1.0 }
    }
}

/// The token picked and its probability under the untempered softmax (the confidence).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pick {
    pub token: u32,
    pub prob: f32,
}

/// Softmax probabilities (numerically stable, f64 accumulation).
pub fn softmax(logits: &[f32], temperature: f32) -> Vec<f32> {
    let t = if temperature > 0.0 { temperature } else { 1.0 };
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let exps: Vec<f64> = logits.iter().map(|&v| (((v - max) / t) as f64).exp()).collect();
    let sum: f64 = exps.iter().sum();
    exps.iter().map(|e| (e / sum) as f32).collect()
}

/// The most likely token and its probability.
pub fn top1(logits: &[f32]) -> Pick {
    let (mut best, mut best_v) = (0usize, f32::NEG_INFINITY);
    for (i, &v) in logits.iter().enumerate() {
        if v > best_v {
            best = i;
            best_v = v;
        }
    }
    let sum: f64 = logits.iter().map(|&v| ((v - best_v) as f64).exp()).sum();
    Pick { token: best as u32, prob: (1.0 / sum) as f32 }
}

/// Natural-log probability of `token` under the softmax of `logits` (f64 accumulation, so a
/// token far in the tail keeps a finite log-probability).
pub fn log_prob(logits: &[f32], token: u32) -> f64 {
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
    let sum: f64 = logits.iter().map(|&v| (v as f64 - max).exp()).sum();
    logits.get(token as usize).map_or(f64::NEG_INFINITY, |&v| v as f64 - max - sum.ln())
}

/// The `k` most likely tokens with their probabilities, most likely first.
pub fn top_k(logits: &[f32], k: usize) -> Vec<Pick> {
    let probs = softmax(logits, 1.0);
    let mut idx: Vec<usize> = (0..logits.len()).collect();
    let k = k.min(idx.len());
    if k == 0 {
        return vec![];
    }
    idx.select_nth_unstable_by(k - 1, |&a, &b| logits[b].total_cmp(&logits[a]));
    idx.truncate(k);
    idx.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    idx.into_iter().map(|i| Pick { token: i as u32, prob: probs[i] }).collect()
}

/// Picks a token; `u` is a uniform draw in `[0, 1)`, ignored when greedy. Candidates are
/// walked from the most probable down (ties: lower id first) through the cumulative mass left
/// by the top-k and top-p cuts; they are ordered lazily, a few at a time, because the draw
/// lands among the first few dozen almost always and a whole 49,152-token vocabulary need not
/// be sorted for one token.
pub fn sample(logits: &[f32], params: &SamplingParams, u: f64) -> Pick {
    if params.temperature <= 0.0 || logits.is_empty() {
        return top1(logits);
    }
    let probs = softmax(logits, params.temperature);
    let mut order = Descending::new(logits);
    let limit = if params.top_k > 0 { params.top_k.min(logits.len()) } else { logits.len() };
    // The kept candidates are the first `kept` in descending order, holding `mass`.
    let (kept, mass) = if params.top_p < 1.0 {
        let mut acc = 0.0f64;
        let mut n = 0;
        while n < limit {
            acc += f64::from(probs[order.nth(n)]);
            n += 1;
            if acc >= f64::from(params.top_p) {
                break;
            }
        }
        (n.max(1), acc)
    } else if limit < logits.len() {
        (limit, (0..limit).map(|n| f64::from(probs[order.nth(n)])).sum())
    } else {
        (limit, probs.iter().map(|&p| f64::from(p)).sum())
    };
    let mut target = u * mass;
    let mut chosen = order.nth(kept - 1);
    for n in 0..kept {
        let i = order.nth(n);
        target -= f64::from(probs[i]);
        if target < 0.0 {
            chosen = i;
            break;
        }
    }
    Pick { token: chosen as u32, prob: probability(logits, chosen) }
}

/// The untempered softmax probability of token `i`.
fn probability(logits: &[f32], i: usize) -> f32 {
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let sum: f64 = logits.iter().map(|&v| f64::from(v - max).exp()).sum();
    (f64::from(logits[i] - max).exp() / sum) as f32
}

/// Token ids in descending order of logit (ties: lower id first), sorted on demand in growing
/// blocks: `nth(n)` sorts only as far as `n`.
struct Descending<'a> {
    logits: &'a [f32],
    ids: Vec<usize>,
    /// `ids[..sorted]` are the most probable, in order; the rest are all less probable.
    sorted: usize,
}

impl<'a> Descending<'a> {
    const FIRST_BLOCK: usize = 64;

    fn new(logits: &'a [f32]) -> Self {
        Self { logits, ids: (0..logits.len()).collect(), sorted: 0 }
    }

    fn nth(&mut self, n: usize) -> usize {
        if n >= self.sorted {
            let want = (n + 1).max(self.sorted * 4).max(Self::FIRST_BLOCK).min(self.ids.len());
            let logits = self.logits;
            let cmp = |a: &usize, b: &usize| logits[*b].total_cmp(&logits[*a]).then(a.cmp(b));
            let rest = &mut self.ids[self.sorted..];
            let take = want - self.sorted;
            if take < rest.len() {
                rest.select_nth_unstable_by(take - 1, cmp);
            }
            rest[..take].sort_unstable_by(cmp);
            self.sorted = want;
        }
        self.ids[n]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_the_argmax_with_its_softmax_probability() {
        let p = sample(&[0.0, 2.0, 1.0], &SamplingParams::default(), 0.99);
        assert_eq!(p.token, 1);
        let expected = 2f32.exp() / (1.0 + 2f32.exp() + 1f32.exp());
        assert!((p.prob - expected).abs() < 1e-6);
    }

    #[test]
    fn sampling_follows_the_uniform_draw_through_the_cumulative_mass() {
        let params = SamplingParams { temperature: 1.0, top_k: 0, top_p: 1.0 };
        let logits = [0.0f32, 0.0, 0.0, 0.0];
        assert_eq!(sample(&logits, &params, 0.1).token, 0);
        assert_eq!(sample(&logits, &params, 0.9).token, 3);
    }

    #[test]
    fn top_k_and_top_p_remove_the_tail() {
        let logits = [5.0f32, 4.0, -10.0, -10.0];
        let k1 = SamplingParams { temperature: 1.0, top_k: 1, top_p: 1.0 };
        assert_eq!(sample(&logits, &k1, 0.999).token, 0);
        let p = SamplingParams { temperature: 1.0, top_k: 0, top_p: 0.9 };
        for u in [0.0, 0.5, 0.999] {
            assert!(sample(&logits, &p, u).token <= 1, "tail tokens must never be drawn");
        }
    }

    /// The reference: sort the whole vocabulary, cut, walk the cumulative mass.
    fn sample_by_full_sort(logits: &[f32], params: &SamplingParams, u: f64) -> u32 {
        let probs = softmax(logits, params.temperature);
        let mut idx: Vec<usize> = (0..logits.len()).collect();
        idx.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
        if params.top_k > 0 {
            idx.truncate(params.top_k);
        }
        if params.top_p < 1.0 {
            let mut acc = 0.0f64;
            let keep = idx
                .iter()
                .position(|&i| {
                    acc += f64::from(probs[i]);
                    acc >= f64::from(params.top_p)
                })
                .map_or(idx.len(), |p| p + 1);
            idx.truncate(keep);
        }
        let mass: f64 = idx.iter().map(|&i| f64::from(probs[i])).sum();
        let mut target = u * mass;
        for &i in &idx {
            target -= f64::from(probs[i]);
            if target < 0.0 {
                return i as u32;
            }
        }
        idx[idx.len() - 1] as u32
    }

    #[test]
    fn lazy_ordering_picks_what_a_full_sort_picks() {
        // A vocabulary large enough for several blocks, with ties and a flat tail.
        let logits: Vec<f32> =
            (0..5000u32).map(|i| ((i * 7919) % 1000) as f32 / 90.0 - (i % 3) as f32).collect();
        for params in [
            SamplingParams { temperature: 1.0, top_k: 0, top_p: 1.0 },
            SamplingParams { temperature: 2.5, top_k: 0, top_p: 1.0 },
            SamplingParams { temperature: 0.7, top_k: 40, top_p: 1.0 },
            SamplingParams { temperature: 0.9, top_k: 0, top_p: 0.9 },
            SamplingParams { temperature: 1.3, top_k: 300, top_p: 0.95 },
        ] {
            for k in 0..200 {
                let u = crate::draw::uniform(5, k);
                let lazy = sample(&logits, &params, u);
                assert_eq!(
                    lazy.token,
                    sample_by_full_sort(&logits, &params, u),
                    "{params:?} u {u}"
                );
                let p = softmax(&logits, 1.0)[lazy.token as usize];
                assert!((lazy.prob - p).abs() < 1e-6);
            }
        }
    }

    #[test]
    fn log_prob_is_the_log_of_the_softmax_and_stays_finite_in_the_tail() {
        let logits = [0.0f32, 2.0, 1.0];
        let probs = softmax(&logits, 1.0);
        for t in 0..3 {
            assert!((log_prob(&logits, t).exp() - probs[t as usize] as f64).abs() < 1e-6);
        }
        let lp = log_prob(&[0.0, 200.0], 0);
        assert!((lp + 200.0).abs() < 1e-9, "{lp}");
        assert_eq!(log_prob(&logits, 3), f64::NEG_INFINITY, "a token outside the logits");
    }

    #[test]
    fn top_k_lists_the_best_tokens_in_order() {
        let t = top_k(&[0.1, 3.0, 2.0, -1.0], 2);
        assert_eq!(t.iter().map(|p| p.token).collect::<Vec<_>>(), vec![1, 2]);
    }
}
