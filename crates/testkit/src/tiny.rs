//! The tiny seeded model as a bundle, made by the workspace's own `collm` binary: the model
//! most process-level tests run on.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Writes the tiny model (seed 7) and exports it into `dir/name` with the split after layer 2
/// and exit heads at layers 1 and 2; returns the bundle directory.
pub fn tiny_bundle(collm: &Path, dir: &Path, name: &str) -> PathBuf {
    let run = |args: &[&std::ffi::OsStr], what: &str| {
        let out = Command::new(collm).args(args).output().expect("collm runs");
        assert!(out.status.success(), "collm {what}: {}", String::from_utf8_lossy(&out.stderr));
    };
    let gguf = dir.join("tiny.gguf");
    run(
        &["tiny".as_ref(), "--out".as_ref(), gguf.as_os_str(), "--seed".as_ref(), "7".as_ref()],
        "tiny",
    );
    let bundle = dir.join(name);
    run(
        &[
            "export".as_ref(),
            "--gguf".as_ref(),
            gguf.as_os_str(),
            "--out".as_ref(),
            bundle.as_os_str(),
            "--split-layer".as_ref(),
            "2".as_ref(),
            "--exit-layers".as_ref(),
            "1,2".as_ref(),
        ],
        "export",
    );
    bundle
}
