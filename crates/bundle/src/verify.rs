//! Opening a bundle: the manifest is parsed and every file the caller needs is checked against
//! its recorded SHA-256 before anything is loaded.

use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::manifest::{FORMAT_VERSION, MANIFEST_FILE, Manifest};
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
        let mut needed = vec![manifest.tokenizer.file.clone()];
        if parts != Parts::Cloud {
            needed.push(manifest.edge.file.clone());
        }
        if parts != Parts::Edge {
            needed.push(manifest.cloud.file.clone());
            needed.extend(manifest.cloud_kv.as_ref().map(|p| p.file.clone()));
        }
        for file in needed {
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

pub fn read_manifest(dir: &Path) -> Result<Manifest> {
    let path = dir.join(MANIFEST_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let manifest: Manifest = serde_json::from_str(&text)
        .map_err(|e| Error::Manifest(format!("{}: {e}", path.display())))?;
    if manifest.format_version != FORMAT_VERSION {
        return Err(Error::Manifest(format!(
            "{} has format version {}, this build reads version {FORMAT_VERSION}",
            path.display(),
            manifest.format_version
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
