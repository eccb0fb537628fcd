//! `cloud.json`, the runtime configuration the operator mounts at `/etc/collm/cloud.json`, read
//! with `--config` so that a pod needs no other flag. The fields mirror the operator's
//! `CloudRuntimeConfig` (format 1); unknown fields are ignored so that a newer operator can add
//! some, and every field is optional here because a flag may give it instead (flags win).

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::clients::Clients;

/// The layout version this worker reads.
pub const CONFIG_FORMAT: u32 = 1;

/// Client id given to the single token of a bare token file (the operator's edge-token Secret
/// holds one token shared by every edge of a model).
pub const SHARED_EDGE_CLIENT: &str = "edge";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{what} {}: {reason}", path.display())]
    File { what: String, path: PathBuf, reason: String },

    #[error("config file {}: {reason}", path.display())]
    Invalid { path: PathBuf, reason: String },

    #[error(
        "config file {}: format {found} is not understood by this worker (it reads format {CONFIG_FORMAT}); upgrade the worker",
        path.display()
    )]
    UnsupportedFormat { path: PathBuf, found: u32 },

    #[error("{0}")]
    Missing(String),

    #[error(
        "config context.redis_url_env names the environment variable {0}, which is not set or empty"
    )]
    RedisUrlEnv(String),

    #[error(
        "config split_layer {config} does not match the bundle, which is split after layer {bundle}"
    )]
    SplitMismatch { config: u32, bundle: usize },
}

/// How positions the cloud has not processed are caught up (the operator's `catchUp`).
pub use collm_runtime::CatchUp;

#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
pub struct BundleConfig {
    /// Directory holding manifest.json and the partitions.
    pub dir: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
pub struct ContextConfig {
    /// A literal Redis URL (also the managed Redis's).
    pub redis_url: Option<String>,
    /// The environment variable holding the Redis URL (taken from a Secret).
    pub redis_url_env: Option<String>,
    /// Start of every Redis key of this model.
    pub key_prefix: Option<String>,
    pub ttl_seconds: Option<u64>,
    pub max_positions_per_session: Option<u64>,
    pub max_sessions_per_client: Option<usize>,
}

impl ContextConfig {
    /// The Redis URL the configuration names, directly or through an environment variable;
    /// `None` when it names none (the in-memory store).
    pub fn redis_url(&self) -> Result<Option<String>, ConfigError> {
        if let Some(url) = self.redis_url.as_ref().filter(|u| !u.trim().is_empty()) {
            return Ok(Some(url.trim().to_owned()));
        }
        match &self.redis_url_env {
            None => Ok(None),
            Some(var) => match std::env::var(var) {
                Ok(url) if !url.trim().is_empty() => Ok(Some(url.trim().to_owned())),
                _ => Err(ConfigError::RedisUrlEnv(var.clone())),
            },
        }
    }
}

/// Which ServiceAccount tokens are edges of this model.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct TokenReviewConfig {
    /// The audience edge tokens are issued for.
    pub audience: String,
    /// Kubernetes users (`system:serviceaccount:NS:NAME`) whose tokens are accepted.
    pub users: Vec<String>,
}

/// What a worker reads from `cloud.json`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
pub struct CloudConfig {
    pub format: u32,
    /// The CollabModel's name (for logs).
    pub model: Option<String>,
    #[serde(default)]
    pub bundle: BundleConfig,
    /// Checked against the bundle's split so a pod never serves another split than configured.
    pub split_layer: Option<u32>,
    /// gRPC port, served on every interface.
    pub grpc_port: Option<u16>,
    /// Port of `/healthz`, `/readyz` and `/metrics`, on every interface (off when absent).
    pub http_port: Option<u16>,
    #[serde(default)]
    pub catch_up: CatchUp,
    pub context: Option<ContextConfig>,
    /// The edge token (one bare token) or a tokens file (`client-id token` lines).
    pub edge_token_file: Option<PathBuf>,
    /// Edges' ServiceAccount tokens, checked with the Kubernetes TokenReview API.
    pub token_review: Option<TokenReviewConfig>,
    /// Clients refused whatever token they present.
    #[serde(default)]
    pub revoked_clients: Vec<String>,
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
    /// CA of the client certificates to require (mutual TLS).
    pub tls_client_ca_file: Option<PathBuf>,
}

impl CloudConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::File {
            what: "cannot read config file".into(),
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        Self::parse(&text, path)
    }

    /// Parses the text of the file at `path` (named in errors).
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let config: Self = serde_json::from_str(text)
            .map_err(|e| ConfigError::Invalid { path: path.to_owned(), reason: e.to_string() })?;
        if config.format != CONFIG_FORMAT {
            return Err(ConfigError::UnsupportedFormat {
                path: path.to_owned(),
                found: config.format,
            });
        }
        Ok(config)
    }

    /// Fails when the configured split is not the bundle's.
    pub fn check_split(&self, bundle_split: usize) -> Result<(), ConfigError> {
        match self.split_layer {
            Some(s) if s as usize != bundle_split => {
                Err(ConfigError::SplitMismatch { config: s, bundle: bundle_split })
            }
            _ => Ok(()),
        }
    }
}

/// The clients a token file allows: a tokens file of `client-id token` lines, or a file holding
/// one bare token (a Kubernetes Secret's value), which then identifies the client
/// [`SHARED_EDGE_CLIENT`].
pub fn load_clients(path: &Path) -> Result<Clients, ConfigError> {
    let failed = |reason: String| ConfigError::File {
        what: "tokens file".into(),
        path: path.to_owned(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| failed(e.to_string()))?;
    let lines: Vec<&str> =
        text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).collect();
    match lines.as_slice() {
        [token] if !token.contains(char::is_whitespace) => {
            Clients::parse(&format!("{SHARED_EDGE_CLIENT} {token}")).map_err(failed)
        }
        _ => Clients::parse(&text).map_err(failed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the operator renders for a model with managed Redis, an edge token and TLS.
    const OPERATOR_CLOUD_JSON: &str = r#"{
      "format": 1,
      "model": "smollm2",
      "bundle": { "dir": "/var/lib/collm/bundle",
                  "download": { "url": "https://models.example/b.tar", "sha256": "ab" } },
      "split_layer": 24,
      "grpc_port": 50051,
      "catch_up": "exact",
      "context": {
        "redis_url": "redis://smollm2-redis.ml.svc:6379",
        "key_prefix": "collm:ml:smollm2:",
        "ttl_seconds": 600,
        "max_positions_per_session": 2048,
        "max_sessions_per_client": 32
      },
      "edge_token_file": "/var/run/secrets/collm/edge-token/token",
      "tls_cert_file": "/var/run/secrets/collm/tls/tls.crt",
      "tls_key_file": "/var/run/secrets/collm/tls/tls.key",
      "a_field_from_a_newer_operator": { "anything": true }
    }"#;

    #[test]
    fn the_operators_cloud_json_is_read_field_by_field() -> anyhow::Result<()> {
        let c = CloudConfig::parse(OPERATOR_CLOUD_JSON, Path::new("cloud.json"))?;
        assert_eq!(c.bundle.dir.as_deref(), Some(Path::new("/var/lib/collm/bundle")));
        assert_eq!((c.split_layer, c.grpc_port, c.http_port), (Some(24), Some(50051), None));
        assert_eq!(c.catch_up, CatchUp::Exact);
        let ctx = c.context.clone().expect("context");
        assert_eq!(ctx.redis_url()?.as_deref(), Some("redis://smollm2-redis.ml.svc:6379"));
        assert_eq!(ctx.key_prefix.as_deref(), Some("collm:ml:smollm2:"));
        assert_eq!(
            (ctx.ttl_seconds, ctx.max_positions_per_session, ctx.max_sessions_per_client),
            (Some(600), Some(2048), Some(32))
        );
        assert_eq!(
            c.tls_key_file.as_deref(),
            Some(Path::new("/var/run/secrets/collm/tls/tls.key"))
        );
        assert!(c.check_split(24).is_ok());
        let err = c.check_split(20).expect_err("other split").to_string();
        assert!(err.contains("24") && err.contains("20"), "{err}");
        Ok(())
    }

    #[test]
    fn token_review_and_revocations_are_read() -> anyhow::Result<()> {
        let c = CloudConfig::parse(
            r#"{"format":1,"token_review":{"audience":"collm.dev/ns/m","users":["system:serviceaccount:ns:m-edge"]},
                "revoked_clients":["node/edge-3"],"tls_client_ca_file":"/ca.crt"}"#,
            Path::new("cloud.json"),
        )?;
        let review = c.token_review.expect("token review");
        assert_eq!(review.audience, "collm.dev/ns/m");
        assert_eq!(review.users, ["system:serviceaccount:ns:m-edge"]);
        assert_eq!(c.revoked_clients, ["node/edge-3"]);
        assert_eq!(c.tls_client_ca_file.as_deref(), Some(Path::new("/ca.crt")));
        Ok(())
    }

    #[test]
    fn a_minimal_config_leaves_everything_to_flags_and_defaults() -> anyhow::Result<()> {
        let c = CloudConfig::parse(r#"{"format":1}"#, Path::new("c.json"))?;
        assert_eq!(c, CloudConfig { format: 1, ..CloudConfig::default() });
        Ok(())
    }

    #[test]
    fn bad_files_say_what_is_wrong_and_where() {
        let err = |text: &str| CloudConfig::parse(text, Path::new("/etc/collm/cloud.json"));
        let e = err("{ not json").expect_err("syntax").to_string();
        assert!(e.contains("/etc/collm/cloud.json") && e.contains("line 1"), "{e}");
        let e = err(r#"{"format":1,"grpc_port":"fifty"}"#).expect_err("type").to_string();
        assert!(e.contains("invalid type"), "{e}");
        let e = err(r#"{"format":2}"#).expect_err("format").to_string();
        assert!(e.contains("format 2"), "{e}");
        let e = err(r#"{"grpc_port":1}"#).expect_err("no format").to_string();
        assert!(e.contains("missing field `format`"), "{e}");
        let e = err(r#"{"format":1,"catch_up":"sometimes"}"#).expect_err("catch_up").to_string();
        assert!(e.contains("sometimes"), "{e}");
        let e = CloudConfig::load(Path::new("/nonexistent/cloud.json")).expect_err("no file");
        assert!(e.to_string().contains("cannot read config file /nonexistent/cloud.json"), "{e}");
    }

    #[test]
    fn the_redis_url_may_come_from_the_environment_variable_the_config_names() {
        let ctx = ContextConfig {
            redis_url_env: Some("COLLM_TEST_CONFIG_REDIS_URL_UNSET".into()),
            ..ContextConfig::default()
        };
        let e = ctx.redis_url().expect_err("unset").to_string();
        assert!(e.contains("COLLM_TEST_CONFIG_REDIS_URL_UNSET"), "{e}");
        // PATH is set in every test environment: any set variable is read as the URL.
        let ctx = ContextConfig { redis_url_env: Some("PATH".into()), ..ContextConfig::default() };
        assert!(ctx.redis_url().expect("set").is_some());
        assert_eq!(ContextConfig::default().redis_url().expect("none"), None);
    }

    #[test]
    fn a_bare_token_file_names_the_shared_edge_client() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let bare = dir.path().join("token");
        std::fs::write(&bare, "s3cret-token\n")?;
        let mut md = tonic::metadata::MetadataMap::new();
        collm_protocol::BearerToken::new("s3cret-token")?.insert_into(&mut md);
        assert_eq!(load_clients(&bare)?.authenticate(&md)?.as_str(), SHARED_EDGE_CLIENT);
        let lines = dir.path().join("tokens");
        std::fs::write(&lines, "# edges\nedge-a s3cret-token\n")?;
        assert_eq!(load_clients(&lines)?.authenticate(&md)?.as_str(), "edge-a");
        let e = load_clients(&dir.path().join("absent")).expect_err("absent").to_string();
        assert!(e.contains("tokens file") && e.contains("absent"), "{e}");
        Ok(())
    }
}
