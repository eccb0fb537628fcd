//! `collm chat`: one chat request to an edge agent's OpenAI API, streamed, each piece of text
//! coloured by who answered it (edge exit head, cloud, or edge fallback), then a summary.

use std::io::{BufRead, BufReader, IsTerminal, Write};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use serde_json::{Value, json};

#[derive(Parser)]
pub struct Args {
    /// The edge agent, e.g. http://127.0.0.1:8080.
    #[arg(long)]
    url: String,
    /// The user's message.
    message: String,
    /// A system message before it.
    #[arg(long)]
    system: Option<String>,
    /// Model name [default: the first the agent lists].
    #[arg(long)]
    model: Option<String>,
    /// Most tokens to generate.
    #[arg(long, default_value_t = 256)]
    max_tokens: usize,
    /// Sampling temperature (0: greedy).
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// Seed of the sampler [default: the agent's].
    #[arg(long)]
    seed: Option<u64>,
    /// Who answers the tokens [default: the agent's].
    #[arg(long, value_enum)]
    mode: Option<super::ApiMode>,
    /// Colour the text by source even when stdout is not a terminal.
    #[arg(long)]
    color: bool,
}

const GREEN: &str = "\x1b[32m";
const BLUE: &str = "\x1b[34m";
const YELLOW: &str = "\x1b[33m";
const RESET: &str = "\x1b[0m";

fn http() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(600)))
        .build()
        .into()
}

pub fn run(a: Args) -> Result<()> {
    let base = a.url.trim_end_matches('/');
    let model = match a.model {
        Some(m) => m,
        None => {
            let mut resp = http()
                .get(&format!("{base}/v1/models"))
                .call()
                .with_context(|| format!("cannot reach {base}"))?;
            let models: Value = serde_json::from_str(&resp.body_mut().read_to_string()?)?;
            models["data"][0]["id"].as_str().context("the agent lists no model")?.to_owned()
        }
    };
    let mut messages = vec![];
    if let Some(s) = &a.system {
        messages.push(json!({"role": "system", "content": s}));
    }
    messages.push(json!({"role": "user", "content": a.message}));
    let mut body = json!({
        "model": model, "messages": messages, "max_tokens": a.max_tokens,
        "temperature": a.temperature, "stream": true,
    });
    if let Some(seed) = a.seed {
        body["seed"] = json!(seed);
    }
    if let Some(mode) = a.mode {
        body["mode"] = json!(mode.as_str());
    }
    let started = Instant::now();
    let resp = http()
        .post(&format!("{base}/v1/chat/completions"))
        .header("content-type", "application/json")
        .send(body.to_string().as_bytes())
        .with_context(|| format!("cannot reach {base}"))?;
    if resp.status() != 200 {
        let status = resp.status();
        let text = resp.into_body().read_to_string().unwrap_or_default();
        let message = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
            .unwrap_or(text);
        bail!("the agent refused the request ({status}): {message}");
    }
    let color = a.color || std::io::stdout().is_terminal();
    let mut out = std::io::stdout().lock();
    let mut first_token = None;
    let mut usage = Value::Null;
    for line in BufReader::new(resp.into_body().into_reader()).lines() {
        let line = line.context("reading the stream")?;
        let Some(data) = line.strip_prefix("data: ") else { continue };
        if data == "[DONE]" {
            break;
        }
        let ev: Value = serde_json::from_str(data).context("an event that is not JSON")?;
        if let Some(err) = ev.get("error") {
            bail!("the generation failed: {}", err["message"]);
        }
        let text = ev["choices"][0]["delta"]["content"].as_str().unwrap_or("");
        let sources = ev["collm"]["sources"].as_array().cloned().unwrap_or_default();
        if !sources.is_empty() && first_token.is_none() {
            first_token = Some(started.elapsed());
        }
        let paint = match sources.last().and_then(Value::as_str) {
            Some("edge") => GREEN,
            Some("cloud") => BLUE,
            Some(_) => YELLOW,
            None => "",
        };
        if color && !paint.is_empty() {
            write!(out, "{paint}{text}{RESET}")?;
        } else {
            write!(out, "{text}")?;
        }
        out.flush()?;
        // The last chunk's `collm` says how the answer was made.
        if !ev["collm"]["mode"].is_null() {
            usage = ev["collm"].clone();
        }
    }
    writeln!(out)?;
    let total = started.elapsed();
    let edge = usage["edge_tokens"].as_u64().unwrap_or(0);
    let cloud = usage["cloud_tokens"].as_u64().unwrap_or(0);
    let fallback = usage["latency_fallback_tokens"].as_u64().unwrap_or(0);
    let n = edge + cloud + fallback;
    let share = if n > 0 { 100.0 * (edge + fallback) as f64 / n as f64 } else { 0.0 };
    let legend = if color {
        format!("{GREEN}edge{RESET} / {BLUE}cloud{RESET} / {YELLOW}edge fallback{RESET}")
    } else {
        "edge / cloud / edge fallback".into()
    };
    eprintln!(
        "\n{n} tokens ({legend}): {edge} edge, {cloud} cloud, {fallback} fallback — edge share {share:.0}%, {} bytes uploaded, mode {}, first token {:.0} ms, total {:.2} s{}",
        usage["uploaded_bytes"].as_u64().unwrap_or(0),
        usage["mode"].as_str().unwrap_or("?"),
        first_token.unwrap_or(total).as_secs_f64() * 1e3,
        total.as_secs_f64(),
        if usage["degraded"] == true { " (degraded: no cloud reachable)" } else { "" },
    );
    Ok(())
}
