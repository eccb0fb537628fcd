//! Writing GGUF v3 files (used to build test models).

use std::io::Write;
use std::path::Path;

use crate::error::{Error, Result};
use crate::parse::{DEFAULT_ALIGNMENT, MAGIC, MAX_DIMS};
use crate::quant::quantize;
use crate::types::GgmlType;
use crate::value::{Metadata, Value};

struct PendingTensor {
    name: String,
    dims: Vec<u64>,
    ty: GgmlType,
    bytes: Vec<u8>,
}

/// Collects metadata and tensors in memory, then writes them as one GGUF v3 file.
#[derive(Default)]
pub struct GgufWriter {
    metadata: Metadata,
    tensors: Vec<PendingTensor>,
}

impl GgufWriter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets a metadata key (`general.alignment` also sets the data alignment).
    pub fn set(&mut self, key: impl Into<String>, value: Value) -> &mut Self {
        self.metadata.insert(key, value);
        self
    }

    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    /// Adds a tensor from f32 values, encoding it as `ty`. `dims` is in GGML order
    /// (`dims[0]` fastest: a `[out, in]` row-major matrix has `dims = [in, out]`).
    pub fn add_tensor(
        &mut self,
        name: impl Into<String>,
        dims: &[u64],
        ty: GgmlType,
        values: &[f32],
    ) -> Result<&mut Self> {
        let name = name.into();
        let n = dims.iter().try_fold(1u64, |a, &d| a.checked_mul(d));
        if n != Some(values.len() as u64) {
            return Err(Error::BadTensor {
                tensor: name,
                msg: format!("dims {dims:?} do not match {} values", values.len()),
            });
        }
        let bytes = quantize(ty, values)
            .map_err(|e| Error::BadTensor { tensor: name.clone(), msg: e.to_string() })?;
        self.add_raw_tensor(name, dims, ty, bytes)
    }

    /// Adds already-encoded tensor bytes.
    pub fn add_raw_tensor(
        &mut self,
        name: impl Into<String>,
        dims: &[u64],
        ty: GgmlType,
        bytes: Vec<u8>,
    ) -> Result<&mut Self> {
        let name = name.into();
        let bad = |msg: String| Error::BadTensor { tensor: name.clone(), msg };
        if dims.is_empty() || dims.len() > MAX_DIMS as usize {
            return Err(bad(format!("{} dimensions", dims.len())));
        }
        let n = dims.iter().try_fold(1u64, |a, &d| a.checked_mul(d));
        let need = n.and_then(|n| ty.bytes_for(n));
        if need != Some(bytes.len() as u64) {
            return Err(bad(format!("{} bytes do not hold dims {dims:?} of {ty}", bytes.len())));
        }
        if self.tensors.iter().any(|t| t.name == name) {
            return Err(bad("added twice".into()));
        }
        self.tensors.push(PendingTensor { name, dims: dims.to_vec(), ty, bytes });
        Ok(self)
    }

    fn alignment(&self) -> Result<u64> {
        match self.metadata.opt("general.alignment", Metadata::get_u64)? {
            None => Ok(DEFAULT_ALIGNMENT),
            Some(a) if a > 0 && a.is_power_of_two() => Ok(a),
            Some(a) => {
                Err(Error::Malformed(format!("general.alignment {a} is not a power of two")))
            }
        }
    }

    /// The complete file image.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let align = self.alignment()? as usize;
        let mut out = Vec::new();
        out.extend_from_slice(MAGIC);
        out.extend(3u32.to_le_bytes());
        out.extend((self.tensors.len() as u64).to_le_bytes());
        out.extend((self.metadata.len() as u64).to_le_bytes());
        for (key, value) in self.metadata.entries() {
            check_homogeneous(key, value)?;
            put_string(&mut out, key);
            out.extend(value.value_type().id().to_le_bytes());
            put_value(&mut out, value);
        }
        let mut offset = 0usize;
        for t in &self.tensors {
            put_string(&mut out, &t.name);
            out.extend((t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                out.extend(d.to_le_bytes());
            }
            out.extend(t.ty.id().to_le_bytes());
            out.extend((offset as u64).to_le_bytes());
            offset = (offset + t.bytes.len()).next_multiple_of(align);
        }
        out.resize(out.len().next_multiple_of(align), 0);
        for t in &self.tensors {
            out.extend_from_slice(&t.bytes);
            out.resize(out.len().next_multiple_of(align), 0);
        }
        Ok(out)
    }

    pub fn write_to(&self, mut w: impl Write) -> Result<()> {
        w.write_all(&self.to_bytes()?).map_err(Error::Write)
    }

    pub fn write(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        std::fs::write(path, self.to_bytes()?)
            .map_err(|source| Error::Io { path: path.to_path_buf(), source })
    }
}

/// An array whose items disagree with its declared element type would be written unreadable.
fn check_homogeneous(key: &str, value: &Value) -> Result<()> {
    if let Value::Array(elem, items) = value {
        for item in items {
            if item.value_type() != *elem {
                return Err(Error::WrongType {
                    key: key.to_string(),
                    expected: "array items of the declared element type",
                    found: item.describe(),
                });
            }
            check_homogeneous(key, item)?;
        }
    }
    Ok(())
}

fn put_string(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_value(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::U8(v) => out.extend(v.to_le_bytes()),
        Value::I8(v) => out.extend(v.to_le_bytes()),
        Value::U16(v) => out.extend(v.to_le_bytes()),
        Value::I16(v) => out.extend(v.to_le_bytes()),
        Value::U32(v) => out.extend(v.to_le_bytes()),
        Value::I32(v) => out.extend(v.to_le_bytes()),
        Value::F32(v) => out.extend(v.to_le_bytes()),
        Value::U64(v) => out.extend(v.to_le_bytes()),
        Value::I64(v) => out.extend(v.to_le_bytes()),
        Value::F64(v) => out.extend(v.to_le_bytes()),
        Value::Bool(v) => out.push(u8::from(*v)),
        Value::String(s) => put_string(out, s),
        Value::Array(elem, items) => {
            out.extend(elem.id().to_le_bytes());
            out.extend((items.len() as u64).to_le_bytes());
            for item in items {
                put_value(out, item);
            }
        }
    }
}
