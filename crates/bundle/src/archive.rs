//! The bundle as one file: a tar archive that pods download (`bundle.url`) and verify against the
//! SHA-256 the CollabModel names before anything in it is unpacked.
//!
//! [`pack`] writes a deterministic archive: the bundle's files (flat, sorted by name, the
//! manifest first) with zero timestamps and owners and mode 0644, so packing the same bundle twice
//! gives the same bytes and the same SHA-256. It is plain tar: the weights are quantized and
//! barely compress, and an uncompressed archive is hashed and unpacked in one pass.
//!
//! [`unpack`] accepts that archive, `tar -C DIR -cf` archives of a bundle directory (entries
//! `./name` or `DIR/name`) and gzip-compressed ones. It refuses anything but regular files of a
//! flat bundle: no paths that climb out (`..`, absolute), no links, no devices, no nested
//! directories, and it stops at a bounded number of files and bytes, so a hostile or corrupt
//! archive cannot write outside the directory it was given or fill the disk.

use std::collections::BTreeSet;
use std::io::{BufReader, Read, Write};
use std::path::{Component, Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::manifest::MANIFEST_FILE;
use crate::verify::{Bundle, Parts};
use crate::{Error, Result};

/// What [`pack`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packed {
    /// Lower-case hex SHA-256 of the archive: the CollabModel's `bundle.sha256`.
    pub sha256: String,
    /// Size of the archive in bytes.
    pub bytes: u64,
    /// The files in the archive, in archive order.
    pub files: Vec<String>,
}

/// Packs the bundle in `dir` into the tar archive `out` (written next to it, then renamed, so
/// `out` never holds half an archive). The bundle is verified first: a corrupt bundle is never
/// packed.
pub fn pack(dir: &Path, out: &Path) -> Result<Packed> {
    Bundle::open(dir, Parts::All)?;
    let files = bundle_files(dir)?;
    let partial = out.with_file_name(format!(
        ".{}.partial",
        out.file_name().map_or("bundle.tar".into(), |n| n.to_string_lossy())
    ));
    let written = write_archive(dir, &files, &partial);
    let (sha256, bytes) = match written {
        Ok(done) => done,
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            return Err(e);
        }
    };
    std::fs::rename(&partial, out).map_err(|e| Error::io(out, e))?;
    Ok(Packed { sha256, bytes, files })
}

/// The bundle's top-level regular files, manifest first, the rest by name. Hidden files (an
/// interrupted export's `.name.partial`) are left out; links and directories are refused, since
/// a bundle is flat and an archive must not depend on what a link points to.
fn bundle_files(dir: &Path) -> Result<Vec<String>> {
    let mut names = BTreeSet::new();
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        let kind = entry.file_type().map_err(|e| Error::io(&entry.path(), e))?;
        if !kind.is_file() {
            return Err(Error::Archive(format!(
                "{} is not a regular file: a bundle directory holds only files",
                entry.path().display()
            )));
        }
        names.insert(name);
    }
    let mut files: Vec<String> = names.into_iter().filter(|n| n != MANIFEST_FILE).collect();
    files.insert(0, MANIFEST_FILE.to_string());
    Ok(files)
}

/// Writes the archive while hashing what is written.
fn write_archive(dir: &Path, files: &[String], out: &Path) -> Result<(String, u64)> {
    let file = std::fs::File::create(out).map_err(|e| Error::io(out, e))?;
    let mut hashed =
        HashingWriter { inner: std::io::BufWriter::new(file), hasher: Sha256::new(), bytes: 0 };
    {
        let mut tar = tar::Builder::new(&mut hashed);
        tar.mode(tar::HeaderMode::Deterministic);
        for name in files {
            let path = dir.join(name);
            let mut source = std::fs::File::open(&path).map_err(|e| Error::io(&path, e))?;
            let len = source.metadata().map_err(|e| Error::io(&path, e))?.len();
            let mut header = tar::Header::new_ustar();
            header.set_entry_type(tar::EntryType::Regular);
            header.set_size(len);
            header.set_mode(0o644);
            header.set_mtime(0);
            header.set_uid(0);
            header.set_gid(0);
            tar.append_data(&mut header, name, &mut source).map_err(|e| Error::io(&path, e))?;
        }
        tar.finish().map_err(|e| Error::io(out, e))?;
    }
    hashed.inner.flush().map_err(|e| Error::io(out, e))?;
    hashed.inner.get_ref().sync_all().map_err(|e| Error::io(out, e))?;
    Ok((hex::encode(hashed.hasher.finalize()), hashed.bytes))
}

struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    bytes: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Bounds on what one archive may unpack into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnpackLimits {
    /// Most files (a bundle has about six).
    pub max_files: usize,
    /// Most bytes of all files together.
    pub max_bytes: u64,
}

impl Default for UnpackLimits {
    fn default() -> Self {
        Self { max_files: 64, max_bytes: 64 << 30 }
    }
}

/// Unpacks the bundle archive at `archive` into the directory `into`, which must not exist yet
/// (it is created; on failure it is removed again). Returns the names of the files written.
pub fn unpack(archive: &Path, into: &Path, limits: UnpackLimits) -> Result<Vec<String>> {
    if into.exists() {
        return Err(Error::Archive(format!("{} exists already", into.display())));
    }
    std::fs::create_dir_all(into).map_err(|e| Error::io(into, e))?;
    let result = unpack_into(archive, into, limits);
    if result.is_err() {
        let _ = std::fs::remove_dir_all(into);
    }
    result
}

fn unpack_into(archive: &Path, into: &Path, limits: UnpackLimits) -> Result<Vec<String>> {
    let mut file = BufReader::new(std::fs::File::open(archive).map_err(|e| Error::io(archive, e))?);
    let gzip = {
        use std::io::BufRead;
        let head = file.fill_buf().map_err(|e| Error::io(archive, e))?;
        head.starts_with(&[0x1f, 0x8b])
    };
    let reader: Box<dyn Read> =
        if gzip { Box::new(flate2::read::GzDecoder::new(file)) } else { Box::new(file) };
    let mut tar = tar::Archive::new(reader);
    let corrupt = |e: std::io::Error| {
        Error::Archive(format!("{} is not a readable tar archive: {e}", archive.display()))
    };

    let mut entries: Vec<(PathBuf, PathBuf)> = Vec::new(); // (name in archive, file written)
    let mut total: u64 = 0;
    for entry in tar.entries().map_err(corrupt)? {
        let mut entry = entry.map_err(corrupt)?;
        let raw = entry.path().map_err(corrupt)?.into_owned();
        let kind = entry.header().entry_type();
        let shown = raw.display().to_string();
        let unsafe_entry =
            |reason: &str| Error::UnsafeEntry { entry: shown.clone(), reason: reason.to_string() };
        let parts = plain_components(&raw)
            .ok_or_else(|| unsafe_entry("its path is absolute or climbs out of the bundle (..)"))?;
        match kind {
            tar::EntryType::Directory => {
                if parts.len() > 1 {
                    return Err(unsafe_entry("a bundle is flat: no nested directories"));
                }
                continue;
            }
            // Pax and GNU extension headers describe the next entry; the tar crate applies them.
            tar::EntryType::XGlobalHeader | tar::EntryType::XHeader => continue,
            tar::EntryType::Regular | tar::EntryType::Continuous => {}
            tar::EntryType::Symlink | tar::EntryType::Link => {
                return Err(unsafe_entry("links are not allowed in a bundle archive"));
            }
            _ => return Err(unsafe_entry("only regular files are allowed in a bundle archive")),
        }
        if parts.is_empty() || parts.len() > 2 {
            return Err(unsafe_entry("a bundle is flat: files at the top or in one directory"));
        }
        if entries.len() >= limits.max_files {
            return Err(Error::Archive(format!(
                "{} holds more than {} files: not a bundle",
                archive.display(),
                limits.max_files
            )));
        }
        let name = parts.last().cloned().unwrap_or_default();
        if name.starts_with('.') {
            return Err(unsafe_entry("hidden files are not part of a bundle"));
        }
        let size = entry.header().size().map_err(corrupt)?;
        total = total.saturating_add(size);
        if total > limits.max_bytes {
            return Err(Error::Archive(format!(
                "{} unpacks to more than {} bytes: refused",
                archive.display(),
                limits.max_bytes
            )));
        }
        let dest = into.join(&name);
        if entries.iter().any(|(_, written)| *written == dest) {
            return Err(unsafe_entry("two entries have this file name"));
        }
        // create_new: never follows or replaces anything already there.
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&dest)
            .map_err(|e| Error::io(&dest, e))?;
        let copied = std::io::copy(&mut (&mut entry).take(size), &mut out).map_err(corrupt)?;
        if copied != size {
            return Err(Error::Archive(format!(
                "{} ends inside {shown}: the archive is truncated",
                archive.display()
            )));
        }
        out.sync_all().map_err(|e| Error::io(&dest, e))?;
        entries.push((PathBuf::from(&parts.join("/")), dest));
    }

    let prefixes: BTreeSet<String> = entries
        .iter()
        .filter_map(|(name, _)| {
            let parts: Vec<_> = name.components().collect();
            (parts.len() == 2).then(|| parts[0].as_os_str().to_string_lossy().into_owned())
        })
        .collect();
    let at_top = entries.iter().any(|(name, _)| name.components().count() == 1);
    if prefixes.len() > 1 || (at_top && !prefixes.is_empty()) {
        return Err(Error::Archive(format!(
            "{} holds files in more than one place: a bundle archive holds one flat directory",
            archive.display()
        )));
    }
    if !into.join(MANIFEST_FILE).is_file() {
        return Err(Error::Archive(format!(
            "{} has no {MANIFEST_FILE}: not a bundle archive (pack one with `collm bundle pack`)",
            archive.display()
        )));
    }
    Ok(entries
        .into_iter()
        .filter_map(|(_, dest)| dest.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect())
}

/// The normal components of `path` (a leading `./` dropped), or `None` when it is absolute or
/// has `..` in it.
fn plain_components(path: &Path) -> Option<Vec<String>> {
    let mut parts = Vec::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            Component::Normal(part) => parts.push(part.to_str()?.to_string()),
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(parts)
}

#[cfg(test)]
mod tests;
