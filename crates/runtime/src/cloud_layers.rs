//! The cloud's layers as a next-token step: catch up on a session's unprocessed positions as the
//! catch-up mode says (see [`crate::catch_up`]), then return the asked position's logits.

use collm_bundle::graph::names;

use crate::catch_up::{self, CatchUp, EdgeAnswered, RunKind};
use crate::partition::{KvCache, Partition, PartitionInput};
use crate::speculate::{self, VerifyPasses};
use crate::{Error, Result};

/// The cloud partition and, for `propagate` catch-up, the K/V propagation graph.
pub struct CloudLayers {
    partition: Partition,
    propagation: Option<Partition>,
    catch_up: CatchUp,
}

/// What one step computed.
#[derive(Debug, Clone, PartialEq)]
pub struct Stepped {
    /// Next-token logits of the last `logits_count` positions run (the asked one last),
    /// row-major.
    pub logits: Vec<f32>,
    /// Positions run through the cloud layers.
    pub exact: u64,
    /// Positions whose K/V were propagated from the split hidden state.
    pub propagated: u64,
}

impl CloudLayers {
    /// `propagate` needs the bundle's propagation graph (`cloud_kv.onnx`); it must cover the
    /// same layers as the partition.
    pub fn new(
        partition: Partition,
        propagation: Option<Partition>,
        catch_up: CatchUp,
    ) -> Result<Self> {
        if let Some(p) = &propagation
            && p.shape.layers != partition.shape.layers
        {
            return Err(Error::Invalid(format!(
                "the K/V propagation graph covers layers {:?} but the cloud partition {:?}",
                p.shape.layers, partition.shape.layers
            )));
        }
        let mut layers = Self { partition, propagation, catch_up: CatchUp::Exact };
        layers.set_catch_up(catch_up)?;
        Ok(layers)
    }

    pub fn catch_up(&self) -> CatchUp {
        self.catch_up
    }

    /// Switches the catch-up mode (also for comparing the two on one loaded model);
    /// `propagate` needs the propagation graph.
    pub fn set_catch_up(&mut self, catch_up: CatchUp) -> Result<()> {
        if catch_up == CatchUp::Propagate && self.propagation.is_none() {
            return Err(Error::Invalid(
                "propagate catch-up needs the bundle's cloud K/V propagation graph (cloud_kv.onnx), which this bundle lacks: export it again with this version of collm, or catch up exactly".into(),
            ));
        }
        self.catch_up = catch_up;
        Ok(())
    }

    pub fn partition(&self) -> &Partition {
        &self.partition
    }

    /// The cloud partition itself, for whole-sequence passes (scoring, calibration).
    pub fn partition_mut(&mut self) -> &mut Partition {
        &mut self.partition
    }

    pub fn empty_cache(&self) -> Result<KvCache> {
        self.partition.empty_cache()
    }

    /// How far, at most, one batched pass over a few positions lands from running them one at
    /// a time, in any logit: rounding (~1e-5) when the layers compute in float, far more
    /// (~1 on SmolLM2) when quantized weights multiply int8-quantized activations
    /// (MatMulNBits `accuracy_level` 4), whose one-position path quantizes differently.
    /// Probed on fixed pseudo-random rows from an empty cache.
    pub fn batch_rounding(&mut self) -> Result<f32> {
        const POSITIONS: usize = 8;
        let width = self.partition.shape.hidden_size;
        let rows: Vec<f32> = (0..(POSITIONS * width) as u64)
            .map(|i| (4.0 * crate::draw::uniform(0x5eed, i) - 2.0) as f32)
            .collect();
        let no_edge = EdgeAnswered::default();
        let mut cache = self.empty_cache()?;
        let batched = self.step(&mut cache, &rows, &no_edge, POSITIONS)?.logits;
        let mut cache = self.empty_cache()?;
        let singly = self.step_one_by_one(&mut cache, &rows, &no_edge, POSITIONS)?.logits;
        Ok(batched.iter().zip(&singly).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max))
    }

    /// What `wanted` verification comes to on these layers, and the rounding bound a checked
    /// verdict allows for: [`speculate::BATCH_ROUNDING`], or eight times the probed
    /// [`CloudLayers::batch_rounding`] if that is more. Where even that would exceed
    /// [`speculate::MAX_CHECKED_ROUNDING`], batched passes compute something else than
    /// one-position ones (not rounding) and nearly every verdict would be re-run: verifying
    /// runs one position at a time instead (the answers stay the full model's, the saving is
    /// lost). Layers that multiply int8-quantized activations always verify one position at a
    /// time: a probe on a few positions can miss how their rounding steps amplify a batched
    /// pass's float rounding (measured: probe 1e-4, real drafts 0.76 on SmolLM2's Q4_1).
    pub fn verify_passes(&mut self, wanted: VerifyPasses) -> Result<(VerifyPasses, f32)> {
        if wanted != VerifyPasses::Checked {
            return Ok((wanted, speculate::BATCH_ROUNDING));
        }
        let bound = speculate::BATCH_ROUNDING.max(8.0 * self.batch_rounding()?);
        if bound > speculate::MAX_CHECKED_ROUNDING || self.partition.int8_activations() {
            return Ok((VerifyPasses::Singly, bound));
        }
        Ok((VerifyPasses::Checked, bound))
    }

    /// As [`CloudLayers::step`], but the positions after the first whose logits are asked run
    /// one at a time, as decoding one token at a time runs them. Batched runs round
    /// differently in the last bits, enough to swap two tokens the model holds equally likely;
    /// run like this, a verified draft gets exactly the logits the full model decoding token by
    /// token computes (it catches up on the positions before the draft in one pass too).
    pub fn step_one_by_one(
        &mut self,
        cache: &mut KvCache,
        rows: &[f32],
        edge: &EdgeAnswered,
        logits_count: usize,
    ) -> Result<Stepped> {
        let width = self.partition.shape.hidden_size.max(1);
        let n = rows.len() / width;
        let singles = logits_count.clamp(1, n.max(1)) - 1;
        let head = n - singles;
        let mut stepped = self.step(cache, &rows[..head * width], edge, 1)?;
        for i in head..n {
            let one = self.step(cache, &rows[i * width..(i + 1) * width], edge, 1)?;
            stepped.logits.extend_from_slice(&one.logits);
            stepped.exact += one.exact;
            stepped.propagated += one.propagated;
        }
        Ok(stepped)
    }

    /// Extends `cache` with `rows` (the split hidden states of positions `cache.len()..=after`,
    /// decoded) and returns the logits of the last `logits_count` of them (a verified draft
    /// needs one per draft token and one after; those positions always run exactly, in the
    /// same batched pass).
    pub fn step(
        &mut self,
        cache: &mut KvCache,
        rows: &[f32],
        edge: &EdgeAnswered,
        logits_count: usize,
    ) -> Result<Stepped> {
        let width = self.partition.shape.hidden_size.max(1);
        let n = (rows.len() / width) as u64;
        if n == 0 || !rows.len().is_multiple_of(width) {
            return Err(Error::Invalid(format!(
                "a cloud step needs whole rows of {width} values, got {}",
                rows.len()
            )));
        }
        let from = cache.len() as u64;
        let logits_count = logits_count.clamp(1, n as usize);
        let runs = catch_up::plan(self.catch_up, from, from + n - 1, logits_count as u64, edge);
        let (exact, propagated) = catch_up::counts(&runs);
        let mut logits = Vec::new();
        for (i, run) in runs.iter().enumerate() {
            let slice = &rows[((run.positions.start - from) as usize) * width
                ..((run.positions.end - from) as usize) * width];
            let last = i + 1 == runs.len();
            match run.kind {
                RunKind::Exact => {
                    let wanted: &[&str] = if last { &[names::LOGITS] } else { &[] };
                    let mut out = self.partition.run(
                        cache,
                        PartitionInput::Hidden(slice),
                        if last { logits_count } else { 0 },
                        wanted,
                    )?;
                    if last {
                        logits = out.take(names::LOGITS).unwrap_or_default();
                    }
                }
                RunKind::Propagated => {
                    let graph = self.propagation.as_mut().ok_or_else(|| {
                        Error::Invalid("propagated positions without a propagation graph".into())
                    })?;
                    graph.run(cache, PartitionInput::Hidden(slice), 0, &[])?;
                }
            }
        }
        Ok(Stepped { logits, exact, propagated })
    }
}
