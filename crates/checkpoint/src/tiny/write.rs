//! Writing the tiny model as a GGUF file or a Hugging Face directory.

use std::collections::BTreeMap;
use std::path::Path;

use collm_gguf::{GgmlType, GgufWriter, Value};
use serde_json::json;

use super::{TinySpec, build_vocab, checkpoint, tokenizer_metadata};
use crate::error::{Error, Result};
use crate::model::Weight;
use crate::rope_layout::to_interleaved_rope;
use crate::safetensors::{DenseTensor, write_safetensors};

fn dense(w: &Weight) -> (usize, usize, Vec<f32>) {
    (w.rows(), w.cols(), w.to_dense())
}

fn add_matrix(g: &mut GgufWriter, name: &str, w: &Weight, ty: GgmlType) -> Result<()> {
    let (rows, cols, data) = dense(w);
    g.add_tensor(name, &[cols as u64, rows as u64], ty, &data)?;
    Ok(())
}

/// Writes the tiny model as llama.cpp would convert it: Q/K rows permuted for interleaved
/// rotary, layer matrices (and an untied `output.weight`) as `layer_type`, `token_embd` as F32
/// for float layer types and Q8_0 otherwise, norms F32.
pub fn write_gguf(path: &Path, spec: &TinySpec, seed: u64, layer_type: GgmlType) -> Result<()> {
    let ck = checkpoint(spec, seed)?;
    let c = &ck.config;
    let mut g = GgufWriter::new();
    let u = |v: usize| Value::U32(v as u32);
    g.set("general.architecture", Value::String("llama".into()))
        .set("general.name", Value::String("collm tiny random".into()))
        .set("llama.block_count", u(c.num_layers))
        .set("llama.context_length", u(c.max_position))
        .set("llama.embedding_length", u(c.hidden_size))
        .set("llama.feed_forward_length", u(c.intermediate_size))
        .set("llama.attention.head_count", u(c.num_heads))
        .set("llama.attention.head_count_kv", u(c.num_kv_heads))
        .set("llama.attention.key_length", u(c.head_dim))
        .set("llama.attention.value_length", u(c.head_dim))
        .set("llama.rope.dimension_count", u(c.head_dim))
        .set("llama.rope.freq_base", Value::F32(c.rope_theta))
        .set("llama.attention.layer_norm_rms_epsilon", Value::F32(c.rms_eps))
        .set("llama.vocab_size", u(c.vocab_size));
    for (k, v) in tokenizer_metadata(&build_vocab(spec.num_merges)).entries() {
        g.set(k.clone(), v.clone());
    }
    let embd_type = match layer_type {
        GgmlType::F32 | GgmlType::F16 => GgmlType::F32,
        _ => GgmlType::Q8_0,
    };
    add_matrix(&mut g, "token_embd.weight", &ck.embedding, embd_type)?;
    for (i, l) in ck.layers.iter().enumerate() {
        let n = |t: &str| format!("blk.{i}.{t}.weight");
        g.add_tensor(n("attn_norm"), &[c.hidden_size as u64], GgmlType::F32, &l.attn_norm)?;
        add_matrix(&mut g, &n("attn_q"), &to_interleaved_rope(&l.wq, c.num_heads), layer_type)?;
        add_matrix(&mut g, &n("attn_k"), &to_interleaved_rope(&l.wk, c.num_kv_heads), layer_type)?;
        add_matrix(&mut g, &n("attn_v"), &l.wv, layer_type)?;
        add_matrix(&mut g, &n("attn_output"), &l.wo, layer_type)?;
        g.add_tensor(n("ffn_norm"), &[c.hidden_size as u64], GgmlType::F32, &l.ffn_norm)?;
        add_matrix(&mut g, &n("ffn_gate"), &l.w_gate, layer_type)?;
        add_matrix(&mut g, &n("ffn_up"), &l.w_up, layer_type)?;
        add_matrix(&mut g, &n("ffn_down"), &l.w_down, layer_type)?;
    }
    g.add_tensor("output_norm.weight", &[c.hidden_size as u64], GgmlType::F32, &ck.final_norm)?;
    if !c.tied_embeddings {
        add_matrix(&mut g, "output.weight", &ck.lm_head, layer_type)?;
    }
    g.write(path)?;
    Ok(())
}

fn write_text(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).map_err(|source| Error::Write { path: path.into(), source })
}

/// Writes the same weights (rotate-half Q/K) as `config.json`, `model.safetensors` (F32),
/// `tokenizer.json` and `tokenizer_config.json` in `dir` (created if needed).
pub fn write_hf(dir: &Path, spec: &TinySpec, seed: u64) -> Result<()> {
    let ck = checkpoint(spec, seed)?;
    let c = &ck.config;
    std::fs::create_dir_all(dir).map_err(|source| Error::Write { path: dir.into(), source })?;
    let config = json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": c.hidden_size,
        "intermediate_size": c.intermediate_size,
        "num_hidden_layers": c.num_layers,
        "num_attention_heads": c.num_heads,
        "num_key_value_heads": c.num_kv_heads,
        "head_dim": c.head_dim,
        "rope_theta": c.rope_theta,
        "rms_norm_eps": c.rms_eps,
        "max_position_embeddings": c.max_position,
        "vocab_size": c.vocab_size,
        "tie_word_embeddings": c.tied_embeddings,
        "hidden_act": "silu",
        "bos_token_id": super::BOS_ID,
        "eos_token_id": super::EOS_ID,
        "torch_dtype": "float32",
    });
    write_text(&dir.join("config.json"), &format!("{config:#}"))?;

    let mut tensors = BTreeMap::new();
    let mut put = |name: String, w: &Weight| {
        let (rows, cols, data) = dense(w);
        tensors.insert(name, DenseTensor { shape: vec![rows, cols], data });
    };
    put("model.embed_tokens.weight".into(), &ck.embedding);
    for (i, l) in ck.layers.iter().enumerate() {
        let n = |s: &str| format!("model.layers.{i}.{s}.weight");
        put(n("self_attn.q_proj"), &l.wq);
        put(n("self_attn.k_proj"), &l.wk);
        put(n("self_attn.v_proj"), &l.wv);
        put(n("self_attn.o_proj"), &l.wo);
        put(n("mlp.gate_proj"), &l.w_gate);
        put(n("mlp.up_proj"), &l.w_up);
        put(n("mlp.down_proj"), &l.w_down);
    }
    if !c.tied_embeddings {
        put("lm_head.weight".into(), &ck.lm_head);
    }
    let vector = |v: &[f32]| DenseTensor { shape: vec![v.len()], data: v.to_vec() };
    for (i, l) in ck.layers.iter().enumerate() {
        tensors.insert(format!("model.layers.{i}.input_layernorm.weight"), vector(&l.attn_norm));
        tensors.insert(
            format!("model.layers.{i}.post_attention_layernorm.weight"),
            vector(&l.ffn_norm),
        );
    }
    tensors.insert("model.norm.weight".into(), vector(&ck.final_norm));
    write_safetensors(&dir.join("model.safetensors"), &tensors)?;

    write_text(&dir.join("tokenizer.json"), &ck.tokenizer_json)?;
    let tok_config = json!({
        "bos_token": super::SPECIAL_TOKENS[super::BOS_ID as usize],
        "eos_token": super::SPECIAL_TOKENS[super::EOS_ID as usize],
        "add_bos_token": false,
        "chat_template": super::CHAT_TEMPLATE,
        "tokenizer_class": "GPT2Tokenizer",
    });
    write_text(&dir.join("tokenizer_config.json"), &format!("{tok_config:#}"))
}
