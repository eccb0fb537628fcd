//! The crate's one error type.

/// What can go wrong while rendering, applying or cleaning up after a CollabModel.
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

    /// A Kubernetes API call failed.
    #[error("{action}: {source}")]
    Kube { action: String, source: kube::Error },

    /// Redis could not be reached or refused a command.
    #[error("Redis at {url}: {source}")]
    Redis { url: String, source: redis::RedisError },

    /// The Secret named by context.redis.secretRef is missing or lacks the key.
    #[error("Redis URL Secret {name}/{key}: {problem}")]
    RedisSecret { name: String, key: String, problem: String },

    /// The Secret named by context.redis.secretRef does not exist (any more).
    #[error("Redis URL Secret {0} does not exist")]
    RedisSecretMissing(String),

    /// A Secret the operator generates cannot be made or read.
    #[error("generated Secret: {0}")]
    GeneratedSecret(String),

    /// The finalizer helper failed around our cleanup.
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
}

impl Error {
    /// A short, stable label for metrics and event reasons.
    pub fn label(&self) -> &'static str {
        match self {
            Error::MissingMetadata(_) => "missing_metadata",
            Error::InvalidSpec(_) => "invalid_spec",
            Error::Json { .. } | Error::Yaml(_) => "serialize",
            Error::Kube { .. } => "kube_api",
            Error::Redis { .. } => "redis",
            Error::RedisSecret { .. } | Error::RedisSecretMissing(_) => "redis_secret",
            Error::GeneratedSecret(_) => "generated_secret",
            Error::Finalizer(_) => "finalizer",
        }
    }

    pub fn kube(action: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
        let action = action.into();
        move |source| Error::Kube { action, source }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
