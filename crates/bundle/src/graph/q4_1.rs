//! Our own operator for 4-bit weights with a float minimum per block (GGUF Q4_1):
//! `ce_collm.Q4_1MatMul(x, blocks)` computes `x @ Wᵀ` straight from the GGUF blocks, which the
//! runtime registers with ONNX Runtime at load (`collm_runtime::kernels`).
//!
//! ONNX Runtime's `MatMulNBits` takes block scales only in the activations' type (f32 here)
//! and is fast only with integer zero points, so Q4_1 ran as that kernel plus a per-block
//! correction: five nodes and 0.75 bytes per weight. These blocks are llama.cpp's own, 0.625
//! bytes per weight, one node.
//!
//! Layout of `blocks` (`uint8`, shape `[N, K / 32 · 20]`, `N` even): llama.cpp's Q4_1 fields,
//! rearranged so a kernel that multiplies two rows at a time reads one sequential stream, and
//! eight blocks' scales with one load. Rows come in pairs; a pair's blocks in groups of eight
//! (the last group of a row may be shorter, `c` blocks); a group of a pair is, in order:
//! - the `c` scales `d` of the first row, then of the second (f16 little-endian);
//! - the `c` minimums `m` of the first row, then of the second (f16 little-endian);
//! - the `c` × 16 bytes of codes of the first row, then of the second; byte `j` of a block
//!   holds input `j`'s code in its low nibble and input `j + 16`'s in its high nibble;
//! - weight = `d · code + m`.

use collm_checkpoint::Weight;
use half::f16;

/// Domain of the operators the runtime provides itself.
pub const DOMAIN: &str = "ce_collm";
/// The operator's name in [`DOMAIN`]; attributes `K` (inputs) and `N` (outputs).
pub const OP: &str = "Q4_1MatMul";
/// Inputs per block.
pub const BLOCK: usize = 32;
/// Bytes per block: `d`, `m`, 16 bytes of codes.
pub const BLOCK_BYTES: usize = 20;
/// Rows stored together.
pub const ROWS: usize = 2;
/// Blocks per group.
pub const GROUP: usize = 8;

/// Where block `b` of row `n` keeps its fields, in a matrix of `nb` blocks per row: the byte
/// offsets of its `d`, its `m` and its 16 bytes of codes.
pub fn block_offsets(nb: usize, n: usize, b: usize) -> (usize, usize, usize) {
    let (pair, r) = (n / ROWS, n % ROWS);
    let g = b / GROUP * GROUP;
    let c = (nb - g).min(GROUP);
    let start = (pair * nb + g) * ROWS * BLOCK_BYTES;
    let j = b - g;
    (
        start + 2 * (c * r + j),
        start + 2 * (c * (ROWS + r) + j),
        start + 4 * c * ROWS + 16 * (c * r + j),
    )
}

/// Whether a graph built with `opts` runs `w` on this operator: its activations are int8, so
/// only where `MatMulNBits` would quantize them too (accuracy level 4); `--accuracy-level 0`
/// asks for float activations and gets `MatMulNBits` with its correction.
pub fn runs_on_kernel(w: &Weight, opts: &super::GraphOptions) -> bool {
    chosen(opts) && representable(w)
}

/// `w` packed for this operator when a graph built with `opts` runs it here (see
/// [`runs_on_kernel`]); `None` sends it the `MatMulNBits` way.
pub fn kernel_blocks(w: &Weight, opts: &super::GraphOptions) -> Option<Vec<u8>> {
    if chosen(opts) { pack(w) } else { None }
}

fn chosen(opts: &super::GraphOptions) -> bool {
    opts.q4_1_kernel && opts.nbits_accuracy_level == INT8_ACCURACY_LEVEL
}

/// `MatMulNBits`' accuracy level for int8 activations, this operator's arithmetic.
pub const INT8_ACCURACY_LEVEL: i64 = 4;

/// The fields of a Q4_1-shaped weight: 4-bit blocks of 32 with float zero points, whole
/// blocks per row, rows in pairs.
struct Fields<'w> {
    rows: usize,
    cols: usize,
    packed: &'w [u8],
    scales: &'w [f32],
    zero_points: &'w [f32],
}

fn fields(w: &Weight) -> Option<Fields<'_>> {
    let Weight::Blocks {
        rows,
        cols,
        bits: 4,
        block: BLOCK,
        packed,
        scales,
        zero_points: Some(zps),
    } = w
    else {
        return None;
    };
    (cols % BLOCK == 0 && rows % ROWS == 0).then_some(Fields {
        rows: *rows,
        cols: *cols,
        packed,
        scales,
        zero_points: zps,
    })
}

/// Block `i`'s scale `d` and minimum `m` as f16 values, when both are exactly that:
/// `(q − zp)·d = d·q + m`, and `m` was an f16 before the exporter divided it by `d`.
fn block_f16(f: &Fields, i: usize) -> Option<(f16, f16)> {
    let d = f.scales[i];
    Some((exact_f16(d, 0.0)?, exact_f16(-f.zero_points[i] * d, MIN_TOLERANCE)?))
}

/// Whether [`pack`] takes `w`, without packing it.
pub fn representable(w: &Weight) -> bool {
    fields(w).is_some_and(|f| (0..f.scales.len()).all(|i| block_f16(&f, i).is_some()))
}

/// How far a minimum recomputed as `−zp · d` may sit from an f16: `zp = −m / d` in f32 moves
/// it by an ulp or two of f32, far below half an ulp of f16.
const MIN_TOLERANCE: f32 = 1.0 / 65536.0;

/// `w` as Q4_1 blocks in the layout above, when it is exactly representable: 4-bit blocks of
/// 32 with float zero points whose scales and minimums are f16 values (weights converted from
/// GGUF Q4_1 are; Q4_K's products of two scales usually are not). `None` otherwise.
pub fn pack(w: &Weight) -> Option<Vec<u8>> {
    let f = fields(w)?;
    let nb = f.cols / BLOCK;
    let mut out = vec![0u8; f.rows * nb * BLOCK_BYTES];
    for n in 0..f.rows {
        for b in 0..nb {
            let i = n * nb + b;
            let (d_at, m_at, codes_at) = block_offsets(nb, n, b);
            let (d, m) = block_f16(&f, i)?;
            out[d_at..d_at + 2].copy_from_slice(&d.to_le_bytes());
            out[m_at..m_at + 2].copy_from_slice(&m.to_le_bytes());
            let codes = &f.packed[i * BLOCK / 2..][..BLOCK / 2];
            let code = |k: usize| (codes[k / 2] >> (4 * (k % 2))) & 0x0f;
            for j in 0..BLOCK / 2 {
                out[codes_at + j] = code(j) | (code(j + BLOCK / 2) << 4);
            }
        }
    }
    Some(out)
}

/// `v` as an f16 when that loses at most `rel` of it.
fn exact_f16(v: f32, rel: f32) -> Option<f16> {
    let h = f16::from_f32(v);
    ((h.to_f32() - v).abs() <= v.abs() * rel && h.is_finite()).then_some(h)
}

/// The weight at (`row`, `col`) of packed blocks, as the operator reads it.
pub fn weight_at(blocks: &[u8], cols: usize, row: usize, col: usize) -> f32 {
    let (d_at, m_at, codes_at) = block_offsets(cols / BLOCK, row, col / BLOCK);
    let d = f16::from_le_bytes([blocks[d_at], blocks[d_at + 1]]).to_f32();
    let m = f16::from_le_bytes([blocks[m_at], blocks[m_at + 1]]).to_f32();
    let i = col % BLOCK;
    let code = (blocks[codes_at + i % 16] >> (4 * (i / 16))) & 0x0f;
    d * f32::from(code) + m
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q4_1_weight(rows: usize, cols: usize) -> (Weight, Vec<f32>) {
        let n_blocks = rows * cols / BLOCK;
        let codes: Vec<u8> = (0..rows * cols).map(|i| ((i * 7 + i / 5) % 16) as u8).collect();
        let d: Vec<f32> =
            (0..n_blocks).map(|b| f16::from_f32(0.01 + b as f32 * 1e-3).to_f32()).collect();
        let m: Vec<f32> =
            (0..n_blocks).map(|b| f16::from_f32(-0.07 * (b % 3) as f32).to_f32()).collect();
        let dense =
            (0..rows * cols).map(|i| d[i / BLOCK] * f32::from(codes[i]) + m[i / BLOCK]).collect();
        let packed = codes.chunks_exact(2).map(|p| p[0] | (p[1] << 4)).collect();
        let zero_points = Some((0..n_blocks).map(|b| -m[b] / d[b]).collect());
        let w =
            Weight::Blocks { rows, cols, bits: 4, block: BLOCK, packed, scales: d, zero_points };
        (w, dense)
    }

    #[test]
    fn packed_blocks_hold_every_weight_exactly() {
        // Ten blocks a row: a whole group of eight and a short one.
        let (rows, cols) = (4, 320);
        let (w, dense) = q4_1_weight(rows, cols);
        let blocks = pack(&w).expect("Q4_1 weights pack");
        assert_eq!(blocks.len(), rows * cols / BLOCK * BLOCK_BYTES);
        for r in 0..rows {
            for c in 0..cols {
                let (got, want) = (weight_at(&blocks, cols, r, c), dense[r * cols + c]);
                assert!(
                    (got - want).abs() <= want.abs() * 1e-6 + 1e-7,
                    "({r},{c}): {got} vs {want}"
                );
            }
        }
    }

    #[test]
    fn scales_that_are_not_f16_values_are_refused() {
        let (mut w, _) = q4_1_weight(2, 32);
        if let Weight::Blocks { scales, .. } = &mut w {
            scales[0] = 0.1 * 0.3; // a product of two scales, as Q4_K has
        }
        assert!(pack(&w).is_none());
        let symmetric = Weight::Blocks {
            rows: 1,
            cols: 32,
            bits: 4,
            block: 32,
            packed: vec![0; 16],
            scales: vec![1.0],
            zero_points: None,
        };
        assert!(pack(&symmetric).is_none());
        let (odd_rows, _) = q4_1_weight(3, 32);
        assert!(pack(&odd_rows).is_none(), "rows are stored in pairs");
    }
}
