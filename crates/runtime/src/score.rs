//! Teacher-forced scoring: what the full model and every exit head predict at each position of
//! a known continuation.

use serde::Serialize;

use crate::partition::{Partition, PartitionInput};
use crate::sampling;
use crate::{Error, Result};
use collm_bundle::graph::names;

/// A model's top-1 token at a position, and how likely it finds the given token there.
#[derive(Debug, Clone, Serialize)]
pub struct Prediction {
    pub id: u32,
    pub prob: f32,
    /// Probability of the position's target token.
    pub target_prob: f32,
    /// Its natural log, kept separately: it stays finite where `target_prob` rounds to 0.
    pub target_logprob: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ExitPrediction {
    pub layer: usize,
    #[serde(flatten)]
    pub prediction: Prediction,
}

#[derive(Debug, Clone, Serialize)]
pub struct ScoredPosition {
    pub target: u32,
    pub full: Prediction,
    pub exits: Vec<ExitPrediction>,
}

impl Prediction {
    fn of(logits: &[f32], target: u32) -> Self {
        let top = sampling::top1(logits);
        let target_logprob = sampling::log_prob(logits, target);
        Self {
            id: top.token,
            prob: top.prob,
            target_prob: target_logprob.exp() as f32,
            target_logprob,
        }
    }
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
    Ok((0..n)
        .map(|i| {
            let target = continuation[i];
            let row = |l: &[f32]| Prediction::of(&l[i * vocab..(i + 1) * vocab], target);
            ScoredPosition {
                target,
                full: row(logits),
                exits: exits
                    .iter()
                    .map(|&layer| ExitPrediction {
                        layer,
                        prediction: row(edge_out
                            .get(&names::exit_logits(layer))
                            .unwrap_or_default()),
                    })
                    .collect(),
            }
        })
        .collect())
}
