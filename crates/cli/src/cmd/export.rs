use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use collm_bundle::{ExportPlan, GraphOptions, WeightFormat};
use collm_checkpoint::Checkpoint;
use indicatif::{ProgressBar, ProgressStyle};

#[derive(clap::Args)]
pub struct Args {
    /// GGUF checkpoint (llama or qwen2 architecture; F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1,
    /// Q8_0, IQ4_NL and Q2_K…Q6_K tensors).
    #[arg(long, conflicts_with = "hf", required_unless_present = "hf")]
    gguf: Option<PathBuf>,
    /// Hugging Face checkpoint directory (Llama, Mistral or Qwen2: config.json,
    /// *.safetensors, tokenizer.json).
    #[arg(long)]
    hf: Option<PathBuf>,
    /// Decoder layers that run on the edge.
    #[arg(long)]
    split_layer: usize,
    /// Depths of the early-exit heads, each at most the split layer (default: the split layer).
    #[arg(long, value_delimiter = ',')]
    exit_layers: Vec<usize>,
    /// f32 | q8 | q4 | native (default: native, exact for the source).
    #[arg(long, default_value = "native")]
    weights: WeightFormat,
    /// MatMulNBits accuracy level (4 = int8 activations, 0 = float).
    #[arg(long, default_value_t = 4)]
    accuracy_level: i64,
    /// Run GGUF Q4_1 weights as MatMulNBits plus a block-offset correction instead of our own
    /// Q4_1 operator over llama.cpp's blocks (more bytes per weight, five nodes a matrix; what
    /// `--accuracy-level 0` does too, the operator's activations being int8).
    #[arg(long)]
    no_q4_1_kernel: bool,
    /// Output bundle directory.
    #[arg(long)]
    out: PathBuf,
}

pub fn run(a: Args) -> Result<()> {
    let spinner = ProgressBar::new_spinner().with_style(
        ProgressStyle::with_template("{spinner} {elapsed:>4} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    spinner.enable_steady_tick(std::time::Duration::from_millis(120));
    spinner.set_message("reading checkpoint");
    let ckpt = match (&a.gguf, &a.hf) {
        (Some(path), _) => Checkpoint::from_gguf(path)
            .with_context(|| format!("cannot export {}", path.display()))?,
        (None, Some(dir)) => Checkpoint::from_hf_dir(dir)
            .with_context(|| format!("cannot export {}", dir.display()))?,
        (None, None) => bail!("give --gguf FILE or --hf DIR"),
    };
    let plan = ExportPlan {
        split_layer: a.split_layer,
        exit_layers: a.exit_layers,
        weights: a.weights,
        graph: GraphOptions {
            nbits_accuracy_level: a.accuracy_level,
            q4_1_kernel: !a.no_q4_1_kernel,
        },
    };
    let manifest = collm_bundle::export(ckpt, &plan, &a.out, &mut |step| {
        spinner.set_message(step.to_string())
    })?;
    spinner.finish_and_clear();
    println!(
        "exported {} → {} (split after layer {} of {}, exits {:?}, weights {:?})",
        manifest.source,
        a.out.display(),
        manifest.split_layer,
        manifest.config.num_layers,
        manifest.exits.iter().map(|e| e.layer).collect::<Vec<_>>(),
        manifest.weights,
    );
    println!("weights by source type (bytes in the source → one stored copy in the bundle):");
    for line in collm_bundle::weight_report::describe(&manifest.weight_mappings) {
        println!("  {line}");
    }
    Ok(())
}
