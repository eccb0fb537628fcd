//! The crate's one error type.

/// What can go wrong while rendering children or generating the CRD.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The object lacks metadata the API server always sets (name, namespace, uid); only
    /// happens for objects built in code and never stored.
    #[error("CollabModel is missing metadata.{0}")]
    MissingMetadata(&'static str),

    /// The spec breaks a rule the CRD schema normally enforces (e.g. a CRD applied without its
    /// validation rules).
    #[error("invalid CollabModel spec: {0}")]
    InvalidSpec(String),

    #[error("serializing {what}: {source}")]
    Json { what: &'static str, source: serde_json::Error },

    #[error("serializing the CRD to YAML: {0}")]
    Yaml(#[from] serde_yaml::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
