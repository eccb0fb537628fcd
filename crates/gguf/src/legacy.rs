//! The 32-value block formats and their llama.cpp reference quantizers.
//!
//! Layouts (32 values per block; `qs` holds value j in the low nibble of byte j and value j+16
//! in its high nibble):
//! - Q4_0 = f16 d + 16 nibble bytes, x = d(q − 8)
//! - Q4_1 = f16 d + f16 m + 16 nibble bytes, x = dq + m
//! - Q5_0 = f16 d + u32 qh + 16 nibble bytes, bit j of qh is bit 4 of value j, x = d(q − 16)
//! - Q5_1 = f16 d + f16 m + u32 qh + 16 nibble bytes, x = dq + m
//! - Q8_0 = f16 d + 32 i8, x = dq
//! - IQ4_NL = f16 d + 16 nibble bytes indexing a fixed non-linear table, x = d·T\[q\]

use crate::blocks::{AffineBlocks, BlockOffset, f16_at, inverse, put_f16};
use crate::types::QK;

/// IQ4_NL's code book (`kvalues_iq4nl` in ggml).
pub const IQ4_NL_VALUES: [i8; 16] =
    [-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113];

/// The 32 unsigned 4-bit values of a nibble block in value order.
pub fn unpack_nibbles(qs: &[u8]) -> [u8; QK] {
    let mut q = [0u8; QK];
    for j in 0..QK / 2 {
        q[j] = qs[j] & 0x0f;
        q[j + QK / 2] = qs[j] >> 4;
    }
    q
}

fn pack_nibbles(q: &[u8; QK]) -> [u8; QK / 2] {
    let mut qs = [0u8; QK / 2];
    for j in 0..QK / 2 {
        qs[j] = (q[j] & 0x0f) | ((q[j + QK / 2] & 0x0f) << 4);
    }
    qs
}

/// Nibbles plus the fifth bits from `qh`.
fn unpack_five_bits(qh: &[u8], qs: &[u8]) -> [u8; QK] {
    let qh = u32::from_le_bytes([qh[0], qh[1], qh[2], qh[3]]);
    let mut q = unpack_nibbles(qs);
    for (j, v) in q.iter_mut().enumerate() {
        *v |= (((qh >> j) & 1) as u8) << 4;
    }
    q
}

fn pack_five_bits(q: &[u8; QK], out: &mut Vec<u8>) {
    let qh = q.iter().enumerate().fold(0u32, |h, (j, &v)| h | (u32::from(v >> 4) << j));
    out.extend(qh.to_le_bytes());
    out.extend(pack_nibbles(q));
}

pub fn decode_q4_0(bytes: &[u8], n: usize) -> AffineBlocks {
    let mut out = AffineBlocks::new(QK, 4, n, BlockOffset::Zero(8));
    for b in bytes.chunks_exact(18) {
        out.push_block(f16_at(b, 0), 0.0);
        out.codes.extend(unpack_nibbles(&b[2..]));
    }
    out
}

pub fn decode_q4_1(bytes: &[u8], n: usize) -> AffineBlocks {
    let mut out = AffineBlocks::new(QK, 4, n, BlockOffset::Min(Vec::with_capacity(n / QK)));
    for b in bytes.chunks_exact(20) {
        out.push_block(f16_at(b, 0), f16_at(b, 2));
        out.codes.extend(unpack_nibbles(&b[4..]));
    }
    out
}

pub fn decode_q5_0(bytes: &[u8], n: usize) -> AffineBlocks {
    let mut out = AffineBlocks::new(QK, 5, n, BlockOffset::Zero(16));
    for b in bytes.chunks_exact(22) {
        out.push_block(f16_at(b, 0), 0.0);
        out.codes.extend(unpack_five_bits(&b[2..6], &b[6..]));
    }
    out
}

pub fn decode_q5_1(bytes: &[u8], n: usize) -> AffineBlocks {
    let mut out = AffineBlocks::new(QK, 5, n, BlockOffset::Min(Vec::with_capacity(n / QK)));
    for b in bytes.chunks_exact(24) {
        out.push_block(f16_at(b, 0), f16_at(b, 2));
        out.codes.extend(unpack_five_bits(&b[4..8], &b[8..]));
    }
    out
}

pub fn decode_q8_0(bytes: &[u8], n: usize) -> AffineBlocks {
    let mut out = AffineBlocks::new(QK, 8, n, BlockOffset::Zero(128));
    for b in bytes.chunks_exact(34) {
        out.push_block(f16_at(b, 0), 0.0);
        // i8 q → u8 q + 128 is flipping the sign bit.
        out.codes.extend(b[2..].iter().map(|&q| q ^ 0x80));
    }
    out
}

pub fn decode_iq4_nl(bytes: &[u8], n: usize) -> AffineBlocks {
    let mut out = AffineBlocks::new(QK, 8, n, BlockOffset::Zero(128));
    for b in bytes.chunks_exact(18) {
        out.push_block(f16_at(b, 0), 0.0);
        // The table is signed bytes: shifting by 128 makes each an unsigned code around 128.
        out.codes.extend(
            unpack_nibbles(&b[2..]).iter().map(|&q| (IQ4_NL_VALUES[q as usize] as u8) ^ 0x80),
        );
    }
    out
}

/// Symmetric 4-bit: the value of largest magnitude maps to -8.
pub fn encode_q4_0(x: &[f32]) -> Vec<u8> {
    let (d, q) = symmetric_codes::<16>(x);
    let mut out = Vec::with_capacity(18);
    put_f16(&mut out, d);
    out.extend(pack_nibbles(&q));
    out
}

/// Symmetric 5-bit: the value of largest magnitude maps to -16.
pub fn encode_q5_0(x: &[f32]) -> Vec<u8> {
    let (d, q) = symmetric_codes::<32>(x);
    let mut out = Vec::with_capacity(22);
    put_f16(&mut out, d);
    pack_five_bits(&q, &mut out);
    out
}

/// llama.cpp's `quantize_row_q4_0_ref` / `q5_0_ref` for `LEVELS` = 16 / 32.
fn symmetric_codes<const LEVELS: i32>(x: &[f32]) -> (f32, [u8; QK]) {
    let max = x.iter().copied().fold(0.0f32, |m, v| if v.abs() > m.abs() { v } else { m });
    let half = LEVELS / 2;
    let d = max / -(half as f32);
    let id = inverse(d);
    let mut q = [0u8; QK];
    for (qi, &v) in q.iter_mut().zip(x) {
        // Truncation after +half+0.5 is round-to-nearest because the operand is never negative.
        *qi = ((v * id + half as f32 + 0.5) as i32).clamp(0, LEVELS - 1) as u8;
    }
    (d, q)
}

/// Asymmetric 4-bit over `[min, max]`.
pub fn encode_q4_1(x: &[f32]) -> Vec<u8> {
    let (d, min, q) = asymmetric_codes::<15>(x);
    let mut out = Vec::with_capacity(20);
    put_f16(&mut out, d);
    put_f16(&mut out, min);
    out.extend(pack_nibbles(&q));
    out
}

/// Asymmetric 5-bit over `[min, max]`.
pub fn encode_q5_1(x: &[f32]) -> Vec<u8> {
    let (d, min, q) = asymmetric_codes::<31>(x);
    let mut out = Vec::with_capacity(24);
    put_f16(&mut out, d);
    put_f16(&mut out, min);
    pack_five_bits(&q, &mut out);
    out
}

fn asymmetric_codes<const MAX_CODE: i32>(x: &[f32]) -> (f32, f32, [u8; QK]) {
    let min = x.iter().copied().fold(f32::INFINITY, f32::min);
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let d = (max - min) / MAX_CODE as f32;
    let id = inverse(d);
    let mut q = [0u8; QK];
    for (qi, &v) in q.iter_mut().zip(x) {
        *qi = (((v - min) * id + 0.5) as i32).clamp(0, MAX_CODE) as u8;
    }
    (d, min, q)
}

/// Symmetric 8-bit: the largest magnitude maps to ±127.
pub fn encode_q8_0(x: &[f32]) -> Vec<u8> {
    let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = inverse(d);
    let mut out = Vec::with_capacity(34);
    put_f16(&mut out, d);
    out.extend(x.iter().map(|&v| ((v * id).round() as i32).clamp(-128, 127) as i8 as u8));
    out
}

/// Nearest code-book entry with the scale that maps the largest magnitude to the table's end.
pub fn encode_iq4_nl(x: &[f32]) -> Vec<u8> {
    let max = x.iter().copied().fold(0.0f32, |m, v| if v.abs() > m.abs() { v } else { m });
    let d = max / f32::from(IQ4_NL_VALUES[0]);
    let id = inverse(d);
    let mut q = [0u8; QK];
    for (qi, &v) in q.iter_mut().zip(x) {
        let t = v * id;
        *qi = (0..16u8)
            .min_by(|&a, &b| {
                let ea = (f32::from(IQ4_NL_VALUES[a as usize]) - t).abs();
                let eb = (f32::from(IQ4_NL_VALUES[b as usize]) - t).abs();
                ea.total_cmp(&eb)
            })
            .unwrap_or(8);
    }
    let mut out = Vec::with_capacity(18);
    put_f16(&mut out, d);
    out.extend(pack_nibbles(&q));
    out
}
