//! Choosing the default operating point on free-running answers: teacher-forced agreement
//! picks thresholds position by position, but an answer is a sequence — one confident wrong
//! token changes everything after it, and repetitive states where the exit head is confidently
//! wrong end in loops. So the calibrated bundle answers held-out prompts collaboratively at
//! every target agreement, and the step above the lowest target whose answers keep quality (no
//! more loops than the full model's, mean NLL under the full model within a ratio of its own)
//! becomes the default. The step of margin is there because the choice is made on a few dozen
//! answers: the lowest target that happens to pass on them is the one most likely to have
//! passed by luck.

use std::path::Path;

use anyhow::{Context, Result};
use collm_bundle::manifest::{CalibratedOperatingPoint, FreeRunningRow};
use collm_calibrate::{AGREEMENT_TARGETS, QualityTarget};
use collm_runtime::repetition::LoopDetector;
use collm_runtime::{
    CatchUp, Encoding, ExitPolicy, Mode, OperatingPoint, RepetitionGuard, SplitModel,
};

use super::free_running::{FreeRunning, ModeRun, QualityRun};
use super::prompts::encode_chats;

pub struct Chosen {
    pub point: CalibratedOperatingPoint,
    pub report: String,
}

/// Tries target agreements from the highest down on `prompts` and keeps the lowest whose
/// answers keep quality, stopping at the first that does not (lower targets only exit more).
/// When not even the highest keeps quality, it stays the default: the most this calibration
/// can do, and the report says so.
pub fn choose(
    bundle: &Path,
    prompts: &[String],
    described: &str,
    new_tokens: usize,
    max_nll_ratio: f64,
) -> Result<Chosen> {
    let mut model = SplitModel::open(bundle, true)?;
    let (encoded, _) = encode_chats(&model, prompts, new_tokens)?;
    let manifest = model.manifest.clone();
    let guard = RepetitionGuard::ON;
    let mut cloud = model.take_in_process_cloud(CatchUp::Exact)?.context("cloud partition")?;
    eprintln!("choosing the default operating point on {} free-running answers", encoded.len());
    let detector = LoopDetector::default();
    let mut runner = FreeRunning {
        model: &mut model,
        cloud: &mut cloud,
        new_tokens,
        encoding: Encoding::F32,
        detector,
        keep_answers: false,
    };
    let references = runner.references(&encoded)?;
    let target = QualityTarget { max_nll_ratio };
    let mut evaluated = vec![];
    // The targets that kept quality, highest first.
    let mut kept = vec![];
    for &a in AGREEMENT_TARGETS.iter().rev() {
        let policy =
            ExitPolicy::new(&manifest, OperatingPoint::TargetAgreement(a))?.with_guard(guard);
        let run =
            ModeRun { label: format!("collaborative:a={a}"), mode: Mode::Collaborative, policy };
        let (tally, _) = runner.run_mode(&references, &run)?;
        let keeps = target.met_by(&tally, &references.tally);
        evaluated.push((run, tally, a));
        if !keeps {
            break;
        }
        kept.push(a);
    }
    let chosen = with_margin(&kept);
    let full = references.tally.clone();
    let candidates = evaluated
        .iter()
        .map(|(_, t, a)| FreeRunningRow {
            target_agreement: *a,
            edge_share: t.edge_share() as f32,
            identical_share: t.identical_share() as f32,
            loop_share: t.loop_share() as f32,
            nll_ratio: t.nll_ratio(&full) as f32,
        })
        .collect();
    let target_agreement = chosen.unwrap_or(AGREEMENT_TARGETS[AGREEMENT_TARGETS.len() - 1]);
    let point = CalibratedOperatingPoint {
        target_agreement,
        repetition_guard: guard.is_on(),
        prompts: encoded.len(),
        new_tokens,
        max_nll_ratio: max_nll_ratio as f32,
        full_loop_share: full.loop_share() as f32,
        candidates,
    };
    let result = QualityRun {
        full,
        modes: evaluated.into_iter().map(|(run, t, _)| (run, t)).collect(),
        answers: vec![],
    };
    let mut report = format!(
        "## Default operating point (free-running)\n\n{described} ({} in all), {new_tokens} \
         greedy tokens, collaborative with the repetition guard and f32 uploads, against the full model \
         (loops: {:.0}% of its answers). Kept: one step above the lowest target agreement whose answers loop no \
         more often and whose mean NLL under the full model is at most {max_nll_ratio:.2}× the full model's \
         own, trying targets from the highest down (a margin for the few answers the choice rests on).\n\n{}\n",
        point.prompts,
        100.0 * point.full_loop_share,
        super::quality::table(&result, &detector),
    );
    match chosen {
        Some(a) => report.push_str(&format!("Default: target agreement {a}.\n\n")),
        None => report.push_str(&format!(
            "Not even the highest target keeps quality on these prompts; default: the highest, \
             {target_agreement}.\n\n"
        )),
    }
    Ok(Chosen { point, report })
}

/// Of the targets that kept quality (highest first, each lower one tried after a higher one
/// passed), one step above the lowest; the only one when one passed.
fn with_margin(kept: &[f32]) -> Option<f32> {
    match kept {
        [] => None,
        [only] => Some(*only),
        [.., above, _lowest] => Some(*above),
    }
}

#[cfg(test)]
mod tests {
    use super::with_margin;

    #[test]
    fn the_default_keeps_one_step_of_margin_above_the_lowest_passing_target() {
        assert_eq!(with_margin(&[]), None);
        assert_eq!(with_margin(&[0.98]), Some(0.98));
        assert_eq!(with_margin(&[0.98, 0.97]), Some(0.98));
        assert_eq!(with_margin(&[0.98, 0.97, 0.96]), Some(0.97));
    }
}
