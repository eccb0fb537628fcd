//! Parsing the GGUF header, metadata and tensor table from a byte slice (no I/O).

use crate::error::{Error, Result};
use crate::types::GgmlType;
use crate::value::{Metadata, Value, ValueType};

pub const MAGIC: &[u8; 4] = b"GGUF";
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// GGML tensors have at most four dimensions.
pub const MAX_DIMS: u32 = 4;
/// Nested arrays are legal but never deep in practice; the cap keeps garbage input from
/// recursing without bound.
const MAX_ARRAY_DEPTH: u32 = 4;

/// Where one tensor's bytes live, as declared by the tensor table.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    /// GGML order: `dims[0]` varies fastest (for a 2D weight: `[in_features, out_features]`).
    pub dims: Vec<u64>,
    pub ty: GgmlType,
    /// Absolute byte offset of the tensor data in the file.
    pub offset: u64,
    /// Byte length, when the type's block layout is known.
    pub nbytes: Option<u64>,
}

impl TensorInfo {
    pub fn n_elements(&self) -> u64 {
        // Checked at parse time not to overflow.
        self.dims.iter().product()
    }
}

/// Everything before the tensor data.
#[derive(Debug, Clone, PartialEq)]
pub struct Header {
    pub version: u32,
    pub metadata: Metadata,
    pub tensors: Vec<TensorInfo>,
    pub alignment: u64,
    /// Absolute offset of the (aligned) tensor data section.
    pub data_offset: u64,
}

struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: u64, what: &dyn Fn() -> String) -> Result<&'a [u8]> {
        let len = self.bytes.len() as u64;
        let start = self.pos as u64;
        match start.checked_add(n) {
            Some(end) if end <= len => {
                let slice = &self.bytes[self.pos..end as usize];
                self.pos = end as usize;
                Ok(slice)
            }
            _ => Err(Error::Truncated { what: what(), start, end: start.saturating_add(n), len }),
        }
    }

    fn array<const N: usize>(&mut self, what: &dyn Fn() -> String) -> Result<[u8; N]> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N as u64, what)?);
        Ok(out)
    }

    fn u32(&mut self, what: &dyn Fn() -> String) -> Result<u32> {
        self.array(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: &dyn Fn() -> String) -> Result<u64> {
        self.array(what).map(u64::from_le_bytes)
    }

    fn string(&mut self, what: &dyn Fn() -> String) -> Result<String> {
        let n = self.u64(what)?;
        let raw = self.take(n, what)?;
        String::from_utf8(raw.to_vec())
            .map_err(|_| Error::Malformed(format!("{} is not valid UTF-8", what())))
    }

    fn remaining(&self) -> u64 {
        (self.bytes.len() - self.pos) as u64
    }

    fn value(&mut self, ty: ValueType, key: &str, depth: u32) -> Result<Value> {
        let what = || format!("metadata value {key}");
        Ok(match ty {
            ValueType::U8 => Value::U8(u8::from_le_bytes(self.array(&what)?)),
            ValueType::I8 => Value::I8(i8::from_le_bytes(self.array(&what)?)),
            ValueType::U16 => Value::U16(u16::from_le_bytes(self.array(&what)?)),
            ValueType::I16 => Value::I16(i16::from_le_bytes(self.array(&what)?)),
            ValueType::U32 => Value::U32(u32::from_le_bytes(self.array(&what)?)),
            ValueType::I32 => Value::I32(i32::from_le_bytes(self.array(&what)?)),
            ValueType::F32 => Value::F32(f32::from_le_bytes(self.array(&what)?)),
            ValueType::U64 => Value::U64(u64::from_le_bytes(self.array(&what)?)),
            ValueType::I64 => Value::I64(i64::from_le_bytes(self.array(&what)?)),
            ValueType::F64 => Value::F64(f64::from_le_bytes(self.array(&what)?)),
            ValueType::Bool => match self.array::<1>(&what)?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => return Err(Error::Malformed(format!("metadata {key}: bool byte {b}"))),
            },
            ValueType::String => Value::String(self.string(&what)?),
            ValueType::Array => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(Error::Malformed(format!(
                        "metadata {key}: arrays nested too deep"
                    )));
                }
                let elem = self.value_type(key)?;
                let count = self.u64(&what)?;
                // Every element takes at least one byte, so a count beyond the remaining bytes
                // is garbage; checking first keeps the allocation bounded by the file size.
                if count > self.remaining() {
                    return Err(Error::Truncated {
                        what: format!("metadata array {key} of {count} elements"),
                        start: self.pos as u64,
                        end: (self.pos as u64).saturating_add(count),
                        len: self.bytes.len() as u64,
                    });
                }
                let mut items = Vec::with_capacity(count as usize);
                for _ in 0..count {
                    items.push(self.value(elem, key, depth + 1)?);
                }
                Value::Array(elem, items)
            }
        })
    }

    fn value_type(&mut self, key: &str) -> Result<ValueType> {
        let id = self.u32(&|| format!("metadata type of {key}"))?;
        ValueType::from_id(id)
            .ok_or_else(|| Error::Malformed(format!("metadata {key}: unknown value type {id}")))
    }
}

/// Parses everything up to the tensor data and checks that every tensor lies inside `bytes`.
pub fn parse_header(bytes: &[u8]) -> Result<Header> {
    let mut c = Cursor { bytes, pos: 0 };
    let head = || "GGUF header".to_string();
    let magic = c.take(4, &head).map_err(|_| Error::BadMagic(describe_magic(bytes)))?;
    if magic != MAGIC {
        return Err(Error::BadMagic(describe_magic(bytes)));
    }
    let version = c.u32(&head)?;
    if !(2..=3).contains(&version) {
        return Err(Error::UnsupportedVersion(version));
    }
    let n_tensors = c.u64(&head)?;
    let n_kv = c.u64(&head)?;

    let mut metadata = Metadata::new();
    for i in 0..n_kv {
        let key = c.string(&|| format!("metadata key #{i}"))?;
        let ty = c.value_type(&key)?;
        let value = c.value(ty, &key, 0)?;
        metadata.insert(key, value);
    }

    let alignment = match metadata.opt("general.alignment", Metadata::get_u64)? {
        None => DEFAULT_ALIGNMENT,
        Some(a) if a > 0 && a.is_power_of_two() => a,
        Some(a) => {
            return Err(Error::Malformed(format!("general.alignment {a} is not a power of two")));
        }
    };

    // Each tensor record is at least 24 bytes, which bounds the allocation below.
    if n_tensors > c.remaining() / 24 + 1 {
        return Err(Error::Malformed(format!("tensor count {n_tensors} exceeds the file size")));
    }
    let mut tensors = Vec::with_capacity(n_tensors as usize);
    for i in 0..n_tensors {
        tensors.push(tensor_info(&mut c, i)?);
    }

    let header_end = c.pos as u64;
    let data_offset = header_end
        .checked_next_multiple_of(alignment)
        .ok_or_else(|| Error::Malformed("data offset overflows".into()))?;
    let len = bytes.len() as u64;
    for t in &mut tensors {
        if !t.offset.is_multiple_of(alignment) {
            return Err(Error::Malformed(format!(
                "tensor {} offset {} is not a multiple of the alignment {alignment}",
                t.name, t.offset
            )));
        }
        let start = data_offset.checked_add(t.offset).ok_or_else(|| overflow(&t.name))?;
        let end = match t.nbytes {
            Some(n) => start.checked_add(n).ok_or_else(|| overflow(&t.name))?,
            None => start,
        };
        if end > len || start > len {
            return Err(Error::Truncated { what: format!("tensor {}", t.name), start, end, len });
        }
        t.offset = start;
    }
    Ok(Header { version, metadata, tensors, alignment, data_offset })
}

fn tensor_info(c: &mut Cursor<'_>, i: u64) -> Result<TensorInfo> {
    let name = c.string(&|| format!("name of tensor #{i}"))?;
    let what = || format!("tensor info of {name}");
    let n_dims = c.u32(&what)?;
    if n_dims == 0 || n_dims > MAX_DIMS {
        return Err(Error::Malformed(format!("tensor {name} has {n_dims} dimensions")));
    }
    let mut dims = Vec::with_capacity(n_dims as usize);
    for _ in 0..n_dims {
        dims.push(c.u64(&what)?);
    }
    let ty = GgmlType::from_id(c.u32(&what)?);
    let offset = c.u64(&what)?;
    let n =
        dims.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d)).ok_or_else(|| overflow(&name))?;
    let nbytes = match ty.block_geometry() {
        None => None,
        Some((per_block, _)) => {
            if !dims[0].is_multiple_of(per_block as u64) {
                return Err(Error::Malformed(format!(
                    "tensor {name}: row length {} is not a multiple of the {ty} block size {per_block}",
                    dims[0]
                )));
            }
            Some(ty.bytes_for(n).ok_or_else(|| overflow(&name))?)
        }
    };
    Ok(TensorInfo { name, dims, ty, offset, nbytes })
}

fn overflow(name: &str) -> Error {
    Error::Malformed(format!("tensor {name}: size overflows"))
}

fn describe_magic(bytes: &[u8]) -> String {
    let head = &bytes[..bytes.len().min(4)];
    let printable = head.iter().all(|b| b.is_ascii_graphic());
    let hex: String = head.iter().map(|b| format!("{b:02x}")).collect();
    if printable && !head.is_empty() {
        format!("{:?} = 0x{hex}", String::from_utf8_lossy(head))
    } else {
        format!("0x{hex}")
    }
}
