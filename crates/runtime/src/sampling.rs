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

/// Picks a token; `u` is a uniform draw in `[0, 1)`, ignored when greedy.
pub fn sample(logits: &[f32], params: &SamplingParams, u: f64) -> Pick {
    if params.temperature <= 0.0 {
        return top1(logits);
    }
    let probs = softmax(logits, params.temperature);
    let mut idx: Vec<usize> = (0..logits.len()).collect();
    idx.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]));
    if params.top_k > 0 {
        idx.truncate(params.top_k);
    }
    if params.top_p < 1.0 {
        let mut acc = 0.0;
        let mut keep = 0;
        for &i in &idx {
            acc += probs[i];
            keep += 1;
            if acc >= params.top_p {
                break;
            }
        }
        idx.truncate(keep.max(1));
    }
    let mass: f64 = idx.iter().map(|&i| probs[i] as f64).sum();
    let mut target = u * mass;
    let mut chosen = idx[idx.len() - 1];
    for &i in &idx {
        target -= probs[i] as f64;
        if target < 0.0 {
            chosen = i;
            break;
        }
    }
    let confidence = softmax(logits, 1.0)[chosen];
    Pick { token: chosen as u32, prob: confidence }
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

    #[test]
    fn top_k_lists_the_best_tokens_in_order() {
        let t = top_k(&[0.1, 3.0, 2.0, -1.0], 2);
        assert_eq!(t.iter().map(|p| p.token).collect::<Vec<_>>(), vec![1, 2]);
    }
}
