//! Tensor codecs: GGUF bytes → f32 (and → unpacked blocks), and f32 → GGUF bytes for the
//! writer. The block layouts live in `legacy` (32-value blocks) and `kquant` (K-quants).

use half::{bf16, f16};

use crate::blocks::AffineBlocks;
use crate::error::{Error, Result};
use crate::kquant::{
    decode_q2_k, decode_q3_k, decode_q4_k, decode_q5_k, decode_q6_k, encode_q4_k, encode_q5_k,
    encode_q6_k,
};
use crate::legacy::{
    decode_iq4_nl, decode_q4_0, decode_q4_1, decode_q5_0, decode_q5_1, decode_q8_0, encode_iq4_nl,
    encode_q4_0, encode_q4_1, encode_q5_0, encode_q5_1, encode_q8_0,
};
use crate::types::GgmlType;

fn check_len(ty: GgmlType, bytes: &[u8], n: usize) -> Result<()> {
    let need = ty.bytes_for(n as u64).ok_or_else(|| Error::UnsupportedType {
        ty: ty.to_string(),
        tensor: format!("{n} values"),
    })?;
    if bytes.len() as u64 != need {
        return Err(Error::Malformed(format!(
            "{n} {ty} values need {need} bytes, got {}",
            bytes.len()
        )));
    }
    Ok(())
}

/// Unpacks `bytes` holding `n` values of the block-quantized type `ty`; `Ok(None)` for the
/// float types, which have no blocks.
pub fn decode_blocks(ty: GgmlType, bytes: &[u8], n: usize) -> Result<Option<AffineBlocks>> {
    check_len(ty, bytes, n)?;
    Ok(Some(match ty {
        GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => return Ok(None),
        GgmlType::Q4_0 => decode_q4_0(bytes, n),
        GgmlType::Q4_1 => decode_q4_1(bytes, n),
        GgmlType::Q5_0 => decode_q5_0(bytes, n),
        GgmlType::Q5_1 => decode_q5_1(bytes, n),
        GgmlType::Q8_0 => decode_q8_0(bytes, n),
        GgmlType::IQ4_NL => decode_iq4_nl(bytes, n),
        GgmlType::Q2_K => decode_q2_k(bytes, n),
        GgmlType::Q3_K => decode_q3_k(bytes, n),
        GgmlType::Q4_K => decode_q4_k(bytes, n),
        GgmlType::Q5_K => decode_q5_k(bytes, n),
        GgmlType::Q6_K => decode_q6_k(bytes, n),
        GgmlType::Other(_) => {
            return Err(Error::UnsupportedType {
                ty: ty.to_string(),
                tensor: format!("{n} values"),
            });
        }
    }))
}

/// Decodes `bytes` holding `n` values of type `ty` into f32.
pub fn dequantize(ty: GgmlType, bytes: &[u8], n: usize) -> Result<Vec<f32>> {
    if let Some(blocks) = decode_blocks(ty, bytes, n)? {
        return Ok(blocks.to_f32());
    }
    Ok(match ty {
        GgmlType::F32 => {
            bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
        }
        GgmlType::F16 => {
            bytes.chunks_exact(2).map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32()).collect()
        }
        // bf16 is the top half of an f32: widening is exact.
        _ => bytes.chunks_exact(2).map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
    })
}

/// Encodes `values` as `ty`. Quantized types need a whole number of blocks (32 values, or 256
/// for the K-quants). Q2_K and Q3_K are decoded but not written.
pub fn quantize(ty: GgmlType, values: &[f32]) -> Result<Vec<u8>> {
    let blocks = |size: usize| {
        if values.len().is_multiple_of(size) {
            Ok(values.chunks_exact(size))
        } else {
            Err(Error::Malformed(format!(
                "{} values are not a whole number of {ty} blocks of {size}",
                values.len()
            )))
        }
    };
    let per_block = ty.block_geometry().map_or(1, |(n, _)| n);
    Ok(match ty {
        GgmlType::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        GgmlType::F16 => values.iter().flat_map(|v| f16::from_f32(*v).to_le_bytes()).collect(),
        // Round to nearest even, as ggml's fp32 → bf16 conversion.
        GgmlType::BF16 => values.iter().flat_map(|v| bf16::from_f32(*v).to_le_bytes()).collect(),
        GgmlType::Q4_0 => blocks(per_block)?.flat_map(encode_q4_0).collect(),
        GgmlType::Q4_1 => blocks(per_block)?.flat_map(encode_q4_1).collect(),
        GgmlType::Q5_0 => blocks(per_block)?.flat_map(encode_q5_0).collect(),
        GgmlType::Q5_1 => blocks(per_block)?.flat_map(encode_q5_1).collect(),
        GgmlType::Q8_0 => blocks(per_block)?.flat_map(encode_q8_0).collect(),
        GgmlType::IQ4_NL => blocks(per_block)?.flat_map(encode_iq4_nl).collect(),
        GgmlType::Q4_K => blocks(per_block)?.flat_map(encode_q4_k).collect(),
        GgmlType::Q5_K => blocks(per_block)?.flat_map(encode_q5_k).collect(),
        GgmlType::Q6_K => blocks(per_block)?.flat_map(encode_q6_k).collect(),
        GgmlType::Q2_K | GgmlType::Q3_K | GgmlType::Other(_) => {
            return Err(Error::UnsupportedType { ty: ty.to_string(), tensor: "the writer".into() });
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ramp(n: usize) -> Vec<f32> {
        (0..n).map(|i| ((i * 37 % 101) as f32 - 50.0) / 40.0).collect()
    }

    fn max_err(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).fold(0.0, |m, (x, y)| m.max((x - y).abs()))
    }

    #[test]
    fn quantized_round_trip_error_is_bounded_by_the_step() {
        let x = ramp(512);
        let range = 100.0 / 40.0;
        // Symmetric types map the extreme value to the lowest code, so the opposite extreme
        // clips one step short: up to a whole step of error there, as in llama.cpp's reference
        // quantizers. K-quants add the rounding of their 6-bit sub-block scales.
        for (ty, tol) in [
            (GgmlType::Q8_0, 0.5 * 1.25 / 127.0),
            (GgmlType::Q4_0, 1.25 / 8.0),
            (GgmlType::Q4_1, 0.5 * range / 15.0),
            (GgmlType::Q5_0, 1.25 / 16.0),
            (GgmlType::Q5_1, 0.5 * range / 31.0),
            (GgmlType::IQ4_NL, 1.25 * 24.0 / 127.0),
            (GgmlType::Q4_K, 0.75 * range / 15.0),
            (GgmlType::Q5_K, 0.75 * range / 31.0),
            (GgmlType::Q6_K, 1.25 / 32.0),
            (GgmlType::BF16, 1.25 / 256.0),
        ] {
            let bytes = quantize(ty, &x).unwrap();
            assert_eq!(bytes.len() as u64, ty.bytes_for(512).unwrap(), "{ty}");
            let back = dequantize(ty, &bytes, 512).unwrap();
            // Plus f16 rounding of the scales.
            assert!(max_err(&x, &back) <= tol + 0.01, "{ty}: {}", max_err(&x, &back));
        }
    }

    #[test]
    fn re_encoding_decoded_values_is_lossless_for_the_linear_types() {
        // A tensor that already sits on a type's grid must come back bit for bit: this pins
        // the packing of every code bit, not just the error bound.
        let x = ramp(512);
        for ty in [
            GgmlType::Q8_0,
            GgmlType::Q4_0,
            GgmlType::Q5_0,
            GgmlType::Q6_K,
            GgmlType::IQ4_NL,
            GgmlType::BF16,
        ] {
            let once = dequantize(ty, &quantize(ty, &x).unwrap(), 512).unwrap();
            let twice = dequantize(ty, &quantize(ty, &once).unwrap(), 512).unwrap();
            assert_eq!(once, twice, "{ty}");
        }
    }

    #[test]
    fn q4_0_nibble_order_is_low_first_half_then_high_second_half() {
        // d = 1 (f16 0x3c00); byte j = (j low) | ((15 - j) high).
        let mut block = vec![0x00, 0x3c];
        block.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
        let x = dequantize(GgmlType::Q4_0, &block, 32).unwrap();
        assert_eq!(x[0], -8.0);
        assert_eq!(x[15], 7.0);
        assert_eq!(x[16], 7.0);
        assert_eq!(x[31], -8.0);
    }

    #[test]
    fn q5_0_fifth_bit_of_value_j_is_bit_j_of_qh() {
        // d = 1; qh has only bit 0 and bit 31 set; every nibble is 0.
        let mut block = vec![0x00, 0x3c];
        block.extend(0x8000_0001u32.to_le_bytes());
        block.extend([0u8; 16]);
        let x = dequantize(GgmlType::Q5_0, &block, 32).unwrap();
        assert_eq!((x[0], x[1], x[30], x[31]), (0.0, -16.0, -16.0, 0.0));
    }

    #[test]
    fn q4_1_uses_min_offset() {
        let mut block = vec![0x00, 0x3c, 0x00, 0xc0]; // d = 1, m = -2
        block.extend([0x21u8; 16]); // q = 1 then 2
        let x = dequantize(GgmlType::Q4_1, &block, 32).unwrap();
        assert_eq!((x[0], x[16]), (-1.0, 0.0));
    }

    #[test]
    fn zero_block_quantizes_to_zero() {
        for ty in [
            GgmlType::Q8_0,
            GgmlType::Q4_0,
            GgmlType::Q4_1,
            GgmlType::Q5_0,
            GgmlType::Q5_1,
            GgmlType::Q4_K,
            GgmlType::Q5_K,
            GgmlType::Q6_K,
        ] {
            let back = dequantize(ty, &quantize(ty, &[0.0; 256]).unwrap(), 256).unwrap();
            assert!(back.iter().all(|&v| v == 0.0), "{ty}");
        }
    }

    #[test]
    fn wrong_lengths_and_unsupported_types_are_errors() {
        assert!(dequantize(GgmlType::Q8_0, &[0; 33], 32).is_err());
        assert!(dequantize(GgmlType::Q6_K, &[0; 209], 256).is_err());
        assert!(quantize(GgmlType::Q4_0, &[0.0; 31]).is_err());
        assert!(quantize(GgmlType::Q4_K, &[0.0; 32]).is_err());
        let e = dequantize(GgmlType::Other(23), &[0; 136], 256).unwrap_err();
        assert!(e.to_string().contains("IQ4_XS (id 23)"), "{e}");
    }
}
