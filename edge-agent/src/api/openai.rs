//! The OpenAI request bodies this server accepts, parsed into a [`ValidRequest`] before anything
//! runs. Every field of OpenAI's request schemas is either honoured, refused when it asks for
//! what this server cannot do (see [`super::capabilities`]), or ignored because it changes no
//! answer (README's API section lists them). Fields OpenAI does not define are ignored too, so
//! that clients configured for other servers' extensions still work. Extensions: `mode`,
//! `threshold`, `top_k`.

use std::collections::BTreeMap;

use collm_runtime::adjust::LogitAdjustment;
use serde::Deserialize;

use super::capabilities::{self, ChatExtras};
use super::error::ApiError;
use crate::mode::Mode;

/// `stop`: one string or up to four.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

/// Sampling and control fields shared by both endpoints.
#[derive(Debug, Clone, Deserialize)]
pub struct Common {
    pub model: String,
    pub max_tokens: Option<u32>,
    pub max_completion_tokens: Option<u32>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<u32>,
    /// OpenAI's type is int64; a negative seed is as good a seed as any (see [`sampling_seed`]).
    pub seed: Option<i64>,
    #[serde(default)]
    pub stream: bool,
    pub stream_options: Option<StreamOptions>,
    pub stop: Option<Stop>,
    pub n: Option<u32>,
    pub mode: Option<String>,
    pub threshold: Option<f32>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    /// Token id (as a string, OpenAI's form) to a bias in [-100, 100].
    pub logit_bias: Option<BTreeMap<String, f32>>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

/// The chat endpoint's own fields (the rest are [`Common`]).
#[derive(Debug, Clone, Deserialize)]
pub struct ChatFields {
    pub messages: Vec<Message>,
    pub logprobs: Option<bool>,
    pub top_logprobs: Option<u32>,
}

#[derive(Debug, Clone)]
pub struct ChatRequest {
    pub messages: Vec<Message>,
    pub logprobs: Option<bool>,
    pub top_logprobs: Option<u32>,
    pub extras: ChatExtras,
    pub common: Common,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Message {
    pub role: String,
    #[serde(default)]
    pub content: Option<Content>,
    /// An assistant turn that called tools (a tool-calling conversation).
    pub tool_calls: Option<serde_json::Value>,
    pub function_call: Option<serde_json::Value>,
}

/// Message content: a string or a list of parts (only text parts are understood).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<Part>),
}

#[derive(Debug, Clone, Deserialize)]
pub struct Part {
    #[serde(rename = "type")]
    pub kind: String,
    pub text: Option<String>,
}

/// The completions endpoint's own fields (the rest are [`Common`]).
#[derive(Debug, Clone, Deserialize)]
pub struct CompletionFields {
    pub prompt: Prompt,
    #[serde(default)]
    pub echo: bool,
    pub suffix: Option<String>,
    pub best_of: Option<u32>,
    /// How many alternatives per token to return with their log probabilities (0 to 5).
    pub logprobs: Option<u32>,
}

#[derive(Debug, Clone)]
pub struct CompletionRequest {
    pub fields: CompletionFields,
    pub common: Common,
}

/// A request body of one endpoint: its own fields and the common ones, read from one object.
pub trait Body: Sized {
    fn from_json(value: &serde_json::Value) -> Result<Self, ApiError>;
}

impl Body for ChatRequest {
    fn from_json(value: &serde_json::Value) -> Result<Self, ApiError> {
        let fields: ChatFields = typed(value)?;
        Ok(Self {
            messages: fields.messages,
            logprobs: fields.logprobs,
            top_logprobs: fields.top_logprobs,
            extras: typed(value)?,
            common: typed(value)?,
        })
    }
}

impl Body for CompletionRequest {
    fn from_json(value: &serde_json::Value) -> Result<Self, ApiError> {
        Ok(Self { fields: typed(value)?, common: typed(value)? })
    }
}

/// `prompt`: text, token ids, or a batch of exactly one of those.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Prompt {
    Text(String),
    Tokens(Vec<u32>),
    TextBatch(Vec<String>),
    TokenBatch(Vec<Vec<u32>>),
}

/// What the model is given.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    Chat(Vec<collm_runtime::text::ChatMessage>),
    Text(String),
    Tokens(Vec<u32>),
}

/// A request that passed every check that needs no tokenizer.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidRequest {
    pub input: Input,
    /// `None`: as many as the context allows.
    pub max_tokens: Option<usize>,
    pub temperature: f32,
    pub top_p: f32,
    pub top_k: usize,
    pub seed: Option<u64>,
    pub stream: bool,
    pub include_usage: bool,
    pub stops: Vec<String>,
    pub mode: Option<Mode>,
    pub threshold: Option<f32>,
    /// `logit_bias` and the penalties, applied by whichever partition answers.
    pub adjustment: LogitAdjustment,
    /// Log probabilities asked for: `Some(k)` reports each token's and its `k` most likely
    /// alternatives'.
    pub logprobs: Option<usize>,
}

/// Parses a JSON body: invalid UTF-8, bad syntax and wrong types each get a message naming
/// the offending field.
pub fn parse<T: Body>(body: &[u8]) -> Result<T, ApiError> {
    let text = std::str::from_utf8(body).map_err(|e| {
        ApiError::invalid(format!("the request body is not valid UTF-8 ({e})"), None)
    })?;
    if text.trim().is_empty() {
        return Err(ApiError::invalid("the request body is empty: send a JSON object", None));
    }
    let value: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| ApiError::invalid(format!("the request body is not valid JSON: {e}"), None))?;
    if !value.is_object() {
        return Err(ApiError::invalid("the request body must be a JSON object", None));
    }
    T::from_json(&value)
}

/// One view of the body's object, with type errors naming the field's path.
fn typed<T: serde::de::DeserializeOwned>(value: &serde_json::Value) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." {
            ApiError::Invalid { message: format!("invalid request: {inner}"), param: None }
        } else {
            ApiError::Invalid {
                message: format!("invalid value for `{path}`: {inner}"),
                param: Some(path),
            }
        }
    })
}

const MAX_STOPS: usize = 4;
/// Most alternatives per token: OpenAI's limits for each endpoint.
const MAX_TOP_LOGPROBS: u32 = 20;
const MAX_COMPLETION_LOGPROBS: u32 = 5;

impl ChatRequest {
    pub fn validate(self, served: &str) -> Result<ValidRequest, ApiError> {
        capabilities::check_chat(&self.extras)?;
        let logprobs = match (self.logprobs.unwrap_or(false), self.top_logprobs) {
            (_, Some(k)) if k > MAX_TOP_LOGPROBS => {
                return Err(ApiError::invalid(
                    format!("`top_logprobs` must be between 0 and {MAX_TOP_LOGPROBS}, got {k}"),
                    "top_logprobs",
                ));
            }
            (false, Some(_)) => {
                return Err(ApiError::invalid(
                    "`top_logprobs` needs `logprobs` set to true",
                    "top_logprobs",
                ));
            }
            (true, k) => Some(k.unwrap_or(0) as usize),
            (false, None) => None,
        };
        if self.messages.is_empty() {
            return Err(ApiError::invalid("`messages` must hold at least one message", "messages"));
        }
        let mut messages = Vec::with_capacity(self.messages.len());
        for (i, m) in self.messages.into_iter().enumerate() {
            capabilities::check_message(i, &m)?;
            if !matches!(m.role.as_str(), "system" | "developer" | "user" | "assistant") {
                return Err(ApiError::Invalid {
                    message: format!(
                        "messages[{i}].role is {:?}; expected system, developer, user or assistant",
                        m.role
                    ),
                    param: Some(format!("messages[{i}].role")),
                });
            }
            let content = match m.content {
                Some(Content::Text(t)) => t,
                Some(Content::Parts(parts)) => {
                    let mut text = String::new();
                    for p in parts {
                        match (p.kind.as_str(), p.text) {
                            ("text", Some(t)) => text.push_str(&t),
                            (kind, _) => {
                                return Err(ApiError::unsupported(
                                    format!("content part type {kind:?}"),
                                    &format!("messages[{i}].content"),
                                    "this model reads text only",
                                ));
                            }
                        }
                    }
                    text
                }
                None => String::new(),
            };
            let role = if m.role == "developer" { "system".into() } else { m.role };
            messages.push(collm_runtime::text::ChatMessage { role, content });
        }
        let max = self.common.max_completion_tokens.or(self.common.max_tokens);
        self.common.validate(served, Input::Chat(messages), max, logprobs)
    }
}

impl CompletionRequest {
    pub fn validate(self, served: &str) -> Result<ValidRequest, ApiError> {
        let CompletionRequest { fields, common } = self;
        if fields.echo {
            return Err(ApiError::unsupported(
                "`echo`",
                "echo",
                "the prompt is not scored, only continued",
            ));
        }
        if fields.suffix.as_deref().is_some_and(|s| !s.is_empty()) {
            return Err(ApiError::unsupported("`suffix`", "suffix", "the model does not fill in"));
        }
        if fields.best_of.is_some_and(|b| b != 1) {
            return Err(ApiError::unsupported(
                "`best_of` other than 1",
                "best_of",
                "one completion is generated per request",
            ));
        }
        if let Some(k) = fields.logprobs.filter(|&k| k > MAX_COMPLETION_LOGPROBS) {
            return Err(ApiError::invalid(
                format!("`logprobs` must be between 0 and {MAX_COMPLETION_LOGPROBS}, got {k}"),
                "logprobs",
            ));
        }
        let logprobs = fields.logprobs.map(|k| k as usize);
        let one = |n: usize| {
            if n == 1 {
                Ok(())
            } else {
                Err(ApiError::unsupported(
                    format!("a batch of {n} prompts"),
                    "prompt",
                    "send one prompt per request",
                ))
            }
        };
        let input = match fields.prompt {
            Prompt::Text(t) => Input::Text(t),
            Prompt::Tokens(ids) => Input::Tokens(ids),
            Prompt::TextBatch(mut v) => {
                one(v.len())?;
                Input::Text(v.remove(0))
            }
            Prompt::TokenBatch(mut v) => {
                one(v.len())?;
                Input::Tokens(v.remove(0))
            }
        };
        match &input {
            Input::Text(t) if t.is_empty() => {
                return Err(ApiError::invalid("`prompt` is empty", "prompt"));
            }
            Input::Tokens(ids) if ids.is_empty() => {
                return Err(ApiError::invalid("`prompt` holds no token", "prompt"));
            }
            _ => {}
        }
        // The legacy endpoint's documented default.
        let max = common.max_tokens.or(Some(16));
        common.validate(served, input, max, logprobs)
    }
}

/// The sampler's seed for OpenAI's int64 `seed`: the same 64 bits, so every value, negative
/// ones too, names its own reproducible stream.
fn sampling_seed(seed: i64) -> u64 {
    seed.cast_unsigned()
}

impl Common {
    fn validate(
        self,
        served: &str,
        input: Input,
        max_tokens: Option<u32>,
        logprobs: Option<usize>,
    ) -> Result<ValidRequest, ApiError> {
        if self.model != served {
            return Err(ApiError::UnknownModel(self.model));
        }
        if max_tokens == Some(0) {
            return Err(ApiError::invalid("`max_tokens` must be at least 1", "max_tokens"));
        }
        let temperature = self.temperature.unwrap_or(1.0);
        if !(0.0..=2.0).contains(&temperature) {
            return Err(ApiError::invalid(
                format!("`temperature` must be between 0 and 2, got {temperature}"),
                "temperature",
            ));
        }
        let top_p = self.top_p.unwrap_or(1.0);
        if !(top_p > 0.0 && top_p <= 1.0) {
            return Err(ApiError::invalid(
                format!("`top_p` must be in (0, 1], got {top_p}"),
                "top_p",
            ));
        }
        if self.n.is_some_and(|n| n != 1) {
            return Err(ApiError::unsupported(
                "`n` other than 1",
                "n",
                "one choice is generated per request; send n requests",
            ));
        }
        if self.stream_options.is_some() && !self.stream {
            return Err(ApiError::invalid(
                "`stream_options` is only allowed when `stream` is true",
                "stream_options",
            ));
        }
        let adjustment =
            adjustment(self.logit_bias, self.presence_penalty, self.frequency_penalty)?;
        let stops = match self.stop {
            None => vec![],
            Some(Stop::One(s)) => vec![s],
            Some(Stop::Many(v)) => v,
        };
        if stops.len() > MAX_STOPS {
            return Err(ApiError::invalid(
                format!("`stop` holds {} strings; at most {MAX_STOPS} are allowed", stops.len()),
                "stop",
            ));
        }
        let mode = match self.mode {
            None => None,
            Some(m) => Some(m.parse::<Mode>().map_err(|e| ApiError::invalid(e, "mode"))?),
        };
        if let Some(t) = self.threshold
            && (t.is_nan() || t <= 0.0)
        {
            return Err(ApiError::invalid(
                format!("`threshold` must be > 0, got {t}"),
                "threshold",
            ));
        }
        Ok(ValidRequest {
            input,
            max_tokens: max_tokens.map(|m| m as usize),
            temperature,
            top_p,
            top_k: self.top_k.unwrap_or(0) as usize,
            seed: self.seed.map(sampling_seed),
            stream: self.stream,
            include_usage: self.stream_options.is_some_and(|o| o.include_usage),
            stops,
            mode,
            threshold: self.threshold,
            adjustment,
            logprobs,
        })
    }
}

/// `logit_bias` (keys are token ids written as strings) and the penalties, range-checked; the
/// vocabulary is checked once the tokenizer is at hand.
fn adjustment(
    bias: Option<BTreeMap<String, f32>>,
    presence: Option<f32>,
    frequency: Option<f32>,
) -> Result<LogitAdjustment, ApiError> {
    let mut adjustment = LogitAdjustment {
        presence_penalty: presence.unwrap_or(0.0),
        frequency_penalty: frequency.unwrap_or(0.0),
        ..LogitAdjustment::default()
    };
    for (key, value) in bias.unwrap_or_default() {
        let token = key.trim().parse::<u32>().map_err(|_| {
            ApiError::invalid(
                format!("`logit_bias` keys are token ids; {key:?} is not one"),
                "logit_bias",
            )
        })?;
        adjustment.bias.insert(token, value);
    }
    // The vocabulary is checked later; every other range now.
    adjustment.check(usize::MAX).map_err(|message| {
        let param = if message.starts_with("presence") {
            "presence_penalty"
        } else if message.starts_with("frequency") {
            "frequency_penalty"
        } else {
            "logit_bias"
        };
        ApiError::invalid(message, param)
    })?;
    Ok(adjustment)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat(body: &str) -> Result<ValidRequest, ApiError> {
        parse::<ChatRequest>(body.as_bytes())?.validate("m")
    }

    fn completion(body: &str) -> Result<ValidRequest, ApiError> {
        parse::<CompletionRequest>(body.as_bytes())?.validate("m")
    }

    fn message(e: ApiError) -> String {
        e.to_string()
    }

    #[test]
    fn a_plain_chat_request_is_accepted_with_openai_defaults() {
        let v = chat(r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"user":"x"}"#)
            .expect("valid");
        assert_eq!(v.temperature, 1.0);
        assert_eq!(v.max_tokens, None);
        assert!(!v.stream);
        assert_eq!(
            v.input,
            Input::Chat(vec![collm_runtime::text::ChatMessage {
                role: "user".into(),
                content: "hi".into()
            }])
        );
    }

    #[test]
    fn malformed_bodies_say_what_is_wrong() {
        assert!(message(chat("{\"model\":").unwrap_err()).contains("not valid JSON"));
        assert!(message(chat("").unwrap_err()).contains("empty"));
        let e = parse::<ChatRequest>(
            b"{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"\xff\"}]}",
        )
        .unwrap_err();
        assert!(message(e).contains("UTF-8"));
        let e =
            chat(r#"{"model":"m","messages":[{"role":"user","content":"x"}],"max_tokens":"ten"}"#)
                .unwrap_err();
        assert!(message(e).contains("max_tokens"));
        let e = chat(r#"{"model":"m","messages":"hello"}"#).unwrap_err();
        assert!(message(e).contains("messages"));
    }

    #[test]
    fn requests_that_cannot_be_served_are_refused() {
        let e =
            chat(r#"{"model":"gpt-4","messages":[{"role":"user","content":"x"}]}"#).unwrap_err();
        assert_eq!(e.status(), axum::http::StatusCode::NOT_FOUND);
        assert!(
            message(chat(r#"{"model":"m","messages":[]}"#).unwrap_err()).contains("at least one")
        );
        let e = chat(r#"{"model":"m","messages":[{"role":"wizard","content":"x"}]}"#).unwrap_err();
        assert!(message(e).contains("wizard"));
        let e = chat(r#"{"model":"m","messages":[{"role":"user","content":"x"}],"temperature":3}"#)
            .unwrap_err();
        assert!(message(e).contains("temperature"));
        let e =
            chat(r#"{"model":"m","messages":[{"role":"user","content":"x"}],"n":2}"#).unwrap_err();
        assert!(message(e).contains("`n`"));
        let e = chat(r#"{"model":"m","messages":[{"role":"user","content":"x"}],"mode":"turbo"}"#)
            .unwrap_err();
        assert!(message(e).contains("turbo"));
        assert!(message(completion(r#"{"model":"m","prompt":""}"#).unwrap_err()).contains("empty"));
        let e = completion(r#"{"model":"m","prompt":["a","b"]}"#).unwrap_err();
        assert!(message(e).contains("batch"));
    }

    #[test]
    fn extensions_and_prompt_forms_are_understood() {
        let v = completion(
            r#"{"model":"m","prompt":[1,2,3],"mode":"standalone","threshold":0.5,"stop":"\n"}"#,
        )
        .expect("valid");
        assert_eq!(v.input, Input::Tokens(vec![1, 2, 3]));
        assert_eq!(v.mode, Some(Mode::Standalone));
        assert_eq!(v.max_tokens, Some(16));
        assert_eq!(v.stops, vec!["\n".to_string()]);
        let v = chat(r#"{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]}],"max_completion_tokens":5,"stream":true,"stream_options":{"include_usage":true}}"#)
            .expect("valid");
        assert!(v.stream && v.include_usage);
        assert_eq!(v.max_tokens, Some(5));
    }

    #[test]
    fn any_int64_seed_is_a_seed_stream_options_need_a_stream_and_thresholds_are_positive() {
        let seed = |s: &str| {
            chat(&format!(
                r#"{{"model":"m","messages":[{{"role":"user","content":"x"}}],"seed":{s}}}"#
            ))
            .map(|v| v.seed)
        };
        assert_eq!(seed("11").expect("valid"), Some(11));
        let negative = seed("-1").expect("OpenAI's seed is an int64").expect("seeded");
        let lowest = seed(&i64::MIN.to_string()).expect("valid").expect("seeded");
        assert_ne!(negative, lowest, "distinct seeds name distinct streams");
        assert_eq!(seed("-1").expect("valid"), Some(negative), "and the same one each time");
        assert!(seed("9223372036854775808").is_err(), "beyond int64");
        for t in ["0", "-0.5"] {
            let e = completion(&format!(r#"{{"model":"m","prompt":"x","threshold":{t}}}"#))
                .expect_err("a threshold must be > 0");
            assert_eq!(e.body()["error"]["param"], "threshold");
        }

        let e = chat(r#"{"model":"m","messages":[{"role":"user","content":"x"}],"stream_options":{"include_usage":true}}"#)
            .expect_err("stream_options without stream");
        let body = e.body();
        assert_eq!(body["error"]["param"], "stream_options", "{body}");
        assert_eq!(body["error"]["type"], "invalid_request_error", "{body}");
        let v = chat(r#"{"model":"m","messages":[{"role":"user","content":"x"}],"stream":false,"stream_options":null}"#)
            .expect("a null stream_options is no stream_options");
        assert!(!v.include_usage);
    }

    #[test]
    fn bias_penalties_and_logprobs_are_parsed_with_openais_ranges() {
        let v = chat(r#"{"model":"m","messages":[{"role":"user","content":"x"}],"logit_bias":{"17":-100,"4":2.5},"presence_penalty":0.5,"frequency_penalty":-1,"logprobs":true,"top_logprobs":3}"#)
            .expect("valid");
        assert_eq!(v.adjustment.bias.into_iter().collect::<Vec<_>>(), vec![(4, 2.5), (17, -100.0)]);
        assert_eq!((v.adjustment.presence_penalty, v.adjustment.frequency_penalty), (0.5, -1.0));
        assert_eq!(v.logprobs, Some(3));
        let v = chat(r#"{"model":"m","messages":[{"role":"user","content":"x"}],"logprobs":true}"#)
            .expect("valid");
        assert_eq!(v.logprobs, Some(0));
        let v =
            chat(r#"{"model":"m","messages":[{"role":"user","content":"x"}],"logprobs":false}"#)
                .expect("valid");
        assert_eq!(v.logprobs, None);
        assert_eq!(
            completion(r#"{"model":"m","prompt":"a","logprobs":2}"#).expect("ok").logprobs,
            Some(2)
        );

        let refused = |body: &str, param: &str| {
            let e =
                if body.contains("messages") { chat(body) } else { completion(body) }.unwrap_err();
            assert_eq!(e.status(), axum::http::StatusCode::BAD_REQUEST, "{body}");
            assert_eq!(e.body()["error"]["param"], param, "{body}: {e}");
        };
        let m = r#""model":"m","messages":[{"role":"user","content":"x"}]"#;
        refused(&format!(r#"{{{m},"top_logprobs":2}}"#), "top_logprobs");
        refused(&format!(r#"{{{m},"logprobs":true,"top_logprobs":21}}"#), "top_logprobs");
        refused(&format!(r#"{{{m},"logit_bias":{{"hello":1}}}}"#), "logit_bias");
        refused(&format!(r#"{{{m},"logit_bias":{{"3":150}}}}"#), "logit_bias");
        refused(&format!(r#"{{{m},"presence_penalty":2.5}}"#), "presence_penalty");
        refused(&format!(r#"{{{m},"frequency_penalty":-3}}"#), "frequency_penalty");
        refused(r#"{"model":"m","prompt":"a","logprobs":6}"#, "logprobs");
        refused(r#"{"model":"m","prompt":"a","echo":true}"#, "echo");
        refused(&format!(r#"{{{m},"n":3}}"#), "n");
        refused(
            &format!(r#"{{{m},"tools":[{{"type":"function","function":{{"name":"f"}}}}]}}"#),
            "tools",
        );
        refused(
            &format!(r#"{{{m},"response_format":{{"type":"json_object"}}}}"#),
            "response_format",
        );
        refused(
            r#"{"model":"m","messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"x"}}]}]}"#,
            "messages[0].content",
        );
    }

    #[test]
    fn fields_that_change_no_answer_are_accepted() {
        let v = chat(r#"{"model":"m","messages":[{"role":"user","content":"x","name":"ann"}],"user":"u","metadata":{"k":"v"},"store":false,"service_tier":"auto","prediction":{"type":"content","content":"x"},"parallel_tool_calls":false,"prompt_cache_key":"k","safety_identifier":"s","response_format":{"type":"text"},"tool_choice":"none","modalities":["text"]}"#)
            .expect("valid");
        assert_eq!(v.adjustment, LogitAdjustment::default());
        assert_eq!(v.logprobs, None);
    }
}
