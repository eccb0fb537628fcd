//! From a valid request to an OpenAI response: tokenize, check the context, run the generation
//! on its own task, and turn its tokens into text — all at once, or as server-sent events.
//! A client that goes away drops the event stream, which drops the token receiver, which ends
//! the generation: no work continues for nobody.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use collm_runtime::sampling::SamplingParams;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tracing::Instrument;

use super::AppState;
use super::error::ApiError;
use super::logprobs;
use super::openai::{Input, ValidRequest};
use crate::generation::{Finish, GenerationRequest, Summary, Token};
use crate::mode::Mode;
use crate::text_stream::TextStream;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Chat,
    Completion,
}

impl Kind {
    pub fn endpoint(self) -> &'static str {
        match self {
            Kind::Chat => "chat.completions",
            Kind::Completion => "completions",
        }
    }
}

/// The fixed parts of every response body of one request.
struct Envelope {
    kind: Kind,
    id: String,
    created: u64,
    model: String,
    mode: Mode,
    prompt_tokens: usize,
    /// The client asked for log probabilities.
    logprobs: bool,
}

impl Envelope {
    fn object(&self, streaming: bool) -> &'static str {
        match (self.kind, streaming) {
            (Kind::Chat, false) => "chat.completion",
            (Kind::Chat, true) => "chat.completion.chunk",
            (Kind::Completion, _) => "text_completion",
        }
    }

    /// OpenAI's usage: numbers only, so that tools adding up usage see nothing else.
    fn usage(&self, completion_tokens: usize) -> Value {
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": self.prompt_tokens + completion_tokens,
        })
    }

    /// Our extension: how the answer was made (the `collm` object of the last body).
    fn summary(&self, summary: &Summary) -> serde_json::Map<String, Value> {
        let mut m = serde_json::Map::new();
        m.insert("mode".into(), json!(self.mode.as_str()));
        m.insert("degraded".into(), json!(summary.degraded));
        m.insert("edge_tokens".into(), json!(summary.edge_tokens));
        m.insert("cloud_tokens".into(), json!(summary.cloud_tokens));
        m.insert("latency_fallback_tokens".into(), json!(summary.latency_fallback_tokens));
        m.insert("uploaded_bytes".into(), json!(summary.uploaded_bytes));
        m.insert("rollbacks".into(), json!(summary.rollbacks));
        m.insert("drafted_tokens".into(), json!(summary.drafted));
        m.insert("accepted_draft_tokens".into(), json!(summary.accepted));
        m
    }

    /// One choice: a chat message/delta or a completion's text.
    fn choice(
        &self,
        text: &str,
        streaming: bool,
        first: bool,
        finish: Option<&str>,
        logprobs: Value,
    ) -> Value {
        match (self.kind, streaming) {
            (Kind::Chat, false) => json!({
                "index": 0,
                "message": {"role": "assistant", "content": text, "refusal": null},
                "finish_reason": finish,
                "logprobs": logprobs,
            }),
            (Kind::Chat, true) => {
                let delta = match (first, finish) {
                    (true, _) => json!({"role": "assistant", "content": text}),
                    (false, Some(_)) if text.is_empty() => json!({}),
                    _ => json!({"content": text}),
                };
                json!({"index": 0, "delta": delta, "finish_reason": finish, "logprobs": logprobs})
            }
            (Kind::Completion, _) => {
                json!({"index": 0, "text": text, "finish_reason": finish, "logprobs": logprobs})
            }
        }
    }

    fn body(&self, choices: Vec<Value>, streaming: bool) -> serde_json::Map<String, Value> {
        let mut body = serde_json::Map::new();
        body.insert("id".into(), json!(self.id));
        body.insert("object".into(), json!(self.object(streaming)));
        body.insert("created".into(), json!(self.created));
        body.insert("model".into(), json!(self.model));
        body.insert("choices".into(), Value::Array(choices));
        body
    }
}

fn finish_reason(finish: Finish) -> &'static str {
    match finish {
        Finish::Length => "length",
        // Cancelled here means a stop string ended the text (a vanished client reads nothing).
        Finish::Stop | Finish::Cancelled => "stop",
    }
}

fn now() -> (u64, u128) {
    let d = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    (d.as_secs(), d.as_nanos())
}

pub async fn respond(
    state: Arc<AppState>,
    kind: Kind,
    v: ValidRequest,
    started: Instant,
) -> Result<Response, ApiError> {
    let generator = &state.generator;
    let engine = generator.engine();
    let prompt = match &v.input {
        Input::Chat(messages) => engine.text.encode_chat(messages)?,
        Input::Text(text) => engine.text.encode(text)?,
        Input::Tokens(ids) => {
            if let Some(bad) = ids.iter().find(|&&t| t as usize >= engine.vocab_size) {
                return Err(ApiError::invalid(
                    format!("token id {bad} is outside the vocabulary of {}", engine.vocab_size),
                    "prompt",
                ));
            }
            ids.clone()
        }
    };
    if prompt.is_empty() {
        return Err(ApiError::invalid("the prompt encodes to no token", "prompt"));
    }
    let room = engine.context.saturating_sub(prompt.len());
    let max_tokens = match v.max_tokens {
        Some(m) if m > room => {
            return Err(ApiError::ContextLength {
                context: engine.context,
                prompt: prompt.len(),
                max_tokens: m,
            });
        }
        Some(m) => m,
        None if room == 0 => {
            return Err(ApiError::ContextLength {
                context: engine.context,
                prompt: prompt.len(),
                max_tokens: 1,
            });
        }
        None => room,
    };
    let mode = v.mode.unwrap_or(state.mode);
    if mode != Mode::Standalone && generator.link().is_none() {
        return Err(ApiError::NoCloud(mode.as_str().into()));
    }
    v.adjustment.check(engine.vocab_size).map_err(|m| ApiError::invalid(m, "logit_bias"))?;
    if mode == Mode::Speculative {
        // A verdict on a draft carries neither an adjustment nor a distribution.
        let why = "the cloud's verification of a draft neither applies it nor returns \
                   probabilities; use mode collaborative, standalone or cloud";
        if v.logprobs.is_some() {
            return Err(ApiError::unsupported("`logprobs` in mode speculative", "logprobs", why));
        }
        if !v.adjustment.is_identity() {
            let param = if !v.adjustment.bias.is_empty() {
                "logit_bias"
            } else if v.adjustment.presence_penalty != 0.0 {
                "presence_penalty"
            } else {
                "frequency_penalty"
            };
            return Err(ApiError::unsupported(
                "`logit_bias` and penalties in mode speculative",
                param,
                why,
            ));
        }
    }
    let (created, nanos) = now();
    let span = tracing::info_span!("generate", mode = mode.as_str(), prompt_tokens = prompt.len());
    let request = GenerationRequest {
        max_tokens,
        sampling: SamplingParams { temperature: v.temperature, top_k: v.top_k, top_p: v.top_p },
        seed: v.seed.unwrap_or(nanos as u64),
        mode,
        policy: engine.policy_for(v.threshold)?,
        trace: collm_telemetry::propagation::traceparent(&span),
        adjustment: v.adjustment.clone(),
        alternatives: v.logprobs,
        prompt,
    };
    let envelope = Envelope {
        kind,
        id: format!("{}-{nanos:x}", if kind == Kind::Chat { "chatcmpl" } else { "cmpl" }),
        created,
        model: state.model.clone(),
        mode,
        prompt_tokens: request.prompt.len(),
        logprobs: v.logprobs.is_some(),
    };
    let (tokens_tx, tokens_rx) = mpsc::channel::<Token>(32);
    let run_state = state.clone();
    let generation = tokio::spawn(
        async move { run_state.generator.run(request, tokens_tx).await }.instrument(span),
    );
    let stream = TokenText::new(state.clone(), v.stops.clone(), tokens_rx, started);
    if v.stream {
        let (events_tx, events_rx) = mpsc::channel::<Result<Event, Infallible>>(32);
        tokio::spawn(stream_events(envelope, stream, generation, v.include_usage, events_tx));
        Ok(Sse::new(ReceiverStream::new(events_rx))
            .keep_alive(KeepAlive::default())
            .into_response())
    } else {
        whole(envelope, stream, generation).await
    }
}

/// Tokens in, text deltas out (with the sources of the tokens that made them).
struct TokenText {
    state: Arc<AppState>,
    text: TextStream,
    tokens: mpsc::Receiver<Token>,
    started: Instant,
    /// When the previous token arrived (for the inter-token latency metric).
    last_token: Instant,
    count: usize,
    sources: Vec<&'static str>,
    /// Every token id received, in order.
    ids: Vec<u32>,
    /// Every token received, with its probability and alternatives.
    scored: Vec<Token>,
    /// How many of `ids` were reported with a piece of text.
    reported: usize,
}

struct Piece {
    text: String,
    sources: Vec<&'static str>,
    /// Ids of the tokens whose text this piece releases.
    tokens: Vec<u32>,
    /// The same tokens with their probabilities.
    scored: Vec<Token>,
    stopped: bool,
}

impl TokenText {
    fn new(
        state: Arc<AppState>,
        stops: Vec<String>,
        tokens: mpsc::Receiver<Token>,
        started: Instant,
    ) -> Self {
        Self {
            state,
            text: TextStream::new(stops),
            tokens,
            started,
            last_token: started,
            count: 0,
            sources: vec![],
            ids: vec![],
            scored: vec![],
            reported: 0,
        }
    }

    /// The next piece of text, `None` once the generation stopped sending.
    async fn next(&mut self) -> Option<Piece> {
        let token = self.tokens.recv().await?;
        let metrics = &self.state.metrics;
        if self.count == 0 {
            metrics.time_to_first_token_seconds.observe(self.started.elapsed().as_secs_f64());
        } else {
            metrics.inter_token_seconds.observe(self.last_token.elapsed().as_secs_f64());
        }
        self.last_token = Instant::now();
        self.count += 1;
        self.ids.push(token.id);
        self.sources.push(token.source.as_str());
        self.scored.push(token.clone());
        let text = &self.state.generator.engine().text;
        let delta = self.text.push(token.id, |ids| text.decode(ids).unwrap_or_default());
        if delta.stopped {
            // Ends the generation: its next send fails.
            self.tokens.close();
        }
        let (sources, tokens, scored) = if delta.text.is_empty() && !delta.stopped {
            (vec![], vec![], vec![])
        } else {
            let scored = self.scored[self.reported..].to_vec();
            (std::mem::take(&mut self.sources), self.ids[self.reported..].to_vec(), scored)
        };
        self.reported += tokens.len();
        Some(Piece { text: delta.text, sources, tokens, scored, stopped: delta.stopped })
    }

    /// Text held back at the end, with the sources and ids of the tokens not yet reported.
    fn rest(&mut self) -> (String, Vec<&'static str>, Vec<u32>, Vec<Token>) {
        let text = &self.state.generator.engine().text;
        let rest = self.text.finish(|ids| text.decode(ids).unwrap_or_default());
        let tokens = self.ids[self.reported..].to_vec();
        let scored = self.scored[self.reported..].to_vec();
        self.reported = self.ids.len();
        (rest, std::mem::take(&mut self.sources), tokens, scored)
    }

    /// The `logprobs` of a choice holding `tokens`, whose text starts `offset` characters in.
    fn logprobs(&self, env: &Envelope, tokens: &[Token], offset: usize) -> Value {
        if !env.logprobs {
            return Value::Null;
        }
        let text = &self.state.generator.engine().text;
        match env.kind {
            Kind::Chat => logprobs::chat(tokens, text),
            Kind::Completion => logprobs::completion(tokens, text, offset),
        }
    }
}

type GenerationTask = tokio::task::JoinHandle<crate::Result<(Finish, Summary)>>;

async fn outcome(task: GenerationTask) -> Result<(Finish, Summary), ApiError> {
    task.await
        .map_err(|e| ApiError::Internal(format!("generation task: {e}")))?
        .map_err(ApiError::from)
}

async fn whole(
    env: Envelope,
    mut stream: TokenText,
    task: GenerationTask,
) -> Result<Response, ApiError> {
    let mut sources = Vec::new();
    let mut stopped = false;
    while let Some(piece) = stream.next().await {
        sources.extend(piece.sources);
        if piece.stopped {
            stopped = true;
            break;
        }
    }
    let (finish, summary) = outcome(task).await?;
    if !stopped {
        let (_, rest, _, _) = stream.rest();
        sources.extend(rest);
    }
    let text = stream.text.text().to_string();
    let reason = if stopped { "stop" } else { finish_reason(finish) };
    let logprobs = stream.logprobs(&env, &stream.scored, 0);
    let mut body = env.body(vec![env.choice(&text, false, false, Some(reason), logprobs)], false);
    body.insert("usage".into(), env.usage(stream.count));
    let mut collm = env.summary(&summary);
    collm.insert("sources".into(), json!(sources));
    collm.insert("tokens".into(), json!(stream.ids));
    body.insert("collm".into(), Value::Object(collm));
    Ok(axum::Json(Value::Object(body)).into_response())
}

async fn stream_events(
    env: Envelope,
    mut stream: TokenText,
    task: GenerationTask,
    include_usage: bool,
    events: mpsc::Sender<Result<Event, Infallible>>,
) {
    let send = |value: Value| {
        let events = events.clone();
        async move { events.send(Ok(Event::default().data(value.to_string()))).await.is_ok() }
    };
    let mut first = true;
    let mut stopped = false;
    // Characters of text sent so far (where the next chunk's tokens start).
    let mut sent = 0;
    while let Some(piece) = stream.next().await {
        stopped = piece.stopped;
        if !piece.text.is_empty() || !piece.tokens.is_empty() || first {
            let logprobs = stream.logprobs(&env, &piece.scored, sent);
            sent += piece.text.chars().count();
            let choice = env.choice(&piece.text, true, first, None, logprobs);
            let mut body = env.body(vec![choice], true);
            body.insert(
                "collm".into(),
                json!({ "sources": piece.sources, "tokens": piece.tokens }),
            );
            if !send(Value::Object(body)).await {
                return; // The client went away; dropping `stream` ends the generation.
            }
            first = false;
        }
        if stopped {
            break;
        }
    }
    let (finish, summary) = match outcome(task).await {
        Ok(done) => done,
        Err(e) => {
            send(e.body()).await;
            let _ = events.send(Ok(Event::default().data("[DONE]"))).await;
            return;
        }
    };
    let (rest, sources, tokens, scored) =
        if stopped { (String::new(), vec![], vec![], vec![]) } else { stream.rest() };
    let reason = if stopped { "stop" } else { finish_reason(finish) };
    let logprobs =
        if scored.is_empty() { Value::Null } else { stream.logprobs(&env, &scored, sent) };
    let mut last = env.body(vec![env.choice(&rest, true, first, Some(reason), logprobs)], true);
    let mut collm = env.summary(&summary);
    collm.insert("sources".into(), json!(sources));
    collm.insert("tokens".into(), json!(tokens));
    last.insert("collm".into(), Value::Object(collm));
    send(Value::Object(last)).await;
    if include_usage {
        let mut body = env.body(vec![], true);
        body.insert("usage".into(), env.usage(stream.count));
        send(Value::Object(body)).await;
    }
    let _ = events.send(Ok(Event::default().data("[DONE]"))).await;
}
