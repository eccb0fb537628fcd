//! Converting GGUF tensor bytes into `Weight`s without loss: GGUF's 32-value blocks become
//! MatMulNBits blocks of 32 with the nibbles repacked.

use collm_gguf::{GgmlType, QK, dequantize, unpack_nibbles};
use half::f16;

use crate::error::{Error, Result};
use crate::model::Weight;

fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// GGUF dims `[cols, rows]` (fastest first) of a 2D tensor as `(rows, cols)`.
pub fn matrix_shape(name: &str, dims: &[u64]) -> Result<(usize, usize)> {
    match dims {
        [cols, rows] => Ok((to_usize(name, *rows)?, to_usize(name, *cols)?)),
        _ => Err(Error::tensor(name, format!("expected a 2D matrix, found dims {dims:?}"))),
    }
}

fn to_usize(name: &str, v: u64) -> Result<usize> {
    usize::try_from(v).map_err(|_| Error::tensor(name, "dimension too large"))
}

/// Packs 32 values (`0..=15`) as MatMulNBits: byte j = value 2j | value 2j+1 << 4.
fn pack_pairs(q: &[u8; QK], out: &mut Vec<u8>) {
    out.extend(q.chunks_exact(2).map(|p| p[0] | (p[1] << 4)));
}

/// Converts one 2D GGUF tensor (`rows × cols`, raw `bytes` of type `ty`) into a `Weight`.
pub fn weight_from_gguf(
    name: &str,
    ty: GgmlType,
    rows: usize,
    cols: usize,
    bytes: &[u8],
) -> Result<Weight> {
    let n = rows * cols;
    let nblocks = n / QK;
    let expect = |block_bytes: usize| -> Result<()> {
        if !cols.is_multiple_of(QK) || bytes.len() != nblocks * block_bytes {
            return Err(Error::tensor(
                name,
                format!("{} bytes do not hold {rows}x{cols} {ty} values", bytes.len()),
            ));
        }
        Ok(())
    };
    let blocks = |bits: u8, packed, scales, zero_points| Weight::Blocks {
        rows,
        cols,
        bits,
        block: QK,
        packed,
        scales,
        zero_points,
    };
    match ty {
        GgmlType::F32 | GgmlType::F16 => {
            let data = dequantize(ty, bytes, n).map_err(|e| Error::tensor(name, e.to_string()))?;
            Ok(Weight::Dense { rows, cols, data })
        }
        GgmlType::Q8_0 => {
            expect(34)?;
            let mut packed = Vec::with_capacity(n);
            let mut scales = Vec::with_capacity(nblocks);
            for b in bytes.chunks_exact(34) {
                scales.push(f16_at(b, 0));
                // i8 q → u8 q + 128 is flipping the sign bit.
                packed.extend(b[2..].iter().map(|&q| q ^ 0x80));
            }
            Ok(blocks(8, packed, scales, None))
        }
        GgmlType::Q4_0 => {
            expect(18)?;
            let mut packed = Vec::with_capacity(n / 2);
            let mut scales = Vec::with_capacity(nblocks);
            for b in bytes.chunks_exact(18) {
                scales.push(f16_at(b, 0));
                pack_pairs(&unpack_nibbles(&b[2..]), &mut packed);
            }
            Ok(blocks(4, packed, scales, None))
        }
        GgmlType::Q4_1 => {
            expect(20)?;
            let mut packed = Vec::with_capacity(n / 2);
            let mut scales = Vec::with_capacity(nblocks);
            let mut zps = Vec::with_capacity(nblocks);
            for b in bytes.chunks_exact(20) {
                let (d, m) = (f16_at(b, 0), f16_at(b, 2));
                if d == 0.0 {
                    // A constant block m: (1 - 0) * m.
                    scales.push(m);
                    zps.push(0.0);
                    pack_pairs(&[1; QK], &mut packed);
                } else {
                    // (q - zp) * d = d q + m  ⇔  zp = -m / d.
                    scales.push(d);
                    zps.push(-m / d);
                    pack_pairs(&unpack_nibbles(&b[4..]), &mut packed);
                }
            }
            Ok(blocks(4, packed, scales, Some(zps)))
        }
        GgmlType::Other(_) => {
            Err(collm_gguf::Error::UnsupportedType { ty: ty.to_string(), tensor: name.to_string() }
                .into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize) -> Vec<f32> {
        (0..n).map(|i| ((i * 7919 % 263) as f32 - 100.0) / 700.0).collect()
    }

    fn assert_close(got: &[f32], want: &[f32]) {
        assert_eq!(got.len(), want.len());
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!((g - w).abs() <= 1e-6 * w.abs().max(0.1), "value {i}: {g} vs {w}");
        }
    }

    #[test]
    fn quantized_gguf_tensors_convert_exactly() {
        let (rows, cols) = (3, 64);
        let x = values(rows * cols);
        for (ty, bits) in [(GgmlType::Q8_0, 8), (GgmlType::Q4_0, 4), (GgmlType::Q4_1, 4)] {
            let bytes = collm_gguf::quantize(ty, &x).unwrap();
            let want = collm_gguf::dequantize(ty, &bytes, rows * cols).unwrap();
            let w = weight_from_gguf("t", ty, rows, cols, &bytes).unwrap();
            assert!(matches!(w, Weight::Blocks { bits: b, block: 32, .. } if b == bits), "{ty}");
            assert_close(&w.to_dense(), &want);
        }
    }

    #[test]
    fn q4_1_constant_block_keeps_its_value() {
        let mut x = values(64);
        x[32..].fill(0.25);
        let bytes = collm_gguf::quantize(GgmlType::Q4_1, &x).unwrap();
        let w = weight_from_gguf("t", GgmlType::Q4_1, 1, 64, &bytes).unwrap();
        let d = w.to_dense();
        assert!(d[32..].iter().all(|&v| v == 0.25), "{:?}", &d[32..]);
    }

    #[test]
    fn dense_types_stay_dense() {
        let x = values(2 * 32);
        for ty in [GgmlType::F32, GgmlType::F16] {
            let bytes = collm_gguf::quantize(ty, &x).unwrap();
            let w = weight_from_gguf("t", ty, 2, 32, &bytes).unwrap();
            assert!(matches!(w, Weight::Dense { rows: 2, cols: 32, .. }));
            assert_close(&w.to_dense(), &collm_gguf::dequantize(ty, &bytes, 64).unwrap());
        }
    }

    #[test]
    fn unsupported_and_short_tensors_are_named() {
        let e = weight_from_gguf("blk.0.ffn_down.weight", GgmlType::Other(14), 1, 256, &[0; 210])
            .unwrap_err();
        assert_eq!(e.to_string(), "unsupported tensor type Q6_K (id 14) for blk.0.ffn_down.weight");
        let e = weight_from_gguf("w", GgmlType::Q8_0, 1, 32, &[0; 20]).unwrap_err();
        assert!(e.to_string().starts_with("tensor w: 20 bytes"), "{e}");
    }
}
