//! A tiny seeded random Llama with a small byte-level BPE tokenizer, written as GGUF or as a
//! Hugging Face directory, so loaders and exporters can be tested in milliseconds.

mod vocab;
mod write;

use collm_gguf::{Metadata, Value};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::error::Result;
use crate::gguf_tokenizer::tokenizer_from_gguf;
use crate::model::{Checkpoint, LayerWeights, LlamaConfig, QkvBias, Weight};

pub use vocab::{SPECIAL_TOKENS, TinyVocab, build_vocab, byte_to_unicode};
pub use write::{write_gguf, write_hf};

/// ChatML, as SmolLM2-Instruct uses it (without the default system prompt).
pub const CHAT_TEMPLATE: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";
pub const BOS_ID: u32 = 1;
pub const EOS_ID: u32 = 2;

/// Shape of the tiny model.
#[derive(Debug, Clone, PartialEq)]
pub struct TinySpec {
    pub num_layers: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub rope_theta: f32,
    pub rms_eps: f32,
    pub max_position: usize,
    pub tied_embeddings: bool,
    /// Qwen2's Q/K/V biases (written as a `qwen2` GGUF / Hugging Face directory).
    pub qkv_bias: bool,
    /// BPE merges learned on top of the 256 byte tokens.
    pub num_merges: usize,
}

impl Default for TinySpec {
    fn default() -> Self {
        Self {
            num_layers: 4,
            hidden_size: 64,
            intermediate_size: 128,
            num_heads: 4,
            num_kv_heads: 2,
            head_dim: 16,
            rope_theta: 10000.0,
            rms_eps: 1e-5,
            max_position: 256,
            tied_embeddings: false,
            qkv_bias: false,
            num_merges: 100,
        }
    }
}

/// The tokenizer as GGUF `tokenizer.*` metadata (the single source both writers use).
pub fn tokenizer_metadata(vocab: &TinyVocab) -> Metadata {
    let mut md = Metadata::new();
    md.insert("tokenizer.ggml.model", Value::String("gpt2".into()));
    md.insert("tokenizer.ggml.pre", Value::String("smollm".into()));
    md.insert("tokenizer.ggml.tokens", Value::string_array(vocab.tokens.iter().cloned()));
    md.insert("tokenizer.ggml.token_type", Value::i32_array(vocab.token_types.iter().copied()));
    md.insert("tokenizer.ggml.merges", Value::string_array(vocab.merges.iter().cloned()));
    md.insert("tokenizer.ggml.bos_token_id", Value::U32(BOS_ID));
    md.insert("tokenizer.ggml.eos_token_id", Value::U32(EOS_ID));
    md.insert("tokenizer.ggml.add_bos_token", Value::Bool(false));
    md.insert("tokenizer.chat_template", Value::String(CHAT_TEMPLATE.into()));
    md
}

struct Gaussian(ChaCha8Rng);

impl Gaussian {
    /// Box–Muller; one draw per call keeps the stream simple to reason about.
    fn next(&mut self) -> f32 {
        let u1: f32 = 1.0 - self.0.random::<f32>(); // (0, 1]
        let u2: f32 = self.0.random::<f32>();
        (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
    }

    fn matrix(&mut self, rows: usize, cols: usize, std: f32) -> Weight {
        let data = (0..rows * cols).map(|_| std * self.next()).collect();
        Weight::Dense { rows, cols, data }
    }

    fn norm(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| 1.0 + 0.05 * self.next()).collect()
    }
}

/// The tiny model in Hugging Face layout (rotate-half Q/K, dense f32), drawn from `seed`.
pub fn checkpoint(spec: &TinySpec, seed: u64) -> Result<Checkpoint> {
    let vocab = build_vocab(spec.num_merges);
    let tok = tokenizer_from_gguf(&tokenizer_metadata(&vocab))?;
    let s = spec;
    let config = LlamaConfig {
        vocab_size: vocab.tokens.len(),
        hidden_size: s.hidden_size,
        intermediate_size: s.intermediate_size,
        num_layers: s.num_layers,
        num_heads: s.num_heads,
        num_kv_heads: s.num_kv_heads,
        head_dim: s.head_dim,
        rope_theta: s.rope_theta,
        rms_eps: s.rms_eps,
        max_position: s.max_position,
        rope_interleaved: false,
        rope_freq_divisors: vec![],
        tied_embeddings: s.tied_embeddings,
    };
    let mut g = Gaussian(ChaCha8Rng::seed_from_u64(seed));
    let (h, f) = (s.hidden_size, s.intermediate_size);
    let (q, kv) = (s.num_heads * s.head_dim, s.num_kv_heads * s.head_dim);
    // Large enough that logits and attention scores are far from uniform after RMSNorm.
    let std = 0.08;
    let embedding = g.matrix(config.vocab_size, h, 0.1);
    // Biases come from their own stream so the other weights of a seed stay what they were.
    let mut gb = Gaussian(ChaCha8Rng::seed_from_u64(seed ^ 0xb1a5));
    let mut bias = |n: usize| (0..n).map(|_| 0.5 * gb.next()).collect::<Vec<f32>>();
    let layers = (0..s.num_layers)
        .map(|_| LayerWeights {
            attn_norm: g.norm(h),
            wq: g.matrix(q, h, std),
            wk: g.matrix(kv, h, std),
            wv: g.matrix(kv, h, std),
            wo: g.matrix(h, q, std),
            ffn_norm: g.norm(h),
            w_gate: g.matrix(f, h, std),
            w_up: g.matrix(f, h, std),
            w_down: g.matrix(h, f, std),
            qkv_bias: s.qkv_bias.then(|| QkvBias { q: bias(q), k: bias(kv), v: bias(kv) }),
        })
        .collect();
    let final_norm = g.norm(h);
    let lm_head =
        if s.tied_embeddings { embedding.clone() } else { g.matrix(config.vocab_size, h, 0.1) };
    Ok(Checkpoint {
        config,
        embedding,
        layers,
        final_norm,
        lm_head,
        tokenizer_json: tok.tokenizer_json,
        special_tokens: tok.special_tokens,
        chat_template: tok.chat_template,
        source: format!("tiny:seed{seed}"),
        sources: Default::default(),
    })
}
