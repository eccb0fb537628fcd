//! Finding the cloud replicas: the DNS records of a headless Service list the ready cloud pods.
//!
//! DNS rather than the Kubernetes API (EndpointSlices): it needs no RBAC and no API token on the
//! edge, and it works from wherever the name resolves. What it costs is freshness: a pod that
//! turns ready (or unready, on SIGTERM) shows within the cluster DNS cache time, a few seconds;
//! the link also drops a replica at once when its own health probe says it is draining.
//!
//! Dialing pod addresses works under a service mesh: the sidecar intercepts the connection
//! whatever the address, and a headless Service's pods are endpoints the mesh knows; the
//! requests still carry the Service's name as their authority and TLS name.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use crate::pool::Target;

/// Resolves a host name to addresses.
pub trait Resolve: Send + Sync + 'static {
    fn resolve<'a>(
        &'a self,
        host: &'a str,
        port: u16,
    ) -> Pin<Box<dyn Future<Output = std::io::Result<Vec<SocketAddr>>> + Send + 'a>>;
}

/// The system resolver (what every other program on the node uses: /etc/resolv.conf, search
/// domains, the cluster DNS).
pub struct SystemResolver;

impl Resolve for SystemResolver {
    fn resolve<'a>(
        &'a self,
        host: &'a str,
        port: u16,
    ) -> Pin<Box<dyn Future<Output = std::io::Result<Vec<SocketAddr>>> + Send + 'a>> {
        Box::pin(async move { Ok(tokio::net::lookup_host((host, port)).await?.collect()) })
    }
}

/// What to resolve and how.
#[derive(Clone)]
pub struct Discovery {
    /// The name whose records are the replicas (a headless Service).
    pub host: String,
    pub resolver: Arc<dyn Resolve>,
}

impl Discovery {
    pub fn dns(host: &str) -> Self {
        Self { host: host.to_string(), resolver: Arc::new(SystemResolver) }
    }
}

impl std::fmt::Debug for Discovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Discovery").field("host", &self.host).finish_non_exhaustive()
    }
}

/// The scheme-less `host:port` of a URL and its port.
pub fn port_of(url: &str) -> Option<u16> {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split('/').next()?;
    authority.rsplit_once(':')?.1.parse().ok()
}

/// The replicas behind `service` (its URL) given the resolved addresses: one target per
/// address, sorted; the Service itself when discovery found nothing (every pod unready, or a
/// name that does not resolve here), so the edge still reaches whatever answers behind it.
pub fn targets(service: &str, mut addrs: Vec<SocketAddr>) -> Vec<Target> {
    addrs.sort();
    addrs.dedup();
    if addrs.is_empty() {
        return vec![Target::endpoint(service)];
    }
    addrs.iter().map(|a| Target::discovered(&a.to_string(), service)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_become_targets_behind_the_service_and_nothing_falls_back_to_it() {
        let service = "http://m-cloud.ns.svc:50051";
        let addrs: Vec<SocketAddr> = vec![
            "10.0.0.2:50051".parse().expect("addr"),
            "10.0.0.1:50051".parse().expect("addr"),
            "10.0.0.2:50051".parse().expect("addr"),
        ];
        let t = targets(service, addrs);
        assert_eq!(
            t.iter().map(|t| t.url.as_str()).collect::<Vec<_>>(),
            ["http://10.0.0.1:50051", "http://10.0.0.2:50051"]
        );
        assert_eq!(targets(service, Vec::new()), vec![Target::endpoint(service)]);
        assert_eq!(port_of(service), Some(50051));
        assert_eq!(port_of("https://[fd00::1]:443"), Some(443));
        assert_eq!(port_of("http://host"), None);
    }

    #[tokio::test]
    async fn the_system_resolver_resolves_localhost() {
        let addrs = SystemResolver.resolve("localhost", 50051).await.expect("resolves");
        assert!(addrs.iter().any(|a| a.ip().is_loopback() && a.port() == 50051), "{addrs:?}");
    }
}
