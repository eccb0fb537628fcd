//! Opening a bundle: the manifest is parsed and every file the caller needs is checked against
//! its recorded SHA-256 before anything is loaded.

use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::manifest::{MANIFEST_FILE, Manifest, READABLE_FORMATS};
use crate::{Error, Result};

/// Which files of a bundle a process needs (edge nodes never fetch the cloud partition).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parts {
    Edge,
    Cloud,
    All,
}

/// A bundle whose manifest parsed and whose needed files match their checksums.
#[derive(Debug, Clone)]
pub struct Bundle {
    pub dir: PathBuf,
    pub manifest: Manifest,
}

impl Bundle {
    pub fn open(dir: &Path, parts: Parts) -> Result<Self> {
        let manifest = read_manifest(dir)?;
        for file in needed_files(&manifest, parts) {
            let expected = manifest.files.get(&file).ok_or_else(|| {
                Error::Manifest(format!("{MANIFEST_FILE} records no checksum for {file}"))
            })?;
            let path = dir.join(&file);
            if !path.exists() {
                return Err(Error::MissingFile { path });
            }
            let actual = sha256_file(&path)?;
            if &actual != expected {
                return Err(Error::Checksum { path, expected: expected.clone(), actual });
            }
        }
        Ok(Self { dir: dir.to_path_buf(), manifest })
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }
}

/// The files of `parts`: the tokenizer, and each partition's graph and data file.
pub(crate) fn needed_files(manifest: &Manifest, parts: Parts) -> Vec<String> {
    let mut partitions = Vec::new();
    if parts != Parts::Cloud {
        partitions.push(&manifest.edge);
    }
    if parts != Parts::Edge {
        partitions.push(&manifest.cloud);
        partitions.extend(manifest.cloud_kv.as_ref());
    }
    let mut needed = vec![manifest.tokenizer.file.clone()];
    for p in partitions {
        needed.push(p.file.clone());
        needed.extend(p.data_file.clone());
    }
    needed
}

pub fn read_manifest(dir: &Path) -> Result<Manifest> {
    let path = dir.join(MANIFEST_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let manifest: Manifest = serde_json::from_str(&text)
        .map_err(|e| Error::Manifest(format!("{}: {e}", path.display())))?;
    if !READABLE_FORMATS.contains(&manifest.format_version) {
        return Err(Error::Manifest(format!(
            "{} has format version {}, this build reads versions {} to {}",
            path.display(),
            manifest.format_version,
            READABLE_FORMATS.start(),
            READABLE_FORMATS.end()
        )));
    }
    Ok(manifest)
}

pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}
