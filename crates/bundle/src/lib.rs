//! The model bundle: `manifest.json`, `edge.onnx`, `cloud.onnx`, `cloud_kv.onnx` (each with its
//! weights in a `.data` file next to it), `tokenizer.json`.
//! [`export()`] writes one from a checkpoint; [`Bundle::open`] verifies one before use.

pub mod archive;
pub mod calibration;
mod export;
pub mod graph;
pub mod manifest;
mod partition_file;
/// The ONNX model type partitions are stored as.
pub mod onnx {
    pub use collm_onnx::{ModelProto as Model, decode, encode};
}
mod verify;
pub mod weight_report;

use std::path::{Path, PathBuf};

pub use archive::{Packed, UnpackLimits, pack, unpack};
pub use export::{Conversion, ExportPlan, convert_weights, export, write_manifest};
pub use graph::GraphOptions;
pub use manifest::{Manifest, WeightFormat};
pub use partition_file::{data_file_name, read_partition, write_partition};
pub use verify::{Bundle, Parts, read_manifest, sha256_file};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("invalid export plan: {0}")]
    Plan(String),
    #[error("invalid bundle manifest: {0}")]
    Manifest(String),
    #[error("bundle file {path} is missing")]
    MissingFile { path: PathBuf },
    #[error("bundle archive: {0}")]
    Archive(String),
    #[error("bundle archive entry {entry:?} refused: {reason}")]
    UnsafeEntry { entry: String, reason: String },
    #[error(
        "bundle file {path} does not match its manifest (sha256 {actual}, expected {expected}): the bundle is corrupt or was modified"
    )]
    Checksum { path: PathBuf, expected: String, actual: String },
}

impl Error {
    fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io { path: path.to_path_buf(), source }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
