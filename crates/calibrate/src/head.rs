//! The exit head's forward pass over a batch: translator, final norm, LM head, and the
//! comparison with the full model's distribution at the same positions.

use crate::gemm::{self, Layout};
use crate::softmax::{RowComparison, compare_rows};
use crate::tradeoff::ExitPrediction;
use crate::{Error, Features, Result, Translator};

/// Rows per forward batch where the caller does not choose: [2·128, V] logits ≈ 50 MB at V = 49152.
pub(crate) const DEFAULT_BATCH: usize = 128;

/// The parts of the model an exit head shares with the full model's output.
#[derive(Debug, Clone, PartialEq)]
pub struct HeadWeights {
    /// g, `[hidden]`.
    pub final_norm_gain: Vec<f32>,
    /// E, `[vocab, hidden]` row-major.
    pub lm_head: Vec<f32>,
    pub vocab: usize,
    pub hidden: usize,
    pub eps: f32,
}

impl HeadWeights {
    pub fn validate(&self) -> Result<()> {
        let (v, h) = (self.vocab, self.hidden);
        if v == 0 || h == 0 || self.final_norm_gain.len() != h || self.lm_head.len() != v * h {
            return Err(Error::Shape(format!(
                "head weights: vocab {v}, hidden {h}, but {} gains and {} LM-head values",
                self.final_norm_gain.len(),
                self.lm_head.len()
            )));
        }
        if !(self.eps >= 0.0 && self.eps.is_finite()) {
            return Err(Error::Shape(format!(
                "head weights: eps must be finite and >= 0, got {}",
                self.eps
            )));
        }
        Ok(())
    }

    /// Checks that the head, a translator and a feature set agree on the hidden size.
    pub(crate) fn check_compatible(
        &self,
        translator: &Translator,
        features: &Features,
    ) -> Result<()> {
        self.validate()?;
        translator.validate()?;
        if translator.hidden != self.hidden || features.hidden() != self.hidden {
            return Err(Error::Shape(format!(
                "hidden sizes differ: head {}, translator {}, features {}",
                self.hidden,
                translator.hidden,
                features.hidden()
            )));
        }
        Ok(())
    }
}

/// Reused buffers for one batch of `rows` positions.
#[derive(Default)]
pub(crate) struct Scratch {
    /// z = n·W + b, `[rows, H]`.
    pub z: Vec<f32>,
    /// 1 / RMS(z) per row.
    pub inv_rms: Vec<f32>,
    /// Exit rows y then full-model rows, `[2·rows, H]`.
    pub y: Vec<f32>,
    /// Exit logits then full-model logits, `[2·rows, V]`; probabilities after a forward with
    /// `write_probs`.
    pub logits: Vec<f32>,
}

/// Runs the exit head on `n` and the full model's output on `f` (both `[rows, H]`), and compares
/// them row by row. With `exit_vocab` (a flag per token), the exit head can only produce the
/// flagged tokens (a shortlist head); the full model always has the whole vocabulary. Shapes
/// must already be checked.
pub(crate) fn forward(
    head: &HeadWeights,
    translator: &Translator,
    n: &[f32],
    f: &[f32],
    scratch: &mut Scratch,
    write_probs: bool,
    exit_vocab: Option<&[bool]>,
) -> Vec<RowComparison> {
    let (h, v) = (head.hidden, head.vocab);
    let rows = n.len() / h;
    let g = &head.final_norm_gain;
    scratch.z.resize(rows * h, 0.0);
    translator.apply_into(n, &mut scratch.z);
    scratch.inv_rms.clear();
    scratch.y.resize(2 * rows * h, 0.0);
    let (y_exit, y_full) = scratch.y.split_at_mut(rows * h);
    for (z, y) in scratch.z.chunks_exact(h).zip(y_exit.chunks_exact_mut(h)) {
        let inv = inv_rms(z, head.eps);
        scratch.inv_rms.push(inv);
        y.iter_mut().zip(z).zip(g).for_each(|((y, z), g)| *y = g * z * inv);
    }
    for (f, y) in f.chunks_exact(h).zip(y_full.chunks_exact_mut(h)) {
        let inv = inv_rms(f, head.eps);
        y.iter_mut().zip(f).zip(g).for_each(|((y, f), g)| *y = g * f * inv);
    }
    // One GEMM for both halves: the packed LM head is shared between them.
    scratch.logits.resize(2 * rows * v, 0.0);
    gemm::matmul(
        2 * rows,
        h,
        v,
        &scratch.y,
        Layout::RowMajor,
        &head.lm_head,
        Layout::Transposed,
        0.0,
        &mut scratch.logits,
    );
    let (lq, lp) = scratch.logits.split_at_mut(rows * v);
    if let Some(allowed) = exit_vocab {
        // Tokens the exit head cannot produce: far below any real logit, still finite.
        for row in lq.chunks_exact_mut(v) {
            row.iter_mut().zip(allowed).filter(|(_, ok)| !**ok).for_each(|(l, _)| *l = -1e30);
        }
    }
    compare_all_rows(lq, lp, v, write_probs)
}

fn inv_rms(x: &[f32], eps: f32) -> f32 {
    let ms = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
    1.0 / (ms + eps).sqrt()
}

/// Row comparisons split across the machine's cores: exponentials over [rows, V] cost about as
/// much as a GEMM if left on one core.
fn compare_all_rows(
    lq: &mut [f32],
    lp: &mut [f32],
    v: usize,
    write_probs: bool,
) -> Vec<RowComparison> {
    let rows = lq.len() / v;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(rows.max(1));
    let per_thread = rows.div_ceil(threads.max(1)).max(1);
    let mut results = vec![Vec::new(); threads];
    std::thread::scope(|s| {
        for ((q, p), out) in
            lq.chunks_mut(per_thread * v).zip(lp.chunks_mut(per_thread * v)).zip(&mut results)
        {
            s.spawn(move || {
                *out = q
                    .chunks_exact_mut(v)
                    .zip(p.chunks_exact_mut(v))
                    .map(|(q, p)| compare_rows(q, p, write_probs))
                    .collect();
            });
        }
    });
    results.into_iter().flatten().collect()
}

/// Per-position `(confidence = max q, top-1 agrees with the full model)` for one exit head over
/// a feature set, batched through the GEMM; input to [`crate::tradeoff`].
pub fn head_predictions(
    head: &HeadWeights,
    translator: &Translator,
    features: &Features,
) -> Result<Vec<ExitPrediction>> {
    predictions(head, translator, features, None)
}

/// [`head_predictions`] for an exit head whose logits cover only `shortlist` (token ids): its
/// confidence is its softmax over those tokens, its answer one of them.
pub fn shortlist_predictions(
    head: &HeadWeights,
    translator: &Translator,
    features: &Features,
    shortlist: &[u32],
) -> Result<Vec<ExitPrediction>> {
    let mut allowed = vec![false; head.vocab];
    for &t in shortlist {
        *allowed.get_mut(t as usize).ok_or_else(|| {
            Error::Shape(format!("shortlist token {t} is outside the vocabulary of {}", head.vocab))
        })? = true;
    }
    predictions(head, translator, features, Some(&allowed))
}

fn predictions(
    head: &HeadWeights,
    translator: &Translator,
    features: &Features,
    exit_vocab: Option<&[bool]>,
) -> Result<Vec<ExitPrediction>> {
    head.check_compatible(translator, features)?;
    let h = head.hidden;
    let mut scratch = Scratch::default();
    let mut out = Vec::with_capacity(features.rows());
    for (n, f) in
        features.input().chunks(DEFAULT_BATCH * h).zip(features.target().chunks(DEFAULT_BATCH * h))
    {
        out.extend(
            forward(head, translator, n, f, &mut scratch, false, exit_vocab)
                .into_iter()
                .map(|c| ExitPrediction { confidence: c.confidence, agrees: c.q_top1 == c.p_top1 }),
        );
    }
    Ok(out)
}
