//! What `collm export` did with each source tensor type: how the bundle stores its matrices,
//! whether that is exact, and the bytes before and after.

use std::collections::BTreeMap;

use collm_checkpoint::{Checkpoint, Weight};
use serde::{Deserialize, Serialize};

use crate::graph::{GraphOptions, q4_1};

/// Every matrix of one source type that the bundle stores the same way.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WeightMapping {
    /// llama.cpp's type name (`Q4_K`) or safetensors dtype (`BF16`); `F32` for checkpoints
    /// built in memory.
    pub source_type: String,
    pub matrices: usize,
    /// Bytes of these matrices in the source file.
    pub source_bytes: u64,
    /// How the bundle stores them, e.g. `MatMulNBits 4-bit, blocks of 32, float zero points`.
    pub stored_as: String,
    /// `exact` when every value is the source's (codes repacked or widened), else how the
    /// values changed.
    pub conversion: String,
    /// Bytes of one stored copy (packed codes, f32 scales and zero-point offsets, or f32).
    pub bundle_bytes: u64,
}

fn stored_as(w: &Weight, on_kernel: bool) -> String {
    if on_kernel {
        return format!("{}, llama.cpp's Q4_1 blocks", q4_1::OP);
    }
    match w {
        Weight::Dense { .. } => "float32 MatMul".to_string(),
        Weight::Blocks { bits, block, zero_points, .. } => format!(
            "MatMulNBits {bits}-bit, blocks of {block}{}",
            if zero_points.is_some() { ", float zero points" } else { "" }
        ),
    }
}

/// The source of every matrix of `ckpt` before conversion: `(key, type, bytes)`.
pub fn source_types(ckpt: &Checkpoint) -> Vec<(String, String, u64)> {
    ckpt.matrices()
        .into_iter()
        .map(|(key, w)| {
            let (ty, bytes) = match ckpt.sources.get(&key) {
                Some(s) => (s.ty.clone(), s.bytes),
                None => ("F32".to_string(), (w.rows() * w.cols() * 4) as u64),
            };
            (key, ty, bytes)
        })
        .collect()
}

/// Groups the converted checkpoint's matrices by source type and storage. `sources` comes from
/// [`source_types`] before conversion; `requantized` names the matrices whose values the
/// conversion changed.
pub fn weight_mappings(
    ckpt: &Checkpoint,
    sources: &[(String, String, u64)],
    requantized: &dyn Fn(&str) -> Option<&'static str>,
    opts: &GraphOptions,
) -> Vec<WeightMapping> {
    let stored: BTreeMap<String, &Weight> = ckpt.matrices().into_iter().collect();
    let mut rows: BTreeMap<(String, String, String), WeightMapping> = BTreeMap::new();
    for (key, ty, bytes) in sources {
        // A tied LM head is the embedding: it adds no bytes of its own to the source.
        let tied = key == "lm_head" && ckpt.config.tied_embeddings;
        let Some(w) = stored.get(key) else { continue };
        let on_kernel = q4_1::runs_on_kernel(w, opts);
        let how = match key.as_str() {
            "embedding" => crate::graph::embedding::storage(w).describe(),
            "lm_head" if tied => {
                format!("{} (LM head, tied to the embedding)", stored_as(w, on_kernel))
            }
            "lm_head" => format!("{} (LM head)", stored_as(w, on_kernel)),
            _ => stored_as(w, on_kernel),
        };
        let bundle_bytes = match key.as_str() {
            "embedding" => crate::graph::embedding::storage(w).bytes(w),
            _ if on_kernel => (w.rows() * w.cols() / q4_1::BLOCK * q4_1::BLOCK_BYTES) as u64,
            _ => w.nbytes() as u64,
        };
        let conversion = requantized(key).unwrap_or("exact").to_string();
        let row = rows.entry((ty.clone(), how.clone(), conversion.clone())).or_insert_with(|| {
            WeightMapping {
                source_type: ty.clone(),
                matrices: 0,
                source_bytes: 0,
                stored_as: how,
                conversion,
                bundle_bytes: 0,
            }
        });
        row.matrices += 1;
        row.source_bytes += if tied { 0 } else { *bytes };
        row.bundle_bytes += bundle_bytes;
    }
    rows.into_values().collect()
}

/// One line per mapping plus a total, for `collm export` to print.
pub fn describe(mappings: &[WeightMapping]) -> Vec<String> {
    let mb = |b: u64| format!("{:.1} MB", b as f64 / 1e6);
    let mut lines: Vec<String> = mappings
        .iter()
        .map(|m| {
            format!(
                "{:<6} {:>4} matrices {:>9} → {} ({}): {}",
                m.source_type,
                m.matrices,
                mb(m.source_bytes),
                m.stored_as,
                m.conversion,
                mb(m.bundle_bytes)
            )
        })
        .collect();
    let (src, dst) =
        mappings.iter().fold((0, 0), |(s, d), m| (s + m.source_bytes, d + m.bundle_bytes));
    lines.push(format!("total {:>24} → {}", mb(src), mb(dst)));
    lines
}
