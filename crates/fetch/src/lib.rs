//! Bundle delivery into a pod. A CollabModel whose bundle is a URL gets an init container
//! running `edge-agent fetch-bundle` (or `cloud-worker fetch-bundle`) with the pod's runtime
//! configuration: it downloads the archive with retries, backoff and resume, refuses it when its
//! SHA-256 is not the one the model names, unpacks it without letting it write outside the
//! bundle directory, verifies the bundle's own manifest checksums, and only then renames the
//! bundle into place. When anything fails the init container exits with one line saying what
//! and where (written to the termination log the operator reads into the model's status), so the
//! pod never starts on half a model.

mod command;
mod download;
mod fetch;
mod retry;
pub mod source;

use std::path::{Path, PathBuf};

pub use command::{FetchArgs, run};
pub use fetch::{FetchOptions, Fetched, MARKER, fetch};
pub use retry::Backoff;
pub use source::{BundleDownload, BundleUrl, Sha256Hex};

/// Why a bundle could not be delivered. Every message names the URL, since that is what the
/// person reading the CollabModel's status has to check.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{0}")]
    Config(String),

    #[error("bundle {url}: no complete download after {attempts} attempts; last: {last}")]
    Unreachable { url: String, attempts: u32, last: String },

    #[error("bundle {url}: the server answered HTTP {status}")]
    Http { url: String, status: u16 },

    #[error("bundle {url}: larger than the limit of {limit} bytes{}", size.map(|s| format!(" ({s} bytes)")).unwrap_or_default())]
    TooLarge { url: String, limit: u64, size: Option<u64> },

    #[error(
        "bundle {url}: SHA-256 mismatch: the download has {actual}, the model expects {expected}"
    )]
    Checksum { url: String, expected: String, actual: String },

    #[error("bundle {url}: the archive is unusable: {source}")]
    Archive { url: String, source: collm_bundle::Error },

    #[error("bundle {url}: the archive holds a bundle that does not verify: {source}")]
    Bundle { url: String, source: collm_bundle::Error },

    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
}

impl FetchError {
    fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io { path: path.to_path_buf(), source }
    }
}
