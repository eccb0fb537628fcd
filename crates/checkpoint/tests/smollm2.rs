//! Heavy tests on the real SmolLM2-135M-Instruct Q4_1 GGUF (fetched by tools/fetch-artifacts).

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::str::FromStr;

use collm_checkpoint::{Checkpoint, Weight};

fn smollm2_gguf() -> PathBuf {
    let cache = std::env::var_os("COLLM_CACHE").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(std::env::var_os("HOME").expect("HOME is set")).join(".cache/ce-collm")
    });
    let path = cache.join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        path.exists(),
        "{} is missing: run tools/fetch-artifacts to download the test model",
        path.display()
    );
    path
}

fn load() -> Checkpoint {
    Checkpoint::from_gguf(&smollm2_gguf()).unwrap()
}

#[test]
fn smollm2_config_matches_the_published_model() {
    let ck = load();
    let c = &ck.config;
    assert_eq!(c.num_layers, 30);
    assert_eq!(c.hidden_size, 576);
    assert_eq!(c.intermediate_size, 1536);
    assert_eq!((c.num_heads, c.num_kv_heads, c.head_dim), (9, 3, 64));
    assert_eq!(c.rope_theta, 100000.0);
    assert_eq!(c.vocab_size, 49152);
    assert!(c.tied_embeddings && c.rope_interleaved);
    assert_eq!(ck.lm_head, ck.embedding);
    assert_eq!(ck.special_tokens.bos, Some(1));
    assert_eq!(ck.special_tokens.eos, Some(2));
    assert!(ck.chat_template.as_deref().unwrap().contains("<|im_start|>"));
    // Layer matrices are Q4_1 (4-bit with zero points), the embedding Q8_0.
    assert!(matches!(ck.layers[0].wq, Weight::Blocks { bits: 4, zero_points: Some(_), .. }));
    assert!(matches!(ck.embedding, Weight::Blocks { bits: 8, zero_points: None, .. }));
    assert_eq!(ck.source, "gguf:SmolLM2-135M-Instruct.Q4_1.gguf (Q4_1+Q8_0)");
}

#[test]
fn smollm2_tokenizer_splits_digits_and_round_trips() {
    let ck = load();
    let tok = tokenizers::Tokenizer::from_str(&ck.tokenizer_json).unwrap();
    let enc = tok.encode("Hello world 123", false).unwrap();
    let pieces = enc.get_tokens();
    assert_eq!(pieces, ["Hello", "Ġworld", "Ġ", "1", "2", "3"], "{:?}", enc.get_ids());
    assert_eq!(tok.decode(enc.get_ids(), false).unwrap(), "Hello world 123");
    let chat = tok.encode("<|im_start|>user\nHi<|im_end|>", false).unwrap();
    assert_eq!(chat.get_ids()[0], 1);
    assert_eq!(*chat.get_ids().last().unwrap(), 2);
}
