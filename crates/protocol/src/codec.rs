//! Hidden-state payloads on the wire: f32, f16, or int8 with one f32 scale per row, all
//! little-endian, rows back to back. The layout is the one `collm-runtime` uses in process, so an
//! edge can hand its encoded rows to the wire unchanged.

use crate::pb;

/// A payload encoding the cloud accepts. `pb::Encoding::Unspecified` has no counterpart: a chunk
/// without an encoding never gets past [`crate::ValidUpload::parse`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Encoding {
    F32,
    F16,
    Int8,
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

    /// The wire enum, for building an `UploadChunk`.
    pub fn to_wire(self) -> pb::Encoding {
        match self {
            Self::F32 => pb::Encoding::F32,
            Self::F16 => pb::Encoding::F16,
            Self::Int8 => pb::Encoding::Int8,
        }
    }

    /// The encoding named by a wire value; `None` for unspecified or unknown values.
    pub fn from_wire(value: i32) -> Option<Self> {
        match pb::Encoding::try_from(value).ok()? {
            pb::Encoding::Unspecified => None,
            pb::Encoding::F32 => Some(Self::F32),
            pb::Encoding::F16 => Some(Self::F16),
            pb::Encoding::Int8 => Some(Self::Int8),
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
pub(crate) fn first_non_finite(payload: &[u8], width: usize, encoding: Encoding) -> Option<usize> {
    for_each_value(payload, width, encoding, |i, v| if v.is_finite() { Ok(()) } else { Err(i) })
        .err()
}

/// Decodes whole rows of `width` values. The length must be a whole number of rows.
pub(crate) fn decode(payload: &[u8], width: usize, encoding: Encoding) -> Vec<f32> {
    let rows = payload.len() / encoding.row_bytes(width).max(1);
    let mut out = Vec::with_capacity(rows * width);
    let _ = for_each_value(payload, width, encoding, |_, v| {
        out.push(v);
        Ok::<(), ()>(())
    });
    out
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

    #[test]
    fn wire_values_map_both_ways_and_unspecified_is_no_encoding() {
        for enc in [Encoding::F32, Encoding::F16, Encoding::Int8] {
            assert_eq!(Encoding::from_wire(enc.to_wire() as i32), Some(enc));
        }
        assert_eq!(Encoding::from_wire(0), None);
        assert_eq!(Encoding::from_wire(99), None);
    }
}
