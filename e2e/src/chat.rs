//! An edge agent's OpenAI API as a client sees it, over plain HTTP with curl: whole answers,
//! and streams read piece by piece, so that a test can act while one is under way.

use std::io::{BufRead, BufReader, Lines};
use std::net::SocketAddr;
use std::process::{Child, ChildStdout, Command, Stdio};

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;

/// curl's bound on one request: a long answer on a loaded 2-core machine.
const REQUEST_SECONDS: &str = "300";

/// `GET /v1/models`: the ids the agent serves.
pub fn model_ids(address: SocketAddr) -> Result<Vec<String>> {
    let url = format!("http://{address}/v1/models");
    let body = curl(&["--max-time", "30", &url], &format!("GET {url}"))?;
    let list: Value = serde_json::from_slice(&body)?;
    Ok(list["data"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["id"].as_str().map(str::to_string))
        .collect())
}

/// `POST /v1/chat/completions` of `request` (not streamed): the answer's JSON body.
pub fn chat(address: SocketAddr, request: &Value) -> Result<Value> {
    let url = format!("http://{address}/v1/chat/completions");
    let data = request.to_string();
    let json = "content-type: application/json";
    let args = ["--max-time", REQUEST_SECONDS, "-H", json, "--data-binary", &data, &url];
    let body = curl(&args, &format!("POST {url}"))?;
    serde_json::from_slice(&body).context("the answer is not JSON")
}

/// `curl -sS --fail-with-body ARGS`: the response body, or an error naming `what` with curl's
/// output.
fn curl(args: &[&str], what: &str) -> Result<Vec<u8>> {
    let out = Command::new("curl")
        .args(["-sS", "--fail-with-body"])
        .args(args)
        .output()
        .context("running curl")?;
    ensure!(
        out.status.success(),
        "{what}: {} {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(out.stdout)
}

/// A streamed chat being read.
pub struct Stream {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
    /// The text pieces so far, one per chunk that carried content.
    pub pieces: Vec<String>,
    /// The token ids so far and where each came from (the `collm` extension of each chunk).
    pub tokens: Vec<u64>,
    pub sources: Vec<String>,
    pub finish_reason: Option<String>,
    /// The usage chunk (`stream_options.include_usage`), once it came.
    pub usage: Option<Value>,
    /// The last chunk's `collm` summary (mode, token counts by source, degraded).
    pub summary: Option<Value>,
    done: bool,
}

impl Stream {
    /// Sends `request` (which must ask for `stream: true`).
    pub fn start(address: SocketAddr, request: &Value) -> Result<Self> {
        let mut child = Command::new("curl")
            .args(["-sS", "-N", "--fail-with-body", "--max-time", REQUEST_SECONDS])
            .args(["-H", "content-type: application/json", "--data-binary"])
            .arg(request.to_string())
            .arg(format!("http://{address}/v1/chat/completions"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("running curl")?;
        let lines = BufReader::new(child.stdout.take().context("curl's stdout")?).lines();
        Ok(Self {
            child,
            lines,
            pieces: Vec::new(),
            tokens: Vec::new(),
            sources: Vec::new(),
            finish_reason: None,
            usage: None,
            summary: None,
            done: false,
        })
    }

    /// Reads events until one more piece of text came (true), or the stream ended (false).
    pub fn next_piece(&mut self) -> Result<bool> {
        while !self.done {
            let Some(line) = self.lines.next() else {
                bail!("the stream ended without [DONE] after {} pieces", self.pieces.len());
            };
            let line = line?;
            let Some(data) = line.strip_prefix("data: ") else {
                ensure!(line.trim().is_empty(), "not an event: {line}");
                continue;
            };
            if data.trim() == "[DONE]" {
                self.done = true;
                break;
            }
            let chunk: Value =
                serde_json::from_str(data).with_context(|| format!("event {data}"))?;
            ensure!(chunk.get("error").is_none(), "the stream failed: {chunk}");
            let ids = chunk["collm"]["tokens"].as_array().into_iter().flatten();
            self.tokens.extend(ids.filter_map(Value::as_u64));
            let sources = chunk["collm"]["sources"].as_array().into_iter().flatten();
            self.sources.extend(sources.map(|s| s.as_str().unwrap_or_default().to_string()));
            if !chunk["collm"]["mode"].is_null() {
                self.summary = Some(chunk["collm"].clone());
            }
            if !chunk["usage"].is_null() {
                self.usage = Some(chunk["usage"].clone());
            }
            let Some(choice) = chunk["choices"].as_array().and_then(|c| c.first()) else {
                continue;
            };
            if let Some(reason) = choice["finish_reason"].as_str() {
                self.finish_reason = Some(reason.to_string());
            }
            if let Some(text) = choice["delta"]["content"].as_str().filter(|t| !t.is_empty()) {
                self.pieces.push(text.to_string());
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Reads the rest of the stream.
    pub fn finish(mut self) -> Result<Streamed> {
        while self.next_piece()? {}
        let status = self.child.wait()?;
        ensure!(status.success(), "curl exited with {status}");
        Ok(Streamed {
            text: self.pieces.concat(),
            pieces: std::mem::take(&mut self.pieces),
            tokens: std::mem::take(&mut self.tokens),
            sources: std::mem::take(&mut self.sources),
            finish_reason: self.finish_reason.take().context("no finish_reason")?,
            usage: self.usage.take().context("no usage chunk")?,
            summary: self.summary.take().context("no collm summary chunk")?,
        })
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A whole stream.
#[derive(Debug, Clone, PartialEq)]
pub struct Streamed {
    pub pieces: Vec<String>,
    pub tokens: Vec<u64>,
    pub sources: Vec<String>,
    pub text: String,
    pub finish_reason: String,
    pub usage: Value,
    /// The stream's `collm` summary.
    pub summary: Value,
}

/// A usage or `collm` summary field as a count (0 when absent).
pub fn count(usage: &Value, field: &str) -> u64 {
    usage[field].as_u64().unwrap_or(0)
}
