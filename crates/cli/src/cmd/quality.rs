//! `collm bench quality`: answer quality free-running, per mode, against the full model (the
//! cloud-only deployment's answers). Per mode: how many answers are identical to the full
//! model's, where they first differ, how many fall into a loop, and how likely the full model
//! finds them (mean negative log-likelihood per token).

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use collm_calibrate::QualityTally;
use collm_runtime::repetition::LoopDetector;
use collm_runtime::{
    CatchUp, Encoding, ExitPolicy, Mode, OperatingPoint, RepetitionGuard, SplitModel,
};

use super::free_running::{FreeRunning, ModeRun, QualityRun};
use super::prompts::{PromptSource, encode_chats};

#[derive(clap::Args)]
pub struct QualityArgs {
    /// The bundle directory (`collm export` wrote it, `collm calibrate` calibrated it).
    #[arg(long)]
    bundle: PathBuf,
    /// Where the prompts come from.
    #[arg(long, value_enum, default_value = "sharegpt")]
    source: PromptSource,
    /// The corpus (default: where tools/fetch-artifacts puts it).
    #[arg(long)]
    data: Option<PathBuf>,
    /// How many prompts.
    #[arg(long, default_value_t = 32)]
    prompts: usize,
    /// Prompts passed over first. Default: 1000 for ShareGPT (calibration reads at most the
    /// first 700), 400 for ChatterBot (calibration mixes in at most the first 256).
    #[arg(long)]
    skip: Option<usize>,
    /// Longest prompt kept, in characters of the user message.
    #[arg(long, default_value_t = 600)]
    max_chars: usize,
    /// New tokens per answer at most (greedy).
    #[arg(long, default_value_t = 128)]
    new_tokens: usize,
    /// Modes compared with the full model, comma-separated: `standalone`, `collaborative`
    /// (the bundle's default operating point), `collaborative:a=0.9` (target agreement),
    /// `collaborative:t=0.7` (raw θ); `:g=0` turns the repetition guard off, `:g=1` on.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "standalone,collaborative,collaborative:g=0"
    )]
    modes: Vec<ModeSpec>,
    /// How hidden states travel to the (in-process) cloud: f32 | f16 | int8.
    #[arg(long, default_value = "f32")]
    encoding: Encoding,
    /// Write the Markdown report here.
    #[arg(long)]
    report: Option<PathBuf>,
    /// Write every answer (tokens, origins, the full model's log-probabilities, whether it
    /// loops) as JSON lines.
    #[arg(long)]
    answers: Option<PathBuf>,
    /// Write the figures as JSON: `{"modes": [{"mode", "prompts", "edge_share",
    /// "identical_share", "mean_first_difference", "loop_share", "nll_per_token",
    /// "nll_ratio"}]}`, the full model first.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// A mode as named on the command line.
#[derive(Debug, Clone, PartialEq)]
pub struct ModeSpec {
    pub mode: Mode,
    pub point: Option<OperatingPoint>,
    pub guard: Option<RepetitionGuard>,
    pub text: String,
}

impl std::str::FromStr for ModeSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let mut parts = s.split(':');
        let mode: Mode = parts.next().unwrap_or_default().parse().map_err(|e| format!("{e}"))?;
        let mut spec = Self { mode, point: None, guard: None, text: s.to_string() };
        for part in parts {
            let (key, value) = part
                .split_once('=')
                .ok_or_else(|| format!("{s}: expected KEY=VALUE, got {part:?}"))?;
            let number =
                |v: &str| v.parse::<f32>().map_err(|_| format!("{s}: {v:?} is not a number"));
            match key {
                "a" => spec.point = Some(OperatingPoint::TargetAgreement(number(value)?)),
                "t" => spec.point = Some(OperatingPoint::Threshold(number(value)?)),
                "g" => {
                    spec.guard = Some(match value {
                        "0" => RepetitionGuard::OFF,
                        "1" => RepetitionGuard::ON,
                        _ => return Err(format!("{s}: g takes 0 (guard off) or 1 (on)")),
                    })
                }
                other => return Err(format!("{s}: unknown setting {other:?} (a, t or g)")),
            }
        }
        if spec.mode != Mode::Collaborative && (spec.point.is_some() || spec.guard.is_some()) {
            return Err(format!("{s}: only collaborative mode takes a, t or g"));
        }
        Ok(spec)
    }
}

impl ModeSpec {
    pub fn run(&self, model: &SplitModel) -> Result<ModeRun> {
        let m = &model.manifest;
        let point = self.point.unwrap_or_else(|| OperatingPoint::resolve(m, None, None));
        let mut policy = ExitPolicy::new(m, point)?;
        if let Some(g) = self.guard {
            policy = policy.with_guard(g);
        }
        Ok(ModeRun { label: self.text.clone(), mode: self.mode, policy })
    }
}

pub fn run(a: QualityArgs) -> Result<()> {
    if a.modes.iter().any(|m| m.mode == Mode::Full) {
        bail!("full is the reference every mode is compared with; list the other modes");
    }
    let skip = a.skip.unwrap_or(match a.source {
        PromptSource::Sharegpt => 1000,
        PromptSource::Chatterbot => 400,
    });
    let texts = a.source.load(a.data.as_deref(), skip, a.prompts, a.max_chars)?;
    let mut model = SplitModel::open(&a.bundle, true)?;
    let (prompts, dropped) = encode_chats(&model, &texts, a.new_tokens)?;
    if dropped > 0 {
        eprintln!("{dropped} prompts leave no room for {} new tokens; left out", a.new_tokens);
    }
    let runs = a.modes.iter().map(|m| m.run(&model)).collect::<Result<Vec<_>>>()?;
    let mut cloud = model
        .take_in_process_cloud(CatchUp::Exact)?
        .context("the bundle's cloud partition did not load")?;
    let detector = LoopDetector::default();
    let result = FreeRunning {
        model: &mut model,
        cloud: &mut cloud,
        new_tokens: a.new_tokens,
        encoding: a.encoding,
        detector,
        keep_answers: a.answers.is_some(),
    }
    .run(&prompts, &runs)?;
    let command = format!(
        "collm bench quality --bundle {} --source {} --prompts {} --skip {skip} --new-tokens {} --modes {}",
        a.bundle.display(),
        serde_json::to_value(a.source)?.as_str().unwrap_or("?"),
        a.prompts,
        a.new_tokens,
        a.modes.iter().map(|m| m.text.as_str()).collect::<Vec<_>>().join(","),
    );
    let header = format!(
        "Command: `{command}`\n\n{} {} prompts (from prompt {skip} on, one user turn each), greedy, at most {} new \
         tokens, {} uploads, in-process cloud catching up exactly. The reference is the full model, whose \
         answers are the cloud-only deployment's.\n",
        prompts.len(),
        a.source.name(),
        a.new_tokens,
        a.encoding.as_str(),
    );
    let report =
        format!("# Answer quality, free-running\n\n{header}\n{}", table(&result, &detector));
    println!("{report}");
    if let Some(path) = &a.report {
        std::fs::write(path, &report).with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &a.json {
        std::fs::write(path, serde_json::to_string_pretty(&figures(&result))?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &a.answers {
        let mut f = std::io::BufWriter::new(
            std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
        );
        for answer in &result.answers {
            writeln!(f, "{}", serde_json::to_string(answer)?)?;
        }
    }
    Ok(())
}

fn figures(result: &QualityRun) -> serde_json::Value {
    let one = |label: &str, t: &QualityTally| {
        serde_json::json!({
            "mode": label,
            "prompts": t.prompts,
            "edge_share": t.edge_share(),
            "identical_share": t.identical_share(),
            "mean_first_difference": t.mean_first_difference(),
            "loop_share": t.loop_share(),
            "nll_per_token": t.likelihood.mean(),
            "nll_ratio": t.nll_ratio(&result.full),
        })
    };
    let mut modes = vec![one("full", &result.full)];
    modes.extend(result.modes.iter().map(|(run, t)| one(&run.label, t)));
    serde_json::json!({ "modes": modes })
}

/// The report's table: one row per mode, the full model first.
pub fn table(result: &QualityRun, detector: &LoopDetector) -> String {
    let mut s = String::from(
        "| mode | θ per exit | edge share | identical to full | mean first difference (token) | \
         loops | NLL/token (full model) | NLL × full |\n|---|---|---:|---:|---:|---:|---:|---:|\n",
    );
    s.push_str(&row("full (= cloud-only)", "–", &result.full, &result.full));
    for (run, tally) in &result.modes {
        let thetas = match run.mode {
            Mode::Standalone => "–".to_string(),
            _ => thresholds(&run.policy),
        };
        s.push_str(&row(&run.label, &thetas, tally, &result.full));
    }
    s.push_str(&format!(
        "\nAn answer loops when its text ends in a repetition: a period of at most {} tokens repeated \
         over at least max({} × period, {}) tokens. Mean first difference: the index of the first token \
         that differs from the full model's answer, over the answers that differ. NLL: the full model's \
         mean negative log-likelihood per token of the mode's answers (natural log), teacher-forced.\n",
        detector.max_period, detector.min_repeats, detector.min_span
    ));
    s
}

pub fn thresholds(policy: &ExitPolicy) -> String {
    let guard = policy.guard();
    let mut s = policy
        .thresholds()
        .iter()
        .map(
            |(layer, t)| {
                if *t > 1.0 { format!("{layer}: never") } else { format!("{layer}: {t:.2}") }
            },
        )
        .collect::<Vec<_>>()
        .join(", ");
    s.push_str(if guard.is_on() { ", guard" } else { ", no guard" });
    s
}

fn row(label: &str, thetas: &str, t: &QualityTally, full: &QualityTally) -> String {
    format!(
        "| {label} | {thetas} | {:.1}% | {}/{} | {} | {}/{} | {:.3} | {:.3} |\n",
        100.0 * t.edge_share(),
        t.identical,
        t.prompts,
        t.mean_first_difference().map_or("–".to_string(), |d| format!("{d:.1}")),
        t.loops,
        t.prompts,
        t.likelihood.mean(),
        t.nll_ratio(full),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mode_specs_parse_points_and_guards() {
        let s: ModeSpec = "collaborative:a=0.9:g=0".parse().expect("parses");
        assert_eq!(s.mode, Mode::Collaborative);
        assert_eq!(s.point, Some(OperatingPoint::TargetAgreement(0.9)));
        assert_eq!(s.guard, Some(RepetitionGuard::OFF));
        let t: ModeSpec = "collaborative:t=0.7".parse().expect("parses");
        assert_eq!(t.point, Some(OperatingPoint::Threshold(0.7)));
        assert_eq!(t.guard, None);
        assert_eq!("standalone".parse::<ModeSpec>().expect("parses").mode, Mode::Standalone);
        for bad in [
            "collaborative:g=3",
            "standalone:a=0.9",
            "collaborative:x=1",
            "collaborative:a",
            "collaborative:a=high",
            "nope",
        ] {
            assert!(bad.parse::<ModeSpec>().is_err(), "{bad}");
        }
    }
}
