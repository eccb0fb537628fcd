//! Fine-tunes an exit translator so the exit head's distribution matches the full model's:
//! mean KL(p_full || q_exit) over positions, hand-written gradients, Adam, early stopping on a
//! held-out set.

use serde::{Deserialize, Serialize};

use crate::adam::Adam;
use crate::gemm::{self, Layout};
use crate::head::{Scratch, forward};
use crate::rng::SplitMix64;
use crate::{Error, Features, HeadWeights, Result, Translator};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KlOptions {
    /// Upper bound on passes over the training set.
    pub epochs: usize,
    /// Positions per optimiser step (and per GEMM batch).
    pub batch: usize,
    /// Adam step size.
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    /// Stop after this many epochs in a row without a better held-out KL.
    pub patience: usize,
    /// Seeds the per-epoch shuffle of the training positions.
    pub seed: u64,
}

impl Default for KlOptions {
    fn default() -> Self {
        Self { epochs: 8, batch: 128, lr: 1e-4, beta1: 0.9, beta2: 0.999, patience: 2, seed: 0 }
    }
}

/// One finished epoch. `heldout_agreement` is the share of held-out positions where the exit
/// head's top-1 equals the full model's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KlEpoch {
    pub epoch: usize,
    /// Mean of the per-batch training KL during the epoch (weights moving).
    pub train_kl: f32,
    pub heldout_kl: f32,
    pub heldout_agreement: f32,
}

#[derive(Debug, Clone, PartialEq)]
pub enum KlProgress {
    /// Held-out KL and agreement of the starting translator.
    Start {
        heldout_kl: f32,
        heldout_agreement: f32,
    },
    Batch {
        epoch: usize,
        batch: usize,
        batches: usize,
        kl: f32,
    },
    Epoch(KlEpoch),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KlReport {
    pub initial_heldout_kl: f32,
    pub initial_heldout_agreement: f32,
    pub epochs: Vec<KlEpoch>,
    /// The epoch whose weights were kept; 0 means the starting translator was never beaten.
    pub best_epoch: usize,
    pub best_heldout_kl: f32,
    pub stopped_early: bool,
}

/// Gradient of the mean batch KL with respect to the translator.
pub(crate) struct Gradient {
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
    dz: Vec<f32>,
}

impl Gradient {
    pub(crate) fn new(hidden: usize) -> Self {
        Self { weight: vec![0.0; hidden * hidden], bias: vec![0.0; hidden], dz: Vec::new() }
    }
}

/// Minimises mean KL(p_full || q_exit) over `train`, starting from `init`, and returns the
/// translator with the best held-out KL (the start included) plus the per-epoch record.
pub fn fit_kl(
    train: &Features,
    heldout: &Features,
    head: &HeadWeights,
    init: Translator,
    opts: KlOptions,
    progress: &mut dyn FnMut(KlProgress),
) -> Result<(Translator, KlReport)> {
    head.check_compatible(&init, train)?;
    head.check_compatible(&init, heldout)?;
    if train.is_empty() {
        return Err(Error::Empty("training"));
    }
    if heldout.is_empty() {
        return Err(Error::Empty("held-out"));
    }
    if opts.batch == 0 || !(opts.lr > 0.0 && opts.lr.is_finite()) {
        return Err(Error::Shape(format!("KL options need batch > 0 and lr > 0, got {opts:?}")));
    }
    let h = head.hidden;
    let mut scratch = Scratch::default();
    let (initial_kl, initial_agreement) = evaluate(head, &init, heldout, opts.batch, &mut scratch);
    progress(KlProgress::Start { heldout_kl: initial_kl, heldout_agreement: initial_agreement });

    let mut report = KlReport {
        initial_heldout_kl: initial_kl,
        initial_heldout_agreement: initial_agreement,
        epochs: Vec::new(),
        best_epoch: 0,
        best_heldout_kl: initial_kl,
        stopped_early: false,
    };
    let mut best = init.clone();
    let mut current = init;
    let mut adam_w = Adam::new(h * h, opts.lr, opts.beta1, opts.beta2);
    let mut adam_b = Adam::new(h, opts.lr, opts.beta1, opts.beta2);
    let mut grad = Gradient::new(h);
    let mut order: Vec<usize> = (0..train.rows()).collect();
    let (mut n_batch, mut f_batch) = (Vec::new(), Vec::new());
    let batches = train.rows().div_ceil(opts.batch);
    let mut epochs_without_gain = 0;

    for epoch in 1..=opts.epochs {
        SplitMix64::new(opts.seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9)).shuffle(&mut order);
        let mut kl_sum = 0.0f64;
        for (batch, rows) in order.chunks(opts.batch).enumerate() {
            train.gather(rows, &mut n_batch, &mut f_batch);
            let kl =
                batch_loss_and_grad(head, &current, &n_batch, &f_batch, &mut scratch, &mut grad);
            adam_w.update(&mut current.weight, &grad.weight);
            adam_b.update(&mut current.bias, &grad.bias);
            kl_sum += kl * rows.len() as f64;
            progress(KlProgress::Batch { epoch, batch, batches, kl: kl as f32 });
        }
        let (heldout_kl, heldout_agreement) =
            evaluate(head, &current, heldout, opts.batch, &mut scratch);
        let record = KlEpoch {
            epoch,
            train_kl: (kl_sum / train.rows() as f64) as f32,
            heldout_kl,
            heldout_agreement,
        };
        progress(KlProgress::Epoch(record.clone()));
        report.epochs.push(record);
        if heldout_kl < report.best_heldout_kl {
            report.best_heldout_kl = heldout_kl;
            report.best_epoch = epoch;
            best.clone_from(&current);
            epochs_without_gain = 0;
        } else {
            epochs_without_gain += 1;
            if epochs_without_gain >= opts.patience.max(1) {
                report.stopped_early = epoch < opts.epochs;
                break;
            }
        }
    }
    Ok((best, report))
}

/// Mean KL and top-1 agreement over a feature set, forward only.
fn evaluate(
    head: &HeadWeights,
    translator: &Translator,
    features: &Features,
    batch: usize,
    scratch: &mut Scratch,
) -> (f32, f32) {
    let h = head.hidden;
    let (mut kl, mut agree) = (0.0f64, 0usize);
    for (n, f) in features.input().chunks(batch * h).zip(features.target().chunks(batch * h)) {
        for c in forward(head, translator, n, f, scratch, false, None) {
            kl += c.kl;
            agree += usize::from(c.q_top1 == c.p_top1);
        }
    }
    let rows = features.rows() as f64;
    ((kl / rows) as f32, (agree as f64 / rows) as f32)
}

/// Mean KL over the batch rows `n`/`f`, and its gradient with respect to W and b in `grad`.
pub(crate) fn batch_loss_and_grad(
    head: &HeadWeights,
    translator: &Translator,
    n: &[f32],
    f: &[f32],
    scratch: &mut Scratch,
    grad: &mut Gradient,
) -> f64 {
    let (h, v) = (head.hidden, head.vocab);
    let rows = n.len() / h;
    let comparisons = forward(head, translator, n, f, scratch, true, None);
    let loss = comparisons.iter().map(|c| c.kl).sum::<f64>() / rows as f64;

    // dL/dlogits = (q − p) / rows, written over q.
    let scale = 1.0 / rows as f32;
    let (q, p) = scratch.logits.split_at_mut(rows * v);
    q.iter_mut().zip(p.iter()).for_each(|(q, p)| *q = (*q - p) * scale);
    // dL/dy = dlogits · E, into the (now unused) full-model half of y.
    let dy = &mut scratch.y[rows * h..];
    gemm::matmul(rows, v, h, q, Layout::RowMajor, &head.lm_head, Layout::RowMajor, 0.0, dy);

    // Back through y = g ⊙ z / r, r = sqrt(mean(z²) + eps).
    let g = &head.final_norm_gain;
    grad.dz.resize(rows * h, 0.0);
    for (((dz, dy), z), &inv_r) in grad
        .dz
        .chunks_exact_mut(h)
        .zip(dy.chunks_exact(h))
        .zip(scratch.z.chunks_exact(h))
        .zip(&scratch.inv_rms)
    {
        let gdy_z: f32 = g.iter().zip(dy).zip(z).map(|((g, dy), z)| g * dy * z).sum();
        let coupling = gdy_z * inv_r * inv_r * inv_r / h as f32;
        for j in 0..h {
            dz[j] = g[j] * dy[j] * inv_r - z[j] * coupling;
        }
    }
    gemm::matmul(
        h,
        rows,
        h,
        n,
        Layout::Transposed,
        &grad.dz,
        Layout::RowMajor,
        0.0,
        &mut grad.weight,
    );
    grad.bias.iter_mut().for_each(|b| *b = 0.0);
    for dz in grad.dz.chunks_exact(h) {
        grad.bias.iter_mut().zip(dz).for_each(|(b, d)| *b += d);
    }
    loss
}

#[cfg(test)]
mod tests;
