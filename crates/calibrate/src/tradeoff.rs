//! From held-out predictions of one exit head to the numbers the bundle manifest carries: how
//! many positions exit at a confidence threshold θ and how often those agree with the full model.

use serde::{Deserialize, Serialize};

/// One held-out position as seen by an exit head.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ExitPrediction {
    /// max q: the exit head's probability of its own top-1 token.
    pub confidence: f32,
    /// Whether that top-1 token is also the full model's top-1.
    pub agrees: bool,
}

/// Serialises as `{"theta": f32, "exit_share": f32, "agreement": f32}`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TradeoffRow {
    pub theta: f32,
    /// Fraction of positions with confidence ≥ θ (the ones that would exit).
    pub exit_share: f32,
    /// Fraction of exiting positions whose top-1 matches the full model; 1.0 when none exit,
    /// since an empty exit set never disagrees (and this keeps the manifest free of NaN).
    pub agreement: f32,
}

/// Serialises as `{"agreement": f32, "theta": f32}`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AgreementThreshold {
    pub agreement: f32,
    pub theta: f32,
}

/// The thresholds reported for every head.
pub const THETAS: [f32; 6] = [0.5, 0.6, 0.7, 0.8, 0.9, 0.95];
/// The agreement targets a threshold is looked up for (fine near the top, where calibration
/// chooses the default operating point).
pub const AGREEMENT_TARGETS: [f32; 7] = [0.8, 0.85, 0.9, 0.95, 0.96, 0.97, 0.98];
/// The θ meaning "never exit": above any probability, so nothing exits and agreement is 1.0.
pub const NEVER_EXIT: f32 = 1.01;

/// Exit share and agreement at one threshold.
pub fn row_at(predictions: &[ExitPrediction], theta: f32) -> TradeoffRow {
    let (exiting, agreeing) = predictions
        .iter()
        .filter(|p| p.confidence >= theta)
        .fold((0usize, 0usize), |(e, a), p| (e + 1, a + usize::from(p.agrees)));
    let exit_share =
        if predictions.is_empty() { 0.0 } else { exiting as f32 / predictions.len() as f32 };
    let agreement = if exiting == 0 { 1.0 } else { agreeing as f32 / exiting as f32 };
    TradeoffRow { theta, exit_share, agreement }
}

/// [`row_at`] for each of [`THETAS`].
pub fn tradeoff_rows(predictions: &[ExitPrediction]) -> Vec<TradeoffRow> {
    THETAS.iter().map(|&theta| row_at(predictions, theta)).collect()
}

/// The smallest θ in 0.00, 0.01, …, 1.00 whose exiting set reaches `target` agreement, or
/// [`NEVER_EXIT`] if none does. Agreement need not rise monotonically with θ; this is the first
/// θ from below that meets the target.
pub fn threshold_for_agreement(predictions: &[ExitPrediction], target: f32) -> f32 {
    (0..=100)
        .map(|step| step as f32 / 100.0)
        .find(|&theta| row_at(predictions, theta).agreement >= target)
        .unwrap_or(NEVER_EXIT)
}

/// [`threshold_for_agreement`] for each of [`AGREEMENT_TARGETS`].
pub fn agreement_thresholds(predictions: &[ExitPrediction]) -> Vec<AgreementThreshold> {
    AGREEMENT_TARGETS
        .iter()
        .map(|&agreement| AgreementThreshold {
            agreement,
            theta: threshold_for_agreement(predictions, agreement),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(confidence: f32, agrees: bool) -> ExitPrediction {
        ExitPrediction { confidence, agrees }
    }

    /// Confident positions mostly agree, unsure ones mostly do not.
    fn sample() -> Vec<ExitPrediction> {
        vec![
            p(0.99, true),
            p(0.97, true),
            p(0.92, true),
            p(0.91, false),
            p(0.85, true),
            p(0.75, true),
            p(0.65, false),
            p(0.55, false),
            p(0.45, true),
            p(0.30, false),
        ]
    }

    #[test]
    fn rows_count_exiting_positions_and_their_agreement() {
        let rows = tradeoff_rows(&sample());
        let thetas: Vec<f32> = rows.iter().map(|r| r.theta).collect();
        assert_eq!(thetas, THETAS);
        assert_eq!(rows[0], TradeoffRow { theta: 0.5, exit_share: 0.8, agreement: 5.0 / 8.0 });
        assert_eq!(rows[4], TradeoffRow { theta: 0.9, exit_share: 0.4, agreement: 0.75 });
        assert_eq!(rows[5], TradeoffRow { theta: 0.95, exit_share: 0.2, agreement: 1.0 });
    }

    #[test]
    fn nobody_exiting_counts_as_full_agreement_not_nan() {
        let row = row_at(&[p(0.4, false)], 0.9);
        assert_eq!(row, TradeoffRow { theta: 0.9, exit_share: 0.0, agreement: 1.0 });
        assert_eq!(row_at(&[], 0.5), TradeoffRow { theta: 0.5, exit_share: 0.0, agreement: 1.0 });
    }

    #[test]
    fn thresholds_are_the_smallest_grid_point_reaching_each_target() {
        let s = sample();
        // θ = 0.65 lets the disagreeing 0.65 in (5/7 ≈ 0.71); θ = 0.66 exits the six
        // positions from 0.75 up, 5 of which agree (≈ 0.83).
        assert_eq!(threshold_for_agreement(&s, 0.8), 0.66);
        assert_eq!(threshold_for_agreement(&s, 0.85), 0.92);
        assert_eq!(threshold_for_agreement(&s, 1.0), 0.92);
        assert_eq!(threshold_for_agreement(&[p(1.0, false)], 0.9), NEVER_EXIT);
        let all = agreement_thresholds(&s);
        assert_eq!(all.iter().map(|a| a.agreement).collect::<Vec<_>>(), AGREEMENT_TARGETS);
    }

    #[test]
    fn serialises_to_the_manifest_shapes() {
        let row =
            serde_json::to_string(&TradeoffRow { theta: 0.5, exit_share: 0.25, agreement: 1.0 })
                .expect("json");
        assert_eq!(row, r#"{"theta":0.5,"exit_share":0.25,"agreement":1.0}"#);
        let t = serde_json::to_string(&AgreementThreshold { agreement: 0.9, theta: 0.75 })
            .expect("json");
        assert_eq!(t, r#"{"agreement":0.9,"theta":0.75}"#);
    }
}
