//! A partition on disk: its graph (`edge.onnx`) and, next to it, its weights as ONNX external
//! data (`edge.onnx.data`, bundle format 2). ONNX Runtime then reads the weights from the data
//! file instead of first holding them inside the parsed graph, which lowers the peak memory of a
//! load by the size of the weights. The exit heads' translators stay in the graph: calibration
//! rewrites them, and then only the small graph file changes.

use std::path::Path;

use collm_onnx::ModelProto;
use collm_onnx::external::{load_external, move_to_external};

use crate::graph::names;
use crate::{Error, Result};

/// The data file of the partition graph `file`.
pub fn data_file_name(file: &str) -> String {
    format!("{file}.data")
}

/// Writes `model` as `dir/file`, its weights into `dir/file.data`; returns the data file's name,
/// or `None` when the graph holds every initializer (a stale data file is then removed). Each
/// file is written under a temporary name and renamed into place.
pub fn write_partition(
    dir: &Path,
    file: &str,
    mut model: ModelProto,
    progress: &mut dyn FnMut(&str),
) -> Result<Option<String>> {
    let data_name = data_file_name(file);
    let data = move_to_external(&mut model, &data_name, names::is_translator);
    let written = if data.is_empty() {
        let stale = dir.join(&data_name);
        if stale.exists() {
            std::fs::remove_file(&stale).map_err(|e| Error::io(&stale, e))?;
        }
        None
    } else {
        write_file(dir, &data_name, &data, progress)?;
        Some(data_name)
    };
    drop(data);
    write_file(dir, file, &collm_onnx::encode(&model), progress)?;
    Ok(written)
}

/// Reads the partition graph `dir/file` with every weight in it (its data file read back in).
pub fn read_partition(dir: &Path, file: &str) -> Result<ModelProto> {
    let path = dir.join(file);
    let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
    let mut model = collm_onnx::decode(&bytes)
        .map_err(|e| Error::Manifest(format!("{}: {e}", path.display())))?;
    drop(bytes);
    load_external(&mut model, dir)
        .map_err(|e| Error::Manifest(format!("{}: {e}", path.display())))?;
    Ok(model)
}

/// Writes `bytes` as `dir/name` through a temporary file, so a reader never sees half a file.
pub(crate) fn write_file(
    dir: &Path,
    name: &str,
    bytes: &[u8],
    progress: &mut dyn FnMut(&str),
) -> Result<()> {
    progress(&format!("writing {name} ({:.1} MB)", bytes.len() as f64 / 1e6));
    let path = dir.join(name);
    let tmp = dir.join(format!(".{name}.partial"));
    std::fs::write(&tmp, bytes).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, &path).map_err(|e| Error::io(&path, e))
}
