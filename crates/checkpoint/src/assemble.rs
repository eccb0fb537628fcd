//! Building the decoder layers from any tensor source: the loaders differ only in where a
//! tensor comes from and what it is called.

use crate::error::Result;
use crate::model::{LayerWeights, LlamaConfig, QkvBias, Weight};

/// Where tensors come from (a GGUF file, safetensors shards), with shape checks done by the
/// source so its errors can name the file's own tensor names.
pub trait TensorSource {
    fn matrix(&mut self, name: &str, rows: usize, cols: usize) -> Result<Weight>;
    fn vector(&mut self, name: &str, len: usize) -> Result<Vec<f32>>;
}

/// A layer's tensors by role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
    QBias,
    KBias,
    VBias,
}

impl Role {
    /// The matrices, paired with the role names [`LayerWeights::matrices`] uses.
    pub const MATRICES: [(Role, &'static str); 7] = [
        (Role::Q, "wq"),
        (Role::K, "wk"),
        (Role::V, "wv"),
        (Role::O, "wo"),
        (Role::Gate, "w_gate"),
        (Role::Up, "w_up"),
        (Role::Down, "w_down"),
    ];
}

/// Loads every decoder layer; `name(layer, role)` gives the source's tensor name. `qkv_bias`
/// says whether the architecture adds biases after the Q, K and V projections.
pub fn layers(
    src: &mut impl TensorSource,
    c: &LlamaConfig,
    qkv_bias: bool,
    name: impl Fn(usize, Role) -> String,
) -> Result<Vec<LayerWeights>> {
    let (h, f) = (c.hidden_size, c.intermediate_size);
    let (q_rows, kv_rows) = (c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim);
    (0..c.num_layers)
        .map(|i| {
            let n = |r| name(i, r);
            let qkv_bias = match qkv_bias {
                true => Some(QkvBias {
                    q: src.vector(&n(Role::QBias), q_rows)?,
                    k: src.vector(&n(Role::KBias), kv_rows)?,
                    v: src.vector(&n(Role::VBias), kv_rows)?,
                }),
                false => None,
            };
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
                qkv_bias,
            })
        })
        .collect()
}

/// `(Checkpoint::matrices key, source tensor name)` of every layer matrix.
pub fn matrix_keys(
    num_layers: usize,
    name: impl Fn(usize, Role) -> String,
) -> Vec<(String, String)> {
    (0..num_layers)
        .flat_map(|i| {
            Role::MATRICES.iter().map(move |&(role, key)| (format!("layers.{i}.{key}"), (i, role)))
        })
        .map(|(key, (i, role))| (key, name(i, role)))
        .collect()
}
