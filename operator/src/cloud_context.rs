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
    /// The operator-run Redis, reached through its Service.
    Managed {
        url: String,
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
            Redis::Managed => Self::Managed { url: managed_url(&at) },
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
    /// The managed Redis at this URL, if it still runs: it keeps no data on disk, so with no
    /// ready replica there is nothing left to delete.
    ManagedIfRunning(String),
}

/// The operator's override (its own way to reach Redis) wins over whatever the spec says.
pub fn cleanup_source(location: ContextLocation, url_override: Option<&str>) -> CleanupSource {
    match (location, url_override) {
        (ContextLocation::Nowhere, _) => CleanupSource::Nothing,
        (_, Some(url)) => CleanupSource::Url(url.to_string()),
        (ContextLocation::Url(url), None) => CleanupSource::Url(url),
        (ContextLocation::Secret(secret), None) => CleanupSource::Secret(secret),
        (ContextLocation::Managed { url }, None) => CleanupSource::ManagedIfRunning(url),
    }
}

/// The managed Redis Service's in-cluster URL (the one cloud workers use).
pub fn managed_url(at: &ModelRef) -> String {
    format!(
        "redis://{}.{}.svc:{}",
        at.child_name(crate::render::Component::Redis),
        at.namespace,
        crate::render::config::REDIS_PORT
    )
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

/// Deletes every key starting with `prefix` (SCAN MATCH + UNLINK in batches); returns how many
/// keys went. Safe to repeat: a second run finds nothing.
#[tracing::instrument(skip_all, fields(url = %redacted(url), prefix))]
pub async fn delete_prefix(url: &str, prefix: &str, timeout: Duration) -> Result<u64> {
    let mut con = connect(url, timeout).await?;
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
            let n: u64 =
                redis::cmd("UNLINK").arg(batch).query_async(&mut con).await.map_err(failed)?;
            deleted += n;
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
            ContextLocation::Managed { url: "redis://chat-redis.models.svc:6379".into() }
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
        let managed = ContextLocation::Managed { url: "redis://chat-redis.models.svc:6379".into() };
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
            CleanupSource::ManagedIfRunning("redis://chat-redis.models.svc:6379".into())
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
    fn passwords_never_reach_messages() {
        assert_eq!(redacted("redis://:hunter2@r.infra:6379/0"), "redis://***@r.infra:6379/0");
        assert_eq!(redacted("redis://r:6379"), "redis://r:6379");
    }
}
