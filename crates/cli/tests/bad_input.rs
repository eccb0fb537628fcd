//! Bad input never panics: each mistake gives a one-line error naming the problem and a
//! non-zero exit.

mod common;

use std::path::Path;
use std::process::Output;

use collm_gguf::GgmlType;
use common::*;

/// Runs `collm export` of `gguf` with the given split into a scratch folder of `dir`.
fn export_into_scratch(gguf: &Path, split: &str, dir: &Path) -> Output {
    collm(&[
        "export",
        "--gguf",
        path_str(gguf),
        "--split-layer",
        split,
        "--out",
        path_str(&dir.join("o")),
    ])
}

#[test]
fn a_truncated_gguf_is_reported_as_truncated() {
    let dir = tempfile::tempdir().expect("tempdir");
    let gguf = tiny_gguf(dir.path(), GgmlType::F32, 1);
    let bytes = std::fs::read(&gguf).expect("read");
    let cut = dir.path().join("cut.gguf");
    std::fs::write(&cut, &bytes[..bytes.len() * 2 / 3]).expect("write");
    let out = export_into_scratch(&cut, "2", dir.path());
    assert_clean_failure(&out, "truncated");
}

#[test]
fn a_foreign_file_is_not_taken_for_a_gguf() {
    let dir = tempfile::tempdir().expect("tempdir");
    let foreign = dir.path().join("model.gguf");
    std::fs::write(&foreign, b"PK\x03\x04 this is a zip file, not a model").expect("write");
    let out = export_into_scratch(&foreign, "2", dir.path());
    assert_clean_failure(&out, "not a GGUF");
}

#[test]
fn a_split_beyond_the_model_is_rejected_before_any_work() {
    let dir = tempfile::tempdir().expect("tempdir");
    let gguf = tiny_gguf(dir.path(), GgmlType::F32, 1);
    let out = export_into_scratch(&gguf, "9", dir.path());
    assert_clean_failure(&out, "split-layer");
    let out = collm(&[
        "export",
        "--gguf",
        path_str(&gguf),
        "--split-layer",
        "2",
        "--exit-layers",
        "3",
        "--out",
        path_str(&dir.path().join("o")),
    ]);
    assert_clean_failure(&out, "exit layer 3");
}

/// Corrupts one byte in the middle of `path`.
fn flip_middle_byte(path: &Path) {
    let mut bytes = std::fs::read(path).expect("read");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(path, bytes).expect("write");
}

#[test]
fn a_tampered_bundle_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let gguf = tiny_gguf(dir.path(), GgmlType::F32, 1);
    let bundle = dir.path().join("bundle");
    export(&gguf, &bundle, &["--split-layer", "2"]);
    flip_middle_byte(&bundle.join("edge.onnx"));
    let out = collm(&[
        "generate",
        "--bundle",
        path_str(&bundle),
        "--prompt",
        "hi",
        "--mode",
        "standalone",
    ]);
    assert_clean_failure(&out, "does not match its manifest");
}

#[test]
fn a_tampered_or_missing_weight_file_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let gguf = tiny_gguf(dir.path(), GgmlType::F32, 1);
    let bundle = dir.path().join("bundle");
    export(&gguf, &bundle, &["--split-layer", "2"]);
    let data = bundle.join("edge.onnx.data");
    flip_middle_byte(&data);
    let standalone =
        ["generate", "--bundle", path_str(&bundle), "--prompt", "hi", "--mode", "standalone"];
    assert_clean_failure(&collm(&standalone), "does not match its manifest");
    std::fs::remove_file(&data).expect("remove");
    assert_clean_failure(&collm(&standalone), "edge.onnx.data");
}

#[test]
fn a_prompt_longer_than_the_context_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let gguf = tiny_gguf(dir.path(), GgmlType::F32, 1);
    let bundle = dir.path().join("bundle");
    export(&gguf, &bundle, &["--split-layer", "2"]);
    let long = "word ".repeat(2000);
    let out = collm(&["generate", "--bundle", path_str(&bundle), "--prompt", &long]);
    assert_clean_failure(&out, "context");
}

#[test]
fn unknown_modes_and_encodings_are_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out =
        collm(&["generate", "--bundle", path_str(dir.path()), "--prompt", "x", "--mode", "turbo"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("turbo"));
    let out = collm(&["generate", "--bundle", path_str(dir.path()), "--prompt", "x"]);
    assert_clean_failure(&out, "manifest.json");
}

/// Copies a GGUF, letting `edit` change metadata and retype tensors.
fn rewrite_gguf(
    src: &std::path::Path,
    dst: &std::path::Path,
    key: &str,
    value: collm_gguf::Value,
    retype: Option<(&str, GgmlType)>,
) {
    let file = collm_gguf::GgufFile::open(src).expect("opens");
    let mut w = collm_gguf::GgufWriter::new();
    for (k, v) in file.metadata().entries() {
        w.set(k.clone(), v.clone());
    }
    w.set(key, value);
    for t in file.tensors() {
        let bytes = file.tensor_bytes(t).expect("bytes").to_vec();
        match retype {
            Some((name, ty)) if t.name == name => {
                let n = ty.bytes_for(t.n_elements()).expect("size of the new type");
                w.add_raw_tensor(t.name.clone(), &t.dims, ty, vec![0u8; n as usize])
                    .expect("tensor");
            }
            _ => {
                w.add_raw_tensor(t.name.clone(), &t.dims, t.ty, bytes).expect("tensor");
            }
        }
    }
    w.write(dst).expect("written");
}

#[test]
fn an_unsupported_architecture_is_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let gguf = tiny_gguf(dir.path(), GgmlType::F32, 1);
    let other = dir.path().join("gpt2.gguf");
    rewrite_gguf(
        &gguf,
        &other,
        "general.architecture",
        collm_gguf::Value::String("gpt2".into()),
        None,
    );
    let out = export_into_scratch(&other, "2", dir.path());
    assert_clean_failure(&out, "unsupported architecture \"gpt2\"");
}

#[test]
fn an_unsupported_quantization_type_is_named_with_its_tensor() {
    let dir = tempfile::tempdir().expect("tempdir");
    let gguf = tiny_gguf(dir.path(), GgmlType::Q4_0, 1);
    let other = dir.path().join("q6k.gguf");
    let q6_k = GgmlType::from_id(14);
    rewrite_gguf(
        &gguf,
        &other,
        "general.name",
        collm_gguf::Value::String("q6k".into()),
        Some(("blk.1.ffn_down.weight", q6_k)),
    );
    let out = export_into_scratch(&other, "2", dir.path());
    assert_clean_failure(&out, "Q6_K");
    assert!(String::from_utf8_lossy(&out.stderr).contains("blk.1.ffn_down.weight"));
}

#[test]
fn a_missing_onnx_runtime_says_how_to_fetch_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let gguf = tiny_gguf(dir.path(), GgmlType::F32, 1);
    let bundle = dir.path().join("bundle");
    export(&gguf, &bundle, &["--split-layer", "2"]);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_collm"))
        .args(["generate", "--bundle", path_str(&bundle), "--prompt", "hi"])
        .env("ORT_DYLIB_PATH", dir.path().join("nowhere/libonnxruntime.so"))
        .output()
        .expect("runs");
    assert_clean_failure(&out, "tools/fetch-artifacts");
}
