//! Safetensors shards through the `safetensors` crate: files are memory-mapped and each tensor
//! is converted to f32 only when a loader asks for it.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use half::{bf16, f16};
use safetensors::SafeTensors;
use safetensors::tensor::{Dtype, TensorView};

use crate::error::{Error, Result};

/// One tensor decoded to f32.
#[derive(Debug, Clone, PartialEq)]
pub struct DenseTensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// A tensor of a mapped shard, still in its file's bytes.
pub struct ShardTensor<'a> {
    pub path: &'a Path,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub bytes: &'a [u8],
}

impl ShardTensor<'_> {
    /// The values as f32 (F32, F16 and BF16; other dtypes are refused by name).
    pub fn to_f32(&self, name: &str) -> Result<Vec<f32>> {
        let b = self.bytes;
        Ok(match self.dtype {
            Dtype::F32 => {
                b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
            }
            Dtype::F16 => {
                b.chunks_exact(2).map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32()).collect()
            }
            Dtype::BF16 => {
                b.chunks_exact(2).map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect()
            }
            other => {
                return Err(Error::Safetensors {
                    path: self.path.into(),
                    msg: format!(
                        "tensor {name}: unsupported dtype {other:?} (supported: F32, F16, BF16)"
                    ),
                });
            }
        })
    }
}

/// Memory maps of every shard; [`Shards::index`] parses their headers.
pub struct MappedShards {
    maps: Vec<(PathBuf, memmap2::Mmap)>,
}

impl MappedShards {
    pub fn open(files: &[PathBuf]) -> Result<Self> {
        let maps = files
            .iter()
            .map(|path| {
                let io = |source| Error::Io { path: path.clone(), source };
                let file = std::fs::File::open(path).map_err(io)?;
                // SAFETY: read-only map; as with every mmap reader, a concurrent writer
                // truncating the file would be undefined behaviour, which we accept for weights.
                #[allow(unsafe_code)]
                let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
                Ok((path.clone(), map))
            })
            .collect::<Result<_>>()?;
        Ok(Self { maps })
    }

    /// Parses every header and indexes tensors by name (a name in two shards is an error).
    pub fn index(&self) -> Result<Shards<'_>> {
        let mut files = Vec::with_capacity(self.maps.len());
        let mut by_name = HashMap::new();
        for (i, (path, map)) in self.maps.iter().enumerate() {
            let st = SafeTensors::deserialize(map)
                .map_err(|e| Error::Safetensors { path: path.clone(), msg: e.to_string() })?;
            for name in st.names() {
                if let Some(other) = by_name.insert(name.to_string(), i) {
                    return Err(Error::Safetensors {
                        path: path.clone(),
                        msg: format!("tensor {name} is also in {}", self.maps[other].0.display()),
                    });
                }
            }
            files.push((path.as_path(), st));
        }
        Ok(Shards { files, by_name })
    }
}

/// The parsed shards of one checkpoint.
pub struct Shards<'a> {
    files: Vec<(&'a Path, SafeTensors<'a>)>,
    by_name: HashMap<String, usize>,
}

impl<'a> Shards<'a> {
    pub fn get(&self, name: &str) -> Option<ShardTensor<'a>> {
        let (path, st) = &self.files[*self.by_name.get(name)?];
        let view = st.tensor(name).ok()?;
        Some(ShardTensor {
            path,
            dtype: view.dtype(),
            shape: view.shape().to_vec(),
            bytes: view.data(),
        })
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.by_name.keys().map(String::as_str)
    }
}

/// Writes F32 tensors as a safetensors file.
pub fn write_safetensors(path: &Path, tensors: &BTreeMap<String, DenseTensor>) -> Result<()> {
    let bytes: Vec<(&String, Vec<u8>, &[usize])> = tensors
        .iter()
        .map(|(n, t)| {
            (n, t.data.iter().flat_map(|v| v.to_le_bytes()).collect(), t.shape.as_slice())
        })
        .collect();
    let bad = |msg: String| Error::Safetensors { path: path.into(), msg };
    let views = bytes
        .iter()
        .map(|(n, b, shape)| {
            TensorView::new(Dtype::F32, shape.to_vec(), b)
                .map(|v| (n.as_str(), v))
                .map_err(|e| bad(format!("tensor {n}: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    safetensors::serialize_to_file(views, None, path).map_err(|e| bad(e.to_string()))
}
