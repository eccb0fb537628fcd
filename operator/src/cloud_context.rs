//! The model's cloud context in Redis: where it is (pure) and deleting it by key prefix (I/O).

use std::time::Duration;

use redis::AsyncConnectionConfig;

use crate::crd::{CollabModel, SecretKeyRef};
use crate::error::{Error, Result};
use crate::render::{ModelRef, Redis, context_key_prefix};

/// Keys deleted per UNLINK, and the SCAN page size hint.
const BATCH: usize = 500;

/// Where a model's cloud context lives, as the spec says.
#[derive(Clone, Debug, PartialEq)]
pub enum ContextLocation {
    /// No Redis configured: nothing is stored, nothing to clean.
    Nowhere,
    Url(String),
    /// The URL is a key of a Secret in the model's namespace.
    Secret(SecretKeyRef),
    /// The operator-run Redis, reached through its Service with the URL (and password) in the
    /// Secret the operator generated.
    Managed {
        secret: SecretKeyRef,
    },
}

impl ContextLocation {
    pub fn of(model: &CollabModel) -> Result<Self> {
        let at = ModelRef::of(model)?;
        let Some(spec) = model.spec.context.as_ref().and_then(|c| c.redis.as_ref()) else {
            return Ok(Self::Nowhere);
        };
        Ok(match Redis::try_from(spec)? {
            Redis::Url(url) => Self::Url(url),
            Redis::Secret(secret) => Self::Secret(secret),
            Redis::Managed => Self::Managed { secret: managed_secret(&at) },
        })
    }
}

/// Where the finalizer looks for the model's keys.
#[derive(Clone, Debug, PartialEq)]
pub enum CleanupSource {
    /// No Redis configured: nothing was ever stored.
    Nothing,
    /// Delete under the prefix at this URL.
    Url(String),
    /// Read the URL from this Secret first.
    Secret(SecretKeyRef),
    /// The managed Redis (URL in this Secret), if it still runs: it keeps no data on disk, so
    /// with no ready replica there is nothing left to delete.
    ManagedIfRunning(SecretKeyRef),
}

/// The operator's override (its own way to reach Redis) wins over whatever the spec says.
pub fn cleanup_source(location: ContextLocation, url_override: Option<&str>) -> CleanupSource {
    match (location, url_override) {
        (ContextLocation::Nowhere, _) => CleanupSource::Nothing,
        (_, Some(url)) => CleanupSource::Url(url.to_string()),
        (ContextLocation::Url(url), None) => CleanupSource::Url(url),
        (ContextLocation::Secret(secret), None) => CleanupSource::Secret(secret),
        (ContextLocation::Managed { secret }, None) => CleanupSource::ManagedIfRunning(secret),
    }
}

/// The key of the generated Secret holding the managed Redis's URL (the one cloud workers use).
pub fn managed_secret(at: &ModelRef) -> SecretKeyRef {
    SecretKeyRef {
        name: crate::render::redis::password_secret_name(at),
        key: crate::render::redis::URL_KEY.to_string(),
    }
}

/// The SCAN MATCH pattern of every key starting with `prefix`, glob characters escaped.
pub fn scan_pattern(prefix: &str) -> String {
    let mut pattern = String::with_capacity(prefix.len() + 1);
    for c in prefix.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('*');
    pattern
}

/// The key prefix of a stored model.
pub fn key_prefix(model: &CollabModel) -> Result<String> {
    Ok(context_key_prefix(&ModelRef::of(model)?))
}

/// The URL with any password replaced, for messages and events.
pub fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://***@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_string(),
    }
}

async fn connect(url: &str, timeout: Duration) -> Result<redis::aio::MultiplexedConnection> {
    let unreachable = |e: redis::RedisError| Error::Redis { url: redacted(url), source: e };
    let client = redis::Client::open(url).map_err(unreachable)?;
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout));
    client.get_multiplexed_async_connection_with_config(&config).await.map_err(unreachable)
}

/// Whether Redis at `url` answers PING within `timeout`.
#[tracing::instrument(skip_all, fields(url = %redacted(url)))]
pub async fn ping(url: &str, timeout: Duration) -> Result<()> {
    let mut con = connect(url, timeout).await?;
    redis::cmd("PING")
        .query_async::<String>(&mut con)
        .await
        .map(|_| ())
        .map_err(|e| Error::Redis { url: redacted(url), source: e })
}

/// The masters of a Redis Cluster, from `CLUSTER NODES`: each one's host (empty when the node
/// does not know its own address) and port. Failed and address-less nodes are left out.
pub fn cluster_masters(nodes: &str) -> Vec<(String, u16)> {
    nodes
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (_id, address, flags) = (fields.next()?, fields.next()?, fields.next()?);
            let flags: Vec<&str> = flags.split(',').collect();
            let usable = flags.contains(&"master")
                && !flags.iter().any(|f| matches!(*f, "fail" | "noaddr" | "handshake"));
            // `ip:port@cport[,hostname]`; the ip may be IPv6 (colons) or empty.
            let endpoint = address.split(['@', ',']).next()?;
            let (host, port) = endpoint.rsplit_once(':')?;
            usable.then(|| Some((host.to_string(), port.parse().ok()?))).flatten()
        })
        .collect()
}

/// `url` pointed at another node of the same deployment: scheme, credentials and options kept.
/// An empty `host` keeps the URL's own host.
pub fn node_url(url: &str, host: &str, port: u16) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.to_string();
    };
    let rest = &url[scheme_end..];
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let (credentials, old_host_port) = match authority.rfind('@') {
        Some(at) => (&authority[..=at], &authority[at + 1..]),
        None => ("", authority),
    };
    let host = if host.is_empty() {
        // The old host without its port (an IPv6 literal keeps its brackets).
        match old_host_port.rfind(':') {
            Some(i) if !old_host_port[i..].contains(']') => old_host_port[..i].to_string(),
            _ => old_host_port.to_string(),
        }
    } else if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    };
    format!("{}{credentials}{host}:{port}{}", &url[..scheme_end], &rest[authority_end..])
}

/// Deletes every key starting with `prefix` (SCAN MATCH, then UNLINK key by key, pipelined)
/// and returns how many keys went. On a Redis Cluster it does so on every master, each holding
/// its own share of the keys. Safe to repeat: a second run finds nothing.
#[tracing::instrument(skip_all, fields(url = %redacted(url), prefix))]
pub async fn delete_prefix(url: &str, prefix: &str, timeout: Duration) -> Result<u64> {
    let mut con = connect(url, timeout).await?;
    let failed = |e: redis::RedisError| Error::Redis { url: redacted(url), source: e };
    let info: String =
        redis::cmd("INFO").arg("cluster").query_async(&mut con).await.map_err(failed)?;
    if !info.lines().any(|l| l.trim() == "cluster_enabled:1") {
        return delete_on_node(con, url, prefix).await;
    }
    let nodes: String =
        redis::cmd("CLUSTER").arg("NODES").query_async(&mut con).await.map_err(failed)?;
    let mut deleted = 0;
    for (host, port) in cluster_masters(&nodes) {
        let node = node_url(url, &host, port);
        deleted += delete_on_node(connect(&node, timeout).await?, &node, prefix).await?;
    }
    Ok(deleted)
}

/// SCAN + UNLINK on one server. One key per UNLINK: keys in different hash slots cannot share
/// a command on a cluster node.
async fn delete_on_node(
    mut con: redis::aio::MultiplexedConnection,
    url: &str,
    prefix: &str,
) -> Result<u64> {
    let failed = |e: redis::RedisError| Error::Redis { url: redacted(url), source: e };
    let pattern = scan_pattern(prefix);
    let mut cursor: u64 = 0;
    let mut deleted: u64 = 0;
    loop {
        let (next, keys): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(BATCH)
            .query_async(&mut con)
            .await
            .map_err(failed)?;
        for batch in keys.chunks(BATCH) {
            let mut pipe = redis::pipe();
            for key in batch {
                pipe.cmd("UNLINK").arg(key);
            }
            let counts: Vec<u64> = pipe.query_async(&mut con).await.map_err(failed)?;
            deleted += counts.iter().sum::<u64>();
        }
        if next == 0 {
            return Ok(deleted);
        }
        cursor = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::RedisSpec;

    #[test]
    fn the_pattern_matches_the_prefix_literally() {
        assert_eq!(scan_pattern("collm:models:chat:"), "collm:models:chat:*");
        assert_eq!(scan_pattern("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\*");
    }

    #[test]
    fn each_redis_source_has_its_location_and_no_redis_means_nothing_to_clean() {
        let mut model = CollabModel::fixture();
        assert_eq!(
            ContextLocation::of(&model).expect("managed"),
            ContextLocation::Managed {
                secret: SecretKeyRef { name: "chat-redis".into(), key: "url".into() }
            }
        );
        let redis = |spec: RedisSpec| {
            let mut m = model.clone();
            m.spec.context.as_mut().expect("context").redis = Some(spec);
            ContextLocation::of(&m).expect("valid")
        };
        assert_eq!(
            redis(RedisSpec { url: Some("redis://r:6379/1".into()), ..RedisSpec::default() }),
            ContextLocation::Url("redis://r:6379/1".into())
        );
        let secret = SecretKeyRef { name: "redis".into(), key: "url".into() };
        assert_eq!(
            redis(RedisSpec { secret_ref: Some(secret.clone()), ..RedisSpec::default() }),
            ContextLocation::Secret(secret)
        );
        model.spec.context = None;
        assert_eq!(ContextLocation::of(&model).expect("no context"), ContextLocation::Nowhere);
    }

    #[test]
    fn the_finalizer_cleans_where_the_spec_points_unless_the_operator_is_told_otherwise() {
        let secret = SecretKeyRef { name: "redis".into(), key: "url".into() };
        let generated = SecretKeyRef { name: "chat-redis".into(), key: "url".into() };
        let managed = ContextLocation::Managed { secret: generated.clone() };
        assert_eq!(cleanup_source(ContextLocation::Nowhere, None), CleanupSource::Nothing);
        assert_eq!(
            cleanup_source(ContextLocation::Nowhere, Some("redis://o")),
            CleanupSource::Nothing
        );
        assert_eq!(
            cleanup_source(ContextLocation::Url("redis://r".into()), None),
            CleanupSource::Url("redis://r".into())
        );
        assert_eq!(
            cleanup_source(ContextLocation::Secret(secret.clone()), None),
            CleanupSource::Secret(secret.clone())
        );
        assert_eq!(
            cleanup_source(managed.clone(), None),
            CleanupSource::ManagedIfRunning(generated)
        );
        for location in
            [ContextLocation::Url("redis://r".into()), ContextLocation::Secret(secret), managed]
        {
            assert_eq!(
                cleanup_source(location, Some("redis://o")),
                CleanupSource::Url("redis://o".into())
            );
        }
    }

    #[test]
    fn the_prefix_is_the_one_cloud_workers_write_under() {
        assert_eq!(key_prefix(&CollabModel::fixture()).expect("stored"), "collm:models:chat:");
    }

    #[test]
    fn usable_masters_are_read_from_cluster_nodes() {
        let nodes = "\
07c3 127.0.0.1:30004@31004 slave e7d1 0 1426238317239 4 connected
e7d1 127.0.0.1:30001@31001,redis-0 myself,master - 0 0 1 connected 0-5460
67ed 10.0.0.2:30002@31002 master - 0 1426238316232 2 connected 5461-10922
292f 10.0.0.3:30003@31003 master,fail - 0 1426238318243 3 connected 10923-16383
6ec2 :30005@31005 master - 0 0 5 connected
9a1c ::1:30006@31006 master - 0 0 6 connected
";
        assert_eq!(
            cluster_masters(nodes),
            vec![
                ("127.0.0.1".to_string(), 30001),
                ("10.0.0.2".to_string(), 30002),
                (String::new(), 30005),
                ("::1".to_string(), 30006),
            ]
        );
    }

    #[test]
    fn node_urls_keep_scheme_credentials_and_options() {
        assert_eq!(node_url("redis://r:6379", "10.0.0.2", 30002), "redis://10.0.0.2:30002");
        assert_eq!(
            node_url("rediss://:pw@r.infra:6379/0?insecure", "10.0.0.2", 7000),
            "rediss://:pw@10.0.0.2:7000/0?insecure"
        );
        assert_eq!(node_url("redis://u:pw@r:6379", "", 7001), "redis://u:pw@r:7001");
        assert_eq!(node_url("redis://[::1]:6379", "", 7002), "redis://[::1]:7002");
        assert_eq!(node_url("redis://r:6379", "::1", 7003), "redis://[::1]:7003");
    }

    #[test]
    fn passwords_never_reach_messages() {
        assert_eq!(redacted("redis://:hunter2@r.infra:6379/0"), "redis://***@r.infra:6379/0");
        assert_eq!(redacted("redis://r:6379"), "redis://r:6379");
    }
}
