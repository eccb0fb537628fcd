//! Scans a whole ShareGPT dump and prints how many records it holds and how it ends.
//! Usage: cargo run -p collm-calibrate --release --example sharegpt_scan -- PATH

use std::path::PathBuf;

use collm_calibrate::ShareGptReader;

fn main() -> anyhow::Result<()> {
    let path: PathBuf = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .ok_or_else(|| anyhow::anyhow!("usage: sharegpt_scan PATH"))?;
    let started = std::time::Instant::now();
    let mut reader = ShareGptReader::open(&path)?;
    let (mut ok, mut bad, mut with_prompt) = (0usize, 0usize, 0usize);
    for record in reader.by_ref() {
        match record {
            Ok(c) => {
                ok += 1;
                with_prompt +=
                    usize::from(c.first_human_turn().is_some_and(|t| !t.trim().is_empty()));
            }
            Err(e) => {
                bad += 1;
                eprintln!("{e}");
            }
        }
    }
    println!(
        "{ok} records ({with_prompt} with a human prompt), {bad} malformed, {} bytes, end {:?}, {:.1}s",
        reader.bytes_consumed(),
        reader.end(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
