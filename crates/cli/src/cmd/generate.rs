use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::ValueEnum;
use collm_runtime::speculate::VerifyPasses;
use collm_runtime::text::ChatMessage;
use collm_runtime::transport::CloudTransport;
use collm_runtime::{
    CatchUp, Encoding, ExitPolicy, GenerateOptions, Mode, OperatingPoint, Origin, SamplingParams,
    SplitModel,
};

#[derive(clap::Args)]
pub struct Args {
    /// The bundle directory (`collm export` wrote it).
    #[arg(long)]
    bundle: PathBuf,
    /// Raw prompt text (special tokens such as <|im_start|> are recognised).
    #[arg(long, conflicts_with = "chat", required_unless_present = "chat")]
    prompt: Option<String>,
    /// A user message, formatted with the bundle's chat template.
    #[arg(long)]
    chat: Option<String>,
    /// System message for --chat.
    #[arg(long, requires = "chat")]
    system: Option<String>,
    /// Most tokens to generate.
    #[arg(long, default_value_t = 64)]
    max_tokens: usize,
    /// Who answers the tokens
    #[arg(long, value_enum, default_value_t = GenerateMode::Collaborative)]
    mode: GenerateMode,
    /// Raw confidence threshold θ for every exit head (θ > 1 never exits). Default: the
    /// calibrated default operating point (or 98% target agreement when calibration chose
    /// none), or 0.9 for uncalibrated heads.
    #[arg(long, conflicts_with = "target_agreement")]
    threshold: Option<f32>,
    /// Target top-1 agreement with the full model; each head uses its calibrated θ.
    #[arg(long)]
    target_agreement: Option<f32>,
    /// Whether a confident exit head may still not answer a token that would extend a
    /// repetition of the answer (the cloud answers it). Default: as calibration chose, else on.
    #[arg(long, value_enum)]
    repetition_guard: Option<GuardSetting>,
    /// How hidden states travel to the cloud: f32 | f16 | int8.
    #[arg(long, default_value = "f32")]
    encoding: Encoding,
    /// 0 = greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// Sample among this many most likely tokens only (0: all).
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    /// Sample within this much probability mass only (nucleus sampling; 1: all).
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    /// Seed of the sampler (the same seed gives the same tokens).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// How the in-process cloud catches up on positions the edge answered: exact | propagate
    /// (with --cloud, the worker's own setting applies).
    #[arg(long, default_value = "exact", conflicts_with = "cloud")]
    catch_up: CatchUp,
    /// How the in-process cloud runs a speculative draft's positions: checked (one batched
    /// pass, near ties again one position at a time) | batched | singly.
    #[arg(long, default_value = "checked", conflicts_with = "cloud")]
    verify: VerifyPasses,
    /// Print one JSON object instead of streaming text.
    #[arg(long)]
    json: bool,
    /// Ask a cloud worker at this gRPC URL (http://HOST:PORT) instead of running the cloud
    /// partition in this process; only the edge partition is loaded.
    #[arg(long, requires = "token")]
    cloud: Option<String>,
    /// Bearer token identifying this edge to the cloud worker.
    #[arg(long, requires = "cloud")]
    token: Option<String>,
}

pub fn run(a: Args) -> Result<()> {
    let standalone = a.mode == GenerateMode::Standalone;
    let mut model = SplitModel::open(&a.bundle, !standalone && a.cloud.is_none())?;
    let prompt_ids = match (&a.prompt, &a.chat) {
        (Some(p), _) => model.text.encode(p)?,
        (None, Some(c)) => {
            let mut messages = vec![];
            if let Some(s) = &a.system {
                messages.push(ChatMessage { role: "system".into(), content: s.clone() });
            }
            messages.push(ChatMessage { role: "user".into(), content: c.clone() });
            model.text.encode_chat(&messages)?
        }
        (None, None) => bail!("give --prompt TEXT or --chat TEXT"),
    };
    let point = OperatingPoint::resolve(&model.manifest, a.threshold, a.target_agreement);
    let uncalibrated = model.manifest.exits.iter().any(|e| e.calibration.is_none());
    let opts = GenerateOptions {
        max_tokens: a.max_tokens,
        mode: a.mode.into(),
        policy: match a.repetition_guard {
            None => ExitPolicy::new(&model.manifest, point)?,
            Some(g) => ExitPolicy::new(&model.manifest, point)?.with_guard(g.into()),
        },
        sampling: SamplingParams { temperature: a.temperature, top_k: a.top_k, top_p: a.top_p },
        seed: a.seed,
        encoding: a.encoding,
        stop_ids: model.text.stop_ids().to_vec(),
        adjustment: Default::default(),
        top_k: 0,
    };
    let exits = model.exit_layers();
    let mut cloud: Option<Box<dyn CloudTransport>> = match (&a.cloud, &a.token) {
        (Some(url), Some(token)) if !standalone => Some(Box::new(
            collm_cloud_client::GrpcCloud::connect(url, token, model.edge.shape.hidden_size)?,
        )),
        _ => {
            let cloud = model.take_in_process_cloud(a.catch_up)?;
            cloud.map(|c| Box::new(c.with_verify(a.verify)) as Box<dyn CloudTransport>)
        }
    };
    let color = std::io::stdout().is_terminal();
    let text_codec = &model.text;
    let json = a.json;
    let stop_ids = opts.stop_ids.clone();
    let mut stdout = std::io::stdout();
    let mut on_token = |ev: &collm_runtime::TokenEvent| {
        if json || stop_ids.contains(&ev.token) {
            return;
        }
        let piece = text_codec.token_text(ev.token);
        let _ = match (ev.origin, color) {
            (Origin::Edge, true) => write!(stdout, "\x1b[32m{piece}\x1b[0m"),
            (Origin::Cloud, true) => write!(stdout, "\x1b[34m{piece}\x1b[0m"),
            (Origin::Edge, false) => write!(stdout, "{piece}"),
            (Origin::Cloud, false) => write!(stdout, "[{piece}]"),
        };
        let _ = stdout.flush();
    };
    let generation = collm_runtime::generate(
        &mut model.edge,
        &exits,
        cloud.as_mut().map(|c| &mut **c as &mut dyn CloudTransport),
        &prompt_ids,
        &opts,
        &mut on_token,
    )?;
    let answer = model.text.decode(&generation.tokens)?;
    if a.mode == GenerateMode::Collaborative && uncalibrated {
        eprintln!(
            "note: the exit heads are not calibrated (run `collm calibrate`); they may have answered with wrong tokens"
        );
    }
    if a.json {
        let mut v = serde_json::to_value(&generation)?;
        v["text"] = serde_json::Value::String(answer);
        v["mode"] = a.mode.to_possible_value().map(|v| v.get_name().to_owned()).into();
        v["encoding"] = serde_json::Value::String(opts.encoding.as_str().into());
        let _ = writeln!(std::io::stdout(), "{v}");
    } else {
        let legend = if color { "green = edge, blue = cloud" } else { "[bracketed] = cloud" };
        let _ = writeln!(
            std::io::stdout(),
            "\n\n{} tokens ({legend}): edge share {:.0}%, {} bytes uploaded, {:.1} tokens/s decode, first token {:.0} ms",
            generation.tokens.len(),
            generation.edge_share * 100.0,
            generation.upload_bytes,
            generation.timings.decode_tokens_per_s,
            generation.timings.prefill_ms,
        );
        if generation.drafted > 0 {
            let _ = writeln!(
                std::io::stdout(),
                "{} draft tokens verified, {} accepted, {} rollbacks",
                generation.drafted,
                generation.accepted,
                generation.rollbacks,
            );
        }
    }
    Ok(())
}

/// `--mode`: the modes of the edge agent's API that run in one process.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum GenerateMode {
    /// The whole model, no exits: the API's `cloud` mode, run here in-process unless --cloud
    /// names a worker (`full`, its former name here, is still accepted)
    #[value(alias = "full")]
    Cloud,
    /// Every token from the edge's deepest exit head; the cloud is never asked
    Standalone,
    /// The edge answers when an exit head is confident, the cloud otherwise
    Collaborative,
    /// Lossless: the edge drafts, the cloud verifies and keeps the full model's tokens (use
    /// --encoding f32 for exactly its tokens)
    Speculative,
}

impl From<GenerateMode> for Mode {
    fn from(m: GenerateMode) -> Self {
        match m {
            GenerateMode::Cloud => Mode::Full,
            GenerateMode::Standalone => Mode::Standalone,
            GenerateMode::Collaborative => Mode::Collaborative,
            GenerateMode::Speculative => Mode::Speculative,
        }
    }
}

/// `--repetition-guard`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum GuardSetting {
    On,
    Off,
}

impl From<GuardSetting> for collm_runtime::RepetitionGuard {
    fn from(g: GuardSetting) -> Self {
        match g {
            GuardSetting::On => Self::ON,
            GuardSetting::Off => Self::OFF,
        }
    }
}
