//! Reading the LM head back out of a cloud partition (calibration trains against it) and
//! storing fitted exit-head translators into the edge partition.

use std::path::Path;

use collm_onnx::{ModelProto, TensorProto};

use crate::graph::names;
use crate::manifest::{ExitCalibration, Manifest};
use crate::partition_file::{read_partition, write_partition};
use crate::{Error, Result, export::write_manifest, verify::sha256_file};

/// The final norm gain `[H]` and the LM head `[V, H]` as dense f32.
pub struct HeadTensors {
    pub final_norm: Vec<f32>,
    pub lm_head: Vec<f32>,
}

fn find<'a>(model: &'a ModelProto, name: &str) -> Result<&'a TensorProto> {
    model
        .graph
        .as_ref()
        .and_then(|g| g.initializer.iter().find(|t| t.name == name))
        .ok_or_else(|| Error::Manifest(format!("cloud partition has no initializer {name:?}")))
}

fn f32s(t: &TensorProto) -> Result<Vec<f32>> {
    t.f32_values()
        .ok_or_else(|| Error::Manifest(format!("initializer {:?} is not raw float32", t.name)))
}

/// Recovers the head from the cloud partition, whatever format the exporter stored it in.
pub fn read_head(cloud: &ModelProto, vocab: usize, hidden: usize) -> Result<HeadTensors> {
    let final_norm = f32s(find(cloud, "final_norm")?)?;
    let lm_head = if let Ok(dense) = find(cloud, "lm_head") {
        // Stored transposed, `[H, V]`.
        let t = f32s(dense)?;
        let mut out = vec![0f32; vocab * hidden];
        for h in 0..hidden {
            for v in 0..vocab {
                out[v * hidden + h] = t[h * vocab + v];
            }
        }
        out
    } else {
        let q = find(cloud, "lm_head.qweight")?;
        let scales = f32s(find(cloud, "lm_head.scales")?)?;
        let (rows, n_blocks, blob) = match q.dims.as_slice() {
            [r, n, b] => (*r as usize, *n as usize, *b as usize),
            other => return Err(Error::Manifest(format!("lm_head.qweight has shape {other:?}"))),
        };
        let block = hidden.div_ceil(n_blocks);
        let bits = blob * 8 / block;
        let offsets = find(cloud, "lm_head.block_offsets").ok().map(f32s).transpose()?;
        let zp = (1u32 << (bits - 1)) as f32;
        let mut out = vec![0f32; rows * hidden];
        for r in 0..rows {
            for b in 0..n_blocks {
                let i = r * n_blocks + b;
                let bytes = &q.raw_data[i * blob..(i + 1) * blob];
                let offset = offsets.as_ref().map_or(0.0, |o| o[b * rows + r]);
                for j in 0..block.min(hidden - b * block) {
                    let v = match bits {
                        4 => (bytes[j / 2] >> (4 * (j % 2))) & 0x0f,
                        _ => bytes[j],
                    };
                    out[r * hidden + b * block + j] = (v as f32 - zp) * scales[i] + offset;
                }
            }
        }
        out
    };
    if lm_head.len() != vocab * hidden || final_norm.len() != hidden {
        return Err(Error::Manifest(
            "cloud partition head does not match the manifest's shape".into(),
        ));
    }
    Ok(HeadTensors { final_norm, lm_head })
}

/// A fitted translator for one exit head.
pub struct FittedExit {
    pub layer: usize,
    /// `[in, out]` row-major.
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
    pub calibration: ExitCalibration,
    /// Token ids (ascending) the head keeps its logits for; `None` keeps the whole vocabulary.
    pub shortlist: Option<Vec<u32>>,
}

/// Writes the translators (and shortlist heads) into the edge partition, re-hashes its files and
/// records the calibration in the manifest. Each file is replaced atomically.
pub fn store_exits(dir: &Path, manifest: &mut Manifest, fitted: Vec<FittedExit>) -> Result<()> {
    let file = manifest.edge.file.clone();
    let mut edge = read_partition(dir, &file)?;
    let h = manifest.config.hidden_size as i64;
    for f in fitted {
        let onnx_err = |e: collm_onnx::Error| Error::Manifest(e.to_string());
        collm_onnx::replace_f32_initializer(
            &mut edge,
            &names::translator_weight(f.layer),
            &[h, h],
            &f.weight,
        )
        .map_err(onnx_err)?;
        collm_onnx::replace_f32_initializer(
            &mut edge,
            &names::translator_bias(f.layer),
            &[h],
            &f.bias,
        )
        .map_err(onnx_err)?;
        if let Some(ids) = &f.shortlist {
            crate::graph::shortlist_exit(&mut edge, f.layer, ids, manifest.config.vocab_size)?;
        }
        let head = manifest.exits.iter_mut().find(|e| e.layer == f.layer).ok_or_else(|| {
            Error::Manifest(format!("the bundle has no exit head at layer {}", f.layer))
        })?;
        head.calibration = Some(f.calibration);
    }
    let data_file = write_partition(dir, &file, edge, &mut |_| {})?;
    if let Some(old) = manifest.edge.data_file.take() {
        manifest.files.remove(&old);
    }
    for f in std::iter::once(&file).chain(data_file.as_ref()) {
        manifest.files.insert(f.clone(), sha256_file(&dir.join(f))?);
    }
    manifest.edge.data_file = data_file;
    // A format-1 bundle calibrated now has a data file its old readers would not check.
    manifest.format_version = crate::manifest::FORMAT_VERSION;
    write_manifest(dir, manifest)
}
