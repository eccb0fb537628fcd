//! The split runtime: edge and cloud partitions on ONNX Runtime, KV caches, text in and out,
//! sampling, the early-exit decision and the edge→cloud transport seam.

pub mod adjust;
pub mod catch_up;
pub mod cloud_layers;
pub mod codec;
pub mod cpu_limit;
pub mod decoder;
pub mod draw;
pub mod exit;
mod exp_sum;
pub mod features;
pub mod generate;
pub mod kernels;
mod mask;
pub mod memory;
pub mod ort_env;
pub mod partition;
pub mod repetition;
pub mod sampling;
pub mod score;
pub mod speculate;
pub mod split;
pub mod text;
pub mod token_bytes;
pub mod transport;

pub use catch_up::{CatchUp, EdgeAnswered};
pub use cloud_layers::CloudLayers;
pub use codec::Encoding;
pub use exit::{ExitPolicy, OperatingPoint, RepetitionGuard};
pub use generate::{GenerateOptions, Generation, Mode, Origin, TokenEvent, generate};
pub use sampling::SamplingParams;
pub use split::SplitModel;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Bundle(#[from] collm_bundle::Error),
    #[error("ONNX Runtime: {0}")]
    Runtime(String),
    #[error("{0}")]
    Invalid(String),
    #[error("the sequence needs {needed} positions but the model's context is {context}")]
    ContextFull { needed: usize, context: usize },
    #[error(transparent)]
    Codec(#[from] collm_codec::CodecError),
    #[error("unknown session {0}")]
    UnknownSession(u64),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
