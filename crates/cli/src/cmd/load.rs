//! `collm bench load`: many concurrent streaming chat requests against one edge agent, as
//! users would send them; reports how many failed, token throughput, and request and
//! first-token latency percentiles. A benchmark: it measures, it does not judge.

use std::io::{BufRead, BufReader};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

#[derive(clap::Args)]
pub struct LoadArgs {
    /// The edge agent, e.g. http://127.0.0.1:8080.
    #[arg(long)]
    url: String,
    /// The model name the agent serves (`GET /v1/models` lists it).
    #[arg(long)]
    model: String,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Requests in all [default: --concurrency].
    #[arg(long)]
    requests: Option<usize>,
    /// Most tokens per answer.
    #[arg(long, default_value_t = 32)]
    max_tokens: usize,
    /// Write the report (Markdown) here as well.
    #[arg(long)]
    report: Option<std::path::PathBuf>,
    /// Print one JSON object instead of the text report.
    #[arg(long)]
    json: bool,
    /// Ask for this mode in every request [default: the agent's].
    #[arg(long, value_enum)]
    mode: Option<super::ApiMode>,
}

const PROMPTS: [&str; 4] = [
    "Give me three tips for staying healthy.",
    "What is the difference between a list and a tuple in Python?",
    "Write a short poem about the sea.",
    "Explain why the sky is blue in two sentences.",
];

/// One request's outcome.
#[derive(Default)]
pub struct Outcome {
    pub latency: Duration,
    pub first_token: Option<Duration>,
    pub tokens: u64,
    /// The answer's token ids, as streamed.
    pub ids: Vec<u32>,
    pub edge_tokens: u64,
    pub cloud_tokens: u64,
    pub uploaded_bytes: u64,
    pub rollbacks: u64,
    pub drafted: u64,
    pub accepted: u64,
    pub error: Option<String>,
}

fn one(
    url: &str,
    model: &str,
    mode: Option<&str>,
    prompt: &str,
    max_tokens: usize,
    seed: usize,
) -> Outcome {
    let mut body = json!({
        "model": model, "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens, "temperature": 0.7, "seed": seed, "stream": true,
    });
    if let Some(mode) = mode {
        body["mode"] = json!(mode);
    }
    stream_chat(url, &body)
}

/// Sends one streaming chat completion `body` to the edge agent at `url` and reads its events
/// to the end: what a user waits for, and what the agent says it cost.
pub fn stream_chat(url: &str, body: &Value) -> Outcome {
    let started = Instant::now();
    let mut outcome = Outcome::default();
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(900)))
        .build()
        .into();
    let result = (|| -> Result<()> {
        let resp = agent
            .post(&format!("{url}/v1/chat/completions"))
            .header("content-type", "application/json")
            .send(body.to_string().as_bytes())?;
        if resp.status() != 200 {
            bail!(
                "HTTP {}: {}",
                resp.status(),
                resp.into_body().read_to_string().unwrap_or_default()
            );
        }
        let mut done = false;
        for line in BufReader::new(resp.into_body().into_reader()).lines() {
            let line = line?;
            let Some(data) = line.strip_prefix("data: ") else { continue };
            if data == "[DONE]" {
                done = true;
                break;
            }
            let ev: Value = serde_json::from_str(data)?;
            if let Some(e) = ev.get("error") {
                bail!("stream error: {e}");
            }
            if outcome.first_token.is_none()
                && ev["collm"]["sources"].as_array().is_some_and(|s| !s.is_empty())
            {
                outcome.first_token = Some(started.elapsed());
            }
            if let Some(ids) = ev["collm"]["tokens"].as_array() {
                outcome.ids.extend(ids.iter().filter_map(|t| t.as_u64()).map(|t| t as u32));
            }
            // The last chunk's `collm` says how the answer was made.
            if let Some(u) = ev.get("collm").filter(|c| !c["mode"].is_null()) {
                let fallback = u["latency_fallback_tokens"].as_u64().unwrap_or(0);
                outcome.edge_tokens = u["edge_tokens"].as_u64().unwrap_or(0) + fallback;
                outcome.tokens = outcome.edge_tokens + u["cloud_tokens"].as_u64().unwrap_or(0);
                outcome.uploaded_bytes = u["uploaded_bytes"].as_u64().unwrap_or(0);
                outcome.cloud_tokens = u["cloud_tokens"].as_u64().unwrap_or(0);
                outcome.rollbacks = u["rollbacks"].as_u64().unwrap_or(0);
                outcome.drafted = u["drafted_tokens"].as_u64().unwrap_or(0);
                outcome.accepted = u["accepted_draft_tokens"].as_u64().unwrap_or(0);
            }
        }
        if !done {
            bail!("the stream ended without [DONE]");
        }
        Ok(())
    })();
    outcome.latency = started.elapsed();
    outcome.error = result.err().map(|e| format!("{e:#}"));
    outcome
}

pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

pub fn run(a: LoadArgs) -> Result<()> {
    let total = a.requests.unwrap_or(a.concurrency);
    if a.concurrency == 0 || total == 0 {
        bail!("--concurrency and --requests must be at least 1");
    }
    let url = a.url.trim_end_matches('/').to_owned();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let done = std::sync::atomic::AtomicUsize::new(0);
    // About ten progress lines on stderr however many requests (stdout keeps the report).
    let every = total.div_ceil(10);
    let started = Instant::now();
    let outcomes: Vec<Outcome> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..a.concurrency.min(total))
            .map(|_| {
                scope.spawn(|| {
                    let mut mine = vec![];
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        if i >= total {
                            return mine;
                        }
                        mine.push(one(
                            &url,
                            &a.model,
                            a.mode.map(super::ApiMode::as_str),
                            PROMPTS[i % PROMPTS.len()],
                            a.max_tokens,
                            i,
                        ));
                        let n = done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                        if n.is_multiple_of(every) || n == total {
                            eprintln!(
                                "bench load: {n}/{total} requests answered ({:.1} s)",
                                started.elapsed().as_secs_f64()
                            );
                        }
                    }
                })
            })
            .collect();
        workers.into_iter().flat_map(|w| w.join().unwrap_or_default()).collect()
    });
    let wall = started.elapsed().as_secs_f64();
    let failed: Vec<&str> = outcomes.iter().filter_map(|o| o.error.as_deref()).collect();
    let ok: Vec<&Outcome> = outcomes.iter().filter(|o| o.error.is_none()).collect();
    let mut latencies: Vec<f64> = ok.iter().map(|o| o.latency.as_secs_f64()).collect();
    latencies.sort_by(f64::total_cmp);
    let mut ttft: Vec<f64> =
        ok.iter().filter_map(|o| o.first_token).map(|d| d.as_secs_f64()).collect();
    ttft.sort_by(f64::total_cmp);
    let tokens: u64 = ok.iter().map(|o| o.tokens).sum();
    let edge: u64 = ok.iter().map(|o| o.edge_tokens).sum();
    let uploaded: u64 = ok.iter().map(|o| o.uploaded_bytes).sum();
    let sum = |f: fn(&Outcome) -> u64| ok.iter().map(|o| f(o)).sum::<u64>();
    let (cloud, rollbacks) = (sum(|o| o.cloud_tokens), sum(|o| o.rollbacks));
    let (drafted, accepted) = (sum(|o| o.drafted), sum(|o| o.accepted));
    let per_token = |n: u64| if tokens > 0 { n as f64 / tokens as f64 } else { 0.0 };
    let report = json!({
        "requests": total, "concurrency": a.concurrency, "failed": failed.len(),
        "completion_tokens": tokens, "wall_s": wall, "uploaded_bytes": uploaded,
        "mode": a.mode.map(super::ApiMode::as_str),
        "throughput_tokens_per_s": tokens as f64 / wall,
        "edge_share": per_token(edge),
        "rollbacks_per_token": per_token(rollbacks),
        "drafted_tokens": drafted,
        "accepted_draft_tokens": accepted,
        // Speculative mode: every verification ends with one cloud token.
        "tokens_per_verification": if drafted > 0 && cloud > 0 { tokens as f64 / cloud as f64 } else { 0.0 },
        "latency_s": {"p50": percentile(&latencies, 50.0), "p99": percentile(&latencies, 99.0)},
        "time_to_first_token_s": {"p50": percentile(&ttft, 50.0), "p99": percentile(&ttft, 99.0)},
        "first_errors": failed.iter().take(3).collect::<Vec<_>>(),
    });
    let text = format!(
        "# Load benchmark\n\nCommand: `collm bench load --url {url} --model {} --concurrency {} --requests {total} --max-tokens {}`\n\n\
         | requests | failed | tokens | wall s | tokens/s | edge share | latency p50 / p99 s | first token p50 / p99 s |\n\
         |---|---|---|---|---|---|---|---|\n\
         | {total} | {} | {tokens} | {wall:.1} | {:.1} | {:.0}% | {:.2} / {:.2} | {:.2} / {:.2} |\n",
        a.model,
        a.concurrency,
        a.max_tokens,
        failed.len(),
        tokens as f64 / wall,
        100.0 * report["edge_share"].as_f64().unwrap_or(0.0),
        percentile(&latencies, 50.0),
        percentile(&latencies, 99.0),
        percentile(&ttft, 50.0),
        percentile(&ttft, 99.0),
    );
    if let Some(path) = &a.report {
        std::fs::write(path, &text).with_context(|| format!("writing {}", path.display()))?;
    }
    if a.json {
        println!("{report}");
    } else {
        print!("{text}");
        for e in failed.iter().take(3) {
            eprintln!("error: {e}");
        }
    }
    if !failed.is_empty() {
        bail!("{} of {total} requests failed", failed.len());
    }
    Ok(())
}
