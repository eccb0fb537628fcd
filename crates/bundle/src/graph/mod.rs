//! Partition graphs built from a checkpoint: pure functions from weights to ONNX models (the
//! edge and cloud partitions, and the cloud's K/V propagation graph for `propagate` catch-up),
//! and the one rewrite of a built graph: an exit head over a vocabulary shortlist.

pub mod embedding;
mod layers;
pub mod names;
mod partition;
mod propagate;
pub mod q4_1;
mod shortlist;

pub use layers::{GraphOptions, ONNX_OPSET, int8_activations};
pub use partition::{cloud_graph, edge_graph, io_specs};
pub use propagate::cloud_kv_graph;
pub use shortlist::shortlist_exit;
