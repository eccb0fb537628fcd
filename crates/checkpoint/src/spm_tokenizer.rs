//! SentencePiece vocabularies (`tokenizer.ggml.model = llama`: Llama 2, Mistral) as a Hugging
//! Face BPE model that tokenizes as llama.cpp does.
//!
//! llama.cpp's SentencePiece tokenizer starts from single characters and repeatedly merges the
//! adjacent pair whose concatenation is the highest-scoring token (leftmost on ties); what stays
//! unknown falls back to `<0xXX>` byte tokens. A BPE model whose merges are every split of every
//! token into two tokens, ranked by the merged token's score, makes the same choices. Text gets
//! a leading `▁` after the start and after each special token (llama.cpp's `add_space_prefix`),
//! and spaces become `▁`; the Prepend normalizer runs per segment between special tokens, which
//! is exactly that.

use std::collections::HashMap;

use collm_gguf::Metadata;
use serde_json::{Value as Json, json};

use crate::error::{Error, Result};
use crate::gguf_tokenizer::{BYTE, CONTROL, UNKNOWN, Vocab};

const SPACE: &str = "\u{2581}";

pub(crate) struct SentencePieceJson {
    pub normalizer: Json,
    pub decoder: Json,
    pub model: Json,
}

pub(crate) fn sentencepiece_model(md: &Metadata, vocab: &Vocab<'_>) -> Result<SentencePieceJson> {
    let n = vocab.tokens.len();
    let scores = md.get_f32_array("tokenizer.ggml.scores").map_err(|e| {
        Error::UnsupportedTokenizer(format!(
            "a SentencePiece vocabulary needs tokenizer.ggml.scores to rank its merges: {e}"
        ))
    })?;
    if scores.len() != n {
        return Err(Error::UnsupportedTokenizer(format!(
            "{} token scores for {n} tokens",
            scores.len()
        )));
    }
    let missing_bytes: Vec<String> = (0..=255u8)
        .map(|b| format!("<0x{b:02X}>"))
        .filter(|t| !vocab.tokens.contains(&t.as_str()))
        .collect();
    if !missing_bytes.is_empty() {
        return Err(Error::UnsupportedTokenizer(format!(
            "SentencePiece vocabulary without byte fallback: {} of the 256 byte tokens are missing (first {})",
            missing_bytes.len(),
            missing_bytes[0]
        )));
    }
    let unk = vocab.types.iter().position(|&t| t == UNKNOWN).map(|i| vocab.tokens[i]);
    let add_space_prefix =
        md.opt("tokenizer.ggml.add_space_prefix", Metadata::get_bool)?.unwrap_or(true);

    let mut ids: HashMap<&str, usize> = HashMap::with_capacity(n);
    for (id, &tok) in vocab.tokens.iter().enumerate() {
        ids.entry(tok).or_insert(id);
    }
    let map: serde_json::Map<String, Json> =
        vocab.tokens.iter().enumerate().map(|(id, t)| (t.to_string(), json!(id))).collect();

    let normalizer = {
        let replace = json!({"type": "Replace", "pattern": {"String": " "}, "content": SPACE});
        match add_space_prefix {
            true => json!({"type": "Sequence", "normalizers": [
                {"type": "Prepend", "prepend": SPACE}, replace,
            ]}),
            false => replace,
        }
    };
    let mut decoders = vec![
        json!({"type": "Replace", "pattern": {"String": SPACE}, "content": " "}),
        json!({"type": "ByteFallback"}),
        json!({"type": "Fuse"}),
    ];
    if add_space_prefix {
        decoders.push(json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
    }
    Ok(SentencePieceJson {
        normalizer,
        decoder: json!({"type": "Sequence", "decoders": decoders}),
        model: json!({
            "type": "BPE", "dropout": null, "unk_token": unk, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": true, "byte_fallback": true,
            "ignore_merges": false, "vocab": map, "merges": merges(vocab, &scores, &ids),
        }),
    })
}

/// Every way to build a token from two tokens, best-scoring result first (then by id, so the
/// order is deterministic). Control and byte tokens are never the result of a merge.
fn merges(vocab: &Vocab<'_>, scores: &[f32], ids: &HashMap<&str, usize>) -> Vec<Json> {
    let mut ranked: Vec<(f32, usize, usize, usize)> = Vec::new();
    for (id, (&tok, &ty)) in vocab.tokens.iter().zip(&vocab.types).enumerate() {
        if matches!(ty, CONTROL | BYTE | UNKNOWN) || ids.get(tok) != Some(&id) {
            continue;
        }
        for (at, _) in tok.char_indices().skip(1) {
            let (l, r) = tok.split_at(at);
            if let (Some(&li), Some(&ri)) = (ids.get(l), ids.get(r)) {
                ranked.push((scores[id], id, li, ri));
            }
        }
    }
    ranked.sort_by(|a, b| b.0.total_cmp(&a.0).then((a.1, a.2, a.3).cmp(&(b.1, b.2, b.3))));
    ranked.into_iter().map(|(_, _, l, r)| json!([vocab.tokens[l], vocab.tokens[r]])).collect()
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use collm_gguf::Value;

    use super::*;
    use crate::gguf_tokenizer::tokenizer_from_gguf;

    /// A SentencePiece vocabulary in GGUF form: `<unk>`, `<s>`, `</s>`, the 256 byte tokens,
    /// then `pieces` with descending scores.
    fn spm_metadata(pieces: &[&str]) -> Metadata {
        let mut tokens = vec!["<unk>".to_string(), "<s>".into(), "</s>".into()];
        let mut types = vec![UNKNOWN, CONTROL, CONTROL];
        for b in 0..=255u8 {
            tokens.push(format!("<0x{b:02X}>"));
            types.push(BYTE);
        }
        let mut scores = vec![0.0; tokens.len()];
        for (i, p) in pieces.iter().enumerate() {
            tokens.push(p.to_string());
            types.push(1);
            scores.push(-(i as f32));
        }
        let mut md = Metadata::new();
        md.insert("tokenizer.ggml.model", Value::String("llama".into()));
        md.insert("tokenizer.ggml.tokens", Value::string_array(tokens));
        md.insert("tokenizer.ggml.scores", Value::f32_array(scores));
        md.insert("tokenizer.ggml.token_type", Value::i32_array(types));
        md.insert("tokenizer.ggml.bos_token_id", Value::U32(1));
        md.insert("tokenizer.ggml.eos_token_id", Value::U32(2));
        md
    }

    fn tokenizer(md: &Metadata) -> tokenizers::Tokenizer {
        tokenizers::Tokenizer::from_str(&tokenizer_from_gguf(md).unwrap().tokenizer_json).unwrap()
    }

    const PIECES: [&str; 12] = ["▁", "h", "e", "l", "o", "w", "r", "d", "he", "ll", "▁he", "▁hell"];

    #[test]
    fn best_scoring_merges_win_and_bos_is_added() {
        let md = spm_metadata(&PIECES);
        let t = tokenizer(&md);
        // "▁hello": ▁he (score -10) needs "▁"+"he"; "he" (-8) merges first, then "ll" (-9),
        // then "▁he", then "▁hell" ("▁he"+"ll"), leaving "o".
        let enc = t.encode("hello", true).unwrap();
        assert_eq!(enc.get_tokens(), ["<s>", "▁hell", "o"]);
        assert_eq!(t.decode(enc.get_ids(), true).unwrap(), "hello");
    }

    #[test]
    fn unknown_characters_fall_back_to_bytes_and_decode_back() {
        let t = tokenizer(&spm_metadata(&PIECES));
        let enc = t.encode("hé", false).unwrap();
        assert_eq!(enc.get_tokens(), ["▁", "h", "<0xC3>", "<0xA9>"]);
        assert_eq!(t.decode(enc.get_ids(), true).unwrap(), "hé");
    }

    #[test]
    fn text_after_a_special_token_gets_its_own_space_prefix() {
        let t = tokenizer(&spm_metadata(&PIECES));
        let enc = t.encode("he</s>he", false).unwrap();
        assert_eq!(enc.get_tokens(), ["▁he", "</s>", "▁he"]);
        let mut md = spm_metadata(&PIECES);
        md.insert("tokenizer.ggml.add_space_prefix", Value::Bool(false));
        let enc = tokenizer(&md).encode("he he", false).unwrap();
        assert_eq!(enc.get_tokens(), ["he", "▁he"]);
    }

    #[test]
    fn vocabularies_without_scores_or_byte_tokens_are_refused() {
        let mut md = spm_metadata(&PIECES);
        md.insert("tokenizer.ggml.scores", Value::f32_array([0.0]));
        let e = tokenizer_from_gguf(&md).unwrap_err().to_string();
        assert!(e.contains("1 token scores for"), "{e}");
        let mut md = spm_metadata(&PIECES);
        let mut tokens: Vec<String> = md
            .get_str_array("tokenizer.ggml.tokens")
            .unwrap()
            .iter()
            .map(|s| s.to_string())
            .collect();
        tokens[3 + 0x41] = "A".into();
        md.insert("tokenizer.ggml.tokens", Value::string_array(tokens));
        let e = tokenizer_from_gguf(&md).unwrap_err().to_string();
        assert!(e.contains("1 of the 256 byte tokens are missing (first <0x41>)"), "{e}");
    }
}
