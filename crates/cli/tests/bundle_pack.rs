//! `collm bundle pack`: what a user runs to put a bundle behind `bundle.url`.

mod common;

use collm_gguf::GgmlType;
use common::*;

/// The `sha256: "..."` value `collm bundle pack` printed.
fn printed_sha256(stdout: &str) -> String {
    stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("sha256: "))
        .map(|v| v.trim_matches('"').to_string())
        .unwrap_or_else(|| panic!("no sha256 line in {stdout:?}"))
}

#[test]
fn pack_prints_the_crd_values_and_the_same_bundle_packs_to_the_same_digest() {
    let dir = tempfile::tempdir().expect("tempdir");
    let gguf = tiny_gguf(dir.path(), GgmlType::F32, 7);
    let bundle = dir.path().join("bundle");
    export(&gguf, &bundle, &["--split-layer", "2"]);

    let a = dir.path().join("a.tar");
    let out = collm(&[
        "bundle",
        "pack",
        path_str(&bundle),
        "--out",
        path_str(&a),
        "--url",
        "http://models.local/a.tar",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(stdout.contains("bundle:\n  url: http://models.local/a.tar\n"), "{stdout}");
    let sha = printed_sha256(&stdout);
    assert_eq!(
        sha,
        collm_bundle::sha256_file(&a).expect("hash"),
        "the printed digest is the file's"
    );

    let b = dir.path().join("b.tar");
    let out = collm(&["bundle", "pack", path_str(&bundle), "--out", path_str(&b)]);
    assert!(out.status.success());
    assert_eq!(printed_sha256(&String::from_utf8_lossy(&out.stdout)), sha, "deterministic");

    let into = dir.path().join("unpacked");
    collm_bundle::unpack(&a, &into, Default::default()).expect("unpacks");
    collm_bundle::Bundle::open(&into, collm_bundle::Parts::All).expect("verifies");
}

#[test]
fn packing_a_missing_or_broken_bundle_fails_cleanly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = collm(&[
        "bundle",
        "pack",
        "/nonexistent/bundle",
        "--out",
        path_str(&dir.path().join("x.tar")),
    ]);
    assert_clean_failure(&out, "/nonexistent/bundle");
    assert!(!dir.path().join("x.tar").exists());
}
