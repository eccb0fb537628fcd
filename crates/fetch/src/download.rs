//! One archive download into a partial file, hashed as it is written, resumable: an attempt that
//! breaks off leaves the bytes it got, and the next asks only for the rest (`Range`); a server
//! that ignores ranges sends everything again and the file starts over. The SHA-256 always
//! covers exactly the bytes in the file.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::source::BundleUrl;

/// Why one attempt failed.
#[derive(Debug)]
pub enum AttemptError {
    /// Worth another attempt (connection refused or reset, a timeout, a 5xx, a body cut short).
    Transient(String),
    /// Another attempt cannot help (404, 403, an archive over the size bound, a local disk
    /// error).
    Permanent(crate::FetchError),
}

/// A download in progress: the partial file and the hash of what it holds.
pub struct PartialDownload {
    path: PathBuf,
    file: std::fs::File,
    hasher: Sha256,
    have: u64,
}

impl PartialDownload {
    /// Opens (or creates) the partial file at `path`, hashing what an earlier process left in
    /// it, so a restarted fetch resumes where the last one stopped.
    pub fn open(path: &Path) -> std::io::Result<Self> {
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        let mut hasher = Sha256::new();
        let have = std::io::copy(&mut file, &mut HashSink(&mut hasher))?;
        file.seek(SeekFrom::End(0))?;
        Ok(Self { path: path.to_path_buf(), file, hasher, have })
    }

    /// Bytes downloaded so far.
    pub fn have(&self) -> u64 {
        self.have
    }

    /// The SHA-256 of the bytes downloaded so far.
    pub fn sha256(&self) -> String {
        hex::encode(self.hasher.clone().finalize())
    }

    fn restart(&mut self) -> std::io::Result<()> {
        self.file.set_len(0)?;
        self.file.seek(SeekFrom::Start(0))?;
        self.hasher = Sha256::new();
        self.have = 0;
        Ok(())
    }

    fn append(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.file.write_all(bytes)?;
        self.hasher.update(bytes);
        self.have += bytes.len() as u64;
        Ok(())
    }

    /// Flushes the file to disk and closes it.
    pub fn finish(self) -> std::io::Result<PathBuf> {
        self.file.sync_all()?;
        Ok(self.path)
    }
}

struct HashSink<'a>(&'a mut Sha256);

impl Write for HashSink<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The HTTP client of a fetch: TLS trusting the system's certificate store, bounded connects
/// and reads (a server that stops sending is given up on rather than waited for forever).
pub struct Http {
    agent: ureq::Agent,
}

impl Http {
    pub fn new(
        connect_timeout: Duration,
        read_timeout: Duration,
    ) -> Result<Self, crate::FetchError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let native = rustls_native_certs::load_native_certs();
        let roots: Vec<ureq::tls::Certificate<'static>> = native
            .certs
            .iter()
            .map(|der| ureq::tls::Certificate::from_der(der.as_ref()).to_owned())
            .collect();
        let tls = ureq::tls::TlsConfig::builder()
            .provider(ureq::tls::TlsProvider::Rustls)
            .root_certs(ureq::tls::RootCerts::Specific(Arc::new(roots)))
            .unversioned_rustls_crypto_provider(provider)
            .build();
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(connect_timeout))
            .timeout_recv_response(Some(connect_timeout * 3))
            .timeout_per_read(Some(read_timeout))
            .tls_config(tls)
            .user_agent(concat!("collm-fetch/", env!("CARGO_PKG_VERSION")))
            .build();
        Ok(Self { agent: config.into() })
    }

    /// One attempt: asks for the bytes after what `partial` holds and appends them, within
    /// `max_bytes` in all.
    pub fn attempt(
        &self,
        url: &BundleUrl,
        partial: &mut PartialDownload,
        max_bytes: u64,
    ) -> Result<(), AttemptError> {
        let mut request = self.agent.get(url.as_str());
        if partial.have() > 0 {
            request = request.header("Range", format!("bytes={}-", partial.have()));
        }
        let mut response = request.call().map_err(|e| AttemptError::Transient(describe(&e)))?;
        let status = response.status().as_u16();
        let header = |name: &str| {
            response.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string)
        };
        let length = header("content-length").and_then(|v| v.trim().parse::<u64>().ok());
        let path = partial.path.clone();
        let disk = |e: std::io::Error| {
            AttemptError::Permanent(crate::FetchError::Io { path: path.clone(), source: e })
        };
        let total = match status {
            200 => {
                // The server sends the whole archive (it ignores ranges, or none was asked).
                partial.restart().map_err(disk)?;
                length
            }
            206 => {
                let range = header("content-range").unwrap_or_default();
                match parse_content_range(&range) {
                    Some((start, total)) if start == partial.have() => total,
                    _ => {
                        // A range we did not ask for: start over rather than splice wrong bytes.
                        partial.restart().map_err(disk)?;
                        return Err(AttemptError::Transient(format!(
                            "the server answered a range request with {range:?}; starting over"
                        )));
                    }
                }
            }
            416 => {
                // What we hold is not a prefix of what the server has (any more): start over.
                partial.restart().map_err(disk)?;
                return Err(AttemptError::Transient(
                    "the server refused to resume (416); starting over".into(),
                ));
            }
            408 | 425 | 429 | 500..=599 => {
                return Err(AttemptError::Transient(format!("HTTP {status}")));
            }
            _ => {
                return Err(AttemptError::Permanent(crate::FetchError::Http {
                    url: url.to_string(),
                    status,
                }));
            }
        };
        if let Some(total) = total.filter(|t| *t > max_bytes) {
            return Err(AttemptError::Permanent(crate::FetchError::TooLarge {
                url: url.to_string(),
                limit: max_bytes,
                size: Some(total),
            }));
        }
        let mut body = response.body_mut().as_reader();
        let mut buf = vec![0u8; 256 << 10];
        loop {
            let n = match body.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) => {
                    return Err(AttemptError::Transient(format!(
                        "the download broke off after {} bytes: {e}",
                        partial.have()
                    )));
                }
            };
            if partial.have() + n as u64 > max_bytes {
                return Err(AttemptError::Permanent(crate::FetchError::TooLarge {
                    url: url.to_string(),
                    limit: max_bytes,
                    size: None,
                }));
            }
            partial.append(&buf[..n]).map_err(disk)?;
        }
        if let Some(total) = total
            && partial.have() < total
        {
            return Err(AttemptError::Transient(format!(
                "the download ended after {} of {total} bytes",
                partial.have()
            )));
        }
        Ok(())
    }
}

/// `bytes START-END/TOTAL` → (START, TOTAL); TOTAL may be `*` (unknown).
fn parse_content_range(value: &str) -> Option<(u64, Option<u64>)> {
    let rest = value.trim().strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (start, _end) = range.split_once('-')?;
    let total = match total.trim() {
        "*" => None,
        t => Some(t.parse().ok()?),
    };
    Some((start.trim().parse().ok()?, total))
}

/// An HTTP client error on one line, with its causes.
fn describe(e: &ureq::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_ranges_are_read_or_refused() {
        assert_eq!(parse_content_range("bytes 100-199/200"), Some((100, Some(200))));
        assert_eq!(parse_content_range("bytes 5-9/*"), Some((5, None)));
        assert_eq!(parse_content_range("bytes */200"), None);
        assert_eq!(parse_content_range("items 1-2/3"), None);
    }

    #[test]
    fn a_partial_file_left_by_an_earlier_process_is_hashed_and_extended() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("a.partial");
        std::fs::write(&path, b"hello ").expect("write");
        let mut partial = PartialDownload::open(&path).expect("opens");
        assert_eq!(partial.have(), 6);
        partial.append(b"world").expect("append");
        assert_eq!(partial.sha256(), hex::encode(Sha256::digest(b"hello world")));
        partial.restart().expect("restart");
        partial.append(b"x").expect("append");
        let path = partial.finish().expect("finish");
        assert_eq!(std::fs::read(path).expect("read"), b"x");
    }
}
