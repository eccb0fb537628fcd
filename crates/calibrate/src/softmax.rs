//! Row-wise comparison of two logit rows: KL(p || q), the top-1 of each and q's confidence, in
//! one pass of exponentials. This is the elementwise hot spot next to the GEMMs (V ≈ 49k per
//! row), so it uses a branch-free exp the compiler can vectorise.

/// What one position's exit head and full model say, compared.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct RowComparison {
    pub kl: f64,
    /// max q, the exit head's confidence.
    pub confidence: f32,
    pub q_top1: usize,
    pub p_top1: usize,
}

/// exp(x) for x ≤ 0 (inputs are logits minus their row max), relative error below 2e-7.
#[inline(always)]
fn exp_nonpositive(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // 1.5·2²³: adding and subtracting it rounds to the nearest integer without a libm call.
    const ROUND: f32 = 12_582_912.0;
    let x = x.max(-87.0);
    let k = (x * LOG2E + ROUND) - ROUND;
    let r = (x - k * LN2_HI) - k * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    p * f32::from_bits(((k as i32 + 127) << 23) as u32)
}

fn max_and_argmax(row: &[f32]) -> (f32, usize) {
    let mut best = (f32::NEG_INFINITY, 0);
    for (i, &v) in row.iter().enumerate() {
        if v > best.0 {
            best = (v, i);
        }
    }
    best
}

const LANES: usize = 8;

/// Compares exit logits `lq` with full-model logits `lp` (same length). With `write_probs`,
/// overwrites both rows with their softmax probabilities for the backward pass.
pub(crate) fn compare_rows(lq: &mut [f32], lp: &mut [f32], write_probs: bool) -> RowComparison {
    debug_assert_eq!(lq.len(), lp.len());
    let (mq, q_top1) = max_and_argmax(lq);
    let (mp, p_top1) = max_and_argmax(lp);
    // Per-lane accumulators keep the loop vectorisable; f64 keeps the KL's cancellation tame.
    let mut sq = [0.0f64; LANES];
    let mut sp = [0.0f64; LANES];
    let mut t = [0.0f64; LANES];
    let mut step = |q: &mut f32, p: &mut f32, lane: usize| {
        let dq = *q - mq;
        let dp = *p - mp;
        let eq = exp_nonpositive(dq);
        let ep = exp_nonpositive(dp);
        sq[lane] += f64::from(eq);
        sp[lane] += f64::from(ep);
        t[lane] += f64::from(ep * (dp - dq));
        if write_probs {
            *q = eq;
            *p = ep;
        }
    };
    let mut q_chunks = lq.chunks_exact_mut(LANES);
    let mut p_chunks = lp.chunks_exact_mut(LANES);
    for (cq, cp) in q_chunks.by_ref().zip(p_chunks.by_ref()) {
        for lane in 0..LANES {
            step(&mut cq[lane], &mut cp[lane], lane);
        }
    }
    for (q, p) in q_chunks.into_remainder().iter_mut().zip(p_chunks.into_remainder().iter_mut()) {
        step(q, p, 0);
    }
    let (sq, sp, t) = (sq.iter().sum::<f64>(), sp.iter().sum::<f64>(), t.iter().sum::<f64>());
    // Σ p·(log p − log q) with log p = dp − ln sp and log q = dq − ln sq.
    let kl = (t / sp - sp.ln() + sq.ln()).max(0.0);
    if write_probs {
        let (iq, ip) = ((1.0 / sq) as f32, (1.0 / sp) as f32);
        lq.iter_mut().for_each(|v| *v *= iq);
        lp.iter_mut().for_each(|v| *v *= ip);
    }
    RowComparison { kl, confidence: (1.0 / sq) as f32, q_top1, p_top1 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_exp_matches_std_exp() {
        for i in 0..=20_000 {
            let x = -(i as f32) * 0.0043;
            let (got, want) = (exp_nonpositive(x), x.exp());
            assert!((got - want).abs() <= 3e-7 * want + 1e-38, "exp({x}) = {got}, want {want}");
        }
    }

    fn reference_kl(lq: &[f32], lp: &[f32]) -> f64 {
        let lse = |l: &[f32]| l.iter().map(|&v| f64::from(v).exp()).sum::<f64>().ln();
        let (zq, zp) = (lse(lq), lse(lp));
        lq.iter()
            .zip(lp)
            .map(|(&q, &p)| (f64::from(p) - zp).exp() * ((f64::from(p) - zp) - (f64::from(q) - zq)))
            .sum()
    }

    #[test]
    fn kl_confidence_and_top1_match_a_direct_computation() {
        let lq: Vec<f32> = (0..37).map(|i| ((i * 7 % 11) as f32) * 0.3 - 1.0).collect();
        let lp: Vec<f32> = (0..37).map(|i| ((i * 5 % 13) as f32) * 0.25).collect();
        let (mut q, mut p) = (lq.clone(), lp.clone());
        let c = compare_rows(&mut q, &mut p, true);
        assert!(
            (c.kl - reference_kl(&lq, &lp)).abs() < 1e-6,
            "kl {} vs {}",
            c.kl,
            reference_kl(&lq, &lp)
        );
        assert_eq!(c.q_top1, 3); // 3·7 % 11 = 10 is the largest, first at i = 3
        assert_eq!(c.p_top1, 5); // 5·5 % 13 = 12, first at i = 5
        assert!(
            (q.iter().sum::<f32>() - 1.0).abs() < 1e-5
                && (p.iter().sum::<f32>() - 1.0).abs() < 1e-5
        );
        assert!((c.confidence - q[3]).abs() < 1e-7);
        let same = compare_rows(&mut lq.clone(), &mut lq.clone(), false);
        assert!(same.kl < 1e-9 && same.q_top1 == same.p_top1);
    }
}
