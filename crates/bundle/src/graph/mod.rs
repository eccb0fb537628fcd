//! Partition graphs built from a checkpoint: pure functions from weights to ONNX models.

mod layers;
pub mod names;
mod partition;

pub use layers::{GraphOptions, ONNX_OPSET};
pub use partition::{cloud_graph, edge_graph, io_specs};
