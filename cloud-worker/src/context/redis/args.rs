//! The worker's Redis flags, and the choice between the Redis and the in-memory store.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::{KeySpace, RedisConfig, RedisStore};
use crate::Error;
use crate::context::{ContextStore, InMemoryStore, StoreLimits};

#[derive(Debug, Clone, clap::Args)]
pub struct RedisArgs {
    /// Keep the cloud context in Redis (shared by every replica): `redis://[user:pass@]host:port[/db]`,
    /// `rediss://` for TLS. Repeat or separate with commas to give Redis Cluster seed nodes.
    /// Without it, the context lives in this process's memory.
    #[arg(
        long = "redis-url",
        env = "COLLM_REDIS_URL",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub urls: Vec<String>,
    /// Treat a single --redis-url as a Redis Cluster seed node.
    #[arg(long = "redis-cluster", env = "COLLM_REDIS_CLUSTER")]
    pub cluster: bool,
    /// Start of every key this worker writes (the operator uses `collm:<namespace>:<model>:`).
    #[arg(long = "redis-key-prefix", env = "COLLM_REDIS_KEY_PREFIX", default_value = KeySpace::DEFAULT_PREFIX)]
    pub key_prefix: String,
    /// PEM CA certificate to trust for `rediss://` (default: the system's roots).
    #[arg(long = "redis-ca-cert", env = "COLLM_REDIS_CA_CERT")]
    pub ca_cert: Option<PathBuf>,
    /// PEM client certificate, for a Redis that requires TLS client authentication.
    #[arg(long = "redis-client-cert", env = "COLLM_REDIS_CLIENT_CERT", requires = "client_key")]
    pub client_cert: Option<PathBuf>,
    /// PEM key of --redis-client-cert.
    #[arg(long = "redis-client-key", env = "COLLM_REDIS_CLIENT_KEY", requires = "client_cert")]
    pub client_key: Option<PathBuf>,
    /// Milliseconds one context operation may take before the request fails as UNAVAILABLE.
    #[arg(long = "redis-timeout-ms", env = "COLLM_REDIS_TIMEOUT_MS", default_value_t = 3000)]
    pub timeout_ms: u64,
}

impl RedisArgs {
    /// The Redis configuration, `None` for the in-memory store.
    pub fn config(&self) -> Option<RedisConfig> {
        let urls: Vec<String> =
            self.urls.iter().map(|u| u.trim().to_owned()).filter(|u| !u.is_empty()).collect();
        if urls.is_empty() {
            return None;
        }
        Some(RedisConfig {
            urls,
            cluster: self.cluster,
            key_prefix: self.key_prefix.clone(),
            ca_cert: self.ca_cert.clone(),
            client_cert: self.client_cert.clone().zip(self.client_key.clone()),
            timeout: Duration::from_millis(self.timeout_ms.max(1)),
        })
    }

    /// The store these flags select. With Redis, checks it once: refused credentials and bad
    /// settings stop the worker; an unreachable Redis only warns (requests fail as UNAVAILABLE
    /// until it is back), so workers may start before their Redis does.
    pub fn open_store(&self, limits: StoreLimits) -> anyhow::Result<Arc<dyn ContextStore>> {
        let Some(config) = self.config() else {
            return Ok(Arc::new(InMemoryStore::new(limits)));
        };
        let store = RedisStore::new(&config, limits)?;
        // A store of its own on a runtime of its own: the worker's store must not keep a
        // connection whose driver task ends with this runtime.
        let probe = RedisStore::new(&config, limits)?;
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        match rt.block_on(probe.ping()) {
            Ok(()) => {}
            Err(Error::StoreUnavailable(why)) => {
                tracing::warn!("{why}; serving anyway, context requests fail until it is back");
            }
            Err(e) => return Err(e.into()),
        }
        Ok(Arc::new(store))
    }
}
