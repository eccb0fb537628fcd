//! The K-quants: super-blocks of 256 values made of 16 or 32-value sub-blocks whose scales (and
//! minimums) are themselves quantized against one or two f16 super-block scales.
//!
//! Layouts, as ggml's `block_q*_K` structs:
//! - Q2_K (84 B) = scales\[16\] (4-bit scale | 4-bit min << 4) + qs\[64\] (2-bit) + f16 d + f16 dmin;
//!   16 sub-blocks of 16, x = d·sc·q − dmin·m
//! - Q3_K (110 B) = hmask\[32\] (third bit) + qs\[64\] (low 2 bits) + scales\[12\] (16 × 6-bit,
//!   offset 32) + f16 d; 16 sub-blocks of 16, x = d·(sc − 32)·(q − 4)
//! - Q4_K (144 B) = f16 d + f16 dmin + scales\[12\] (8 × 6-bit scale, 8 × 6-bit min) + qs\[128\];
//!   8 sub-blocks of 32, x = d·sc·q − dmin·m
//! - Q5_K (176 B) = Q4_K's fields + qh\[32\] (fifth bit) before qs
//! - Q6_K (210 B) = ql\[128\] (low 4 bits) + qh\[64\] (high 2 bits) + i8 scales\[16\] + f16 d;
//!   16 sub-blocks of 16, x = d·sc·(q − 32)
//!
//! In every type the codes of 64 (Q4_K, Q5_K) or 128 (Q2_K, Q3_K, Q6_K) consecutive values are
//! interleaved across the bit planes of 32 bytes; the loops below follow ggml's
//! `dequantize_row_q*_K` so that the value order is the same.

use crate::blocks::{AffineBlocks, BlockOffset, f16_at, f16_round, inverse, nearest, put_f16};
use crate::types::QK_K;

fn with_mins(block: usize, code_bits: u8, n: usize) -> AffineBlocks {
    AffineBlocks::new(block, code_bits, n, BlockOffset::Min(Vec::with_capacity(n / block)))
}

pub fn decode_q2_k(bytes: &[u8], n: usize) -> AffineBlocks {
    let mut out = with_mins(16, 2, n);
    for b in bytes.chunks_exact(84) {
        let (scales, qs) = (&b[..16], &b[16..80]);
        let (d, dmin) = (f16_at(b, 80), f16_at(b, 82));
        for (half, q) in qs.chunks_exact(32).enumerate() {
            for j in 0..4 {
                let shift = 2 * j;
                for (k, part) in q.chunks_exact(16).enumerate() {
                    let sc = scales[8 * half + 2 * j + k];
                    out.push_block(d * f32::from(sc & 0xf), -(dmin * f32::from(sc >> 4)));
                    out.codes.extend(part.iter().map(|&v| (v >> shift) & 3));
                }
            }
        }
    }
    out
}

/// Q3_K's sixteen 6-bit scales (each still offset by 32) from their 12 packed bytes.
fn q3_k_scales(packed: &[u8]) -> [u8; 16] {
    let mut s = [0u8; 16];
    for j in 0..16 {
        let low = if j < 8 { packed[j] & 0xf } else { packed[j - 8] >> 4 };
        let high = (packed[8 + j % 4] >> (2 * (j / 4))) & 3;
        s[j] = low | (high << 4);
    }
    s
}

pub fn decode_q3_k(bytes: &[u8], n: usize) -> AffineBlocks {
    let mut out = AffineBlocks::new(16, 3, n, BlockOffset::Zero(4));
    for b in bytes.chunks_exact(110) {
        let (hmask, qs) = (&b[..32], &b[32..96]);
        let scales = q3_k_scales(&b[96..108]);
        let d = f16_at(b, 108);
        let mut plane = 0;
        for (half, q) in qs.chunks_exact(32).enumerate() {
            for j in 0..4 {
                let shift = 2 * j;
                for k in 0..2 {
                    let sc = i32::from(scales[8 * half + 2 * j + k]) - 32;
                    out.push_block(d * sc as f32, 0.0);
                    out.codes.extend(
                        (16 * k..16 * k + 16)
                            .map(|l| ((q[l] >> shift) & 3) | (((hmask[l] >> plane) & 1) << 2)),
                    );
                }
                plane += 1;
            }
        }
    }
    out
}

/// Sub-block `j`'s 6-bit scale and minimum from Q4_K/Q5_K's 12 packed bytes
/// (ggml's `get_scale_min_k4`).
fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        ((q[j + 4] & 0xf) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4))
    }
}

fn pack_scale_min_k4(ls: &[u8; 8], lm: &[u8; 8]) -> [u8; 12] {
    let mut q = [0u8; 12];
    for j in 0..8 {
        if j < 4 {
            q[j] = ls[j];
            q[j + 4] = lm[j];
        } else {
            q[j + 4] = (ls[j] & 0xf) | ((lm[j] & 0xf) << 4);
            q[j - 4] |= (ls[j] >> 4) << 6;
            q[j] |= (lm[j] >> 4) << 6;
        }
    }
    q
}

/// Q4_K (`fifth_bits` = None) and Q5_K: eight 32-value sub-blocks, low nibbles of 32 bytes
/// first, then their high nibbles.
fn decode_k4_family(b: &[u8], fifth_bits: Option<&[u8]>, qs: &[u8], out: &mut AffineBlocks) {
    let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
    let scales = &b[4..16];
    for (j, q) in qs.chunks_exact(32).enumerate() {
        for k in 0..2 {
            let (sc, m) = scale_min_k4(2 * j + k, scales);
            out.push_block(d * f32::from(sc), -(dmin * f32::from(m)));
            let plane = 2 * j + k;
            out.codes.extend(q.iter().enumerate().map(|(l, &v)| {
                let low = if k == 0 { v & 0xf } else { v >> 4 };
                let high = fifth_bits.map_or(0, |h| ((h[l] >> plane) & 1) << 4);
                low | high
            }));
        }
    }
}

pub fn decode_q4_k(bytes: &[u8], n: usize) -> AffineBlocks {
    let mut out = with_mins(32, 4, n);
    for b in bytes.chunks_exact(144) {
        decode_k4_family(b, None, &b[16..], &mut out);
    }
    out
}

pub fn decode_q5_k(bytes: &[u8], n: usize) -> AffineBlocks {
    let mut out = with_mins(32, 5, n);
    for b in bytes.chunks_exact(176) {
        decode_k4_family(b, Some(&b[16..48]), &b[48..], &mut out);
    }
    out
}

pub fn decode_q6_k(bytes: &[u8], n: usize) -> AffineBlocks {
    let mut out = AffineBlocks::new(16, 6, n, BlockOffset::Zero(32));
    for b in bytes.chunks_exact(210) {
        let (ql, qh, sc) = (&b[..128], &b[128..192], &b[192..208]);
        let d = f16_at(b, 208);
        for half in 0..2 {
            let (ql, qh) = (&ql[64 * half..], &qh[32 * half..]);
            // Quarter `k` holds values 32k..32k+32 of this half: low or high nibbles of the
            // first or second 32 bytes of `ql`, and bit pair `k` of `qh`.
            for k in 0..4 {
                for part in 0..2 {
                    let scale = sc[8 * half + 2 * k + part] as i8;
                    out.push_block(d * f32::from(scale), 0.0);
                    out.codes.extend((16 * part..16 * part + 16).map(|l| {
                        let byte = ql[l + 32 * (k % 2)];
                        let low = if k < 2 { byte & 0xf } else { byte >> 4 };
                        low | (((qh[l] >> (2 * k)) & 3) << 4)
                    }));
                }
            }
        }
    }
    out
}

/// Per sub-block `(scale, -min)` for codes `0..=max_code` over `[min(0, lo), hi]`.
fn sub_block_ranges(x: &[f32], sub: usize, max_code: f32) -> Vec<(f32, f32)> {
    x.chunks_exact(sub)
        .map(|s| {
            let lo = s.iter().copied().fold(0.0f32, f32::min);
            let hi = s.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            ((hi - lo) / max_code, -lo)
        })
        .collect()
}

/// Round-to-nearest Q4_K (`max_code` 15) or Q5_K (31) codes of one super-block: the 6-bit
/// sub-block scales and minimums, both super-block scales, and the codes in value order.
/// Simpler than llama.cpp's searched quantizer; the layout is what matters for the tests.
fn k4_family_codes(x: &[f32], max_code: i32) -> ([u8; 12], f32, f32, Vec<u8>) {
    let ranges = sub_block_ranges(x, 32, max_code as f32);
    let max_scale = ranges.iter().fold(0.0f32, |m, r| m.max(r.0));
    let max_min = ranges.iter().fold(0.0f32, |m, r| m.max(r.1));
    let (d, dmin) = (f16_round(max_scale / 63.0), f16_round(max_min / 63.0));
    let (mut ls, mut lm) = ([0u8; 8], [0u8; 8]);
    for (j, &(scale, min)) in ranges.iter().enumerate() {
        ls[j] = nearest(scale * inverse(d), 0, 63) as u8;
        lm[j] = nearest(min * inverse(dmin), 0, 63) as u8;
    }
    let mut codes = Vec::with_capacity(QK_K);
    for (j, s) in x.chunks_exact(32).enumerate() {
        let (d1, m1) = (d * f32::from(ls[j]), dmin * f32::from(lm[j]));
        codes.extend(s.iter().map(|&v| nearest((v + m1) * inverse(d1), 0, max_code) as u8));
    }
    (pack_scale_min_k4(&ls, &lm), d, dmin, codes)
}

pub fn encode_q4_k(x: &[f32]) -> Vec<u8> {
    let (scales, d, dmin, codes) = k4_family_codes(x, 15);
    let mut out = Vec::with_capacity(144);
    put_f16(&mut out, d);
    put_f16(&mut out, dmin);
    out.extend(scales);
    for c in codes.chunks_exact(64) {
        out.extend((0..32).map(|l| c[l] | (c[l + 32] << 4)));
    }
    out
}

pub fn encode_q5_k(x: &[f32]) -> Vec<u8> {
    let (scales, d, dmin, codes) = k4_family_codes(x, 31);
    let mut out = Vec::with_capacity(176);
    put_f16(&mut out, d);
    put_f16(&mut out, dmin);
    out.extend(scales);
    let mut qh = [0u8; 32];
    for (j, c) in codes.chunks_exact(64).enumerate() {
        for l in 0..32 {
            qh[l] |= ((c[l] >> 4) << (2 * j)) | ((c[l + 32] >> 4) << (2 * j + 1));
        }
    }
    out.extend(qh);
    for c in codes.chunks_exact(64) {
        out.extend((0..32).map(|l| (c[l] & 0xf) | ((c[l + 32] & 0xf) << 4)));
    }
    out
}

/// Round-to-nearest Q6_K: each 16-value sub-block's signed extreme maps to −32, and the
/// sub-block scales are 8-bit against one f16 super-block scale.
pub fn encode_q6_k(x: &[f32]) -> Vec<u8> {
    let scales: Vec<f32> = x
        .chunks_exact(16)
        .map(|s| {
            s.iter().copied().fold(0.0f32, |m, v| if v.abs() > m.abs() { v } else { m }) / -32.0
        })
        .collect();
    let max_scale =
        scales.iter().copied().fold(0.0f32, |m, v| if v.abs() > m.abs() { v } else { m });
    let iscale = if max_scale != 0.0 { -128.0 / max_scale } else { 0.0 };
    let d = f16_round(inverse(iscale));
    let sc: Vec<i8> = scales.iter().map(|&s| nearest(iscale * s, -128, 127) as i8).collect();
    let mut codes = Vec::with_capacity(QK_K);
    for (s, &k) in x.chunks_exact(16).zip(&sc) {
        let d1 = d * f32::from(k);
        codes.extend(s.iter().map(|&v| (nearest(v * inverse(d1), -32, 31) + 32) as u8));
    }
    let (mut ql, mut qh) = ([0u8; 128], [0u8; 64]);
    for half in 0..2 {
        let c = &codes[128 * half..];
        for l in 0..32 {
            ql[64 * half + l] = (c[l] & 0xf) | ((c[l + 64] & 0xf) << 4);
            ql[64 * half + l + 32] = (c[l + 32] & 0xf) | ((c[l + 96] & 0xf) << 4);
            qh[32 * half + l] = (c[l] >> 4)
                | ((c[l + 32] >> 4) << 2)
                | ((c[l + 64] >> 4) << 4)
                | ((c[l + 96] >> 4) << 6);
        }
    }
    let mut out = Vec::with_capacity(210);
    out.extend(ql);
    out.extend(qh);
    out.extend(sc.iter().map(|&s| s as u8));
    put_f16(&mut out, d);
    out
}
