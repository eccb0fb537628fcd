//! Rebuilding a Hugging Face `tokenizer.json` from GGUF tokenizer metadata (pure): byte-level
//! BPE (`gpt2`, with the pre-tokenizers of SmolLM, GPT-2, Llama 3 and Qwen2) and SentencePiece
//! (`llama`: Llama 2, Mistral) as llama.cpp tokenizes them.

use collm_gguf::Metadata;
use serde_json::{Value as Json, json};

use crate::error::{Error, Result};
use crate::model::SpecialTokens;
use crate::spm_tokenizer::sentencepiece_model;

/// GGUF token types (llama.cpp's `llama_token_type`).
pub(crate) const UNKNOWN: i32 = 2;
pub(crate) const CONTROL: i32 = 3;
pub(crate) const USER_DEFINED: i32 = 4;
pub(crate) const BYTE: i32 = 6;

/// The Llama 3 pre-tokenizer split pattern, as published in its `tokenizer.json`.
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2's: Llama 3's with digits split one by one.
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

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

fn split_then_byte_level(pattern: &str) -> Json {
    json!({
        "type": "Sequence",
        "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": false},
            byte_level(false),
        ],
    })
}

fn pre_tokenizer(pre: &str) -> Result<Json> {
    Ok(match pre {
        "smollm" => json!({
            "type": "Sequence",
            "pretokenizers": [{"type": "Digits", "individual_digits": true}, byte_level(true)],
        }),
        "default" | "gpt2" => byte_level(true),
        "llama-bpe" | "llama3" => split_then_byte_level(LLAMA3_SPLIT),
        "qwen2" | "deepseek-r1-qwen" => split_then_byte_level(QWEN2_SPLIT),
        other => {
            return Err(Error::UnsupportedTokenizer(format!(
                "tokenizer.ggml.pre {other:?}: its split rules are not known here (supported: smollm, gpt2, default, llama-bpe, llama3, qwen2, deepseek-r1-qwen)"
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

/// The vocabulary as GGUF lists it: token strings and their types (all normal when absent).
pub(crate) struct Vocab<'a> {
    pub tokens: Vec<&'a str>,
    pub types: Vec<i32>,
}

impl Vocab<'_> {
    /// Tokens llama.cpp matches whole in raw prompts (`parse_special`): control, user-defined
    /// and unknown tokens, as Hugging Face added tokens.
    fn added_tokens(&self) -> (Vec<Json>, Vec<(u32, String)>) {
        let mut added = Vec::new();
        let mut special = Vec::new();
        for (id, (&tok, &ty)) in self.tokens.iter().zip(&self.types).enumerate() {
            if matches!(ty, CONTROL | USER_DEFINED | UNKNOWN) && !tok.is_empty() {
                added.push(json!({
                    "id": id, "content": tok, "single_word": false, "lstrip": false,
                    "rstrip": false, "normalized": false, "special": true,
                }));
                special.push((id as u32, tok.to_string()));
            }
        }
        (added, special)
    }
}

fn byte_level_model(md: &Metadata, vocab: &Vocab<'_>) -> Result<Json> {
    let merges = md.get_str_array("tokenizer.ggml.merges")?;
    let mut map = serde_json::Map::with_capacity(vocab.tokens.len());
    for (id, &tok) in vocab.tokens.iter().enumerate() {
        // A duplicated string keeps its first id; later copies are unreachable anyway.
        map.entry(tok).or_insert(json!(id));
    }
    let merges: Vec<Json> = merges
        .iter()
        .map(|m| match m.split_once(' ') {
            Some((a, b)) => Ok(json!([a, b])),
            None => Err(Error::UnsupportedTokenizer(format!("merge {m:?} has no space"))),
        })
        .collect::<Result<_>>()?;
    Ok(json!({
        "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
        "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
        "ignore_merges": false, "vocab": map, "merges": merges,
    }))
}

fn bos_post_processor(name: &str, id: u32) -> Json {
    let bos_piece = json!({"SpecialToken": {"id": name, "type_id": 0}});
    json!({
        "type": "TemplateProcessing",
        "single": [bos_piece, {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [bos_piece, {"Sequence": {"id": "A", "type_id": 0}},
                 bos_piece, {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {name: {"id": name, "ids": [id], "tokens": [name]}},
    })
}

/// Builds the tokenizer from `tokenizer.ggml.*` keys.
pub fn tokenizer_from_gguf(md: &Metadata) -> Result<GgufTokenizer> {
    let model = md.get_str("tokenizer.ggml.model")?;
    let tokens = md.get_str_array("tokenizer.ggml.tokens")?;
    let types = md.opt("tokenizer.ggml.token_type", Metadata::get_i32_array)?;
    let types = match types {
        Some(t) if t.len() != tokens.len() => {
            return Err(Error::UnsupportedTokenizer(format!(
                "{} token types for {} tokens",
                t.len(),
                tokens.len()
            )));
        }
        Some(t) => t,
        None => vec![1; tokens.len()],
    };
    let vocab = Vocab { tokens, types };
    let n = vocab.tokens.len();
    let bos = token_id(md, "tokenizer.ggml.bos_token_id", n)?;
    let eos = token_id(md, "tokenizer.ggml.eos_token_id", n)?;
    let (added, special) = vocab.added_tokens();

    let (normalizer, pre, decoder, bpe, add_bos_default) = match model {
        "gpt2" => {
            let pre = md.opt("tokenizer.ggml.pre", Metadata::get_str)?.unwrap_or("default");
            let decoder = json!({"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true});
            (Json::Null, pre_tokenizer(pre)?, decoder, byte_level_model(md, &vocab)?, false)
        }
        "llama" => {
            let spm = sentencepiece_model(md, &vocab)?;
            (spm.normalizer, Json::Null, spm.decoder, spm.model, true)
        }
        other => {
            let what = match other {
                "bert" => "WordPiece (BERT)",
                "t5" => "Unigram (T5)",
                "rwkv" => "RWKV's trie",
                "no_vocab" | "none" => "no vocabulary",
                _ => "an unknown tokenizer",
            };
            return Err(Error::UnsupportedTokenizer(format!(
                "tokenizer.ggml.model {other:?} is {what}; supported: \"gpt2\" (byte-level BPE) and \"llama\" (SentencePiece with byte fallback)"
            )));
        }
    };
    let add_bos =
        md.opt("tokenizer.ggml.add_bos_token", Metadata::get_bool)?.unwrap_or(add_bos_default);
    let post_processor = match (add_bos, bos) {
        (true, Some(id)) => bos_post_processor(vocab.tokens[id as usize], id),
        _ => Json::Null,
    };

    let doc = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": normalizer,
        "pre_tokenizer": pre,
        "post_processor": post_processor,
        "decoder": decoder,
        "model": bpe,
    });
    Ok(GgufTokenizer {
        tokenizer_json: doc.to_string(),
        special_tokens: SpecialTokens { bos, eos, special },
        chat_template: md.opt("tokenizer.chat_template", Metadata::get_str)?.map(str::to_string),
        vocab_size: n,
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
    fn unknown_tokenizer_models_and_pre_tokenizers_are_refused_by_name() {
        let mut md = tiny_metadata();
        md.insert("tokenizer.ggml.model", Value::String("t5".into()));
        let e = tokenizer_from_gguf(&md).unwrap_err().to_string();
        assert_eq!(
            e,
            "unsupported tokenizer: tokenizer.ggml.model \"t5\" is Unigram (T5); supported: \"gpt2\" (byte-level BPE) and \"llama\" (SentencePiece with byte fallback)"
        );
        let mut md = tiny_metadata();
        md.insert("tokenizer.ggml.pre", Value::String("falcon".into()));
        let e = tokenizer_from_gguf(&md).unwrap_err().to_string();
        assert!(e.contains("tokenizer.ggml.pre \"falcon\": its split rules are not known"), "{e}");
    }

    #[test]
    fn qwen2_pre_tokenizer_splits_digits_and_keeps_words() {
        let mut md = tiny_metadata();
        md.insert("tokenizer.ggml.pre", Value::String("qwen2".into()));
        let tok = tokenizer_from_gguf(&md).unwrap();
        let t = tokenizers::Tokenizer::from_str(&tok.tokenizer_json).unwrap();
        let enc = t.encode("the 123 words", false).unwrap();
        assert_eq!(enc.get_tokens(), ["t", "he", "Ġ", "1", "2", "3", "Ġword", "s"]);
    }

    #[test]
    fn gpt2_and_llama3_pre_tokenizers_load() {
        for pre in ["gpt2", "default", "llama-bpe", "qwen2"] {
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
