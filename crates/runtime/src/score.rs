//! Teacher-forced scoring: what the full model and every exit head predict at each position of
//! a known continuation.

use serde::Serialize;

use crate::partition::{Partition, PartitionInput};
use crate::sampling::{self, Pick};
use crate::{Error, Result};
use collm_bundle::graph::names;

#[derive(Debug, Clone, Serialize)]
pub struct Prediction {
    pub id: u32,
    pub prob: f32,
}

#[derive(Debug, Clone, Serialize)]
pub struct ExitPrediction {
    pub layer: usize,
    pub id: u32,
    pub prob: f32,
}

#[derive(Debug, Clone, Serialize)]
pub struct ScoredPosition {
    pub target: u32,
    pub full: Prediction,
    pub exits: Vec<ExitPrediction>,
}

/// Position `i` sees `prompt` and `continuation[..i]` and predicts `continuation[i]`.
pub fn score(
    edge: &mut Partition,
    cloud: &mut Partition,
    exits: &[usize],
    prompt: &[u32],
    continuation: &[u32],
) -> Result<Vec<ScoredPosition>> {
    if prompt.is_empty() || continuation.is_empty() {
        return Err(Error::Invalid("scoring needs a prompt and a continuation".into()));
    }
    let n = continuation.len();
    let mut ids = prompt.to_vec();
    ids.extend_from_slice(&continuation[..n - 1]);
    let vocab = edge.shape.vocab_size;
    let wanted: Vec<String> =
        exits.iter().map(|&l| names::exit_logits(l)).chain([names::HIDDEN.to_string()]).collect();
    let wanted: Vec<&str> = wanted.iter().map(String::as_str).collect();
    let mut edge_cache = edge.empty_cache()?;
    let mut edge_out = edge.run(&mut edge_cache, PartitionInput::Tokens(&ids), n, &wanted)?;
    let hidden = edge_out.take(names::HIDDEN).unwrap_or_default();
    let mut cloud_cache = cloud.empty_cache()?;
    let cloud_out =
        cloud.run(&mut cloud_cache, PartitionInput::Hidden(&hidden), n, &[names::LOGITS])?;
    let logits = cloud_out.get(names::LOGITS).unwrap_or_default();
    let pred = |p: Pick| Prediction { id: p.token, prob: p.prob };
    Ok((0..n)
        .map(|i| ScoredPosition {
            target: continuation[i],
            full: pred(sampling::top1(&logits[i * vocab..(i + 1) * vocab])),
            exits: exits
                .iter()
                .map(|&layer| {
                    let l = edge_out.get(&names::exit_logits(layer)).unwrap_or_default();
                    let p = sampling::top1(&l[i * vocab..(i + 1) * vocab]);
                    ExitPrediction { layer, id: p.token, prob: p.prob }
                })
                .collect(),
        })
        .collect())
}
