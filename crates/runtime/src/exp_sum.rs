//! `Σ exp(v - max)` over a vocabulary's logits: the softmax denominator behind every
//! confidence. Scalar `f64::exp` over 49,152 logits takes ~0.3 ms a token, a few percent of a
//! standalone decode step; this is a polynomial `exp` in `f32`, eight lanes at a time with
//! AVX2, summed in fixed blocks into an `f64` (relative error below 1e-6 against the `f64` sum).
//!
//! The order of every operation is fixed (eight lanes, blocks of 64, no fused multiply-add),
//! and the AVX2 path repeats the portable one operation for operation, so the result is the
//! same bit for bit on every CPU: an edge and a cloud on different machines agree on a
//! confidence.

const LANES: usize = 8;
const BLOCK: usize = 64;

/// `Σ exp(v - max)` over `logits`, for `max` at least every logit (the softmax's shift).
pub fn sum_exp_shifted(logits: &[f32], max: f32) -> f64 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        return avx2::sum(logits, max);
    }
    sum_portable(logits, max)
}

/// The reference order of operations: lane `j` of a block accumulates elements `j, j + 8, ...`;
/// the lanes of each block are added in order into the `f64` total, then the tail.
fn sum_portable(logits: &[f32], max: f32) -> f64 {
    let blocks = logits.chunks_exact(BLOCK);
    let tail = blocks.remainder();
    let mut total = 0.0f64;
    for block in blocks {
        let mut acc = [0.0f32; LANES];
        for group in block.chunks_exact(LANES) {
            for (a, &v) in acc.iter_mut().zip(group) {
                *a += exp_nonpositive(v - max);
            }
        }
        total += acc.iter().map(|&a| f64::from(a)).sum::<f64>();
    }
    total + sum_tail(tail, max)
}

fn sum_tail(tail: &[f32], max: f32) -> f64 {
    tail.iter().map(|&v| f64::from(exp_nonpositive(v - max))).sum()
}

// ln 2 split so that n · LN2_HI is exact for the n that occur (|n| < 128).
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
// 1.5 · 2^23: adding and subtracting it rounds to the nearest integer, in plain arithmetic, and
// leaves that integer in the low bits of the sum.
const ROUND: f32 = 12_582_912.0;
const FLOOR: f32 = -87.0;
// Cephes' minimax polynomial for e^r on |r| <= ln2 / 2, highest degree first.
const POLY: [f32; 6] =
    [1.987_569_1e-4, 1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 1.666_666_5e-1, 0.5];

/// `e^x` for `x <= 0`, within 2 ulp; below -87 it returns `e^-87` (~1.6e-38) rather than a
/// denormal or zero, which no softmax sum of a real vocabulary can notice.
fn exp_nonpositive(x: f32) -> f32 {
    let x = if FLOOR > x { FLOOR } else { x };
    let t = x * std::f32::consts::LOG2_E + ROUND;
    let n = t - ROUND;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let mut p = POLY[0];
    for c in &POLY[1..] {
        p = p * r + c;
    }
    let e = p * (r * r) + r + 1.0;
    // 2^n, built in the exponent field (n >= -126 after the floor).
    let n_bits = t.to_bits().wrapping_sub(ROUND.to_bits());
    e * f32::from_bits(n_bits.wrapping_add(127) << 23)
}

/// [`sum_portable`] eight lanes at a time, operation for operation (no fused multiply-add).
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{BLOCK, FLOOR, LANES, LN2_HI, LN2_LO, POLY, ROUND};

    pub fn sum(logits: &[f32], max: f32) -> f64 {
        #[allow(unsafe_code)]
        // SAFETY: the caller checked that the CPU has AVX2, all `sum_blocks` assumes.
        unsafe {
            sum_blocks(logits, max)
        }
    }

    #[target_feature(enable = "avx2")]
    fn sum_blocks(logits: &[f32], max: f32) -> f64 {
        let blocks = logits.chunks_exact(BLOCK);
        let tail = blocks.remainder();
        let shift = _mm256_set1_ps(max);
        let mut total = 0.0f64;
        for block in blocks {
            let mut acc = _mm256_setzero_ps();
            for group in block.chunks_exact(LANES) {
                // SAFETY: `group` holds exactly eight f32; the load is unaligned.
                #[allow(unsafe_code)]
                let v = unsafe { _mm256_loadu_ps(group.as_ptr()) };
                acc = _mm256_add_ps(acc, exp8(_mm256_sub_ps(v, shift)));
            }
            let mut lanes = [0.0f32; LANES];
            // SAFETY: `lanes` has room for eight f32; the store is unaligned.
            #[allow(unsafe_code)]
            unsafe {
                _mm256_storeu_ps(lanes.as_mut_ptr(), acc)
            };
            total += lanes.iter().map(|&a| f64::from(a)).sum::<f64>();
        }
        total + super::sum_tail(tail, max)
    }

    #[target_feature(enable = "avx2")]
    fn exp8(x: __m256) -> __m256 {
        let x = _mm256_max_ps(_mm256_set1_ps(FLOOR), x);
        let round = _mm256_set1_ps(ROUND);
        let t = _mm256_add_ps(_mm256_mul_ps(x, _mm256_set1_ps(std::f32::consts::LOG2_E)), round);
        let n = _mm256_sub_ps(t, round);
        let r = _mm256_sub_ps(
            _mm256_sub_ps(x, _mm256_mul_ps(n, _mm256_set1_ps(LN2_HI))),
            _mm256_mul_ps(n, _mm256_set1_ps(LN2_LO)),
        );
        let mut p = _mm256_set1_ps(POLY[0]);
        for &c in &POLY[1..] {
            p = _mm256_add_ps(_mm256_mul_ps(p, r), _mm256_set1_ps(c));
        }
        let e = _mm256_add_ps(
            _mm256_add_ps(_mm256_mul_ps(p, _mm256_mul_ps(r, r)), r),
            _mm256_set1_ps(1.0),
        );
        let n_bits =
            _mm256_sub_epi32(_mm256_castps_si256(t), _mm256_set1_epi32(ROUND.to_bits() as i32));
        let scale = _mm256_slli_epi32::<23>(_mm256_add_epi32(n_bits, _mm256_set1_epi32(127)));
        _mm256_mul_ps(e, _mm256_castsi256_ps(scale))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exact(logits: &[f32], max: f32) -> f64 {
        logits.iter().map(|&v| f64::from(v - max).exp()).sum()
    }

    #[test]
    fn each_exponential_is_within_two_ulp_of_the_exact_one() {
        let mut x = 0.0f32;
        while x > -87.0 {
            let got = exp_nonpositive(x);
            let want = f64::from(x).exp();
            let ulp = f64::from(f32::EPSILON) * want;
            assert!((f64::from(got) - want).abs() <= 2.0 * ulp, "e^{x}: {got} against {want}");
            x -= 0.0137;
        }
        assert_eq!(exp_nonpositive(0.0), 1.0);
        assert!(exp_nonpositive(-1000.0) < 1e-37);
        assert!(exp_nonpositive(f32::NEG_INFINITY) < 1e-37);
    }

    #[test]
    fn a_vocabulary_sum_matches_the_f64_sum() {
        // A logit vector shaped like a model's: a few high logits over a long low tail, and a
        // length that leaves a partial block.
        let logits: Vec<f32> = (0..49_157u32)
            .map(|i| {
                let h = i.wrapping_mul(2_654_435_761) >> 8;
                (h % 20_000) as f32 / 1000.0 - 12.0 + if i % 997 == 0 { 9.0 } else { 0.0 }
            })
            .collect();
        let max = logits.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
        let (got, want) = (sum_exp_shifted(&logits, max), exact(&logits, max));
        assert!(((got - want) / want).abs() < 1e-6, "{got} against {want}");
        // The vector path gives the bits of the portable one, so every machine agrees.
        assert_eq!(got.to_bits(), sum_portable(&logits, max).to_bits());
        let extremes = [0.0f32, -1e-30, -86.9, -87.0, -87.1, -200.0, f32::NEG_INFINITY, -0.5];
        let mixed: Vec<f32> = extremes.iter().cycle().take(8 * 9 + 3).copied().collect();
        assert_eq!(sum_exp_shifted(&mixed, 0.0).to_bits(), sum_portable(&mixed, 0.0).to_bits());
    }

    #[test]
    fn short_inputs_and_a_single_logit() {
        assert_eq!(sum_exp_shifted(&[], 0.0), 0.0);
        assert_eq!(sum_exp_shifted(&[3.0], 3.0), 1.0);
        let few = [1.0f32, 0.5, -2.0];
        assert!((sum_exp_shifted(&few, 1.0) - exact(&few, 1.0)).abs() < 1e-6);
    }
}
