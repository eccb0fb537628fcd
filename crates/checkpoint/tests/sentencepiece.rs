//! Heavy: a real SentencePiece vocabulary (Mistral 7B v0.1's, from the mistral-common package)
//! built into a GGUF as llama.cpp's converter does, tokenized by our tokenizer.json exactly as
//! llama.cpp tokenizes it, on ShareGPT prompts and edge cases
//! (tools/reference/make-reference writes the GGUF and llama.cpp's ids into the cache).

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::str::FromStr;

use collm_checkpoint::tokenizer_from_gguf;
use collm_gguf::GgufFile;

fn reference_file(name: &str) -> PathBuf {
    let cache = std::env::var_os("COLLM_CACHE").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache/ce-collm")
    });
    let path = cache.join("reference").join(name);
    assert!(path.exists(), "{} is missing: run tools/reference/make-reference", path.display());
    path
}

#[test]
fn heavy_sentencepiece_tokenizes_as_llama_cpp_on_real_text() {
    let file = GgufFile::open(reference_file("mistral-7b-v0.1.vocab.gguf")).unwrap();
    let tok = tokenizer_from_gguf(file.metadata()).unwrap();
    assert_eq!(
        (tok.vocab_size, tok.special_tokens.bos, tok.special_tokens.eos),
        (32000, Some(1), Some(2))
    );
    let special = tokenizers::Tokenizer::from_str(&tok.tokenizer_json).unwrap();
    let mut plain = special.clone();
    plain.set_encode_special_tokens(true);
    let doc: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(reference_file("mistral-7b-v0.1.tokenize.llamacpp.json")).unwrap(),
    )
    .unwrap();
    let ids = |v: &serde_json::Value| -> Vec<u32> {
        v.as_array().unwrap().iter().map(|i| i.as_u64().unwrap() as u32).collect()
    };
    let cases = doc["cases"].as_array().unwrap();
    assert!(cases.len() >= 80, "{} texts", cases.len());
    let (mut tokens, mut mismatches) = (0, Vec::new());
    for case in cases {
        let text = case["text"].as_str().unwrap();
        let with_bos = special.encode(text, true).unwrap().get_ids().to_vec();
        let as_text = plain.encode(text, false).unwrap().get_ids().to_vec();
        tokens += with_bos.len() + as_text.len();
        for (got, want) in
            [(with_bos, ids(&case["ids_bos_special"])), (as_text, ids(&case["ids_plain"]))]
        {
            if got != want {
                mismatches.push(format!("{text:?}:\n  ours      {got:?}\n  llama.cpp {want:?}"));
            }
        }
        // What llama.cpp's ids decode to is the text (byte fallback included).
        let decoded = special.decode(&ids(&case["ids_plain"]), true).unwrap();
        assert_eq!(decoded, text, "decoding llama.cpp's ids");
    }
    eprintln!("{} texts, {tokens} tokens compared", cases.len());
    assert!(
        mismatches.is_empty(),
        "{} of {} tokenizations differ:\n{}",
        mismatches.len(),
        2 * cases.len(),
        mismatches.join("\n")
    );
}
