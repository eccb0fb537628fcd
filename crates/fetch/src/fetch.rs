//! The whole delivery of one bundle: download (with retries and resume), SHA-256 check, safe
//! unpacking, the bundle's own verification, and an atomic rename into place. Until the rename
//! the bundle directory does not exist, so a runtime started after a failed or interrupted fetch
//! finds nothing rather than half a model.
//!
//! Layout, all inside the bundle directory's parent (one volume, so the rename is atomic):
//! `.fetch/<sha256>.tar.partial` while downloading, `.fetch/unpacked` while unpacking and
//! verifying, then `<dir>` holding the bundle and a `.collm-archive-sha256` marker naming the
//! archive it came from, which makes a second fetch of the same archive a no-op.

use std::path::{Path, PathBuf};
use std::time::Duration;

use collm_bundle::{Bundle, Parts, UnpackLimits};

use crate::FetchError;
use crate::download::{AttemptError, Http, PartialDownload};
use crate::retry::Backoff;
use crate::source::BundleDownload;

/// Marker file inside a fetched bundle directory: the SHA-256 of the archive it came from.
pub const MARKER: &str = ".collm-archive-sha256";
/// Work directory next to the bundle directory.
pub const WORK_DIR: &str = ".fetch";

/// How a fetch behaves on a bad network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FetchOptions {
    pub backoff: Backoff,
    pub connect_timeout: Duration,
    /// A server that sends nothing for this long is given up on (the attempt is retried).
    pub read_timeout: Duration,
}

impl Default for FetchOptions {
    fn default() -> Self {
        Self {
            backoff: Backoff::default(),
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(30),
        }
    }
}

/// What a successful fetch did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fetched {
    /// The directory already held a verified bundle from this archive.
    AlreadyThere,
    /// Downloaded (`resumed`: the last attempt continued an earlier one's bytes) and unpacked.
    Downloaded { bytes: u64, attempts: u32, resumed: bool },
}

/// Fetches `download` into `download.dir`, verifying the parts `parts` needs; `log` hears each
/// step (the caller prints it).
pub fn fetch(
    download: &BundleDownload,
    parts: Parts,
    options: FetchOptions,
    log: &mut dyn FnMut(&str),
) -> Result<Fetched, FetchError> {
    let dir = &download.dir;
    if already_there(dir, download, parts) {
        log(&format!("{} already holds the bundle of {}", dir.display(), download.url));
        return Ok(Fetched::AlreadyThere);
    }
    let parent = dir
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .ok_or_else(|| FetchError::Config(format!("{} has no parent directory", dir.display())))?;
    let work = parent.join(WORK_DIR);
    std::fs::create_dir_all(&work).map_err(|e| FetchError::io(&work, e))?;
    let archive = work.join(format!("{}.tar.partial", download.sha256));
    remove_stale(&work, &archive)?;

    let http = Http::new(options.connect_timeout, options.read_timeout)?;
    let mut partial = PartialDownload::open(&archive).map_err(|e| FetchError::io(&archive, e))?;
    let mut attempt = 0;
    let mut resumed;
    loop {
        attempt += 1;
        resumed = partial.have() > 0;
        if resumed {
            log(&format!("resuming {} after {} bytes", download.url, partial.have()));
        } else {
            log(&format!("downloading {}", download.url));
        }
        match http.attempt(&download.url, &mut partial, download.max_bytes) {
            Ok(()) => break,
            Err(AttemptError::Permanent(e)) => return Err(e),
            Err(AttemptError::Transient(why)) => match options.backoff.wait_after(attempt) {
                Some(wait) => {
                    log(&format!("attempt {attempt} failed ({why}); retrying in {wait:?}"));
                    std::thread::sleep(wait);
                }
                None => {
                    return Err(FetchError::Unreachable {
                        url: download.url.to_string(),
                        attempts: attempt,
                        last: why,
                    });
                }
            },
        }
    }
    let bytes = partial.have();
    let actual = partial.sha256();
    let archive = partial.finish().map_err(|e| FetchError::io(&archive, e))?;
    if actual != download.sha256.as_str() {
        // The next attempt downloads again: the file at the URL may be fixed by then.
        let _ = std::fs::remove_file(&archive);
        return Err(FetchError::Checksum {
            url: download.url.to_string(),
            expected: download.sha256.to_string(),
            actual,
        });
    }
    log(&format!("{bytes} bytes, SHA-256 {actual} as expected; unpacking"));

    let unpacked = work.join("unpacked");
    remove_dir_if_present(&unpacked)?;
    let limits =
        UnpackLimits { max_bytes: download.max_bytes.saturating_mul(4), ..UnpackLimits::default() };
    collm_bundle::unpack(&archive, &unpacked, limits)
        .map_err(|source| FetchError::Archive { url: download.url.to_string(), source })?;
    if let Err(source) = Bundle::open(&unpacked, parts) {
        let _ = std::fs::remove_dir_all(&unpacked);
        return Err(FetchError::Bundle { url: download.url.to_string(), source });
    }
    let marker = unpacked.join(MARKER);
    std::fs::write(&marker, download.sha256.as_str()).map_err(|e| FetchError::io(&marker, e))?;

    remove_dir_if_present(dir)?;
    std::fs::rename(&unpacked, dir).map_err(|e| FetchError::io(dir, e))?;
    if let Ok(parent_dir) = std::fs::File::open(parent) {
        let _ = parent_dir.sync_all();
    }
    let _ = std::fs::remove_file(&archive);
    log(&format!("bundle ready in {}", dir.display()));
    Ok(Fetched::Downloaded { bytes, attempts: attempt, resumed })
}

/// Whether `dir` holds a bundle fetched from this very archive that still verifies.
fn already_there(dir: &Path, download: &BundleDownload, parts: Parts) -> bool {
    let marker = std::fs::read_to_string(dir.join(MARKER)).unwrap_or_default();
    marker.trim() == download.sha256.as_str() && Bundle::open(dir, parts).is_ok()
}

/// Partial downloads of other archives (an earlier spec) only take space.
fn remove_stale(work: &Path, keep: &PathBuf) -> Result<(), FetchError> {
    for entry in std::fs::read_dir(work).map_err(|e| FetchError::io(work, e))? {
        let path = entry.map_err(|e| FetchError::io(work, e))?.path();
        if &path != keep && path.extension().is_some_and(|e| e == "partial") {
            std::fs::remove_file(&path).map_err(|e| FetchError::io(&path, e))?;
        }
    }
    Ok(())
}

fn remove_dir_if_present(dir: &Path) -> Result<(), FetchError> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(FetchError::io(dir, e)),
    }
}
