//! The token-embedding lookup of the edge graph. Block-quantized tables stay quantized
//! (`com.microsoft` GatherBlockQuantized dequantizes only the rows looked up), so the edge keeps
//! the source's 8- or 4-bit codes in memory instead of a dense f32 table (113 MB for SmolLM2's
//! 49152 × 576); tables it cannot express are stored dense for `Gather`.

use collm_checkpoint::Weight;
use collm_onnx::{Attr, GraphBuilder, TensorProto};

use super::layers::MS_DOMAIN;

/// How the edge graph stores the embedding table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmbeddingStorage {
    /// f32 `[vocab, hidden]` for `Gather`.
    Dense,
    /// The source's codes, `bits` per value in blocks of `block`, with f32 scales and integer
    /// zero points (none = the midpoint).
    Blocks { bits: u8, block: usize },
}

impl EmbeddingStorage {
    /// What the export report says.
    pub fn describe(self) -> String {
        match self {
            Self::Dense => "float32 Gather table (token embedding)".to_string(),
            Self::Blocks { bits, block } => format!(
                "GatherBlockQuantized {bits}-bit, blocks of {block} (token embedding, dequantized per looked-up row)"
            ),
        }
    }

    /// Bytes of the stored table.
    pub fn bytes(self, w: &Weight) -> u64 {
        match self {
            Self::Dense => (w.rows() * w.cols() * 4) as u64,
            Self::Blocks { .. } => w.nbytes() as u64,
        }
    }
}

/// The storage `w` gets: quantized when GatherBlockQuantized reads its layout as is (whole
/// blocks, a power-of-two block of at least 16, 4 or 8 bits, zero points that are integer codes).
pub fn storage(w: &Weight) -> EmbeddingStorage {
    match w {
        Weight::Blocks { cols, bits, block, zero_points, .. }
            if (*bits == 4 || *bits == 8)
                && *block >= 16
                && block.is_power_of_two()
                && cols.is_multiple_of(*block)
                && zero_points.as_ref().is_none_or(|z| integer_codes(z, *bits).is_some()) =>
        {
            EmbeddingStorage::Blocks { bits: *bits, block: *block }
        }
        _ => EmbeddingStorage::Dense,
    }
}

/// Float zero points as `bits`-bit codes packed as GatherBlockQuantized reads them (per row,
/// two 4-bit codes per byte, low nibble first), when every one is an integer in range.
fn integer_codes(zp: &[f32], bits: u8) -> Option<Vec<u8>> {
    let max = f32::from(u8::MAX >> (8 - bits));
    zp.iter().map(|&z| (z.fract() == 0.0 && (0.0..=max).contains(&z)).then_some(z as u8)).collect()
}

/// Emits the lookup of `ids` (`[1, seq]` int64) and returns `[1, seq, hidden]`.
pub fn lookup(g: &mut GraphBuilder, w: &Weight, ids: &str) -> String {
    match (storage(w), w) {
        (
            EmbeddingStorage::Blocks { bits, block },
            Weight::Blocks { rows, cols, packed, scales, zero_points, .. },
        ) => {
            let n_blocks = cols / block;
            let row_bytes = cols * bits as usize / 8;
            let data = g.initializer(TensorProto::u8(
                "embedding.qweight",
                &[*rows as i64, row_bytes as i64],
                packed,
            ));
            let scales = g.initializer(TensorProto::f32(
                "embedding.scales",
                &[*rows as i64, n_blocks as i64],
                scales,
            ));
            let mut inputs = vec![data, ids.to_string(), scales];
            if let Some(codes) = zero_points.as_ref().and_then(|z| integer_codes(z, bits)) {
                let (packed_zp, width) = pack_zero_points(&codes, *rows, n_blocks, bits);
                inputs.push(g.initializer(TensorProto::u8(
                    "embedding.zero_points",
                    &[*rows as i64, width as i64],
                    &packed_zp,
                )));
            }
            let refs: Vec<&str> = inputs.iter().map(String::as_str).collect();
            g.op_multi(
                "GatherBlockQuantized",
                MS_DOMAIN,
                &refs,
                1,
                vec![
                    ("bits", Attr::Int(i64::from(bits))),
                    ("block_size", Attr::Int(block as i64)),
                    ("gather_axis", Attr::Int(0)),
                    ("quantize_axis", Attr::Int(1)),
                ],
            )
            .into_iter()
            .next()
            .unwrap_or_default()
        }
        _ => {
            let table = match w {
                Weight::Dense { data, .. } => data.clone(),
                blocks => blocks.to_dense(),
            };
            let table = g.initializer(TensorProto::f32(
                "embedding",
                &[w.rows() as i64, w.cols() as i64],
                &table,
            ));
            g.op("Gather", &[&table, ids], vec![("axis", Attr::Int(0))])
        }
    }
}

/// Zero-point codes `[rows, n_blocks]` packed per row: one byte each at 8 bits, two per byte
/// (low nibble first) at 4 bits. Returns the bytes and the packed row width.
fn pack_zero_points(codes: &[u8], rows: usize, n_blocks: usize, bits: u8) -> (Vec<u8>, usize) {
    if bits == 8 {
        return (codes.to_vec(), n_blocks);
    }
    let width = n_blocks.div_ceil(2);
    let mut out = vec![0u8; rows * width];
    for r in 0..rows {
        for b in 0..n_blocks {
            out[r * width + b / 2] |= codes[r * n_blocks + b] << (4 * (b % 2));
        }
    }
    (out, width)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blocks(bits: u8, zero_points: Option<Vec<f32>>) -> Weight {
        Weight::Blocks {
            rows: 2,
            cols: 64,
            bits,
            block: 32,
            packed: vec![0; 2 * 64 * bits as usize / 8],
            scales: vec![1.0; 4],
            zero_points,
        }
    }

    #[test]
    fn quantized_tables_stay_quantized_unless_zero_points_are_not_codes() {
        assert_eq!(storage(&blocks(8, None)), EmbeddingStorage::Blocks { bits: 8, block: 32 });
        assert_eq!(
            storage(&blocks(4, Some(vec![8.0, 3.0, 15.0, 0.0]))),
            EmbeddingStorage::Blocks { bits: 4, block: 32 }
        );
        assert_eq!(storage(&blocks(4, Some(vec![8.5, 3.0, 15.0, 0.0]))), EmbeddingStorage::Dense);
        assert_eq!(storage(&blocks(4, Some(vec![16.0, 3.0, 15.0, 0.0]))), EmbeddingStorage::Dense);
        let dense = Weight::Dense { rows: 1, cols: 2, data: vec![0.0, 1.0] };
        assert_eq!(storage(&dense), EmbeddingStorage::Dense);
    }

    #[test]
    fn four_bit_zero_points_pack_low_nibble_first() {
        let (packed, width) = pack_zero_points(&[1, 2, 3, 4, 5, 6], 2, 3, 4);
        assert_eq!(width, 2);
        assert_eq!(packed, vec![0x21, 0x03, 0x54, 0x06]);
    }
}
