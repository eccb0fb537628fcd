//! `collm bench decode`: decode speed and peak memory of the split model in each mode, next to
//! llama.cpp on the same GGUF in the same run. Each measurement runs in its own process so
//! that peak RSS belongs to that mode alone.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result, bail};
use collm_runtime::transport::CloudTransport;
use collm_runtime::{Encoding, ExitPolicy, GenerateOptions, Mode, OperatingPoint, SplitModel};

/// The prompt both engines decode after (the same text as tools/reference/bench_decode.py).
const PROMPT: &str = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nExplain in a few paragraphs how a bicycle stays upright while it is moving, and why it falls over when it stops.<|im_end|>\n<|im_start|>assistant\n";

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    what: What,
}

#[derive(clap::Subcommand)]
enum What {
    /// Decode tokens/s and peak RSS: full, collaborative, standalone, and llama.cpp.
    Decode(DecodeArgs),
    /// Concurrent streaming chat requests against a running edge agent: throughput, latency.
    Load(super::load::LoadArgs),
    /// Propagate vs exact catch-up: answer agreement and cloud compute on ShareGPT prompts.
    CatchUp(super::catch_up::CatchUpArgs),
    /// Answer quality free-running per mode against the full model: identical answers, first
    /// difference, loops, the full model's likelihood of each answer.
    Quality(super::quality::QualityArgs),
    /// The paper's comparison: every mode over toxiproxy link profiles, edge and cloud pinned
    /// to their own cores, time, CPU-seconds per request and answer quality.
    Paper(super::paper::PaperArgs),
}

#[derive(clap::Args)]
struct DecodeArgs {
    /// The bundle directory (`collm export` wrote it).
    #[arg(long)]
    bundle: PathBuf,
    /// The GGUF llama.cpp decodes (the bundle's source).
    #[arg(long)]
    gguf: Option<PathBuf>,
    /// Tokens generated per run.
    #[arg(long, default_value_t = 128)]
    new_tokens: usize,
    /// Timed runs per engine (the median is reported), after one warm-up.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Python with llama-cpp-python (default: $COLLM_CACHE/ref-venv/bin/python).
    #[arg(long)]
    llama_python: Option<PathBuf>,
    /// Write a Markdown report here.
    #[arg(long)]
    report: Option<PathBuf>,
    /// Internal: measure one mode in this process and print one JSON line.
    #[arg(long, hide = true)]
    only: Option<Mode>,
    /// Raw θ for collaborative mode (default: the bundle's default operating point).
    #[arg(long)]
    threshold: Option<f32>,
    /// Instead of --threshold: each head's calibrated θ for this top-1 agreement.
    #[arg(long)]
    target_agreement: Option<f32>,
}

pub fn run(a: Args) -> Result<()> {
    match a.what {
        What::Decode(d) => match d.only {
            Some(mode) => measure_one(&d, mode),
            None => orchestrate(&d),
        },
        What::Load(l) => super::load::run(l),
        What::CatchUp(c) => super::catch_up::run(c),
        What::Quality(q) => super::quality::run(q),
        What::Paper(p) => super::paper::run(p),
    }
}

fn measure_one(d: &DecodeArgs, mode: Mode) -> Result<()> {
    let mut model = SplitModel::open(&d.bundle, mode != Mode::Standalone)?;
    let prompt = model.text.encode(PROMPT)?;
    let opts = GenerateOptions::greedy(
        d.new_tokens,
        mode,
        ExitPolicy::new(
            &model.manifest,
            OperatingPoint::resolve(&model.manifest, d.threshold, d.target_agreement),
        )?,
        Encoding::F16,
        vec![],
    );
    let exits = model.exit_layers();
    let mut cloud = model.take_in_process_cloud(collm_runtime::CatchUp::Exact)?;
    let mut speeds = vec![];
    let mut edge_share = 0.0;
    for run in 0..=d.runs {
        let generation = collm_runtime::generate(
            &mut model.edge,
            &exits,
            cloud.as_mut().map(|c| c as &mut dyn CloudTransport),
            &prompt,
            &opts,
            &mut |_| {},
        )?;
        edge_share = generation.edge_share;
        if run > 0 {
            speeds.push(generation.timings.decode_tokens_per_s);
        }
    }
    speeds.sort_by(f64::total_cmp);
    let median = speeds[speeds.len() / 2];
    println!(
        "{}",
        serde_json::json!({
            "engine": format!("ce-collm {}", serde_json::to_value(mode)?.as_str().unwrap_or("?")),
            "decode_tokens_per_s": median,
            "prompt_tokens": prompt.len(),
            "new_tokens": d.new_tokens,
            "edge_share": edge_share,
            "peak_rss_mb": peak_rss_mb(),
        })
    );
    Ok(())
}

fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse::<f64>().ok()))
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

fn orchestrate(d: &DecodeArgs) -> Result<()> {
    let exe = std::env::current_exe().context("own executable")?;
    let mut rows: Vec<serde_json::Value> = vec![];
    for mode in ["full", "collaborative", "standalone"] {
        let out = Command::new(&exe)
            .args(["bench", "decode", "--bundle"])
            .arg(&d.bundle)
            .args(["--new-tokens", &d.new_tokens.to_string(), "--runs", &d.runs.to_string()])
            .args(
                d.threshold
                    .map(|t| vec!["--threshold".to_string(), t.to_string()])
                    .unwrap_or_default(),
            )
            .args(
                d.target_agreement
                    .map(|t| vec!["--target-agreement".to_string(), t.to_string()])
                    .unwrap_or_default(),
            )
            .args(["--only", mode])
            .output()?;
        if !out.status.success() {
            bail!("bench of {mode} failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        rows.push(serde_json::from_slice(&out.stdout)?);
        eprintln!("{}", rows.last().map(|r| r.to_string()).unwrap_or_default());
    }
    let cache = collm_runtime::ort_env::cache_dir();
    let python = d.llama_python.clone().unwrap_or_else(|| cache.join("ref-venv/bin/python"));
    let script =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tools/reference/bench_decode.py");
    let mut cmd = Command::new(&python);
    cmd.arg(&script).args([
        "--new-tokens",
        &d.new_tokens.to_string(),
        "--runs",
        &d.runs.to_string(),
    ]);
    if let Some(g) = &d.gguf {
        cmd.arg("--model").arg(g);
    }
    let out = cmd.output().with_context(|| {
        format!(
            "cannot run llama.cpp through {} (run tools/reference/setup-venv)",
            python.display()
        )
    })?;
    if !out.status.success() {
        bail!("llama.cpp bench failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let line = String::from_utf8_lossy(&out.stdout);
    let reference: serde_json::Value =
        serde_json::from_str(line.lines().last().unwrap_or_default())
            .context("llama.cpp bench output")?;
    eprintln!("{reference}");
    let ref_speed = reference["decode_tokens_per_s"].as_f64().unwrap_or(f64::NAN);
    let mut table = String::from(
        "| engine | decode tokens/s | × llama.cpp | peak RSS MB | edge share |\n|---|---:|---:|---:|---:|\n",
    );
    for r in rows.iter().chain(std::iter::once(&reference)) {
        let speed = r["decode_tokens_per_s"].as_f64().unwrap_or(f64::NAN);
        table.push_str(&format!(
            "| {} | {:.1} | {:.2} | {:.0} | {} |\n",
            r["engine"].as_str().unwrap_or("?"),
            speed,
            speed / ref_speed,
            r["peak_rss_mb"].as_f64().unwrap_or(f64::NAN),
            r["edge_share"].as_f64().map_or("–".to_string(), |s| format!("{:.0}%", s * 100.0)),
        ));
    }
    println!("{table}");
    if let Some(path) = &d.report {
        let md = format!(
            "# Decode benchmark\n\nCommand: `collm bench decode --bundle {} --new-tokens {} --runs {}` \
             (greedy, {} new tokens after a {}-token chat prompt, median of {} runs after a warm-up, \
             each engine in its own process; collaborative at {}, f16 uploads, in-process cloud).\n\n{table}",
            super::portable_path(&d.bundle),
            d.new_tokens,
            d.runs,
            d.new_tokens,
            rows[0]["prompt_tokens"],
            d.runs,
            match (d.threshold, d.target_agreement) {
                (Some(t), _) => format!("θ = {t}"),
                (None, Some(a)) => format!("target agreement {a}"),
                (None, None) => "the bundle's default operating point".to_string(),
            },
        );
        std::fs::write(path, md)?;
    }
    Ok(())
}
