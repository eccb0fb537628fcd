//! Choosing the next token from logits: greedy, or temperature / top-k / top-p driven by a
//! uniform draw that the caller supplies (so edge and cloud pick identically for one seed).

use serde::{Deserialize, Serialize};

use crate::exp_sum::sum_exp_shifted;

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
    Pick { token: best as u32, prob: (1.0 / sum_exp_shifted(logits, best_v)) as f32 }
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

/// Whether [`sample`] picks the same token from every logit vector within `eps` of `logits`
/// in each component (the rounding by which a batched pass of the same model may differ from
/// a one-position pass). Conservative: `false` may be said of a pick that would not change,
/// never `true` of one that could. Greedy: the best logit leads the next by more than
/// `2 eps`. Sampled: the picked token, the top-k and top-p cuts each lie more than `2 eps`
/// from their neighbours in logit, and the draw lies inside the picked token's share of the
/// cumulative mass by more than a shift of `eps` in every logit could move that share's ends.
pub fn stable(logits: &[f32], params: &SamplingParams, u: f64, eps: f32) -> bool {
    if logits.len() < 2 {
        return true;
    }
    let gap = 2.0 * f64::from(eps);
    let apart = |a: f32, b: f32| f64::from(a) - f64::from(b) > gap;
    if params.temperature <= 0.0 {
        let best = top1(logits).token as usize;
        let second = logits
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != best)
            .fold(f32::NEG_INFINITY, |m, (_, &v)| m.max(v));
        return apart(logits[best], second);
    }
    let probs = softmax(logits, params.temperature);
    let mut order = Descending::new(logits);
    // A normalised sum over a fixed set of tokens moves by at most this factor when every
    // logit moves by `eps` (numerator and denominator by `e^(eps/T)` each).
    let r = (2.0 * f64::from(eps) / f64::from(params.temperature)).exp();
    let len = logits.len();
    let limit = if params.top_k > 0 { params.top_k.min(len) } else { len };
    if limit < len && !apart(logits[order.nth(limit - 1)], logits[order.nth(limit)]) {
        return false;
    }
    let kept = if params.top_p < 1.0 {
        let top_p = f64::from(params.top_p);
        let (mut acc, mut before, mut n) = (0.0f64, 0.0f64, 0);
        while n < limit {
            before = acc;
            acc += f64::from(probs[order.nth(n)]);
            n += 1;
            if acc >= top_p {
                break;
            }
        }
        // The cut falls after the same token whatever the rounding: the last kept token and
        // its neighbours keep their order, the mass before it stays under `top_p` and (when
        // it was `top_p` that cut, not top-k) the mass with it stays over.
        if n >= 2 && !apart(logits[order.nth(n - 2)], logits[order.nth(n - 1)]) {
            return false;
        }
        if n < limit && !apart(logits[order.nth(n - 1)], logits[order.nth(n)]) {
            return false;
        }
        if before * r >= top_p || (n < limit && acc / r < top_p) {
            return false;
        }
        n.max(1)
    } else {
        limit
    };
    let mass: f64 = (0..kept).map(|n| f64::from(probs[order.nth(n)])).sum();
    let target = u * mass;
    // Where the walk stops, and the mass before it (a draw past the whole mass, by rounding,
    // takes the last kept token).
    let (mut below, mut chosen) = (0.0f64, None);
    for n in 0..kept {
        let p = f64::from(probs[order.nth(n)]);
        if target - below - p < 0.0 {
            chosen = Some(n);
            break;
        }
        below += p;
    }
    let chosen = chosen.unwrap_or(kept - 1);
    let p = f64::from(probs[order.nth(chosen)]);
    let below: f64 = (0..chosen).map(|n| f64::from(probs[order.nth(n)])).sum();
    let here = logits[order.nth(chosen)];
    if chosen > 0 && !apart(logits[order.nth(chosen - 1)], here) {
        return false;
    }
    if chosen + 1 < len && !apart(here, logits[order.nth(chosen + 1)]) {
        return false;
    }
    // The draw stays past the mass before the pick and, unless the pick is the last kept
    // token (which takes whatever is left), short of the mass up to and with it.
    let lower = below * r < target / r;
    let upper = chosen + 1 == kept || (below + p) / r > target * r;
    lower && upper
}

/// The untempered softmax probability of token `i`.
fn probability(logits: &[f32], i: usize) -> f32 {
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    (f64::from(logits[i] - max).exp() / sum_exp_shifted(logits, max)) as f32
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

    /// Logits of a vocabulary of `n` from a counter-based draw: a few leaders over a long,
    /// dense tail (as a language model's are).
    fn random_logits(seed: u64, n: usize) -> Vec<f32> {
        (0..n as u64)
            .map(|i| {
                let x = crate::draw::uniform(seed, i) as f32;
                if i < 5 { 4.0 * x + 2.0 } else { 3.0 * x - 6.0 }
            })
            .collect()
    }

    #[test]
    fn a_stable_pick_survives_every_rounding_within_its_bound() {
        let eps = 1e-3f32;
        let all = [
            SamplingParams::default(),
            SamplingParams { temperature: 1.0, top_k: 0, top_p: 1.0 },
            SamplingParams { temperature: 0.7, top_k: 40, top_p: 1.0 },
            SamplingParams { temperature: 0.8, top_k: 0, top_p: 0.95 },
            SamplingParams { temperature: 1.3, top_k: 50, top_p: 0.9 },
        ];
        let mut stable_count = 0;
        let mut total = 0;
        for params in all {
            for seed in 0..60u64 {
                let logits = random_logits(seed, 300);
                let u = crate::draw::uniform(seed + 1000, 0);
                let pick = sample(&logits, &params, u).token;
                total += 1;
                if !stable(&logits, &params, u, eps) {
                    continue;
                }
                stable_count += 1;
                // Shifts of up to eps each, the extremes included.
                for trial in 0..20u64 {
                    let shifted: Vec<f32> = logits
                        .iter()
                        .enumerate()
                        .map(|(i, &v)| {
                            let d = crate::draw::uniform(seed * 100 + trial, i as u64) as f32;
                            let d = if trial < 4 { (d - 0.5).signum() } else { 2.0 * d - 1.0 };
                            v + eps * d
                        })
                        .collect();
                    assert_eq!(sample(&shifted, &params, u).token, pick, "{params:?} seed {seed}");
                }
            }
        }
        // Separated logits make most picks stable: the check must not send every pick back.
        assert!(stable_count * 10 > total * 8, "only {stable_count} of {total} stable");
    }

    #[test]
    fn near_ties_and_draws_on_a_boundary_are_not_stable() {
        let greedy = SamplingParams::default();
        assert!(stable(&[1.0, 3.0, 2.0], &greedy, 0.5, 1e-3));
        assert!(!stable(&[1.0, 3.0, 2.9995], &greedy, 0.5, 1e-3));
        let params = SamplingParams { temperature: 1.0, top_k: 0, top_p: 1.0 };
        let flat = [0.0f32, 5.0, 10.0, 15.0];
        // Token 3 holds nearly all the mass, walked first: a draw deep inside its share is
        // stable, one at the end of its share is not.
        let share = f64::from(softmax(&flat, 1.0)[3]);
        assert!(stable(&flat, &params, 0.5, 1e-3));
        assert!(stable(&flat, &params, 1e-9, 1e-3));
        assert!(!stable(&flat, &params, share - 1e-6, 1e-3));
        assert!(!stable(&flat, &params, share + 1e-6, 1e-3));
        // Two tokens within the bound of each other: which comes first is rounding's choice.
        assert!(!stable(&[0.0, 2.0, 2.0005, -3.0], &params, 0.3, 1e-3));
        let cut = SamplingParams { temperature: 1.0, top_k: 2, top_p: 1.0 };
        assert!(!stable(&[5.0, 3.0, 2.9999, -4.0], &cut, 0.1, 1e-3), "top-k cut on a tie");
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
