//! `x @ Wᵀ` over GGUF Q4_1 blocks (layout: `collm_bundle::graph::q4_1`), with llama.cpp's
//! arithmetic (its Q8_1 activations): each row of activations is quantized to int8 per block
//! of 32 (`d = max|x| / 127`, `qx = round(x / d)` to nearest even), and the block keeps `d`
//! and `s = d · Σ qx` as f16 values, as llama.cpp stores them; the codes are multiplied as
//! integers and `Σ (dw·q + m)·x ≈ dw·d·Σ q·qx + m·s`. Rounding the activations the way the
//! reference does, not more exactly, is what keeps our tokens llama.cpp's.
//!
//! The order of every float operation is fixed: a row's integer products are summed into eight
//! lanes (lane `k` of a block holds inputs `4k..4k+4`), each lane accumulates
//! `(d·dx) · isum` block after block with a fused multiply-add; the minimums' terms `m · Σx`
//! go to eight more lanes (block `b` to lane `b mod 8`); each set of lanes is added in one
//! fixed tree, the minimums last. The AVX2 path repeats the portable one operation for
//! operation, so a product is the same bit for bit on every CPU, for one row or many.

use collm_bundle::graph::q4_1::{BLOCK, BLOCK_BYTES, GROUP, ROWS as PAIR, block_offsets};
use half::f16;

/// Lanes of a 256-bit float vector, and blocks per group of the weight layout.
const LANES: usize = GROUP;

/// Rows of activations quantized per block of 32.
#[derive(Debug, Default)]
pub struct QuantizedRows {
    /// Inputs per row.
    k: usize,
    /// `qx`, `k` per row.
    codes: Vec<i8>,
    /// Per block: `d` and `s = d · Σ qx`, both rounded to f16 values; each row's padded with
    /// zeros to a whole number of groups of eight blocks.
    scales: Vec<f32>,
    sums: Vec<f32>,
}

impl QuantizedRows {
    /// Quantizes `x` (rows of `k`, `k` a multiple of 32), reusing this buffer's memory.
    pub fn quantize(&mut self, x: &[f32], k: usize) {
        debug_assert!(k.is_multiple_of(BLOCK) && x.len().is_multiple_of(k));
        self.k = k;
        self.codes.resize(x.len(), 0);
        self.scales.clear();
        self.sums.clear();
        let nb = k / BLOCK;
        #[cfg(target_arch = "x86_64")]
        let simd = avx2::available();
        for (i, (block, codes)) in
            x.chunks_exact(BLOCK).zip(self.codes.chunks_exact_mut(BLOCK)).enumerate()
        {
            #[cfg(target_arch = "x86_64")]
            #[allow(unsafe_code)]
            // SAFETY: the CPU has AVX2, FMA and F16C (checked above).
            let (d, code_sum) = if simd {
                unsafe { avx2::quantize_block(block, codes) }
            } else {
                quantize_block(block, codes)
            };
            #[cfg(not(target_arch = "x86_64"))]
            let (d, code_sum) = quantize_block(block, codes);
            self.scales.push(f16::from_f32(d).to_f32());
            self.sums.push(f16::from_f32(d * code_sum as f32).to_f32());
            if i % nb == nb - 1 {
                let pad = nb.next_multiple_of(LANES) - nb;
                self.scales.extend(std::iter::repeat_n(0.0, pad));
                self.sums.extend(std::iter::repeat_n(0.0, pad));
            }
        }
    }

    pub fn rows(&self) -> usize {
        self.codes.len().checked_div(self.k).unwrap_or(0)
    }

    fn row(&self, m: usize) -> Row<'_> {
        let padded = (self.k / BLOCK).next_multiple_of(LANES);
        Row {
            codes: &self.codes[m * self.k..][..self.k],
            scales: &self.scales[m * padded..][..padded],
            sums: &self.sums[m * padded..][..padded],
        }
    }
}

#[derive(Clone, Copy)]
struct Row<'a> {
    codes: &'a [i8],
    scales: &'a [f32],
    sums: &'a [f32],
}

/// `x_m · w_n` for output rows `n` in `rows` (starting at an even row) of `weights` (the blocks
/// of all output rows) and every row `m` of `x`, handed to `store(m, n, value)`.
pub fn matmul_rows(
    weights: &[u8],
    x: &QuantizedRows,
    rows: std::ops::Range<usize>,
    mut store: impl FnMut(usize, usize, f32),
) {
    let nb = x.k / BLOCK;
    let pair_bytes = PAIR * nb * BLOCK_BYTES;
    #[cfg(target_arch = "x86_64")]
    if avx2::available() {
        debug_assert!(rows.start.is_multiple_of(PAIR) && rows.end.is_multiple_of(PAIR));
        for pair in rows.start / PAIR..rows.end / PAIR {
            let w = &weights[pair * pair_bytes..][..pair_bytes];
            avx2::prefetch(weights.get((pair + avx2::PREFETCH_PAIRS) * pair_bytes..), pair_bytes);
            // Two activation rows at a time (a prompt's): each block's codes unpacked once.
            let mut m = 0;
            while m < x.rows() {
                let take = (x.rows() - m).min(2);
                #[allow(unsafe_code)]
                // SAFETY: the CPU has AVX2, FMA and F16C (checked above).
                let values = unsafe {
                    match take {
                        2 => avx2::dot_pair(w, nb, [x.row(m), x.row(m + 1)]),
                        _ => {
                            let [one] = avx2::dot_pair(w, nb, [x.row(m)]);
                            [one, [0.0; PAIR]]
                        }
                    }
                };
                for (i, row) in values.iter().enumerate().take(take) {
                    for (r, &v) in row.iter().enumerate() {
                        store(m + i, pair * PAIR + r, v);
                    }
                }
                m += take;
            }
        }
        return;
    }
    for n in rows {
        for m in 0..x.rows() {
            store(m, n, dot_portable(weights, nb, n, x.row(m)));
        }
    }
}

/// [`matmul_rows`] over every output row into `out` (rows of `n`).
#[cfg(test)]
pub(super) fn matmul(weights: &[u8], x: &QuantizedRows, n: usize, out: &mut [f32]) {
    matmul_rows(weights, x, 0..n, |m, c, v| out[m * n + c] = v);
}

/// One block of 32 activations as int8 codes `round(x / d)` (ties to even) with
/// `d = max|x| / 127`: returns `d` and the codes' sum.
fn quantize_block(x: &[f32], codes: &mut [i8]) -> (f32, i32) {
    let amax = x.iter().fold(0.0f32, |a, v| a.max(v.abs()));
    let d = amax / 127.0;
    let inv = if d != 0.0 { 1.0 / d } else { 0.0 };
    let mut sum = 0;
    for (q, v) in codes.iter_mut().zip(x) {
        *q = (v * inv).round_ties_even() as i8;
        sum += i32::from(*q);
    }
    (d, sum)
}

fn f16_at(bytes: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([bytes[at], bytes[at + 1]]).to_f32()
}

/// Output row `n` (rows of `nb` blocks): the reference order of operations (see the module
/// comment).
fn dot_portable(weights: &[u8], nb: usize, n: usize, x: Row<'_>) -> f32 {
    let mut lanes = [0.0f32; LANES];
    let mut mins = [0.0f32; LANES];
    for b in 0..nb {
        let (d_at, m_at, codes_at) = block_offsets(nb, n, b);
        let codes = &weights[codes_at..][..16];
        let qx = &x.codes[b * BLOCK..][..BLOCK];
        let s = f16_at(weights, d_at) * x.scales[b];
        for (k, lane) in lanes.iter_mut().enumerate() {
            let mut isum = 0i32;
            for i in 4 * k..4 * k + 4 {
                let q = (codes[i % 16] >> (4 * (i / 16))) & 0x0f;
                isum += i32::from(q) * i32::from(qx[i]);
            }
            *lane = s.mul_add(isum as f32, *lane);
        }
        mins[b % LANES] = f16_at(weights, m_at).mul_add(x.sums[b], mins[b % LANES]);
    }
    // The SIMD path's last group of eight blocks is padded with zero minimums.
    for b in nb..nb.next_multiple_of(LANES) {
        mins[b % LANES] = 0.0f32.mul_add(0.0, mins[b % LANES]);
    }
    reduce(lanes) + reduce(mins)
}

/// The lanes' sum in the order the AVX2 path adds them.
fn reduce(l: [f32; LANES]) -> f32 {
    let q = [l[0] + l[4], l[1] + l[5], l[2] + l[6], l[3] + l[7]];
    (q[0] + q[2]) + (q[1] + q[3])
}

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{BLOCK, BLOCK_BYTES, LANES, PAIR as ROWS, Row};

    /// How many pairs of rows ahead of the one being multiplied are fetched: a pair is only
    /// ~20 cache lines at K = 576, too short for the hardware prefetcher to reach memory speed
    /// on its own.
    pub const PREFETCH_PAIRS: usize = 2;

    /// Asks for the first `len` bytes of `bytes` (or all of them) to be brought into cache.
    pub fn prefetch(bytes: Option<&[u8]>, len: usize) {
        let bytes = bytes.unwrap_or_default();
        for line in (0..len.min(bytes.len())).step_by(64) {
            // SAFETY: a prefetch of an address inside `bytes` has no effect but on caches.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(bytes.as_ptr().add(line).cast()) };
        }
    }

    /// Whether this CPU runs [`dot_pair`].
    pub fn available() -> bool {
        is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
    }

    /// [`super::quantize_block`], eight activations at a time: the same maximum, the same
    /// division and product per activation, the same rounding (ties to even), so the same codes
    /// for finite activations whose block scale is a normal float (a scale near 1e-38 makes
    /// `1/d` overflow, and NaN converts to -128 here, to 0 there; a norm's output is never there).
    #[target_feature(enable = "avx2,fma,f16c")]
    pub fn quantize_block(x: &[f32], codes: &mut [i8]) -> (f32, i32) {
        assert!(x.len() == BLOCK && codes.len() == BLOCK);
        // SAFETY: four loads of eight floats inside `x`'s 32.
        let v: [__m256; 4] =
            std::array::from_fn(|i| unsafe { _mm256_loadu_ps(x.as_ptr().add(8 * i)) });
        let sign = _mm256_set1_ps(-0.0);
        let abs = v.map(|v| _mm256_andnot_ps(sign, v));
        let m = _mm256_max_ps(_mm256_max_ps(abs[0], abs[1]), _mm256_max_ps(abs[2], abs[3]));
        let m = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps::<1>(m));
        let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
        let amax = _mm_cvtss_f32(_mm_max_ss(m, _mm_shuffle_ps::<0b01>(m, m)));
        let d = amax / 127.0;
        let inv = _mm256_set1_ps(if d != 0.0 { 1.0 / d } else { 0.0 });
        let q = v.map(|v| {
            let r = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
                _mm256_mul_ps(v, inv),
            );
            _mm256_cvtps_epi32(r)
        });
        let s = _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3]));
        let s = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256::<1>(s));
        let s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
        let sum = _mm_cvtsi128_si32(_mm_add_epi32(s, _mm_shuffle_epi32::<0b01>(s)));
        // Packing works within 128-bit halves: dwords come out as q0 lo, q1 lo, q2 lo, q3 lo |
        // q0 hi, q1 hi, q2 hi, q3 hi; the permutation puts them back in order.
        let bytes =
            _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
        let ordered = _mm256_permutevar8x32_epi32(bytes, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        // SAFETY: 32 bytes into `codes`' 32.
        unsafe { _mm256_storeu_si256(codes.as_mut_ptr().cast(), ordered) };
        (d, sum)
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    fn reduce(a: __m256) -> f32 {
        let q = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps::<1>(a));
        let h = _mm_add_ps(q, _mm_movehl_ps(q, q));
        _mm_cvtss_f32(_mm_add_ss(h, _mm_shuffle_ps::<0b01>(h, h)))
    }

    /// The integer products of one group of up to eight blocks starting at block `g`, for both
    /// rows of a pair and `XR` rows of activations: `d`s as eight f16 lanes (zeros past the
    /// row's end), each activation row's `dx`s as eight lanes, codes and inputs read in place.
    /// A block's codes are unpacked once for all `XR` activation rows; each (row, activation
    /// row) accumulates exactly as it would alone.
    ///
    /// # Safety
    /// `codes[r]` and `qx[i]` point at `count` blocks' codes (16 bytes each) and inputs (32 each).
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    unsafe fn group<const XR: usize>(
        acc: &mut [[__m256; ROWS]; XR],
        dw: [__m128i; ROWS],
        dx: [__m256; XR],
        codes: [*const u8; ROWS],
        qx: [*const i8; XR],
        count: usize,
    ) {
        let low = _mm256_set1_epi8(0x0f);
        let ones = _mm256_set1_epi16(1);
        let d: [__m256; ROWS] = std::array::from_fn(|r| _mm256_cvtph_ps(dw[r]));
        let mut s = [[[0.0f32; LANES]; ROWS]; XR];
        for i in 0..XR {
            for r in 0..ROWS {
                // SAFETY: eight floats into an array of eight.
                unsafe { _mm256_storeu_ps(s[i][r].as_mut_ptr(), _mm256_mul_ps(d[r], dx[i])) };
            }
        }
        // Opaque to the optimizer, so each block's scale is broadcast straight from memory (a
        // load) rather than picked out of a register (two shuffles, on the busiest ports).
        let s = std::hint::black_box(&s);
        // `j` also offsets the raw pointers to the codes and inputs.
        #[allow(clippy::needless_range_loop)]
        for j in 0..count {
            let q: [__m256i; ROWS] = std::array::from_fn(|r| {
                // SAFETY: `j < count` (the caller's contract).
                let packed = unsafe { _mm_loadu_si128(codes[r].add(16 * j).cast()) };
                let both = _mm256_broadcastsi128_si256(packed);
                let nibbles = _mm256_blend_epi32::<0xf0>(both, _mm256_srli_epi16::<4>(both));
                _mm256_and_si256(nibbles, low)
            });
            for i in 0..XR {
                // SAFETY: as above.
                let x = unsafe { _mm256_loadu_si256(qx[i].add(j * BLOCK).cast()) };
                for r in 0..ROWS {
                    let isum = _mm256_madd_epi16(_mm256_maddubs_epi16(q[r], x), ones);
                    let sj = _mm256_broadcast_ss(&s[i][r][j]);
                    acc[i][r] = _mm256_fmadd_ps(sj, _mm256_cvtepi32_ps(isum), acc[i][r]);
                }
            }
        }
    }

    /// [`super::dot_portable`] for both rows of a pair (`w`: the pair's bytes, `nb` blocks a
    /// row) and `XR` rows of activations: the integer products eight lanes at a time, the
    /// scales and minimums of eight blocks at a time, the pair's bytes read in order.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub fn dot_pair<const XR: usize>(w: &[u8], nb: usize, x: [Row<'_>; XR]) -> [[f32; ROWS]; XR] {
        let padded = nb.next_multiple_of(LANES);
        assert!(w.len() == ROWS * nb * BLOCK_BYTES);
        for x in &x {
            assert!(x.codes.len() >= nb * BLOCK);
            assert!(x.scales.len() >= padded && x.sums.len() >= padded);
        }
        let lane_index = _mm_setr_epi16(0, 1, 2, 3, 4, 5, 6, 7);
        // The layout of group `g` (SAFETY, for the unsafe blocks below): it is `20·ROWS·c`
        // bytes at `g·20·ROWS`, inside `w`, for its `c` blocks; 16 bytes at a row's `d`s
        // (`2c·r`) or `m`s (`2c·(ROWS + r)`) stay inside it for every `c ≥ 1`; its codes are
        // `16c` bytes a row from `4c·ROWS`.
        let group_at = |g: usize| {
            let c = (nb - g).min(LANES);
            // SAFETY: `g < nb`: see above.
            (unsafe { w.as_ptr().add(g * ROWS * BLOCK_BYTES) }, c)
        };
        // Row `r`'s `d`s (`field` 0) or `m`s (1) in the group of `c` blocks at `p`, as eight f16
        // lanes: a short group's are followed by the next field's bytes, zeroed.
        let halves = |p: *const u8, c: usize, field: usize, r: usize| {
            let valid = _mm_cmpgt_epi16(_mm_set1_epi16(c as i16), lane_index);
            // SAFETY: see `group_at`.
            let v = unsafe { _mm_loadu_si128(p.add(2 * c * (field * ROWS + r)).cast()) };
            _mm_and_si128(v, valid)
        };
        // The integer products first, the minimums' terms in a second pass over the groups: each
        // set of lanes accumulates in the same order either way, and the products' loop keeps
        // its accumulators in registers.
        let mut acc = [[_mm256_setzero_ps(); ROWS]; XR];
        for g in (0..nb).step_by(LANES) {
            let (p, c) = group_at(g);
            // SAFETY: see `group_at`; each `x` holds its scales padded to whole groups, and `c`
            // blocks of inputs at `g`.
            unsafe {
                let dw = std::array::from_fn(|r| halves(p, c, 0, r));
                let dx = std::array::from_fn(|i| _mm256_loadu_ps(x[i].scales.as_ptr().add(g)));
                let codes = std::array::from_fn(|r| p.add(4 * c * ROWS + 16 * c * r));
                let qx = std::array::from_fn(|i| x[i].codes.as_ptr().add(g * BLOCK));
                group(&mut acc, dw, dx, codes, qx, c);
            }
        }
        let mut mins = [[_mm256_setzero_ps(); ROWS]; XR];
        for g in (0..nb).step_by(LANES) {
            let (p, c) = group_at(g);
            let m: [__m256; ROWS] = std::array::from_fn(|r| _mm256_cvtph_ps(halves(p, c, 1, r)));
            for i in 0..XR {
                // SAFETY: each `x` holds its sums padded to whole groups.
                let sums = unsafe { _mm256_loadu_ps(x[i].sums.as_ptr().add(g)) };
                for r in 0..ROWS {
                    mins[i][r] = _mm256_fmadd_ps(m[r], sums, mins[i][r]);
                }
            }
        }
        std::array::from_fn(|i| std::array::from_fn(|r| reduce(acc[i][r]) + reduce(mins[i][r])))
    }
}

/// Blocks of `n` rows × `k` inputs with varied codes, scales and minimums.
#[cfg(test)]
pub(super) fn test_blocks(n: usize, k: usize) -> Vec<u8> {
    let nb = k / BLOCK;
    let mut out = vec![0u8; n * nb * BLOCK_BYTES];
    for r in 0..n {
        for b in 0..nb {
            let i = r * nb + b;
            let (d_at, m_at, codes_at) = block_offsets(nb, r, b);
            let d = f16::from_f32(0.002 + (i % 11) as f32 * 3e-4);
            let m = f16::from_f32(-0.01 * (i % 5) as f32);
            out[d_at..d_at + 2].copy_from_slice(&d.to_le_bytes());
            out[m_at..m_at + 2].copy_from_slice(&m.to_le_bytes());
            for j in 0..16 {
                out[codes_at + j] = ((i * 13 + j * 7) % 256) as u8;
            }
        }
    }
    out
}

/// Activations of `m` rows × `k` inputs, every ninth one large.
#[cfg(test)]
pub(super) fn test_activations(m: usize, k: usize) -> Vec<f32> {
    (0..m * k)
        .map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.013 * if i % 9 == 0 { 7.0 } else { 1.0 })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dense_product(w: &[u8], x: &[f32], n: usize, k: usize) -> Vec<f64> {
        let m = x.len() / k;
        let mut out = vec![0.0f64; m * n];
        for r in 0..m {
            for c in 0..n {
                out[r * n + c] = (0..k)
                    .map(|i| {
                        f64::from(collm_bundle::graph::q4_1::weight_at(w, k, c, i))
                            * f64::from(x[r * k + i])
                    })
                    .sum();
            }
        }
        out
    }

    #[test]
    fn products_match_dense_weights_within_int8_rounding() {
        let (n, k, m) = (6, 96, 3);
        let (w, x) = (test_blocks(n, k), test_activations(m, k));
        let mut q = QuantizedRows::default();
        q.quantize(&x, k);
        let mut out = vec![0.0f32; m * n];
        matmul(&w, &q, n, &mut out);
        let want = dense_product(&w, &x, n, k);
        for r in 0..m {
            for c in 0..n {
                // Rounding an input to int8 moves it by at most half its block's step; keeping
                // the step and the block's code sum as f16 values moves a term by 2^-11 of
                // itself at most (counted twice, with room).
                let bound: f64 = (0..k)
                    .map(|i| {
                        let xi = x[r * k + i];
                        let block = &x[r * k + i / BLOCK * BLOCK..][..BLOCK];
                        let step = block.iter().fold(0.0f32, |a, v| a.max(v.abs())) / 127.0;
                        let w = collm_bundle::graph::q4_1::weight_at(&w, k, c, i);
                        f64::from(w.abs()) * (f64::from(step) / 2.0 + f64::from(xi.abs()) * 1e-3)
                    })
                    .sum();
                let (got, want) = (f64::from(out[r * n + c]), want[r * n + c]);
                assert!((got - want).abs() <= bound * 1.01 + 1e-5, "{got} vs {want} (±{bound})");
            }
        }
    }

    #[test]
    fn the_simd_path_is_bit_identical_to_the_portable_one() {
        // Rows of 48, 18 and 3 blocks: whole groups of eight, and groups cut short.
        for (n, k, m) in [(8, 1536, 2), (6, 576, 1), (4, 96, 3)] {
            let (w, x) = (test_blocks(n, k), test_activations(m, k));
            let mut q = QuantizedRows::default();
            q.quantize(&x, k);
            let mut out = vec![0.0f32; m * n];
            matmul(&w, &q, n, &mut out);
            for r in 0..m {
                for c in 0..n {
                    let want = dot_portable(&w, k / BLOCK, c, q.row(r));
                    assert_eq!(out[r * n + c].to_bits(), want.to_bits(), "k {k}: ({r},{c})");
                }
            }
        }
    }

    #[test]
    fn a_row_gives_the_same_bits_alone_and_in_a_batch() {
        let (n, k) = (4, 64);
        let (w, x) = (test_blocks(n, k), test_activations(4, k));
        let (mut batch, mut one) = (QuantizedRows::default(), QuantizedRows::default());
        batch.quantize(&x, k);
        one.quantize(&x[2 * k..3 * k], k);
        let (mut all, mut single) = (vec![0.0f32; 4 * n], vec![0.0f32; n]);
        matmul(&w, &batch, n, &mut all);
        matmul(&w, &one, n, &mut single);
        assert_eq!(&all[2 * n..3 * n], &single[..]);
    }

    #[test]
    fn the_simd_quantization_gives_the_portable_codes() {
        if !avx2::available() {
            return;
        }
        // Ordinary blocks, values halfway between two codes (ties go to even), a zero block,
        // and a block whose largest value is negative.
        let mut x = test_activations(4, 64);
        // A largest value of 127 makes d = 1: -15.5, -14.5, ... 14.5 are ties.
        for (i, v) in x[..32].iter_mut().enumerate() {
            *v = i as f32 - 15.5;
        }
        x[31] = 127.0;
        x[32..64].fill(0.0);
        x[64] = -9.0;
        for block in x.chunks_exact(BLOCK) {
            let (mut simd, mut portable) = ([0i8; BLOCK], [0i8; BLOCK]);
            #[allow(unsafe_code)]
            // SAFETY: checked above.
            let got = unsafe { avx2::quantize_block(block, &mut simd) };
            let want = quantize_block(block, &mut portable);
            assert_eq!((got.0.to_bits(), got.1, simd), (want.0.to_bits(), want.1, portable));
        }
    }

    #[test]
    fn zero_activations_give_zero() {
        let (n, k) = (2, 32);
        let mut q = QuantizedRows::default();
        q.quantize(&[0.0; 32], k);
        let mut out = vec![1.0f32; n];
        matmul(&test_blocks(n, k), &q, n, &mut out);
        assert_eq!(out, vec![0.0, 0.0]);
    }
}
