//! Lossless speculation, the pure parts: the verdict on a drafted run of tokens (how many the
//! full model picks too, and its own token after them) and how long a draft to make next.
//!
//! A draft of `n` tokens after position `after` is checked from the full model's logits at
//! positions `after ..= after + n`: token `i` is accepted when the full model, picking with
//! the draw of its position, picks it too. The first rejected token is replaced by the full
//! model's pick, and a fully accepted draft earns the full model's token after it. The output
//! is therefore the full model's own, token for token, for greedy and seeded sampled decoding.

use crate::sampling::{self, Pick, SamplingParams};

/// How many leading `draft` tokens the full model picks too, and its pick after them, from the
/// logits of the `draft.len() + 1` positions from the one before the draft (row-major, `vocab`
/// per row) and the draws `u` of the positions they pick for.
pub fn judge(
    logits: &[f32],
    vocab: usize,
    draft: &[u32],
    u: &[f64],
    params: &SamplingParams,
) -> (usize, Pick) {
    let row = |i: usize| &logits[i * vocab..(i + 1) * vocab];
    for (i, &token) in draft.iter().enumerate() {
        let pick = sampling::sample(row(i), params, u[i]);
        if pick.token != token {
            return (i, pick);
        }
    }
    let n = draft.len();
    (n, sampling::sample(row(n), params, u[n]))
}

/// How far (in each logit) a batched pass of the cloud layers may round away from the
/// one-position passes of decoding token by token, when the layers compute in float. Measured
/// on SmolLM2-135M drafts with float activations (the
/// `smollm2_batched_verification_rounds_within_the_near_tie_bound` test, which fails when the
/// measured difference comes within a quarter of this): below 1e-4. The bound keeps a wide
/// margin because a wrong "sure" verdict would change the answer, while a needless re-run
/// only costs a pass. Layers whose batched passes differ by more (int8-quantized activations)
/// verify one position at a time ([`crate::CloudLayers::verify_passes`]).
pub const BATCH_ROUNDING: f32 = 1e-3;

/// The largest rounding bound checked verification takes on: beyond it batched passes do not
/// round but compute differently, and near ties would be most picks.
pub const MAX_CHECKED_ROUNDING: f32 = 0.02;

/// How the cloud runs a draft's positions to judge it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum VerifyPasses {
    /// One batched pass; where a deciding pick is within [`BATCH_ROUNDING`] of flipping, the
    /// positions from there on run again one at a time. One pass in the common case, and the
    /// verdict of decoding token by token.
    #[default]
    Checked,
    /// One batched pass, whatever its rounding does to near-tied tokens.
    Batched,
    /// One position at a time, as decoding token by token runs them.
    Singly,
}

impl std::str::FromStr for VerifyPasses {
    type Err = crate::Error;
    fn from_str(s: &str) -> crate::Result<Self> {
        match s {
            "checked" => Ok(Self::Checked),
            "batched" => Ok(Self::Batched),
            "singly" => Ok(Self::Singly),
            other => Err(crate::Error::Invalid(format!(
                "unknown verification {other:?} (expected checked, batched or singly)"
            ))),
        }
    }
}

/// The verdict on a draft judged from batched logits, or the first position whose pick is
/// too close to call at that rounding.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Checked {
    Verdict(usize, Pick),
    /// Position `i` of the `draft.len() + 1` judged (0: the one before the draft) could pick
    /// another token had its logits been computed one position at a time: run from there one
    /// position at a time and [`judge`] again.
    Unsure(usize),
}

/// As [`judge`], from logits that may differ from the one-position ones by up to `rounding`
/// in each component: each pick that decides the verdict must be [`sampling::stable`].
pub fn judge_checked(
    logits: &[f32],
    vocab: usize,
    draft: &[u32],
    u: &[f64],
    params: &SamplingParams,
    rounding: f32,
) -> Checked {
    let row = |i: usize| &logits[i * vocab..(i + 1) * vocab];
    for (i, &u) in u.iter().enumerate().take(draft.len() + 1) {
        if !sampling::stable(row(i), params, u, rounding) {
            return Checked::Unsure(i);
        }
        let pick = sampling::sample(row(i), params, u);
        if draft.get(i) != Some(&pick.token) {
            return Checked::Verdict(i, pick);
        }
    }
    unreachable!("the loop returns at the position after the draft at the latest (one draw each)")
}

/// Chooses the next draft's length from what the last ones cost and earned: each drafted
/// token costs an edge step, each verification a round trip plus the cloud's pass, and a
/// draft of `k` earns `1 + a + a² + … + aᵏ` tokens on average when each is accepted with
/// probability `a`. The length maximising tokens per second wins. Estimates are moving
/// averages, so the length follows the link and the text.
#[derive(Debug, Clone, PartialEq)]
pub struct DraftLength {
    /// Acceptance rate of a draft token.
    acceptance: f64,
    /// Seconds per edge step while drafting.
    edge_s: f64,
    /// Seconds per verification, round trip and the cloud's pass.
    verify_s: f64,
    max: usize,
}

impl DraftLength {
    /// Weight of the newest observation in the moving averages.
    const WEIGHT: f64 = 0.2;

    /// Starts from a guess: half the drafted tokens accepted, verification as dear as
    /// `initial_ratio` edge steps.
    pub fn new(max: usize, initial_ratio: f64) -> Self {
        Self { acceptance: 0.5, edge_s: 1.0, verify_s: initial_ratio.max(0.0), max: max.max(1) }
    }

    pub fn observe_edge_step(&mut self, seconds: f64) {
        self.edge_s = blend(self.edge_s, seconds);
    }

    /// A verification of `drafted` tokens accepted `accepted` of them and took `seconds`.
    pub fn observe_verify(&mut self, drafted: usize, accepted: usize, seconds: f64) {
        if drafted == 0 {
            return;
        }
        // Acceptance per token, from the accepted run: a run of `accepted` before a rejection
        // is `accepted` successes and one failure; a fully accepted run has no failure.
        let failures = usize::from(accepted < drafted);
        let rate = accepted as f64 / (accepted + failures).max(1) as f64;
        self.acceptance = blend(self.acceptance, rate).clamp(0.0, 0.99);
        self.verify_s = blend(self.verify_s, seconds);
    }

    pub fn acceptance(&self) -> f64 {
        self.acceptance
    }

    /// The draft length with the best expected tokens per second, 1 to `max`.
    pub fn next(&self) -> usize {
        let a = self.acceptance;
        let mut best = (1, f64::MIN);
        let mut earned = 1.0; // 1 + a + … + aᵏ, built up
        let mut power = 1.0;
        for k in 1..=self.max {
            power *= a;
            earned += power;
            let rate = earned / (k as f64 * self.edge_s + self.verify_s);
            if rate > best.1 + 1e-12 {
                best = (k, rate);
            }
        }
        best.0
    }
}

fn blend(old: f64, new: f64) -> f64 {
    if !new.is_finite() || new < 0.0 {
        return old;
    }
    old * (1.0 - DraftLength::WEIGHT) + new * DraftLength::WEIGHT
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logits_picking(tokens: &[u32], vocab: usize) -> Vec<f32> {
        tokens
            .iter()
            .flat_map(|&t| (0..vocab).map(move |i| if i == t as usize { 5.0 } else { 0.0 }))
            .collect()
    }

    #[test]
    fn a_draft_is_accepted_up_to_its_first_difference_and_corrected_there() {
        let greedy = SamplingParams::default();
        let u = [0.5; 4];
        // The full model picks 3, 1, 2, then 0 after them.
        let logits = logits_picking(&[3, 1, 2, 0], 4);
        assert_eq!(judge(&logits, 4, &[3, 1, 2], &u, &greedy).0, 3);
        assert_eq!(judge(&logits, 4, &[3, 1, 2], &u, &greedy).1.token, 0, "the bonus token");
        let (accepted, pick) = judge(&logits, 4, &[3, 2, 2], &u, &greedy);
        assert_eq!((accepted, pick.token), (1, 1), "rejected at 1, corrected to the model's 1");
        assert_eq!(judge(&logits, 4, &[0], &u, &greedy).0, 0);
    }

    #[test]
    fn a_near_tie_deciding_the_verdict_asks_for_a_one_position_run() {
        let greedy = SamplingParams::default();
        let u = [0.5; 4];
        let mut logits = logits_picking(&[3, 1, 2, 0], 4);
        assert_eq!(
            judge_checked(&logits, 4, &[3, 2, 2], &u, &greedy, 1e-3),
            Checked::Verdict(
                1,
                Pick { token: 1, prob: judge(&logits, 4, &[3, 2], &u, &greedy).1.prob }
            )
        );
        // Position 1's two best tokens within the rounding of each other: unsure there.
        logits[4 + 2] = 5.0 - 1e-4;
        assert_eq!(judge_checked(&logits, 4, &[3, 2, 2], &u, &greedy, 1e-3), Checked::Unsure(1));
        // A near tie after the verdict's position does not matter.
        let mut late = logits_picking(&[3, 1, 2, 0], 4);
        late[12 + 1] = 5.0 - 1e-4;
        assert!(matches!(
            judge_checked(&late, 4, &[0, 1, 2], &u, &greedy, 1e-3),
            Checked::Verdict(0, _)
        ));
    }

    #[test]
    fn sampled_verdicts_use_each_positions_own_draw() {
        let params = SamplingParams { temperature: 1.0, top_k: 0, top_p: 1.0 };
        let flat = vec![0.0f32; 8]; // two positions of 4 equally likely tokens
        // Draw 0.1 picks token 0, draw 0.9 token 3.
        assert_eq!(
            judge(&flat, 4, &[0], &[0.1, 0.9], &params),
            (1, sampling::sample(&flat[4..], &params, 0.9))
        );
        assert_eq!(judge(&flat, 4, &[0], &[0.9, 0.1], &params).0, 0);
    }

    #[test]
    fn drafts_lengthen_with_acceptance_and_with_the_cost_of_a_round_trip() {
        let mut sure = DraftLength::new(16, 4.0);
        let mut unsure = DraftLength::new(16, 4.0);
        for _ in 0..30 {
            sure.observe_edge_step(0.01);
            unsure.observe_edge_step(0.01);
            sure.observe_verify(8, 8, 0.04);
            unsure.observe_verify(8, 1, 0.04);
        }
        assert!(sure.acceptance() > 0.9 && unsure.acceptance() < 0.6);
        assert!(sure.next() > unsure.next(), "{} vs {}", sure.next(), unsure.next());
        let mut far = unsure.clone();
        for _ in 0..30 {
            far.observe_verify(8, 1, 0.4);
        }
        assert!(far.next() >= unsure.next(), "a dearer round trip never shortens drafts");
        assert!((1..=16).contains(&far.next()) && (1..=16).contains(&sure.next()));
    }

    #[test]
    fn nonsense_timings_are_ignored() {
        let mut d = DraftLength::new(8, 2.0);
        let before = d.clone();
        d.observe_edge_step(f64::NAN);
        d.observe_verify(0, 0, 1.0);
        d.observe_edge_step(-1.0);
        assert_eq!(d, before);
    }
}
