//! `Checkpoint::from_hf_dir`: a Hugging Face Llama or Qwen2 directory (config.json,
//! safetensors, tokenizer.json, tokenizer_config.json) into a checkpoint.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value as Json;

use crate::assemble::{self, Role, TensorSource};
use crate::error::{Error, Result};
use crate::model::{Checkpoint, LlamaConfig, SourceTensor, SpecialTokens, Weight};
use crate::safetensors::{MappedShards, Shards};
use crate::shapes::check_vector;

#[derive(Debug, Deserialize)]
struct HfConfig {
    #[serde(default)]
    architectures: Vec<String>,
    #[serde(default)]
    model_type: Option<String>,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    rope_theta: Option<f32>,
    rms_norm_eps: f32,
    max_position_embeddings: usize,
    vocab_size: usize,
    #[serde(default)]
    tie_word_embeddings: bool,
    #[serde(default)]
    rope_scaling: Option<Json>,
    /// Llama checkpoints with Q/K/V (and output) biases say so here.
    #[serde(default)]
    attention_bias: bool,
}

/// The architectures this loader reads; Qwen2 adds Q/K/V biases to Llama.
fn family(raw: &HfConfig) -> Result<bool> {
    let is = |model: &str, class: &str| {
        raw.model_type.as_deref() == Some(model) || raw.architectures.iter().any(|a| a == class)
    };
    if is("qwen2", "Qwen2ForCausalLM") {
        return Ok(true);
    }
    if is("llama", "LlamaForCausalLM") || is("mistral", "MistralForCausalLM") {
        if raw.attention_bias {
            return Err(Error::Config(
                "attention_bias = true (biases on every attention projection) is not supported"
                    .into(),
            ));
        }
        return Ok(false);
    }
    let found = raw.model_type.clone().or(raw.architectures.first().cloned()).unwrap_or_default();
    Err(Error::UnsupportedArchitecture(found))
}

/// `rope_scaling` as frequency divisors: linear scaling only.
fn rope_divisors(scaling: Option<&Json>, head_dim: usize) -> Result<Vec<f32>> {
    let Some(s) = scaling.filter(|s| !s.is_null()) else { return Ok(vec![]) };
    let kind = s.get("rope_type").or(s.get("type")).and_then(Json::as_str).unwrap_or("?");
    let factor = s.get("factor").and_then(Json::as_f64);
    match (kind, factor) {
        ("default", _) => Ok(vec![]),
        ("linear", Some(f)) if f > 0.0 => Ok(vec![f as f32; head_dim / 2]),
        _ => Err(Error::Config(format!("rope_scaling {s} is not supported (supported: linear)"))),
    }
}

fn read_json(path: &Path) -> Result<Json> {
    let text =
        std::fs::read_to_string(path).map_err(|source| Error::Io { path: path.into(), source })?;
    serde_json::from_str(&text).map_err(|source| Error::Json { path: path.into(), source })
}

/// The configuration, and whether the architecture has Q/K/V biases.
fn resolve_config(path: &Path) -> Result<(LlamaConfig, bool)> {
    let raw: HfConfig = serde_json::from_value(read_json(path)?)
        .map_err(|source| Error::Json { path: path.into(), source })?;
    let qkv_bias = family(&raw)?;
    let heads = raw.num_attention_heads;
    let kv = raw.num_key_value_heads.unwrap_or(heads);
    if heads == 0 || kv == 0 || !heads.is_multiple_of(kv) {
        return Err(Error::Config(format!(
            "num_attention_heads {heads} is not a multiple of num_key_value_heads {kv}"
        )));
    }
    let head_dim = raw.head_dim.unwrap_or(raw.hidden_size / heads);
    let config = LlamaConfig {
        vocab_size: raw.vocab_size,
        hidden_size: raw.hidden_size,
        intermediate_size: raw.intermediate_size,
        num_layers: raw.num_hidden_layers,
        num_heads: heads,
        num_kv_heads: kv,
        head_dim,
        rope_theta: raw.rope_theta.unwrap_or(10000.0),
        rms_eps: raw.rms_norm_eps,
        max_position: raw.max_position_embeddings,
        rope_interleaved: false,
        rope_freq_divisors: rope_divisors(raw.rope_scaling.as_ref(), head_dim)?,
        tied_embeddings: raw.tie_word_embeddings,
    };
    Ok((config, qkv_bias))
}

/// The safetensors files of `dir`: from the shard index when present, else every
/// `*.safetensors` file.
fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let index = dir.join("model.safetensors.index.json");
    if index.exists() {
        let doc = read_json(&index)?;
        let map = doc
            .get("weight_map")
            .and_then(Json::as_object)
            .ok_or_else(|| Error::Config(format!("{} has no weight_map", index.display())))?;
        let mut files: Vec<PathBuf> =
            map.values().filter_map(Json::as_str).map(|f| dir.join(f)).collect();
        files.sort();
        files.dedup();
        return Ok(files);
    }
    let entries =
        std::fs::read_dir(dir).map_err(|source| Error::Io { path: dir.into(), source })?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(Error::Config(format!("{} has no *.safetensors files", dir.display())));
    }
    Ok(files)
}

/// Tensors read on demand from the mapped shards, remembering which were used.
struct Tensors<'a> {
    shards: Shards<'a>,
    used: BTreeMap<String, SourceTensor>,
}

impl Tensors<'_> {
    fn take(&mut self, name: &str) -> Result<(Vec<usize>, Vec<f32>)> {
        let t = self.shards.get(name).ok_or_else(|| Error::MissingTensor(name.into()))?;
        let data = t.to_f32(name)?;
        let ty = format!("{:?}", t.dtype);
        self.used.insert(
            name.to_string(),
            SourceTensor { name: name.into(), ty, bytes: t.bytes.len() as u64 },
        );
        Ok((t.shape, data))
    }
}

impl TensorSource for Tensors<'_> {
    fn matrix(&mut self, name: &str, rows: usize, cols: usize) -> Result<Weight> {
        let (shape, data) = self.take(name)?;
        if shape != [rows, cols] {
            return Err(Error::tensor(
                name,
                format!("shape {shape:?} does not match the config, expected [{rows}, {cols}]"),
            ));
        }
        Ok(Weight::Dense { rows, cols, data })
    }

    fn vector(&mut self, name: &str, len: usize) -> Result<Vec<f32>> {
        let (_, data) = self.take(name)?;
        check_vector(name, &data, len)?;
        Ok(data)
    }
}

fn tensor_name(i: usize, role: Role) -> String {
    let s = match role {
        Role::AttnNorm => "input_layernorm.weight",
        Role::Q => "self_attn.q_proj.weight",
        Role::K => "self_attn.k_proj.weight",
        Role::V => "self_attn.v_proj.weight",
        Role::O => "self_attn.o_proj.weight",
        Role::FfnNorm => "post_attention_layernorm.weight",
        Role::Gate => "mlp.gate_proj.weight",
        Role::Up => "mlp.up_proj.weight",
        Role::Down => "mlp.down_proj.weight",
        Role::QBias => "self_attn.q_proj.bias",
        Role::KBias => "self_attn.k_proj.bias",
        Role::VBias => "self_attn.v_proj.bias",
    };
    format!("model.layers.{i}.{s}")
}

/// A token string's id: added tokens first, then the BPE vocabulary.
fn token_id(tokenizer: &Json, content: &str) -> Option<u32> {
    let added = tokenizer.get("added_tokens").and_then(Json::as_array);
    added
        .into_iter()
        .flatten()
        .find(|t| t.get("content").and_then(Json::as_str) == Some(content))
        .and_then(|t| t.get("id"))
        .or_else(|| tokenizer.pointer("/model/vocab").and_then(|v| v.get(content)))
        .and_then(Json::as_u64)
        .and_then(|id| u32::try_from(id).ok())
}

/// `bos_token` may be a string or an `AddedToken` object with `content`.
fn token_string(cfg: &Json, key: &str) -> Option<String> {
    let v = cfg.get(key)?;
    v.as_str().or_else(|| v.get("content").and_then(Json::as_str)).map(str::to_string)
}

fn special_tokens(tokenizer: &Json, tok_cfg: Option<&Json>) -> (SpecialTokens, Option<String>) {
    let special = tokenizer
        .get("added_tokens")
        .and_then(Json::as_array)
        .into_iter()
        .flatten()
        .filter(|t| t.get("special").and_then(Json::as_bool).unwrap_or(false))
        .filter_map(|t| {
            let id = u32::try_from(t.get("id")?.as_u64()?).ok()?;
            Some((id, t.get("content")?.as_str()?.to_string()))
        })
        .collect();
    let resolve =
        |key| tok_cfg.and_then(|c| token_string(c, key)).and_then(|s| token_id(tokenizer, &s));
    let template = tok_cfg.and_then(|c| c.get("chat_template")).and_then(|t| match t {
        Json::String(s) => Some(s.clone()),
        // Newer configs list named templates; the "default" one is the chat template.
        Json::Array(list) => list
            .iter()
            .find(|e| e.get("name").and_then(Json::as_str) == Some("default"))
            .and_then(|e| e.get("template")?.as_str().map(str::to_string)),
        _ => None,
    });
    (SpecialTokens { bos: resolve("bos_token"), eos: resolve("eos_token"), special }, template)
}

impl Checkpoint {
    /// Loads a Hugging Face Llama/Mistral/Qwen2 checkpoint directory (F32/F16/BF16
    /// safetensors, memory-mapped; each tensor is converted when it is read).
    pub fn from_hf_dir(dir: &Path) -> Result<Checkpoint> {
        let (config, qkv_bias) = resolve_config(&dir.join("config.json"))?;
        let tok_path = dir.join("tokenizer.json");
        let tokenizer_json = std::fs::read_to_string(&tok_path)
            .map_err(|source| Error::Io { path: tok_path.clone(), source })?;
        let tokenizer: Json = serde_json::from_str(&tokenizer_json)
            .map_err(|source| Error::Json { path: tok_path, source })?;
        let cfg_path = dir.join("tokenizer_config.json");
        let tok_cfg = if cfg_path.exists() { Some(read_json(&cfg_path)?) } else { None };
        let (special_tokens, chat_template) = special_tokens(&tokenizer, tok_cfg.as_ref());

        let mapped = MappedShards::open(&weight_files(dir)?)?;
        let mut t = Tensors { shards: mapped.index()?, used: BTreeMap::new() };
        let c = &config;
        let embedding = t.matrix("model.embed_tokens.weight", c.vocab_size, c.hidden_size)?;
        let layers = assemble::layers(&mut t, c, qkv_bias, tensor_name)?;
        let final_norm = t.vector("model.norm.weight", c.hidden_size)?;
        let head = if c.tied_embeddings { "model.embed_tokens.weight" } else { "lm_head.weight" };
        let lm_head = if c.tied_embeddings {
            embedding.clone()
        } else {
            t.matrix("lm_head.weight", c.vocab_size, c.hidden_size)?
        };
        let ignorable = |n: &str| n.ends_with("rotary_emb.inv_freq") || n == "lm_head.weight";
        let mut extra: Vec<&str> =
            t.shards.names().filter(|n| !t.used.contains_key(*n) && !ignorable(n)).collect();
        extra.sort_unstable();
        if let Some(name) = extra.first() {
            return Err(Error::tensor(
                name,
                "the graph has no place for this tensor (a variant of the architecture that is not supported)",
            ));
        }
        let mut sources: BTreeMap<String, SourceTensor> =
            assemble::matrix_keys(c.num_layers, tensor_name)
                .into_iter()
                .filter_map(|(key, name)| Some((key, t.used.get(&name)?.clone())))
                .collect();
        for (key, name) in [("embedding", "model.embed_tokens.weight"), ("lm_head", head)] {
            if let Some(s) = t.used.get(name) {
                sources.insert(key.into(), s.clone());
            }
        }
        Ok(Checkpoint {
            config,
            embedding,
            layers,
            final_norm,
            lm_head,
            tokenizer_json,
            special_tokens,
            chat_template,
            source: format!("hf:{}", dir.display()),
            sources,
        })
    }
}
