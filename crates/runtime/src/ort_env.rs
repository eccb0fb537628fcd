//! Finding and initialising the ONNX Runtime shared library (loaded at run time, never
//! downloaded by the build): `ORT_DYLIB_PATH`, else the artifact cache.

use std::path::PathBuf;
use std::sync::OnceLock;

use ort::environment::{Environment, GlobalThreadPoolOptions};

use crate::{Error, Result};

/// File name of the library inside `$COLLM_CACHE/ort/`.
pub const ORT_LIBRARY: &str = "libonnxruntime.so.1.32.0";

/// The artifact cache: `$COLLM_CACHE`, default `~/.cache/ce-collm`.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("COLLM_CACHE") {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."));
    home.join(".cache").join("ce-collm")
}

/// Where the ONNX Runtime library is expected.
pub fn library_path() -> PathBuf {
    std::env::var_os("ORT_DYLIB_PATH")
        .map(PathBuf::from)
        .unwrap_or_else(|| cache_dir().join("ort").join(ORT_LIBRARY))
}

static ENV: OnceLock<std::result::Result<Environment, String>> = OnceLock::new();

/// The process-wide ONNX Runtime environment, initialised on first use.
pub fn environment() -> Result<&'static Environment> {
    ENV.get_or_init(|| {
        let path = library_path();
        if !path.exists() {
            return Err(format!(
                "ONNX Runtime library not found at {}: run tools/fetch-artifacts (or set ORT_DYLIB_PATH)",
                path.display()
            ));
        }
        // One thread pool for every session of the process: the edge and cloud partitions run
        // one after the other, and separate pools would spin against each other for the cores.
        // (The options call into the library, so it has to be loaded first.)
        let builder = ort::init_from(&path)
            .map_err(|e| format!("cannot load ONNX Runtime from {}: {e}", path.display()))?;
        let (threads, spin) = (intra_threads(), spinning());
        // Said once at startup: in a pod, what the CPU limit and COLLM_SPIN made of the pool.
        tracing::info!(threads, spin, "ONNX Runtime thread pool");
        let pool = GlobalThreadPoolOptions::default()
            .with_intra_threads(threads)
            .and_then(|p| p.with_spin_control(spin))
            .map_err(|e| format!("thread pool: {e}"))?;
        builder
            .with_name("ce-collm")
            .with_global_thread_pool(pool)
            .build()
            .map_err(|e| format!("cannot create the ONNX Runtime environment: {e}"))
    })
    .as_ref()
    .map_err(|e| Error::Runtime(e.clone()))
}

/// ONNX Runtime's build description (release branch and commit) of the loaded library.
pub fn build_info() -> String {
    match environment() {
        Ok(_) => ort::info().to_string(),
        Err(e) => e.to_string(),
    }
}

/// Whether idle pool threads spin waiting for work (`COLLM_SPIN=0` turns it off). Spinning
/// shortens each step when the process has the cores to itself; when an edge agent and a cloud
/// worker share one machine (the local stack), their spinning threads steal each other's cores.
pub fn spinning() -> bool {
    std::env::var("COLLM_SPIN").map_or(true, |v| v != "0")
}

/// Intra-op threads per session: `COLLM_THREADS`, default the cores the process may use (its
/// container's CPU limit, else all cores; see [`crate::cpu_limit`]).
pub fn intra_threads() -> usize {
    std::env::var("COLLM_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(crate::cpu_limit::usable_cores)
}
