//! Writing ONNX models without a Python toolchain: the protobuf messages ce-collm needs
//! (declared by hand from the public ONNX IR specification, field numbers included) and a
//! [`GraphBuilder`] that keeps node and value names unique.

mod builder;
pub mod external;
pub mod proto;

pub use builder::{Attr, Dim, GraphBuilder, TensorType};
pub use proto::{ModelProto, TensorProto};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("malformed ONNX model: {0}")]
    Decode(#[from] prost::DecodeError),
    #[error("ONNX model has no initializer named {0:?}")]
    MissingInitializer(String),
    #[error("initializer {name:?} has shape {actual:?}, expected {expected:?}")]
    ShapeMismatch { name: String, expected: Vec<i64>, actual: Vec<i64> },
    #[error("external data of initializer {tensor:?}: {reason}")]
    ExternalData { tensor: String, reason: String },
    #[error("{path}: {source}")]
    Io { path: std::path::PathBuf, source: std::io::Error },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Encodes a model to its protobuf bytes.
pub fn encode(model: &ModelProto) -> Vec<u8> {
    prost::Message::encode_to_vec(model)
}

/// Decodes protobuf bytes into a model.
pub fn decode(bytes: &[u8]) -> Result<ModelProto> {
    Ok(<ModelProto as prost::Message>::decode(bytes)?)
}

/// Replaces the data of an existing f32 initializer, keeping its shape (used to store fitted
/// exit-head translators in an exported partition).
pub fn replace_f32_initializer(
    model: &mut ModelProto,
    name: &str,
    shape: &[i64],
    data: &[f32],
) -> Result<()> {
    let graph = model.graph.as_mut().ok_or_else(|| Error::MissingInitializer(name.to_string()))?;
    let init = graph
        .initializer
        .iter_mut()
        .find(|t| t.name == name)
        .ok_or_else(|| Error::MissingInitializer(name.to_string()))?;
    if init.dims != shape {
        return Err(Error::ShapeMismatch {
            name: name.to_string(),
            expected: shape.to_vec(),
            actual: init.dims.clone(),
        });
    }
    *init = TensorProto::f32(name, shape, data);
    Ok(())
}
