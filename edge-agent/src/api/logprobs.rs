//! Log probabilities in OpenAI's two shapes — chat's `{"content": [{token, logprob, bytes,
//! top_logprobs}]}` and legacy completions' `{tokens, token_logprobs, top_logprobs,
//! text_offset}` — from the tokens as the answering partition scored them.

use collm_runtime::text::TextCodec;
use serde_json::{Value, json};

use crate::generation::Token;

/// What OpenAI reports for a probability too small to have a logarithm in JSON.
const FLOOR: f64 = -9999.0;

fn logprob(p: f32) -> f64 {
    if p > 0.0 { f64::from(p).ln().max(FLOOR) } else { FLOOR }
}

/// Chat's `logprobs` of a choice (or of a chunk's delta).
pub fn chat(tokens: &[Token], text: &TextCodec) -> Value {
    let entry = |id: u32, prob: f32| {
        json!({
            "token": text.token_text(id),
            "logprob": logprob(prob),
            "bytes": text.token_bytes(id),
        })
    };
    let content: Vec<Value> = tokens
        .iter()
        .map(|t| {
            let mut e = entry(t.id, t.prob);
            e["top_logprobs"] =
                t.alternatives.iter().map(|a| entry(a.token, a.prob)).collect::<Vec<_>>().into();
            e
        })
        .collect();
    json!({ "content": content, "refusal": null })
}

/// Legacy completions' `logprobs`; `offset` is the length in characters of the text returned
/// before these tokens.
pub fn completion(tokens: &[Token], text: &TextCodec, offset: usize) -> Value {
    let mut offsets = Vec::with_capacity(tokens.len());
    let mut at = offset;
    for t in tokens {
        offsets.push(at);
        at += text.token_text(t.id).chars().count();
    }
    let top: Vec<Value> = tokens
        .iter()
        .map(|t| {
            let mut m = serde_json::Map::new();
            for a in &t.alternatives {
                m.insert(text.token_text(a.token), json!(logprob(a.prob)));
            }
            Value::Object(m)
        })
        .collect();
    json!({
        "tokens": tokens.iter().map(|t| text.token_text(t.id)).collect::<Vec<_>>(),
        "token_logprobs": tokens.iter().map(|t| logprob(t.prob)).collect::<Vec<_>>(),
        "top_logprobs": top,
        "text_offset": offsets,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probabilities_become_natural_logarithms_with_openais_floor() {
        assert_eq!(logprob(1.0), 0.0);
        assert!((logprob(0.5) - 0.5f64.ln()).abs() < 1e-9);
        assert_eq!(logprob(0.0), FLOOR);
    }
}
