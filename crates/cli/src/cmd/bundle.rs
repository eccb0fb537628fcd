//! `collm bundle pack`: a bundle directory as the archive a CollabModel's `bundle.url` points at,
//! with the SHA-256 its `bundle.sha256` must name.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
pub struct Args {
    #[command(subcommand)]
    command: BundleCommand,
}

#[derive(Subcommand)]
enum BundleCommand {
    /// Verify a bundle and pack it into a deterministic tar archive; prints the CollabModel's
    /// bundle.url/bundle.sha256 lines (serve the file over HTTP and fill in the URL).
    Pack(PackArgs),
}

#[derive(Parser)]
struct PackArgs {
    /// The bundle directory (written by `collm export`).
    dir: PathBuf,
    /// The archive to write (e.g. smollm2.tar).
    #[arg(long)]
    out: PathBuf,
    /// The URL the archive will be served at, printed into the CollabModel lines
    /// [default: a placeholder naming the file].
    #[arg(long)]
    url: Option<String>,
}

pub fn run(a: Args) -> Result<()> {
    match a.command {
        BundleCommand::Pack(p) => pack(p),
    }
}

fn pack(p: PackArgs) -> Result<()> {
    let packed = collm_bundle::pack(&p.dir, &p.out)
        .with_context(|| format!("packing {}", p.dir.display()))?;
    let file = p.out.file_name().map_or("bundle.tar".into(), |n| n.to_string_lossy().into_owned());
    eprintln!(
        "packed {} files ({} bytes) into {}",
        packed.files.len(),
        packed.bytes,
        p.out.display()
    );
    let url = p.url.unwrap_or_else(|| format!("http://<your-server>/{file}"));
    println!("bundle:");
    println!("  url: {url}");
    println!("  sha256: \"{}\"", packed.sha256);
    Ok(())
}
