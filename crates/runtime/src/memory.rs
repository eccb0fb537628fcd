//! Giving memory back to the system after a partition loads.
//!
//! Loading a partition parses its graph, reads its initializers and lets ONNX Runtime prepack
//! them; the intermediate buffers are freed, but glibc keeps freed heap pages that are not at the
//! top of the heap, and the process would hold them for its whole life.
//!
//! ONNX Runtime also memory-maps the partition's weight file (`*.onnx.data`), one private
//! mapping per initializer, and reads them while loading, so they end up resident. Most are
//! never read again: the quantized matrices were prepacked into the heap, and of the 8-bit
//! embedding table a decode step reads one row per token. Their pages stay counted against the
//! process until the kernel needs them. So after loading, every such mapping none of whose
//! pages was written is told to drop its pages (a later read faults the file's bytes back from
//! the page cache) and to read no further ahead than each fault needs. On SmolLM2's edge
//! partition this takes the serving edge agent from 221 to 207 MB after three answers.

use std::path::Path;

/// Returns free heap pages to the system (glibc's `malloc_trim`); a no-op elsewhere.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub fn release_freed_heap() {
    // SAFETY: malloc_trim takes no pointers and only releases memory malloc holds as free; it
    // is safe to call at any time from any thread.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn release_freed_heap() {}

/// A mapping's address range, as `/proc/<pid>/smaps` gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileMapping {
    start: usize,
    end: usize,
}

/// The private, readable mappings of `file` in a `/proc/<pid>/smaps` listing whose pages all
/// still hold the file's bytes (no anonymous, copied-on-write page): dropping their pages loses
/// nothing. ONNX Runtime maps each initializer private and writable but never writes to it;
/// a shared mapping, or one that was written to, is left alone.
fn releasable_mappings(smaps: &str, file: &Path) -> Vec<FileMapping> {
    let mut found = vec![];
    // The mapping whose fields are being read, if it is one of `file`'s candidates.
    let mut current: Option<FileMapping> = None;
    for line in smaps.lines() {
        if let Some((range, perms, path)) = mapping_header(line) {
            let private_readable = perms.starts_with('r') && perms.ends_with('p');
            current = (private_readable && Path::new(path) == file).then_some(range);
        } else if let Some(anon) = line.strip_prefix("Anonymous:") {
            let untouched = anon.trim().trim_end_matches("kB").trim() == "0";
            found.extend(current.take().filter(|_| untouched));
        }
    }
    found
}

/// A mapping's first line, `start-end perms offset dev inode pathname` (the pathname may be
/// empty or contain spaces): its range, permissions and pathname.
fn mapping_header(line: &str) -> Option<(FileMapping, &str, &str)> {
    let mut fields = line.splitn(6, ' ');
    let (range, perms) = (fields.next()?, fields.next()?);
    let (start, end) = range.split_once('-')?;
    let range = FileMapping {
        start: usize::from_str_radix(start, 16).ok()?,
        end: usize::from_str_radix(end, 16).ok()?,
    };
    let path = fields.nth(3).unwrap_or("").trim_start();
    (perms.len() == 4).then_some((range, perms, path))
}

/// Drops the resident pages of this process's unwritten private mappings of `file` and turns
/// off read-ahead for later faults. Returns the bytes of address space advised; 0 where the
/// file is not mapped or the platform has no `/proc/self/smaps`.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
pub fn release_mapped_file(file: &Path) -> usize {
    let Ok(file) = file.canonicalize() else { return 0 };
    let Ok(smaps) = std::fs::read_to_string("/proc/self/smaps") else { return 0 };
    let mut advised = 0;
    for m in releasable_mappings(&smaps, &file) {
        let (addr, len) = (m.start as *mut libc::c_void, m.end - m.start);
        // SAFETY: the range is a whole private mapping of this process none of whose pages was
        // written (ONNX Runtime does not write to initializers once the session is built), so
        // every page holds the file's bytes: MADV_DONTNEED drops them from this process (a
        // later read faults the same bytes back from the page cache) and MADV_RANDOM only
        // changes read-ahead. Neither unmaps anything nor changes what a read returns.
        let ok = unsafe {
            libc::madvise(addr, len, libc::MADV_RANDOM) == 0
                && libc::madvise(addr, len, libc::MADV_DONTNEED) == 0
        };
        if ok {
            advised += len;
        }
    }
    advised
}

#[cfg(not(target_os = "linux"))]
pub fn release_mapped_file(_file: &Path) -> usize {
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_unwritten_private_mappings_of_the_file_are_releasable() {
        let smaps = "\
55d0c0a00000-55d0c0a21000 rw-p 00000000 00:00 0                          [heap]
Rss:                 132 kB
Anonymous:           132 kB
7f1a00000000-7f1a02000000 rw-p 00000000 08:01 1234                       /b/edge.onnx.data
Rss:                1024 kB
Anonymous:             0 kB
7f1a02000000-7f1a02001000 rw-p 00000000 08:01 1234                       /b/edge.onnx.data
Rss:                   4 kB
Anonymous:             4 kB
7f1a03000000-7f1a03001000 r--s 00000000 08:01 1234                       /b/edge.onnx.data
Rss:                   4 kB
Anonymous:             0 kB
7f1a04000000-7f1a04002000 r--p 00000000 08:01 1235                       /b/cloud.onnx.data
Anonymous:             0 kB
7f1a05000000-7f1a05003000 r--p 00000000 08:01 1236                       /b/my weights.data
Rss:                   8 kB
Anonymous:             0 kB
";
        assert_eq!(
            releasable_mappings(smaps, Path::new("/b/edge.onnx.data")),
            vec![FileMapping { start: 0x7f1a_0000_0000, end: 0x7f1a_0200_0000 }],
            "not the written one (anonymous pages), not the shared one"
        );
        assert_eq!(
            releasable_mappings(smaps, Path::new("/b/my weights.data")),
            vec![FileMapping { start: 0x7f1a_0500_0000, end: 0x7f1a_0500_3000 }],
            "a path with a space"
        );
        assert!(releasable_mappings(smaps, Path::new("/b/other.data")).is_empty());
    }

    #[test]
    fn a_released_mapping_holds_no_pages_and_reads_the_same_bytes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("weights.data");
        let bytes: Vec<u8> = (0..4u32 << 20).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &bytes).expect("write");
        let file = std::fs::File::open(&path).expect("open");
        let map = private_map(&file, bytes.len());
        assert_eq!(&map[..], &bytes[..], "mapped and read");
        let start = map.as_ptr() as usize;
        assert!(resident_kb(start) >= 4 << 10, "read in full, the mapping is resident");
        assert!(release_mapped_file(&path) >= bytes.len(), "the mapping was found and advised");
        assert!(resident_kb(start) < 64, "released: {} KB still resident", resident_kb(start));
        assert_eq!(&map[..], &bytes[..], "every byte reads the same after its page was dropped");
    }

    #[test]
    fn a_mapping_written_to_is_not_released() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("weights.data");
        std::fs::write(&path, vec![7u8; 1 << 20]).expect("write");
        let file = std::fs::File::open(&path).expect("open");
        let map = private_map(&file, 1 << 20);
        map[4096] = 42;
        assert_eq!(release_mapped_file(&path), 0, "a copied-on-write page makes it unreleasable");
        assert_eq!(map[4096], 42, "the write is kept");
        assert_eq!(map[0], 7);
    }

    /// Resident kilobytes of the mapping starting at `start` (`/proc/self/smaps`).
    fn resident_kb(start: usize) -> u64 {
        let smaps = std::fs::read_to_string("/proc/self/smaps").expect("smaps");
        let header = format!("{start:x}-");
        let mut lines = smaps.lines().skip_while(|l| !l.starts_with(&header));
        lines
            .find_map(|l| l.strip_prefix("Rss:"))
            .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
            .expect("the mapping's Rss line")
    }

    /// A private, writable mapping of `file`, as ONNX Runtime makes of each initializer in a
    /// weight file.
    #[allow(unsafe_code)]
    fn private_map(file: &std::fs::File, len: usize) -> &'static mut [u8] {
        use std::os::fd::AsRawFd;
        // SAFETY: a fresh private mapping of an open file of at least `len` bytes, owned by the
        // one caller; it is never unmapped (the test process ends first).
        unsafe {
            let p = libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE,
                file.as_raw_fd(),
                0,
            );
            assert_ne!(p, libc::MAP_FAILED, "mmap");
            std::slice::from_raw_parts_mut(p.cast::<u8>(), len)
        }
    }
}
