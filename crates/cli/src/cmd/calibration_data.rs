//! The data `collm calibrate` fits and judges exit heads on: exit-layer and final states of
//! the model's own greedy answers to chat prompts, and token counts for a vocabulary shortlist.

use std::path::Path;

use anyhow::{Result, bail};
use collm_calibrate::{ShareGptReader, TokenCounts};
use collm_runtime::features::sequence_features;
use collm_runtime::transport::{CloudTransport, InProcessCloud};
use collm_runtime::{Encoding, ExitPolicy, GenerateOptions, Mode, SplitModel};

use super::prompts::{PromptSource, encode_chats};

/// Per exit head, the normalised exit states; shared final-state targets.
pub struct Features {
    pub inputs: Vec<Vec<f32>>,
    pub targets: Vec<f32>,
}

impl Features {
    fn new(exits: usize) -> Self {
        Self { inputs: vec![vec![]; exits], targets: vec![] }
    }

    fn extend(&mut self, f: collm_runtime::features::SequenceFeatures) {
        for (d, s) in self.inputs.iter_mut().zip(f.inputs) {
            d.extend(s);
        }
        self.targets.extend(f.targets);
    }
}

/// One held-out prompt set and what the model made of it.
pub struct HeldOut {
    pub source: PromptSource,
    pub prompts: Vec<String>,
    pub features: Features,
    /// The full model's greedy answer tokens (for shortlist coverage).
    pub answer_tokens: Vec<u32>,
}

impl HeldOut {
    pub fn new(source: PromptSource, prompts: Vec<String>) -> Self {
        Self { source, prompts, features: Features::new(0), answer_tokens: vec![] }
    }
}

pub struct Collected {
    pub train: Features,
    /// Tokens the full model wrote in its answers to the training prompts.
    pub emitted: TokenCounts,
}

/// Greedy answers for every prompt, then the features of prompt tail + answer.
pub fn collect(
    model: &mut SplitModel,
    cloud: &mut InProcessCloud,
    exits: &[usize],
    train: &[String],
    heldout: &mut [HeldOut],
    new_tokens: usize,
    prompt_positions: usize,
) -> Result<Collected> {
    let opts = GenerateOptions::greedy(
        new_tokens,
        Mode::Full,
        ExitPolicy::never(&model.manifest),
        Encoding::F32,
        model.text.stop_ids().to_vec(),
    );
    let eps = model.manifest.config.rms_eps;
    let context = model.manifest.config.max_position;
    let total = train.len() + heldout.iter().map(|s| s.prompts.len()).sum::<usize>();
    let mut done = 0;
    let mut skipped = 0;
    let started = std::time::Instant::now();
    // Runs one prompt set, feeding every sequence's features and answer to `sink`.
    let mut run = |model: &mut SplitModel,
                   cloud: &mut InProcessCloud,
                   prompts: &[String],
                   sink: &mut dyn FnMut(collm_runtime::features::SequenceFeatures, &[u32])|
     -> Result<()> {
        let (encoded, dropped) = encode_chats(model, prompts, new_tokens)?;
        skipped += dropped;
        for ids in encoded {
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
            let from = ids.len().saturating_sub(prompt_positions).max(1);
            let f =
                sequence_features(&mut model.edge, cloud.partition_mut(), exits, &seq, from, eps)?;
            sink(f, &answer.tokens);
            done += 1;
            if done % 32 == 0 {
                let spent = started.elapsed().as_secs_f64();
                eprintln!(
                    "calibration features: {done}/{total} prompts ({spent:.0} s, about {:.0} s to go)",
                    spent / done as f64 * total.saturating_sub(done) as f64
                );
            }
        }
        Ok(())
    };
    let mut out = Collected { train: Features::new(exits.len()), emitted: TokenCounts::default() };
    run(model, cloud, train, &mut |f, answer| {
        out.train.extend(f);
        out.emitted.extend(answer.iter().copied());
    })?;
    for set in heldout.iter_mut() {
        set.features = Features::new(exits.len());
        let prompts = set.prompts.clone();
        run(model, cloud, &prompts, &mut |f, answer| {
            set.features.extend(f);
            set.answer_tokens.extend_from_slice(answer);
        })?;
    }
    if skipped > 0 {
        eprintln!("skipped {skipped} prompts too long for the model's context of {context}");
    }
    if out.train.targets.is_empty() || heldout.iter().any(|s| s.features.targets.is_empty()) {
        bail!("no prompt of a set fits the model's context of {context}: lower --max-chars");
    }
    Ok(out)
}

/// Token counts of the answers (`gpt` turns) of the first `records` ShareGPT records, each cut
/// to a few thousand characters: which tokens answer text uses, beyond what the model wrote
/// during calibration.
pub fn corpus_counts(
    model: &SplitModel,
    data: Option<&Path>,
    records: usize,
) -> Result<TokenCounts> {
    let path = data.map_or_else(|| PromptSource::Sharegpt.default_path(), Path::to_path_buf);
    let mut counts = TokenCounts::default();
    for conversation in ShareGptReader::open(&path)?.take(records) {
        for (role, text) in conversation?.turns {
            if role == "gpt" {
                let cut: String = text.chars().take(4000).collect();
                counts.extend(model.text.encode(&cut)?);
            }
        }
    }
    Ok(counts)
}
