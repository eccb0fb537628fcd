//! `collm bench catch-up`: what `propagate` catch-up costs in answer quality and saves in cloud
//! compute, against `exact`, on ShareGPT prompts the exit heads were not calibrated on.
//!
//! For each prompt the split model generates collaboratively (greedy, exact cloud). Then, on
//! that very sequence (teacher-forced), the cloud answers every position it was asked about
//! twice on the same loaded model: catching up exactly and by propagation; the two answers'
//! top-1 tokens are compared and the cloud time of each is measured. Finally the generation
//! is run again free with the propagating cloud, to show where the answer first changes.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use collm_bundle::graph::names;
use collm_runtime::partition::PartitionInput;
use collm_runtime::sampling;
use collm_runtime::text::ChatMessage;
use collm_runtime::transport::{CloudTransport, InProcessCloud};
use collm_runtime::{
    CatchUp, EdgeAnswered, Encoding, ExitPolicy, GenerateOptions, Mode, OperatingPoint, Origin,
    SplitModel,
};

#[derive(clap::Args)]
pub struct CatchUpArgs {
    /// The bundle directory (`collm export` wrote it).
    #[arg(long)]
    bundle: PathBuf,
    /// ShareGPT JSON (default: the cached ShareGPT_V3_unfiltered_cleaned_split.json).
    #[arg(long)]
    data: Option<PathBuf>,
    /// ShareGPT prompts measured.
    #[arg(long, default_value_t = 32)]
    prompts: usize,
    /// Prompts passed over first (calibration reads the first 320 by default).
    #[arg(long, default_value_t = 400)]
    skip: usize,
    /// Longest prompt kept, in characters of the user message.
    #[arg(long, default_value_t = 600)]
    max_chars: usize,
    /// Tokens generated per prompt.
    #[arg(long, default_value_t = 64)]
    new_tokens: usize,
    /// Raw exit confidence threshold θ (default: the bundle's default operating point).
    #[arg(long, conflicts_with = "target_agreement")]
    threshold: Option<f32>,
    /// Instead of --threshold: each head's calibrated θ for this top-1 agreement.
    #[arg(long)]
    target_agreement: Option<f32>,
    /// Write a Markdown report here.
    #[arg(long)]
    report: Option<PathBuf>,
}

/// Everything counted over the prompts (pure arithmetic on what the runs observed).
#[derive(Debug, Default, serde::Serialize)]
struct Tally {
    prompts: usize,
    tokens: usize,
    edge_tokens: usize,
    /// Prompt positions: always caught up exactly (the edge answered none of them).
    prompt_positions: usize,
    /// Positions the cloud was asked about (teacher-forced), and how many of its answers
    /// with propagation have the exact answer's top-1 token.
    cloud_answers: usize,
    same_top1: usize,
    /// Cloud positions run through the layers / propagated, in each mode.
    exact_positions_exact_mode: u64,
    exact_positions_propagate_mode: u64,
    propagated_positions: u64,
    cloud_seconds_exact: f64,
    cloud_seconds_propagate: f64,
    /// Free-running: generations identical to the exact one, and generated tokens before the
    /// first difference (all of them when identical).
    identical_generations: usize,
    tokens_before_divergence: usize,
}

impl Tally {
    fn top1_agreement(&self) -> f64 {
        ratio(self.same_top1, self.cloud_answers)
    }

    fn report(&self, command: &str) -> String {
        let positions_exact = self.exact_positions_exact_mode as f64;
        let positions_prop = self.exact_positions_propagate_mode as f64;
        format!(
            "# Catch-up: exact vs propagate\n\n\
Command: `{command}`\n\n\
{} ShareGPT prompts, {} generated tokens, edge share {:.1}% (greedy, collaborative).\n\n\
| | exact | propagate |\n|---|---:|---:|\n\
| cloud positions run through the cloud layers ({} of them prompt) | {} | {} |\n\
| cloud positions propagated (K/V projections only) | 0 | {} |\n\
| cloud time for the same requests (s) | {:.2} | {:.2} |\n\
| top-1 agreement of the cloud's answers with exact (teacher-forced, {} answers) | 100% | {:.1}% |\n\
| generations identical to exact (free-running) | {} of {} | {} of {} |\n\
| generated tokens before the first difference | 100% | {:.1}% |\n\n\
Cloud layer work: propagate runs {:.1}% of the positions exact runs through the cloud layers; \
cloud time ratio propagate / exact = {:.2}.\n",
            self.prompts,
            self.tokens,
            100.0 * ratio(self.edge_tokens, self.tokens),
            self.prompt_positions,
            self.exact_positions_exact_mode,
            self.exact_positions_propagate_mode,
            self.propagated_positions,
            self.cloud_seconds_exact,
            self.cloud_seconds_propagate,
            self.cloud_answers,
            100.0 * self.top1_agreement(),
            self.prompts,
            self.prompts,
            self.identical_generations,
            self.prompts,
            100.0 * ratio(self.tokens_before_divergence, self.tokens),
            100.0 * positions_prop / positions_exact.max(1.0),
            self.cloud_seconds_propagate / self.cloud_seconds_exact.max(1e-9),
        )
    }
}

fn ratio(a: usize, b: usize) -> f64 {
    if b == 0 { 0.0 } else { a as f64 / b as f64 }
}

pub fn run(a: CatchUpArgs) -> Result<()> {
    let data = a.data.clone().unwrap_or_else(|| {
        collm_runtime::ort_env::cache_dir().join("data/ShareGPT_V3_unfiltered_cleaned_split.json")
    });
    let prompts = collm_calibrate::first_prompts(&data, a.skip, a.prompts, a.max_chars)
        .with_context(|| format!("cannot read ShareGPT prompts from {}", data.display()))?;
    if prompts.len() < a.prompts {
        bail!("{} holds only {} usable prompts after {}", data.display(), prompts.len(), a.skip);
    }
    let mut model = SplitModel::open(&a.bundle, true)?;
    let mut cloud = model
        .take_in_process_cloud(CatchUp::Propagate)?
        .context("the bundle's cloud partition did not load")?;
    let exits = model.exit_layers();
    let opts = GenerateOptions::greedy(
        a.new_tokens,
        Mode::Collaborative,
        ExitPolicy::new(
            &model.manifest,
            OperatingPoint::resolve(&model.manifest, a.threshold, a.target_agreement),
        )?,
        Encoding::F32,
        model.text.stop_ids().to_vec(),
    );
    let mut tally = Tally::default();
    for (i, prompt) in prompts.iter().enumerate() {
        let chat = [ChatMessage { role: "user".into(), content: prompt.clone() }];
        let prompt_ids = model.text.encode_chat(&chat)?;
        let generate = |cloud: &mut InProcessCloud, model: &mut SplitModel, mode| {
            cloud.layers_mut().set_catch_up(mode)?;
            collm_runtime::generate(
                &mut model.edge,
                &exits,
                Some(cloud as &mut dyn CloudTransport),
                &prompt_ids,
                &opts,
                &mut |_| {},
            )
        };
        let exact = generate(&mut cloud, &mut model, CatchUp::Exact)?;
        let free = generate(&mut cloud, &mut model, CatchUp::Propagate)?;
        teacher_forced(&mut model, &mut cloud, &prompt_ids, &exact, &mut tally)?;
        tally.prompts += 1;
        tally.prompt_positions += prompt_ids.len();
        tally.tokens += exact.tokens.len();
        tally.edge_tokens += exact.origins.iter().filter(|o| **o == Origin::Edge).count();
        let same = exact.tokens.iter().zip(&free.tokens).take_while(|(x, y)| x == y).count();
        tally.tokens_before_divergence += same;
        tally.identical_generations += usize::from(exact.tokens == free.tokens);
        eprintln!(
            "prompt {}/{}: {} tokens, edge share {:.0}%, identical for {same}",
            i + 1,
            prompts.len(),
            exact.tokens.len(),
            100.0 * exact.edge_share
        );
    }
    println!("{}", serde_json::to_string(&tally)?);
    let command = format!(
        "collm bench catch-up --bundle {} --prompts {} --skip {} --new-tokens {}{}",
        super::portable_path(&a.bundle),
        a.prompts,
        a.skip,
        a.new_tokens,
        a.target_agreement.map(|t| format!(" --target-agreement {t}")).unwrap_or_default()
    );
    let report = tally.report(&command);
    eprintln!("{report}");
    if let Some(path) = &a.report {
        std::fs::write(path, report).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// Replays `generation` on its own tokens: every position the cloud was asked about is
/// answered once catching up exactly and once by propagation, on fresh caches.
fn teacher_forced(
    model: &mut SplitModel,
    cloud: &mut InProcessCloud,
    prompt: &[u32],
    generation: &collm_runtime::Generation,
    tally: &mut Tally,
) -> Result<()> {
    let width = model.manifest.config.hidden_size;
    let n = generation.tokens.len();
    if n < 2 {
        return Ok(());
    }
    // The last token is never looked at again: the sequence ends before it.
    let sequence: Vec<u32> = prompt.iter().chain(&generation.tokens[..n - 1]).copied().collect();
    let mut cache = model.edge.empty_cache()?;
    let rows = model
        .edge
        .run(&mut cache, PartitionInput::Tokens(&sequence), 0, &[names::HIDDEN])?
        .take(names::HIDDEN)
        .context("edge partition has no hidden output")?;
    let mut edge = EdgeAnswered::default();
    let mut asks = vec![];
    for (i, origin) in generation.origins.iter().enumerate() {
        let position = (prompt.len() - 1 + i) as u64;
        match origin {
            Origin::Edge => edge.push(position),
            Origin::Cloud => asks.push(position as usize),
        }
    }
    let mut answers = |mode: CatchUp| -> Result<(Vec<u32>, u64, u64, f64)> {
        let layers = cloud.layers_mut();
        layers.set_catch_up(mode)?;
        let mut cache = layers.empty_cache()?;
        let (mut tops, mut exact, mut propagated) = (vec![], 0, 0);
        let t = Instant::now();
        for &after in &asks {
            let from = cache.len();
            let stepped =
                layers.step(&mut cache, &rows[from * width..(after + 1) * width], &edge, 1)?;
            exact += stepped.exact;
            propagated += stepped.propagated;
            tops.push(sampling::top1(&stepped.logits).token);
        }
        Ok((tops, exact, propagated, t.elapsed().as_secs_f64()))
    };
    let (exact_tops, exact_positions, _, exact_seconds) = answers(CatchUp::Exact)?;
    let (prop_tops, prop_positions, propagated, prop_seconds) = answers(CatchUp::Propagate)?;
    tally.cloud_answers += asks.len();
    tally.same_top1 += exact_tops.iter().zip(&prop_tops).filter(|(x, y)| x == y).count();
    tally.exact_positions_exact_mode += exact_positions;
    tally.exact_positions_propagate_mode += prop_positions;
    tally.propagated_positions += propagated;
    tally.cloud_seconds_exact += exact_seconds;
    tally.cloud_seconds_propagate += prop_seconds;
    Ok(())
}
