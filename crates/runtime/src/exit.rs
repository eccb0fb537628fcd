//! The early-exit decision: answer at the edge when an exit head is confident enough.

use collm_bundle::Manifest;

use crate::{Error, Result};

/// Per-head confidence thresholds θ (max softmax probability); θ > 1 never exits.
#[derive(Debug, Clone, PartialEq)]
pub struct ExitPolicy {
    /// `(exit layer, θ)`, deepest head first (the deepest confident head answers).
    thresholds: Vec<(usize, f32)>,
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
    /// The user's choice, else the default for this bundle.
    pub fn resolve(manifest: &Manifest, threshold: Option<f32>, target: Option<f32>) -> Self {
        match (threshold, target) {
            (_, Some(a)) => Self::TargetAgreement(a),
            (Some(t), None) => Self::Threshold(t),
            (None, None) if manifest.exits.iter().all(|e| e.calibration.is_some()) => {
                Self::TargetAgreement(DEFAULT_TARGET_AGREEMENT)
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
        Ok(Self { thresholds })
    }

    /// A policy that never exits (used for `full` and as the split-invariant reference).
    pub fn never(manifest: &Manifest) -> Self {
        Self { thresholds: manifest.exits.iter().rev().map(|e| (e.layer, f32::INFINITY)).collect() }
    }

    /// Given each head's confidence `(layer, max prob)`, the layer of the head that answers.
    pub fn decide(&self, confidences: &[(usize, f32)]) -> Option<usize> {
        self.thresholds.iter().find_map(|&(layer, theta)| {
            confidences
                .iter()
                .find(|(l, _)| *l == layer)
                .filter(|(_, c)| *c >= theta)
                .map(|_| layer)
        })
    }

    pub fn thresholds(&self) -> &[(usize, f32)] {
        &self.thresholds
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(t: &[(usize, f32)]) -> ExitPolicy {
        ExitPolicy { thresholds: t.to_vec() }
    }

    #[test]
    fn the_deepest_confident_head_answers() {
        let p = policy(&[(8, 0.8), (4, 0.9)]);
        assert_eq!(p.decide(&[(4, 0.95), (8, 0.85)]), Some(8));
        assert_eq!(p.decide(&[(4, 0.95), (8, 0.5)]), Some(4));
        assert_eq!(p.decide(&[(4, 0.5), (8, 0.5)]), None);
    }

    #[test]
    fn a_threshold_above_one_never_exits() {
        assert_eq!(policy(&[(8, 1.01)]).decide(&[(8, 1.0)]), None);
    }
}
