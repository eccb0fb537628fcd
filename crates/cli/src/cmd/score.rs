use std::path::PathBuf;

use anyhow::{Context, Result};
use collm_runtime::SplitModel;

#[derive(clap::Args)]
pub struct Args {
    /// The bundle directory (`collm export` wrote it).
    #[arg(long)]
    bundle: PathBuf,
    /// Raw prompt text.
    #[arg(long)]
    prompt: String,
    /// Token ids of the continuation to score, comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    continuation: Vec<u32>,
    /// Print JSON (the only output format for now; accepted for symmetry with generate).
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args) -> Result<()> {
    let mut model = SplitModel::open(&a.bundle, true)?;
    let prompt_ids = model.text.encode(&a.prompt)?;
    let exits = model.exit_layers();
    let continuation: Vec<u32> = a.continuation.into_iter().collect();
    let vocab = model.manifest.config.vocab_size as u32;
    if let Some(bad) = continuation.iter().find(|&&t| t >= vocab) {
        anyhow::bail!("continuation token {bad} is outside the vocabulary of {vocab}");
    }
    let cloud = model.cloud.as_mut().context("the bundle's cloud partition did not load")?;
    let positions =
        collm_runtime::score::score(&mut model.edge, cloud, &exits, &prompt_ids, &continuation)?;
    let _ = a.json;
    // Mean negative log-likelihood per token of the continuation, under the full model and
    // under each exit head: how likely each finds the given text.
    let mean_nll = |lp: &mut dyn Iterator<Item = f64>| {
        let mut l = collm_calibrate::Likelihood::default();
        lp.for_each(|x| l.add(x));
        l.mean()
    };
    let full_nll = mean_nll(&mut positions.iter().map(|p| p.full.target_logprob));
    let exit_nll: Vec<serde_json::Value> = exits
        .iter()
        .enumerate()
        .map(|(i, layer)| {
            let nll = mean_nll(&mut positions.iter().map(|p| p.exits[i].prediction.target_logprob));
            serde_json::json!({ "layer": layer, "nll_per_token": nll })
        })
        .collect();
    println!(
        "{}",
        serde_json::json!({
            "prompt_ids": prompt_ids,
            "positions": positions,
            "nll_per_token": full_nll,
            "exit_nll_per_token": exit_nll,
        })
    );
    Ok(())
}
