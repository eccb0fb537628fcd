//! The agent's settings: command-line flags, optionally on top of the runtime configuration the
//! operator mounts (`edge.json`). Flags win over the file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use collm_runtime::codec::Encoding;
use serde::Deserialize;

use crate::mode::Mode;
use crate::{Error, Result};

/// `edge.json` as the operator writes it (format 1). Unknown fields are ignored so that an
/// older agent reads a newer operator's file.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct EdgeFile {
    pub format: u32,
    pub model: Option<String>,
    pub bundle: Option<BundleFile>,
    pub mode: Option<String>,
    pub threshold: Option<f32>,
    pub target_agreement: Option<f32>,
    pub latency_budget_ms: Option<u64>,
    pub encoding: Option<String>,
    pub api_port: Option<u16>,
    /// One endpoint, or several separated by commas (failover order).
    pub cloud_endpoint: Option<String>,
    /// A DNS name listing the cloud replicas behind `cloud_endpoint` (a headless Service):
    /// sessions spread over them.
    pub cloud_discovery: Option<String>,
    pub edge_token_file: Option<PathBuf>,
    pub tls_ca_file: Option<PathBuf>,
    /// This edge's client certificate and key (mutual TLS).
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct BundleFile {
    pub dir: PathBuf,
}

/// Highest `edge.json` format this agent understands.
pub const FORMAT: u32 = 1;

impl EdgeFile {
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Startup(format!("cannot read {}: {e}", path.display())))?;
        Self::parse(&text).map_err(|e| Error::Startup(format!("{}: {e}", path.display())))
    }

    pub fn parse(text: &str) -> std::result::Result<Self, String> {
        let file: Self =
            serde_json::from_str(text).map_err(|e| format!("invalid edge config: {e}"))?;
        if file.format > FORMAT {
            return Err(format!(
                "edge config format {} is newer than this agent understands ({FORMAT}): upgrade the agent",
                file.format
            ));
        }
        Ok(file)
    }
}

/// Everything the agent runs with, resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub bundle: PathBuf,
    pub listen: SocketAddr,
    pub model: String,
    pub mode: Mode,
    pub threshold: Option<f32>,
    pub target_agreement: Option<f32>,
    pub latency_budget: Option<Duration>,
    pub encoding: Encoding,
    pub cloud: Vec<String>,
    /// Spread sessions over the replicas this DNS name lists.
    pub cloud_discovery: Option<String>,
    pub token: Option<String>,
    /// Where the token came from (read again when it rotates).
    pub token_file: Option<PathBuf>,
    pub tls_ca: Option<PathBuf>,
    pub tls_identity: Option<(PathBuf, PathBuf)>,
}

/// Flag values (all optional so the file can supply them).
#[derive(Debug, Clone, Default)]
pub struct Flags {
    pub bundle: Option<PathBuf>,
    pub listen: Option<SocketAddr>,
    pub model: Option<String>,
    pub mode: Option<Mode>,
    pub threshold: Option<f32>,
    pub target_agreement: Option<f32>,
    pub latency_budget_ms: Option<u64>,
    pub encoding: Option<Encoding>,
    pub cloud: Vec<String>,
    pub cloud_discovery: Option<String>,
    pub token: Option<String>,
    pub token_file: Option<PathBuf>,
    pub tls_ca: Option<PathBuf>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
}

impl Settings {
    /// Flags over the file; `read_token` reads a token file (I/O kept out of the merge).
    pub fn resolve(
        flags: Flags,
        file: EdgeFile,
        read_token: impl Fn(&Path) -> Result<String>,
    ) -> Result<Self> {
        let bundle = flags
            .bundle
            .or(file.bundle.map(|b| b.dir))
            .ok_or_else(|| Error::Startup("no bundle: give --bundle DIR or --config".into()))?;
        let listen = match (flags.listen, file.api_port) {
            (Some(addr), _) => addr,
            (None, Some(port)) => SocketAddr::from(([0, 0, 0, 0], port)),
            (None, None) => SocketAddr::from(([127, 0, 0, 1], 8080)),
        };
        let model = flags.model.or(file.model).unwrap_or_else(|| {
            bundle.file_name().map_or("model".into(), |n| n.to_string_lossy().into_owned())
        });
        let mode = match (flags.mode, file.mode) {
            (Some(m), _) => m,
            (None, Some(m)) => m.parse().map_err(Error::Startup)?,
            (None, None) => Mode::Collaborative,
        };
        let encoding = match (flags.encoding, file.encoding) {
            (Some(e), _) => e,
            (None, Some(e)) => e
                .parse()
                .map_err(|e: collm_runtime::codec::CodecError| Error::Startup(e.to_string()))?,
            (None, None) => Encoding::F32,
        };
        let (cloud, cloud_discovery) = if flags.cloud.is_empty() {
            let cloud: Vec<String> = file
                .cloud_endpoint
                .map(|c| {
                    c.split(',').map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()).collect()
                })
                .unwrap_or_default();
            (cloud, flags.cloud_discovery.or(file.cloud_discovery))
        } else {
            // Endpoints given on the command line are dialed as given.
            (flags.cloud, flags.cloud_discovery)
        };
        let cloud_discovery = cloud_discovery.filter(|d| !d.trim().is_empty());
        if cloud_discovery.is_some() && cloud.len() != 1 {
            return Err(Error::Startup(
                "cloud discovery needs exactly one cloud endpoint (the Service the replicas stand behind)".into(),
            ));
        }
        let (token, token_file) = match (flags.token, flags.token_file.or(file.edge_token_file)) {
            (Some(t), _) => (Some(t), None),
            (None, Some(path)) => (Some(read_token(&path)?), Some(path)),
            (None, None) => (None, None),
        };
        if !cloud.is_empty() && token.is_none() {
            return Err(Error::Startup(
                "a cloud endpoint needs this edge's token: give --token or --token-file".into(),
            ));
        }
        if mode != Mode::Standalone && cloud.is_empty() {
            return Err(Error::Startup(format!(
                "mode {mode} needs a cloud: give --cloud URL (or run --mode standalone)"
            )));
        }
        let tls_identity =
            match (flags.tls_cert.or(file.tls_cert_file), flags.tls_key.or(file.tls_key_file)) {
                (Some(c), Some(k)) => Some((c, k)),
                (None, None) => None,
                _ => return Err(Error::Startup("--tls-cert and --tls-key go together".into())),
            };
        if let Some(t) = flags.threshold.or(file.threshold)
            && (t.is_nan() || t <= 0.0)
        {
            return Err(Error::Startup(format!("threshold must be > 0, got {t}")));
        }
        Ok(Self {
            bundle,
            listen,
            model,
            mode,
            threshold: flags.threshold.or(file.threshold),
            target_agreement: flags.target_agreement.or(file.target_agreement),
            latency_budget: flags
                .latency_budget_ms
                .or(file.latency_budget_ms)
                .map(Duration::from_millis),
            encoding,
            cloud,
            cloud_discovery,
            token,
            token_file,
            tls_ca: flags.tls_ca.or(file.tls_ca_file),
            tls_identity,
        })
    }
}

/// A token file's content, trimmed; an empty file is an error.
pub fn read_token_file(path: &Path) -> Result<String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::Startup(format!("cannot read token file {}: {e}", path.display())))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(Error::Startup(format!("token file {} is empty", path.display())));
    }
    Ok(token.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_file(_: &Path) -> Result<String> {
        Err(Error::Startup("no token file in this test".into()))
    }

    const OPERATOR_FILE: &str = r#"{
      "format": 1, "model": "smol", "bundle": {"dir": "/var/lib/collm/bundle"},
      "split_layer": 24, "exit_layers": [24], "mode": "collaborative", "threshold": 0.7,
      "latency_budget_ms": 250, "encoding": "int8", "api_port": 8000,
      "cloud_endpoint": "http://smol-cloud.ns.svc:50051",
      "cloud_discovery": "smol-cloud-pods.ns.svc",
      "edge_token_file": "/var/run/secrets/collm/edge-token/token",
      "tls_cert_file": "/edge/tls.crt", "tls_key_file": "/edge/tls.key"
    }"#;

    #[test]
    fn the_operators_file_configures_a_pod_without_flags() {
        let file = EdgeFile::parse(OPERATOR_FILE).expect("parses");
        let s = Settings::resolve(Flags::default(), file, |p| {
            assert_eq!(p, Path::new("/var/run/secrets/collm/edge-token/token"));
            Ok("t0k".into())
        })
        .expect("resolves");
        assert_eq!(s.listen, "0.0.0.0:8000".parse().expect("addr"));
        assert_eq!(s.model, "smol");
        assert_eq!(s.mode, Mode::Collaborative);
        assert_eq!(s.encoding, Encoding::Int8);
        assert_eq!(s.latency_budget, Some(Duration::from_millis(250)));
        assert_eq!(s.cloud, vec!["http://smol-cloud.ns.svc:50051".to_string()]);
        assert_eq!(s.cloud_discovery.as_deref(), Some("smol-cloud-pods.ns.svc"));
        assert_eq!(s.token.as_deref(), Some("t0k"));
        assert_eq!(
            s.token_file.as_deref(),
            Some(Path::new("/var/run/secrets/collm/edge-token/token")),
            "read again when the kubelet rotates it"
        );
        assert_eq!(
            s.tls_identity,
            Some((PathBuf::from("/edge/tls.crt"), PathBuf::from("/edge/tls.key")))
        );
    }

    #[test]
    fn flags_win_over_the_file() {
        let file = EdgeFile::parse(OPERATOR_FILE).expect("parses");
        let flags = Flags {
            mode: Some(Mode::Standalone),
            token: Some("x".into()),
            cloud: vec!["http://a:1".into(), "http://b:2".into()],
            ..Flags::default()
        };
        let s = Settings::resolve(flags, file, no_file).expect("resolves");
        assert_eq!(s.mode, Mode::Standalone);
        assert_eq!(s.cloud.len(), 2);
        assert_eq!(s.cloud_discovery, None, "the file's discovery belongs to the file's endpoint");
    }

    #[test]
    fn incomplete_or_future_configurations_are_refused_clearly() {
        let err = Settings::resolve(Flags::default(), EdgeFile::default(), no_file).unwrap_err();
        assert!(err.to_string().contains("--bundle"), "{err}");
        let flags = Flags { bundle: Some("/b".into()), ..Flags::default() };
        let err = Settings::resolve(flags.clone(), EdgeFile::default(), no_file).unwrap_err();
        assert!(err.to_string().contains("needs a cloud"), "{err}");
        let with_cloud = Flags { cloud: vec!["http://c:1".into()], ..flags };
        let err = Settings::resolve(with_cloud, EdgeFile::default(), no_file).unwrap_err();
        assert!(err.to_string().contains("token"), "{err}");
        let err = EdgeFile::parse(r#"{"format": 9}"#).unwrap_err();
        assert!(err.contains("newer"), "{err}");
        assert!(EdgeFile::parse("{").unwrap_err().contains("invalid"));
    }
}
