//! `collm calibrate`: collects exit-head features on chat prompts answered by the model itself
//! (ShareGPT, optionally mixed with ChatterBot questions), fits each head's translator (least
//! squares, then KL to the full model), optionally gives each head a vocabulary shortlist,
//! stores the translators and the held-out trade-off table in the bundle, and finally chooses
//! the default operating point on free-running answers (see [`super::operating_point`]).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use collm_bundle::calibration::{FittedExit, read_head, store_exits};
use collm_bundle::manifest::{ExitCalibration, ShortlistInfo, TargetThreshold, TradeoffRow};
use collm_calibrate::{
    ExitPrediction, Features, HeadWeights, KlOptions, KlProgress, Translator, agreement_thresholds,
    fit_kl, fit_least_squares, head_predictions, shortlist_predictions, tradeoff_rows,
};
use collm_runtime::SplitModel;

use super::calibration_data::{HeldOut, collect, corpus_counts};
use super::prompts::PromptSource;

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
    /// ChatterBot questions added to the training prompts (the first ones of the corpus's
    /// fixed order): a second distribution, so the heads do not over-fit ShareGPT.
    #[arg(long, default_value_t = 0)]
    mix_chatterbot: usize,
    /// ChatterBot questions held out (from question 400 on): a second trade-off table, and
    /// part of the held-out data thresholds are read from.
    #[arg(long, default_value_t = 0)]
    heldout_chatterbot: usize,
    /// The ChatterBot corpus directory (default: where tools/fetch-artifacts puts it).
    #[arg(long)]
    chatterbot_data: Option<PathBuf>,
    /// Greedy tokens the model writes after each prompt.
    #[arg(long, default_value_t = 24)]
    new_tokens: usize,
    /// Prompt positions (before the answer) that also become training positions.
    #[arg(long, default_value_t = 16)]
    prompt_positions: usize,
    /// Longest prompt kept, in characters of the user message.
    #[arg(long, default_value_t = 400)]
    max_chars: usize,
    /// How each exit head's translator is fitted.
    #[arg(long, value_enum, default_value_t = FitMethod::Kl)]
    method: FitMethod,
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
    /// Give every exit head logits over this many tokens only (the tokens the full model wrote
    /// on the training prompts, then the most frequent tokens of ShareGPT answers): a cheaper
    /// head. 0 keeps the whole vocabulary.
    #[arg(long, default_value_t = 0)]
    shortlist: usize,
    /// ShareGPT records whose answers rank the shortlist's corpus tokens.
    #[arg(long, default_value_t = 4000)]
    shortlist_records: usize,
    /// ShareGPT prompts (after the held-out ones) on which the default operating point is
    /// chosen from free-running answers; 0 keeps 95% target agreement as the default.
    #[arg(long, default_value_t = 24)]
    free_prompts: usize,
    /// ChatterBot questions (from question 700 on) added to the free-running prompts, so the
    /// default keeps quality on short questions too (at 95% agreement ShareGPT answers kept
    /// it while ChatterBot answers looped more often than the full model's: see
    /// bench/results/quality.md). 0: ShareGPT only.
    #[arg(long, default_value_t = 16)]
    free_chatterbot: usize,
    /// Tokens of each free-running answer.
    #[arg(long, default_value_t = 96)]
    free_tokens: usize,
    /// Largest ratio of the full model's mean NLL per token of collaborative answers to that
    /// of its own answers the default operating point may have (the target is 1.15;
    /// the margin covers the sample).
    #[arg(long, default_value_t = 1.10)]
    max_nll_ratio: f64,
}

/// How `collm calibrate` fits an exit head's translator.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum FitMethod {
    /// Least squares on the hidden states (closed form; also the KL fit's starting point).
    LeastSquares,
    /// Least squares, then gradient steps on the KL divergence to the full model's next-token
    /// distribution (the better head).
    Kl,
}

impl FitMethod {
    /// The name the bundle's calibration records and the report prints.
    pub fn name(self) -> &'static str {
        match self {
            Self::LeastSquares => "least-squares",
            Self::Kl => "kl",
        }
    }
}

pub fn run(a: Args) -> Result<()> {
    let sharegpt = PromptSource::Sharegpt;
    let chatterbot = PromptSource::Chatterbot;
    let share = sharegpt.load(a.data.as_deref(), 0, a.prompts + a.heldout, a.max_chars)?;
    let mut train = share[..a.prompts].to_vec();
    let mut heldout = vec![HeldOut::new(sharegpt, share[a.prompts..].to_vec())];
    if a.mix_chatterbot > 0 {
        train.extend(chatterbot.load(
            a.chatterbot_data.as_deref(),
            0,
            a.mix_chatterbot,
            a.max_chars,
        )?);
    }
    if a.heldout_chatterbot > 0 {
        let questions = chatterbot.load(
            a.chatterbot_data.as_deref(),
            400,
            a.heldout_chatterbot,
            a.max_chars,
        )?;
        heldout.push(HeldOut::new(chatterbot, questions));
    }
    let mut model = SplitModel::open(&a.bundle, true)?;
    if model
        .manifest
        .exits
        .iter()
        .any(|e| e.calibration.as_ref().is_some_and(|c| c.shortlist.is_some()))
    {
        bail!(
            "{}: the exit heads already have a shortlist; export the bundle again to calibrate it",
            a.bundle.display()
        );
    }
    let cfg = model.manifest.config.clone();
    let exits = model.exit_layers();
    let mut cloud =
        model.take_in_process_cloud(collm_runtime::CatchUp::Exact)?.context("cloud partition")?;
    let started = Instant::now();
    let collected = collect(
        &mut model,
        &mut cloud,
        &exits,
        &train,
        &mut heldout,
        a.new_tokens,
        a.prompt_positions,
    )?;
    let h = cfg.hidden_size;
    eprintln!(
        "collected {} training and {} held-out positions in {:.0} s",
        collected.train.targets.len() / h,
        heldout.iter().map(|s| s.features.targets.len() / h).sum::<usize>(),
        started.elapsed().as_secs_f64()
    );

    let shortlist = (a.shortlist > 0)
        .then(|| -> Result<Vec<u32>> {
            let corpus = corpus_counts(&model, a.data.as_deref(), a.shortlist_records)?;
            let ids = collm_calibrate::select_shortlist(
                model.text.stop_ids(),
                &collected.emitted,
                &corpus,
                cfg.vocab_size,
                a.shortlist,
            );
            eprintln!(
                "shortlist: {} tokens ({} the model wrote on training prompts, {} in {} answers)",
                ids.len(),
                collected.emitted.distinct(),
                corpus.distinct(),
                a.shortlist_records
            );
            Ok(ids)
        })
        .transpose()?;

    let cloud_model = collm_bundle::read_partition(&a.bundle, &model.manifest.cloud.file)?;
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
    if let Some(ids) = &shortlist {
        report.push_str(&shortlist_note(ids, &heldout));
    }
    for (i, &layer) in exits.iter().enumerate() {
        let tr =
            Features::new(h, collected.train.inputs[i].clone(), collected.train.targets.clone())?;
        let sets: Vec<Features> = heldout
            .iter()
            .map(|s| Features::new(h, s.features.inputs[i].clone(), s.features.targets.clone()))
            .collect::<Result<_, _>>()?;
        // Fitting watches the first held-out set (ShareGPT's); thresholds read all of them.
        let ho = &sets[0];
        let identity = head_predictions(&head, &Translator::identity(h), ho)?;
        let ls = fit_least_squares(tr.input(), tr.target(), h, a.ridge)?;
        let ls_pred = head_predictions(&head, &ls, ho)?;
        let translator = if a.method == FitMethod::Kl {
            let opts = KlOptions { epochs: a.epochs, lr: a.lr, ..KlOptions::default() };
            let (t, kl) = fit_kl(&tr, ho, &head, ls, opts, &mut |p| {
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
            t
        } else {
            ls
        };
        let predict = |f: &Features| match &shortlist {
            Some(ids) => shortlist_predictions(&head, &translator, f, ids),
            None => head_predictions(&head, &translator, f),
        };
        let per_set: Vec<Vec<ExitPrediction>> =
            sets.iter().map(predict).collect::<Result<_, _>>()?;
        let all: Vec<ExitPrediction> = per_set.iter().flatten().copied().collect();
        let rows = manifest_rows(&all);
        let thresholds: Vec<TargetThreshold> = agreement_thresholds(&all)
            .into_iter()
            .map(|t| TargetThreshold { agreement: t.agreement, theta: t.theta })
            .collect();
        report.push_str(&table(
            layer,
            &identity,
            &ls_pred,
            &per_set[0],
            &thresholds,
            heldout.len() > 1,
        ));
        for (set, pred) in heldout.iter().zip(&per_set).skip(1) {
            report.push_str(&other_distribution(layer, set, pred));
        }
        fitted.push(FittedExit {
            layer,
            weight: translator.weight,
            bias: translator.bias,
            calibration: ExitCalibration {
                method: a.method.name().to_string(),
                train_positions: tr.rows(),
                heldout_positions: all.len(),
                agreement_logit_lens: agreement(&identity),
                agreement_least_squares: agreement(&ls_pred),
                agreement: agreement(&all),
                tradeoff: rows,
                thresholds,
                shortlist: shortlist.as_ref().map(|ids| ShortlistInfo {
                    size: ids.len(),
                    heldout_coverage: heldout_coverage(ids, &heldout) as f32,
                }),
            },
            shortlist: shortlist.clone(),
        });
    }
    let mut manifest = model.manifest.clone();
    drop((model, cloud));
    store_exits(&a.bundle, &mut manifest, fitted)?;
    let header = format!(
        "# Exit-head calibration\n\n{} training prompts from ShareGPT{}, {} held-out prompts ({}), {} greedy tokens each \
         (+{} prompt positions), method {}.\n\n",
        a.prompts,
        if a.mix_chatterbot > 0 {
            format!(" and {} from ChatterBot", a.mix_chatterbot)
        } else {
            String::new()
        },
        heldout.iter().map(|s| s.prompts.len()).sum::<usize>(),
        heldout
            .iter()
            .map(|s| format!("{} {}", s.prompts.len(), s.source.name()))
            .collect::<Vec<_>>()
            .join(", "),
        a.new_tokens,
        a.prompt_positions,
        a.method.name()
    );
    let mut text = format!("{header}{report}");
    if a.free_prompts > 0 {
        let mut prompts =
            sharegpt.load(a.data.as_deref(), a.prompts + a.heldout, a.free_prompts, a.max_chars)?;
        let mut described = format!("{} ShareGPT prompts after the held-out ones", prompts.len());
        if a.free_chatterbot > 0 {
            prompts.extend(chatterbot.load(
                a.chatterbot_data.as_deref(),
                700,
                a.free_chatterbot,
                a.max_chars,
            )?);
            described.push_str(&format!(" and {} ChatterBot questions", a.free_chatterbot));
        }
        let chosen = super::operating_point::choose(
            &a.bundle,
            &prompts,
            &described,
            a.free_tokens,
            a.max_nll_ratio,
        )?;
        text.push_str(&chosen.report);
        manifest.operating_point = Some(chosen.point);
        collm_bundle::write_manifest(&a.bundle, &manifest)?;
    }
    std::fs::write(a.bundle.join("calibration.md"), &text)?;
    println!("{text}");
    Ok(())
}

fn manifest_rows(pred: &[ExitPrediction]) -> Vec<TradeoffRow> {
    tradeoff_rows(pred)
        .into_iter()
        .map(|r| TradeoffRow { theta: r.theta, exit_share: r.exit_share, agreement: r.agreement })
        .collect()
}

fn agreement(p: &[ExitPrediction]) -> f32 {
    p.iter().filter(|x| x.agrees).count() as f32 / p.len().max(1) as f32
}

/// Share of the full model's answer tokens on held-out prompts that the shortlist contains.
fn heldout_coverage(ids: &[u32], heldout: &[HeldOut]) -> f64 {
    collm_calibrate::coverage(ids, heldout.iter().flat_map(|s| s.answer_tokens.iter().copied()))
}

fn shortlist_note(ids: &[u32], heldout: &[HeldOut]) -> String {
    let per_set: Vec<String> = heldout
        .iter()
        .map(|s| {
            let c = collm_calibrate::coverage(ids, s.answer_tokens.iter().copied());
            format!("{:.2}% on {}", 100.0 * c, s.source.name())
        })
        .collect();
    format!(
        "Exit heads over a shortlist of {} tokens: the full model's held-out answer tokens are in it {}.\n\n",
        ids.len(),
        per_set.join(", ")
    )
}

/// The ShareGPT held-out table of one head, and the thresholds (read from every held-out set).
fn table(
    layer: usize,
    identity: &[ExitPrediction],
    ls: &[ExitPrediction],
    fitted: &[ExitPrediction],
    thresholds: &[TargetThreshold],
    several_sets: bool,
) -> String {
    let mut s = format!(
        "## Exit after layer {layer}\n\nHeld-out top-1 agreement with the full model at every position (ShareGPT): \
         logit lens {:.1}%, least squares {:.1}%, fitted {:.1}%.\n\n",
        agreement(identity) * 100.0,
        agreement(ls) * 100.0,
        agreement(fitted) * 100.0
    );
    s.push_str(&rows_table(&manifest_rows(fitted)));
    s.push_str(if several_sets {
        "\nThresholds, read from every held-out set together:\n\n| target agreement | θ |\n|---:|---:|\n"
    } else {
        "\n| target agreement | θ |\n|---:|---:|\n"
    });
    for t in thresholds {
        let theta = if t.theta > 1.0 { "never".to_string() } else { format!("{:.2}", t.theta) };
        s.push_str(&format!("| {:.0}% | {theta} |\n", t.agreement * 100.0));
    }
    s.push('\n');
    s
}

fn rows_table(rows: &[TradeoffRow]) -> String {
    let mut s = String::from("| θ | exit share | agreement of exited tokens |\n|---:|---:|---:|\n");
    for r in rows {
        s.push_str(&format!(
            "| {:.2} | {:.1}% | {:.1}% |\n",
            r.theta,
            r.exit_share * 100.0,
            r.agreement * 100.0
        ));
    }
    s
}

fn other_distribution(layer: usize, set: &HeldOut, pred: &[ExitPrediction]) -> String {
    format!(
        "Exit after layer {layer} on the {} held-out prompts alone ({} positions, agreement at every position {:.1}%):\n\n{}\n",
        set.source.name(),
        pred.len(),
        100.0 * agreement(pred),
        rows_table(&manifest_rows(pred))
    )
}
