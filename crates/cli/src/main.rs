//! `collm`: the model tooling of ce-collm.

mod cmd;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "collm",
    version,
    about = "ce-collm's model tooling: export, bundle, calibrate, generate, score, bench, tiny, up, chat"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Turn a GGUF or Hugging Face checkpoint into a partitioned bundle.
    Export(cmd::export::Args),
    /// Generate text with the split model (in-process edge + cloud).
    Generate(cmd::generate::Args),
    /// Teacher-forced scoring of a known continuation.
    Score(cmd::score::Args),
    /// Fit the exit heads on ShareGPT and record their confidence/agreement trade-off.
    Calibrate(cmd::calibrate::Args),
    /// Benchmarks: decode speed against llama.cpp, load on a running agent, catch-up modes.
    Bench(cmd::bench::Args),
    /// Bundle archives for Kubernetes: `collm bundle pack DIR --out FILE`.
    Bundle(cmd::bundle::Args),
    /// Write a small seeded random checkpoint of the Llama architecture (for tests).
    Tiny(cmd::tiny::Args),
    /// Run a local stack: cloud workers and an edge agent on loopback, until interrupted.
    Up(cmd::up::Args),
    /// Send one chat message to an edge agent and stream the answer, coloured by source.
    Chat(cmd::chat::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Export(a) => cmd::export::run(a),
        Command::Generate(a) => cmd::generate::run(a),
        Command::Score(a) => cmd::score::run(a),
        Command::Tiny(a) => cmd::tiny::run(a),
        Command::Bundle(a) => cmd::bundle::run(a),
        Command::Bench(a) => cmd::bench::run(a),
        Command::Calibrate(a) => cmd::calibrate::run(a),
        Command::Up(a) => cmd::up::run(a),
        Command::Chat(a) => cmd::chat::run(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, skipping causes a message already quotes.
fn one_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line.replace('\n', " ")
}
