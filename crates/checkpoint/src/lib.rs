//! The format-independent Llama checkpoint (config, weights, tokenizer) and its loaders from
//! GGUF and Hugging Face directories, plus a tiny seeded random model for tests.

// Tests unwrap freely: a panic there is a failed assertion, not a crash on a user path.
#![cfg_attr(test, allow(clippy::unwrap_used))]

mod assemble;
mod convert;
mod error;
mod gguf_load;
mod gguf_tokenizer;
mod hf_load;
mod model;
pub mod rope_layout;
mod rope_settings;
mod safetensors;
mod shapes;
mod spm_tokenizer;
pub mod tiny;
mod weight;

pub use convert::weight_from_gguf;
pub use error::{Error, Result};
pub use gguf_tokenizer::{GgufTokenizer, tokenizer_from_gguf};
pub use model::{
    Checkpoint, LayerWeights, LlamaConfig, QkvBias, SourceTensor, SpecialTokens, Weight,
};
pub use rope_layout::{from_interleaved_rope, interleaved_rope_row_order, to_interleaved_rope};
pub use safetensors::{DenseTensor, write_safetensors};
