//! `Checkpoint::from_gguf`: a llama.cpp GGUF file of a Llama-family model into a checkpoint.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use collm_gguf::{GgufFile, Metadata};

use crate::assemble::{self, Role, TensorSource};
use crate::convert::{matrix_shape, weight_from_gguf};
use crate::error::{Error, Result};
use crate::gguf_tokenizer::tokenizer_from_gguf;
use crate::model::{Checkpoint, LlamaConfig, SourceTensor, Weight};
use crate::rope_settings::rope_settings;
use crate::shapes::{check_matrix, check_vector};

/// Architectures whose GGUF files this loader reads, and how they differ from Llama.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    /// Llama, Llama 2/3, Mistral, SmolLM: Q/K rows permuted for interleaved rotary by the
    /// converter; Q/K/V biases only when the file has them.
    Llama,
    /// Qwen2: rotate-half rotary (rows not permuted), Q/K/V biases always.
    Qwen2,
}

impl Family {
    fn from_arch(arch: &str) -> Result<Self> {
        match arch {
            "llama" => Ok(Self::Llama),
            "qwen2" => Ok(Self::Qwen2),
            other => Err(Error::UnsupportedArchitecture(other.to_string())),
        }
    }
}

fn config_from_gguf(
    md: &Metadata,
    arch: &str,
    vocab_size: usize,
    rope_freqs: Option<Vec<f32>>,
) -> Result<LlamaConfig> {
    let key = |k: &str| format!("{arch}.{k}");
    let u = |k: &str| -> Result<usize> { Ok(md.get_u32(&key(k))? as usize) };
    let opt_u = |k: &str| -> Result<Option<usize>> {
        Ok(md.opt(&key(k), Metadata::get_u32)?.map(|n| n as usize))
    };
    if let Some(experts) = opt_u("expert_count")?.filter(|&n| n > 0) {
        return Err(Error::Config(format!(
            "{arch}.expert_count = {experts}: mixture-of-experts layers are not supported"
        )));
    }
    let hidden_size = u("embedding_length")?;
    let num_heads = u("attention.head_count")?;
    if num_heads == 0 || !hidden_size.is_multiple_of(num_heads) {
        return Err(Error::Config(format!(
            "embedding_length {hidden_size} is not a multiple of head_count {num_heads}"
        )));
    }
    let num_kv_heads = opt_u("attention.head_count_kv")?.unwrap_or(num_heads);
    if num_kv_heads == 0 || !num_heads.is_multiple_of(num_kv_heads) {
        return Err(Error::Config(format!(
            "head_count {num_heads} is not a multiple of head_count_kv {num_kv_heads}"
        )));
    }
    let head_dim = opt_u("attention.key_length")?.unwrap_or(hidden_size / num_heads);
    if let Some(v) = opt_u("attention.value_length")?.filter(|&v| v != head_dim) {
        return Err(Error::Config(format!(
            "attention.value_length {v} differs from key_length {head_dim}: not supported"
        )));
    }
    let rope = rope_settings(md, arch, head_dim, rope_freqs)?;
    Ok(LlamaConfig {
        vocab_size,
        hidden_size,
        intermediate_size: u("feed_forward_length")?,
        num_layers: u("block_count")?,
        num_heads,
        num_kv_heads,
        head_dim,
        rope_theta: rope.theta,
        rms_eps: md.get_f32(&key("attention.layer_norm_rms_epsilon"))?,
        max_position: u("context_length")?,
        rope_interleaved: Family::from_arch(arch)? == Family::Llama,
        rope_freq_divisors: rope.divisors,
        tied_embeddings: false,
    })
}

struct Loader<'a> {
    file: &'a GgufFile,
    types: BTreeSet<String>,
    /// Every tensor read so far, by file name.
    used: BTreeMap<String, SourceTensor>,
}

impl Loader<'_> {
    fn record(&mut self, info: &collm_gguf::TensorInfo) {
        self.used.insert(
            info.name.clone(),
            SourceTensor {
                name: info.name.clone(),
                ty: info.ty.name(),
                bytes: info.nbytes.unwrap_or_default(),
            },
        );
    }
}

impl TensorSource for Loader<'_> {
    fn matrix(&mut self, name: &str, rows: usize, cols: usize) -> Result<Weight> {
        let info = self.file.require_tensor(name).map_err(|_| Error::MissingTensor(name.into()))?;
        let (r, c) = matrix_shape(name, &info.dims)?;
        let w = weight_from_gguf(name, info.ty, r, c, self.file.tensor_bytes(info)?)?;
        check_matrix(name, &w, rows, cols)?;
        self.types.insert(info.ty.name());
        self.record(info);
        Ok(w)
    }

    fn vector(&mut self, name: &str, len: usize) -> Result<Vec<f32>> {
        let v = self.file.dequantize(name).map_err(|e| match e {
            collm_gguf::Error::MissingTensor(n) => Error::MissingTensor(n),
            other => other.into(),
        })?;
        check_vector(name, &v, len)?;
        if let Some(info) = self.file.tensor(name) {
            self.record(info);
        }
        Ok(v)
    }
}

fn tensor_name(i: usize, role: Role) -> String {
    let t = match role {
        Role::AttnNorm => "attn_norm.weight",
        Role::Q => "attn_q.weight",
        Role::K => "attn_k.weight",
        Role::V => "attn_v.weight",
        Role::O => "attn_output.weight",
        Role::FfnNorm => "ffn_norm.weight",
        Role::Gate => "ffn_gate.weight",
        Role::Up => "ffn_up.weight",
        Role::Down => "ffn_down.weight",
        Role::QBias => "attn_q.bias",
        Role::KBias => "attn_k.bias",
        Role::VBias => "attn_v.bias",
    };
    format!("blk.{i}.{t}")
}

impl Checkpoint {
    /// Loads a Llama-family GGUF file (architecture `llama` or `qwen2`) losslessly. Every
    /// tensor of the file must be used: one the graph has no place for (an output bias, a
    /// per-layer norm of another architecture) is refused by name rather than dropped.
    pub fn from_gguf(path: &Path) -> Result<Checkpoint> {
        let file = GgufFile::open(path)?;
        let md = file.metadata();
        let arch = md.get_str("general.architecture")?;
        let family = Family::from_arch(arch)?;
        let tok = tokenizer_from_gguf(md)?;
        let rope_freqs = match file.tensor("rope_freqs.weight") {
            Some(_) => Some(file.dequantize("rope_freqs.weight")?),
            None => None,
        };
        let mut config = config_from_gguf(md, arch, tok.vocab_size, rope_freqs)?;
        let c = config.clone();

        let qkv_bias = match family {
            Family::Qwen2 => true,
            Family::Llama => file.tensor(&tensor_name(0, Role::QBias)).is_some(),
        };
        let mut ld = Loader { file: &file, types: BTreeSet::new(), used: BTreeMap::new() };
        let embedding = ld.matrix("token_embd.weight", c.vocab_size, c.hidden_size)?;
        let layers = assemble::layers(&mut ld, &c, qkv_bias, tensor_name)?;
        let final_norm = ld.vector("output_norm.weight", c.hidden_size)?;
        let lm_head = if file.tensor("output.weight").is_some() {
            ld.matrix("output.weight", c.vocab_size, c.hidden_size)?
        } else {
            config.tied_embeddings = true;
            embedding.clone()
        };
        if let Some(info) = file.tensor("rope_freqs.weight") {
            ld.record(info);
        }
        if let Some(extra) = file.tensors().iter().find(|t| !ld.used.contains_key(&t.name)) {
            return Err(Error::tensor(
                &extra.name,
                format!(
                    "the {arch} graph has no place for this tensor (a variant of the architecture that is not supported)"
                ),
            ));
        }

        let mut sources: BTreeMap<String, SourceTensor> =
            assemble::matrix_keys(c.num_layers, tensor_name)
                .into_iter()
                .filter_map(|(key, name)| Some((key, ld.used.get(&name)?.clone())))
                .collect();
        if let Some(s) = ld.used.get("token_embd.weight") {
            sources.insert("embedding".into(), s.clone());
        }
        let head = if config.tied_embeddings { "token_embd.weight" } else { "output.weight" };
        if let Some(s) = ld.used.get(head) {
            sources.insert("lm_head".into(), s.clone());
        }

        let file_name = path
            .file_name()
            .map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().into_owned());
        let types: Vec<String> = ld.types.into_iter().collect();
        Ok(Checkpoint {
            config,
            embedding,
            layers,
            final_norm,
            lm_head,
            tokenizer_json: tok.tokenizer_json,
            special_tokens: tok.special_tokens,
            chat_template: tok.chat_template,
            source: format!("gguf:{file_name} ({})", types.join("+")),
            sources,
        })
    }
}
