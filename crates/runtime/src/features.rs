//! Calibration features of one sequence: for every exit head the RMS-normalised state it reads,
//! and the full model's final state (RMS-normalised) it should predict through the LM head.

use collm_bundle::graph::names;

use crate::partition::{Partition, PartitionInput};
use crate::{Error, Result};

/// Row-major `[rows, hidden]` matrices, one input matrix per exit head (in `exits` order).
pub struct SequenceFeatures {
    pub inputs: Vec<Vec<f32>>,
    pub targets: Vec<f32>,
    pub rows: usize,
}

/// RMS-normalises each row of `rows` in place (unit gain), as the exit head does.
pub fn rms_normalize(rows: &mut [f32], width: usize, eps: f32) {
    for row in rows.chunks_mut(width) {
        let ms = row.iter().map(|v| (v * v) as f64).sum::<f64>() / width as f64;
        let inv = 1.0 / (ms + eps as f64).sqrt();
        row.iter_mut().for_each(|v| *v = (*v as f64 * inv) as f32);
    }
}

/// Runs `ids` through both partitions and keeps positions `from..ids.len()`.
pub fn sequence_features(
    edge: &mut Partition,
    cloud: &mut Partition,
    exits: &[usize],
    ids: &[u32],
    from: usize,
    eps: f32,
) -> Result<SequenceFeatures> {
    if from >= ids.len() {
        return Err(Error::Invalid("no positions to keep".into()));
    }
    let width = edge.shape.hidden_size;
    let state_names: Vec<String> = exits.iter().map(|&l| names::exit_state(l)).collect();
    let mut wanted: Vec<&str> = state_names.iter().map(String::as_str).collect();
    wanted.push(names::HIDDEN);
    let mut edge_cache = edge.empty_cache()?;
    let mut out = edge.run(&mut edge_cache, PartitionInput::Tokens(ids), 0, &wanted)?;
    let hidden = out.take(names::HIDDEN).unwrap_or_default();
    let mut cloud_cache = cloud.empty_cache()?;
    let mut cloud_out =
        cloud.run(&mut cloud_cache, PartitionInput::Hidden(&hidden), 0, &[names::FINAL_STATE])?;
    let keep = |v: Vec<f32>| v[from * width..].to_vec();
    let targets = keep(cloud_out.take(names::FINAL_STATE).unwrap_or_default());
    let inputs = state_names
        .iter()
        .map(|n| {
            let mut rows = keep(out.take(n).unwrap_or_default());
            rms_normalize(&mut rows, width, eps);
            rows
        })
        .collect();
    Ok(SequenceFeatures { inputs, targets, rows: ids.len() - from })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalised_rows_have_unit_rms() {
        let mut rows = vec![3.0, 4.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0];
        rms_normalize(&mut rows, 4, 0.0);
        for row in rows.chunks(4) {
            let ms: f32 = row.iter().map(|v| v * v).sum::<f32>() / 4.0;
            assert!((ms - 1.0).abs() < 1e-6);
        }
    }
}
