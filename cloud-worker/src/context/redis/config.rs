//! Where the store's Redis is, and the connection to it that those settings describe.

use std::path::PathBuf;
use std::time::Duration;

use redis::cluster::ClusterClientBuilder;
use redis::{AsyncConnectionConfig, TlsCertificates};

use super::keys::{KeySpace, redact_url};
use super::link::{Connector, Link};
use crate::{Error, Result};

/// Where the store's Redis is and how to reach it.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// `redis://[user:password@]host:port[/db]` or `rediss://…` for TLS. Several URLs (or
    /// `cluster`) select Redis Cluster, the URLs being its seed nodes.
    pub urls: Vec<String>,
    pub cluster: bool,
    /// Start of every key (see [`keys`]).
    pub key_prefix: String,
    /// PEM CA certificate to trust for `rediss://` instead of the system's roots.
    pub ca_cert: Option<PathBuf>,
    /// PEM client certificate and key, for a Redis that requires TLS client authentication.
    pub client_cert: Option<(PathBuf, PathBuf)>,
    /// The most one store operation may take, reconnecting included.
    pub timeout: Duration,
}

impl RedisConfig {
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(3);

    pub fn new(url: impl Into<String>) -> Self {
        Self {
            urls: vec![url.into()],
            cluster: false,
            key_prefix: KeySpace::DEFAULT_PREFIX.to_owned(),
            ca_cert: None,
            client_cert: None,
            timeout: Self::DEFAULT_TIMEOUT,
        }
    }
}

/// The link `config` describes; nothing is connected yet.
pub(super) fn link(config: &RedisConfig) -> Result<Link> {
    let Some(first) = config.urls.first() else {
        return Err(Error::Store("no Redis URL given".into()));
    };
    let target = if config.urls.len() > 1 || config.cluster {
        format!(
            "{} (cluster)",
            config.urls.iter().map(|u| redact_url(u)).collect::<Vec<_>>().join(",")
        )
    } else {
        redact_url(first)
    };
    let bad = |e: redis::RedisError| Error::Store(format!("Redis URL {target}: {e}"));
    let tls = config.urls.iter().any(|u| u.starts_with("rediss://"));
    let certs = if tls {
        // rustls needs one process-wide crypto provider; another part of the worker may
        // have installed one already, which is as good.
        let _ = rustls::crypto::ring::default_provider().install_default();
        Some(tls_certificates(config)?)
    } else {
        None
    };
    let connector = if config.urls.len() > 1 || config.cluster {
        let mut builder = ClusterClientBuilder::new(config.urls.clone())
            .connection_timeout(config.timeout)
            .response_timeout(config.timeout)
            .retries(1);
        if let Some(certs) = certs {
            builder = builder.certs(certs);
        }
        Connector::Cluster(builder.build().map_err(bad)?)
    } else {
        let client = match certs {
            Some(certs) => redis::Client::build_with_tls(first.as_str(), certs),
            None => redis::Client::open(first.as_str()),
        }
        .map_err(bad)?;
        let conn = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(config.timeout))
            .set_response_timeout(Some(config.timeout));
        Connector::Single(client, conn)
    };
    Ok(Link::new(connector, target, config.timeout))
}

fn tls_certificates(config: &RedisConfig) -> Result<TlsCertificates> {
    let read = |p: &PathBuf, what: &str| {
        std::fs::read(p).map_err(|e| {
            Error::Store(format!("cannot read the Redis TLS {what} {}: {e}", p.display()))
        })
    };
    let root_cert = config.ca_cert.as_ref().map(|p| read(p, "CA certificate")).transpose()?;
    let client_tls = match &config.client_cert {
        Some((cert, key)) => Some(redis::ClientTlsConfig {
            client_cert: read(cert, "client certificate")?,
            client_key: read(key, "client key")?,
        }),
        None => None,
    };
    Ok(TlsCertificates { client_tls, root_cert })
}
