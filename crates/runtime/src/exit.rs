//! The early-exit decision: answer at the edge when an exit head is confident enough, and the
//! token it would answer does not extend a repetition of the answer so far.

use collm_bundle::Manifest;

use crate::repetition::LoopDetector;
use crate::sampling::Pick;
use crate::{Error, Result};

/// Per-head confidence thresholds θ (max softmax probability); θ > 1 never exits.
#[derive(Debug, Clone, PartialEq)]
pub struct ExitPolicy {
    /// `(exit layer, θ)`, deepest head first (the deepest confident head answers).
    thresholds: Vec<(usize, f32)>,
    guard: RepetitionGuard,
}

/// Exit heads are confidently wrong in the states where a loop starts: a phrase the answer
/// already said is easy to predict from the layers the edge has, and the head's confidence
/// rises with every copy. So the edge never carries a repetition on its own: a token that
/// would make the answer end in one (by an eager detector: a second copy of a phrase of up to
/// 32 tokens, at least 8 tokens repeated) goes to the cloud, which repeats it only if the
/// full model would.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RepetitionGuard {
    detector: Option<LoopDetector>,
}

impl RepetitionGuard {
    pub const OFF: Self = Self { detector: None };
    pub const ON: Self =
        Self { detector: Some(LoopDetector { max_period: 32, min_repeats: 2, min_span: 8 }) };

    pub fn is_on(&self) -> bool {
        self.detector.is_some()
    }

    /// Whether `answer` followed by `token` ends in a repetition.
    pub fn repeats(&self, answer: &[u32], token: u32) -> bool {
        let Some(d) = self.detector else { return false };
        // The longest tail any period needs to qualify: nothing before it changes the verdict.
        let reach = (d.min_repeats * d.max_period).max(d.min_span);
        let mut tail = answer[answer.len().saturating_sub(reach)..].to_vec();
        tail.push(token);
        d.find(&tail).is_some()
    }
}

impl Default for RepetitionGuard {
    fn default() -> Self {
        Self::ON
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

/// The operating point when the user names none and calibration chose none on free-running
/// answers: the calibrated θ for 98% agreement with the
/// full model, or (uncalibrated heads) a raw θ of 0.9.
pub const DEFAULT_TARGET_AGREEMENT: f32 = 0.98;
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
        let guard = manifest.operating_point.as_ref().map_or_else(RepetitionGuard::default, |p| {
            if p.repetition_guard { RepetitionGuard::ON } else { RepetitionGuard::OFF }
        });
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
    fn a_token_that_would_carry_a_repetition_goes_to_the_cloud() {
        let p = policy(&[(8, 0.5)]);
        // "health conditions like" said twice and a half: its next copy is the cloud's.
        let answer = [5, 6, 10, 11, 12, 10, 11, 12, 10, 11];
        assert_eq!(p.decide(&[head(8, 12, 0.99)], &answer), None);
        // Any other token is the edge's, and so is a second copy still under 8 tokens.
        assert_eq!(p.decide(&[head(8, 13, 0.99)], &answer), Some(8));
        assert_eq!(p.decide(&[head(8, 12, 0.99)], &answer[..7]), Some(8));
        // The guard off: the confident head answers even a loop.
        let off = p.clone().with_guard(RepetitionGuard::OFF);
        assert_eq!(off.decide(&[head(8, 12, 0.99)], &answer), Some(8));
    }

    #[test]
    fn the_guard_sees_second_copies_of_long_phrases_and_runs_of_short_ones() {
        let g = RepetitionGuard::ON;
        let phrase: Vec<u32> = (100..110).collect();
        let mut answer: Vec<u32> = phrase.iter().chain(&phrase[..9]).copied().collect();
        assert!(g.repeats(&answer, 109), "the second copy of a 10-token phrase completes");
        assert!(!g.repeats(&answer, 1));
        answer.truncate(12);
        assert!(!g.repeats(&answer, 102), "three tokens of a second copy are not a repetition yet");
        assert!(!g.repeats(&[7; 6], 7), "seven copies of a token are under the 8-token span");
        assert!(g.repeats(&[7; 7], 7));
        // Only the tail matters, however long the answer.
        let long: Vec<u32> = (0..5000).map(|i| i % 977).chain([1, 2, 3, 4, 1, 2, 3]).collect();
        assert!(g.repeats(&long, 4));
        assert!(!RepetitionGuard::OFF.repeats(&long, 4));
    }
}
