//! How hidden states travel from edge to cloud: f32, f16, or int8 with one f32 scale per row.

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    F32,
    #[default]
    F16,
    Int8,
}

impl std::str::FromStr for Encoding {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "f32" => Ok(Self::F32),
            "f16" => Ok(Self::F16),
            "int8" => Ok(Self::Int8),
            other => Err(Error::Invalid(format!(
                "unknown hidden-state encoding {other:?} (expected f32, f16 or int8)"
            ))),
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

/// Encodes `rows` (row-major, `width` values each).
pub fn encode(rows: &[f32], width: usize, enc: Encoding) -> Vec<u8> {
    match enc {
        Encoding::F32 => rows.iter().flat_map(|v| v.to_le_bytes()).collect(),
        Encoding::F16 => rows.iter().flat_map(|v| half::f16::from_f32(*v).to_le_bytes()).collect(),
        Encoding::Int8 => {
            let mut out = Vec::with_capacity(rows.len() / width.max(1) * (4 + width));
            for row in rows.chunks(width) {
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

/// Decodes `bytes` holding `n_rows` rows of `width`; rejects a wrong length or non-finite value.
pub fn decode(bytes: &[u8], n_rows: usize, width: usize, enc: Encoding) -> Result<Vec<f32>> {
    let expected = n_rows * enc.row_bytes(width);
    if bytes.len() != expected {
        return Err(Error::Invalid(format!(
            "{} payload of {} bytes does not hold {n_rows} rows of {width} (expected {expected} bytes)",
            enc.as_str(),
            bytes.len()
        )));
    }
    let values: Vec<f32> = match enc {
        Encoding::F32 => {
            bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
        }
        Encoding::F16 => {
            bytes.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect()
        }
        Encoding::Int8 => {
            let mut out = Vec::with_capacity(n_rows * width);
            for row in bytes.chunks_exact(4 + width) {
                let scale = f32::from_le_bytes([row[0], row[1], row[2], row[3]]);
                out.extend(row[4..].iter().map(|&q| q as i8 as f32 * scale));
            }
            out
        }
    };
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        return Err(Error::Invalid(format!(
            "hidden state row {} holds a non-finite value",
            i / width.max(1)
        )));
    }
    Ok(values)
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
        assert_eq!(decode(&encode(&r, 8, Encoding::F32), 3, 8, Encoding::F32).expect("decodes"), r);
    }

    #[test]
    fn lossy_encodings_stay_within_their_precision_and_shrink_the_payload() {
        let r = rows();
        for (enc, tol) in [(Encoding::F16, 1e-2), (Encoding::Int8, 5.0 / 127.0)] {
            let bytes = encode(&r, 8, enc);
            assert!(bytes.len() < r.len() * 4);
            let back = decode(&bytes, 3, 8, enc).expect("decodes");
            for (a, b) in r.iter().zip(&back) {
                assert!((a - b).abs() <= tol, "{enc:?}: {a} vs {b}");
            }
        }
    }

    #[test]
    fn wrong_sizes_and_non_finite_values_are_rejected() {
        let bytes = encode(&rows(), 8, Encoding::F16);
        assert!(decode(&bytes[1..], 3, 8, Encoding::F16).is_err());
        let nan = encode(&[f32::NAN, 0.0], 2, Encoding::F32);
        let err = decode(&nan, 1, 2, Encoding::F32).expect_err("NaN must be rejected");
        assert!(err.to_string().contains("non-finite"));
    }
}
