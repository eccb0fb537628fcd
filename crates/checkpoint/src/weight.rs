//! Shape queries, dense decoding and round-to-nearest block quantization of `Weight`.

use crate::model::Weight;

/// Bytes of one row in MatMulNBits packing: whole blocks, the last one zero-padded.
fn packed_row_bytes(cols: usize, bits: u8, block: usize) -> usize {
    cols.div_ceil(block) * block * bits as usize / 8
}

impl Weight {
    pub fn rows(&self) -> usize {
        match self {
            Self::Dense { rows, .. } | Self::Blocks { rows, .. } => *rows,
        }
    }

    pub fn cols(&self) -> usize {
        match self {
            Self::Dense { cols, .. } | Self::Blocks { cols, .. } => *cols,
        }
    }

    /// Bytes held in memory: f32 values, or packed codes plus f32 scales and zero points.
    pub fn nbytes(&self) -> usize {
        match self {
            Self::Dense { data, .. } => data.len() * 4,
            Self::Blocks { packed, scales, zero_points, .. } => {
                packed.len() + 4 * scales.len() + 4 * zero_points.as_ref().map_or(0, Vec::len)
            }
        }
    }

    /// Row-major `[rows, cols]` f32 values.
    pub fn to_dense(&self) -> Vec<f32> {
        match self {
            Self::Dense { data, .. } => data.clone(),
            Self::Blocks { rows, cols, bits, block, packed, scales, zero_points } => {
                let (rows, cols, block) = (*rows, *cols, *block);
                let row_bytes = packed_row_bytes(cols, *bits, block);
                let blocks_per_row = cols.div_ceil(block);
                let default_zp = f32::from(1u8 << (bits - 1));
                let mut out = Vec::with_capacity(rows * cols);
                for r in 0..rows {
                    let row = &packed[r * row_bytes..(r + 1) * row_bytes];
                    for c in 0..cols {
                        let b = r * blocks_per_row + c / block;
                        let q = match bits {
                            4 => (row[c / 2] >> (4 * (c % 2))) & 0x0f,
                            _ => row[c],
                        };
                        let zp = zero_points.as_ref().map_or(default_zp, |z| z[b]);
                        out.push((f32::from(q) - zp) * scales[b]);
                    }
                }
                out
            }
        }
    }

    /// Symmetric round-to-nearest quantization into MatMulNBits blocks with the default zero
    /// point (8 or 128). For 4 bits the signed extreme of each block maps to -8 (as GGUF
    /// Q4_0 does), for 8 bits the largest magnitude maps to ±127.
    ///
    /// # Panics
    /// When `bits` is not 4 or 8, or `block` is not a positive even number; both are fixed by
    /// the caller's code, not by input data.
    pub fn quantize(&self, bits: u8, block: usize) -> Weight {
        assert!(bits == 4 || bits == 8, "bits must be 4 or 8, got {bits}");
        assert!(
            block > 0 && block.is_multiple_of(2),
            "block must be positive and even, got {block}"
        );
        let (rows, cols) = (self.rows(), self.cols());
        let dense = self.to_dense();
        let blocks_per_row = cols.div_ceil(block);
        let row_bytes = packed_row_bytes(cols, bits, block);
        let mut packed = vec![0u8; rows * row_bytes];
        let mut scales = Vec::with_capacity(rows * blocks_per_row);
        let zp: i32 = 1 << (bits - 1);
        let qmax: i32 = (1 << bits) - 1;
        for r in 0..rows {
            let row = &dense[r * cols..(r + 1) * cols];
            let out = &mut packed[r * row_bytes..(r + 1) * row_bytes];
            for (bi, chunk) in row.chunks(block).enumerate() {
                let scale = match bits {
                    4 => {
                        chunk.iter().fold(0.0f32, |m, &v| if v.abs() > m.abs() { v } else { m })
                            / -8.0
                    }
                    _ => chunk.iter().fold(0.0f32, |m, &v| m.max(v.abs())) / 127.0,
                };
                let inv = if scale != 0.0 { 1.0 / scale } else { 0.0 };
                scales.push(scale);
                for (i, &v) in chunk.iter().enumerate() {
                    let q = ((v * inv).round() as i32 + zp).clamp(0, qmax) as u8;
                    let c = bi * block + i;
                    match bits {
                        4 => out[c / 2] |= q << (4 * (c % 2)),
                        _ => out[c] = q,
                    }
                }
                // Padding past `cols` must decode to 0, i.e. hold the zero point.
                for c in bi * block + chunk.len()..(bi + 1) * block {
                    match bits {
                        4 => out[c / 2] |= (zp as u8) << (4 * (c % 2)),
                        _ => out[c] = zp as u8,
                    }
                }
            }
        }
        Weight::Blocks { rows, cols, bits, block, packed, scales, zero_points: None }
    }

    /// The same matrix with its rows reordered: row `i` of the result is row `perm[i]`.
    ///
    /// # Panics
    /// When `perm` is not a permutation of `0..rows`.
    pub fn permute_rows(&self, perm: &[usize]) -> Weight {
        assert_eq!(perm.len(), self.rows(), "permutation length must equal the row count");
        let gather = |v: &[f32], width: usize| -> Vec<f32> {
            perm.iter().flat_map(|&r| v[r * width..(r + 1) * width].iter().copied()).collect()
        };
        match self {
            Self::Dense { rows, cols, data } => {
                Self::Dense { rows: *rows, cols: *cols, data: gather(data, *cols) }
            }
            Self::Blocks { rows, cols, bits, block, packed, scales, zero_points } => {
                let rb = packed_row_bytes(*cols, *bits, *block);
                let bpr = cols.div_ceil(*block);
                Self::Blocks {
                    rows: *rows,
                    cols: *cols,
                    bits: *bits,
                    block: *block,
                    packed: perm
                        .iter()
                        .flat_map(|&r| packed[r * rb..(r + 1) * rb].iter().copied())
                        .collect(),
                    scales: gather(scales, bpr),
                    zero_points: zero_points.as_ref().map(|z| gather(z, bpr)),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(rows: usize, cols: usize) -> Weight {
        let data = (0..rows * cols).map(|i| ((i * 7919 % 263) as f32 - 131.0) / 500.0).collect();
        Weight::Dense { rows, cols, data }
    }

    fn max_err(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).fold(0.0, |m, (x, y)| m.max((x - y).abs()))
    }

    #[test]
    fn quantized_weights_decode_close_to_the_original() {
        let w = sample(5, 96);
        let dense = w.to_dense();
        let amax = dense.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        for (bits, tol) in [(8u8, amax / 127.0 * 0.51), (4, amax / 8.0 * 1.01)] {
            let q = w.quantize(bits, 32);
            assert_eq!((q.rows(), q.cols()), (5, 96));
            assert!(max_err(&dense, &q.to_dense()) <= tol, "{bits} bits");
        }
        assert!(w.quantize(4, 32).nbytes() < w.nbytes() / 6);
    }

    #[test]
    fn padded_last_block_decodes_only_real_columns() {
        let w = sample(3, 40); // 40 = one full block of 32 and a padded one
        let q = w.quantize(4, 32);
        match &q {
            Weight::Blocks { packed, scales, .. } => {
                assert_eq!(packed.len(), 3 * 32);
                assert_eq!(scales.len(), 3 * 2);
            }
            Weight::Dense { .. } => panic!("expected blocks"),
        }
        assert_eq!(q.to_dense().len(), 3 * 40);
        assert!(max_err(&w.to_dense(), &q.to_dense()) < 0.05);
    }

    #[test]
    fn nibble_order_is_matmulnbits_low_then_high() {
        let w = Weight::Blocks {
            rows: 1,
            cols: 4,
            bits: 4,
            block: 4,
            packed: vec![0x9a, 0x08],
            scales: vec![2.0],
            zero_points: None,
        };
        assert_eq!(w.to_dense(), [4.0, 2.0, 0.0, -16.0]);
    }

    #[test]
    fn permuting_rows_commutes_with_decoding() {
        let w = sample(4, 64);
        let perm = [2, 0, 3, 1];
        let q = w.quantize(4, 32);
        let d = w.to_dense();
        let want: Vec<f32> = perm.iter().flat_map(|&r| d[r * 64..(r + 1) * 64].to_vec()).collect();
        assert_eq!(w.permute_rows(&perm).to_dense(), want);
        let qd = q.to_dense();
        let want_q: Vec<f32> =
            perm.iter().flat_map(|&r| qd[r * 64..(r + 1) * 64].to_vec()).collect();
        assert_eq!(q.permute_rows(&perm).to_dense(), want_q);
    }
}
