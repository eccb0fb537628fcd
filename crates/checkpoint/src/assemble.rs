//! Building the decoder layers from any tensor source: the loaders differ only in where a
//! tensor comes from and what it is called.

use crate::error::Result;
use crate::model::{LayerWeights, LlamaConfig, Weight};

/// Where tensors come from (a GGUF file, safetensors shards), with shape checks done by the
/// source so its errors can name the file's own tensor names.
pub trait TensorSource {
    fn matrix(&mut self, name: &str, rows: usize, cols: usize) -> Result<Weight>;
    fn vector(&mut self, name: &str, len: usize) -> Result<Vec<f32>>;
}

/// A layer's tensors by role.
#[derive(Debug, Clone, Copy)]
pub enum Role {
    AttnNorm,
    Q,
    K,
    V,
    O,
    FfnNorm,
    Gate,
    Up,
    Down,
}

/// Loads every decoder layer; `name(layer, role)` gives the source's tensor name.
pub fn layers(
    src: &mut impl TensorSource,
    c: &LlamaConfig,
    name: impl Fn(usize, Role) -> String,
) -> Result<Vec<LayerWeights>> {
    let (h, f) = (c.hidden_size, c.intermediate_size);
    let (q_rows, kv_rows) = (c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim);
    (0..c.num_layers)
        .map(|i| {
            let n = |r| name(i, r);
            Ok(LayerWeights {
                attn_norm: src.vector(&n(Role::AttnNorm), h)?,
                wq: src.matrix(&n(Role::Q), q_rows, h)?,
                wk: src.matrix(&n(Role::K), kv_rows, h)?,
                wv: src.matrix(&n(Role::V), kv_rows, h)?,
                wo: src.matrix(&n(Role::O), h, q_rows)?,
                ffn_norm: src.vector(&n(Role::FfnNorm), h)?,
                w_gate: src.matrix(&n(Role::Gate), f, h)?,
                w_up: src.matrix(&n(Role::Up), f, h)?,
                w_down: src.matrix(&n(Role::Down), h, f)?,
            })
        })
        .collect()
}
