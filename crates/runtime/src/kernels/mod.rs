//! Operators the runtime provides to ONNX Runtime itself, registered on every partition
//! session: kernels for formats ONNX Runtime has none for.

mod q4_1;
mod q4_1_op;

use std::sync::{Mutex, PoisonError};

use ort::operator::OperatorDomain;

/// The `ce_collm` operator domain, to register on a session before loading a partition.
pub fn domain() -> ort::Result<OperatorDomain> {
    OperatorDomain::new(collm_bundle::graph::q4_1::DOMAIN)?.add(q4_1_op::Q4_1MatMul)
}

/// Runs `commit`, the creation of a session that carries our [`domain`], while no other such
/// session is being created in this process.
///
/// ONNX Runtime enters a custom domain into ONNX's process-wide domain table with an unlocked
/// look-up-then-insert when a session is created: two sessions created at the same moment on
/// two threads can both miss the look-up, and the second insert throws ("the domain is already
/// exist"), failing a load that nothing was wrong with.
pub fn one_at_a_time<T>(commit: impl FnOnce() -> T) -> T {
    static CREATING: Mutex<()> = Mutex::new(());
    let _alone = CREATING.lock().unwrap_or_else(PoisonError::into_inner);
    commit()
}
