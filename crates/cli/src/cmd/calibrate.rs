//! `collm calibrate`: collects exit-head features on ShareGPT prompts answered by the model
//! itself, fits each head's translator (least squares, then KL to the full model), and stores
//! the translators and the held-out trade-off table in the bundle.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use collm_bundle::calibration::{FittedExit, read_head, store_exits};
use collm_bundle::manifest::{ExitCalibration, TargetThreshold, TradeoffRow};
use collm_calibrate::{
    ExitPrediction, Features, HeadWeights, KlOptions, KlProgress, Translator, agreement_thresholds,
    fit_kl, fit_least_squares, head_predictions, tradeoff_rows,
};
use collm_runtime::features::sequence_features;
use collm_runtime::text::ChatMessage;
use collm_runtime::transport::CloudTransport;
use collm_runtime::{
    Encoding, ExitPolicy, GenerateOptions, Mode, SamplingParams, SplitModel,
    transport::InProcessCloud,
};

#[derive(clap::Args)]
pub struct Args {
    /// The bundle directory (`collm export` wrote it).
    #[arg(long)]
    bundle: PathBuf,
    /// ShareGPT JSON (default: $COLLM_CACHE/data/ShareGPT_V3_unfiltered_cleaned_split.json).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Training prompts (the first ones of the file).
    #[arg(long, default_value_t = 512)]
    prompts: usize,
    /// Held-out prompts (the ones after the training prompts).
    #[arg(long, default_value_t = 64)]
    heldout: usize,
    /// Greedy tokens the model writes after each prompt.
    #[arg(long, default_value_t = 24)]
    new_tokens: usize,
    /// Prompt positions (before the answer) that also become training positions.
    #[arg(long, default_value_t = 16)]
    prompt_positions: usize,
    /// Longest prompt kept, in characters of the user message.
    #[arg(long, default_value_t = 400)]
    max_chars: usize,
    /// least-squares | kl
    #[arg(long, default_value = "kl")]
    method: String,
    /// Passes over the training data of the KL fit.
    #[arg(long, default_value_t = 6)]
    epochs: usize,
    /// Learning rate of the KL fit.
    #[arg(long, default_value_t = 1e-4)]
    lr: f32,
    /// Pull of the least-squares fit towards the identity (the uncalibrated head). Features are
    /// unit-RMS, so this compares with the number of training positions: strong on a small
    /// sample, negligible on a large one.
    #[arg(long, default_value_t = 1000.0)]
    ridge: f64,
}

struct Collected {
    /// Per exit head, the normalised states; shared targets.
    inputs: Vec<Vec<f32>>,
    targets: Vec<f32>,
}

pub fn run(a: Args) -> Result<()> {
    if a.method != "kl" && a.method != "least-squares" {
        bail!("unknown --method {:?} (expected kl or least-squares)", a.method);
    }
    let data = a.data.clone().unwrap_or_else(|| {
        collm_runtime::ort_env::cache_dir().join("data/ShareGPT_V3_unfiltered_cleaned_split.json")
    });
    let prompts = collm_calibrate::first_prompts(&data, 0, a.prompts + a.heldout, a.max_chars)
        .with_context(|| format!("cannot read ShareGPT prompts from {}", data.display()))?;
    if prompts.len() < a.prompts + a.heldout {
        bail!("{} holds only {} usable prompts", data.display(), prompts.len());
    }
    let mut model = SplitModel::open(&a.bundle, true)?;
    let cfg = model.manifest.config.clone();
    let exits = model.exit_layers();
    let mut cloud =
        model.take_in_process_cloud(collm_runtime::CatchUp::Exact)?.context("cloud partition")?;
    let started = Instant::now();
    let (train, heldout) = collect(&mut model, &mut cloud, &exits, &prompts, &a)?;
    eprintln!(
        "collected {} training and {} held-out positions in {:.0} s",
        train.targets.len() / cfg.hidden_size,
        heldout.targets.len() / cfg.hidden_size,
        started.elapsed().as_secs_f64()
    );

    let cloud_model = read_onnx(&a.bundle.join(&model.manifest.cloud.file))?;
    let head = read_head(&cloud_model, cfg.vocab_size, cfg.hidden_size)?;
    drop(cloud_model);
    let head = HeadWeights {
        final_norm_gain: head.final_norm,
        lm_head: head.lm_head,
        vocab: cfg.vocab_size,
        hidden: cfg.hidden_size,
        eps: cfg.rms_eps,
    };

    let mut fitted = vec![];
    let mut report = String::new();
    for (i, &layer) in exits.iter().enumerate() {
        let h = cfg.hidden_size;
        let tr = Features::new(h, train.inputs[i].clone(), train.targets.clone())?;
        let ho = Features::new(h, heldout.inputs[i].clone(), heldout.targets.clone())?;
        let identity = head_predictions(&head, &Translator::identity(h), &ho)?;
        let ls = fit_least_squares(tr.input(), tr.target(), h, a.ridge)?;
        let ls_pred = head_predictions(&head, &ls, &ho)?;
        let (translator, method) = if a.method == "kl" {
            let opts = KlOptions { epochs: a.epochs, lr: a.lr, ..KlOptions::default() };
            let (t, kl) = fit_kl(&tr, &ho, &head, ls, opts, &mut |p| {
                if let KlProgress::Epoch(e) = p {
                    eprintln!(
                        "exit {layer}: epoch {} train KL {:.3}, held-out KL {:.3}, agreement {:.3}",
                        e.epoch, e.train_kl, e.heldout_kl, e.heldout_agreement
                    );
                }
            })?;
            eprintln!(
                "exit {layer}: best epoch {} (held-out KL {:.3})",
                kl.best_epoch, kl.best_heldout_kl
            );
            (t, "kl")
        } else {
            (ls, "least-squares")
        };
        let pred = head_predictions(&head, &translator, &ho)?;
        let rows: Vec<TradeoffRow> = tradeoff_rows(&pred)
            .into_iter()
            .map(|r| TradeoffRow {
                theta: r.theta,
                exit_share: r.exit_share,
                agreement: r.agreement,
            })
            .collect();
        let thresholds: Vec<TargetThreshold> = agreement_thresholds(&pred)
            .into_iter()
            .map(|t| TargetThreshold { agreement: t.agreement, theta: t.theta })
            .collect();
        report.push_str(&table(layer, &identity, &ls_pred, &pred, &rows, &thresholds));
        fitted.push(FittedExit {
            layer,
            weight: translator.weight,
            bias: translator.bias,
            calibration: ExitCalibration {
                method: method.to_string(),
                train_positions: tr.rows(),
                heldout_positions: ho.rows(),
                agreement_logit_lens: agreement(&identity),
                agreement_least_squares: agreement(&ls_pred),
                agreement: agreement(&pred),
                tradeoff: rows,
                thresholds,
            },
        });
    }
    let mut manifest = model.manifest.clone();
    drop(model);
    store_exits(&a.bundle, &mut manifest, fitted)?;
    let header = format!(
        "# Exit-head calibration\n\n{} training prompts, {} held-out prompts from ShareGPT, {} greedy tokens each \
         (+{} prompt positions), method {}.\n\n",
        a.prompts, a.heldout, a.new_tokens, a.prompt_positions, a.method
    );
    std::fs::write(a.bundle.join("calibration.md"), format!("{header}{report}"))?;
    println!("{header}{report}");
    Ok(())
}

fn read_onnx(path: &std::path::Path) -> Result<collm_bundle::onnx::Model> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(collm_bundle::onnx::decode(&bytes)?)
}

/// Greedy answers for every prompt, then the features of prompt tail + answer.
fn collect(
    model: &mut SplitModel,
    cloud: &mut InProcessCloud,
    exits: &[usize],
    prompts: &[String],
    a: &Args,
) -> Result<(Collected, Collected)> {
    let opts = GenerateOptions {
        max_tokens: a.new_tokens,
        mode: Mode::Full,
        policy: ExitPolicy::never(&model.manifest),
        sampling: SamplingParams::default(),
        seed: 0,
        encoding: Encoding::F32,
        stop_ids: model.text.stop_ids().to_vec(),
        adjustment: Default::default(),
        top_k: 0,
    };
    let new = || Collected { inputs: vec![vec![]; exits.len()], targets: vec![] };
    let (mut train, mut heldout) = (new(), new());
    let started = std::time::Instant::now();
    let eps = model.manifest.config.rms_eps;
    let context = model.manifest.config.max_position;
    let mut skipped = 0;
    for (i, prompt) in prompts.iter().enumerate() {
        let ids = model
            .text
            .encode_chat(&[ChatMessage { role: "user".into(), content: prompt.clone() }])?;
        if ids.len() + a.new_tokens >= context {
            skipped += 1;
            continue;
        }
        let answer = collm_runtime::generate(
            &mut model.edge,
            exits,
            Some(cloud as &mut dyn CloudTransport),
            &ids,
            &opts,
            &mut |_| {},
        )?;
        let mut seq = ids.clone();
        seq.extend_from_slice(&answer.tokens);
        let from = ids.len().saturating_sub(a.prompt_positions).max(1);
        let f = sequence_features(&mut model.edge, cloud.partition_mut(), exits, &seq, from, eps)?;
        let dest = if i < a.prompts { &mut train } else { &mut heldout };
        for (d, s) in dest.inputs.iter_mut().zip(f.inputs) {
            d.extend(s);
        }
        dest.targets.extend(f.targets);
        if (i + 1) % 32 == 0 {
            let (done, all) = (i + 1, prompts.len());
            let spent = started.elapsed().as_secs_f64();
            eprintln!(
                "calibration features: {done}/{all} prompts ({spent:.0} s, about {:.0} s to go)",
                spent / done as f64 * (all - done) as f64
            );
        }
    }
    if skipped > 0 {
        eprintln!("skipped {skipped} prompts too long for the model's context of {context}");
    }
    if train.targets.is_empty() || heldout.targets.is_empty() {
        bail!("no prompt fits the model's context of {context}: lower --max-chars");
    }
    Ok((train, heldout))
}

fn agreement(p: &[ExitPrediction]) -> f32 {
    p.iter().filter(|x| x.agrees).count() as f32 / p.len().max(1) as f32
}

fn table(
    layer: usize,
    identity: &[ExitPrediction],
    ls: &[ExitPrediction],
    fitted: &[ExitPrediction],
    rows: &[TradeoffRow],
    thresholds: &[TargetThreshold],
) -> String {
    let mut s = format!(
        "## Exit after layer {layer}\n\nHeld-out top-1 agreement with the full model at every position: \
         logit lens {:.1}%, least squares {:.1}%, fitted {:.1}%.\n\n| θ | exit share | agreement of exited tokens |\n|---:|---:|---:|\n",
        agreement(identity) * 100.0,
        agreement(ls) * 100.0,
        agreement(fitted) * 100.0
    );
    for r in rows {
        s.push_str(&format!(
            "| {:.2} | {:.1}% | {:.1}% |\n",
            r.theta,
            r.exit_share * 100.0,
            r.agreement * 100.0
        ));
    }
    s.push_str("\n| target agreement | θ |\n|---:|---:|\n");
    for t in thresholds {
        let theta = if t.theta > 1.0 { "never".to_string() } else { format!("{:.2}", t.theta) };
        s.push_str(&format!("| {:.0}% | {theta} |\n", t.agreement * 100.0));
    }
    s.push('\n');
    s
}
