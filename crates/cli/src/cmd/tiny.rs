use std::path::PathBuf;

use anyhow::Result;

#[derive(clap::Args)]
pub struct Args {
    /// Output GGUF file.
    #[arg(long)]
    out: PathBuf,
    /// Seed of the random weights (the same seed writes the same file).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Also write the same weights as a Hugging Face directory here.
    #[arg(long)]
    hf_out: Option<PathBuf>,
}

pub fn run(a: Args) -> Result<()> {
    let spec = collm_checkpoint::tiny::TinySpec::default();
    collm_checkpoint::tiny::write_gguf(&a.out, &spec, a.seed, collm_gguf::GgmlType::F32)?;
    if let Some(dir) = &a.hf_out {
        collm_checkpoint::tiny::write_hf(dir, &spec, a.seed)?;
    }
    println!("wrote tiny model to {}", a.out.display());
    Ok(())
}
