//! Rebuilding a Hugging Face `tokenizer.json` from GGUF tokenizer metadata (pure).

use collm_gguf::Metadata;
use serde_json::{Map, Value as Json, json};

use crate::error::{Error, Result};
use crate::model::SpecialTokens;

/// GGUF token types that Hugging Face treats as added special tokens.
const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;

/// The Llama 3 pre-tokenizer split pattern, as published in its `tokenizer.json`.
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// What the GGUF tokenizer metadata resolves to.
#[derive(Debug, Clone, PartialEq)]
pub struct GgufTokenizer {
    pub tokenizer_json: String,
    pub special_tokens: SpecialTokens,
    pub chat_template: Option<String>,
    pub vocab_size: usize,
}

fn byte_level(use_regex: bool) -> Json {
    json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex})
}

fn pre_tokenizer(pre: &str) -> Result<Json> {
    Ok(match pre {
        "smollm" => json!({
            "type": "Sequence",
            "pretokenizers": [{"type": "Digits", "individual_digits": true}, byte_level(true)],
        }),
        "default" | "gpt2" => byte_level(true),
        "llama-bpe" | "llama3" => json!({
            "type": "Sequence",
            "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": LLAMA3_SPLIT}, "behavior": "Isolated", "invert": false},
                byte_level(false),
            ],
        }),
        other => {
            return Err(Error::UnsupportedTokenizer(format!(
                "pre-tokenizer {other:?} (supported: smollm, gpt2, default, llama-bpe, llama3)"
            )));
        }
    })
}

fn token_id(md: &Metadata, key: &str, vocab: usize) -> Result<Option<u32>> {
    match md.opt(key, Metadata::get_u32)? {
        Some(id) if id as usize >= vocab => Err(Error::UnsupportedTokenizer(format!(
            "{key} = {id} is outside the vocabulary of {vocab}"
        ))),
        other => Ok(other),
    }
}

/// Builds the tokenizer from `tokenizer.ggml.*` keys (byte-level BPE only).
pub fn tokenizer_from_gguf(md: &Metadata) -> Result<GgufTokenizer> {
    let model = md.get_str("tokenizer.ggml.model")?;
    if model != "gpt2" {
        return Err(Error::UnsupportedTokenizer(format!(
            "tokenizer.ggml.model {model:?} (only byte-level BPE \"gpt2\" is supported)"
        )));
    }
    let tokens = md.get_str_array("tokenizer.ggml.tokens")?;
    let merges = md.get_str_array("tokenizer.ggml.merges")?;
    let types = md.opt("tokenizer.ggml.token_type", Metadata::get_i32_array)?;
    if let Some(t) = &types
        && t.len() != tokens.len()
    {
        return Err(Error::UnsupportedTokenizer(format!(
            "{} token types for {} tokens",
            t.len(),
            tokens.len()
        )));
    }
    let pre = md.opt("tokenizer.ggml.pre", Metadata::get_str)?.unwrap_or("default");
    let bos = token_id(md, "tokenizer.ggml.bos_token_id", tokens.len())?;
    let eos = token_id(md, "tokenizer.ggml.eos_token_id", tokens.len())?;
    let add_bos = md.opt("tokenizer.ggml.add_bos_token", Metadata::get_bool)?.unwrap_or(false);

    let mut vocab = Map::with_capacity(tokens.len());
    let mut added = Vec::new();
    let mut special = Vec::new();
    for (id, &tok) in tokens.iter().enumerate() {
        // A duplicated string keeps its first id; later copies are unreachable anyway.
        vocab.entry(tok).or_insert(json!(id));
        let ty = types.as_ref().map_or(1, |t| t[id]);
        if ty == CONTROL || ty == USER_DEFINED {
            added.push(json!({
                "id": id, "content": tok, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": true,
            }));
            special.push((id as u32, tok.to_string()));
        }
    }
    let merges: Vec<Json> = merges
        .iter()
        .map(|m| match m.split_once(' ') {
            Some((a, b)) => Ok(json!([a, b])),
            None => Err(Error::UnsupportedTokenizer(format!("merge {m:?} has no space"))),
        })
        .collect::<Result<_>>()?;

    let post_processor = match (add_bos, bos) {
        (true, Some(id)) => {
            let name = tokens[id as usize];
            let bos_piece = json!({"SpecialToken": {"id": name, "type_id": 0}});
            json!({
                "type": "TemplateProcessing",
                "single": [bos_piece, {"Sequence": {"id": "A", "type_id": 0}}],
                "pair": [bos_piece, {"Sequence": {"id": "A", "type_id": 0}},
                         bos_piece, {"Sequence": {"id": "B", "type_id": 1}}],
                "special_tokens": {name: {"id": name, "ids": [id], "tokens": [name]}},
            })
        }
        _ => Json::Null,
    };

    let doc = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": pre_tokenizer(pre)?,
        "post_processor": post_processor,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
            "ignore_merges": false, "vocab": vocab, "merges": merges,
        },
    });
    Ok(GgufTokenizer {
        tokenizer_json: doc.to_string(),
        special_tokens: SpecialTokens { bos, eos, special },
        chat_template: md.opt("tokenizer.chat_template", Metadata::get_str)?.map(str::to_string),
        vocab_size: tokens.len(),
    })
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use collm_gguf::Value;

    use super::*;
    use crate::tiny::{build_vocab, tokenizer_metadata};

    fn tiny_metadata() -> Metadata {
        tokenizer_metadata(&build_vocab(50))
    }

    #[test]
    fn non_bpe_and_unknown_pre_tokenizers_are_refused_by_name() {
        let mut md = tiny_metadata();
        md.insert("tokenizer.ggml.model", Value::String("llama".into()));
        let e = tokenizer_from_gguf(&md).unwrap_err().to_string();
        assert!(e.contains("tokenizer.ggml.model \"llama\""), "{e}");
        let mut md = tiny_metadata();
        md.insert("tokenizer.ggml.pre", Value::String("qwen2".into()));
        let e = tokenizer_from_gguf(&md).unwrap_err().to_string();
        assert!(e.contains("pre-tokenizer \"qwen2\""), "{e}");
    }

    #[test]
    fn gpt2_and_llama3_pre_tokenizers_load() {
        for pre in ["gpt2", "default", "llama-bpe"] {
            let mut md = tiny_metadata();
            md.insert("tokenizer.ggml.pre", Value::String(pre.into()));
            let tok = tokenizer_from_gguf(&md).unwrap();
            let t = tokenizers::Tokenizer::from_str(&tok.tokenizer_json).unwrap();
            let enc = t.encode("the 123", false).unwrap();
            assert_eq!(t.decode(enc.get_ids(), false).unwrap(), "the 123", "{pre}");
        }
    }

    #[test]
    fn add_bos_token_prepends_bos() {
        let mut md = tiny_metadata();
        md.insert("tokenizer.ggml.add_bos_token", Value::Bool(true));
        let tok = tokenizer_from_gguf(&md).unwrap();
        let t = tokenizers::Tokenizer::from_str(&tok.tokenizer_json).unwrap();
        assert_eq!(t.encode("hi", true).unwrap().get_ids()[0], 1);
        assert_ne!(t.encode("hi", false).unwrap().get_ids()[0], 1);
    }
}
