//! Reading and writing GGUF v2/v3 files: header, metadata, tensor table, and the F32/F16/
//! Q4_0/Q4_1/Q8_0 block codecs.

// Tests unwrap freely: a panic there is a failed assertion, not a crash on a user path.
#![cfg_attr(test, allow(clippy::unwrap_used))]

mod error;
mod file;
mod parse;
mod quant;
mod types;
mod value;
mod writer;

#[cfg(test)]
mod tests;

pub use error::{Error, Result};
pub use file::GgufFile;
pub use parse::{DEFAULT_ALIGNMENT, Header, TensorInfo, parse_header};
pub use quant::{dequantize, quantize, unpack_nibbles};
pub use types::{GgmlType, QK};
pub use value::{Metadata, Value, ValueType};
pub use writer::GgufWriter;
