//! Block codecs: GGUF bytes → f32 and the llama.cpp reference quantizers f32 → bytes.
//!
//! Layouts (32 values per block): Q4_0 = f16 d + 16 bytes, value j in the low nibble of byte j
//! and value j+16 in its high nibble, x = d(q-8); Q4_1 = f16 d + f16 m + 16 nibble bytes,
//! x = dq + m; Q8_0 = f16 d + 32 i8, x = dq.

use half::f16;

use crate::error::{Error, Result};
use crate::types::{GgmlType, QK};

fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

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

/// Decodes `bytes` holding `n` values of type `ty` into f32.
pub fn dequantize(ty: GgmlType, bytes: &[u8], n: usize) -> Result<Vec<f32>> {
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
    let mut out = Vec::with_capacity(n);
    match ty {
        GgmlType::F32 => {
            out.extend(bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])))
        }
        GgmlType::F16 => out.extend(bytes.chunks_exact(2).map(|c| f16_at(c, 0))),
        GgmlType::Q4_0 => {
            for b in bytes.chunks_exact(18) {
                let d = f16_at(b, 0);
                out.extend(unpack_nibbles(&b[2..]).iter().map(|&q| d * (f32::from(q) - 8.0)));
            }
        }
        GgmlType::Q4_1 => {
            for b in bytes.chunks_exact(20) {
                let (d, m) = (f16_at(b, 0), f16_at(b, 2));
                out.extend(unpack_nibbles(&b[4..]).iter().map(|&q| d * f32::from(q) + m));
            }
        }
        GgmlType::Q8_0 => {
            for b in bytes.chunks_exact(34) {
                let d = f16_at(b, 0);
                out.extend(b[2..].iter().map(|&q| d * f32::from(q as i8)));
            }
        }
        GgmlType::Other(_) => {
            return Err(Error::UnsupportedType {
                ty: ty.to_string(),
                tensor: format!("{n} values"),
            });
        }
    }
    Ok(out)
}

/// Encodes `values` as `ty`. Quantized types need a multiple of 32 values.
pub fn quantize(ty: GgmlType, values: &[f32]) -> Result<Vec<u8>> {
    let blocks = || {
        if values.len().is_multiple_of(QK) {
            Ok(values.chunks_exact(QK))
        } else {
            Err(Error::Malformed(format!(
                "{} values are not a whole number of {ty} blocks of {QK}",
                values.len()
            )))
        }
    };
    Ok(match ty {
        GgmlType::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        GgmlType::F16 => values.iter().flat_map(|v| f16::from_f32(*v).to_le_bytes()).collect(),
        GgmlType::Q4_0 => blocks()?.flat_map(quantize_block_q4_0).collect(),
        GgmlType::Q4_1 => blocks()?.flat_map(quantize_block_q4_1).collect(),
        GgmlType::Q8_0 => blocks()?.flat_map(quantize_block_q8_0).collect(),
        GgmlType::Other(_) => {
            return Err(Error::UnsupportedType { ty: ty.to_string(), tensor: "the writer".into() });
        }
    })
}

fn inverse(d: f32) -> f32 {
    if d != 0.0 { 1.0 / d } else { 0.0 }
}

/// Symmetric 4-bit: the value of largest magnitude maps to -8.
fn quantize_block_q4_0(x: &[f32]) -> Vec<u8> {
    let max = x.iter().copied().fold(0.0f32, |m, v| if v.abs() > m.abs() { v } else { m });
    let d = max / -8.0;
    let id = inverse(d);
    let mut q = [0u8; QK];
    for (qi, &v) in q.iter_mut().zip(x) {
        // Truncation after +8.5 is round-to-nearest because the operand is never negative.
        *qi = ((v * id + 8.5) as i32).clamp(0, 15) as u8;
    }
    let mut out = f16::from_f32(d).to_le_bytes().to_vec();
    out.extend(pack_nibbles(&q));
    out
}

/// Asymmetric 4-bit over `[min, max]`.
fn quantize_block_q4_1(x: &[f32]) -> Vec<u8> {
    let min = x.iter().copied().fold(f32::INFINITY, f32::min);
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let d = (max - min) / 15.0;
    let id = inverse(d);
    let mut q = [0u8; QK];
    for (qi, &v) in q.iter_mut().zip(x) {
        *qi = (((v - min) * id + 0.5) as i32).clamp(0, 15) as u8;
    }
    let mut out = f16::from_f32(d).to_le_bytes().to_vec();
    out.extend(f16::from_f32(min).to_le_bytes());
    out.extend(pack_nibbles(&q));
    out
}

/// Symmetric 8-bit: the largest magnitude maps to ±127.
fn quantize_block_q8_0(x: &[f32]) -> Vec<u8> {
    let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = inverse(d);
    let mut out = f16::from_f32(d).to_le_bytes().to_vec();
    out.extend(x.iter().map(|&v| ((v * id).round() as i32).clamp(-128, 127) as i8 as u8));
    out
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
        let x = ramp(128);
        let range = 100.0 / 40.0;
        // Q4_0 maps the extreme value to -8, so the opposite extreme clips to +7: up to a
        // whole step of error there, as in llama.cpp's reference quantizer.
        for (ty, tol) in [
            (GgmlType::Q8_0, 0.5 * 1.25 / 127.0),
            (GgmlType::Q4_0, 1.25 / 8.0),
            (GgmlType::Q4_1, 0.5 * range / 15.0),
        ] {
            let bytes = quantize(ty, &x).unwrap();
            assert_eq!(bytes.len() as u64, ty.bytes_for(128).unwrap());
            let back = dequantize(ty, &bytes, 128).unwrap();
            // Half a step plus f16 rounding of the scale.
            assert!(max_err(&x, &back) <= tol + 0.01, "{ty}: {}", max_err(&x, &back));
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
    fn q4_1_uses_min_offset() {
        let mut block = vec![0x00, 0x3c, 0x00, 0xc0]; // d = 1, m = -2
        block.extend([0x21u8; 16]); // q = 1 then 2
        let x = dequantize(GgmlType::Q4_1, &block, 32).unwrap();
        assert_eq!((x[0], x[16]), (-1.0, 0.0));
    }

    #[test]
    fn zero_block_quantizes_to_zero() {
        for ty in [GgmlType::Q8_0, GgmlType::Q4_0, GgmlType::Q4_1] {
            let back = dequantize(ty, &quantize(ty, &[0.0; 32]).unwrap(), 32).unwrap();
            assert!(back.iter().all(|&v| v == 0.0), "{ty}");
        }
    }

    #[test]
    fn wrong_lengths_and_unsupported_types_are_errors() {
        assert!(dequantize(GgmlType::Q8_0, &[0; 33], 32).is_err());
        assert!(quantize(GgmlType::Q4_0, &[0.0; 31]).is_err());
        let e = dequantize(GgmlType::Other(14), &[0; 210], 256).unwrap_err();
        assert!(e.to_string().contains("Q6_K (id 14)"), "{e}");
    }
}
