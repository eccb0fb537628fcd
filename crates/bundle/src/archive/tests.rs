use std::path::{Path, PathBuf};

use super::*;
use crate::{ExportPlan, GraphOptions, WeightFormat, export};

fn tiny_bundle(dir: &Path) -> PathBuf {
    let ckpt = collm_checkpoint::tiny::checkpoint(&Default::default(), 7).expect("tiny model");
    let plan = ExportPlan {
        split_layer: 2,
        exit_layers: vec![2],
        weights: WeightFormat::F32,
        graph: GraphOptions::default(),
    };
    let out = dir.join("tiny");
    export(ckpt, &plan, &out, &mut |_| {}).expect("exports");
    out
}

/// One entry of a hand-made archive: its name, type and content.
type RawEntry<'a> = (&'a str, tar::EntryType, &'a [u8]);

/// A tar archive built entry by entry, for archives `pack` would never write.
fn raw_tar(path: &Path, entries: &[RawEntry<'_>]) {
    let mut tar = tar::Builder::new(std::fs::File::create(path).expect("create"));
    for (name, kind, data) in entries {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(*kind);
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        // set_path refuses `..`; write the name bytes directly, as a hostile archive would.
        let bytes = name.as_bytes();
        header.as_old_mut().name[..bytes.len()].copy_from_slice(bytes);
        if *kind == tar::EntryType::Symlink {
            header.set_link_name("/etc/passwd").expect("link name");
        }
        header.set_cksum();
        tar.append(&header, *data).expect("append");
    }
    tar.finish().expect("finish");
}

#[test]
fn packing_is_deterministic_and_round_trips_into_a_bundle_that_opens() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bundle = tiny_bundle(dir.path());
    let first = pack(&bundle, &dir.path().join("a.tar")).expect("packs");
    // Newer timestamps and another directory name change nothing in the archive.
    std::thread::sleep(std::time::Duration::from_millis(20));
    let copy = dir.path().join("copy");
    std::fs::create_dir(&copy).expect("mkdir");
    for f in &first.files {
        std::fs::copy(bundle.join(f), copy.join(f)).expect("copy");
    }
    let second = pack(&copy, &dir.path().join("b.tar")).expect("packs");
    assert_eq!(first.sha256, second.sha256);
    assert_eq!(
        std::fs::read(dir.path().join("a.tar")).expect("a"),
        std::fs::read(dir.path().join("b.tar")).expect("b")
    );
    assert_eq!(first.files[0], "manifest.json");
    assert_eq!(first.sha256, crate::sha256_file(&dir.path().join("a.tar")).expect("hash"));
    assert_eq!(first.bytes, std::fs::metadata(dir.path().join("a.tar")).expect("meta").len());

    let into = dir.path().join("unpacked");
    let mut names =
        unpack(&dir.path().join("a.tar"), &into, UnpackLimits::default()).expect("unpacks");
    names.sort();
    let mut expected = first.files.clone();
    expected.sort();
    assert_eq!(names, expected);
    Bundle::open(&into, Parts::All).expect("the unpacked bundle verifies");
}

#[test]
fn a_corrupt_bundle_is_not_packed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bundle = tiny_bundle(dir.path());
    std::fs::write(bundle.join("tokenizer.json"), "{}").expect("corrupt");
    let err = pack(&bundle, &dir.path().join("b.tar")).expect_err("refused").to_string();
    assert!(err.contains("tokenizer.json") && err.contains("does not match"), "{err}");
    assert!(!dir.path().join("b.tar").exists(), "no archive is left behind");
}

#[test]
fn archives_made_with_tar_and_gzip_unpack_too() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bundle = tiny_bundle(dir.path());
    // `tar -C parent -czf b.tgz tiny`: entries under one directory, gzip-compressed.
    let tgz = dir.path().join("b.tgz");
    {
        let gz = flate2::write::GzEncoder::new(
            std::fs::File::create(&tgz).expect("create"),
            flate2::Compression::fast(),
        );
        let mut tar = tar::Builder::new(gz);
        tar.append_dir_all("tiny", &bundle).expect("append");
        tar.into_inner().expect("tar").finish().expect("gzip");
    }
    let into = dir.path().join("out");
    unpack(&tgz, &into, UnpackLimits::default()).expect("unpacks");
    Bundle::open(&into, Parts::All).expect("verifies");
}

#[test]
fn unsafe_or_foreign_archives_are_refused_and_leave_nothing_behind() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cases: Vec<(&str, Vec<RawEntry<'_>>, &str)> = vec![
        ("climb", vec![("../evil", tar::EntryType::Regular, b"x")], "climbs out"),
        ("absolute", vec![("/tmp/evil", tar::EntryType::Regular, b"x")], "absolute"),
        ("symlink", vec![("manifest.json", tar::EntryType::Symlink, b"")], "links"),
        ("device", vec![("dev", tar::EntryType::Char, b"")], "only regular files"),
        ("nested", vec![("a/b/manifest.json", tar::EntryType::Regular, b"{}")], "flat"),
        ("hidden", vec![(".profile", tar::EntryType::Regular, b"x")], "hidden"),
        ("no manifest", vec![("edge.onnx", tar::EntryType::Regular, b"x")], "no manifest.json"),
        (
            "two places",
            vec![
                ("a/manifest.json", tar::EntryType::Regular, b"{}"),
                ("b/edge.onnx", tar::EntryType::Regular, b"x"),
            ],
            "more than one place",
        ),
        (
            "twice",
            vec![
                ("manifest.json", tar::EntryType::Regular, b"{}"),
                ("./manifest.json", tar::EntryType::Regular, b"{}"),
            ],
            "two entries",
        ),
    ];
    for (name, entries, expected) in cases {
        let archive = dir.path().join(format!("{name}.tar"));
        raw_tar(&archive, &entries);
        let into = dir.path().join(format!("{name}-out"));
        let err = unpack(&archive, &into, UnpackLimits::default()).expect_err(name).to_string();
        assert!(err.contains(expected), "{name}: {err}");
        assert!(!into.exists(), "{name}: the half-unpacked directory is removed");
    }
    assert!(!dir.path().parent().expect("parent").join("evil").exists());
}

#[test]
fn limits_on_files_and_bytes_hold() {
    let dir = tempfile::tempdir().expect("tempdir");
    let archive = dir.path().join("big.tar");
    let big = vec![0u8; 4096];
    raw_tar(
        &archive,
        &[("manifest.json", tar::EntryType::Regular, b"{}"), ("w", tar::EntryType::Regular, &big)],
    );
    let err =
        unpack(&archive, &dir.path().join("a"), UnpackLimits { max_files: 64, max_bytes: 1000 })
            .expect_err("too big")
            .to_string();
    assert!(err.contains("more than 1000 bytes"), "{err}");
    let err =
        unpack(&archive, &dir.path().join("b"), UnpackLimits { max_files: 1, max_bytes: 1 << 20 })
            .expect_err("too many")
            .to_string();
    assert!(err.contains("more than 1 files"), "{err}");
    unpack(&archive, &dir.path().join("c"), UnpackLimits::default()).expect("within the limits");
}

#[test]
fn truncated_or_garbage_archives_are_named_as_such() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bundle = tiny_bundle(dir.path());
    let full = dir.path().join("full.tar");
    pack(&bundle, &full).expect("packs");
    let bytes = std::fs::read(&full).expect("read");
    let cut = dir.path().join("cut.tar");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).expect("write");
    let err =
        unpack(&cut, &dir.path().join("x"), UnpackLimits::default()).expect_err("cut").to_string();
    assert!(err.contains("truncated") || err.contains("not a readable tar"), "{err}");
    let junk = dir.path().join("junk.tar");
    std::fs::write(&junk, vec![7u8; 2048]).expect("write");
    let err = unpack(&junk, &dir.path().join("y"), UnpackLimits::default())
        .expect_err("junk")
        .to_string();
    assert!(err.contains("not a readable tar") || err.contains("no manifest.json"), "{err}");
}
