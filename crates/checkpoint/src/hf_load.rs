//! `Checkpoint::from_hf_dir`: a Hugging Face Llama directory (config.json, safetensors,
//! tokenizer.json, tokenizer_config.json) into a checkpoint.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value as Json;

use crate::assemble::{self, Role, TensorSource};
use crate::error::{Error, Result};
use crate::model::{Checkpoint, LlamaConfig, SpecialTokens, Weight};
use crate::safetensors::{DenseTensor, read_safetensors};
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
}

fn read_json(path: &Path) -> Result<Json> {
    let text =
        std::fs::read_to_string(path).map_err(|source| Error::Io { path: path.into(), source })?;
    serde_json::from_str(&text).map_err(|source| Error::Json { path: path.into(), source })
}

fn resolve_config(path: &Path) -> Result<LlamaConfig> {
    let raw: HfConfig = serde_json::from_value(read_json(path)?)
        .map_err(|source| Error::Json { path: path.into(), source })?;
    let is_llama = raw.model_type.as_deref() == Some("llama")
        || raw.architectures.iter().any(|a| a == "LlamaForCausalLM");
    if !is_llama {
        let found = raw.model_type.or(raw.architectures.first().cloned()).unwrap_or_default();
        return Err(Error::UnsupportedArchitecture(found));
    }
    let heads = raw.num_attention_heads;
    let kv = raw.num_key_value_heads.unwrap_or(heads);
    if heads == 0 || kv == 0 || !heads.is_multiple_of(kv) {
        return Err(Error::Config(format!(
            "num_attention_heads {heads} is not a multiple of num_key_value_heads {kv}"
        )));
    }
    Ok(LlamaConfig {
        vocab_size: raw.vocab_size,
        hidden_size: raw.hidden_size,
        intermediate_size: raw.intermediate_size,
        num_layers: raw.num_hidden_layers,
        num_heads: heads,
        num_kv_heads: kv,
        head_dim: raw.head_dim.unwrap_or(raw.hidden_size / heads),
        rope_theta: raw.rope_theta.unwrap_or(10000.0),
        rms_eps: raw.rms_norm_eps,
        max_position: raw.max_position_embeddings,
        rope_interleaved: false,
        tied_embeddings: raw.tie_word_embeddings,
    })
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

struct Tensors(BTreeMap<String, DenseTensor>);

impl Tensors {
    fn take(&mut self, name: &str) -> Result<DenseTensor> {
        self.0.remove(name).ok_or_else(|| Error::MissingTensor(name.into()))
    }
}

impl TensorSource for Tensors {
    fn matrix(&mut self, name: &str, rows: usize, cols: usize) -> Result<Weight> {
        let t = self.take(name)?;
        if t.shape != [rows, cols] {
            return Err(Error::tensor(
                name,
                format!("shape {:?} does not match the config, expected [{rows}, {cols}]", t.shape),
            ));
        }
        Ok(Weight::Dense { rows, cols, data: t.data })
    }

    fn vector(&mut self, name: &str, len: usize) -> Result<Vec<f32>> {
        let t = self.take(name)?;
        check_vector(name, &t.data, len)?;
        Ok(t.data)
    }
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
    /// Loads a Hugging Face Llama checkpoint directory (F32/F16/BF16 safetensors).
    pub fn from_hf_dir(dir: &Path) -> Result<Checkpoint> {
        let config = resolve_config(&dir.join("config.json"))?;
        let tok_path = dir.join("tokenizer.json");
        let tokenizer_json = std::fs::read_to_string(&tok_path)
            .map_err(|source| Error::Io { path: tok_path.clone(), source })?;
        let tokenizer: Json = serde_json::from_str(&tokenizer_json)
            .map_err(|source| Error::Json { path: tok_path, source })?;
        let cfg_path = dir.join("tokenizer_config.json");
        let tok_cfg = if cfg_path.exists() { Some(read_json(&cfg_path)?) } else { None };
        let (special_tokens, chat_template) = special_tokens(&tokenizer, tok_cfg.as_ref());

        let mut all = BTreeMap::new();
        for f in weight_files(dir)? {
            all.append(&mut read_safetensors(&f)?);
        }
        let mut t = Tensors(all);
        let c = &config;
        let embedding = t.matrix("model.embed_tokens.weight", c.vocab_size, c.hidden_size)?;
        let layers = assemble::layers(&mut t, c, |i, role| {
            let s = match role {
                Role::AttnNorm => "input_layernorm",
                Role::Q => "self_attn.q_proj",
                Role::K => "self_attn.k_proj",
                Role::V => "self_attn.v_proj",
                Role::O => "self_attn.o_proj",
                Role::FfnNorm => "post_attention_layernorm",
                Role::Gate => "mlp.gate_proj",
                Role::Up => "mlp.up_proj",
                Role::Down => "mlp.down_proj",
            };
            format!("model.layers.{i}.{s}.weight")
        })?;
        let final_norm = t.vector("model.norm.weight", c.hidden_size)?;
        let lm_head = if c.tied_embeddings {
            embedding.clone()
        } else {
            t.matrix("lm_head.weight", c.vocab_size, c.hidden_size)?
        };
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
        })
    }
}
