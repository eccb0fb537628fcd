//! File-level behaviour: round trips through the writer and rejection of damaged files.

use crate::*;

fn sample_values(n: usize, seed: u32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(2_654_435_761).max(1);
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            (s as f32 / u32::MAX as f32 - 0.5) * 0.4
        })
        .collect()
}

/// Every type the writer encodes, with the largest error its round trip may show on values in
/// ±0.2.
const SAMPLE_TYPES: [GgmlType; 12] = [
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::Q8_0,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::BF16,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::IQ4_NL,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
];
const SAMPLE_TOLERANCE: [f32; 12] =
    [0.0, 2e-4, 2e-3, 0.03, 0.02, 1e-3, 0.015, 0.01, 0.04, 0.03, 0.015, 0.01];

fn sample_writer() -> GgufWriter {
    let mut w = GgufWriter::new();
    w.set("general.architecture", Value::String("llama".into()))
        .set("llama.block_count", Value::U32(4))
        .set("llama.rope.freq_base", Value::F32(10000.0))
        .set("flag", Value::Bool(true))
        .set("big", Value::U64(1 << 40))
        .set("neg", Value::I64(-3))
        .set("f64", Value::F64(0.25))
        .set("small", Value::I8(-2))
        .set("tokens", Value::string_array(["a", "b", "<|x|>"]))
        .set("types", Value::i32_array([1, 1, 3]))
        .set("scores", Value::f32_array([0.5, -1.0]))
        .set("empty", Value::Array(ValueType::U8, vec![]));
    for (i, ty) in SAMPLE_TYPES.into_iter().enumerate() {
        let v = sample_values(256 * 3, i as u32 + 1);
        w.add_tensor(format!("blk.{i}.w"), &[256, 3], ty, &v).unwrap();
    }
    w.add_tensor("norm", &[7], GgmlType::F32, &[1.0; 7]).unwrap();
    w
}

#[test]
fn written_file_reads_back_with_identical_metadata_and_values() {
    let w = sample_writer();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.gguf");
    w.write(&path).unwrap();
    let f = GgufFile::open(&path).unwrap();

    assert_eq!(f.version(), 3);
    assert_eq!(f.metadata(), w.metadata());
    let md = f.metadata();
    assert_eq!(md.get_str("general.architecture").unwrap(), "llama");
    assert_eq!(md.get_u32("llama.block_count").unwrap(), 4);
    assert_eq!(md.get_f32("llama.rope.freq_base").unwrap(), 10000.0);
    assert_eq!(md.get_str_array("tokens").unwrap(), ["a", "b", "<|x|>"]);
    assert_eq!(md.get_i32_array("types").unwrap(), [1, 1, 3]);
    assert_eq!(md.get_u64("big").unwrap(), 1 << 40);
    assert!(md.get_bool("flag").unwrap());

    for (i, tol) in SAMPLE_TOLERANCE.into_iter().enumerate() {
        let name = format!("blk.{i}.w");
        let info = f.tensor(&name).unwrap();
        assert_eq!(info.dims, [256, 3]);
        assert_eq!(info.ty, SAMPLE_TYPES[i]);
        assert_eq!(info.offset % 32, 0);
        let want = sample_values(256 * 3, i as u32 + 1);
        let got = f.dequantize(&name).unwrap();
        let err = want.iter().zip(&got).fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(err <= tol, "{name} ({}): max error {err}", info.ty);
    }
    assert_eq!(f.dequantize("norm").unwrap(), vec![1.0; 7]);
}

#[test]
fn custom_alignment_is_honoured() {
    let mut w = sample_writer();
    w.set("general.alignment", Value::U32(64));
    let f = GgufFile::from_bytes(w.to_bytes().unwrap()).unwrap();
    assert_eq!(f.alignment(), 64);
    assert!(f.tensors().iter().all(|t| t.offset % 64 == 0));
    assert_eq!(f.dequantize("norm").unwrap(), vec![1.0; 7]);
}

#[test]
fn metadata_type_mismatches_and_missing_keys_name_the_key() {
    let f = GgufFile::from_bytes(sample_writer().to_bytes().unwrap()).unwrap();
    let md = f.metadata();
    let e = md.get_u32("general.architecture").unwrap_err().to_string();
    assert_eq!(e, "GGUF metadata key general.architecture is string, expected u32");
    let e = md.get_str("nope").unwrap_err().to_string();
    assert_eq!(e, "GGUF metadata key nope is missing");
    assert_eq!(md.opt("nope", Metadata::get_u32).unwrap(), None);
    assert!(md.get_u32("neg").is_err(), "negative value must not coerce to u32");
    assert_eq!(md.get_i64("small").unwrap(), -2);
}

#[test]
fn foreign_file_is_rejected_by_magic() {
    let e = GgufFile::from_bytes(b"PK\x03\x04rest of a zip".to_vec()).unwrap_err();
    assert!(e.to_string().starts_with("not a GGUF file (magic"), "{e}");
    let e = GgufFile::from_bytes(vec![]).unwrap_err();
    assert!(e.to_string().starts_with("not a GGUF file"), "{e}");
}

#[test]
fn unsupported_version_is_rejected() {
    let mut bytes = sample_writer().to_bytes().unwrap();
    bytes[4] = 1;
    let e = GgufFile::from_bytes(bytes).unwrap_err();
    assert_eq!(e.to_string(), "unsupported GGUF version 1 (only 2 and 3 are supported)");
}

#[test]
fn truncated_tensor_data_names_the_tensor_and_byte_range() {
    let bytes = sample_writer().to_bytes().unwrap();
    let cut = bytes.len() - 40; // inside the last tensor ("norm", 28 bytes + padding)
    let e = GgufFile::from_bytes(bytes[..cut].to_vec()).unwrap_err().to_string();
    assert!(e.starts_with("truncated GGUF file: tensor norm needs bytes "), "{e}");
    assert!(e.ends_with(&format!("but the file has {cut}")), "{e}");
}

#[test]
fn every_truncation_is_an_error_not_a_panic() {
    let bytes = sample_writer().to_bytes().unwrap();
    let last_tensor_end = bytes.len() - (32 - 28);
    for cut in 0..last_tensor_end {
        assert!(GgufFile::from_bytes(bytes[..cut].to_vec()).is_err(), "cut at {cut}");
    }
}

#[test]
fn random_corruption_never_panics() {
    let bytes = sample_writer().to_bytes().unwrap();
    let mut s = 0x9e37_79b9u32;
    let mut next = move || {
        s ^= s << 13;
        s ^= s >> 17;
        s ^= s << 5;
        s as usize
    };
    for _ in 0..3000 {
        let mut b = bytes.clone();
        for _ in 0..1 + next() % 4 {
            // Bias toward the header, where lengths and counts live.
            let i = next() % b.len().min(600);
            b[i] = next() as u8;
        }
        if let Ok(f) = GgufFile::from_bytes(b) {
            for t in f.tensors().to_vec() {
                let _ = f.dequantize(&t.name);
            }
        }
    }
}

#[test]
fn huge_counts_fail_fast() {
    let mut w = GgufWriter::new();
    w.set("tokens", Value::string_array(["a"]));
    let mut bytes = w.to_bytes().unwrap();
    // Array count lives after: magic+version (8) + counts (16) + key (8+6) + type (4) + elem (4).
    let at = 8 + 16 + 8 + 6 + 4 + 4;
    bytes[at..at + 8].copy_from_slice(&u64::MAX.to_le_bytes());
    let e = GgufFile::from_bytes(bytes).unwrap_err().to_string();
    assert!(e.contains("metadata array tokens"), "{e}");
}

#[test]
fn unsupported_tensor_type_is_named_when_used() {
    let mut w = GgufWriter::new();
    w.add_raw_tensor("blk.0.ffn_down.weight", &[256, 1], GgmlType::Other(23), vec![0; 136])
        .unwrap();
    let f = GgufFile::from_bytes(w.to_bytes().unwrap()).unwrap();
    let e = f.dequantize("blk.0.ffn_down.weight").unwrap_err().to_string();
    assert_eq!(e, "unsupported tensor type IQ4_XS (id 23) for blk.0.ffn_down.weight");
}

#[test]
fn writer_rejects_mismatched_shapes() {
    let mut w = GgufWriter::new();
    assert!(w.add_tensor("x", &[32, 2], GgmlType::F32, &[0.0; 63]).is_err());
    assert!(w.add_tensor("x", &[30], GgmlType::Q8_0, &[0.0; 30]).is_err());
    w.set("bad", Value::Array(ValueType::U32, vec![Value::Bool(true)]));
    assert!(w.to_bytes().is_err());
}
