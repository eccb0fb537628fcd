//! The common shape of every GGML block format: unsigned integer codes, one per value, and per
//! block a scale plus either a fixed integer zero point or a float minimum. Each decoder turns
//! its type's packed bytes into this shape; dequantizing and converting to other block formats
//! (ONNX Runtime's `MatMulNBits`) both start from it, so a type's bit layout is read in one
//! place only.

use half::f16;

/// How a block's codes map to values.
#[derive(Debug, Clone, PartialEq)]
pub enum BlockOffset {
    /// `x = scale · (q − zero)`, one zero point for the whole tensor (Q4_0: 8, Q8_0: 128, ...).
    Zero(u8),
    /// `x = scale · q + min`, one float minimum per block (Q4_1, Q4_K, ...).
    Min(Vec<f32>),
}

/// A block-quantized tensor unpacked to one code per value, in value order.
#[derive(Debug, Clone, PartialEq)]
pub struct AffineBlocks {
    /// Values per block (a block never spans two rows).
    pub block: usize,
    /// Every code is below `2^code_bits`.
    pub code_bits: u8,
    pub codes: Vec<u8>,
    /// One per block.
    pub scales: Vec<f32>,
    pub offset: BlockOffset,
}

impl AffineBlocks {
    /// Room for `n` values; `min` selects per-block minimums over a fixed zero point.
    pub(crate) fn new(block: usize, code_bits: u8, n: usize, offset: BlockOffset) -> Self {
        Self {
            block,
            code_bits,
            codes: Vec::with_capacity(n),
            scales: Vec::with_capacity(n / block),
            offset,
        }
    }

    /// Appends one block's scale (and minimum, for `BlockOffset::Min`).
    pub(crate) fn push_block(&mut self, scale: f32, min: f32) {
        self.scales.push(scale);
        if let BlockOffset::Min(m) = &mut self.offset {
            m.push(min);
        }
    }

    /// The values as llama.cpp's dequantization computes them (same operations, same order).
    pub fn to_f32(&self) -> Vec<f32> {
        let per_block = self.codes.chunks(self.block).zip(&self.scales);
        match &self.offset {
            BlockOffset::Zero(z) => {
                let z = i32::from(*z);
                per_block
                    .flat_map(|(q, &d)| q.iter().map(move |&q| d * (i32::from(q) - z) as f32))
                    .collect()
            }
            BlockOffset::Min(mins) => per_block
                .zip(mins)
                .flat_map(|((q, &d), &m)| q.iter().map(move |&q| d * f32::from(q) + m))
                .collect(),
        }
    }
}

pub(crate) fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

pub(crate) fn put_f16(out: &mut Vec<u8>, v: f32) {
    out.extend(f16::from_f32(v).to_le_bytes());
}

/// Rounded f16 value of `v` as f32 (what a decoder will read back).
pub(crate) fn f16_round(v: f32) -> f32 {
    f16::from_f32(v).to_f32()
}

pub(crate) fn inverse(d: f32) -> f32 {
    if d != 0.0 { 1.0 / d } else { 0.0 }
}

/// `round(v)` clamped to `lo..=hi`, as llama.cpp's `nearest_int` plus its clamps.
pub(crate) fn nearest(v: f32, lo: i32, hi: i32) -> i32 {
    (v.round() as i32).clamp(lo, hi)
}
