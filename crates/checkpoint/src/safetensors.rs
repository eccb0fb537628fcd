//! The safetensors container: an 8-byte little-endian header length, a JSON header mapping
//! tensor names to dtype, shape and byte range, then the raw data.

use std::collections::BTreeMap;
use std::path::Path;

use half::{bf16, f16};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Entry {
    dtype: String,
    shape: Vec<usize>,
    data_offsets: [usize; 2],
}

/// One tensor decoded to f32.
#[derive(Debug, Clone, PartialEq)]
pub struct DenseTensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// Reads every tensor of a safetensors file (F32/F16/BF16) into f32.
pub fn read_safetensors(path: &Path) -> Result<BTreeMap<String, DenseTensor>> {
    let bytes = std::fs::read(path).map_err(|source| Error::Io { path: path.into(), source })?;
    let bad = |msg: String| Error::Safetensors { path: path.into(), msg };
    let head_len = bytes
        .get(..8)
        .map(|b| u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
        .ok_or_else(|| bad("shorter than 8 bytes".into()))?;
    let data_start = usize::try_from(head_len)
        .ok()
        .and_then(|n| n.checked_add(8))
        .filter(|&e| e <= bytes.len())
        .ok_or_else(|| bad(format!("header length {head_len} exceeds the file")))?;
    let header: BTreeMap<String, serde_json::Value> = serde_json::from_slice(&bytes[8..data_start])
        .map_err(|source| Error::Json { path: path.into(), source })?;
    let data = &bytes[data_start..];
    let mut out = BTreeMap::new();
    for (name, raw) in header {
        if name == "__metadata__" {
            continue;
        }
        let e: Entry =
            serde_json::from_value(raw).map_err(|err| bad(format!("tensor {name}: {err}")))?;
        let [s, t] = e.data_offsets;
        let raw = data
            .get(s..t)
            .filter(|_| s <= t)
            .ok_or_else(|| bad(format!("tensor {name}: bytes {s}..{t} outside the data")))?;
        let n: usize = e.shape.iter().product();
        let width = match e.dtype.as_str() {
            "F32" => 4,
            "F16" | "BF16" => 2,
            other => return Err(bad(format!("tensor {name}: unsupported dtype {other}"))),
        };
        if raw.len() != n * width {
            return Err(bad(format!("tensor {name}: {} bytes for shape {:?}", raw.len(), e.shape)));
        }
        let values = match e.dtype.as_str() {
            "F32" => {
                raw.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
            }
            "F16" => {
                raw.chunks_exact(2).map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32()).collect()
            }
            _ => raw.chunks_exact(2).map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
        };
        out.insert(name, DenseTensor { shape: e.shape, data: values });
    }
    Ok(out)
}

/// Writes F32 tensors as a safetensors file.
pub fn write_safetensors(path: &Path, tensors: &BTreeMap<String, DenseTensor>) -> Result<()> {
    let mut header = serde_json::Map::new();
    let mut offset = 0;
    for (name, t) in tensors {
        let end = offset + t.data.len() * 4;
        let entry =
            Entry { dtype: "F32".into(), shape: t.shape.clone(), data_offsets: [offset, end] };
        header.insert(name.clone(), serde_json::json!(entry));
        offset = end;
    }
    let mut head = serde_json::Value::Object(header).to_string().into_bytes();
    // Data is conventionally 8-byte aligned; pad the header with spaces.
    head.resize(head.len().next_multiple_of(8), b' ');
    let mut out = Vec::with_capacity(8 + head.len() + offset);
    out.extend((head.len() as u64).to_le_bytes());
    out.extend(head);
    for t in tensors.values() {
        out.extend(t.data.iter().flat_map(|v| v.to_le_bytes()));
    }
    std::fs::write(path, out).map_err(|source| Error::Write { path: path.into(), source })
}
