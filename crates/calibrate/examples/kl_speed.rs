//! Times one KL epoch at SmolLM2-135M's size (V 49152, H 576) on random positions.
//! Usage: cargo run -p collm-calibrate --release --example kl_speed -- [POSITIONS] [BATCH]

use std::time::Instant;

use collm_calibrate::{Features, HeadWeights, KlOptions, KlProgress, Translator, fit_kl};

const VOCAB: usize = 49152;
const HIDDEN: usize = 576;

/// Deterministic values in [-scale, scale); the benchmark needs no real model.
fn noise(seed: u64, len: usize, scale: f32) -> Vec<f32> {
    let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((state >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

fn unit_rms(mut rows: Vec<f32>) -> Vec<f32> {
    for row in rows.chunks_exact_mut(HIDDEN) {
        let inv = 1.0 / (row.iter().map(|v| v * v).sum::<f32>() / HIDDEN as f32).sqrt();
        row.iter_mut().for_each(|v| *v *= inv);
    }
    rows
}

fn features(seed: u64, rows: usize) -> anyhow::Result<Features> {
    let n = unit_rms(noise(seed, rows * HIDDEN, 1.0));
    let f =
        unit_rms(n.iter().zip(noise(seed + 1, rows * HIDDEN, 0.7)).map(|(a, b)| a + b).collect());
    Ok(Features::new(HIDDEN, n, f)?)
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let positions: usize = args.next().map_or(Ok(2048), |s| s.parse())?;
    let batch: usize = args.next().map_or(Ok(128), |s| s.parse())?;
    let heldout_rows = 256;
    let head = HeadWeights {
        final_norm_gain: vec![1.0; HIDDEN],
        lm_head: noise(1, VOCAB * HIDDEN, 0.1),
        vocab: VOCAB,
        hidden: HIDDEN,
        eps: 1e-5,
    };
    let train = features(10, positions)?;
    let heldout = features(20, heldout_rows)?;
    let opts = KlOptions { epochs: 1, batch, lr: 1e-4, ..KlOptions::default() };

    let started = Instant::now();
    let mut marks = Vec::new();
    let (_, report) =
        fit_kl(&train, &heldout, &head, Translator::identity(HIDDEN), opts, &mut |p| match p {
            KlProgress::Start { .. } => marks.push(("initial held-out eval", started.elapsed())),
            KlProgress::Batch { batch, batches, .. } if batch + 1 == batches => {
                marks.push(("train epoch", started.elapsed()))
            }
            KlProgress::Epoch(_) => marks.push(("held-out eval", started.elapsed())),
            KlProgress::Batch { .. } => {}
        })?;
    let eval = marks[0].1.as_secs_f64();
    let train_s = (marks[1].1 - marks[0].1).as_secs_f64();
    let heldout_s = (marks[2].1 - marks[1].1).as_secs_f64();
    println!(
        "V {VOCAB} H {HIDDEN} batch {batch}: train epoch on {positions} positions {train_s:.2}s ({:.0} pos/s, {:.1} GFLOP/s at 3 GEMMs of 2·V·H), held-out forward {heldout_rows} positions {eval:.2}s then {heldout_s:.2}s",
        positions as f64 / train_s,
        positions as f64 * 3.0 * 2.0 * (VOCAB * HIDDEN) as f64 / train_s / 1e9,
    );
    println!("report: {}", serde_json::to_string(&report)?);
    Ok(())
}
