//! How hidden states travel from edge to cloud: f32, f16, or int8 with one f32 scale per row,
//! all little-endian, rows back to back. One layout for the edge runtime, the wire protocol and
//! the cloud's context store, so encoded rows pass between them unchanged.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    F32,
    #[default]
    F16,
    Int8,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("unknown hidden-state encoding {0:?} (expected f32, f16 or int8)")]
    UnknownEncoding(String),
    #[error(
        "{encoding} payload of {len} bytes does not hold {rows} rows of {width} (expected {expected} bytes)"
    )]
    Length { encoding: &'static str, len: usize, rows: usize, width: usize, expected: usize },
    #[error("hidden state row {row} holds a non-finite value")]
    NonFinite { row: usize },
}

impl std::str::FromStr for Encoding {
    type Err = CodecError;
    fn from_str(s: &str) -> Result<Self, CodecError> {
        match s {
            "f32" => Ok(Self::F32),
            "f16" => Ok(Self::F16),
            "int8" => Ok(Self::Int8),
            other => Err(CodecError::UnknownEncoding(other.to_string())),
        }
    }
}

impl Encoding {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::F16 => "f16",
            Self::Int8 => "int8",
        }
    }

    /// Encoded size of one row of `width` values.
    pub fn row_bytes(self, width: usize) -> usize {
        match self {
            Self::F32 => 4 * width,
            Self::F16 => 2 * width,
            Self::Int8 => 4 + width,
        }
    }
}

/// Encodes row-major `values` (`width` per row). Int8 scales each row by its largest magnitude.
pub fn encode(values: &[f32], width: usize, encoding: Encoding) -> Vec<u8> {
    match encoding {
        Encoding::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        Encoding::F16 => {
            values.iter().flat_map(|v| half::f16::from_f32(*v).to_le_bytes()).collect()
        }
        Encoding::Int8 => {
            let rows = values.len() / width.max(1);
            let mut out = Vec::with_capacity(rows * encoding.row_bytes(width));
            for row in values.chunks(width.max(1)) {
                let max = row.iter().fold(0f32, |m, v| m.max(v.abs()));
                let scale = if max > 0.0 { max / 127.0 } else { 1.0 };
                out.extend_from_slice(&scale.to_le_bytes());
                out.extend(
                    row.iter().map(|v| (v / scale).round().clamp(-127.0, 127.0) as i8 as u8),
                );
            }
            out
        }
    }
}

/// Calls `f(index, value)` for every decoded value, stopping at the first `Err`. The caller must
/// have checked that `payload` holds whole rows of `width` (see [`Encoding::row_bytes`]).
fn for_each_value<E>(
    payload: &[u8],
    width: usize,
    encoding: Encoding,
    mut f: impl FnMut(usize, f32) -> Result<(), E>,
) -> Result<(), E> {
    match encoding {
        Encoding::F32 => {
            for (i, c) in payload.chunks_exact(4).enumerate() {
                f(i, f32::from_le_bytes([c[0], c[1], c[2], c[3]]))?;
            }
        }
        Encoding::F16 => {
            for (i, c) in payload.chunks_exact(2).enumerate() {
                f(i, half::f16::from_le_bytes([c[0], c[1]]).to_f32())?;
            }
        }
        Encoding::Int8 => {
            for (r, row) in payload.chunks_exact(encoding.row_bytes(width)).enumerate() {
                let scale = f32::from_le_bytes([row[0], row[1], row[2], row[3]]);
                for (j, &q) in row[4..].iter().enumerate() {
                    f(r * width + j, f32::from(q as i8) * scale)?;
                }
            }
        }
    }
    Ok(())
}

/// Index of the first non-finite decoded value, without allocating the decoded rows.
pub fn first_non_finite(payload: &[u8], width: usize, encoding: Encoding) -> Option<usize> {
    for_each_value(payload, width, encoding, |i, v| if v.is_finite() { Ok(()) } else { Err(i) })
        .err()
}

/// Decodes whole rows of `width` values. The length must be a whole number of rows.
pub fn decode(payload: &[u8], width: usize, encoding: Encoding) -> Vec<f32> {
    let rows = payload.len() / encoding.row_bytes(width).max(1);
    let mut out = Vec::with_capacity(rows * width);
    let _ = for_each_value(payload, width, encoding, |_, v| {
        out.push(v);
        Ok::<(), ()>(())
    });
    out
}

/// Decodes `payload` holding `rows` rows of `width`, rejecting a wrong length or a non-finite
/// value (what a receiver of untrusted rows needs).
pub fn decode_checked(
    payload: &[u8],
    rows: usize,
    width: usize,
    encoding: Encoding,
) -> Result<Vec<f32>, CodecError> {
    let expected = rows * encoding.row_bytes(width);
    if payload.len() != expected {
        return Err(CodecError::Length {
            encoding: encoding.as_str(),
            len: payload.len(),
            rows,
            width,
            expected,
        });
    }
    if let Some(i) = first_non_finite(payload, width, encoding) {
        return Err(CodecError::NonFinite { row: i / width.max(1) });
    }
    Ok(decode(payload, width, encoding))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows() -> Vec<f32> {
        (0..3 * 8).map(|i| ((i as f32) * 0.37).sin() * (1 + i % 5) as f32).collect()
    }

    #[test]
    fn f32_round_trips_exactly() {
        let r = rows();
        assert_eq!(decode(&encode(&r, 8, Encoding::F32), 8, Encoding::F32), r);
    }

    #[test]
    fn lossy_encodings_stay_within_their_precision_and_have_the_documented_row_size() {
        let r = rows();
        for (enc, tol) in [(Encoding::F16, 1e-2), (Encoding::Int8, 5.0 / 127.0)] {
            let bytes = encode(&r, 8, enc);
            assert_eq!(bytes.len(), 3 * enc.row_bytes(8));
            let back = decode(&bytes, 8, enc);
            assert_eq!(back.len(), r.len());
            for (a, b) in r.iter().zip(&back) {
                assert!((a - b).abs() <= tol, "{enc:?}: {a} vs {b}");
            }
        }
    }

    #[test]
    fn checked_decoding_rejects_wrong_lengths_and_non_finite_values() {
        let bytes = encode(&rows(), 8, Encoding::F16);
        assert!(matches!(
            decode_checked(&bytes[1..], 3, 8, Encoding::F16),
            Err(CodecError::Length { .. })
        ));
        let nan = encode(&[0.0, f32::NAN], 2, Encoding::F32);
        assert_eq!(
            decode_checked(&nan, 1, 2, Encoding::F32),
            Err(CodecError::NonFinite { row: 0 })
        );
        assert_eq!("int4".parse::<Encoding>(), Err(CodecError::UnknownEncoding("int4".into())));
    }

    #[test]
    fn an_all_zero_int8_row_decodes_to_zeros() {
        let bytes = encode(&[0.0; 4], 4, Encoding::Int8);
        assert_eq!(decode(&bytes, 4, Encoding::Int8), vec![0.0; 4]);
    }

    #[test]
    fn non_finite_values_are_found_in_every_encoding() {
        let mut v = vec![0.5f32; 8];
        v[5] = f32::INFINITY;
        assert_eq!(first_non_finite(&encode(&v, 4, Encoding::F32), 4, Encoding::F32), Some(5));
        assert_eq!(first_non_finite(&encode(&v, 4, Encoding::F16), 4, Encoding::F16), Some(5));
        // Int8 values are small integers; only a non-finite scale makes them non-finite.
        let mut int8 = encode(&[0.5; 8], 4, Encoding::Int8);
        int8[8..12].copy_from_slice(&f32::NAN.to_le_bytes());
        assert_eq!(first_non_finite(&int8, 4, Encoding::Int8), Some(4));
        assert_eq!(first_non_finite(&encode(&rows(), 8, Encoding::Int8), 8, Encoding::Int8), None);
    }
}
