//! Giving memory back to the system after a partition loads.
//!
//! Loading a partition parses its graph, reads its initializers and lets ONNX Runtime prepack
//! them; the intermediate buffers are freed, but glibc keeps freed heap pages that are not at the
//! top of the heap, and the process would hold them for its whole life.

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
