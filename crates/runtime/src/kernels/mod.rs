//! Operators the runtime provides to ONNX Runtime itself, registered on every partition
//! session: kernels for formats ONNX Runtime has none for.

mod q4_1;
mod q4_1_op;

use ort::operator::OperatorDomain;

/// The `ce_collm` operator domain, to register on a session before loading a partition.
pub fn domain() -> ort::Result<OperatorDomain> {
    OperatorDomain::new(collm_bundle::graph::q4_1::DOMAIN)?.add(q4_1_op::Q4_1MatMul)
}
