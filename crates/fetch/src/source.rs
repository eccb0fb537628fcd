//! What to fetch, parsed once at the boundary: an `http(s)://` URL, the archive's SHA-256 as 64
//! hex digits, a size bound, and the directory the bundle goes to. Read from the runtime
//! configuration the operator renders (`edge.json` or `cloud.json`, whose `bundle` section is the
//! same in both) or given as flags.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::FetchError;

/// The largest archive fetched unless the configuration says otherwise.
pub const DEFAULT_MAX_BYTES: u64 = 8 << 30;

/// An `http://` or `https://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleUrl(String);

impl BundleUrl {
    pub fn parse(url: &str) -> Result<Self, FetchError> {
        let url = url.trim();
        let rest = url
            .strip_prefix("https://")
            .or_else(|| url.strip_prefix("http://"))
            .ok_or_else(|| FetchError::Config(format!("bundle URL {url:?} is not http(s)://")))?;
        if rest.is_empty() || rest.starts_with('/') {
            return Err(FetchError::Config(format!("bundle URL {url:?} names no host")));
        }
        Ok(Self(url.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for BundleUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A SHA-256 as 64 lower-case hex digits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sha256Hex(String);

impl Sha256Hex {
    pub fn parse(hex: &str) -> Result<Self, FetchError> {
        let hex = hex.trim().to_ascii_lowercase();
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(FetchError::Config(format!("bundle SHA-256 {hex:?} is not 64 hex digits")));
        }
        Ok(Self(hex))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Sha256Hex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A bundle archive to download and where its bundle goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleDownload {
    pub url: BundleUrl,
    pub sha256: Sha256Hex,
    /// Refuse archives larger than this.
    pub max_bytes: u64,
    /// The bundle directory to create (its parent must be writable: the download and the
    /// unpacking happen next to it, and it appears whole, by a rename).
    pub dir: PathBuf,
}

/// The `bundle` section of `edge.json` / `cloud.json`.
#[derive(Debug, Deserialize)]
struct ConfigFile {
    bundle: Option<BundleSection>,
}

#[derive(Debug, Deserialize)]
struct BundleSection {
    dir: PathBuf,
    download: Option<DownloadSection>,
}

#[derive(Debug, Deserialize)]
struct DownloadSection {
    url: String,
    sha256: String,
    max_bytes: Option<u64>,
}

/// The download a runtime configuration file asks for; `None` when its bundle is not fetched
/// (a PersistentVolumeClaim, hostPath or ConfigMap source, mounted as it is).
pub fn from_config_file(path: &Path) -> Result<Option<BundleDownload>, FetchError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| FetchError::Config(format!("cannot read {}: {e}", path.display())))?;
    from_config_text(&text).map_err(|e| match e {
        FetchError::Config(why) => FetchError::Config(format!("{}: {why}", path.display())),
        other => other,
    })
}

pub fn from_config_text(text: &str) -> Result<Option<BundleDownload>, FetchError> {
    let file: ConfigFile = serde_json::from_str(text)
        .map_err(|e| FetchError::Config(format!("invalid runtime configuration: {e}")))?;
    let Some(bundle) = file.bundle else {
        return Err(FetchError::Config("the configuration has no bundle section".into()));
    };
    let Some(download) = bundle.download else { return Ok(None) };
    Ok(Some(BundleDownload {
        url: BundleUrl::parse(&download.url)?,
        sha256: Sha256Hex::parse(&download.sha256)?,
        max_bytes: download.max_bytes.unwrap_or(DEFAULT_MAX_BYTES),
        dir: bundle.dir,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_operators_bundle_section_is_read_and_checked() {
        let text =
            r#"{"format": 1, "model": "m", "bundle": {"dir": "/var/lib/collm/fetched/bundle",
            "download": {"url": "https://b.example/m.tar", "sha256": "AB"}}}"#
                .replace("\"AB\"", &format!("\"{}\"", "AB".repeat(32)));
        let d = from_config_text(&text).expect("parses").expect("a download");
        assert_eq!(d.url.as_str(), "https://b.example/m.tar");
        assert_eq!(d.sha256.as_str(), "ab".repeat(32), "lower-cased");
        assert_eq!(d.max_bytes, DEFAULT_MAX_BYTES);
        assert_eq!(d.dir, Path::new("/var/lib/collm/fetched/bundle"));

        let mounted = r#"{"format": 1, "bundle": {"dir": "/var/lib/collm/bundle"}}"#;
        assert_eq!(from_config_text(mounted).expect("parses"), None);
    }

    #[test]
    fn bad_urls_and_digests_are_refused_with_what_is_wrong() {
        for (url, why) in
            [("ftp://x/b.tar", "http(s)"), ("https://", "no host"), ("b.tar", "http(s)")]
        {
            let e = BundleUrl::parse(url).expect_err(url).to_string();
            assert!(e.contains(why), "{url}: {e}");
        }
        for digest in ["", "ab", &"zz".repeat(32), &"a".repeat(65)] {
            let e = Sha256Hex::parse(digest).expect_err(digest).to_string();
            assert!(e.contains("64 hex digits"), "{e}");
        }
        let e = from_config_text("{").expect_err("json").to_string();
        assert!(e.contains("invalid runtime configuration"), "{e}");
        let e = from_config_text(r#"{"format":1}"#).expect_err("no bundle").to_string();
        assert!(e.contains("no bundle section"), "{e}");
    }
}
