use std::path::PathBuf;

/// Everything that can go wrong reading or writing a GGUF file. Each message is one line that
/// names the offending key, tensor or byte range.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write GGUF: {0}")]
    Write(#[source] std::io::Error),
    #[error("not a GGUF file (magic {0})")]
    BadMagic(String),
    #[error("unsupported GGUF version {0} (only 2 and 3 are supported)")]
    UnsupportedVersion(u32),
    #[error("malformed GGUF file: {0}")]
    Malformed(String),
    #[error("truncated GGUF file: {what} needs bytes {start}..{end} but the file has {len}")]
    Truncated { what: String, start: u64, end: u64, len: u64 },
    #[error("GGUF metadata key {0} is missing")]
    MissingKey(String),
    #[error("GGUF metadata key {key} is {found}, expected {expected}")]
    WrongType { key: String, expected: &'static str, found: String },
    #[error("GGUF has no tensor named {0}")]
    MissingTensor(String),
    #[error("unsupported tensor type {ty} for {tensor}")]
    UnsupportedType { ty: String, tensor: String },
    #[error("tensor {tensor}: {msg}")]
    BadTensor { tensor: String, msg: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
