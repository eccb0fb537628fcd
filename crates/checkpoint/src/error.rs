use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Gguf(#[from] collm_gguf::Error),
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: invalid JSON: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("unsupported architecture {0:?} (supported: llama, qwen2)")]
    UnsupportedArchitecture(String),
    #[error("unsupported tokenizer: {0}")]
    UnsupportedTokenizer(String),
    #[error("invalid model configuration: {0}")]
    Config(String),
    #[error("tensor {name}: {msg}")]
    Tensor { name: String, msg: String },
    #[error("checkpoint has no tensor named {0}")]
    MissingTensor(String),
    #[error("{path}: malformed safetensors file: {msg}")]
    Safetensors { path: PathBuf, msg: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn tensor(name: &str, msg: impl Into<String>) -> Self {
        Self::Tensor { name: name.to_string(), msg: msg.into() }
    }
}
