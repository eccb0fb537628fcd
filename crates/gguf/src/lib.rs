//! Reading and writing GGUF v2/v3 files: header, metadata, tensor table, and the codecs of the
//! tensor types llama.cpp's quantizer writes for Llama-family models (F32, F16, BF16, Q4_0,
//! Q4_1, Q5_0, Q5_1, Q8_0, IQ4_NL and the K-quants Q2_K … Q6_K).

// Tests unwrap freely: a panic there is a failed assertion, not a crash on a user path.
#![cfg_attr(test, allow(clippy::unwrap_used))]

mod blocks;
mod error;
mod file;
mod kquant;
mod legacy;
mod parse;
mod quant;
mod types;
mod value;
mod writer;

#[cfg(test)]
mod tests;

pub use blocks::{AffineBlocks, BlockOffset};
pub use error::{Error, Result};
pub use file::GgufFile;
pub use legacy::{IQ4_NL_VALUES, unpack_nibbles};
pub use parse::{DEFAULT_ALIGNMENT, Header, TensorInfo, parse_header};
pub use quant::{decode_blocks, dequantize, quantize};
pub use types::{GgmlType, QK, QK_K};
pub use value::{Metadata, Value, ValueType};
pub use writer::GgufWriter;
