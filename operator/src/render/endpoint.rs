//! The cloud endpoint edges dial, as a URL the gRPC client accepts: `https://` when the cloud
//! serves TLS, `http://` otherwise, for the in-cluster Service and for a cloud in another cluster
//! (whose `host:port` the CRD accepts and this normalises). In-cluster edges also get the name of
//! the headless Service whose DNS records list the ready cloud pods, to spread sessions over
//! them; the URL's host stays what TLS certificates name and the fallback when DNS has nothing.

/// Where edges send cloud requests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CloudEndpoint {
    /// `http(s)://host:port`.
    pub url: String,
    /// A DNS name whose A/AAAA records are the cloud replicas (same port as the URL).
    pub discovery: Option<String>,
}

/// Default port of a cloud named without one: the scheme's.
fn default_port(tls: bool) -> u16 {
    if tls { 443 } else { 80 }
}

/// `host:port`, `host`, `http://host:port` or `https://host[:port][/]` as a URL with a scheme
/// and a port. A scheme given explicitly wins over `tls` (a user who wrote `http://` behind a
/// TLS-terminating proxy meant it).
pub fn normalise(endpoint: &str, tls: bool) -> String {
    let trimmed = endpoint.trim().trim_end_matches('/');
    let (scheme, rest) = match trimmed.split_once("://") {
        Some((scheme, rest)) => (scheme.to_ascii_lowercase(), rest),
        None => ((if tls { "https" } else { "http" }).to_string(), trimmed),
    };
    let has_port = match rest.rsplit_once(':') {
        // An IPv6 literal without a port ends in `]`.
        Some((host, port)) => {
            !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) && !host.is_empty()
        }
        None => false,
    };
    if has_port {
        format!("{scheme}://{rest}")
    } else {
        format!("{scheme}://{rest}:{}", default_port(scheme == "https"))
    }
}

/// The in-cluster cloud: its Service URL and the headless Service listing its pods.
pub fn in_cluster(service_host: &str, pods_host: &str, port: i32, tls: bool) -> CloudEndpoint {
    let scheme = if tls { "https" } else { "http" };
    CloudEndpoint {
        url: format!("{scheme}://{service_host}:{port}"),
        discovery: Some(pods_host.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_gets_the_scheme_tls_asks_for_and_urls_keep_theirs() {
        assert_eq!(normalise("cloud.example:8443", true), "https://cloud.example:8443");
        assert_eq!(normalise("cloud.example:50051", false), "http://cloud.example:50051");
        assert_eq!(normalise("https://cloud.example:443/", false), "https://cloud.example:443");
        assert_eq!(normalise("HTTP://10.0.0.5:50051", true), "http://10.0.0.5:50051");
        assert_eq!(normalise("cloud.example", true), "https://cloud.example:443");
        assert_eq!(normalise("https://cloud.example", false), "https://cloud.example:443");
        assert_eq!(normalise("[fd00::1]:50051", false), "http://[fd00::1]:50051");
        assert_eq!(normalise("[fd00::1]", true), "https://[fd00::1]:443");
    }

    #[test]
    fn the_in_cluster_cloud_is_its_service_url_with_the_pods_for_discovery() {
        let e = in_cluster("m-cloud.ns.svc", "m-cloud-pods.ns.svc", 50051, false);
        assert_eq!(e.url, "http://m-cloud.ns.svc:50051");
        assert_eq!(e.discovery.as_deref(), Some("m-cloud-pods.ns.svc"));
        assert_eq!(in_cluster("a", "b", 1, true).url, "https://a:1");
    }
}
