//! `collm bench paper`: the paper's comparison, measured side by side in one run. A cloud
//! worker and an edge agent, each pinned to its own core, toxiproxy between them; for every
//! link profile every mode answers the same prompts one at a time, greedy. Per mode: end-to-end
//! time and time to first token, tokens/s, the CPU-seconds each process spent per request (its
//! own accounting), bytes uploaded per token, edge share, rollbacks, and how the answers compare
//! with the full model's (the cloud-only answers): identical, first difference, loops. Figures
//! are also given as ratios to cloud-only on the same profile.

mod figures;
mod report;
mod stack;

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use collm_runtime::repetition::LoopDetector;
use serde_json::{Value, json};

use self::figures::{Answer, CpuSeconds, Row};
use self::stack::{Placement, Profile, Stack};
use super::load::stream_chat;
use super::prompts::PromptSource;

/// The model name the agent serves under.
const MODEL: &str = "smollm2";
/// The modes compared, named as in the API; cloud-only first (the reference).
const MODES: [&str; 5] = ["cloud", "naive", "standalone", "collaborative", "speculative"];

#[derive(clap::Args)]
pub struct PaperArgs {
    /// The calibrated bundle both sides serve (default: the demo's).
    #[arg(long)]
    bundle: Option<PathBuf>,
    /// Prompts as JSON lines, each {"messages": [{"role": "user", "content": "…"}]}
    /// [default: ShareGPT first turns from --sharegpt-skip on, disjoint from calibration].
    #[arg(long)]
    prompts: Option<PathBuf>,
    /// How many prompts (the first of the file, or of the ShareGPT slice).
    #[arg(long, default_value_t = 32)]
    count: usize,
    /// Where the default ShareGPT slice starts: calibration reads the first few hundred.
    #[arg(long, default_value_t = 2000)]
    sharegpt_skip: usize,
    /// Round-trip times added by toxiproxy, in ms.
    #[arg(long, value_delimiter = ',', default_value = "0,20,60")]
    rtt_ms: Vec<u32>,
    /// The bandwidth-limited profile: this many kbit/s each way (0: none) ... (10 Mbit/s: an
    /// edge site's uplink; at 1 Mbit/s naive mode alone takes an hour over 32 × 128 tokens)
    #[arg(long, default_value_t = 10_000)]
    bandwidth_kbit: u32,
    /// ... at this round-trip time.
    #[arg(long, default_value_t = 20)]
    bandwidth_rtt_ms: u32,
    /// New tokens per answer at most.
    #[arg(long, default_value_t = 128)]
    max_tokens: usize,
    /// Modes to run, comma-separated, of cloud, naive, standalone, collaborative, speculative
    /// (cloud is always run: everything is compared with it) [default: all].
    #[arg(long, value_delimiter = ',')]
    modes: Option<Vec<String>>,
    /// Hidden-state encoding the edge uploads (f32: speculative answers are exactly the full
    /// model's; f16 halves the bytes and moves some near-tied tokens).
    #[arg(long, default_value = "f32")]
    encoding: String,
    /// The core the edge agent is pinned to.
    #[arg(long, default_value_t = 0)]
    edge_core: usize,
    /// The core the cloud worker is pinned to (it also serves cloud-only requests).
    #[arg(long, default_value_t = 1)]
    cloud_core: usize,
    /// Write the figures as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write the Markdown report here.
    #[arg(long)]
    report: Option<PathBuf>,
}

pub fn run(a: PaperArgs) -> Result<()> {
    let modes = chosen_modes(a.modes.as_deref())?;
    if a.rtt_ms.is_empty() || a.count == 0 || a.max_tokens == 0 {
        bail!("--rtt-ms, --count and --max-tokens need at least one");
    }
    let bundle = a
        .bundle
        .clone()
        .unwrap_or_else(|| collm_runtime::ort_env::cache_dir().join("bundles/smollm2-135m"));
    let prompts = load_prompts(&a)?;
    let mut profiles: Vec<Profile> =
        a.rtt_ms.iter().map(|&rtt_ms| Profile { rtt_ms, bandwidth_kbit: None }).collect();
    if a.bandwidth_kbit > 0 {
        profiles
            .push(Profile { rtt_ms: a.bandwidth_rtt_ms, bandwidth_kbit: Some(a.bandwidth_kbit) });
    }
    let bins =
        std::env::current_exe()?.parent().context("the collm binary's directory")?.to_path_buf();
    let scratch = tempfile::tempdir()?;
    let load_before = load_average();
    let started = Stack::start(
        &bins,
        &stack::toxiproxy_binary()?,
        &bundle,
        &Placement {
            edge_core: a.edge_core,
            cloud_core: a.cloud_core,
            encoding: a.encoding.clone(),
        },
        scratch.path(),
    );
    let stack = match started {
        Ok(s) => s,
        Err(e) => {
            let logs = scratch.keep();
            return Err(e.context(format!("the processes' logs are in {}", logs.display())));
        }
    };
    eprintln!(
        "edge agent at {}; {} prompts, {} profiles, modes {modes:?}",
        stack.edge_url,
        prompts.len(),
        profiles.len()
    );
    // Warm-up: every mode once, so first-use costs (graph loading, connections) are not measured.
    stack.shape(profiles[0])?;
    for mode in &modes {
        let o = stream_chat(&stack.edge_url, &body(&prompts[0], mode, 8));
        if let Some(e) = o.error {
            bail!("warm-up request in {mode} mode failed: {e}");
        }
    }
    let run = RunInfo {
        command: std::iter::once("collm".to_string())
            .chain(std::env::args().skip(1).map(|a| portable(&a)))
            .collect::<Vec<_>>()
            .join(" "),
        bundle: portable(&bundle.display().to_string()),
        prompts: describe_prompts(&a),
        prompt_count: prompts.len(),
        max_tokens: a.max_tokens,
        load_before,
        load_after: String::new(),
        cores: (a.edge_core, a.cloud_core),
        runtime_env: format!("{}, edge uploads {}", stack::runtime_env(), a.encoding),
    };
    let detector = LoopDetector::default();
    let mut reference: Option<Vec<Vec<u32>>> = None;
    let mut rows: Vec<Row> = vec![];
    for &profile in &profiles {
        stack.shape(profile)?;
        for mode in &modes {
            let before = stack.cpu()?;
            let (mut answers, mut failed, mut errors) = (vec![], 0, vec![]);
            for p in &prompts {
                let o = stream_chat(&stack.edge_url, &body(p, mode, a.max_tokens));
                match o.error {
                    Some(e) => {
                        failed += 1;
                        errors.push(e);
                    }
                    None => answers.push(Answer {
                        e2e_s: o.latency.as_secs_f64(),
                        ttft_s: o.first_token.map(|d| d.as_secs_f64()),
                        ids: o.ids,
                        edge_tokens: o.edge_tokens,
                        uploaded_bytes: o.uploaded_bytes,
                        rollbacks: o.rollbacks,
                    }),
                }
            }
            let after = stack.cpu()?;
            if failed == prompts.len() {
                bail!("every {mode} request failed on {}: {}", profile.label(), errors[0]);
            }
            // The full model's answers are the cloud-only deployment's: the first profile's.
            if *mode == "cloud" && reference.is_none() {
                if failed > 0 {
                    bail!("cloud-only requests failed, so there is no reference: {}", errors[0]);
                }
                reference = Some(answers.iter().map(|x| x.ids.clone()).collect());
            }
            let cpu =
                CpuSeconds { edge: after.edge - before.edge, cloud: after.cloud - before.cloud };
            let row = figures::row(
                (profile.rtt_ms, profile.bandwidth_kbit),
                mode,
                &answers,
                failed,
                cpu,
                reference.as_deref().unwrap_or_default(),
                &detector,
            );
            eprintln!(
                "{}: {mode}: e2e p50 {:.2} s, {:.1} tokens/s, cloud CPU {:.2} s/request, identical {:.0}%{}",
                profile.label(),
                row.e2e_p50_s,
                row.tokens_per_s,
                row.cloud_cpu_s_per_request,
                100.0 * row.identical_share,
                errors.first().map(|e| format!(", {failed} failed: {e}")).unwrap_or_default()
            );
            rows.push(row);
            write(&a, &run, &rows, &detector, load_average())?;
        }
    }
    drop(stack);
    let md = write(&a, &run, &rows, &detector, load_average())?;
    if a.report.is_none() {
        print!("{md}");
    }
    Ok(())
}

/// Writes the JSON and the report as they stand: after every mode, so an interrupted run
/// keeps what it measured.
fn write(
    a: &PaperArgs,
    run: &RunInfo,
    rows: &[Row],
    detector: &LoopDetector,
    load_now: String,
) -> Result<String> {
    let mut rows = rows.to_vec();
    figures::with_ratios(&mut rows);
    let run = RunInfo { load_after: load_now, ..run.clone() };
    let doc = json!({
        "runs": rows,
        "prompts": run.prompts, "prompt_count": run.prompt_count, "max_tokens": run.max_tokens,
        "bundle": run.bundle, "edge_core": a.edge_core, "cloud_core": a.cloud_core,
        "runtime_env": run.runtime_env,
        "load_average_before": run.load_before, "load_average_after": run.load_after,
        "loop_detector": detector,
    });
    if let Some(path) = &a.json {
        std::fs::write(path, serde_json::to_string_pretty(&doc)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
    }
    let md = report::markdown(&run, &rows, detector);
    if let Some(path) = &a.report {
        std::fs::write(path, &md).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(md)
}

/// What the report says about the run itself.
#[derive(Clone)]
pub struct RunInfo {
    pub command: String,
    pub bundle: String,
    pub prompts: String,
    pub prompt_count: usize,
    pub max_tokens: usize,
    pub load_before: String,
    pub load_after: String,
    pub cores: (usize, usize),
    pub runtime_env: String,
}

fn chosen_modes(asked: Option<&[String]>) -> Result<Vec<&'static str>> {
    let Some(asked) = asked else { return Ok(MODES.to_vec()) };
    for m in asked {
        if !MODES.contains(&m.as_str()) {
            bail!("unknown mode {m:?} (expected some of {})", MODES.join(", "));
        }
    }
    // In the canonical order, cloud-only first.
    Ok(MODES.iter().copied().filter(|m| *m == "cloud" || asked.iter().any(|a| a == m)).collect())
}

/// A chat request as a user's client sends it: greedy, streamed.
fn body(messages: &Value, mode: &str, max_tokens: usize) -> Value {
    json!({
        "model": MODEL, "messages": messages, "max_tokens": max_tokens,
        "temperature": 0.0, "seed": 0, "stream": true, "mode": mode,
    })
}

/// Every prompt's `messages` array.
fn load_prompts(a: &PaperArgs) -> Result<Vec<Value>> {
    let Some(path) = &a.prompts else {
        let texts = PromptSource::Sharegpt.load(None, a.sharegpt_skip, a.count, 400)?;
        return Ok(texts.into_iter().map(|t| json!([{"role": "user", "content": t}])).collect());
    };
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let prompts = parse_prompts(&text).with_context(|| format!("{}", path.display()))?;
    if prompts.len() < a.count {
        bail!("{} holds {} prompts, --count asks for {}", path.display(), prompts.len(), a.count);
    }
    Ok(prompts.into_iter().take(a.count).collect())
}

/// JSON lines of `{"messages": [...]}`; blank lines are skipped; a bad line is named.
fn parse_prompts(text: &str) -> Result<Vec<Value>> {
    let mut out = vec![];
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let v: Value =
            serde_json::from_str(line).with_context(|| format!("line {}: not JSON", i + 1))?;
        let messages = &v["messages"];
        let ok = messages.as_array().is_some_and(|m| {
            !m.is_empty() && m.iter().all(|x| x["role"].is_string() && x["content"].is_string())
        });
        if !ok {
            bail!(
                "line {}: expected {{\"messages\": [{{\"role\": …, \"content\": …}}, …]}}",
                i + 1
            );
        }
        out.push(messages.clone());
    }
    Ok(out)
}

fn describe_prompts(a: &PaperArgs) -> String {
    match &a.prompts {
        Some(p) => format!("the first {} prompts of {}", a.count, p.display()),
        None => format!(
            "{} ShareGPT first turns from prompt {} on (calibration reads the first few hundred)",
            a.count, a.sharegpt_skip
        ),
    }
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// `text` with this machine's directories written as a reader's clone and cache have them:
/// the cache as `$COLLM_CACHE`, the working directory as a relative path, the home as `~`.
fn portable(text: &str) -> String {
    let mut out = text.to_string();
    let dirs = [
        (std::env::var("COLLM_CACHE").ok(), "$COLLM_CACHE"),
        (std::env::current_dir().ok().map(|d| d.display().to_string()), "."),
        (std::env::var("HOME").ok(), "~"),
    ];
    for (dir, name) in dirs {
        if let Some(dir) = dir.filter(|d| d.len() > 1) {
            out = out.replace(&format!("{}/", dir.trim_end_matches('/')), &format!("{name}/"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompts_are_json_lines_of_messages_and_a_bad_line_is_named() {
        let ok = "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}]}\n\n{\"messages\": [{\"role\": \"system\", \"content\": \"s\"}, {\"role\": \"user\", \"content\": \"q\"}]}\n";
        let p = parse_prompts(ok).expect("parses");
        assert_eq!(p.len(), 2);
        assert_eq!(p[1][1]["content"], "q");
        let e = parse_prompts("{\"messages\": []}").expect_err("empty");
        assert!(format!("{e:#}").contains("line 1"), "{e:#}");
        let e = parse_prompts("{\"messages\": [{\"role\": \"user\", \"content\": \"a\"}]}\nnope")
            .expect_err("bad");
        assert!(format!("{e:#}").contains("line 2: not JSON"), "{e:#}");
    }

    #[test]
    fn modes_keep_the_api_order_with_cloud_only_first() {
        assert_eq!(chosen_modes(None).expect("all"), MODES.to_vec());
        let some = vec!["speculative".to_string(), "naive".to_string()];
        assert_eq!(chosen_modes(Some(&some)).expect("some"), vec!["cloud", "naive", "speculative"]);
        assert!(chosen_modes(Some(&["fast".to_string()])).is_err());
    }
}
