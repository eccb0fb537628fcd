//! `Checkpoint::from_gguf`: a llama.cpp GGUF file into a checkpoint.

use std::collections::BTreeSet;
use std::path::Path;

use collm_gguf::{GgufFile, Metadata};

use crate::assemble::{self, Role, TensorSource};
use crate::convert::{matrix_shape, weight_from_gguf};
use crate::error::{Error, Result};
use crate::gguf_tokenizer::tokenizer_from_gguf;
use crate::model::{Checkpoint, LlamaConfig, Weight};
use crate::shapes::{check_matrix, check_vector};

fn config_from_gguf(md: &Metadata, vocab_size: usize) -> Result<LlamaConfig> {
    let arch = md.get_str("general.architecture")?;
    if arch != "llama" {
        return Err(Error::UnsupportedArchitecture(arch.to_string()));
    }
    let u = |k: &str| -> Result<usize> { Ok(md.get_u32(&format!("llama.{k}"))? as usize) };
    let hidden_size = u("embedding_length")?;
    let num_heads = u("attention.head_count")?;
    if num_heads == 0 || !hidden_size.is_multiple_of(num_heads) {
        return Err(Error::Config(format!(
            "embedding_length {hidden_size} is not a multiple of head_count {num_heads}"
        )));
    }
    let num_kv_heads = match md.opt("llama.attention.head_count_kv", Metadata::get_u32)? {
        Some(n) => n as usize,
        None => num_heads,
    };
    if num_kv_heads == 0 || !num_heads.is_multiple_of(num_kv_heads) {
        return Err(Error::Config(format!(
            "head_count {num_heads} is not a multiple of head_count_kv {num_kv_heads}"
        )));
    }
    let head_dim = match md.opt("llama.attention.key_length", Metadata::get_u32)? {
        Some(n) => n as usize,
        None => hidden_size / num_heads,
    };
    Ok(LlamaConfig {
        vocab_size,
        hidden_size,
        intermediate_size: u("feed_forward_length")?,
        num_layers: u("block_count")?,
        num_heads,
        num_kv_heads,
        head_dim,
        rope_theta: md.opt("llama.rope.freq_base", Metadata::get_f32)?.unwrap_or(10000.0),
        rms_eps: md.get_f32("llama.attention.layer_norm_rms_epsilon")?,
        max_position: u("context_length")?,
        rope_interleaved: true,
        tied_embeddings: false,
    })
}

struct Loader<'a> {
    file: &'a GgufFile,
    types: BTreeSet<String>,
}

impl TensorSource for Loader<'_> {
    fn matrix(&mut self, name: &str, rows: usize, cols: usize) -> Result<Weight> {
        let info = self.file.require_tensor(name).map_err(|_| Error::MissingTensor(name.into()))?;
        let (r, c) = matrix_shape(name, &info.dims)?;
        let w = weight_from_gguf(name, info.ty, r, c, self.file.tensor_bytes(info)?)?;
        check_matrix(name, &w, rows, cols)?;
        self.types.insert(info.ty.name());
        Ok(w)
    }

    fn vector(&mut self, name: &str, len: usize) -> Result<Vec<f32>> {
        let v = self.file.dequantize(name).map_err(|e| match e {
            collm_gguf::Error::MissingTensor(n) => Error::MissingTensor(n),
            other => other.into(),
        })?;
        check_vector(name, &v, len)?;
        Ok(v)
    }
}

impl Checkpoint {
    /// Loads a llama-architecture GGUF file (F32/F16/Q8_0/Q4_0/Q4_1 tensors) losslessly.
    pub fn from_gguf(path: &Path) -> Result<Checkpoint> {
        let file = GgufFile::open(path)?;
        let md = file.metadata();
        let tok = tokenizer_from_gguf(md)?;
        let mut config = config_from_gguf(md, tok.vocab_size)?;
        let c = config.clone();

        let mut ld = Loader { file: &file, types: BTreeSet::new() };
        let embedding = ld.matrix("token_embd.weight", c.vocab_size, c.hidden_size)?;
        let layers = assemble::layers(&mut ld, &c, |i, role| {
            let t = match role {
                Role::AttnNorm => "attn_norm",
                Role::Q => "attn_q",
                Role::K => "attn_k",
                Role::V => "attn_v",
                Role::O => "attn_output",
                Role::FfnNorm => "ffn_norm",
                Role::Gate => "ffn_gate",
                Role::Up => "ffn_up",
                Role::Down => "ffn_down",
            };
            format!("blk.{i}.{t}.weight")
        })?;
        let final_norm = ld.vector("output_norm.weight", c.hidden_size)?;
        let lm_head = if file.tensor("output.weight").is_some() {
            ld.matrix("output.weight", c.vocab_size, c.hidden_size)?
        } else {
            config.tied_embeddings = true;
            embedding.clone()
        };

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
        })
    }
}
