//! Converting GGUF tensor bytes into `Weight`s without loss: every block type is unpacked by
//! `collm-gguf` into codes, scales and zero points or minimums, then repacked as MatMulNBits
//! blocks of the same size (4-bit when the codes fit, 8-bit otherwise).

use collm_gguf::{AffineBlocks, BlockOffset, GgmlType, decode_blocks, dequantize};

use crate::error::{Error, Result};
use crate::model::Weight;

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

/// Converts one 2D GGUF tensor (`rows × cols`, raw `bytes` of type `ty`) into a `Weight`.
pub fn weight_from_gguf(
    name: &str,
    ty: GgmlType,
    rows: usize,
    cols: usize,
    bytes: &[u8],
) -> Result<Weight> {
    if let GgmlType::Other(_) = ty {
        return Err(collm_gguf::Error::UnsupportedType {
            ty: ty.to_string(),
            tensor: name.to_string(),
        }
        .into());
    }
    let n = rows * cols;
    let fits = ty.block_geometry().is_some_and(|(per_block, _)| cols.is_multiple_of(per_block));
    if !fits || ty.bytes_for(n as u64) != Some(bytes.len() as u64) {
        return Err(Error::tensor(
            name,
            format!("{} bytes do not hold {rows}x{cols} {ty} values", bytes.len()),
        ));
    }
    let decoded = decode_blocks(ty, bytes, n).map_err(|e| Error::tensor(name, e.to_string()))?;
    Ok(match decoded {
        Some(blocks) => matmul_nbits(rows, cols, blocks),
        None => {
            let data = dequantize(ty, bytes, n).map_err(|e| Error::tensor(name, e.to_string()))?;
            Weight::Dense { rows, cols, data }
        }
    })
}

/// Repacks unpacked GGML blocks as MatMulNBits blocks of the same size.
///
/// A fixed zero point `z` becomes MatMulNBits' default one (`2^(bits-1)`) by shifting every
/// code by `2^(bits-1) − z`; 4 bits are used when the shifted codes still fit (Q4_0, Q3_K),
/// 8 bits otherwise (Q5_0, Q6_K, Q8_0, IQ4_NL). A per-block minimum `m` becomes the float zero
/// point `−m / scale` (Q4_1, Q2_K, Q4_K in 4 bits; Q5_1, Q5_K in 8 bits), with the codes
/// shifted so their range is centred on the default zero point too: the graph runs such
/// blocks as the symmetric kernel plus a per-block correction, and with int8 activations
/// (accuracy level 4) that kernel's rounding error grows with how far the codes sit from the
/// centre — codes 0..31 read as −128..−97 lose most of a 5-bit model's accuracy.
fn matmul_nbits(rows: usize, cols: usize, b: AffineBlocks) -> Weight {
    let AffineBlocks { block, code_bits, mut codes, mut scales, offset } = b;
    let fits_4 = |shift: i32| code_bits <= 4 && shift >= 0 && (1 << code_bits) - 1 + shift <= 15;
    let shift_codes = |codes: &mut Vec<u8>, shift: i32| {
        for q in codes.iter_mut() {
            *q = (i32::from(*q) + shift) as u8;
        }
    };
    let (bits, zero_points) = match offset {
        BlockOffset::Zero(z) => {
            let shift4 = 8 - i32::from(z);
            let (bits, shift) = if fits_4(shift4) { (4, shift4) } else { (8, 128 - i32::from(z)) };
            shift_codes(&mut codes, shift);
            (bits, None)
        }
        BlockOffset::Min(mins) => {
            let half_range = 1i32 << (code_bits - 1);
            let (bits, shift) =
                if fits_4(8 - half_range) { (4, 8 - half_range) } else { (8, 128 - half_range) };
            shift_codes(&mut codes, shift);
            let mut zps = Vec::with_capacity(mins.len());
            for (i, m) in mins.into_iter().enumerate() {
                if scales[i] == 0.0 {
                    // A constant block m: ((shift + 1) − shift) · m.
                    scales[i] = m;
                    codes[i * block..(i + 1) * block].fill(shift as u8 + 1);
                    zps.push(shift as f32);
                } else {
                    // (q + shift − zp) · d = d q + m  ⇔  zp = shift − m / d.
                    zps.push(shift as f32 - m / scales[i]);
                }
            }
            (bits, Some(zps))
        }
    };
    let packed = match bits {
        4 => codes.chunks_exact(2).map(|p| p[0] | (p[1] << 4)).collect(),
        _ => codes,
    };
    Weight::Blocks { rows, cols, bits, block, packed, scales, zero_points }
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
        let (rows, cols) = (3, 512);
        let x = values(rows * cols);
        // (type, MatMulNBits bits, block, float zero points)
        for (ty, bits, block, float_zp) in [
            (GgmlType::Q8_0, 8, 32, false),
            (GgmlType::Q4_0, 4, 32, false),
            (GgmlType::Q4_1, 4, 32, true),
            (GgmlType::Q5_0, 8, 32, false),
            (GgmlType::Q5_1, 8, 32, true),
            (GgmlType::IQ4_NL, 8, 32, false),
            (GgmlType::Q4_K, 4, 32, true),
            (GgmlType::Q5_K, 8, 32, true),
            (GgmlType::Q6_K, 8, 16, false),
        ] {
            let bytes = collm_gguf::quantize(ty, &x).unwrap();
            let want = collm_gguf::dequantize(ty, &bytes, rows * cols).unwrap();
            let w = weight_from_gguf("t", ty, rows, cols, &bytes).unwrap();
            match &w {
                Weight::Blocks { bits: b, block: k, zero_points, .. } => {
                    assert_eq!((*b, *k, zero_points.is_some()), (bits, block, float_zp), "{ty}")
                }
                Weight::Dense { .. } => panic!("{ty}: expected blocks"),
            }
            assert_close(&w.to_dense(), &want);
        }
    }

    #[test]
    fn k_quants_llama_cpp_cannot_write_from_us_convert_exactly_too() {
        // Q2_K and Q3_K have no encoder here: random bytes with sane f16 super-block scales
        // stand in for llama.cpp's output (their decoding is checked against llama.cpp's own
        // in collm-gguf).
        let mut s = 0x2545_f491u32;
        let mut byte = move || {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            s as u8
        };
        for (ty, bits, size, scale_at) in
            [(GgmlType::Q2_K, 4, 84, [80, 82]), (GgmlType::Q3_K, 4, 110, [108, 108])]
        {
            let mut bytes: Vec<u8> = (0..2 * size).map(|_| byte()).collect();
            for block in bytes.chunks_exact_mut(size) {
                for at in scale_at {
                    block[at..at + 2].copy_from_slice(&half::f16::from_f32(0.01).to_le_bytes());
                }
            }
            let want = collm_gguf::dequantize(ty, &bytes, 512).unwrap();
            let w = weight_from_gguf("t", ty, 2, 256, &bytes).unwrap();
            assert!(matches!(w, Weight::Blocks { bits: b, block: 16, .. } if b == bits), "{ty}");
            assert_close(&w.to_dense(), &want);
        }
    }

    #[test]
    fn bf16_is_widened_exactly() {
        let x = values(2 * 32);
        let bytes = collm_gguf::quantize(GgmlType::BF16, &x).unwrap();
        let w = weight_from_gguf("t", GgmlType::BF16, 2, 32, &bytes).unwrap();
        let want = collm_gguf::dequantize(GgmlType::BF16, &bytes, 64).unwrap();
        assert_eq!(w, Weight::Dense { rows: 2, cols: 32, data: want });
    }

    #[test]
    fn constant_blocks_keep_their_value() {
        let mut x = values(256);
        x[32..64].fill(0.25);
        for ty in [GgmlType::Q4_1, GgmlType::Q5_1] {
            let bytes = collm_gguf::quantize(ty, &x).unwrap();
            let w = weight_from_gguf("t", ty, 1, 256, &bytes).unwrap();
            let d = w.to_dense();
            assert!(d[32..64].iter().all(|&v| v == 0.25), "{ty}: {:?}", &d[32..64]);
        }
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
        let e = weight_from_gguf("blk.0.ffn_down.weight", GgmlType::Other(23), 1, 256, &[0; 136])
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "unsupported tensor type IQ4_XS (id 23) for blk.0.ffn_down.weight"
        );
        let e = weight_from_gguf("w", GgmlType::Q8_0, 1, 32, &[0; 20]).unwrap_err();
        assert!(e.to_string().starts_with("tensor w: 20 bytes"), "{e}");
    }
}
