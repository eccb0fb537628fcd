//! Every block type decodes as llama.cpp's own C dequantization does, on seeded random blocks
//! (tools/reference/make_dequant_fixture.py wrote the fixture with ggml's `to_float`), and the
//! unpacked blocks re-expand to the same values.

#![allow(clippy::unwrap_used)]

use collm_gguf::{GgmlType, decode_blocks, dequantize};

fn fixture() -> serde_json::Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tools/reference/fixtures/dequant_llamacpp.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
}

fn ty(name: &str) -> GgmlType {
    let ids = [
        ("Q4_0", 2),
        ("Q4_1", 3),
        ("Q5_0", 6),
        ("Q5_1", 7),
        ("Q8_0", 8),
        ("Q2_K", 10),
        ("Q3_K", 11),
        ("Q4_K", 12),
        ("Q5_K", 13),
        ("Q6_K", 14),
        ("IQ4_NL", 20),
        ("BF16", 30),
    ];
    GgmlType::from_id(ids.iter().find(|(n, _)| *n == name).unwrap().1)
}

#[test]
fn every_type_dequantizes_as_llama_cpp_does() {
    let doc = fixture();
    let n = doc["values"].as_u64().unwrap() as usize;
    let types = doc["types"].as_object().unwrap();
    assert_eq!(types.len(), 12, "the fixture covers every decoded block type");
    for (name, case) in types {
        let ty = ty(name);
        assert_eq!(ty.name(), *name);
        let bytes = unhex(case["bytes"].as_str().unwrap());
        let want: Vec<f32> = case["f32_bits"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| f32::from_bits(b.as_u64().unwrap() as u32))
            .collect();
        let got = dequantize(ty, &bytes, n).unwrap();
        assert_eq!(got.len(), want.len());
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            // ggml may fuse `d·q − m` into one FMA where it is built with one: allow the last
            // bit of rounding, nothing more.
            let tol = w.abs() * 2.0 * f32::EPSILON + f32::MIN_POSITIVE;
            assert!((g - w).abs() <= tol, "{name} value {i}: {g} vs llama.cpp {w}");
        }
        if let Some(blocks) = decode_blocks(ty, &bytes, n).unwrap() {
            assert_eq!(blocks.to_f32(), got, "{name}");
            assert!(blocks.codes.iter().all(|&q| u32::from(q) < 1 << blocks.code_bits), "{name}");
        }
    }
}
