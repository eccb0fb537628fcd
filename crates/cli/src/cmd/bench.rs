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
    /// Rounds of (full, collaborative, standalone, llama.cpp), interleaved so that a change in
    /// the machine's load hits every engine alike; each engine's median over rounds is reported.
    #[arg(long, default_value_t = 1)]
    rounds: usize,
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
        Encoding::F32,
        vec![],
    );
    let exits = model.exit_layers();
    let mut cloud = model.take_in_process_cloud(collm_runtime::CatchUp::Exact)?;
    let mut speeds = vec![];
    let mut prompt_speeds = vec![];
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
            prompt_speeds.push(prompt.len() as f64 / (generation.timings.prefill_ms / 1e3));
        }
    }
    let median = median(&mut speeds);
    println!(
        "{}",
        serde_json::json!({
            "engine": format!("ce-collm {}", serde_json::to_value(mode)?.as_str().unwrap_or("?")),
            "decode_tokens_per_s": median,
            "prompt_eval_tokens_per_s": self::median(&mut prompt_speeds),
            "decode_runs_tokens_per_s": speeds,
            "prompt_tokens": prompt.len(),
            "generator": collm_runtime::ort_env::build_info(),
            "new_tokens": d.new_tokens,
            "edge_share": edge_share,
            "peak_rss_mb": peak_rss_mb(),
        })
    );
    Ok(())
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
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

/// One engine's process: ours in one mode.
fn run_ours(d: &DecodeArgs, mode: &str) -> Result<serde_json::Value> {
    let exe = std::env::current_exe().context("own executable")?;
    let out = Command::new(&exe)
        .args(["bench", "decode", "--bundle"])
        .arg(&d.bundle)
        .args(["--new-tokens", &d.new_tokens.to_string(), "--runs", &d.runs.to_string()])
        .args(
            d.threshold.map(|t| vec!["--threshold".to_string(), t.to_string()]).unwrap_or_default(),
        )
        .args(
            d.target_agreement
                .map(|t| vec!["--target-agreement".to_string(), t.to_string()])
                .unwrap_or_default(),
        )
        .args(["--only", mode])
        .output()?;
    if !out.status.success() {
        bail!("bench of {mode} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr));
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// tools/reference/bench_decode.py, carried in the binary: a `collm` installed or copied away
/// from its source tree (or built in another checkout) still runs the reference.
const LLAMA_BENCH_SCRIPT: &str = include_str!("../../../../tools/reference/bench_decode.py");

/// llama.cpp's run through tools/reference/bench_decode.py. Some AVX-512/AMX machines crash
/// llama.cpp on batches of several tokens; then the run is repeated with one token per batch
/// and the result says so.
fn run_llama(d: &DecodeArgs, n_batch: Option<usize>) -> Result<serde_json::Value> {
    let cache = collm_runtime::ort_env::cache_dir();
    let python = d.llama_python.clone().unwrap_or_else(|| cache.join("ref-venv/bin/python"));
    let mut cmd = Command::new(&python);
    cmd.args(["-c", LLAMA_BENCH_SCRIPT]).args([
        "--new-tokens",
        &d.new_tokens.to_string(),
        "--runs",
        &d.runs.to_string(),
    ]);
    if let Some(g) = &d.gguf {
        cmd.arg("--model").arg(g);
    }
    if let Some(n) = n_batch {
        cmd.args(["--n-batch", &n.to_string()]);
    }
    let out = cmd.output().with_context(|| {
        format!(
            "cannot run llama.cpp through {} (run tools/reference/setup-venv)",
            python.display()
        )
    })?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        if n_batch.is_none() {
            eprintln!(
                "llama.cpp bench failed ({}), retrying with one token per batch: {}",
                out.status,
                stderr.trim()
            );
            let mut retried = run_llama(d, Some(1))?;
            retried["note"] = serde_json::json!(format!(
                "n_batch=1: with batches of 512 llama.cpp died ({})",
                out.status
            ));
            return Ok(retried);
        }
        bail!("llama.cpp bench failed ({}): {}", out.status, stderr.trim());
    }
    let line = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(line.lines().last().unwrap_or_default()).context("llama.cpp bench output")
}

/// A row's decode speed, tokens/s (NaN when the row has none).
fn decode_speed(row: &serde_json::Value) -> f64 {
    row["decode_tokens_per_s"].as_f64().unwrap_or(f64::NAN)
}

/// The median over rounds of one engine's rows: its numbers from the round with the median
/// decode speed, and every round's speed.
fn median_row(rows: &[serde_json::Value]) -> serde_json::Value {
    let mut sorted: Vec<&serde_json::Value> = rows.iter().collect();
    sorted.sort_by(|a, b| decode_speed(a).total_cmp(&decode_speed(b)));
    let mut row = sorted.get(sorted.len() / 2).map(|r| (*r).clone()).unwrap_or_default();
    row["rounds_tokens_per_s"] = rows.iter().map(decode_speed).collect();
    row
}

/// An engine's decode speed over llama.cpp's, within each round (the two ran minutes apart, so
/// a change in the machine's speed hits both), and the median of those ratios. On a shared VM
/// llama.cpp's own speed moves by a quarter from round to round; a ratio of medians taken from
/// different rounds would carry that noise.
fn round_ratios(engine: &[serde_json::Value], llama: &[serde_json::Value]) -> (f64, Vec<f64>) {
    let ratios: Vec<f64> =
        engine.iter().zip(llama).map(|(e, l)| decode_speed(e) / decode_speed(l)).collect();
    let mut sorted = ratios.clone();
    sorted.sort_by(f64::total_cmp);
    let median = match sorted.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    };
    (median, ratios)
}

fn orchestrate(d: &DecodeArgs) -> Result<()> {
    let modes = ["full", "collaborative", "standalone"];
    let cpu = super::machine::cpu();
    let load_before = super::machine::load_average();
    let mut ours: Vec<Vec<serde_json::Value>> = vec![vec![]; modes.len()];
    let mut llama = vec![];
    let mut n_batch = None;
    for round in 0..d.rounds.max(1) {
        for (i, mode) in modes.iter().enumerate() {
            let row = run_ours(d, mode)?;
            eprintln!("round {round}: {row}");
            ours[i].push(row);
        }
        let row = run_llama(d, n_batch)?;
        if row["n_batch"].as_u64() == Some(1) {
            n_batch = Some(1);
        }
        eprintln!("round {round}: {row}");
        llama.push(row);
    }
    let load_after = super::machine::load_average();
    let rows: Vec<serde_json::Value> = ours.iter().map(|r| median_row(r)).collect();
    let reference = median_row(&llama);
    let ref_prompt = reference["prompt_eval_tokens_per_s"].as_f64().unwrap_or(f64::NAN);
    let mut table = String::from(
        "| engine | decode tokens/s | × llama.cpp (median of rounds) | × llama.cpp, each round | prompt eval tokens/s | × llama.cpp | peak RSS MB | edge share |\n|---|---:|---:|---|---:|---:|---:|---:|\n",
    );
    let engines = ours.iter().map(Vec::as_slice).chain(std::iter::once(llama.as_slice()));
    for (r, runs) in rows.iter().chain(std::iter::once(&reference)).zip(engines) {
        let speed = decode_speed(r);
        let prompt = r["prompt_eval_tokens_per_s"].as_f64().unwrap_or(f64::NAN);
        let (ratio, each) = round_ratios(runs, &llama);
        let each: Vec<String> = each.iter().map(|x| format!("{x:.2}")).collect();
        table.push_str(&format!(
            "| {} | {:.1} | {:.2} | {} | {:.0} | {:.2} | {:.0} | {} |\n",
            r["engine"].as_str().unwrap_or("?"),
            speed,
            ratio,
            each.join(", "),
            prompt,
            prompt / ref_prompt,
            r["peak_rss_mb"].as_f64().unwrap_or(f64::NAN),
            r["edge_share"].as_f64().map_or("–".to_string(), |s| format!("{:.0}%", s * 100.0)),
        ));
    }
    let load = |l: Option<[f64; 3]>| {
        l.map_or("unknown".to_string(), |[a, b, c]| format!("{a:.2} {b:.2} {c:.2}"))
    };
    let machine = format!(
        "CPU: {} ({} logical cores), vector extensions: {}. Load average (1/5/15 min) {} before, {} after.\n\
         ONNX Runtime: {}. llama.cpp: {}{}; its kernels: {}.\n",
        cpu.model,
        cpu.logical_cores,
        cpu.vector_extensions.join(" "),
        load(load_before),
        load(load_after),
        rows[0]["generator"].as_str().unwrap_or("?"),
        reference["generator"].as_str().unwrap_or("?"),
        reference["note"].as_str().map(|n| format!(" ({n})")).unwrap_or_default(),
        reference["system_info"].as_str().unwrap_or("?"),
    );
    println!("{machine}\n{table}");
    if let Some(path) = &d.report {
        let md = format!(
            "# Decode benchmark\n\nCommand: `collm bench decode --bundle {} --new-tokens {} --runs {} --rounds {}` \
             (greedy, {} new tokens after a {}-token chat prompt, median of {} runs after a warm-up, \
             each engine in its own process, {} interleaved round(s) of every engine, median round shown; \
             collaborative at {}, f32 uploads (the default), in-process cloud).\n\n{machine}\n{table}",
            super::portable_path(&d.bundle),
            d.new_tokens,
            d.runs,
            d.rounds,
            d.new_tokens,
            rows[0]["prompt_tokens"],
            d.runs,
            d.rounds,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn speeds(v: &[f64]) -> Vec<serde_json::Value> {
        v.iter().map(|s| serde_json::json!({ "decode_tokens_per_s": s })).collect()
    }

    #[test]
    fn ratios_are_read_within_each_round() {
        // llama.cpp ran slow in the second round; so did the engine. The ratio of medians
        // would say 1.25; every round says 1.1 or 1.2.
        let llama = speeds(&[100.0, 60.0, 90.0]);
        let engine = speeds(&[110.0, 72.0, 99.0]);
        let (median, each) = round_ratios(&engine, &llama);
        let rounded: Vec<f64> = each.iter().map(|x| (x * 100.0).round() / 100.0).collect();
        assert_eq!(rounded, vec![1.1, 1.2, 1.1]);
        assert!((median - 1.1).abs() < 1e-9);
        let (even, _) = round_ratios(&speeds(&[110.0, 72.0]), &llama[..2]);
        assert!((even - 1.15).abs() < 1e-9);
        assert!(round_ratios(&[], &[]).0.is_nan());
    }
}
