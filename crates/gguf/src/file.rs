//! A parsed GGUF file whose tensor bytes stay in the memory map.

use std::ops::Deref;
use std::path::Path;

use crate::error::{Error, Result};
use crate::parse::{Header, TensorInfo, parse_header};
use crate::quant::dequantize;
use crate::types::GgmlType;
use crate::value::Metadata;

enum Storage {
    Mapped(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl Deref for Storage {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Self::Mapped(m) => m,
            Self::Owned(v) => v,
        }
    }
}

pub struct GgufFile {
    storage: Storage,
    header: Header,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("version", &self.header.version)
            .field("metadata_keys", &self.header.metadata.len())
            .field("tensors", &self.header.tensors.len())
            .finish()
    }
}

impl GgufFile {
    /// Maps `path` and parses its header; tensor bytes are read lazily from the map.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let io = |source| Error::Io { path: path.to_path_buf(), source };
        let file = std::fs::File::open(path).map_err(io)?;
        // SAFETY: the map is read-only; as with every mmap reader, a concurrent writer
        // truncating the file would be undefined behaviour, which we accept for model files.
        #[allow(unsafe_code)]
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
        Self::from_storage(Storage::Mapped(map))
    }

    /// Parses an in-memory GGUF image.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self> {
        Self::from_storage(Storage::Owned(bytes))
    }

    fn from_storage(storage: Storage) -> Result<Self> {
        let header = parse_header(&storage)?;
        Ok(Self { storage, header })
    }

    pub fn version(&self) -> u32 {
        self.header.version
    }

    pub fn alignment(&self) -> u64 {
        self.header.alignment
    }

    pub fn metadata(&self) -> &Metadata {
        &self.header.metadata
    }

    pub fn tensors(&self) -> &[TensorInfo] {
        &self.header.tensors
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.header.tensors.iter().find(|t| t.name == name)
    }

    pub fn require_tensor(&self, name: &str) -> Result<&TensorInfo> {
        self.tensor(name).ok_or_else(|| Error::MissingTensor(name.to_string()))
    }

    /// The raw bytes of `info` (a tensor of this file).
    pub fn tensor_bytes(&self, info: &TensorInfo) -> Result<&[u8]> {
        let unsupported =
            || Error::UnsupportedType { ty: info.ty.to_string(), tensor: info.name.clone() };
        let n = info.nbytes.ok_or_else(unsupported)?;
        // Bounds were checked at parse time; `get` keeps a foreign `TensorInfo` from panicking.
        let start = usize::try_from(info.offset).ok();
        let end = start.and_then(|s| s.checked_add(usize::try_from(n).ok()?));
        match (start, end) {
            (Some(s), Some(e)) => self.storage.get(s..e).ok_or_else(|| Error::Truncated {
                what: format!("tensor {}", info.name),
                start: info.offset,
                end: e as u64,
                len: self.storage.len() as u64,
            }),
            _ => Err(Error::Malformed(format!("tensor {}: offset overflows", info.name))),
        }
    }

    /// The tensor's values as f32, in GGML order (`dims[0]` fastest).
    pub fn dequantize(&self, name: &str) -> Result<Vec<f32>> {
        let info = self.require_tensor(name)?;
        if let GgmlType::Other(_) = info.ty {
            return Err(Error::UnsupportedType { ty: info.ty.to_string(), tensor: name.into() });
        }
        let n = usize::try_from(info.n_elements())
            .map_err(|_| Error::Malformed(format!("tensor {name} is too large")))?;
        dequantize(info.ty, self.tensor_bytes(info)?, n)
    }
}
