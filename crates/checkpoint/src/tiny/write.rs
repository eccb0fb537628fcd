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

/// The type llama.cpp's quantizer falls back to when a row is not a whole number of
/// super-blocks (`tensor_type_fallback` in llama.cpp's `llama-quant.cpp`).
fn fallback(ty: GgmlType, cols: usize) -> GgmlType {
    let fits = ty.block_geometry().is_some_and(|(per_block, _)| cols.is_multiple_of(per_block));
    match ty {
        _ if fits => ty,
        GgmlType::Q2_K | GgmlType::Q3_K => GgmlType::Q4_0,
        GgmlType::Q4_K => GgmlType::Q5_0,
        GgmlType::Q5_K => GgmlType::Q5_1,
        GgmlType::Q6_K => GgmlType::Q8_0,
        _ => GgmlType::F16,
    }
}

fn add_matrix(g: &mut GgufWriter, name: &str, w: &Weight, ty: GgmlType) -> Result<()> {
    let (rows, cols, data) = dense(w);
    g.add_tensor(name, &[cols as u64, rows as u64], fallback(ty, cols), &data)?;
    Ok(())
}

fn add_vector(g: &mut GgufWriter, name: &str, v: &[f32]) -> Result<()> {
    g.add_tensor(name, &[v.len() as u64], GgmlType::F32, v)?;
    Ok(())
}

/// Writes the tiny model as llama.cpp would convert it: Q/K rows permuted for interleaved
/// rotary (architecture `llama`; `qwen2` when the spec has Q/K/V biases, which keeps the
/// rotate-half rows), layer matrices (and an untied `output.weight`) as `layer_type` with
/// llama.cpp's fallbacks for rows that are not whole super-blocks, `token_embd` as F32 for
/// float layer types and Q8_0 otherwise, norms and biases F32.
pub fn write_gguf(path: &Path, spec: &TinySpec, seed: u64, layer_type: GgmlType) -> Result<()> {
    let ck = checkpoint(spec, seed)?;
    let c = &ck.config;
    let arch = if spec.qkv_bias { "qwen2" } else { "llama" };
    let mut g = GgufWriter::new();
    let u = |v: usize| Value::U32(v as u32);
    g.set("general.architecture", Value::String(arch.into()))
        .set("general.name", Value::String("collm tiny random".into()));
    for (k, v) in [
        ("block_count", u(c.num_layers)),
        ("context_length", u(c.max_position)),
        ("embedding_length", u(c.hidden_size)),
        ("feed_forward_length", u(c.intermediate_size)),
        ("attention.head_count", u(c.num_heads)),
        ("attention.head_count_kv", u(c.num_kv_heads)),
        ("attention.key_length", u(c.head_dim)),
        ("attention.value_length", u(c.head_dim)),
        ("rope.dimension_count", u(c.head_dim)),
        ("rope.freq_base", Value::F32(c.rope_theta)),
        ("attention.layer_norm_rms_epsilon", Value::F32(c.rms_eps)),
        ("vocab_size", u(c.vocab_size)),
    ] {
        g.set(format!("{arch}.{k}"), v);
    }
    for (k, v) in tokenizer_metadata(&build_vocab(spec.num_merges)).entries() {
        g.set(k.clone(), v.clone());
    }
    let embd_type = match layer_type {
        GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => GgmlType::F32,
        _ => GgmlType::Q8_0,
    };
    let rope_rows = |w: &Weight, heads| match spec.qkv_bias {
        true => w.clone(),
        false => to_interleaved_rope(w, heads),
    };
    add_matrix(&mut g, "token_embd.weight", &ck.embedding, embd_type)?;
    for (i, l) in ck.layers.iter().enumerate() {
        let n = |t: &str| format!("blk.{i}.{t}.weight");
        add_vector(&mut g, &n("attn_norm"), &l.attn_norm)?;
        add_matrix(&mut g, &n("attn_q"), &rope_rows(&l.wq, c.num_heads), layer_type)?;
        add_matrix(&mut g, &n("attn_k"), &rope_rows(&l.wk, c.num_kv_heads), layer_type)?;
        add_matrix(&mut g, &n("attn_v"), &l.wv, layer_type)?;
        if let Some(b) = &l.qkv_bias {
            for (t, v) in [("attn_q", &b.q), ("attn_k", &b.k), ("attn_v", &b.v)] {
                add_vector(&mut g, &format!("blk.{i}.{t}.bias"), v)?;
            }
        }
        add_matrix(&mut g, &n("attn_output"), &l.wo, layer_type)?;
        add_vector(&mut g, &n("ffn_norm"), &l.ffn_norm)?;
        add_matrix(&mut g, &n("ffn_gate"), &l.w_gate, layer_type)?;
        add_matrix(&mut g, &n("ffn_up"), &l.w_up, layer_type)?;
        add_matrix(&mut g, &n("ffn_down"), &l.w_down, layer_type)?;
    }
    add_vector(&mut g, "output_norm.weight", &ck.final_norm)?;
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
    let (class, model_type) = match spec.qkv_bias {
        true => ("Qwen2ForCausalLM", "qwen2"),
        false => ("LlamaForCausalLM", "llama"),
    };
    let config = json!({
        "architectures": [class],
        "model_type": model_type,
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
        if let Some(b) = &l.qkv_bias {
            for (p, v) in [("q_proj", &b.q), ("k_proj", &b.k), ("v_proj", &b.v)] {
                tensors.insert(format!("model.layers.{i}.self_attn.{p}.bias"), vector(v));
            }
        }
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
