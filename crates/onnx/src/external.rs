//! ONNX external data: initializer bytes kept in a file next to the graph (`location`,
//! `offset`, `length` in the tensor's `external_data`). ONNX Runtime reads such tensors straight
//! from the file, so loading a partition never holds the weights twice (once inside the parsed
//! protobuf, once as tensors); for SmolLM2's edge partition that lowers the peak resident memory
//! of a load by about 50 MB.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use crate::proto::{StringStringEntryProto, TensorProto, data_location};
use crate::{Error, ModelProto, Result};

/// Offsets in the data file are multiples of this (a page), so a reader may map each tensor.
pub const ALIGNMENT: usize = 4096;

/// Initializers smaller than this stay in the graph.
pub const MIN_EXTERNAL_BYTES: usize = 1024;

/// Moves the bytes of every initializer of at least [`MIN_EXTERNAL_BYTES`] that `keep` does not
/// claim into one data buffer, to be written as `location` next to the graph. Returns the
/// buffer; empty when nothing moved (then the graph needs no data file).
pub fn move_to_external(
    model: &mut ModelProto,
    location: &str,
    keep: impl Fn(&str) -> bool,
) -> Vec<u8> {
    let mut data = Vec::new();
    let Some(graph) = model.graph.as_mut() else { return data };
    for t in &mut graph.initializer {
        if t.data_location == data_location::EXTERNAL
            || t.raw_data.len() < MIN_EXTERNAL_BYTES
            || keep(&t.name)
        {
            continue;
        }
        data.resize(data.len().next_multiple_of(ALIGNMENT), 0);
        let offset = data.len();
        data.extend_from_slice(&std::mem::take(&mut t.raw_data));
        let entry = |key: &str, value: String| StringStringEntryProto { key: key.into(), value };
        t.external_data = vec![
            entry("location", location.to_string()),
            entry("offset", offset.to_string()),
            entry("length", (data.len() - offset).to_string()),
        ];
        t.data_location = data_location::EXTERNAL;
    }
    data
}

/// Where an external tensor's bytes are, as its `external_data` says.
struct Extent {
    location: String,
    offset: u64,
    length: u64,
}

fn extent(t: &TensorProto) -> Result<Extent> {
    let bad = |reason: String| Error::ExternalData { tensor: t.name.clone(), reason };
    let get = |key: &str| t.external_data.iter().find(|e| e.key == key).map(|e| e.value.as_str());
    let number = |key: &str| -> Result<u64> {
        get(key)
            .ok_or_else(|| bad(format!("no {key}")))?
            .parse()
            .map_err(|_| bad(format!("{key} is not a number")))
    };
    let location = get("location").ok_or_else(|| bad("no location".into()))?;
    // The data file sits next to the graph: a path elsewhere is refused, not followed.
    if location.is_empty() || location.contains(['/', '\\']) || location == ".." || location == "."
    {
        return Err(bad(format!("location {location:?} is not a file name next to the graph")));
    }
    Ok(Extent {
        location: location.to_string(),
        offset: number("offset")?,
        length: number("length")?,
    })
}

/// Reads every externally stored initializer's bytes from its file in `dir` back into the
/// graph, so the model can be inspected or edited as if it had been stored whole.
pub fn load_external(model: &mut ModelProto, dir: &Path) -> Result<()> {
    let Some(graph) = model.graph.as_mut() else { return Ok(()) };
    let mut open: Option<(String, std::fs::File, u64)> = None;
    for t in &mut graph.initializer {
        if t.data_location != data_location::EXTERNAL {
            continue;
        }
        let at = extent(t)?;
        let path = dir.join(&at.location);
        let io = |source| Error::Io { path: path.clone(), source };
        if open.as_ref().is_none_or(|(name, ..)| *name != at.location) {
            let file = std::fs::File::open(&path).map_err(io)?;
            let size = file.metadata().map_err(io)?.len();
            open = Some((at.location.clone(), file, size));
        }
        let (_, file, size) = open.as_mut().expect("opened above");
        if at.offset.checked_add(at.length).is_none_or(|end| end > *size) {
            return Err(Error::ExternalData {
                tensor: t.name.clone(),
                reason: format!(
                    "bytes {}..+{} lie past the end of {} ({size} bytes)",
                    at.offset,
                    at.length,
                    path.display()
                ),
            });
        }
        let mut bytes = vec![0u8; at.length as usize];
        file.seek(SeekFrom::Start(at.offset)).map_err(io)?;
        file.read_exact(&mut bytes).map_err(io)?;
        t.raw_data = bytes;
        t.external_data.clear();
        t.data_location = data_location::DEFAULT;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::GraphProto;

    fn model(sizes: &[(&str, usize)]) -> ModelProto {
        let initializer = sizes
            .iter()
            .map(|&(name, n)| TensorProto::u8(name, &[n as i64], &vec![n as u8; n]))
            .collect();
        ModelProto {
            graph: Some(GraphProto { initializer, ..Default::default() }),
            ..Default::default()
        }
    }

    #[test]
    fn large_tensors_move_to_aligned_offsets_and_come_back_unchanged() {
        let original = model(&[("small", 16), ("a", 5000), ("kept", 3000), ("b", 1024)]);
        let mut m = original.clone();
        let data = move_to_external(&mut m, "w.data", |name| name == "kept");
        let graph = m.graph.as_ref().expect("graph");
        let external: Vec<&str> = graph
            .initializer
            .iter()
            .filter(|t| t.data_location == data_location::EXTERNAL)
            .map(|t| t.name.as_str())
            .collect();
        assert_eq!(external, ["a", "b"]);
        let b = extent(&graph.initializer[3]).expect("extent");
        assert_eq!((b.offset, b.length), (8192, 1024), "aligned after a's 5000 bytes");
        assert_eq!(data.len(), 8192 + 1024);

        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("w.data"), &data).expect("write");
        let decoded = crate::decode(&crate::encode(&m)).expect("round trip keeps the references");
        let mut back = decoded;
        load_external(&mut back, dir.path()).expect("loads");
        assert_eq!(back, original);
    }

    #[test]
    fn paths_outside_the_directory_and_short_files_are_refused() {
        let mut m = model(&[("a", 2000)]);
        let data = move_to_external(&mut m, "w.data", |_| false);
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("w.data"), &data[..1000]).expect("write");
        let err = load_external(&mut m.clone(), dir.path()).expect_err("truncated");
        assert!(err.to_string().contains("past the end"), "{err}");

        let t = &mut m.graph.as_mut().expect("graph").initializer[0];
        t.external_data[0].value = "../w.data".into();
        let err = load_external(&mut m, dir.path()).expect_err("escapes");
        assert!(err.to_string().contains("not a file name next to the graph"), "{err}");
    }
}
