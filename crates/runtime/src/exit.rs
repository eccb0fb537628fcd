//! The early-exit decision: answer at the edge when an exit head is confident enough, and the
//! token it would answer does not extend a repetition of the answer so far.

use collm_bundle::Manifest;

use crate::sampling::Pick;
use crate::{Error, Result};

/// Per-head confidence thresholds θ (max softmax probability); θ > 1 never exits.
#[derive(Debug, Clone, PartialEq)]
pub struct ExitPolicy {
    /// `(exit layer, θ)`, deepest head first (the deepest confident head answers).
    thresholds: Vec<(usize, f32)>,
    guard: RepetitionGuard,
}

/// Exit heads are confidently wrong in exactly the states where a loop starts: a phrase the
/// answer already said is easy to predict from the layers the edge has, and the head's
/// confidence rises with every copy. So the edge never repeats an n-gram of its answer on its
/// own: a token that would complete an `ngram`-token sequence already present in the answer
/// goes to the cloud, which may repeat it if the full model would. `ngram == 0` turns the
/// guard off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RepetitionGuard {
    pub ngram: usize,
}

impl RepetitionGuard {
    pub const OFF: Self = Self { ngram: 0 };

    /// Whether appending `token` to `answer` repeats the answer's last `ngram - 1` tokens and
    /// `token` as they already occurred earlier in it.
    pub fn repeats(&self, answer: &[u32], token: u32) -> bool {
        let n = self.ngram;
        if n == 0 || answer.len() < n {
            return false;
        }
        let tail = &answer[answer.len() + 1 - n..];
        // Every earlier window of n tokens of `answer`: its first n-1 equal the tail and its
        // last equals `token`.
        answer.windows(n).any(|w| w[n - 1] == token && w[..n - 1] == *tail)
    }
}

impl Default for RepetitionGuard {
    /// Trigrams: a repeated trigram is rare in a sound answer of a few hundred tokens and
    /// marks the second copy of a looping phrase (bench/results/quality-smollm2.md).
    fn default() -> Self {
        Self { ngram: 3 }
    }
}

/// How a user states the operating point.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum OperatingPoint {
    /// The same raw θ for every head.
    Threshold(f32),
    /// The θ each head needs to reach this top-1 agreement with the full model on held-out
    /// data, as recorded by calibration.
    TargetAgreement(f32),
}

/// The operating point when the user names none: the calibrated θ for 95% agreement with the
/// full model, or (uncalibrated heads) a raw θ of 0.9.
pub const DEFAULT_TARGET_AGREEMENT: f32 = 0.95;
pub const DEFAULT_THRESHOLD: f32 = 0.9;

impl OperatingPoint {
    /// The user's choice, else the default for this bundle: the target agreement calibration
    /// chose free-running, or (bundles calibrated before that existed) 95%.
    pub fn resolve(manifest: &Manifest, threshold: Option<f32>, target: Option<f32>) -> Self {
        match (threshold, target) {
            (_, Some(a)) => Self::TargetAgreement(a),
            (Some(t), None) => Self::Threshold(t),
            (None, None) if manifest.exits.iter().all(|e| e.calibration.is_some()) => {
                Self::TargetAgreement(
                    manifest
                        .operating_point
                        .as_ref()
                        .map_or(DEFAULT_TARGET_AGREEMENT, |p| p.target_agreement),
                )
            }
            (None, None) => Self::Threshold(DEFAULT_THRESHOLD),
        }
    }
}

impl ExitPolicy {
    pub fn new(manifest: &Manifest, point: OperatingPoint) -> Result<Self> {
        let mut thresholds = Vec::new();
        for head in manifest.exits.iter().rev() {
            let theta = match point {
                OperatingPoint::Threshold(t) => {
                    if t.is_nan() || t <= 0.0 {
                        return Err(Error::Invalid(format!("threshold must be > 0, got {t}")));
                    }
                    t
                }
                OperatingPoint::TargetAgreement(a) => {
                    let cal = head.calibration.as_ref().ok_or_else(|| {
                        Error::Invalid(format!(
                            "exit head at layer {} is not calibrated: run `collm calibrate` or give --threshold",
                            head.layer
                        ))
                    })?;
                    cal.thresholds
                        .iter()
                        .filter(|t| t.agreement >= a)
                        .map(|t| t.theta)
                        .fold(None, |m: Option<f32>, t| Some(m.map_or(t, |m| m.min(t))))
                        .unwrap_or(f32::INFINITY)
                }
            };
            thresholds.push((head.layer, theta));
        }
        // The guard calibration measured the default operating point with.
        let guard = manifest
            .operating_point
            .as_ref()
            .map_or_else(RepetitionGuard::default, |p| RepetitionGuard { ngram: p.guard_ngram });
        Ok(Self { thresholds, guard })
    }

    /// A policy that never exits (used for `full` and as the split-invariant reference).
    pub fn never(manifest: &Manifest) -> Self {
        Self {
            thresholds: manifest.exits.iter().rev().map(|e| (e.layer, f32::INFINITY)).collect(),
            guard: RepetitionGuard::OFF,
        }
    }

    /// The same thresholds with another repetition guard.
    pub fn with_guard(mut self, guard: RepetitionGuard) -> Self {
        self.guard = guard;
        self
    }

    /// Given each head's top-1 `(layer, pick)` and the tokens answered so far, the layer of the
    /// head that answers: the deepest confident one, unless its token would extend a
    /// repetition of the answer (then the cloud answers).
    pub fn decide(&self, heads: &[(usize, Pick)], answer: &[u32]) -> Option<usize> {
        let layer = self.thresholds.iter().find_map(|&(layer, theta)| {
            heads.iter().find(|(l, p)| *l == layer && p.prob >= theta).map(|_| layer)
        })?;
        let token = heads.iter().find(|(l, _)| *l == layer)?.1.token;
        (!self.guard.repeats(answer, token)).then_some(layer)
    }

    pub fn thresholds(&self) -> &[(usize, f32)] {
        &self.thresholds
    }

    pub fn guard(&self) -> RepetitionGuard {
        self.guard
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(t: &[(usize, f32)]) -> ExitPolicy {
        ExitPolicy { thresholds: t.to_vec(), guard: RepetitionGuard::default() }
    }

    fn head(layer: usize, token: u32, prob: f32) -> (usize, Pick) {
        (layer, Pick { token, prob })
    }

    #[test]
    fn the_deepest_confident_head_answers() {
        let p = policy(&[(8, 0.8), (4, 0.9)]);
        assert_eq!(p.decide(&[head(4, 1, 0.95), head(8, 1, 0.85)], &[]), Some(8));
        assert_eq!(p.decide(&[head(4, 1, 0.95), head(8, 1, 0.5)], &[]), Some(4));
        assert_eq!(p.decide(&[head(4, 1, 0.5), head(8, 1, 0.5)], &[]), None);
    }

    #[test]
    fn a_threshold_above_one_never_exits() {
        assert_eq!(policy(&[(8, 1.01)]).decide(&[head(8, 1, 1.0)], &[]), None);
    }

    #[test]
    fn a_token_repeating_a_trigram_of_the_answer_goes_to_the_cloud() {
        let p = policy(&[(8, 0.5)]);
        // "health conditions like health conditions" + "like" repeats a trigram.
        let answer = [10, 11, 12, 10, 11];
        assert_eq!(p.decide(&[head(8, 12, 0.99)], &answer), None);
        // Any other token, or the same bigram continued differently, is the edge's.
        assert_eq!(p.decide(&[head(8, 13, 0.99)], &answer), Some(8));
        assert_eq!(p.decide(&[head(8, 12, 0.99)], &[10, 11, 12, 9, 11]), Some(8));
        // The guard off: the confident head answers even a loop.
        let off = p.clone().with_guard(RepetitionGuard::OFF);
        assert_eq!(off.decide(&[head(8, 12, 0.99)], &answer), Some(8));
    }

    #[test]
    fn the_guard_looks_at_n_grams_of_its_size_only() {
        let bigram = RepetitionGuard { ngram: 2 };
        assert!(bigram.repeats(&[5, 6, 7, 5], 6));
        assert!(!bigram.repeats(&[5, 6, 7, 5], 7));
        let trigram = RepetitionGuard::default();
        assert!(!trigram.repeats(&[5, 6, 7, 5], 6), "only a bigram repeats");
        assert!(!trigram.repeats(&[], 1));
        assert!(!trigram.repeats(&[1], 1));
        assert!(!trigram.repeats(&[1, 1], 1), "the first trigram of a run is new");
        assert!(trigram.repeats(&[1, 1, 1], 1), "a token four times repeats a trigram");
        assert!(!RepetitionGuard { ngram: 1 }.repeats(&[], 4));
        assert!(RepetitionGuard { ngram: 1 }.repeats(&[4], 4));
    }
}
